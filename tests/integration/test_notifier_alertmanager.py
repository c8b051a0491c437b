"""The ruler's notifier against Debian's Alertmanager 0.25 on 127.0.0.1: firing alerts sent
through it show up in `amtool alert query` with their labels, annotations and generator URL, and
the same alerts sent resolved (endsAt in the past) leave the active list."""
import datetime
import json
import os
import shutil
import tempfile

from prometheus_client import CollectorRegistry
from twisted.internet import defer, task
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from tests.support.services import Process, free_port, http, wait_for
from urdar.components.notifier import Notifier, NotifierConfig

ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
AMTOOL = shutil.which("amtool") or "/usr/bin/amtool"
CONFIG = 'route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n'


def _reactor():
    from twisted.internet import reactor
    return reactor


class Alertmanager(Process):
    """prometheus-alertmanager with a null receiver, no gossip and a temporary storage dir."""
    name = "alertmanager"

    def __init__(self, workdir):
        self.port = free_port()
        self.base = "http://127.0.0.1:%d" % self.port
        config = os.path.join(workdir, "alertmanager.yml")
        with open(config, "w") as f:
            f.write(CONFIG)
        super().__init__(workdir, [ALERTMANAGER, "--config.file=" + config,
                                   "--storage.path=" + os.path.join(workdir, "am-data"),
                                   "--web.listen-address=127.0.0.1:%d" % self.port,
                                   "--cluster.listen-address="])

    def wait_ready(self, timeout_s=30):
        def ready():
            if not self.alive():
                raise AssertionError("alertmanager exited:\n%s" % self.output())
            return http("GET", self.base + "/-/ready", timeout=2)[0] == 200
        wait_for(ready, timeout_s, "alertmanager /-/ready")
        return self


def rfc3339(delta_s=0.0):
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=delta_s)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class NotifierAlertmanagerTests(TestCase):
    timeout = 120

    def setUp(self):
        if not (os.path.exists(ALERTMANAGER) and os.path.exists(AMTOOL)):
            raise SkipTest("prometheus-alertmanager/amtool not installed (`make test` installs "
                           "the Debian package prometheus-alertmanager)")
        self.workdir = tempfile.mkdtemp(prefix="urdar-am-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.am = Alertmanager(self.workdir)
        self.addCleanup(self.am.stop)
        self.am.wait_ready()
        self.registry = CollectorRegistry()
        self.notifier = Notifier(NotifierConfig(alertmanager_url=self.am.base), _reactor(),
                                 registry=self.registry)
        self.notifier.start()
        self.addCleanup(self.notifier.stop)

    def sent(self):
        v = self.registry.get_sample_value("cortex_prometheus_notifications_sent_total", {
            "user": "team-a", "alertmanager": self.am.base + "/api/v2/alerts"})
        return v or 0

    @defer.inlineCallbacks
    def until_sent(self, n):
        for _ in range(2000):
            if self.sent() >= n:
                return
            yield task.deferLater(_reactor(), 0.01, lambda: None)
        self.fail("notifier sent %s alerts, not %d:\n%s" % (self.sent(), n, self.am.output()))

    @defer.inlineCallbacks
    def amtool_query(self, *matchers):
        out, err, code = yield getProcessOutputAndValue(AMTOOL, [
            "alert", "query", "-o", "json", "--alertmanager.url=" + self.am.base, *matchers],
            env=os.environ)
        self.assertEqual(code, 0, err)
        return json.loads(out)

    @defer.inlineCallbacks
    def test_firing_then_resolved(self):
        """Two firing alerts arrive active with their labels and annotations; sent again with
        endsAt in the past they are resolved and no longer listed."""
        starts = rfc3339(-60)
        firing = [{"labels": {"alertname": "HighLatency", "job": "api", "severity": "page"},
                   "annotations": {"summary": "api latency is 2.5s"}, "startsAt": starts,
                   "endsAt": rfc3339(600), "generatorURL": "http://urdar/graph?g0.expr=x"},
                  {"labels": {"alertname": "HighLatency", "job": "db", "severity": "page"},
                   "annotations": {"summary": "db latency is 3s"}, "startsAt": starts,
                   "endsAt": rfc3339(600), "generatorURL": "http://urdar/graph?g0.expr=x"}]
        self.notifier.send("team-a", firing)
        yield self.until_sent(2)
        got = yield self.amtool_query("alertname=HighLatency")
        by_job = {a["labels"]["job"]: a for a in got}
        self.assertEqual(sorted(by_job), ["api", "db"])
        self.assertEqual(by_job["api"]["labels"], firing[0]["labels"])
        self.assertEqual(by_job["api"]["annotations"], {"summary": "api latency is 2.5s"})
        self.assertEqual(by_job["db"]["annotations"], {"summary": "db latency is 3s"})
        self.assertEqual(by_job["api"]["generatorURL"], "http://urdar/graph?g0.expr=x")
        self.assertEqual(by_job["api"]["status"]["state"], "active")
        self.assertEqual(by_job["api"]["startsAt"], starts)

        resolved = [dict(a, endsAt=rfc3339(-1)) for a in firing]
        self.notifier.send("team-a", resolved)
        yield self.until_sent(4)
        self.assertEqual((yield self.amtool_query("alertname=HighLatency")), [])
        status, body = http("GET", self.am.base + "/api/v2/alerts?active=true")
        self.assertEqual((status, json.loads(body)), (200, []))
        self.assertEqual(self.registry.get_sample_value(
            "cortex_prometheus_notifications_errors_total",
            {"user": "team-a", "alertmanager": self.am.base + "/api/v2/alerts"}), 0)
