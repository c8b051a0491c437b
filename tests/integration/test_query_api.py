"""The query API of a running `python -m urdar` over real HTTP, and PromQL results compared with
Debian's Prometheus 2.42 holding the same samples.

The service test pushes to two tenants with the remote-write encoder and reads every endpoint
(query, query_range, series, labels, label values, metadata, exemplars, remote read in both
response types, cardinality). The differential test pushes identical data to urdar and to
Prometheus (--web.enable-remote-write-receiver) with sample timestamps off the evaluation grid
(so 2.x's left-closed windows and 3.x's left-open ones agree) and compares a varied query set as
instant and range queries, values to 1e-9 relative. No window reaches back to the first sample
(50 min before now): there 2.x caps rate()'s extrapolation differently from 3.x, which urdar follows.
Evaluation times avoid whole minutes, where 2.x's subqueries include the left edge's step."""
import json
import math
import os
import random
import tempfile
import time
import unittest
import urllib.parse

import cramjam

from tests.handlers.test_querier import _read_pb2
from tests.support.services import PROMETHEUS, Prometheus, Urdar, http
from urdar.engine.remotewrite import encode_write_request

HEADERS = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
           "X-Prometheus-Remote-Write-Version": "0.1.0"}


def snappy(b):
    return bytes(cramjam.snappy.compress_raw(b))


def push(url, series, tenant=None, metadata=()):
    h = dict(HEADERS)
    if tenant:
        h["X-Scope-OrgID"] = tenant
    status, body = http("POST", url, snappy(encode_write_request(series, metadata=metadata)), h)
    if status not in (200, 204):
        raise AssertionError("push to %s: %d %s" % (url, status, body[:300]))


def get_json(url, tenant=None):
    status, body = http("GET", url, headers={"X-Scope-OrgID": tenant} if tenant else {})
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def make_data(now_ms, seed=42):
    """50 minutes of 15 s samples (offset +3/+7 ms) for counters, gauges and a classic histogram."""
    rnd = random.Random(seed)
    start = now_ms - 50 * 60_000
    n = 200
    series = []
    for job in ("api", "db"):
        for inst in ("i1", "i2"):
            c, ts = 0.0, []
            for i in range(n):
                c = 0.0 if (job == "db" and inst == "i2" and i == 100) else c + rnd.randint(0, 20)
                ts.append((start + 15_000 * i + 3, c))
            series.append(([("__name__", "req_total"), ("instance", inst), ("job", job)], ts))
            series.append(([("__name__", "temp"), ("instance", inst), ("job", job)],
                           [(start + 15_000 * i + 7, round(rnd.uniform(-20, 80), 3)) for i in range(n)]))
    for le in ("0.1", "0.5", "1", "+Inf"):
        cnt, pts = 0.0, []
        for i in range(n):
            cnt += {"0.1": 1, "0.5": 3, "1": 5, "+Inf": 6}[le] * rnd.randint(1, 3)
            pts.append((start + 15_000 * i + 5, cnt))
        series.append(([("__name__", "lat_bucket"), ("job", "api"), ("le", le)], pts))
    return series


QUERIES = [
    "req_total", "temp", "sum(temp)", "sum by (job) (temp)", "avg without (instance) (temp)",
    "rate(req_total[5m])", "irate(req_total[5m])", "increase(req_total[10m])",
    "sum by (job) (rate(req_total[5m]))", "resets(req_total[30m])", "delta(temp[5m])",
    "deriv(temp[10m])", "predict_linear(temp[10m], 600)", "avg_over_time(temp[5m])",
    "max_over_time(temp[5m])", "min_over_time(temp[7m])", "count_over_time(temp[3m])",
    "stddev_over_time(temp[10m])", "quantile_over_time(0.3, temp[10m])", "changes(temp[10m])",
    "last_over_time(temp[1m])", "temp offset 5m", "temp * 2 - 1", "abs(temp - 30)", "-temp",
    "temp > 20", "temp > bool 20", "req_total / on(job, instance) temp",
    "sum by (job) (req_total) / ignoring(job) group_left sum(req_total)",
    "histogram_quantile(0.9, sum by (le) (rate(lat_bucket[5m])))",
    "histogram_quantile(0.5, rate(lat_bucket[10m]))", "topk(2, temp)", "bottomk(1, temp)",
    "count(temp > 10)", "stddev(temp)", "stdvar by (job) (temp)", "quantile(0.75, temp)",
    "min(temp)", "max by (instance) (temp)", "group by (job) (temp)",
    'count_values("v", round(temp / 10))', 'label_replace(temp, "j", "x-$1", "job", "(.*)")',
    'label_join(temp, "both", ",", "job", "instance")', "clamp(temp, 0, 50)", "round(temp, 5)",
    "exp(temp / 100)", "ln(abs(temp) + 1)", "sqrt(abs(temp))", "ceil(temp)", "floor(temp)",
    "absent(nope)", "absent(temp)", "vector(1)", "time()", "scalar(sum(temp))",
    "sum(rate(req_total[5m])) / sum(rate(req_total[5m] offset 10m))",
    "max_over_time(rate(req_total[2m])[10m:1m])", "temp and on(job) (temp > 50)",
    "temp or vector(0)", "temp unless temp > 40", "sgn(temp)", "timestamp(temp)",
]


@unittest.skipUnless(os.path.exists(PROMETHEUS), "prometheus binary not installed")
class QueryAPIServiceTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="urdar-qapi-")
        cls.urdar = Urdar(cls.tmp.name, "-ingester.max-global-exemplars-per-user=100",
                          "-querier.cardinality-analysis-enabled=true").wait_ready()
        cls.now_ms = int(time.time()) * 1000
        cls.series = make_data(cls.now_ms)
        push(cls.urdar.base + "/api/v1/push", cls.series, tenant="team-a",
             metadata=[(1, "req_total", "Requests served.", "")])
        push(cls.urdar.base + "/api/v1/push", [
            ([("__name__", "other"), ("job", "x")], [(cls.now_ms - 1000, 5.0)],
             [([("trace_id", "t1")], cls.now_ms - 1000, 5.0)])], tenant="team-b")

    @classmethod
    def tearDownClass(cls):
        code, killed = cls.urdar.stop()
        cls.tmp.cleanup()

    def api(self, path, tenant="team-a"):
        status, obj = get_json(self.urdar.base + "/prometheus/api/v1/" + path, tenant)
        return status, obj

    def data(self, path, tenant="team-a"):
        status, obj = self.api(path, tenant)
        self.assertEqual(status, 200, obj)
        return obj["data"] if isinstance(obj, dict) and "status" in obj else obj

    def test_every_endpoint(self):
        """Each query endpoint answers over HTTP with the tenant's data only."""
        t = self.now_ms // 1000
        res = self.data("query?query=sum(req_total)&time=%d" % t)
        self.assertEqual(res["resultType"], "vector")
        rng = self.data("query_range?" + urllib.parse.urlencode(
            {"query": "rate(req_total[5m])", "start": t - 600, "end": t, "step": "1m"}))
        self.assertEqual(len(rng["result"]), 4)
        self.assertEqual(len(rng["result"][0]["values"]), 11)
        self.assertEqual(len(self.data("series?match[]=temp")), 4)
        self.assertEqual(self.data("labels"), ["__name__", "instance", "job", "le"])
        self.assertEqual(self.data("label/job/values"), ["api", "db"])
        self.assertEqual(self.data("label/job/values", tenant="team-b"), ["x"])
        self.assertEqual(self.data("metadata"), {"req_total": [{"type": "counter", "help": "Requests served.",
                                                                "unit": ""}]})
        ex = self.data("query_exemplars?query=other&start=%d&end=%d" % (t - 60, t), tenant="team-b")
        self.assertEqual(ex[0]["exemplars"][0]["labels"], {"trace_id": "t1"})
        card = self.data("cardinality/label_names")
        self.assertEqual(card["label_names_count"], 4)
        card = self.data("cardinality/label_values?label_names[]=job")
        self.assertEqual(card["labels"][0]["series_count"], 12)
        status, obj = self.api("query_range?query=up&start=1&end=0&step=1")
        self.assertEqual((status, obj["errorType"]), (400, "bad_data"))
        self.assertEqual(get_json(self.urdar.base + "/prometheus/api/v1/query?query=up")[0], 401)

    def test_remote_read_both_types(self):
        """Remote read answers SAMPLES and STREAMED_XOR_CHUNKS requests with the pushed samples."""
        pb = _read_pb2()
        req = pb.ReadRequest()
        q = req.queries.add(start_timestamp_ms=0, end_timestamp_ms=self.now_ms)
        q.matchers.add(type=0, name="__name__", value="temp")
        h = {"X-Scope-OrgID": "team-a", "Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"}
        status, body = http("POST", self.urdar.base + "/prometheus/api/v1/read", snappy(req.SerializeToString()), h)
        self.assertEqual(status, 200, body)
        msg = pb.ReadResponse.FromString(bytes(cramjam.snappy.decompress_raw(body)))
        want = {tuple(lbl): pts for lbl, pts in self.data_of("temp")}
        got = {tuple((l.name, l.value) for l in s.labels): [(x.timestamp, x.value) for x in s.samples]
               for s in msg.results[0].timeseries}
        self.assertEqual(got, want)
        req.accepted_response_types.append(1)
        status, body = http("POST", self.urdar.base + "/prometheus/api/v1/read", snappy(req.SerializeToString()), h)
        self.assertEqual(status, 200)
        from urdar.engine.encoding import decode_uvarint
        from urdar.engine.xorchunk import decode_xor
        pos, got = 0, {}
        while pos < len(body):
            n, used = decode_uvarint(body[pos:pos + 10])
            frame = pb.ChunkedReadResponse.FromString(body[pos + used + 4:pos + used + 4 + n])
            pos += used + 4 + n
            for s in frame.chunked_series:
                pts = got.setdefault(tuple((l.name, l.value) for l in s.labels), [])
                for c in s.chunks:
                    ts, vs = decode_xor(c.data)
                    pts.extend(zip(ts, vs))
        self.assertEqual(got, want)

    def data_of(self, name):
        return [(lbl, pts) for lbl, pts in self.series if dict(lbl)["__name__"] == name]


def _key(metric):
    return tuple(sorted(metric.items()))


@unittest.skipUnless(os.path.exists(PROMETHEUS), "prometheus binary not installed")
class PrometheusDifferentialTests(unittest.TestCase):
    URDAR_ARGS = ("-auth.multitenancy-enabled=false",)

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="urdar-diff-")
        cls.urdar = Urdar(cls.tmp.name, *cls.URDAR_ARGS).wait_ready()
        cls.prom = Prometheus(cls.tmp.name, "global:\n  scrape_interval: 1h\n",
                              "--web.enable-remote-write-receiver").wait_ready()
        cls.now_ms = (int(time.time()) // 60) * 60_000
        data = make_data(cls.now_ms)
        push(cls.urdar.base + "/api/v1/push", data)
        push(cls.prom.base + "/api/v1/write", data)

    @classmethod
    def tearDownClass(cls):
        cls.prom.stop()
        cls.urdar.stop()
        cls.tmp.cleanup()

    def fetch(self, base, path):
        status, obj = get_json(base + path)
        return status, obj

    def compare(self, path, query):
        s1, ours = self.fetch(self.urdar.base + "/prometheus", path)
        s2, theirs = self.fetch(self.prom.base, path)
        self.assertEqual(s1, s2, "%s: urdar %s / prometheus %s" % (query, ours, theirs))
        if s2 != 200:
            return
        a, b = ours["data"], theirs["data"]
        self.assertEqual(a["resultType"], b["resultType"], query)
        if a["resultType"] in ("scalar", "string"):
            self.assertClose(a["result"], b["result"], query)
            return
        ra = {_key(r["metric"]): r.get("values", [r.get("value")]) for r in a["result"]}
        rb = {_key(r["metric"]): r.get("values", [r.get("value")]) for r in b["result"]}
        self.assertEqual(sorted(ra), sorted(rb), query)
        for k in rb:
            self.assertEqual(len(ra[k]), len(rb[k]), "%s %s: %s vs %s" % (query, k, ra[k], rb[k]))
            for p, q in zip(ra[k], rb[k]):
                self.assertClose(p, q, "%s %s" % (query, k))

    def assertClose(self, p, q, msg):
        self.assertEqual(p[0], q[0], msg)
        x, y = float(p[1]), float(q[1])
        if math.isnan(y) or math.isinf(y):
            self.assertEqual(p[1], q[1], msg)
        else:
            self.assertTrue(x == y or abs(x - y) <= 1e-9 * max(abs(x), abs(y)), "%s: %s vs %s" % (msg, p, q))

    def test_instant_queries(self):
        """Instant queries at several times match Prometheus 2.42 (labels, times, values)."""
        for q in QUERIES:
            # Never on a whole minute: 2.x puts a subquery step on the range's left edge there.
            for back_s in (13, 7 * 60 + 1, 23 * 60 + 29):
                t = self.now_ms // 1000 - back_s
                with self.subTest(query=q, t=t):
                    self.compare("/api/v1/query?" + urllib.parse.urlencode({"query": q, "time": t}), q)

    def test_range_queries(self):
        """Range queries match Prometheus 2.42 point for point."""
        end = self.now_ms // 1000
        for q in QUERIES:
            with self.subTest(query=q):
                self.compare("/api/v1/query_range?" + urllib.parse.urlencode(
                    {"query": q, "start": end - 35 * 60 + 1, "end": end, "step": "97"}), q)


class PrometheusDifferentialFrontendTests(PrometheusDifferentialTests):
    """The same comparison with urdar's query-frontend splitting range queries every 10 minutes
    and its results cache on."""
    URDAR_ARGS = ("-auth.multitenancy-enabled=false", "-query-frontend.split-queries-by-interval=10m",
                  "-query-frontend.cache-results=true")


class PrometheusDifferentialShardingTests(PrometheusDifferentialTests):
    """The same comparison with query sharding (3 shards) on top of 10-minute splitting and the
    results cache (the 1e-9 relative tolerance covers the partial sums' other order)."""
    URDAR_ARGS = ("-auth.multitenancy-enabled=false", "-query-frontend.split-queries-by-interval=10m",
                  "-query-frontend.cache-results=true",
                  "-query-frontend.parallelize-shardable-queries=true",
                  "-query-frontend.query-sharding-total-shards=3")

    def sharded_queries(self):
        status, body = http("GET", self.urdar.base + "/metrics")
        for line in body.decode().splitlines():
            if line.startswith("cortex_frontend_sharded_queries_total "):
                return float(line.split()[1])
        return 0.0

    def test_range_query_is_sharded(self):
        """The comparison really goes through sharding: a sum by (job) is split into shard
        queries (counted by cortex_frontend_sharded_queries_total) and still matches."""
        before = self.sharded_queries()
        end = self.now_ms // 1000
        q = "sum by (job) (rate(req_total[5m]))"
        self.compare("/api/v1/query_range?" + urllib.parse.urlencode(
            {"query": q, "start": end - 35 * 60 + 1, "end": end, "step": "97"}), q)
        self.assertGreaterEqual(self.sharded_queries() - before, 3 * 4)


    def test_instant_query_is_sharded(self):
        """Instant queries go through sharding too (test_instant_queries compares them all):
        a sum by (job) at one time runs as one shard instant query per shard and matches."""
        before = self.sharded_queries()
        t = self.now_ms // 1000 - 13
        q = "sum by (job) (rate(req_total[5m]))"
        self.compare("/api/v1/query?" + urllib.parse.urlencode({"query": q, "time": t}), q)
        self.assertEqual(self.sharded_queries() - before, int(self.URDAR_ARGS[-1].split("=")[1]))


class PrometheusDifferentialSharding16Tests(PrometheusDifferentialShardingTests):
    """... and with 16 shards (fewer for multi-leg queries, -query-frontend.query-sharding-max-
    sharded-queries=128 spread over the split parts)."""
    URDAR_ARGS = PrometheusDifferentialShardingTests.URDAR_ARGS[:-1] + (
        "-query-frontend.query-sharding-total-shards=16",)
