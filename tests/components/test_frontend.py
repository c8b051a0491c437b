"""The query-frontend (components/frontend.py) in a whole -target=all process through Klein
(StubTreq) with inline pools and a fake clock: range queries split at 1h and served from the
results cache answer byte-for-byte what the querier answers unsplit and uncached."""
import struct
from urllib.parse import urlencode

import cramjam
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support.fakememcached import FakeMemcached
from tests.support.app import started_modules
from urdar.components import frontend as F
from urdar.engine.remotewrite import encode_write_request
from urdar.net.memcached import MemcachedClient

NOW_S = 1_699_999_980          # 2023-11-14T22:13:00Z, on the 1-minute step grid
NOW_MS = NOW_S * 1000
H_MS = 3600 * 1000
P = "http://urdar/prometheus/api/v1/"
POOLS = (("decode", 2, 10), ("append", 2, 10), ("compact", 1, 10), ("admin", 1, 10), ("query", 2, 100))

# (query, cacheable: the second run fetches only the part newer than the cache edge)
QUERIES = (
    ("rate(http_requests_total[5m])", True),
    ("sum by (job) (rate(http_requests_total[5m]))", True),
    ("histogram_quantile(0.9, sum by (le) (rate(req_duration_seconds_bucket[5m])))", True),
    ("http_requests_total offset 30m", True),
    ("sum(http_requests_total @ %d)" % (NOW_S - 5 * 3600), True),
    ("sum(rate(http_requests_total[10m] @ end()))", False),
    ("http_requests_total - http_requests_total @ start()", True),
    ("max_over_time(rate(http_requests_total[5m])[30m:1m])", True),
    ("absent(nonexistent_metric)", True),
    ('absent(http_requests_total{job="nope"})', True),
    ("time()", True),
    ("rate(temperature[5m])", False),        # an info annotation: never cached
    ("http_requests_total offset -10m", False),
)


class Recorder:
    """The frontend's querier, recording each range query's (start, end)."""

    def __init__(self, querier):
        self.querier = querier
        self.calls = []

    def range_query(self, tenant, query, start, end, step, *args, **kw):
        self.calls.append((tenant, start, end))
        return self.querier.range_query(tenant, query, start, end, step, *args, **kw)

    def instant_query(self, *args, **kw):
        return self.querier.instant_query(*args, **kw)

    def read_request(self, *args, **kw):
        return self.querier.read_request(*args, **kw)


class FrontendTestCase(SynchronousTestCase):
    config = {"frontend.split_queries_by_interval": H_MS, "frontend.cache_results": True}

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW_S)
        self.modules = started_modules(self, self.clock, self.config, POOLS)
        self.treq = StubTreq(self.modules.resource())
        self.frontend = self.modules.frontend
        self.recorder = Recorder(self.frontend.querier)
        self.frontend.querier = self.recorder
        self.load("t1", 1.0)
        self.load("t2", 3.0)

    def load(self, tenant, scale):
        """7h of 1-minute samples for counters, classic histogram buckets and a gauge, pushed in
        time order (10-minute batches) as Prometheus would send them."""
        first = NOW_MS - 7 * H_MS
        for batch in range(0, 7 * 60, 10):
            series = []
            ts = [first + (batch + i) * 60_000 + 3 for i in range(10)]
            for job, rate in (("a", 1.0), ("b", 2.5)):
                for code in ("200", "500"):
                    k = rate * scale * (3 if code == "200" else 1)
                    series.append(([("__name__", "http_requests_total"), ("code", code), ("job", job)],
                                   [(t, k * (t - first) / 1000.0) for t in ts]))
            for le, frac in (("0.1", 0.5), ("0.5", 0.8), ("1", 0.95), ("+Inf", 1.0)):
                series.append(([("__name__", "req_duration_seconds_bucket"), ("le", le)],
                               [(t, frac * scale * (t - first) / 100.0) for t in ts]))
            series.append(([("__name__", "temperature")],
                           [(t, 20.0 + scale * ((t // 60_000) % 7)) for t in ts]))
            body = bytes(cramjam.snappy.compress_raw(encode_write_request(series)))
            r = self.successResultOf(self.treq.post("http://urdar/api/v1/push", data=body, headers={
                "X-Scope-OrgID": tenant, "Content-Encoding": "snappy"}))
            self.assertEqual(r.code, 200, self.successResultOf(r.text()))

    def range_query(self, query, start, end, step=60, tenant="t1", headers=None):
        h = {"X-Scope-OrgID": tenant}
        h.update(headers or {})
        qs = urlencode({"query": query, "start": start, "end": end, "step": step})
        r = self.successResultOf(self.treq.get(P + "query_range?" + qs, headers=h))
        body = self.successResultOf(r.content())
        self.assertEqual(r.code, 200, body)
        return body

    def unsplit(self, query, start, end, step=60, tenant="t1"):
        """The querier's own answer: no frontend in front of the route."""
        handlers = self.modules.querier_handlers
        handlers.frontend, saved = None, handlers.frontend
        try:
            return self.range_query(query, start, end, step, tenant)
        finally:
            handlers.frontend = saved

    def fetches(self, query, start, end, **kw):
        del self.recorder.calls[:]
        body = self.range_query(query, start, end, **kw)
        return body, list(self.recorder.calls)


class DifferentialTests(FrontendTestCase):

    def test_split_and_cached_equal_unsplit(self):
        """Every query of the table, split at 1h over 6h and run twice (the second time from
        the cache), answers byte-for-byte what the querier answers unsplit and uncached."""
        start, end = NOW_S - 6 * 3600, NOW_S
        for query, cacheable in QUERIES:
            want = self.unsplit(query, start, end)
            first, calls1 = self.fetches(query, start, end)
            self.assertEqual(first, want, query)
            self.assertEqual(len(calls1), 7, (query, calls1))      # 22:13 .. 04:13: 7 hour parts
            second, calls2 = self.fetches(query, start, end)
            self.assertEqual(second, want, query)
            if cacheable:
                # Only the steps newer than now - 10m are fetched again.
                self.assertEqual([(c[1], c[2]) for c in calls2], [(NOW_MS - 600_000 + 60_000, NOW_MS)],
                                 query)
            else:
                self.assertEqual(len(calls2), 7, query)

    def test_single_part_cached_equals_unsplit(self):
        """A range inside one split interval, served from the cache (rendered in the job that
        merges it), answers byte-for-byte as the querier does."""
        for start, end, refetched in ((NOW_S - 133 * 60, NOW_S - 74 * 60, []),
                                      (NOW_S - 13 * 60, NOW_S, [(NOW_MS - 540_000, NOW_MS)])):
            for query, cacheable in QUERIES:
                want = self.unsplit(query, start, end)
                first, calls1 = self.fetches(query, start, end)
                self.assertEqual((first, len(calls1)), (want, 1), query)
                second, calls2 = self.fetches(query, start, end)
                self.assertEqual(second, want, query)
                if cacheable:
                    self.assertEqual([(c[1], c[2]) for c in calls2], refetched, query)

    def test_unaligned_start_equals_unsplit(self):
        """A range whose start is not on the step grid is split on its own grid and merged
        into the unsplit answer (it is not cached: other requests do not share its grid)."""
        start, end = NOW_S - 5 * 3600 + 7, NOW_S - 20
        for query in ("rate(http_requests_total[5m])", "sum(http_requests_total @ start())"):
            want = self.unsplit(query, start, end, step=45)
            self.assertEqual(self.range_query(query, start, end, step=45), want)
            body, calls = self.fetches(query, start, end, step=45)
            self.assertEqual(body, want)
            self.assertEqual(len(calls), 6)

    def test_extents_reused_by_an_overlapping_range(self):
        """A later dashboard refresh over a shifted range fetches only the steps no cached
        extent holds, and still equals the unsplit answer."""
        query = "sum by (job) (rate(http_requests_total[5m]))"
        self.range_query(query, NOW_S - 4 * 3600, NOW_S - 3600)
        start, end = NOW_S - 5 * 3600, NOW_S - 2 * 3600
        want = self.unsplit(query, start, end)
        body, calls = self.fetches(query, start, end)
        self.assertEqual(body, want)
        # Only 17:13 .. 18:12 is new: two fetches, as it spans an hour boundary (two parts).
        self.assertEqual([(c[1], c[2]) for c in calls],
                         [(NOW_MS - 5 * H_MS, NOW_MS - 5 * H_MS + 46 * 60_000),
                          (NOW_MS - 5 * H_MS + 47 * 60_000, NOW_MS - 4 * H_MS - 60_000)])


    def test_part_with_many_gaps_is_fetched_once(self):
        """A cached part riddled with gaps (single-step queries on alternate steps) costs one
        querier call for the whole part, not one per gap, and still equals the unsplit answer."""
        query = "sum by (job) (rate(http_requests_total[5m]))"
        h0 = (NOW_S - 3 * 3600) // 3600 * 3600
        for k in range(10):
            self.range_query(query, h0 + 120 * k, h0 + 120 * k)
        start, end = h0, h0 + 3540
        want = self.unsplit(query, start, end)
        body, calls = self.fetches(query, start, end)
        self.assertEqual(body, want)
        self.assertEqual([(c[1], c[2]) for c in calls], [(start * 1000, end * 1000)])


    def refreshes(self, queries, minutes=4):
        """A dashboard left open: every query over the 3h up to now, once a minute while the
        clock moves (so the window slides past its cached extents and the cache edge moves
        every time); each answer equals the querier's own, and after the first only the steps
        after the previous refresh's cache edge are fetched."""
        for query, cacheable in queries:
            for k in range(minutes):
                now = int(self.clock.seconds()) // 60 * 60
                start, end = now - 3 * 3600, now
                want = self.unsplit(query, start, end)
                body, calls = self.fetches(query, start, end)
                self.assertEqual(body, want, (query, k))
                if k and cacheable and "start()" not in query:   # its text moves with start
                    self.assertEqual([(c[1], c[2]) for c in calls],
                                     [(end * 1000 - 600_000, end * 1000)], (query, k))
                self.clock.advance(60)

    def test_sliding_dashboard_equals_unsplit(self):
        """The in-memory backend (extents kept as objects): a refreshed dashboard's answers
        are the querier's own, byte for byte."""
        self.refreshes(QUERIES)


class CacheTests(FrontendTestCase):

    def test_fresh_parts_refetched_until_they_age(self):
        """Steps newer than now - max_cache_freshness are fetched on every request; once the
        clock has moved past them they are cached too."""
        query = "rate(http_requests_total[5m])"
        start, end = NOW_S - 2 * 3600, NOW_S
        self.range_query(query, start, end)
        _, calls = self.fetches(query, start, end)
        self.assertEqual([(c[1], c[2]) for c in calls], [(NOW_MS - 540_000, NOW_MS)])
        self.clock.advance(3600)
        _, calls = self.fetches(query, start, end)
        self.assertEqual([(c[1], c[2]) for c in calls], [(NOW_MS - 540_000, NOW_MS)])
        _, calls = self.fetches(query, start, end)
        self.assertEqual(calls, [])

    def test_tenants_never_share_cached_answers(self):
        """Tenant B asking tenant A's cached query gets its own data, fetched for it."""
        query = "sum(rate(http_requests_total[5m]))"
        start, end = NOW_S - 3 * 3600, NOW_S - 3600
        a = self.range_query(query, start, end, tenant="t1")
        want_b = self.unsplit(query, start, end, tenant="t2")
        self.assertNotEqual(a, want_b)
        body, calls = self.fetches(query, start, end, tenant="t2")
        self.assertEqual(body, want_b)
        self.assertEqual({c[0] for c in calls}, {"t2"})
        self.assertEqual(len(calls), 3)

    def test_no_store_bypasses_the_cache(self):
        """A request with Cache-Control: no-store neither reads nor fills the results cache."""
        query = "rate(http_requests_total[5m])"
        start, end = NOW_S - 3 * 3600, NOW_S - 3600
        self.range_query(query, start, end)
        _, calls = self.fetches(query, start, end, headers={"Cache-Control": "no-store"})
        self.assertEqual(len(calls), 3)
        other = "sum(rate(http_requests_total[5m]))"
        self.fetches(other, start, end, headers={"Cache-Control": "no-store"})
        _, calls = self.fetches(other, start, end)
        self.assertEqual(len(calls), 3)

    def test_inmemory_cache_is_bounded_lru(self):
        """The in-memory cache holds at most its byte budget, dropping least recently used."""
        cache = F.InMemoryResultsCache(10)
        cache.put("a", b"12345")
        cache.put("b", b"12345")
        self.assertEqual(self.successResultOf(cache.get("a")), b"12345")
        cache.put("c", b"123")
        self.assertIsNone(self.successResultOf(cache.get("b")))
        self.assertEqual(cache.size_bytes, 8)
        cache.put("huge", b"x" * 11)
        self.assertIsNone(self.successResultOf(cache.get("huge")))


class ParallelismTests(FrontendTestCase):

    def test_parts_in_flight_bounded_by_max_query_parallelism(self):
        """No more than the tenant's max_query_parallelism parts of one query run at once; the
        rest start as earlier ones finish, and the answer is still the unsplit one."""
        from twisted.internet import defer
        self.modules.overrides.set_overrides({"t1": {"max_query_parallelism": 2}})
        query = "rate(http_requests_total[5m])"
        start, end = NOW_S - 6 * 3600, NOW_S
        want = self.unsplit(query, start, end)
        held = []
        real = self.recorder.range_query

        def hold(*args, **kw):
            d = defer.Deferred()
            held.append((d, args, kw))
            return d
        self.recorder.range_query = hold
        qs = urlencode({"query": query, "start": start, "end": end, "step": 60})
        pending = self.treq.get(P + "query_range?" + qs, headers={"X-Scope-OrgID": "t1",
                                                                   "Cache-Control": "no-store"})
        most = 0
        while True:
            waiting = [h for h in held if not h[0].called]
            most = max(most, len(waiting))
            if not waiting:
                break
            d, args, kw = waiting[0]
            real(*args, **kw).chainDeferred(d)
        self.assertEqual((most, len(held)), (2, 7))
        self.treq.flush()
        r = self.successResultOf(pending)
        self.assertEqual(self.successResultOf(r.content()), want)


    def test_cancelling_a_query_cancels_its_parts(self):
        """When the client goes away, the running parts are cancelled and no further part starts."""
        from twisted.internet import defer
        self.modules.overrides.set_overrides({"t1": {"max_query_parallelism": 2}})
        held, cancelled = [], []

        def hold(*args, **kw):
            d = defer.Deferred(canceller=cancelled.append)
            held.append(d)
            return d
        self.recorder.range_query = hold
        d = self.frontend.range_query("t1", "up", NOW_MS - 6 * H_MS, NOW_MS, 60_000, no_store=True)
        self.assertEqual(len(held), 2)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual((len(held), cancelled), (2, held))


class MemcachedTests(FrontendTestCase):

    def use_memcached(self, server):
        client = MemcachedClient(["fake:11211"], self.clock, connect=server.connect)
        self.frontend.cache = F.MemcachedResultsCache(client)

    def test_memcached_backend_serves_cached_extents(self):
        """With memcached as the results cache, a repeated query is served from it."""
        server = FakeMemcached(autoflush=True)
        self.use_memcached(server)
        query = "rate(http_requests_total[5m])"
        start, end = NOW_S - 3 * 3600, NOW_S - 3600
        want = self.unsplit(query, start, end)
        self.assertEqual(self.range_query(query, start, end), want)
        self.assertEqual(len(server.items), 3)
        body, calls = self.fetches(query, start, end)
        self.assertEqual((body, calls), (want, []))
        metrics = self.successResultOf(self.successResultOf(
            self.treq.get("http://urdar/metrics")).text())
        self.assertIn('cortex_frontend_query_result_cache_requests_total{request_type="query_range"} 6.0',
                      metrics)
        self.assertIn('cortex_frontend_query_result_cache_hits_total{request_type="query_range"} 3.0',
                      metrics)

    def test_memcached_sliding_dashboard_equals_unsplit(self):
        """The memcached backend (extents encoded): a refreshed dashboard's answers are the
        querier's own, byte for byte, as the window slides and the cache edge moves."""
        self.use_memcached(FakeMemcached(autoflush=True))
        DifferentialTests.refreshes(self, QUERIES[:3] + QUERIES[7:8])

    def test_memcached_damaged_entry_is_a_miss(self):
        """An entry whose point offsets do not fit its text (damaged in the shared cache) is a
        miss: the query is fetched whole and answered right, never cut out of bounds."""
        server = FakeMemcached(autoflush=True)
        self.use_memcached(server)
        query = "rate(http_requests_total[5m])"
        start = NOW_S - 3 * 3600 + 120         # 19:15 .. 19:55: one part, all cached
        end = start + 40 * 60
        want = self.unsplit(query, start, end)
        self.assertEqual(self.range_query(query, start, end), want)
        (key, raw), = [(k, v) for k, v in server.items.items()]
        exts = F.decode_extents(raw)
        from array import array
        labels, ts, text, offs = exts[0].matrix[0]
        bad = array("q", offs)
        bad[1], bad[2] = bad[2], bad[1]          # out of order, still inside the text
        exts[0].matrix[0] = (labels, ts, text, bad)
        server.items[key] = F.encode_extents(exts)
        body, calls = self.fetches(query, start, end)
        self.assertEqual(body, want)
        self.assertEqual([(c[1], c[2]) for c in calls], [(start * 1000, end * 1000)])

    def test_memcached_stalled_is_a_miss_after_its_timeout(self):
        """A memcached that accepts requests and never answers costs its timeout, then the
        query is answered from the querier."""
        server = FakeMemcached(autoflush=True)
        server.stalled = True
        self.use_memcached(server)
        query = "rate(http_requests_total[5m])"
        start, end = NOW_S - 3 * 3600, NOW_S - 3600
        want = self.unsplit(query, start, end)
        del self.recorder.calls[:]
        qs = urlencode({"query": query, "start": start, "end": end, "step": 60})
        pending = self.treq.get(P + "query_range?" + qs, headers={"X-Scope-OrgID": "t1"})
        self.assertEqual(self.recorder.calls, [])
        self.clock.advance(1)
        self.treq.flush()
        r = self.successResultOf(pending)
        self.assertEqual(self.successResultOf(r.content()), want)
        self.assertEqual(len(self.recorder.calls), 3)

    def test_memcached_down_is_a_miss(self):
        """With memcached refusing connections, queries still answer correctly, fetching every part."""
        server = FakeMemcached(autoflush=True)
        server.refuse = True
        self.use_memcached(server)
        query = "rate(http_requests_total[5m])"
        start, end = NOW_S - 3 * 3600, NOW_S - 3600
        want = self.unsplit(query, start, end)
        for _ in range(2):
            body, calls = self.fetches(query, start, end)
            self.assertEqual(body, want)
            self.assertEqual(len(calls), 3)


class AlignTests(FrontendTestCase):
    config = {"frontend.align_queries_with_step": True, "frontend.split_queries_by_interval": H_MS,
              "frontend.cache_results": True}

    def test_start_and_end_rounded_down_to_step(self):
        """With step alignment an unaligned request answers as the aligned one, and is cached."""
        query = "rate(http_requests_total[5m])"
        want = self.unsplit(query, NOW_S - 2 * 3600 - 60, NOW_S - 3600 - 60)
        self.assertEqual(self.range_query(query, NOW_S - 2 * 3600 - 17, NOW_S - 3600 - 17), want)
        body, calls = self.fetches(query, NOW_S - 2 * 3600 - 17, NOW_S - 3600 - 17)
        self.assertEqual((body, calls), (want, []))


class PassthroughTests(FrontendTestCase):
    config = {"frontend.split_queries_by_interval": 0}

    def test_flags_off_pass_through(self):
        """With splitting, caching and alignment off, each range query is one querier call."""
        query = "rate(http_requests_total[5m])"
        start, end = NOW_S - 6 * 3600, NOW_S
        want = self.unsplit(query, start, end)
        body, calls = self.fetches(query, start, end)
        self.assertEqual(body, want)
        self.assertEqual([(c[1], c[2]) for c in calls], [(start * 1000, end * 1000)])


class DefaultsTests(FrontendTestCase):
    config = {}

    def test_default_splits_only_at_midnight(self):
        """With the defaults (24h splitting, no cache) a range within one UTC day is one querier
        call, and one across midnight is two whose merged answer equals the unsplit one."""
        query = "sum by (job) (rate(http_requests_total[5m])) * time()"
        _, calls = self.fetches(query, NOW_S - 6 * 3600, NOW_S)
        self.assertEqual(len(calls), 1)
        start, end = NOW_S - 23 * 3600, NOW_S
        want = self.unsplit(query, start, end)
        body, calls = self.fetches(query, start, end)
        self.assertEqual(body, want)
        self.assertEqual(len(calls), 2)


class SplitTests(SynchronousTestCase):

    def test_parts_cover_each_step_once(self):
        """Parts are cut at interval boundaries on the query's own grid, each step in exactly one."""
        for start, end, step, interval in ((0, 10 * H_MS, 60_000, H_MS), (7, 5 * H_MS, 45_000, H_MS),
                                           (1000, 1000, 15_000, H_MS), (0, 3 * H_MS, 7 * H_MS, H_MS)):
            parts = F.split_by_interval(start, end, step, interval)
            steps = [t for s, e in parts for t in range(s, e + 1, step)]
            self.assertEqual(steps, list(range(start, end + 1, step)))
            for s, e in parts[:-1]:
                self.assertEqual(s // interval, e // interval)

    def test_extents_round_trip(self):
        """Cached extents decode to what was encoded, slice and merge on point boundaries, and
        damaged bytes are refused."""
        from array import array
        m = F.from_matrix([((("__name__", "up"), ("job", "é")), array("q", [0, 60_000, 120_000]),
                            array("d", [1.0, float("nan"), 2.5]))])
        exts = [F.Extent(0, 120_000, m)]
        got = F.decode_extents(F.encode_extents(exts))
        self.assertEqual(got[0].matrix, m)
        self.assertEqual(F.slice_matrix(m, 60_000, 120_000)[0][2], b'[60,"NaN"],[120,"2.5"]')
        halves = [F.slice_matrix(m, 0, 0), F.slice_matrix(m, 60_000, 120_000)]
        self.assertEqual(F.merge_pieces(halves), m)
        self.assertRaises(ValueError, F.decode_extents, F.encode_extents(exts)[:-3])
        # Every truncation point is refused (label sets included), and so is the earlier
        # format (an entry written before an upgrade is a miss, not a wrong answer).
        raw = F.encode_extents(exts)
        for cut in range(len(F._MAGIC), len(raw)):
            with self.assertRaises((ValueError, struct.error)):
                F.decode_extents(raw[:cut])
        self.assertRaises(ValueError, F.decode_extents, b"URFE1" + raw[5:])
        self.assertEqual(F._decode_or_empty(raw[:-1]), [])

    def test_extents_grown_a_step_at_a_time_stay_few(self):
        """A cache edge that moves one step per refresh adds one-step extents; they are
        coalesced (log-structured), so an entry holds few extents, and together they hold
        exactly the points of the whole range."""
        from array import array
        ts = array("q", range(0, 300 * 60_000, 60_000))
        vs = array("d", [float(i) for i in range(300)])
        whole = F.from_matrix([((("a", "1"),), ts, vs), ((("a", "2"),), ts[100:], vs[100:])])
        exts = [F.Extent(0, 99 * 60_000, F.slice_matrix(whole, 0, 99 * 60_000))]
        for k in range(100, 300):
            t = k * 60_000
            exts = F.add_extent(exts, F.Extent(t, t, F.slice_matrix(whole, t, t)), 60_000)
            self.assertLessEqual(len(exts), F.MAX_EXTENTS)
            self.assertEqual([(x.start, x.end) for x in exts],
                             [(0 if i == 0 else exts[i - 1].end + 60_000, x.end)
                              for i, x in enumerate(exts)])
        todo = F.missing_ranges(exts, 0, 299 * 60_000, 60_000)
        self.assertTrue(all(item[0] == "cached" for item in todo))
        self.assertEqual(F.merge_windows([item[1:] for item in todo]), whole)

    def test_windows_cut_and_join_points(self):
        """Cached series are cut at any step and joined to the fresh points in one copy: the
        text, times and offsets equal those of the points rendered in one go."""
        from array import array
        from urdar.components import pointtext
        from urdar.handlers.querier import _render_text_matrix
        ts = array("q", range(0, 20 * 60_000, 60_000))
        vs = array("d", [i * 1.5 if i % 7 else float("nan") for i in range(20)])
        whole = F.from_matrix([((("a", "1"),), ts, vs)])
        for lo in range(0, 20):
            for hi in range(lo, 20):
                want = F.from_matrix([((("a", "1"),), ts[lo:hi + 1], vs[lo:hi + 1])])
                self.assertEqual(F.slice_matrix(whole, lo * 60_000, hi * 60_000), want)
                # Two cached windows and a fresh piece, as a refresh merges them.
                cut = (lo + hi) // 2
                fresh = F.from_matrix([((("a", "1"),), ts[hi + 1:], vs[hi + 1:])])
                got = F.merge_windows([(whole, lo * 60_000, cut * 60_000),
                                       (whole, (cut + 1) * 60_000, hi * 60_000),
                                       (fresh, None, None)])
                self.assertEqual(got, F.from_matrix([((("a", "1"),), ts[lo:], vs[lo:])]))
                # The answer's form (pieces, copied once into the answer) renders the same.
                lazy = F.merge_windows([(whole, lo * 60_000, cut * 60_000),
                                        (whole, (cut + 1) * 60_000, hi * 60_000),
                                        (fresh, None, None)], lazy=True)
                self.assertEqual(_render_text_matrix(lazy, (), ()),
                                 _render_text_matrix(got, (), ()))
        self.assertEqual(F.slice_matrix(whole, 30 * 60_000, 40 * 60_000), [])
        # Offsets that do not fit their text are refused before anything is copied.
        (_, t, text, offs), = whole
        self.assertRaises(ValueError, pointtext.join_parts, [(t, text[:-2], offs, 0, 20)])
        self.assertRaises(ValueError, pointtext.join_parts, [(t, text, offs, 3, 21)])
        bad = array("q", offs)
        bad[5] = bad[6] + 1
        self.assertRaises(ValueError, pointtext.check, t, text, bad)
        self.assertRaises(TypeError, pointtext.join_parts, [(array("d"), b"", array("q", [1]), 0, 0)])


class ReadRecorder:
    """The frontend's querier, recording each label names/values, series or cardinality
    request that reaches it (tenant, kind)."""

    def __init__(self, querier):
        self.querier = querier
        self.calls = []

    def read_request(self, tenant, kind, args):
        self.calls.append((tenant, kind))
        return self.querier.read_request(tenant, kind, args)


class ReadCacheTests(FrontendTestCase):
    """Label names/values and cardinality answers through the frontend's results cache, with
    the tenant's TTLs (Mimir's labels_query_cache.go and cardinality_query_cache.go)."""
    config = dict(FrontendTestCase.config, **{
        "limits.results_cache_ttl_for_labels_query": 600_000,
        "limits.results_cache_ttl_for_cardinality_query": 60_000,
        "limits.cardinality_analysis_enabled": True})

    def setUp(self):
        super().setUp()
        self.reads = ReadRecorder(self.recorder.querier)
        self.recorder.read_request = self.reads.read_request

    def get(self, path, params=(), tenant="t1", headers=None, status=200):
        h = {"X-Scope-OrgID": tenant}
        h.update(headers or {})
        url = "http://urdar/prometheus/api/v1/" + path + ("?" + urlencode(params) if params else "")
        r = self.successResultOf(self.treq.get(url, headers=h))
        body = self.successResultOf(r.content())
        self.assertEqual(r.code, status, body)
        return body

    def direct(self, path, params=(), tenant="t1", status=200):
        handlers = self.modules.querier_handlers
        handlers.frontend, saved = None, handlers.frontend
        try:
            return self.get(path, params, tenant, status=status)
        finally:
            handlers.frontend = saved

    def reads_of(self, path, params=(), **kw):
        del self.reads.calls[:]
        body = self.get(path, params, **kw)
        return body, list(self.reads.calls)

    def push(self, tenant, name, t_ms=NOW_MS - 60_000, **labels):
        series = [([("__name__", name)] + sorted(labels.items()), [(t_ms, 1.0)])]
        body = bytes(cramjam.snappy.compress_raw(encode_write_request(series)))
        r = self.successResultOf(self.treq.post("http://urdar/api/v1/push", data=body, headers={
            "X-Scope-OrgID": tenant, "Content-Encoding": "snappy"}))
        self.assertEqual(r.code, 200)

    def test_second_request_served_from_the_cache(self):
        """Label names, label values (with matchers and a time range) and the cardinality APIs:
        the first request reaches the querier and answers what the querier answers; the second
        is served without reaching it, even after the data changed."""
        t = NOW_S - 3600
        cases = [("labels", ()),
                 ("labels", (("match[]", 'http_requests_total{job="a"}'), ("start", t - 3600),
                             ("end", NOW_S))),
                 ("label/job/values", ()),
                 ("label/__name__/values", (("match[]", "{job=~\"a|b\"}"), ("limit", "5"))),
                 ("cardinality/label_names", ()),
                 ("cardinality/label_values", (("label_names[]", "job"),)),
                 ("cardinality/active_series", (("selector", "http_requests_total"),))]
        for path, params in cases:
            want = self.direct(path, params)
            body, calls = self.reads_of(path, params)
            self.assertEqual((body, len(calls)), (want, 1), path)
        self.push("t1", "http_requests_total", job="new", code="200")
        self.push("t1", "http_requests_total", job="a", zone="z")
        self.push("t1", "brand_new", extra="x", job="a")
        for path, params in cases:
            body, calls = self.reads_of(path, params)
            self.assertEqual(calls, [], path)
            self.assertNotEqual(body, self.direct(path, params), path)

    def test_keys_follow_mimir_normalisation(self):
        """Times inside the same 2h block boundaries and matchers in another order share an
        entry; another limit, label or matcher does not."""
        base = 1_699_999_200     # a multiple of 2h
        self.reads_of("labels", (("match[]", '{job="a",code="200"}'), ("start", base + 60),
                                 ("end", base + 3600)))
        for params in ((("match[]", '{code="200",job="a"}'), ("start", base + 600),
                        ("end", base + 7200)),):
            self.assertEqual(self.reads_of("labels", params)[1], [])
        for params in ((("match[]", '{job="a",code="200"}'), ("start", base - 60),
                        ("end", base + 3600)),
                       (("match[]", '{job="a",code="200"}'), ("start", base + 60),
                        ("end", base + 3600), ("limit", "2")),
                       (("match[]", '{job="a"}'), ("start", base + 60), ("end", base + 3600))):
            self.assertEqual(len(self.reads_of("labels", params)[1]), 1, params)
        self.assertEqual(len(self.reads_of("label/job/values")[1]), 1)
        self.assertEqual(len(self.reads_of("label/code/values")[1]), 1)

    def test_tenants_never_share_cached_answers(self):
        """Tenant B asking what tenant A has cached gets its own answer, from the querier."""
        self.push("t2", "only_in_t2", x="1")
        a = self.get("label/__name__/values")
        body, calls = self.reads_of("label/__name__/values", tenant="t2")
        self.assertEqual(calls, [("t2", "label_values")])
        self.assertIn(b"only_in_t2", body)
        self.assertNotIn(b"only_in_t2", a)
        self.assertEqual(self.reads_of("label/__name__/values", tenant="t2")[1], [])
        self.assertEqual(self.get("label/__name__/values"), a)

    def test_ttl_expiry(self):
        """Entries live for the tenant's TTL: labels 10 minutes, cardinality 1 minute here."""
        self.get("labels")
        self.get("cardinality/label_names")
        self.clock.advance(59)
        self.assertEqual(self.reads_of("labels")[1], [])
        self.assertEqual(self.reads_of("cardinality/label_names")[1], [])
        self.clock.advance(2)
        self.assertEqual(self.reads_of("labels")[1], [])
        self.assertEqual(len(self.reads_of("cardinality/label_names")[1]), 1)
        self.clock.advance(600)
        self.push("t1", "after_expiry")
        body, calls = self.reads_of("label/__name__/values")
        self.assertEqual(len(calls), 1)
        self.assertEqual(len(self.reads_of("labels")[1]), 1)

    def test_no_store_and_series_not_cached(self):
        """A request with Cache-Control: no-store and series requests always reach the querier;
        no-store neither reads nor fills the cache."""
        self.get("labels")
        self.assertEqual(len(self.reads_of("labels", headers={"Cache-Control": "no-store"})[1]), 1)
        self.reads_of("label/job/values", headers={"Cache-Control": "no-store"})
        self.assertEqual(len(self.reads_of("label/job/values")[1]), 1)
        params = (("match[]", "http_requests_total"),)
        want = self.direct("series", params)
        for _ in range(2):
            body, calls = self.reads_of("series", params)
            self.assertEqual((body, calls), (want, [("t1", "series")]))

    def test_errors_are_not_cached_and_keep_their_shape(self):
        """Bad parameters answer the querier's own 400s (checked before any querier call);
        a cardinality request of a tenant without the analysis enabled is refused."""
        for path, params in (("labels", (("match[]", "{"),)),
                             ("labels", (("start", "x"),)),
                             ("series", ()),
                             ("cardinality/label_values", ()),
                             ("cardinality/label_names", (("limit", "501"),))):
            want = self.direct(path, params, status=400)
            del self.reads.calls[:]
            self.assertEqual(self.get(path, params, status=400), want)
            self.assertEqual(self.reads.calls, [])

    def test_memcached_down_is_a_miss(self):
        """With memcached refusing connections, every request reaches the querier and answers."""
        server = FakeMemcached(autoflush=True)
        server.refuse = True
        client = MemcachedClient(["fake:11211"], self.clock, connect=server.connect)
        self.frontend.cache = F.MemcachedResultsCache(client)
        want = self.direct("label/job/values")
        for _ in range(2):
            body, calls = self.reads_of("label/job/values")
            self.assertEqual((body, len(calls)), (want, 1))

    def test_memcached_serves_cached_answers(self):
        server = FakeMemcached(autoflush=True)
        client = MemcachedClient(["fake:11211"], self.clock, connect=server.connect)
        self.frontend.cache = F.MemcachedResultsCache(client)
        want = self.direct("labels")
        self.assertEqual(self.get("labels"), want)
        self.assertEqual([k[:3] for k in server.items], [b"ln:"])
        self.assertEqual(self.reads_of("labels"), (want, []))


class ReadCacheOffTests(ReadCacheTests):
    """The TTLs' default, 0: label names/values and cardinality answers are not cached."""
    config = dict(FrontendTestCase.config, **{"limits.cardinality_analysis_enabled": True})

    def test_ttl_zero_means_not_cached(self):
        for path, kind in (("labels", "labels"), ("label/job/values", "label_values"),
                           ("cardinality/label_names", "cardinality_label_names")):
            want = self.direct(path)
            for _ in range(2):
                self.assertEqual(self.reads_of(path), (want, [("t1", kind)]))

    test_second_request_served_from_the_cache = None
    test_keys_follow_mimir_normalisation = None
    test_tenants_never_share_cached_answers = None
    test_ttl_expiry = None
    test_memcached_serves_cached_answers = None
    test_no_store_and_series_not_cached = None
