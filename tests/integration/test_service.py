"""urdar as a running service: `python -m urdar` on a free 127.0.0.1 port with a temporary data dir.

Pushes with the remote-write encoder, stops with SIGTERM, restarts and checks the data survived
(WAL replay), reading both over HTTP (/api/v1/user_stats) and from the tenant's TSDB on disk."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

import cramjam

from tests.support.services import ROOT, Urdar, http
from urdar.engine.remotewrite import encode_write_request



class Service(Urdar):
    """urdar for these tests: a stop that needed SIGKILL is a failure."""

    def __init__(self, data_dir, extra=()):
        super().__init__(data_dir, *extra)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        code, killed = super().stop(timeout, sig)
        if killed:
            raise AssertionError("urdar ignored %s:\n%s" % (sig, self.output()))
        return code


def push(base, tenant, series):
    body = bytes(cramjam.snappy.compress_raw(encode_write_request(series)))
    return http("POST", base + "/api/v1/push", body, {
        "X-Scope-OrgID": tenant, "Content-Encoding": "snappy",
        "Content-Type": "application/x-protobuf", "X-Prometheus-Remote-Write-Version": "0.1.0"})


class ServiceTests(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="urdar-it-")
        self.addCleanup(self.tmp.cleanup)
        self.services = []

    def start(self, *extra):
        svc = Service(self.tmp.name, extra)
        self.services.append(svc)
        self.addCleanup(lambda: svc.proc.poll() is None and svc.stop(signal.SIGKILL))
        svc.wait_ready()
        return svc

    def test_push_restart_data_survives(self):
        """Data pushed before a SIGTERM is there after a restart, per tenant, with clean exits."""
        now = int(time.time() * 1000)
        series = [([("__name__", "up"), ("job", "j%d" % i)], [(now - 2000, 1.0), (now - 1000, float(i))])
                  for i in range(5)]
        svc = self.start()
        self.assertEqual(push(svc.base, "team-a", series)[0], 200)
        self.assertEqual(push(svc.base, "team-b", series[:2])[0], 200)
        status, text = push(svc.base, "team-a", [([("job", "x")], [(now, 1.0)])])
        self.assertEqual(status, 400)
        self.assertIn(b"err-mimir-missing-metric-name", text)
        self.assertEqual(http("GET", svc.base + "/api/v1/push")[0], 405)
        self.assertEqual(svc.stop(), 0, svc.output())

        svc2 = self.start()
        status, raw = http("GET", svc2.base + "/api/v1/user_stats", headers={"X-Scope-OrgID": "team-a"})
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(raw)["numSeries"], 5)
        status, raw = http("GET", svc2.base + "/api/v1/user_stats", headers={"X-Scope-OrgID": "team-b"})
        self.assertEqual(json.loads(raw)["numSeries"], 2)
        # Appending after restart continues the same series (no out-of-order against replayed data).
        self.assertEqual(push(svc2.base, "team-a", [(series[0][0], [(now, 5.0)])])[0], 200)
        status, text = push(svc2.base, "team-a", [(series[0][0], [(now - 5000, 5.0)])])
        self.assertEqual(status, 400)
        self.assertIn(b"err-mimir-sample-out-of-order", text)
        status, metrics = http("GET", svc2.base + "/metrics")
        self.assertIn(b"cortex_ingester_memory_series 7.0", metrics)
        self.assertEqual(svc2.stop(), 0, svc2.output())

        from urdar.engine.matchers import Matcher
        from urdar.engine.tsdb import TSDB
        from urdar.engine.labels import decode_labels
        db = TSDB(os.path.join(self.tmp.name, "tsdb", "team-a"))
        try:
            got = {dict(decode_labels(k))["job"]: list(zip(ts, vs))
                   for k, ts, vs in db.select([Matcher("=", "__name__", "up")])}
        finally:
            db.close()
        self.assertEqual(got["j0"], [(now - 2000, 1.0), (now - 1000, 0.0), (now, 5.0)])
        self.assertEqual(got["j4"], [(now - 2000, 1.0), (now - 1000, 4.0)])

    def test_pages(self):
        """The admin pages answer: index links, config diff, buildinfo under prefixes, services, flush."""
        svc = self.start("-auth.multitenancy-enabled=false")
        status, page = http("GET", svc.base + "/")
        self.assertEqual(status, 200)
        for link in (b"/ready", b"/metrics", b"/config", b"/services", b"/ingester/flush"):
            self.assertIn(link, page)
        status, cfg = http("GET", svc.base + "/config?mode=diff")
        self.assertIn(b"multitenancy_enabled: false", cfg)
        for prefix in ("", "/prometheus", "/alertmanager"):
            status, raw = http("GET", svc.base + prefix + "/api/v1/status/buildinfo")
            self.assertEqual((status, json.loads(raw)["status"]), (200, "success"))
        now = int(time.time() * 1000)
        self.assertEqual(push(svc.base, "ignored", [([("__name__", "m")], [(now, 1.0)])])[0], 200)
        self.assertEqual(http("POST", svc.base + "/ingester/flush?wait=true")[0], 204)
        tenant_dir = os.path.join(self.tmp.name, "tsdb", "anonymous")
        self.assertTrue(any(len(n) == 26 for n in os.listdir(tenant_dir)), os.listdir(tenant_dir))
        self.assertEqual(http("POST", svc.base + "/ingester/shutdown")[0], 204)
        self.assertEqual(http("GET", svc.base + "/ready")[0], 503)
        self.assertEqual(svc.stop(signal.SIGINT), 0, svc.output())

    def test_oversized_push_over_socket(self):
        """Over a real socket a body past -distributor.max-recv-msg-size is 413 and urdar stays up."""
        svc = self.start("-distributor.max-recv-msg-size=1000")
        status, text = http("POST", svc.base + "/api/v1/push", b"x" * 5000, {"X-Scope-OrgID": "t"})
        self.assertEqual(status, 413)
        self.assertIn(b"err-mimir-distributor-max-write-message-size", text)
        self.assertEqual(http("GET", svc.base + "/ready")[0], 200)
        self.assertEqual(svc.stop(), 0, svc.output())

    def test_bad_config_fails_start(self):
        """An unknown flag or YAML key stops start-up with exit code 1 and names the key."""
        path = os.path.join(self.tmp.name, "bad.yaml")
        with open(path, "w") as f:
            f.write("server:\n  http_listen_prot: 1\n")
        for args, name in ((["-config.file=" + path], "server.http_listen_prot"),
                           (["-no.such-flag=1"], "-no.such-flag")):
            p = subprocess.run([sys.executable, "-m", "urdar", *args], cwd=ROOT, capture_output=True,
                               timeout=60)
            self.assertEqual(p.returncode, 1)
            self.assertIn(name, p.stderr.decode())

    def test_sd_notify_ready(self):
        """Under systemd (NOTIFY_SOCKET) urdar sends READY=1 once it is ready."""
        sock_path = os.path.join(self.tmp.name, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(sock_path)
        sock.settimeout(60)
        self.addCleanup(sock.close)
        os.environ["NOTIFY_SOCKET"] = sock_path
        try:
            svc = self.start()
        finally:
            del os.environ["NOTIFY_SOCKET"]
        self.assertIn(b"READY=1", sock.recv(4096))
        svc.stop()
        self.assertIn(b"STOPPING=1", sock.recv(4096))


if __name__ == "__main__":
    unittest.main()
