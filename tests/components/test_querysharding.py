"""Query sharding (components/querysharding.py behind components/frontend.py) in a whole
-target=all process through Klein (StubTreq) with inline pools and a fake clock: with 3 or 16
shards, splitting at 1h and the results cache on, range queries answer what the querier
answers with all of it off; data is partly in the ingester's blocks and partly in its head.
Plus the store-gateway: it puts every series in the same shard as the head does."""
import json
import math
import os
from urllib.parse import urlencode

import cramjam
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.components.test_frontend import H_MS, NOW_MS, NOW_S, P, POOLS, Recorder
from tests.components.test_storegateway import series_data
from tests.support.app import started_modules
from tests.support.tmp import mktemp
from urdar.components.querysharding import plan_sharding
from urdar.components.storegateway import StoreGateway, StoreGatewayConfig
from urdar.engine.block import BlockReader, new_ulid, write_block
from urdar.engine.blockquery import block_select
from urdar.engine.matchers import Matcher
from urdar.engine.remotewrite import encode_write_request
from urdar.engine.sharding import SHARD_LABEL, shard_of
from urdar.promql.parser import parse_expr
from urdar.storage.memory import MemoryBucket
from urdar.storage.prefixed import for_tenant
from urdar.storage.shipper import Shipper

# (query, exact): exact answers are byte-for-byte equal; the others add partial sums in another
# order, so their floats may differ in the last bits (compared at a relative 1e-12).
SHARDED = (
    ("sum(rate(node_cpu_seconds_total[5m]))", False),
    ("sum by (mode) (rate(node_cpu_seconds_total[5m]))", False),
    ("sum without (cpu) (rate(node_cpu_seconds_total[5m]))", False),
    ("avg by (instance) (node_cpu_seconds_total)", False),
    ("avg(rate(node_cpu_seconds_total[10m] offset 20m))", False),
    ("count by (mode) (node_cpu_seconds_total > 2000)", True),
    # Shards' partial counts come and go: a step a shard has no value for stays empty.
    ("count by (mode) (node_cpu_seconds_total % 1000 > 500)", True),
    ("max by (instance) (rate(node_cpu_seconds_total[5m]))", True),
    ("min without (mode, cpu) (node_cpu_seconds_total)", True),
    ("group by (mode) (node_cpu_seconds_total)", True),
    ("count(count by (instance) (node_cpu_seconds_total))", True),
    ('sum(rate(node_cpu_seconds_total{mode="idle"}[5m])) / sum(rate(node_cpu_seconds_total[5m]))',
     False),
    ("histogram_quantile(0.9, sum by (le) (rate(req_duration_seconds_bucket[5m])))", False),
    ("topk(3, sum by (instance) (rate(node_cpu_seconds_total[5m])))", False),
    ("sum(max_over_time(node_cpu_seconds_total[30m]))", False),
    ("sum(node_cpu_seconds_total @ %d)" % (NOW_S - 5 * 3600), False),
    ("max(node_cpu_seconds_total @ end())", True),
    ('sum by (mode) (label_replace(node_cpu_seconds_total, "m", "$1", "mode", "(.*)") * 2)', False),
    ("sum(rate(temperature[5m]))", False),       # an info annotation from every shard
)
NOT_SHARDED = (
    "rate(node_cpu_seconds_total[5m])",
    "sum(rate(node_cpu_seconds_total[5m])) + on() group_left temperature",
    "quantile(0.5, node_cpu_seconds_total)",
    "max_over_time(sum(node_cpu_seconds_total)[30m:1m])",
    "sum(vector(1))",
)


def same_answer(testcase, got, want, exact, msg):
    """Equal bodies, or with `exact` false equal but for float values within a relative
    1e-12 (Mimir's own sharding tests also compare samples approximately)."""
    if exact or got == want:
        testcase.assertEqual(got, want, msg)
        return
    g, w = json.loads(got), json.loads(want)
    testcase.assertEqual(g["data"]["resultType"], w["data"]["resultType"], msg)
    testcase.assertEqual({k: v for k, v in g.items() if k != "data"},
                         {k: v for k, v in w.items() if k != "data"}, msg)
    gs, ws = g["data"]["result"], w["data"]["result"]
    testcase.assertEqual([s["metric"] for s in gs], [s["metric"] for s in ws], msg)
    for a, b in zip(gs, ws):
        testcase.assertEqual([p[0] for p in a["values"]], [p[0] for p in b["values"]], msg)
        for (_, x), (_, y) in zip(a["values"], b["values"]):
            fx, fy = float(x), float(y)
            if not (x == y or math.isclose(fx, fy, rel_tol=1e-12, abs_tol=0.0)):
                testcase.fail("%s: %s != %s" % (msg, x, y))


class Recorder3(Recorder):
    """Recorder that also notes whether the query carried a shard matcher."""

    def range_query(self, tenant, query, start, end, step, *args, **kw):
        self.calls.append((tenant, start, end, SHARD_LABEL in query))
        return self.querier.range_query(tenant, query, start, end, step, *args, **kw)


    def instant_query(self, tenant, query, t, *args, **kw):
        self.calls.append((tenant, t, t, SHARD_LABEL in query))
        return self.querier.instant_query(tenant, query, t, *args, **kw)


def same_vector(testcase, got, want, msg):
    """Equal instant answers: the same series (in any order: an aggregation's output order is
    no contract, Prometheus' own is its map order) with values within a relative 1e-12."""
    g, w = json.loads(got), json.loads(want)
    testcase.assertEqual({k: v for k, v in g.items() if k != "data"},
                         {k: v for k, v in w.items() if k != "data"}, msg)
    testcase.assertEqual(g["data"]["resultType"], w["data"]["resultType"], msg)
    key = lambda s: json.dumps(s["metric"], sort_keys=True)
    gs = sorted(g["data"]["result"], key=key)
    ws = sorted(w["data"]["result"], key=key)
    testcase.assertEqual([s["metric"] for s in gs], [s["metric"] for s in ws], msg)
    for a, b in zip(gs, ws):
        (ta, x), (tb, y) = a["value"], b["value"]
        testcase.assertEqual(ta, tb, msg)
        if not (x == y or math.isclose(float(x), float(y), rel_tol=1e-12, abs_tol=0.0)):
            testcase.fail("%s: %s != %s" % (msg, x, y))


class ShardingTestCase(SynchronousTestCase):
    shards = 3
    config = {"frontend.split_queries_by_interval": H_MS, "frontend.cache_results": True,
              "frontend.parallelize_shardable_queries": True}

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW_S)
        self.modules = started_modules(self, self.clock, dict(
            self.config, **{"limits.query_sharding_total_shards": self.shards}), POOLS)
        self.treq = StubTreq(self.modules.resource())
        self.frontend = self.modules.frontend
        self.recorder = Recorder3(self.frontend.querier)
        self.frontend.querier = self.recorder
        self.frontend.sharding.querier = self.recorder
        # 7h of data: the first 4h cut into the ingester's blocks, the rest in its head.
        self.load(0, 4 * 60)
        self.successResultOf(self.modules.ingester.flush())
        self.load(4 * 60, 7 * 60)
        self.assertTrue(self.modules.ingester.get_tsdb("t1").blocks())

    def load(self, first_min, last_min):
        first = NOW_MS - 7 * H_MS
        for batch in range(first_min, last_min, 10):
            series = []
            ts = [first + (batch + i) * 60_000 + 3 for i in range(10)]
            for inst in range(6):
                for cpu in range(2):
                    for k, mode in enumerate(("idle", "user", "system", "iowait")):
                        rate = (inst + 1) * (k + 1) * 0.37 + cpu * 0.11
                        series.append(([("__name__", "node_cpu_seconds_total"),
                                        ("cpu", str(cpu)), ("instance", "host-%d" % inst),
                                        ("mode", mode)],
                                       [(t, rate * (t - first) / 1000.0) for t in ts]))
            for le, frac in (("0.1", 0.5), ("0.5", 0.8), ("1", 0.95), ("+Inf", 1.0)):
                for inst in range(3):
                    series.append(([("__name__", "req_duration_seconds_bucket"), ("le", le),
                                    ("instance", "host-%d" % inst)],
                                   [(t, frac * (inst + 1) * (t - first) / 100.0) for t in ts]))
            series.append(([("__name__", "temperature")],
                           [(t, 20.0 + ((t // 60_000) % 7)) for t in ts]))
            body = bytes(cramjam.snappy.compress_raw(encode_write_request(series)))
            r = self.successResultOf(self.treq.post("http://urdar/api/v1/push", data=body, headers={
                "X-Scope-OrgID": "t1", "Content-Encoding": "snappy"}))
            self.assertEqual(r.code, 200, self.successResultOf(r.text()))

    def get(self, query, start, end, step=60):
        qs = urlencode({"query": query, "start": start, "end": end, "step": step})
        r = self.successResultOf(self.treq.get(P + "query_range?" + qs,
                                               headers={"X-Scope-OrgID": "t1"}))
        return r.code, self.successResultOf(r.content())

    def range_query(self, query, start, end, step=60):
        code, body = self.get(query, start, end, step)
        self.assertEqual(code, 200, body)
        return body

    def unsharded(self, query, start, end, step=60):
        """The querier's own answer: no frontend (no sharding, splitting or cache)."""
        handlers = self.modules.querier_handlers
        handlers.frontend, saved = None, handlers.frontend
        try:
            return self.range_query(query, start, end, step)
        finally:
            handlers.frontend = saved

    def check_table(self, start, end, step=60):
        for query, exact in SHARDED:
            want = self.unsharded(query, start, end, step)
            del self.recorder.calls[:]
            first = self.range_query(query, start, end, step)
            same_answer(self, first, want, exact, query)
            self.assertTrue(self.sharded_calls(), query)
            again = self.range_query(query, start, end, step)          # partly from the cache
            same_answer(self, again, want, exact, query)
        for query in NOT_SHARDED:
            want = self.unsharded(query, start, end, step)
            del self.recorder.calls[:]
            self.assertEqual(self.range_query(query, start, end, step), want, query)
            self.assertEqual(self.sharded_calls(), [], query)

    def sharded_calls(self):
        return [c for c in self.recorder.calls if c[3]]


class DifferentialTests(ShardingTestCase):

    def test_sharded_split_cached_equals_unsharded(self):
        """Every query of the table over 6h (7 one-hour parts, blocks and head), sharded,
        split and cached, answers what the querier answers with all of it off; non-shardable
        queries are sent on unsharded."""
        self.check_table(NOW_S - 6 * 3600, NOW_S)

    def test_single_part_and_unaligned_ranges(self):
        """A range inside one hour, and one off the step grid, shard and equal the querier."""
        self.check_table(NOW_S - 133 * 60, NOW_S - 74 * 60)
        self.check_table(NOW_S - 3 * 3600 + 7, NOW_S - 20, step=45)

    def test_shard_queries_per_part(self):
        """A one-leg query runs `shards` shard queries per split part, a two-leg one twice
        that, within -query-frontend.query-sharding-max-sharded-queries."""
        start, end = NOW_S - 6 * 3600, NOW_S
        self.range_query("sum(rate(node_cpu_seconds_total[5m]))", start, end)
        self.assertEqual(len(self.sharded_calls()), 7 * self.shards)
        del self.recorder.calls[:]
        self.range_query("avg by (mode) (node_cpu_seconds_total)", start, end)
        shards = min(self.shards, 128 // 7 // 2)
        self.assertEqual(len(self.sharded_calls()), 7 * 2 * shards)

    def test_metrics(self):
        """Mimir's sharding metrics count attempts, rewrites and shard queries per part."""
        reg = self.modules.registry
        start, end = NOW_S - 2 * 3600 + 60, NOW_S - 3600      # 2 parts
        self.range_query("sum(rate(node_cpu_seconds_total[5m]))", start, end)
        self.range_query("rate(node_cpu_seconds_total[5m])", start, end)
        get = reg.get_sample_value
        self.assertEqual(get("cortex_frontend_query_sharding_rewrites_attempted_total"), 4)
        self.assertEqual(get("cortex_frontend_query_sharding_rewrites_succeeded_total"), 2)
        self.assertEqual(get("cortex_frontend_sharded_queries_total"), 2 * self.shards)
        self.assertEqual(get("cortex_frontend_sharded_queries_per_query_count"), 2)


    def instant(self, query, t, status=200):
        qs = urlencode({"query": query, "time": t})
        r = self.successResultOf(self.treq.get(P + "query?" + qs,
                                               headers={"X-Scope-OrgID": "t1"}))
        body = self.successResultOf(r.content())
        self.assertEqual(r.code, status, body)
        return body

    def instant_unsharded(self, query, t, status=200):
        handlers = self.modules.querier_handlers
        handlers.frontend, saved = None, handlers.frontend
        try:
            return self.instant(query, t, status)
        finally:
            handlers.frontend = saved

    def test_instant_queries_sharded_equal_unsharded(self):
        """Instant queries shard too (as in Mimir): each shard query is an instant query at
        the same time, and every query of the table answers what the querier answers alone,
        on block data, head data and both; non-shardable ones are sent on as they are."""
        for t in (NOW_S - 5 * 3600 - 17, NOW_S - 4 * 3600 + 90, NOW_S - 61, NOW_S):
            for query, _ in SHARDED:
                want = self.instant_unsharded(query, t)
                del self.recorder.calls[:]
                same_vector(self, self.instant(query, t), want, "%s @ %d" % (query, t))
                self.assertTrue(self.sharded_calls(), query)
                self.assertEqual({c[1] for c in self.recorder.calls}, {t * 1000}, query)
            for query in NOT_SHARDED:
                want = self.instant_unsharded(query, t)
                del self.recorder.calls[:]
                self.assertEqual(self.instant(query, t), want, query)
                self.assertEqual(self.sharded_calls(), [], query)

    def test_instant_query_errors_and_metrics(self):
        """A bad instant query is the querier's 400; one sharded instant query counts one
        rewrite and `shards` shard queries."""
        self.assertEqual(self.instant("sum(", NOW_S, 400),
                         self.instant_unsharded("sum(", NOW_S, 400))
        get = self.modules.registry.get_sample_value
        self.instant("sum(rate(node_cpu_seconds_total[5m]))", NOW_S)
        self.assertEqual(get("cortex_frontend_query_sharding_rewrites_succeeded_total"), 1)
        self.assertEqual(get("cortex_frontend_sharded_queries_total"), self.shards)


class Differential16Tests(DifferentialTests):
    shards = 16


class StoreGatewayDifferentialTests(ShardingTestCase):
    """The same with the first 4h read from the store-gateway (the flushed, shipped blocks):
    the ingester is asked only for the last 3h, the store-gateway for everything it has."""
    shards = 16
    config = dict(ShardingTestCase.config, **{"querier.query_ingesters_within": 3 * H_MS,
                                               "querier.query_store_after": 0})

    def setUp(self):
        super().setUp()
        sg = self.modules.storegateway
        self.successResultOf(sg.sync())
        self.assertTrue(sg.blocks("t1"))

    def test_sharded_split_cached_equals_unsharded(self):
        """Every query of the table over 6h, data from the store-gateway and the ingester's
        head, sharded, split and cached, answers what the querier answers with all of it off."""
        # Only the store-gateway has samples older than 3h.
        old = self.unsharded("count(node_cpu_seconds_total)", NOW_S - 6 * 3600, NOW_S - 6 * 3600)
        self.assertEqual(json.loads(old)["data"]["result"][0]["values"][0][1], "48")
        self.check_table(NOW_S - 6 * 3600, NOW_S)


class ErrorTests(ShardingTestCase):

    def test_malformed_shard_matcher_is_bad_data(self):
        """A query with a malformed __query_shard__ value is refused with 400 bad_data naming
        the value, before any source reads with it."""
        for value in ("0_of_3", "4_of_3", "x"):
            code, body = self.get('sum(node_cpu_seconds_total{__query_shard__="%s"})' % value,
                                  NOW_S - 600, NOW_S)
            self.assertEqual(code, 400, body)
            err = json.loads(body)
            self.assertEqual(err["errorType"], "bad_data")
            self.assertIn('invalid shard ID: "%s"' % value, err["error"])

    def test_malformed_shard_matcher_in_metadata_requests_is_bad_data(self):
        """/series, /labels and label values refuse a malformed __query_shard__ with 400 too,
        and a valid one narrows them to the shard's series."""
        for path in ('series?match[]={__query_shard__="x"}',
                     'labels?match[]={__query_shard__="0_of_2"}',
                     'label/mode/values?match[]={__query_shard__="3_of_2",mode="idle"}'):
            r = self.successResultOf(self.treq.get(P + path, headers={"X-Scope-OrgID": "t1"}))
            body = self.successResultOf(r.content())
            self.assertEqual(r.code, 400, (path, body))
            self.assertIn("invalid shard ID", json.loads(body)["error"])
        n = 0
        for i in (1, 2):
            r = self.successResultOf(self.treq.get(
                P + 'series?match[]=node_cpu_seconds_total{__query_shard__="%d_of_2"}' % i,
                headers={"X-Scope-OrgID": "t1"}))
            n += len(json.loads(self.successResultOf(r.content()))["data"])
        self.assertEqual(n, 48)

    def test_user_shard_matcher_selects_a_shard(self):
        """A user's own __query_shard__ matchers select the series of that shard; the three
        shards together are every series."""
        total = 0
        for i in (1, 2, 3):
            body = self.unsharded('count(node_cpu_seconds_total{__query_shard__="%d_of_3"})' % i,
                                  NOW_S - 60, NOW_S)
            total += int(json.loads(body)["data"]["result"][0]["values"][0][1])
        self.assertEqual(total, 48)


class ConcurrencyTests(ShardingTestCase):
    shards = 16

    def test_shard_queries_in_flight_bounded_by_max_query_parallelism(self):
        """A one-part query's 16 shard queries run at most max_query_parallelism at a time;
        the rest start as earlier ones finish, and the answer is the unsharded one."""
        self.modules.overrides.set_overrides({"t1": {"max_query_parallelism": 3}})
        query = "sum by (mode) (rate(node_cpu_seconds_total[5m]))"
        start, end = NOW_S - 40 * 60, NOW_S - 20 * 60
        want = self.unsharded(query, start, end)
        held = []
        real = self.recorder.range_query

        def hold(*args, **kw):
            d = defer.Deferred()
            held.append((d, args, kw))
            return d
        self.recorder.range_query = hold
        d = self.frontend.range_query("t1", query, start * 1000, end * 1000, 60_000)
        most = 0
        while True:
            waiting = [h for h in held if not h[0].called]
            most = max(most, len(waiting))
            if not waiting:
                break
            hd, args, kw = waiting[0]
            real(*args, **kw).chainDeferred(hd)
        self.assertEqual((most, len(held)), (3, 16))
        got = [(labels, [(t / 1000, v) for t, v in zip(ts, vs)])
               for labels, ts, vs in self.successResultOf(d).value]
        expected = [(tuple(sorted(s["metric"].items())), [(t, float(v)) for t, v in s["values"]])
                    for s in json.loads(want)["data"]["result"]]
        self.assertEqual([g[0] for g in got], [e[0] for e in expected])
        for (_, a), (_, b) in zip(got, expected):
            self.assertEqual([p[0] for p in a], [p[0] for p in b])
            for (_, x), (_, y) in zip(a, b):
                self.assertTrue(math.isclose(x, y, rel_tol=1e-12), (x, y))

    def test_cancelling_a_sharded_query_cancels_its_shards(self):
        """When the client goes away, running shard queries are cancelled and no further one
        starts."""
        self.modules.overrides.set_overrides({"t1": {"max_query_parallelism": 2}})
        held, cancelled = [], []

        def hold(*args, **kw):
            d = defer.Deferred(canceller=cancelled.append)
            held.append(d)
            return d
        self.recorder.range_query = hold
        d = self.frontend.range_query("t1", "sum(node_cpu_seconds_total)", NOW_MS - 30 * 60_000,
                                      NOW_MS - 20 * 60_000, 60_000, no_store=True)
        self.assertEqual(len(held), 2)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual((len(held), cancelled), (2, held))

    def test_a_failing_shard_fails_the_query(self):
        """A shard query over a fetch limit fails the whole query with the querier's error
        (never a partial sum)."""
        self.modules.overrides.set_overrides({"t1": {"max_fetched_series_per_query": 1}})
        code, body = self.get("sum(node_cpu_seconds_total)", NOW_S - 600, NOW_S)
        self.assertEqual(code, 422, body)
        self.assertIn("err-mimir-max-series-per-query", json.loads(body)["error"])


class PlanTests(SynchronousTestCase):

    def test_shards_bounded_by_limits(self):
        """max sharded queries divides among split parts and legs; a long regexp or a total of
        1 shard turns sharding off (Mimir's getShardsForQuery)."""
        def shards(q, total=16, max_q=128, regex=4096, parts=1):
            plan = plan_sharding(q, parse_expr, total, max_q, regex, parts)
            return plan.shards if plan.query is not None else (0 if not plan.attempted else -1)
        self.assertEqual(shards("sum(x)"), 16)
        self.assertEqual(shards("sum(x)", parts=30), 4)
        self.assertEqual(shards("sum(x) / count(y)", parts=7), 9)
        self.assertEqual(shards("sum(x)", parts=100), 0)            # 1 shard: not attempted
        self.assertEqual(shards("sum(x)", max_q=0, parts=100), 16)
        self.assertEqual(shards("sum(x)", total=1), 0)
        self.assertEqual(shards('sum(x{a=~"%s"})' % ("a" * 5000)), 0)
        self.assertEqual(shards('sum(x{a=~"%s"})' % ("a" * 5000), regex=0), 16)
        self.assertEqual(shards("rate(x[5m])"), -1)                  # attempted, not shardable


class StoreGatewayShardTests(SynchronousTestCase):

    def test_store_gateway_shards_equal_block_shards(self):
        """The store-gateway returns for each shard exactly the series a local block read
        puts in it (the head's hash), and reads no chunk of other shards' series."""
        tmp = mktemp(self)
        clock = Clock()
        clock.advance(1_700_000_000)
        bucket = MemoryBucket(clock)
        local = os.path.join(tmp, "local")
        os.makedirs(local)
        ulid = write_block(local, 0, 2 * H_MS, series_data(0, 2 * H_MS, 3, instances=20),
                           ulid=new_ulid(1))
        self.successResultOf(Shipper(local, for_tenant(bucket, "t1"), clock).sync())
        sg = StoreGateway(bucket, os.path.join(tmp, "sync"), clock,
                          StoreGatewayConfig(sync_interval_ms=0))
        self.successResultOf(sg.start())
        self.addCleanup(sg.stop)
        name = Matcher("=", "__name__", "up")
        # The chunks asked for: one shard's series' only, never the other shards'.
        asked = []
        fetch_chunks = sg._fetch_chunks
        sg._fetch_chunks = lambda b, refs: (asked.append(len(refs)), fetch_chunks(b, refs))[1]
        # (the shard first: a select whose chunks are all cached already skips the fetch)
        one = self.successResultOf(sg.select(
            "t1", [name, Matcher("=", SHARD_LABEL, "1_of_16")], 0, 2 * H_MS))
        every = self.successResultOf(sg.select("t1", [name], 0, 2 * H_MS))
        self.assertTrue(0 < len(one) < len(every) / 4)
        self.assertTrue(0 < asked[0] < asked[1] / 4, asked)
        with BlockReader(os.path.join(local, ulid)) as b:
            every = {bytes(k) for k, _, _ in block_select(b, [name], 0, 2 * H_MS)}
            for n in (3, 16):
                union = []
                for i in range(1, n + 1):
                    ms = [name, Matcher("=", SHARD_LABEL, "%d_of_%d" % (i, n))]
                    got = self.successResultOf(sg.select("t1", ms, 0, 2 * H_MS))
                    want = block_select(b, ms, 0, 2 * H_MS)
                    self.assertEqual([(bytes(k), list(t)) for k, t, _ in got],
                                     [(bytes(k), list(t)) for k, t, _ in want])
                    self.assertTrue(all(shard_of(k, n) == i - 1 for k, _, _ in got))
                    union.extend(bytes(k) for k, _, _ in got)
                self.assertEqual(sorted(union), sorted(every))

