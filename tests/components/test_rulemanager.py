"""The rule manager on a fake clock: group timing and missed iterations, recording rules and
staleness, alert states (for, keep_firing_for), notifications (resend, resolved), `for` state
restore, template queries, loading and re-syncing from the rule store, and the read API."""
import json

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from tests.support.rules import is_stale, make_manager
from urdar.app.config import Config
from urdar.components.limits import Overrides
from urdar.components.rulefmt import decode_group
from urdar.components.rulemanager import RuleManagerConfig, go_time
from urdar.components.ruler import Ruler, RuleStore
from urdar.handlers.routes import RouteTable
from urdar.handlers.rulemanager import RulesHandlers
from urdar.net.tenant import Tenancy
from urdar.storage.memory import MemoryBucket

M = 60_000


def group(text):
    return decode_group(text.encode())


ALERT_GROUP = """
name: g
interval: 1m
align_evaluation_time_on_interval: true
rules:
  - alert: High
    expr: x > 5
    for: 2m
    labels: {severity: page}
    annotations: {summary: "{{ $labels.job }} is {{ $value }}"}
"""


def advance_to(clock, t_ms):
    """Move the fake clock to t_ms one due timer at a time (Clock.advance jumps to the end
    first, so timers would see the final time)."""
    target = t_ms / 1000.0
    while True:
        due = [c.getTime() for c in clock.getDelayedCalls() if c.getTime() <= target]
        if not due:
            break
        clock.advance(max(0.0, min(due) - clock.seconds()))
    clock.advance(max(0.0, target - clock.seconds()))


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, tenant, alerts):
        self.calls.append((tenant, alerts))


def metric(mgr, name, tenant="t", label="ns;g"):
    m = {"iterations": mgr.metrics.iterations, "missed": mgr.metrics.iterations_missed,
         "evals": mgr.metrics.evaluations, "failures": mgr.metrics.failures}[name]
    return m.labels(tenant, label)._value.get()


class Base(SynchronousTestCase):
    def setUp(self):
        self.notify = Recorder()
        from prometheus_client import CollectorRegistry
        self.registry = CollectorRegistry()
        self.mgr, self.tsdb, self.clock, self.querier = make_manager(notify=self.notify)
        self.mgr.metrics = type(self.mgr.metrics)(self.registry)
        self.mgr.running = True

    def series(self, name, labels, values, step=M, tenant="t"):
        for i, v in enumerate(values):
            if v is not None:
                self.tsdb.add(tenant, dict(labels, __name__=name), i * step, v)

    def advance_to(self, t_ms):
        advance_to(self.clock, t_ms)

    def alerts(self, tenant="t"):
        return self.mgr.alerts_api(tenant)["alerts"]


class GroupTimingTests(Base):
    def test_aligned_iterations(self):
        """A group evaluates at its aligned timestamps (hash offset, or 0 when aligned on the
        interval), once per interval, counted in the iterations metric."""
        self.series("up", {"job": "a"}, [1] * 20)
        self.mgr.set_groups("t", [("ns", group("name: g\ninterval: 1m\nrules:\n"
                                               "  - record: r\n    expr: up\n"))])
        g = self.mgr.groups["t"][("ns", "g")]
        off = g.hash_offset_ms()
        self.assertTrue(0 <= off < M)
        self.advance_to(5 * M + off + 1)
        ts = sorted(t for t, _ in self.tsdb.samples("t", "r")[(("__name__", "r"), ("job", "a"))])
        # The first slot after the start (0), then one per interval.
        first = off if off > 0 else M
        self.assertEqual(ts, list(range(first, 5 * M + off + 1, M)))
        self.assertEqual(metric(self.mgr, "iterations"), len(ts))
        self.assertEqual(metric(self.mgr, "missed"), 0)
        self.assertEqual(g.last_evaluation_ms, 5 * M + off)

    def test_query_offset(self):
        """query_offset: queries (and written samples) at the evaluation time minus the offset."""
        self.series("up", {"job": "a"}, [1, 2, 3, 4, 5, 6])
        self.mgr.set_groups("t", [("ns", group(
            "name: g\ninterval: 1m\nquery_offset: 2m\nalign_evaluation_time_on_interval: true\n"
            "rules:\n  - record: r\n    expr: up\n"))])
        self.advance_to(4 * M)
        self.assertEqual(self.tsdb.samples("t", "r")[(("__name__", "r"), ("job", "a"))],
                         [(0, 1.0), (M, 2.0), (2 * M, 3.0)])

    def test_slow_evaluation_misses_iterations(self):
        """A write that never answers times out after one interval; the late group skips the
        ticks it missed and counts them."""
        stuck = []

        class Stuck:
            def push(self, tenant, samples):
                d = defer.Deferred()
                stuck.append(d)
                return d
        self.mgr.pusher = Stuck()
        self.series("up", {"job": "a"}, [1] * 20)
        self.mgr.set_groups("t", [("ns", group(
            "name: g\ninterval: 1m\nalign_evaluation_time_on_interval: true\nrules:\n"
            "  - record: r\n    expr: up\n  - record: r2\n    expr: up\n"))])
        self.advance_to(M)              # first iteration, rule r stuck
        self.assertEqual(len(stuck), 1)
        self.advance_to(2 * M)          # r timed out; r2 stuck until 3m
        self.advance_to(3 * M)
        rules = self.mgr.rules_api("t")["groups"][0]["rules"]
        self.assertEqual(rules[0]["health"], "err")
        self.assertEqual(rules[0]["lastError"], "rule evaluation timed out after 60s")
        # The iteration that started at 1m finished at 3m: the 2m tick was missed and the
        # next evaluation is for 3m, at once.
        self.assertEqual(metric(self.mgr, "missed"), 1)
        self.assertEqual(metric(self.mgr, "iterations"), 3)
        self.assertEqual(metric(self.mgr, "failures"), 2)
        self.assertEqual(len(stuck), 3)

    def test_slow_tenant_queries(self):
        """A tenant whose reads never answer: each of its rules fails at its deadline (one
        interval), its group misses iterations, and the other tenant's group runs on time."""
        tsdb = self.tsdb
        real_select = tsdb.select

        def select(tenant, matchers, hints):
            return defer.Deferred() if tenant == "slow" else real_select(tenant, matchers, hints)
        tsdb.select = select
        text = ("name: g\ninterval: 1m\nalign_evaluation_time_on_interval: true\nrules:\n"
                "  - record: r\n    expr: up\n  - record: r2\n    expr: up\n")
        for tenant in ("slow", "fast"):
            self.series("up", {"job": "a"}, [1] * 10, tenant=tenant)
            self.mgr.set_groups(tenant, [("ns", group(text))])
        self.advance_to(5 * M)
        self.assertEqual([t for t, _ in self.tsdb.samples("fast", "r")[
            (("__name__", "r"), ("job", "a"))]], [M, 2 * M, 3 * M, 4 * M, 5 * M])
        self.assertEqual(self.tsdb.samples("slow", "r"), {})
        rules = self.mgr.rules_api("slow")["groups"][0]["rules"]
        self.assertEqual({r["health"] for r in rules}, {"err"})
        self.assertIn("timed out", rules[0]["lastError"])
        # Evaluations run 1m..3m and 3m..5m (two rules, one interval each): 2m and 4m missed.
        self.assertEqual(metric(self.mgr, "missed", "slow"), 2)
        self.assertEqual(metric(self.mgr, "missed", "fast"), 0)

    def test_change_waits_for_the_evaluation_in_flight(self):
        """A group changed while it evaluates starts after that evaluation, with its state."""
        held = []

        class Held:
            def __init__(self, tsdb):
                self.tsdb = tsdb

            def push(self, tenant, samples):
                d = defer.Deferred()
                held.append(d)
                return d.addCallback(lambda _: self.tsdb.push(tenant, samples))
        self.mgr.pusher = Held(self.tsdb)
        self.series("x", {"job": "a"}, [10] * 10)
        text = ("name: g\ninterval: 1m\nalign_evaluation_time_on_interval: true\nrules:\n"
                "  - alert: A\n    expr: x > 5\n    for: 5m\n")
        self.mgr.set_groups("t", [("ns", group(text))], restore=False)
        self.advance_to(M)
        self.assertEqual(len(held), 1)
        old = self.mgr.groups["t"][("ns", "g")]
        self.mgr.set_groups("t", [("ns", group(text.replace("for: 5m", "for: 6m")))])
        new = self.mgr.groups["t"][("ns", "g")]
        self.assertIsNot(old, new)
        self.assertEqual(new.rules[0].active, {})      # not taken over yet
        held[0].callback(None)
        self.assertEqual(len(new.rules[0].active), 1)  # the alert pending since 1m carried over
        self.advance_to(2 * M)
        held[-1].callback(None)
        [a] = self.alerts()
        self.assertEqual((a["state"], a["activeAt"]), ("pending", go_time(M)))

    def test_tenants_independent(self):
        """A tenant whose writes hang does not delay another tenant's groups."""
        class Split:
            def __init__(self, tsdb):
                self.tsdb = tsdb

            def push(self, tenant, samples):
                return defer.Deferred() if tenant == "slow" else self.tsdb.push(tenant, samples)
        self.mgr.pusher = Split(self.tsdb)
        text = ("name: g\ninterval: 1m\nalign_evaluation_time_on_interval: true\nrules:\n"
                "  - record: r\n    expr: up\n")
        for tenant in ("slow", "fast"):
            self.series("up", {"job": "a"}, [1] * 10, tenant=tenant)
            self.mgr.set_groups(tenant, [("ns", group(text))])
        self.advance_to(3 * M)
        self.assertEqual(len(self.tsdb.samples("fast", "r")[(("__name__", "r"), ("job", "a"))]), 3)
        self.assertEqual(self.tsdb.samples("slow", "r"), {})


class RecordingTests(Base):
    def test_staleness_and_errors(self):
        """Series that stop matching get a stale marker at the next evaluation; a result with
        duplicate label sets is an error reported on the rule."""
        self.series("up", {"job": "a"}, [1, 1, 1])
        self.series("up", {"job": "b"}, [1, 1, 1, 1, 1, 1])
        self.mgr.set_groups("t", [("ns", group(
            "name: g\ninterval: 1m\nalign_evaluation_time_on_interval: true\nrules:\n"
            "  - record: r\n    expr: up == 1\n  - record: dup\n    expr: up\n    labels: {job: x}\n"))])
        self.advance_to(4 * M)
        # up{job="a"} ends at 2m but stays within the 5m lookback: recorded at every evaluation.
        a = self.tsdb.samples("t", "r")[(("__name__", "r"), ("job", "a"))]
        self.assertEqual(a, [(M, 1.0), (2 * M, 1.0), (3 * M, 1.0), (4 * M, 1.0)])
        rules = self.mgr.rules_api("t")["groups"][0]["rules"]
        self.assertEqual(rules[1]["health"], "err")
        self.assertEqual(rules[1]["lastError"],
                         "vector contains metrics with the same labelset after applying rule labels")

    def test_federated_groups_fail_visibly(self):
        """source_tenants cannot be honoured without tenant federation: the rules report it
        instead of answering from the owner's data."""
        self.series("up", {"job": "a"}, [1] * 3)
        self.mgr.set_groups("t", [("ns", group(
            "name: g\ninterval: 1m\nalign_evaluation_time_on_interval: true\n"
            "source_tenants: [a, b]\nrules:\n  - record: r\n    expr: up\n"))])
        self.advance_to(M)
        [r] = self.mgr.rules_api("t")["groups"][0]["rules"]
        self.assertEqual(r["health"], "err")
        self.assertIn("source_tenants", r["lastError"])
        self.assertEqual(self.tsdb.samples("t", "r"), {})
        self.assertEqual(self.mgr.rules_api("t")["groups"][0]["sourceTenants"], ["a", "b"])

    def test_stale_marker_written(self):
        self.series("v", {"job": "a"}, [1, 0, 0, 0])
        self.mgr.set_groups("t", [("ns", group(
            "name: g\ninterval: 1m\nalign_evaluation_time_on_interval: true\nrules:\n"
            "  - record: r\n    expr: v > 0\n"))])
        self.tsdb.add("t", {"__name__": "v", "job": "a"}, 0, 1)
        self.series("v", {"job": "a"}, [1, 1, 0, 0])
        self.advance_to(3 * M)
        pts = self.tsdb.samples("t", "r")[(("__name__", "r"), ("job", "a"))]
        self.assertEqual(pts[0], (M, 1.0))
        self.assertEqual(pts[1][0], 2 * M)
        self.assertTrue(is_stale(pts[1][1]))
        self.assertEqual(len(pts), 2)       # nothing more once stale


class AlertTests(Base):
    def setUp(self):
        super().setUp()
        self.mgr.config = RuleManagerConfig(external_url="http://ruler.example/prom")

    def test_states_and_notifications(self):
        """pending for `for`, then firing and sent (startsAt, endsAt = 4 x max(resend delay,
        interval), generatorURL); resent after the resend delay; resolved sent once with
        endsAt = resolution time; dropped after 15 minutes."""
        self.series("x", {"job": "a"}, [10] * 6 + [0] * 30)
        self.mgr.set_groups("t", [("ns", group(ALERT_GROUP))], restore=False)
        self.advance_to(M)
        [a] = self.alerts()
        self.assertEqual((a["state"], a["activeAt"], a["value"]),
                         ("pending", "1970-01-01T00:01:00Z", "1e+01"))
        self.assertEqual(a["annotations"], {"summary": "a is 10"})
        self.assertEqual(self.notify.calls, [])
        self.advance_to(3 * M)
        self.assertEqual(self.alerts()[0]["state"], "firing")
        self.assertEqual(len(self.notify.calls), 1)
        tenant, [sent] = self.notify.calls[0]
        self.assertEqual(tenant, "t")
        self.assertEqual(sent, {
            "labels": {"alertname": "High", "job": "a", "severity": "page"},
            "annotations": {"summary": "a is 10"},
            "startsAt": "1970-01-01T00:03:00.000Z", "endsAt": "1970-01-01T00:07:00.000Z",
            "generatorURL": "http://ruler.example/prom/graph?g0.expr=x+%3E+5&g0.tab=1"})
        self.advance_to(4 * M)
        self.assertEqual(len(self.notify.calls), 1)     # 1m resend delay not passed (strictly)
        self.advance_to(5 * M)
        self.assertEqual(len(self.notify.calls), 2)
        self.advance_to(6 * M)                          # x is 0 from 6m: resolved
        self.assertEqual(self.alerts(), [])
        _, [resolved] = self.notify.calls[-1]
        self.assertEqual(resolved["endsAt"], "1970-01-01T00:06:00.000Z")
        n = len(self.notify.calls)
        self.advance_to(7 * M)
        self.assertEqual(len(self.notify.calls), n)
        self.advance_to(8 * M)                          # still sent as resolved, each resend
        self.assertEqual(len(self.notify.calls), n + 1)
        self.assertEqual(self.notify.calls[-1][1][0]["endsAt"], "1970-01-01T00:06:00.000Z")
        self.advance_to(22 * M)
        rule = self.mgr.groups["t"][("ns", "g")].rules[0]
        self.assertEqual(list(rule.active), [])         # gone 15m after resolution
        # ALERTS series: pending at 1m-2m, firing 3m-5m, then stale markers.
        alerts = self.tsdb.samples("t", "ALERTS")
        firing = alerts[(("__name__", "ALERTS"), ("alertname", "High"), ("alertstate", "firing"),
                         ("job", "a"), ("severity", "page"))]
        self.assertEqual([t for t, v in firing if not is_stale(v)], [3 * M, 4 * M, 5 * M])
        self.assertTrue(is_stale(firing[-1][1]) and firing[-1][0] == 6 * M)
        fs = self.tsdb.samples("t", "ALERTS_FOR_STATE")
        [pts] = fs.values()
        self.assertEqual(pts[0], (M, 60.0))

    def test_keep_firing_for(self):
        self.series("x", {"job": "a"}, [10, 10, 0, 0, 0, 0, 0])
        self.mgr.set_groups("t", [("ns", group(
            "name: g\ninterval: 1m\nalign_evaluation_time_on_interval: true\nrules:\n"
            "  - alert: A\n    expr: x > 5\n    keep_firing_for: 2m\n"))], restore=False)
        states = []
        for k in range(1, 7):
            self.advance_to(k * M)
            states.append([a["state"] for a in self.alerts()])
        self.assertEqual(states, [["firing"], ["firing"], ["firing"], [], [], []])

    def test_limit(self):
        """The group's `limit`: an alerting rule with more alerts, a recording rule with more
        series fails its evaluation with Prometheus' text (no samples written, its alerts
        dropped); within the limit, or with limit 0, they evaluate."""
        self.series("x", {"job": "a"}, [10] * 3)
        self.series("x", {"job": "b"}, [10] * 3)
        self.mgr.set_groups("t", [("ns", group(
            "name: g\ninterval: 1m\nalign_evaluation_time_on_interval: true\nlimit: 1\nrules:\n"
            "  - alert: A\n    expr: x > 5\n  - record: r\n    expr: x\n"
            "  - record: one\n    expr: sum(x)\n"))], restore=False)
        self.advance_to(M)
        a, r, one = self.mgr.rules_api("t")["groups"][0]["rules"]
        self.assertEqual((a["health"], a["lastError"]), ("err", "exceeded limit of 1 with 2 alerts"))
        self.assertEqual((r["health"], r["lastError"]), ("err", "exceeded limit of 1 with 2 series"))
        self.assertEqual((one["health"], one["lastError"]), ("ok", ""))
        self.assertEqual(self.alerts(), [])
        self.assertEqual(self.tsdb.samples("t", "r"), {})
        self.assertEqual(self.tsdb.samples("t", "ALERTS"), {})
        self.assertEqual(list(self.tsdb.samples("t", "one")), [(("__name__", "one"),)])
        self.assertEqual(metric(self.mgr, "failures"), 2)
        # A changed limit is a changed group: limit 2 lets both through.
        self.mgr.set_groups("t", [("ns", group(
            "name: g\ninterval: 1m\nalign_evaluation_time_on_interval: true\nlimit: 2\nrules:\n"
            "  - alert: A\n    expr: x > 5\n  - record: r\n    expr: x\n"))])
        self.advance_to(2 * M)
        self.assertEqual([r["health"] for r in self.mgr.rules_api("t")["groups"][0]["rules"]],
                         ["ok", "ok"])
        self.assertEqual(len(self.alerts()), 2)
        self.assertEqual(len(self.tsdb.samples("t", "r")), 2)

    def test_keep_firing_since(self):
        """keepFiringSince (Prometheus 3.x) shows on an alert kept firing by keep_firing_for,
        from the first evaluation its expression was false; absent otherwise."""
        self.series("x", {"job": "a"}, [10, 10, 0, 0, 0, 10])
        self.mgr.set_groups("t", [("ns", group(
            "name: g\ninterval: 1m\nalign_evaluation_time_on_interval: true\nrules:\n"
            "  - alert: A\n    expr: x > 5\n    keep_firing_for: 5m\n"))], restore=False)
        self.advance_to(M)
        [a] = self.alerts()
        self.assertEqual(list(a), ["labels", "annotations", "state", "activeAt", "value"])
        self.advance_to(3 * M)
        [a] = self.alerts()
        self.assertEqual(list(a), ["labels", "annotations", "state", "activeAt", "keepFiringSince",
                                   "value"])
        self.assertEqual((a["state"], a["keepFiringSince"]), ("firing", "1970-01-01T00:02:00Z"))
        [r] = self.mgr.rules_api("t")["groups"][0]["rules"]
        self.assertEqual(r["alerts"], [a])
        self.advance_to(4 * M)
        self.assertEqual(self.alerts()[0]["keepFiringSince"], "1970-01-01T00:02:00Z")
        self.advance_to(5 * M)      # true again: no longer kept firing, just firing
        [a] = self.alerts()
        self.assertNotIn("keepFiringSince", a)
        self.assertEqual(a["state"], "firing")

    def test_template_query(self):
        """`query` in a template runs the tenant's instant query at the evaluation time; a
        second round answers queries that depend on the first one's results."""
        self.series("x", {"job": "a"}, [10] * 3)
        self.series("other", {"job": "a"}, [7, 8, 9])
        self.series("other", {"job": "b"}, [1, 2, 3])
        self.series("other", {"job": "b"}, [1, 2, 3], tenant="u")
        self.mgr.set_groups("t", [("ns", group(
            "name: g\ninterval: 1m\nalign_evaluation_time_on_interval: true\nrules:\n"
            "  - alert: A\n    expr: x > 5\n    annotations:\n"
            "      a: '{{ with query \"sum(other)\" }}{{ . | first | value }}{{ end }}'\n"
            "      b: '{{ $q := printf \"other{job=%q}\" (query \"max(x)\" | first | value | printf \"%.0f\" | "
            "printf \"%s\" | reReplaceAll \"10\" \"b\") }}{{ query $q | first | value }}'\n"
            "      c: '{{ query \"bad(\" }}'\n"))], restore=False)
        self.advance_to(2 * M)
        [a] = self.alerts()
        self.assertEqual(a["annotations"]["a"], "12")
        self.assertEqual(a["annotations"]["b"], "3")
        self.assertTrue(a["annotations"]["c"].startswith("<error expanding template: "), a)

    def test_template_queries_bounded(self):
        """One query per alert in a template: past MAX_TEMPLATE_QUERIES distinct queries the
        rest fail (in the template's output) instead of fanning out without bound."""
        from urdar.components import rulemanager as RM
        self.patch(RM, "MAX_TEMPLATE_QUERIES", 3)
        for i in range(5):
            self.series("x", {"job": "j%d" % i}, [10] * 3)
        self.mgr.set_groups("t", [("ns", group(
            "name: g\ninterval: 1m\nalign_evaluation_time_on_interval: true\nrules:\n"
            "  - alert: A\n    expr: x > 5\n    annotations:\n"
            "      a: '{{ with query (printf \"x{job=%q}\" $labels.job) }}{{ . | first | value }}{{ end }}'\n"
            ))], restore=False)
        self.advance_to(M)
        got = sorted(a["annotations"]["a"] for a in self.alerts())
        self.assertEqual(got[:3], ["10", "10", "10"])
        self.assertTrue(all("more than 3 distinct queries" in g for g in got[3:]), got)

    def test_templates_render_in_the_ruler_pool(self):
        """Templates are expanded by ruler pool jobs, never on the reactor: a template's query
        ends the job, the reactor runs the query, and a second job renders with its answer."""
        from tests.support.threads import InlineReactor, InlineThreadPool, ManualThreadPool
        from urdar.net.offload import Offload
        pools = {}

        def factory(workers, name):
            pools[name] = (ManualThreadPool if name == "ruler" else InlineThreadPool)(workers, name)
            return pools[name]
        off = Offload(InlineReactor(), factory)
        off.add_pool("ruler", 1, 10)
        off.start()
        self.mgr.offload = off
        self.series("x", {"job": "a"}, [10] * 3)
        self.mgr.set_groups("t", [("ns", group(
            "name: g\ninterval: 1m\nalign_evaluation_time_on_interval: true\nrules:\n"
            "  - alert: A\n    expr: x > 5\n    annotations:\n"
            "      a: '{{ query \"count(x)\" | first | value }}'\n"))], restore=False)
        self.advance_to(M)
        ruler = pools["ruler"]
        jobs = 0
        while ruler.pending:
            ruler.run_next()
            jobs += 1
        # result_vector, render (asks for count(x)), count(x)'s result_vector, render again,
        # stale markers.
        self.assertEqual(jobs, 5)
        self.assertEqual(self.alerts()[0]["annotations"], {"a": "1"})

    def test_restore_for_state(self):
        """After a restart, a pending alert's ActiveAt comes back from ALERTS_FOR_STATE, shifted
        by the outage (Prometheus' RestoreForState), instead of starting its `for` again."""
        text = ALERT_GROUP.replace("for: 2m", "for: 30m")
        self.series("x", {"job": "a"}, [10] * 120)
        self.mgr.set_groups("t", [("ns", group(text))], restore=False)
        self.advance_to(10 * M)
        self.assertEqual(self.alerts()[0]["activeAt"], "1970-01-01T00:01:00Z")
        self.mgr.stop()
        # A new ruler 5 minutes later over the same storage.
        mgr2, _, clock2, _ = make_manager(tsdb=self.tsdb, notify=Recorder())
        advance_to(clock2, 15 * M)
        mgr2.running = True
        mgr2.set_groups("t", [("ns", group(text))])
        rule = mgr2.groups["t"][("ns", "g")].rules[0]
        self.assertFalse(rule.restored)
        advance_to(clock2, 16 * M)         # first evaluation: a new pending alert, not restored
        self.assertEqual(mgr2.alerts_api("t")["alerts"][0]["activeAt"], go_time(16 * M))
        self.assertFalse(rule.restored)
        advance_to(clock2, 17 * M)         # second evaluation, then the restore
        [a] = mgr2.alerts_api("t")["alerts"]
        # pending 9m before going down at 10m, down 7m (until 17m): ActiveAt 1m + 7m.
        self.assertEqual(a["activeAt"], go_time(8 * M))
        self.assertTrue(rule.restored)
        # No ALERTS written by the new ruler before the restore.
        written = [t for t, _ in self.tsdb.samples("t", "ALERTS_FOR_STATE").popitem()[1]]
        self.assertEqual(written[-1], 10 * M)
        advance_to(clock2, 18 * M)
        self.assertIn((18 * M, 480.0), self.tsdb.samples("t", "ALERTS_FOR_STATE").popitem()[1])

    def test_no_restore_of_an_alert_that_ended(self):
        """The last ALERTS_FOR_STATE sample is a stale marker: the alert had ended, no restore."""
        text = ALERT_GROUP.replace("for: 2m", "for: 30m")
        self.series("x", {"job": "a"}, [10] * 9 + [0] * 6 + [10] * 30)
        self.mgr.set_groups("t", [("ns", group(text))], restore=False)
        self.advance_to(10 * M)
        self.assertEqual(self.alerts(), [])
        self.mgr.stop()
        mgr2, _, clock2, _ = make_manager(tsdb=self.tsdb)
        advance_to(clock2, 15 * M)
        mgr2.running = True
        mgr2.set_groups("t", [("ns", group(text))])
        advance_to(clock2, 17 * M)
        [a] = mgr2.alerts_api("t")["alerts"]
        self.assertEqual(a["activeAt"], go_time(16 * M))
        self.assertTrue(mgr2.groups["t"][("ns", "g")].rules[0].restored)

    def test_restore_within_grace_period(self):
        """Close to firing when the ruler went down: fires no sooner than the grace period."""
        text = ALERT_GROUP.replace("for: 2m", "for: 15m")
        self.series("x", {"job": "a"}, [10] * 120)
        self.mgr.set_groups("t", [("ns", group(text))], restore=False)
        self.advance_to(14 * M)           # 13m pending of 15m
        self.mgr.stop()
        mgr2, _, clock2, _ = make_manager(tsdb=self.tsdb)
        advance_to(clock2, 20 * M)
        mgr2.running = True
        mgr2.set_groups("t", [("ns", group(text))])
        advance_to(clock2, 22 * M)
        [a] = mgr2.alerts_api("t")["alerts"]
        # ActiveAt = restore time (22m) + grace (10m) - for (15m) = 17m.
        self.assertEqual(a["activeAt"], go_time(17 * M))


    def test_no_restore_after_outage_tolerance(self):
        """Down longer than -ruler.for-outage-tolerance: the `for` starts over."""
        text = ALERT_GROUP.replace("for: 2m", "for: 30m")
        self.series("x", {"job": "a"}, [10] * 200)
        self.mgr.set_groups("t", [("ns", group(text))], restore=False)
        self.advance_to(10 * M)
        self.mgr.stop()
        mgr2, _, clock2, _ = make_manager(tsdb=self.tsdb, config=RuleManagerConfig(
            for_outage_tolerance_ms=60 * M))
        advance_to(clock2, 80 * M)
        mgr2.running = True
        mgr2.set_groups("t", [("ns", group(text))])
        advance_to(clock2, 82 * M)
        [a] = mgr2.alerts_api("t")["alerts"]
        self.assertEqual(a["activeAt"], go_time(81 * M))
        self.assertTrue(mgr2.groups["t"][("ns", "g")].rules[0].restored)


class SyncTests(Base):
    def setUp(self):
        super().setUp()
        self.bucket = MemoryBucket()
        self.store = RuleStore(self.bucket)
        self.mgr.store = self.store
        self.mgr.running = False
        self.ruler = Ruler(self.store, Overrides(Config().limits_defaults()))
        self.ruler.on_change = self.mgr.sync_tenant

    def test_load_change_delete(self):
        self.series("up", {"job": "a"}, [1] * 30)
        self.successResultOf(self.ruler.create_rule_group("t", "ns", (
            "name: g\ninterval: 1m\nalign_evaluation_time_on_interval: true\nrules:\n"
            "  - record: r\n    expr: up\n").encode()))
        self.successResultOf(self.mgr.start())
        self.assertEqual(list(self.mgr.groups["t"]), [("ns", "g")])
        self.advance_to(2 * M)
        # A change through the API applies at once; the unchanged rule keeps its series, the
        # removed one gets stale markers at the next evaluation.
        self.successResultOf(self.ruler.create_rule_group("t", "ns", (
            "name: g\ninterval: 1m\nalign_evaluation_time_on_interval: true\nrules:\n"
            "  - record: r2\n    expr: up * 2\n").encode()))
        self.advance_to(3 * M)
        r = self.tsdb.samples("t", "r")[(("__name__", "r"), ("job", "a"))]
        self.assertEqual([t for t, _ in r], [M, 2 * M, 3 * M])
        self.assertTrue(is_stale(r[-1][1]))
        self.assertEqual(self.tsdb.samples("t", "r2")[(("__name__", "r2"), ("job", "a"))],
                         [(3 * M, 2.0)])
        self.advance_to(3 * M + 5000)
        self.successResultOf(self.ruler.delete_rule_group("t", "ns", "g"))
        self.assertNotIn("t", self.mgr.groups)
        r2 = self.tsdb.samples("t", "r2")[(("__name__", "r2"), ("job", "a"))]
        self.assertFalse(is_stale(r2[-1][1]))
        self.advance_to(5 * M + 5000)       # two intervals later, stamped with the deletion time
        r2 = self.tsdb.samples("t", "r2")[(("__name__", "r2"), ("job", "a"))]
        self.assertEqual(r2[-1][0], 3 * M + 5000)
        self.assertTrue(is_stale(r2[-1][1]))
        self.mgr.stop()

    def test_restart_resumes_groups(self):
        self.series("up", {"job": "a"}, [1] * 30)
        self.successResultOf(self.ruler.create_rule_group("t", "ns", (
            "name: g\ninterval: 1m\nalign_evaluation_time_on_interval: true\nrules:\n"
            "  - record: r\n    expr: up\n").encode()))
        self.successResultOf(self.mgr.start())
        self.advance_to(M)
        self.mgr.stop()
        self.advance_to(3 * M)
        self.successResultOf(self.mgr.start())
        self.advance_to(5 * M)
        r = self.tsdb.samples("t", "r")[(("__name__", "r"), ("job", "a"))]
        self.assertEqual([t for t, _ in r], [M, 4 * M, 5 * M])
        self.mgr.stop()

    def test_poll_picks_up_other_rulers_changes(self):
        self.successResultOf(self.mgr.start())
        self.assertEqual(self.mgr.groups, {})
        # Written by someone else (no hook): seen at the next poll.
        other = Ruler(self.store, Overrides(Config().limits_defaults()))
        self.successResultOf(other.create_rule_group("t", "ns", b"name: g\nrules:\n"
                                                     b"  - record: r\n    expr: up\n"))
        self.assertEqual(self.mgr.groups, {})
        self.clock.advance(60)
        self.assertEqual(list(self.mgr.groups["t"]), [("ns", "g")])
        self.mgr.stop()


class ReadAPITests(Base):
    def setUp(self):
        super().setUp()
        self.treq = StubTreq(RouteTable(Tenancy()).mount(RulesHandlers(self.mgr)).resource())

    def get(self, path, tenant="t"):
        resp = self.successResultOf(self.treq.get("http://urdar/prometheus" + path,
                                                  headers={"X-Scope-OrgID": tenant}))
        return resp.code, self.successResultOf(self.treq.content(resp))

    def test_rules_and_alerts(self):
        self.series("x", {"job": "a"}, [10] * 5)
        self.mgr.set_groups("t", [("ns", group(ALERT_GROUP)), ("ns2", group(
            "name: rec\ninterval: 30s\nrules:\n  - record: r\n    expr: x\n"))], restore=False)
        self.advance_to(M)
        code, body = self.get("/api/v1/rules")
        self.assertEqual(code, 200)
        doc = json.loads(body)
        self.assertEqual((doc["status"], doc["errorType"], doc["error"]), ("success", "", ""))
        g, rec = doc["data"]["groups"]
        self.assertEqual((g["name"], g["file"], g["interval"]), ("g", "ns", 60))
        self.assertEqual((rec["name"], rec["file"], rec["interval"]), ("rec", "ns2", 30))
        self.assertEqual(g["lastEvaluation"], "1970-01-01T00:01:00Z")
        [rule] = g["rules"]
        self.assertEqual({k: rule[k] for k in ("state", "name", "query", "duration", "labels",
                                               "health", "lastError", "type", "keepFiringFor")},
                         {"state": "pending", "name": "High", "query": "x > 5", "duration": 120,
                          "labels": {"severity": "page"}, "health": "ok", "lastError": "",
                          "type": "alerting", "keepFiringFor": 0})
        self.assertEqual(rule["alerts"], [{
            "labels": {"alertname": "High", "job": "a", "severity": "page"},
            "annotations": {"summary": "a is 10"}, "state": "pending",
            "activeAt": "1970-01-01T00:01:00Z", "value": "1e+01"}])
        self.assertIn(b'"summary":"{{ $labels.job }} is {{ $value }}"', body)
        self.assertEqual(rec["rules"][0]["type"], "recording")
        # Filters.
        doc = json.loads(self.get("/api/v1/rules?type=record")[1])
        self.assertEqual([g["name"] for g in doc["data"]["groups"]], ["rec"])
        doc = json.loads(self.get("/api/v1/rules?type=alert")[1])
        self.assertEqual([g["name"] for g in doc["data"]["groups"]], ["g"])
        doc = json.loads(self.get("/api/v1/rules?file[]=ns2")[1])
        self.assertEqual([g["name"] for g in doc["data"]["groups"]], ["rec"])
        doc = json.loads(self.get("/api/v1/rules?rule_group[]=g&rule_name[]=High")[1])
        self.assertEqual([g["name"] for g in doc["data"]["groups"]], ["g"])
        doc = json.loads(self.get("/api/v1/rules?rule_name[]=nope")[1])
        self.assertEqual(doc["data"]["groups"], [])
        code, body = self.get("/api/v1/rules?type=bogus")
        self.assertEqual(code, 400)
        self.assertEqual(json.loads(body)["errorType"], "bad_data")
        code, body = self.get("/api/v1/alerts")
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body)["data"]["alerts"][0]["labels"]["alertname"], "High")

    def test_tenant_isolation(self):
        self.series("x", {"job": "a"}, [10] * 5)
        self.mgr.set_groups("t", [("ns", group(ALERT_GROUP))], restore=False)
        self.advance_to(M)
        self.assertEqual(self.get("/api/v1/rules", tenant="other"),
                         (200, b'{"status":"success","data":{"groups":[]},"errorType":"","error":""}'))
        self.assertEqual(self.get("/api/v1/alerts", tenant="other"),
                         (200, b'{"status":"success","data":{"alerts":[]},"errorType":"","error":""}'))
        resp = self.successResultOf(self.treq.get("http://urdar/prometheus/api/v1/rules"))
        self.assertEqual(resp.code, 401)


class DistributorPusherTests(SynchronousTestCase):
    def test_batches_and_encoding(self):
        """Rule results go to the distributor as snappy WriteRequests with Mimir's RULE source,
        PUSH_BATCH samples per request, stale markers intact."""
        import cramjam

        from urdar.components import rulemanager as RM
        from urdar.engine import remotewrite as rw
        self.patch(RM, "PUSH_BATCH", 2)
        bodies = []

        class Dist:
            def push(self, tenant, body):
                bodies.append((tenant, body))
                return defer.succeed(None)
        samples = [((("__name__", "r"), ("i", str(i))), 1000 * i, float(i)) for i in range(4)]
        samples.append(((("__name__", "r"), ("i", "x")), 5000, RM.STALE_NAN))
        self.successResultOf(RM.DistributorPusher(Dist()).push("t", samples))
        self.assertEqual([t for t, _ in bodies], ["t", "t", "t"])
        got = []
        for _, body in bodies:
            dw = rw.decode(memoryview(cramjam.snappy.decompress_raw(body)))
            self.assertEqual(dw.source, 1)
            for i in range(dw.n_series):
                got.append((dw.labels(i), list(dw.ts[dw.sample_offsets[i]:dw.sample_offsets[i + 1]]),
                            list(dw.vals[dw.sample_offsets[i]:dw.sample_offsets[i + 1]])))
        self.assertEqual([g[0] for g in got], [[("__name__", "r"), ("i", i)] for i in "0123x"])
        self.assertEqual([g[1] for g in got], [[0], [1000], [2000], [3000], [5000]])
        self.assertTrue(is_stale(got[-1][2][0]))


class RemoteQueryTests(SynchronousTestCase):
    """-ruler.query-frontend.address: rule queries as POSTs to a frontend's query API."""

    def setUp(self):
        from twisted.internet.task import Clock
        from twisted.web.resource import Resource
        self.seen = []
        self.answer = (200, b"")
        test = self

        class Frontend(Resource):
            isLeaf = True

            def render_POST(self, request):
                test.seen.append((request.path, request.getHeader("X-Scope-OrgID"),
                                  {k.decode(): [x.decode() for x in v] for k, v in request.args.items()}))
                request.setResponseCode(test.answer[0])
                return test.answer[1]
        from urdar.components.rulemanager import RemoteQuery
        self.clock = Clock()
        self.query = RemoteQuery("frontend:8080", "/prometheus", StubTreq(Frontend()), self.clock)

    def test_vector_and_scalar(self):
        self.answer = (200, json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"job": "b", "__name__": "up"}, "value": [1.5, "NaN"]},
            {"metric": {}, "value": [1.5, "2"]}]}}).encode())
        res = self.successResultOf(self.query("team-a", "up == 1", 1500, 10.0))
        self.assertEqual(self.seen, [(b"/prometheus/api/v1/query", "team-a",
                                      {"query": ["up == 1"], "time": ["1.500"]})])
        self.assertEqual(res.type, "vector")
        self.assertEqual(res.value[1], ((), 2.0))
        self.assertEqual(res.value[0][0], (("__name__", "up"), ("job", "b")))
        from urdar.components.rulemanager import result_vector
        self.assertEqual(len(result_vector(res)), 2)
        self.answer = (200, b'{"status":"success","data":{"resultType":"scalar","result":[1,"-Inf"]}}')
        res = self.successResultOf(self.query("t", "-Inf", 1000, 10.0))
        self.assertEqual(result_vector(res), [((), float("-inf"))])

    def test_errors(self):
        """The frontend's error text becomes the rule's error; a matrix is not a rule result;
        an answer that is not the API's JSON names the status."""
        from urdar.components.rulemanager import EvalError, result_vector
        self.answer = (422, b'{"status":"error","errorType":"execution","error":"too many samples"}')
        f = self.failureResultOf(self.query("t", "x", 0, 10.0), EvalError)
        self.assertEqual(str(f.value), "too many samples")
        self.answer = (502, b"<html>bad gateway</html>")
        f = self.failureResultOf(self.query("t", "x", 0, 10.0), EvalError)
        self.assertEqual(str(f.value), "remote query failed with status 502: <html>bad gateway</html>")
        self.answer = (200, b'{"status":"success","data":{"resultType":"matrix","result":[]}}')
        res = self.successResultOf(self.query("t", "x[1m]", 0, 10.0))
        self.assertRaises(EvalError, result_vector, res)

    def test_timeout(self):
        """No answer within the rule's timeout is an EvalError naming it."""
        from twisted.web.resource import Resource
        from twisted.web.server import NOT_DONE_YET

        from urdar.components.rulemanager import EvalError, RemoteQuery

        class Hanging(Resource):
            isLeaf = True

            def render_POST(self, request):
                return NOT_DONE_YET
        q = RemoteQuery("http://f:1/", "/prometheus", StubTreq(Hanging()), self.clock)
        d = q("t", "x", 0, 5.0)
        self.assertNoResult(d)
        self.clock.advance(5)
        f = self.failureResultOf(d, EvalError)
        self.assertIn("no answer within 5s", str(f.value))
