"""urdar's alertmanager against Debian's Alertmanager 0.25, both on 127.0.0.1 with the same
configuration and the same alerts: the groups of alerts/groups, the notifications a local webhook
receiver gets (count, grouping, labels, resolved, repeat) and what silences and inhibition mute
agree; amtool works against urdar (multitenancy off); one tenant never sees another's alerts,
silences or notifications."""
import datetime
import http.server as httpserver
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import unittest

import yaml

from tests.support.services import Process, Urdar, free_port, http, wait_for

ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
AMTOOL = shutil.which("amtool") or "/usr/bin/amtool"

CONFIG = """
global:
  resolve_timeout: 3s
time_intervals:
  - name: always
    time_intervals: [{weekdays: ['sunday:saturday']}]
  - name: long-ago
    time_intervals: [{years: ['1999'], location: Europe/Berlin}]
route:
  receiver: hook
  group_by: [alertname]
  group_wait: 1s
  group_interval: 2s
  repeat_interval: 12s
  routes:
    - matchers: ['team="db"']
      receiver: db
      group_by: [alertname, instance]
    - matchers: ['team=~"web|edge"']
      receiver: web
      group_by: ['...']
      continue: true
    - matchers: ['severity="page"']
      receiver: pager
    - matchers: ['alertname=~"Quiet.*"']
      receiver: hook
      mute_time_intervals: [always]
      routes:
        - matchers: ['alertname="QuietNever"']
          mute_time_intervals: []
          active_time_intervals: [long-ago]
        - matchers: ['alertname="QuietNot"']
          mute_time_intervals: []
    - matchers: ['alertname="Flaky"']
      receiver: flaky
      repeat_interval: 1h
inhibit_rules:
  - source_matchers: ['severity="critical"']
    target_matchers: ['severity="warning"']
    equal: [cluster]
receivers:
  - name: hook
    webhook_configs: [{url: "%(sink)s/hook"}]
  - name: db
    webhook_configs: [{url: "%(sink)s/db", send_resolved: false}]
  - name: web
    webhook_configs: [{url: "%(sink)s/web", max_alerts: 1}]
  - name: pager
    webhook_configs: [{url: "%(sink)s/pager"}]
  - name: flaky
    webhook_configs: [{url: "%(sink)s/flaky"}]
"""


def rfc3339(delta_s=0.0):
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=delta_s)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Sink:
    """A webhook receiver: every POST body with its path and arrival time (monotonic)."""

    def __init__(self):
        self.got = []
        self.lock = threading.Lock()
        self.failures = {}          # path -> how many more requests answer 500
        sink = self

        class Handler(httpserver.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with sink.lock:
                    sink.got.append((time.monotonic(), self.path, json.loads(body)))
                    fail = sink.failures.get(self.path, 0)
                    if fail:
                        sink.failures[self.path] = fail - 1
                self.send_response(500 if fail else 200)
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

    def under(self, prefix):
        with self.lock:
            return [(t, p[len(prefix):], b) for t, p, b in self.got if p.startswith(prefix + "/")]


class Alertmanager(Process):
    name = "alertmanager"

    def __init__(self, workdir, config):
        self.port = free_port()
        self.base = "http://127.0.0.1:%d" % self.port
        path = os.path.join(workdir, "alertmanager.yml")
        with open(path, "w") as f:
            f.write(config)
        super().__init__(workdir, [ALERTMANAGER, "--config.file=" + path,
                                   "--storage.path=" + os.path.join(workdir, "am-data"),
                                   "--web.listen-address=127.0.0.1:%d" % self.port,
                                   "--cluster.listen-address="])

    def wait_ready(self):
        def ready():
            if not self.alive():
                raise AssertionError("alertmanager exited:\n%s" % self.output())
            return http("GET", self.base + "/-/ready", timeout=2)[0] == 200
        wait_for(ready, 30, "alertmanager /-/ready")
        return self


def upload(urdar, tenant, config):
    body = yaml.safe_dump({"alertmanager_config": config, "template_files": {}}).encode()
    status, text = http("POST", urdar.base + "/api/v1/alerts", body, {"X-Scope-OrgID": tenant})
    assert status == 201, text


def norm_notification(n):
    """What must agree between the two: everything but times, URLs and the payload's order."""
    return (n["receiver"], n["status"], n["groupKey"], json.dumps(n["groupLabels"], sort_keys=True),
            json.dumps(n["commonLabels"], sort_keys=True), n["truncatedAlerts"], n["version"],
            tuple((a["status"], json.dumps(a["labels"], sort_keys=True), a["fingerprint"],
                   a["endsAt"] == "0001-01-01T00:00:00Z") for a in n["alerts"]))


def norm_groups(groups):
    return [(g["receiver"]["name"], json.dumps(g["labels"], sort_keys=True),
             [(a["fingerprint"], json.dumps(a["labels"], sort_keys=True), a["status"]["state"],
               bool(a["status"]["silencedBy"]), a["status"]["inhibitedBy"],
               sorted(r["name"] for r in a["receivers"])) for a in g["alerts"]]) for g in groups]


@unittest.skipUnless(os.path.exists(ALERTMANAGER) and os.path.exists(AMTOOL),
                     "prometheus-alertmanager/amtool not installed (`make test` installs them)")
class DifferentialTests(unittest.TestCase):
    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="urdar-amdiff-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.sink = Sink()
        self.addCleanup(self.sink.stop)
        amdir = os.path.join(self.workdir, "am")
        os.makedirs(amdir)
        self.am = Alertmanager(amdir, CONFIG % {"sink": self.sink.base + "/am"})
        self.addCleanup(self.am.stop)
        udir = os.path.join(self.workdir, "urdar")
        os.makedirs(udir)
        self.urdar = Urdar(udir, "-target=alertmanager", "-auth.multitenancy-enabled=true")
        self.addCleanup(self.urdar.stop)
        self.am.wait_ready()
        self.urdar.wait_ready()
        upload(self.urdar, "tenant-a", CONFIG % {"sink": self.sink.base + "/urdar"})
        self.ubase = self.urdar.base + "/alertmanager/api/v2"
        self.abase = self.am.base + "/api/v2"

    def both(self, method, path, body=None):
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        hdr = {"Content-Type": "application/json"}
        a = http(method, self.abase + path, data, hdr)
        u = http(method, self.ubase + path, data, dict(hdr, **{"X-Scope-OrgID": "tenant-a"}))
        return a, u

    def post_alerts(self, alerts):
        a, u = self.both("POST", "/alerts", alerts)
        self.assertEqual(a[0], 200, a)
        self.assertEqual(u[0], 200, u)

    def notifications(self, who):
        return [(p, b) for _, p, b in self.sink.under("/" + who)]

    def wait_same(self, count, what):
        def ready():
            return (len(self.notifications("am")) >= count
                    and len(self.notifications("urdar")) >= count)
        wait_for(ready, 30, lambda: "%s: am %s, urdar %s\n%s" % (
            what, self.notifications("am"), self.notifications("urdar"), self.urdar.output()))

    def same_notifications(self):
        am = sorted((p, norm_notification(b)) for p, b in self.notifications("am"))
        ur = sorted((p, norm_notification(b)) for p, b in self.notifications("urdar"))
        self.assertEqual(ur, am)
        # The payloads have the same fields, the alerts too (webhook version 4).
        keys = lambda who: {(tuple(b), tuple(b["alerts"][0])) for _, b in self.notifications(who)}
        self.assertEqual(keys("urdar"), keys("am"))
        return am

    def same_groups(self, query=""):
        a, u = self.both("GET", "/alerts/groups" + query)
        self.assertEqual((a[0], u[0]), (200, 200))
        ga, gu = norm_groups(json.loads(a[1])), norm_groups(json.loads(u[1]))
        self.assertEqual(gu, ga)
        return ga

    def test_grouping_inhibition_silences_resolve_and_repeat(self):
        t_end = rfc3339(3600)
        # A silence first, on both: alertname="Muted" or a regex on instance with a negative one.
        sil = {"matchers": [{"name": "alertname", "value": "Muted", "isRegex": False, "isEqual": True},
                            {"name": "env", "value": "dev|test", "isRegex": True, "isEqual": False}],
               "startsAt": rfc3339(), "endsAt": t_end, "createdBy": "test", "comment": "quiet"}
        a, u = self.both("POST", "/silences", sil)
        self.assertEqual((a[0], u[0]), (200, 200), (a, u))
        ids = {"am": json.loads(a[1])["silenceID"], "urdar": json.loads(u[1])["silenceID"]}
        labels = [
            {"alertname": "A", "instance": "1"}, {"alertname": "A", "instance": "2"},
            {"alertname": "D", "team": "db", "instance": "1"},
            {"alertname": "D", "team": "db", "instance": "2"},
            {"alertname": "Web", "team": "web", "severity": "page"},
            {"alertname": "Web", "team": "edge", "severity": "page", "x": "y"},
            {"alertname": "W", "severity": "warning", "cluster": "c1"},
            {"alertname": "W", "severity": "warning", "cluster": "c2"},
            {"alertname": "C", "severity": "critical", "cluster": "c1"},
            {"alertname": "Muted", "env": "prod"}, {"alertname": "Muted", "env": "dev"},
            {"alertname": "Quiet"}, {"alertname": "QuietNever"}, {"alertname": "QuietNot"},
        ]
        t0 = time.monotonic()
        start = rfc3339()
        self.post_alerts([{"labels": ls, "annotations": {"summary": "s"}, "startsAt": start,
                           "endsAt": t_end, "generatorURL": "http://x/"} for ls in labels])
        # Group notifications: A, D/1, D/2, two Web groups (web receiver, max_alerts 1), one
        # Web group for pager (continue), W (c2 only: c1 is inhibited), C, Muted (env=dev only),
        # QuietNot (Quiet is in a mute interval, QuietNever outside its active interval).
        self.wait_same(10, "first notifications")
        time.sleep(1.5)             # anything else due would have come within group_interval
        first = self.same_notifications()
        self.assertEqual(len(first), 10, first)
        for t, _, _ in self.sink.got:
            self.assertGreaterEqual(t - t0, 0.9)          # none before group_wait
        times = {who: {(a["startsAt"], a["endsAt"]) for _, b in self.notifications(who)
                       for a in b["alerts"]} for who in ("am", "urdar")}
        self.assertEqual(times["urdar"], times["am"])       # as Go prints time.Time
        self.assertEqual(len(times["am"]), 1)
        sent_labels = {json.loads(a[1])["alertname"] + json.loads(a[1]).get("cluster", "")
                       + json.loads(a[1]).get("env", "") for _, n in first for a in n[7]}
        self.assertNotIn("Wc1", sent_labels)               # inhibited
        self.assertNotIn("Mutedprod", sent_labels)         # silenced
        self.assertIn("Muteddev", sent_labels)
        self.assertEqual({x for x in sent_labels if x.startswith("Quiet")}, {"QuietNot"})
        groups = self.same_groups()
        self.assertIn(("hook", '{"alertname": "A"}'), [(g[0], g[1]) for g in groups])
        self.same_groups("?silenced=false&inhibited=false")
        self.same_groups('?filter=alertname=~"W.*"&receiver=web')
        a, u = self.both("GET", '/alerts?filter=severity!="page"&active=true')
        self.assertEqual([(x["fingerprint"], x["status"]["state"], x["receivers"])
                          for x in json.loads(u[1])],
                         [(x["fingerprint"], x["status"]["state"], x["receivers"])
                          for x in json.loads(a[1])])

        # Resolve A/1 and D/1: hook sends resolved, db (send_resolved: false) does not.
        now = rfc3339()
        self.post_alerts([{"labels": labels[0], "startsAt": start, "endsAt": now},
                          {"labels": labels[2], "startsAt": start, "endsAt": now}])
        self.wait_same(11, "the resolved notification")
        time.sleep(1.0)
        second = self.same_notifications()
        resolved = [n for p, n in second if n[1] == "firing" and any(a[0] == "resolved" for a in n[7])]
        self.assertEqual(len(resolved), 1, second)
        self.same_groups()

        # Nothing changes: every still-firing group repeats after repeat_interval (12s), not before.
        count = len(self.notifications("am"))
        self.wait_same(count + 9, "repeats")
        for who in ("am", "urdar"):
            got = self.sink.under("/" + who)
            first_at = {}
            for t, p, b in got:
                key = (p, b["groupKey"])
                if key in first_at and b["status"] == "firing" and key[0] == "/pager":
                    self.assertGreaterEqual(t - first_at[key], 11.5, (who, key))
                first_at.setdefault(key, t)

        # Expiring the silence unmutes Muted/prod at the next flush.
        for who, base in (("am", self.abase), ("urdar", self.ubase)):
            hdr = {"X-Scope-OrgID": "tenant-a"} if who == "urdar" else {}
            self.assertEqual(http("DELETE", base + "/silence/" + ids[who], None, hdr)[0], 200)
            time.sleep(0.01)
            self.assertEqual(http("DELETE", base + "/silence/" + ids[who], None, hdr)[0], 200)

        def unmuted(who):
            return any(a["labels"] == labels[9] for _, b in self.notifications(who)
                       for a in b["alerts"])
        wait_for(lambda: unmuted("am") and unmuted("urdar"), 30, "the unsilenced alert")
        a, u = self.both("GET", "/silences")
        self.assertEqual([s["status"]["state"] for s in json.loads(u[1])],
                         [s["status"]["state"] for s in json.loads(a[1])])

    def test_resolve_timeout(self):
        """An alert without endsAt resolves after global.resolve_timeout (3s) without updates."""
        self.post_alerts([{"labels": {"alertname": "Lapse"}}])
        self.wait_same(2, "firing then resolved")
        self.same_notifications()
        self.assertEqual([b["status"] for _, b in self.notifications("urdar")], ["firing", "resolved"])

    def test_retries_after_errors(self):
        """Two 500s, then success: both retry within the flush and then stay quiet."""
        self.sink.failures = {"/am/flaky": 2, "/urdar/flaky": 2}
        self.post_alerts([{"labels": {"alertname": "Flaky"}, "startsAt": rfc3339(),
                           "endsAt": rfc3339(3600)}])
        self.wait_same(3, "three attempts")
        time.sleep(4)                               # two more group_interval ticks
        am, ur = self.notifications("am"), self.notifications("urdar")
        self.assertEqual([p for p, _ in ur], [p for p, _ in am])
        self.assertEqual(len(am), 3)
        self.assertEqual(norm_notification(ur[-1][1]), norm_notification(am[-1][1]))

    def test_bad_input_answers_400(self):
        for body in ([{"labels": {}}],
                     [{"labels": {"a": "b"}, "startsAt": rfc3339(10), "endsAt": rfc3339()}]):
            a, u = self.both("POST", "/alerts", body)
            self.assertEqual((u[0], json.loads(u[1])), (a[0], json.loads(a[1])))
        sil = {"matchers": [{"name": "a", "value": ".*", "isRegex": True}], "startsAt": rfc3339(),
               "endsAt": rfc3339(60), "createdBy": "t", "comment": "c"}
        a, u = self.both("POST", "/silences", sil)
        self.assertEqual((u[0], json.loads(u[1])), (a[0], json.loads(a[1])))
        sil["matchers"][0]["value"] = "x"
        sil["endsAt"] = rfc3339(-60)
        a, u = self.both("POST", "/silences", sil)
        self.assertEqual((u[0], json.loads(u[1])), (a[0], json.loads(a[1])))
        for method, path, body in [("GET", "/alerts?filter=foo", None),
                                   ("GET", "/alerts?receiver=(", None),
                                   ("POST", "/alerts", [{"annotations": {}}]),
                                   ("POST", "/silences", {"matchers": []}),
                                   ("POST", "/silences", dict(sil, comment=None)),
                                   ("GET", "/silence/nope", None),
                                   ("DELETE", "/silence/nope", None),
                                   ("GET", "/silence/6f0e1a4e-3c4c-4c4c-8c8c-123456789012", None),
                                   ("POST", "/silences", dict(sil, endsAt=rfc3339(60),
                                    id="6f0e1a4e-3c4c-4c4c-8c8c-123456789012"))]:
            a, u = self.both(method, path, body)
            self.assertEqual(u[0], a[0], (method, path, a, u))
            if path.startswith("/alerts?receiver"):
                continue            # Go's and RE2-in-Python's regex error texts differ
            self.assertEqual(json.loads(u[1] or b"null"), json.loads(a[1] or b"null"), (method, path))
        a, u = self.both("POST", "/alerts", b"{not json")
        self.assertEqual((u[0], json.loads(u[1])["code"]), (a[0], json.loads(a[1])["code"]))

    def test_tenants_are_isolated(self):
        upload(self.urdar, "tenant-b", CONFIG % {"sink": self.sink.base + "/tenant-b"})
        hdr = {"Content-Type": "application/json", "X-Scope-OrgID": "tenant-a"}
        body = json.dumps([{"labels": {"alertname": "Secret"}}]).encode()
        self.assertEqual(http("POST", self.ubase + "/alerts", body, hdr)[0], 200)
        sil = {"matchers": [{"name": "alertname", "value": "Secret", "isRegex": False}],
               "startsAt": rfc3339(), "endsAt": rfc3339(60), "createdBy": "t", "comment": "c"}
        st, text = http("POST", self.ubase + "/silences", json.dumps(sil).encode(), hdr)
        self.assertEqual(st, 200, text)
        sid = json.loads(text)["silenceID"]
        wait_for(lambda: self.sink.under("/urdar/hook") or True, 5, "")
        b = {"X-Scope-OrgID": "tenant-b"}
        self.assertEqual(json.loads(http("GET", self.ubase + "/alerts", None, b)[1]), [])
        self.assertEqual(json.loads(http("GET", self.ubase + "/alerts/groups", None, b)[1]), [])
        self.assertEqual(json.loads(http("GET", self.ubase + "/silences", None, b)[1]), [])
        self.assertEqual(http("GET", self.ubase + "/silence/" + sid, None, b)[0], 404)
        self.assertEqual(http("DELETE", self.ubase + "/silence/" + sid, None, b)[0], 404)
        # A tenant without a configuration (and no fallback) is told so.
        st, text = http("GET", self.ubase + "/alerts", None, {"X-Scope-OrgID": "tenant-c"})
        self.assertEqual((st, text), (404, b"the Alertmanager is not configured\n"))
        # Tenant A's silenced alert shows as silenced to A only; B's webhook got nothing.
        got = json.loads(http("GET", self.ubase + "/alerts", None, hdr)[1])
        self.assertEqual([a["status"]["silencedBy"] for a in got], [[sid]])
        time.sleep(1.5)
        self.assertEqual(self.sink.under("/tenant-b"), [])


@unittest.skipUnless(os.path.exists(AMTOOL), "amtool not installed")
class AmtoolTests(unittest.TestCase):
    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="urdar-amtool-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.urdar = Urdar(self.workdir, "-target=alertmanager", "-auth.multitenancy-enabled=false")
        self.addCleanup(self.urdar.stop)
        self.urdar.wait_ready()
        upload(self.urdar, "anonymous", 'route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n')

    def amtool(self, *args):
        p = subprocess.run([AMTOOL, "--alertmanager.url=" + self.urdar.base + "/alertmanager",
                            *args], capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        return p.stdout

    def test_alert_and_silence_commands(self):
        self.amtool("alert", "add", "alertname=Disk", "instance=db1", "--annotation=summary=full")
        got = json.loads(self.amtool("alert", "query", "-o", "json", "alertname=Disk"))
        self.assertEqual([a["labels"] for a in got], [{"alertname": "Disk", "instance": "db1"}])
        self.assertEqual(got[0]["annotations"], {"summary": "full"})
        sid = self.amtool("silence", "add", "alertname=Disk", 'instance=~"db.*"', "-c", "maint",
                          "-d", "1h").strip()
        sils = json.loads(self.amtool("silence", "query", "-o", "json"))
        self.assertEqual([(s["id"], s["comment"], s["status"]["state"]) for s in sils],
                         [(sid, "maint", "active")])
        self.assertEqual(json.loads(self.amtool("alert", "query", "-o", "json")), [])
        silenced = json.loads(self.amtool("alert", "query", "-s", "-o", "json"))
        self.assertEqual([a["status"]["silencedBy"] for a in silenced], [[sid]])
        self.assertEqual(self.amtool("silence", "query", "-q", "instance=~db.*").split(), [sid])
        # An update of the active silence keeps its id, as with Alertmanager.
        self.amtool("silence", "update", sid, "-d", "2h")
        self.assertEqual(self.amtool("silence", "query", "-q").split(), [sid])
        self.amtool("silence", "expire", sid)
        self.assertEqual(json.loads(self.amtool("silence", "query", "-o", "json")), [])
        expired = json.loads(self.amtool("silence", "query", "--expired", "-o", "json"))
        self.assertEqual([s["status"]["state"] for s in expired], ["expired"])
        self.assertEqual(len(json.loads(self.amtool("alert", "query", "-o", "json"))), 1)


RULES = b"""name: pager
interval: 1s
rules:
  - alert: Down
    expr: up == 0
    labels: {severity: page}
    annotations: {summary: '{{ $labels.instance }} is down'}
"""
RULER_AM = """
route:
  receiver: hook
  group_by: [alertname]
  group_wait: 1s
  group_interval: 1s
receivers:
  - name: hook
    webhook_configs: [{url: "%s/ruler/hook"}]
"""


class SelfUrdar(Urdar):
    """urdar whose ruler sends its alerts to its own alertmanager (Mimir's monolithic setup)."""

    def __init__(self, workdir, *extra):
        port = free_port()
        super().__init__(workdir, "-ruler.alertmanager-url=http://127.0.0.1:%d/alertmanager" % port,
                         "-server.http-listen-port=%d" % port, *extra)
        self.port = port
        self.base = "http://127.0.0.1:%d" % port


class RulerToOwnAlertmanagerTests(unittest.TestCase):
    def test_rule_fires_notifies_and_resolves(self):
        from tests.integration.test_ruler_alertmanager import push
        tmp = tempfile.mkdtemp(prefix="urdar-ruler-own-am-")
        self.addCleanup(shutil.rmtree, tmp, True)
        sink = Sink()
        self.addCleanup(sink.stop)
        svc = SelfUrdar(tmp, "-ruler.poll-interval=1s", "-ruler.resend-delay=1s")
        self.addCleanup(svc.stop)
        svc.wait_ready()
        upload(svc, "team-a", RULER_AM % sink.base)
        status, body = http("POST", svc.base + "/prometheus/config/v1/rules/ns", RULES,
                            {"X-Scope-OrgID": "team-a"})
        self.assertEqual(status, 202, body)

        def notified(status, down):
            push(svc.base, "team-a", int(time.time() * 1000), down)
            return [b for _, _, b in sink.under("/ruler") if b["status"] == status]
        [first, *_] = wait_for(lambda: notified("firing", {"i2"}), 60,
                               lambda: "a firing notification\n" + svc.output())
        self.assertEqual([a["labels"] for a in first["alerts"]],
                         [{"alertname": "Down", "instance": "i2", "job": "api", "severity": "page"}])
        self.assertEqual(first["alerts"][0]["annotations"], {"summary": "i2 is down"})
        self.assertEqual(first["groupKey"], '{}:{alertname="Down"}')
        [done, *_] = wait_for(lambda: notified("resolved", set()), 60,
                              lambda: "a resolved notification\n" + svc.output())
        self.assertEqual([a["status"] for a in done["alerts"]], ["resolved"])


@unittest.skipUnless(os.path.exists(AMTOOL), "amtool not installed")
class RestartTests(unittest.TestCase):
    def test_silences_and_notification_log_survive_a_restart(self):
        tmp = tempfile.mkdtemp(prefix="urdar-am-restart-")
        self.addCleanup(shutil.rmtree, tmp, True)
        sink = Sink()
        self.addCleanup(sink.stop)
        flags = ("-target=alertmanager", "-auth.multitenancy-enabled=false")
        svc = Urdar(tmp, *flags)
        self.addCleanup(lambda: svc.alive() and svc.stop())
        svc.wait_ready()
        upload(svc, "anonymous", RULER_AM.replace("group_interval: 1s",
                                                  "group_interval: 1s\n  repeat_interval: 1h")
               % sink.base)
        base = svc.base + "/alertmanager/api/v2"
        sil = {"matchers": [{"name": "alertname", "value": "Quiet", "isRegex": False}],
               "startsAt": rfc3339(), "endsAt": rfc3339(3600), "createdBy": "t", "comment": "kept"}
        st, body = http("POST", base + "/silences", json.dumps(sil).encode(),
                        {"Content-Type": "application/json"})
        self.assertEqual(st, 200, body)
        sid = json.loads(body)["silenceID"]
        alert = json.dumps([{"labels": {"alertname": "Once"}, "startsAt": rfc3339(),
                             "endsAt": rfc3339(3600)}]).encode()
        self.assertEqual(http("POST", base + "/alerts", alert)[0], 200)
        wait_for(lambda: sink.under("/ruler"), 30, "the first notification")
        self.assertEqual(svc.stop()[0], 0, svc.output())

        again = Urdar(tmp, *flags)
        self.addCleanup(lambda: again.alive() and again.stop())
        again.wait_ready()
        base = again.base + "/alertmanager/api/v2"
        got = wait_for(lambda: http("GET", base + "/silences")[0] == 200 and
                       json.loads(http("GET", base + "/silences")[1]), 30, "the silences")
        self.assertEqual([(s["id"], s["comment"], s["status"]["state"]) for s in got],
                         [(sid, "kept", "active")])
        # The same alert again: the notification log says it was sent, so no repeat within 1h.
        self.assertEqual(http("POST", base + "/alerts", alert)[0], 200)
        time.sleep(3)
        self.assertEqual(len(sink.under("/ruler")), 1)
