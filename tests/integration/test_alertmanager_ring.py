"""Three `-target=alertmanager` processes sharding tenants over the alertmanager ring in a real
etcd, replication factor 2, one shared alertmanager bucket, a slow local webhook receiver: the
tenant's configuration runs on exactly two of them (its owners); an alert posted to the third
reaches both owners (the alertmanager distributor) and gives one notification per group (the
second replica waits -alertmanager.peer-timeout and finds it in the notification log the first
replicated to it); a silence created on one owner mutes the alert on the other, and reads through
the third instance are forwarded; after kill -9 of one owner the other keeps notifying; the ring
page lists the three instances."""
import http.server as httpserver
import json
import os
import signal
import tempfile
import threading
import time
import unittest

import yaml

from tests.support.etcd import Etcd, have_etcd
from tests.support.services import Urdar, free_port, http, wait_for

TENANT = "team-ring"
CONFIG = {"route": {"receiver": "hook", "group_by": ["alertname"], "group_wait": "1s",
                    "group_interval": "5s", "repeat_interval": "1h"},
          "receivers": [{"name": "hook", "webhook_configs": [{"url": None}]}]}


class SlowSink:
    """A webhook receiver that takes a second to answer, so that two replicas notifying at once
    would both be in flight: only the peer wait keeps the second one from sending."""

    def __init__(self):
        self.got = []
        sink = self

        class Handler(httpserver.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sink.got.append((time.monotonic(), self.path, json.loads(body)))
                time.sleep(1.0)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass
        self.server = httpserver.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.base = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def api(u, method, path, body=None, here=False):
    """here: answered by that instance itself (as a request its peers forward to it)."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"X-Scope-OrgID": TENANT, "Content-Type": "application/json"}
    if here:
        headers["X-Urdar-Alertmanager-Forwarded"] = "1"
    return http(method, u.base + "/alertmanager/api/v2" + path, data, headers, timeout=10)


class AlertmanagerRingTests(unittest.TestCase):
    def setUp(self):
        if not have_etcd():
            raise unittest.SkipTest("etcd is not installed (Debian package etcd-server)")
        self.tmp = tempfile.TemporaryDirectory(prefix="urdar-am-ring-")
        self.addCleanup(self.tmp.cleanup)
        self.etcd = Etcd(self.tmp.name).start()
        self.addCleanup(self.etcd.stop)
        self.sink = SlowSink()
        self.addCleanup(self.sink.stop)
        bucket = os.path.join(self.tmp.name, "bucket")
        self.ams = []
        for i in range(3):
            workdir = os.path.join(self.tmp.name, "am-%d" % i)
            os.makedirs(workdir)
            u = Urdar(workdir, "-target=alertmanager", "-auth.multitenancy-enabled=true",
                      "-alertmanager-storage.filesystem.dir=" + bucket,
                      "-alertmanager.poll-interval=1s", "-alertmanager.peer-timeout=2s",
                      "-alertmanager.sharding-ring.store=etcd",
                      "-alertmanager.sharding-ring.etcd.endpoints=" + self.etcd.endpoint,
                      "-alertmanager.sharding-ring.heartbeat-period=1s",
                      "-alertmanager.sharding-ring.heartbeat-timeout=4s",
                      "-alertmanager.sharding-ring.replication-factor=2",
                      "-alertmanager.sharding-ring.instance-id=am-%d" % i)
            self.addCleanup(lambda u=u: u.alive() and u.stop())
            self.ams.append(u)
        for u in self.ams:
            u.wait_ready(90)

    def logs(self):
        return "\n".join("== %s\n%s" % (u.base, u.output()[-3000:]) for u in self.ams)

    def ring(self, u):
        status, body = http("GET", u.base + "/multitenant_alertmanager/ring",
                            headers={"Accept": "application/json"})
        assert status == 200, body
        return {s["id"]: s["state"] for s in json.loads(body)["shards"]}

    def owners(self):
        return [u for u in self.ams if u.alive() and api(u, "GET", "/status", here=True)[0] == 200]

    def hook(self):
        return [b for _, p, b in self.sink.got if p == "/hook"]

    def test_replicas_share_state_and_notify_once(self):
        every = {"am-0": "ACTIVE", "am-1": "ACTIVE", "am-2": "ACTIVE"}
        wait_for(lambda: all(self.ring(u) == every for u in self.ams), 60,
                 lambda: "three ACTIVE alertmanagers in every ring page\n" + self.logs())
        cfg = json.loads(json.dumps(CONFIG))
        cfg["receivers"][0]["webhook_configs"][0]["url"] = self.sink.base + "/hook"
        body = yaml.safe_dump({"alertmanager_config": yaml.safe_dump(cfg)}).encode()
        status, text = http("POST", self.ams[0].base + "/api/v1/alerts", body,
                            {"X-Scope-OrgID": TENANT})
        self.assertEqual(status, 201, text)
        wait_for(lambda: len(self.owners()) == 2, 30,
                 lambda: "the tenant running on its two owners\n" + self.logs())
        time.sleep(3)       # a third instance would have loaded it by now (poll every 1s)
        owners = self.owners()
        self.assertEqual(len(owners), 2)
        other = [u for u in self.ams if u not in owners][0]
        status, text = api(other, "GET", "/status", here=True)
        self.assertEqual(status, 404, text)
        status, text = api(other, "GET", "/status")         # forwarded to an owner
        self.assertEqual(status, 200, text)

        # Posted to the instance that does not own the tenant: its distributor sends the alert to
        # both replicas, whose group_wait timers then run out within milliseconds of each other.
        alert = [{"labels": {"alertname": "Once", "job": "x"}}]
        self.assertEqual(api(other, "POST", "/alerts", alert)[0], 200)
        for u in owners:
            status, text = api(u, "GET", "/alerts", here=True)
            self.assertEqual([a["labels"]["alertname"] for a in json.loads(text)], ["Once"])
        wait_for(lambda: self.hook(), 30, lambda: "a notification\n" + self.logs())
        time.sleep(8)       # past the second replica's 2s wait and a group_interval (5s)
        self.assertEqual([n["groupLabels"] for n in self.hook()], [{"alertname": "Once"}])

        # A silence created on one owner mutes the alert on the other.
        sil = {"matchers": [{"name": "alertname", "value": "Muted", "isRegex": False}],
               "startsAt": "2000-01-01T00:00:00Z", "endsAt": "2999-01-01T00:00:00Z",
               "createdBy": "test", "comment": "replicated"}
        status, text = api(owners[0], "POST", "/silences", sil)
        self.assertEqual(status, 200, text)
        sid = json.loads(text)["silenceID"]

        def silenced_on_other():
            status, text = api(owners[1], "GET", "/silence/" + sid, here=True)
            return status == 200 and json.loads(text)["status"]["state"] == "active"
        wait_for(silenced_on_other, 20, lambda: "the silence on the other owner\n" + self.logs())
        status, text = api(other, "GET", "/silence/" + sid)    # a read forwarded to a replica
        self.assertEqual((status, json.loads(text)["comment"]), (200, "replicated"))
        self.assertEqual(api(owners[1], "POST", "/alerts",
                             [{"labels": {"alertname": "Muted"}}])[0], 200)
        time.sleep(6)
        self.assertNotIn({"alertname": "Muted"}, [n["groupLabels"] for n in self.hook()])
        status, text = api(owners[1], "GET", "/alerts?filter=alertname%3D%22Muted%22")
        self.assertEqual([a["status"]["silencedBy"] for a in json.loads(text)], [[sid]])

        # kill -9 one owner: the other one notifies (at position 0 once the dead one is unhealthy).
        owners[0].proc.send_signal(signal.SIGKILL)
        owners[0].proc.wait()
        # Until its heartbeat is 4s old the dead owner still counts: no quorum (2 of 2) for
        # writes; then the survivor alone is the tenant's replica set.
        wait_for(lambda: api(other, "POST", "/alerts",
                             [{"labels": {"alertname": "AfterKill"}}])[0] == 200, 30,
                 lambda: "an accepted alert after the kill\n" + self.logs())
        wait_for(lambda: {"alertname": "AfterKill"} in [n["groupLabels"] for n in self.hook()],
                 30, lambda: "a notification after the kill\n" + self.logs())
        self.assertEqual(sum(n["groupLabels"] == {"alertname": "AfterKill"} for n in self.hook()), 1)
        self.assertEqual(sorted(self.ring(owners[1])), ["am-0", "am-1", "am-2"])
