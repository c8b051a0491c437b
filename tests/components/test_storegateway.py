"""The store-gateway: blocks in the bucket answer selects and label queries like the local blocks do."""
import os
import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support.tmp import mktemp
from urdar.components import errors as E
from urdar.components.querier import merge_series
from urdar.components.storegateway import StoreGateway, StoreGatewayConfig, StoreGatewayError, needed_postings
from urdar.engine.block import BlockReader, new_ulid, write_block
from urdar.engine.blockquery import block_label_names, block_label_values, block_select
from urdar.engine.labels import encode_labels
from urdar.engine.matchers import Matcher
from urdar.engine.xorchunk import XORChunk
from urdar.storage.bucketindex import build_index, write_index
from urdar.storage.faulty import FaultyBucket
from urdar.storage.filesystem import FilesystemBucket
from urdar.storage.markers import mark_for_deletion
from urdar.storage.memory import MemoryBucket
from urdar.storage.prefixed import for_tenant
from urdar.storage.shipper import Shipper

H = 3600 * 1000
STEP = 15000


def series_data(mint, maxt, seed, jobs=("api", "db", "web"), instances=8):
    """[(key, chunks)] with 120-sample XOR chunks, deterministic per seed."""
    rnd = random.Random(seed)
    out = []
    for job in jobs:
        for i in range(instances):
            for name in ("http_requests_total", "up"):
                labels = [("__name__", name), ("job", job), ("instance", "host-%d" % i)]
                if i % 3 == 0:
                    labels.append(("zone", "eu" if i % 2 else "us"))
                chunks, c, first = [], XORChunk(), None
                v = rnd.random() * 100
                for t in range(mint + rnd.randrange(0, STEP), maxt, STEP):
                    if first is None:
                        first = t
                    v += rnd.random()
                    c.append(t, v if name != "up" else 1.0)
                    last = t
                    if len(c) == 120:
                        chunks.append((first, last, 1, bytes(c.bytes())))
                        c, first = XORChunk(), None
                if len(c):
                    chunks.append((first, last, 1, bytes(c.bytes())))
                out.append((encode_labels(sorted(labels)), chunks))
    return out


MATCHER_SETS = [
    [Matcher("=", "__name__", "up")],
    [Matcher("=", "__name__", "http_requests_total"), Matcher("=", "job", "db")],
    [Matcher("=~", "job", "api|web"), Matcher("!=", "instance", "host-3")],
    [Matcher("=", "__name__", "up"), Matcher("=~", "zone", ".+")],
    [Matcher("=", "__name__", "up"), Matcher("=", "zone", "")],
    [Matcher("!~", "job", "a.*"), Matcher("=~", "instance", "host-[12]")],
    [Matcher("=~", "__name__", ".+")],
    [Matcher("=", "__name__", "nope")],
    [Matcher("!=", "job", "api")],
]


class StoreGatewayTests(SynchronousTestCase):
    make_bucket = None

    def setUp(self):
        self.tmp = mktemp(self)
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.inner = (FilesystemBucket(os.path.join(self.tmp, "bucket")) if self.make_bucket == "fs"
                      else MemoryBucket(self.clock))
        self.bucket = FaultyBucket(self.inner)
        self.local = {}      # tenant -> dir of the blocks as written

    def add_blocks(self, tenant, ranges, seed=1, **kw):
        d = self.local.setdefault(tenant, os.path.join(self.tmp, "local", tenant))
        os.makedirs(d, exist_ok=True)
        ulids = []
        for k, (mint, maxt) in enumerate(ranges):
            ulids.append(write_block(d, mint, maxt, series_data(mint, maxt, seed + k, **kw),
                                     ulid=new_ulid(mint + 1 + seed)))
        self.successResultOf(Shipper(d, for_tenant(self.bucket, tenant), self.clock).sync())
        return ulids

    def gateway(self, **kw):
        config = {f: kw.pop(f) for f in ("sync_interval_ms", "index_cache_bytes", "chunks_cache_bytes")
                  if f in kw}
        config.setdefault("sync_interval_ms", 0)
        sg = StoreGateway(self.bucket, os.path.join(self.tmp, "sync"), self.clock,
                          StoreGatewayConfig(**config), **kw)
        self.successResultOf(sg.start())
        self.addCleanup(sg.stop)
        return sg

    def expected(self, tenant, matchers, mint, maxt, samples=True):
        parts = []
        d = self.local[tenant]
        for name in sorted(os.listdir(d)):
            if name.endswith(".json"):
                continue
            with BlockReader(os.path.join(d, name)) as b:
                if b.maxt <= mint or b.mint > maxt:
                    continue
                parts.append(block_select(b, matchers, mint, maxt, samples))
        return merge_series(parts, samples) if parts else []

    @staticmethod
    def plain(result):
        return [(k, list(t) if t is not None else None, list(v) if v is not None else None)
                for k, t, v in result]

    def test_select_matches_local_blocks(self):
        """Every matcher set over several time ranges returns exactly what the local blocks hold,
        the first time (read from the bucket) and again (from the caches and select plans, whole
        blocks and parts of them)."""
        self.add_blocks("t1", [(0, 2 * H), (2 * H, 4 * H), (4 * H, 6 * H)])
        sg = self.gateway()
        for matchers in MATCHER_SETS:
            for mint, maxt in ((0, 6 * H), (H + 7, 3 * H), (5 * H, 5 * H + 60000), (-5, -1),
                               (2 * H, 2 * H)) * 2:
                got = self.successResultOf(sg.select("t1", matchers, mint, maxt))
                self.assertEqual(self.plain(got), self.plain(self.expected("t1", matchers, mint, maxt)),
                                 (matchers, mint, maxt))

    def test_histogram_blocks_are_served_per_the_select_contract(self):
        """A block (and its replica, overlapping) with native histogram chunks: the store-gateway
        returns (key, ts, vals, None, hts, FloatHistograms), the same as reading the block locally."""
        from urdar.engine.histchunk import encode_histogram_samples
        from urdar.engine.histogram import Histogram
        from urdar.engine.labels import encode_labels
        key = encode_labels([("__name__", "lat"), ("job", "a")])
        samples = [(15000 * k, Histogram(schema=1, count=3 * k, sum=0.5 * k, zero_count=k,
                                         positive_spans=[(0, 2)], positive_buckets=[k, 0]))
                   for k in range(1, 400)]
        chunks = encode_histogram_samples(samples, 120)
        d = self.local.setdefault("t1", os.path.join(self.tmp, "local", "t1"))
        os.makedirs(d, exist_ok=True)
        write_block(d, 0, 2 * H, [(key, chunks)], ulid=new_ulid(7))
        write_block(d, 0, 2 * H, [(key, chunks[1:])], ulid=new_ulid(8))
        self.successResultOf(Shipper(d, for_tenant(self.bucket, "t1"), self.clock).sync())
        sg = self.gateway()
        m = [Matcher("=", "__name__", "lat")]
        [(k, ts, vs, sts, hts, hvs)] = self.successResultOf(sg.select("t1", m, 30000, 3000000))
        self.assertEqual((k, len(ts), sts), (key, 0, None))
        self.assertEqual(list(hts), [t for t, _ in samples if 30000 <= t <= 3000000])
        self.assertEqual([h.count for h in hvs], [float(h.count) for t, h in samples if 30000 <= t <= 3000000])
        [(k2, ts2, vs2, sts2, hts2, hvs2)] = self.expected("t1", m, 30000, 3000000)
        self.assertEqual((list(hts2), hvs2), (list(hts), hvs))

    def test_series_without_samples(self):
        """samples=False lists the matching series keys with no arrays, as TSDB.select does."""
        self.add_blocks("t1", [(0, 2 * H)])
        sg = self.gateway()
        got = self.successResultOf(sg.select("t1", MATCHER_SETS[2], 0, 2 * H, samples=False))
        self.assertEqual(got, self.expected("t1", MATCHER_SETS[2], 0, 2 * H, samples=False))
        self.assertTrue(got)

    def test_series_without_samples_respect_chunk_times(self):
        """A label-only read lists a series only where one of its chunks overlaps the range,
        as reading the blocks locally does (the series of series_data start at varied times)."""
        self.add_blocks("t1", [(0, 2 * H), (2 * H, 4 * H)])
        sg = self.gateway()
        for matchers in MATCHER_SETS:
            for mint, maxt in ((0, 4 * H), (H + 7, 3 * H), (3 * H, 3 * H + 60000), (-5, -1),
                               (2 * H, 2 * H), (4 * H, 5 * H)):
                got = self.successResultOf(sg.select("t1", matchers, mint, maxt, samples=False))
                self.assertEqual(got, self.expected("t1", matchers, mint, maxt, samples=False),
                                 (matchers, mint, maxt))

    def test_overlapping_blocks_are_deduplicated(self):
        """Two blocks with the same samples (replicas) give each sample once."""
        self.add_blocks("t1", [(0, 2 * H)], seed=5)
        d2 = os.path.join(self.tmp, "replica")
        os.makedirs(d2)
        write_block(d2, 0, 2 * H, series_data(0, 2 * H, 5), ulid=new_ulid(99))
        self.successResultOf(Shipper(d2, for_tenant(self.bucket, "t1"), self.clock).sync())
        sg = self.gateway()
        self.assertEqual(len(sg.blocks("t1")), 2)
        got = self.successResultOf(sg.select("t1", MATCHER_SETS[0], 0, 2 * H))
        self.assertEqual(self.plain(got), self.plain(self.expected("t1", MATCHER_SETS[0], 0, 2 * H)))

    def test_partly_overlapping_blocks_interleave(self):
        """Blocks whose time ranges overlap with different samples (and series only one of them
        has) give every sample of both, in time order, as the local blocks merged do."""
        self.add_blocks("t1", [(0, 2 * H)], seed=3)
        d2 = os.path.join(self.tmp, "later")
        os.makedirs(d2)
        write_block(d2, H, 3 * H, series_data(H, 3 * H, 11, jobs=("db", "new")), ulid=new_ulid(H + 50))
        write_block(d2, 3 * H, 4 * H, series_data(3 * H, 4 * H, 12), ulid=new_ulid(3 * H + 50))
        self.successResultOf(Shipper(d2, for_tenant(self.bucket, "t1"), self.clock).sync())
        for name in os.listdir(d2):
            os.rename(os.path.join(d2, name), os.path.join(self.local["t1"], name))
        sg = self.gateway()
        self.assertEqual(len(sg.blocks("t1")), 3)
        for matchers in MATCHER_SETS:
            for mint, maxt in ((0, 4 * H), (H + 7, 3 * H + 5)):
                got = self.plain(self.successResultOf(sg.select("t1", matchers, mint, maxt)))
                self.assertEqual(got, self.plain(self.expected("t1", matchers, mint, maxt)))
                for _, ts, _ in got:
                    self.assertEqual(ts, sorted(set(ts)))

    def test_label_names_and_values_match_local_blocks(self):
        """Label names and values, with and without matchers, equal the local blocks' answers."""
        self.add_blocks("t1", [(0, 2 * H), (2 * H, 4 * H)])
        sg = self.gateway()
        local = [BlockReader(os.path.join(self.local["t1"], n)) for n in sorted(os.listdir(self.local["t1"]))
                 if not n.endswith(".json")]
        self.addCleanup(lambda: [b.close() for b in local])
        for matchers in ([], MATCHER_SETS[1], MATCHER_SETS[4]):
            want = sorted({n for b in local for n in block_label_names(b, matchers)})
            self.assertEqual(self.successResultOf(sg.label_names("t1", matchers)), want)
            for name in ("job", "zone", "__name__", "absent"):
                want = sorted({v for b in local for v in block_label_values(b, name, matchers)})
                self.assertEqual(self.successResultOf(sg.label_values("t1", name, matchers)), want)

    def test_label_queries_respect_time_range(self):
        """Label names come only from blocks overlapping the requested range."""
        self.add_blocks("t1", [(0, 2 * H)], jobs=("old",))
        self.add_blocks("t1", [(2 * H, 4 * H)], seed=9, jobs=("new",))
        sg = self.gateway()
        self.assertEqual(self.successResultOf(sg.label_values("t1", "job", (), 3 * H, 4 * H)), ["new"])
        self.assertEqual(self.successResultOf(sg.label_values("t1", "job", (), 0, H)), ["old"])

    def test_repeated_query_is_served_from_cache(self):
        """The same query twice reads the bucket only the first time."""
        self.add_blocks("t1", [(0, 2 * H)])
        sg = self.gateway()
        first = self.successResultOf(sg.select("t1", MATCHER_SETS[2], 0, 2 * H))
        n = sg.range_requests
        self.assertGreater(n, 0)
        calls = len(self.bucket.calls)
        second = self.successResultOf(sg.select("t1", MATCHER_SETS[2], 0, 2 * H))
        self.assertEqual(sg.range_requests, n)
        self.assertEqual(len(self.bucket.calls), calls)
        self.assertEqual(self.plain(first), self.plain(second))
        self.assertGreater(sg.index_cache.hits, 0)
        self.assertGreater(sg.chunks_cache.hits, 0)

    def test_caches_stay_within_their_size(self):
        """Small cache limits are never exceeded, and answers stay right."""
        self.add_blocks("t1", [(0, 2 * H)])
        sg = self.gateway(index_cache_bytes=2000, chunks_cache_bytes=3000)
        for matchers in MATCHER_SETS:
            got = self.successResultOf(sg.select("t1", matchers, 0, 2 * H))
            self.assertEqual(self.plain(got), self.plain(self.expected("t1", matchers, 0, 2 * H)))
            self.assertLessEqual(sg.index_cache.bytes, 2000)
            self.assertLessEqual(sg.chunks_cache.bytes, 3000)

    def test_few_requests_for_a_query(self):
        """Nearby postings, series and chunks are fetched together: one select takes a handful of reads."""
        self.add_blocks("t1", [(0, 2 * H)])
        sg = self.gateway()
        self.successResultOf(sg.select("t1", [Matcher("=~", "__name__", ".+")], 0, 2 * H))
        self.assertLessEqual(sg.range_requests, 4)

    def test_index_header_is_kept_on_disk_and_reused(self):
        """A restarted store-gateway opens the index-header it wrote instead of reading the index again."""
        (ulid,) = self.add_blocks("t1", [(0, 2 * H)])
        self.gateway()
        path = os.path.join(self.tmp, "sync", "t1", ulid, "index-header")
        self.assertTrue(os.path.isfile(path))
        self.assertLess(os.path.getsize(path), os.path.getsize(os.path.join(self.local["t1"], ulid, "index")))
        before = len([c for c in self.bucket.calls if c[0] == "get_range"])
        self.gateway()
        self.assertEqual(len([c for c in self.bucket.calls if c[0] == "get_range"]), before)

    def test_damaged_index_header_is_rebuilt(self):
        """A damaged local index-header is replaced from the bucket and queries still work."""
        (ulid,) = self.add_blocks("t1", [(0, 2 * H)])
        self.gateway()
        path = os.path.join(self.tmp, "sync", "t1", ulid, "index-header")
        with open(path, "r+b") as f:
            f.seek(70)
            f.write(b"\xff\xff\xff")
        sg = self.gateway()
        got = self.successResultOf(sg.select("t1", MATCHER_SETS[0], 0, 2 * H))
        self.assertEqual(self.plain(got), self.plain(self.expected("t1", MATCHER_SETS[0], 0, 2 * H)))

    def corrupt(self, name, offset=100):
        data = bytearray(self.successResultOf(self.inner.get(name)))
        data[offset] ^= 0xFF
        self.successResultOf(self.inner.put(name, bytes(data)))

    def test_corrupt_chunks_fail_the_query_naming_the_block(self):
        """Flipped bytes in a chunk segment fail the query with an error naming tenant and block."""
        ulid, _ = self.add_blocks("t1", [(0, 2 * H), (2 * H, 4 * H)])
        self.add_blocks("t2", [(0, 2 * H)])
        self.corrupt("t1/%s/chunks/000001" % ulid)
        sg = self.gateway()
        f = self.failureResultOf(sg.select("t1", [Matcher("=~", "__name__", ".+")], 0, 4 * H),
                                 StoreGatewayError)
        self.assertIn(ulid, str(f.value))
        self.assertIn("t1", str(f.value))
        self.assertEqual(f.value.cause, E.INTERNAL)
        got = self.successResultOf(sg.select("t2", MATCHER_SETS[0], 0, 2 * H))
        self.assertEqual(self.plain(got), self.plain(self.expected("t2", MATCHER_SETS[0], 0, 2 * H)))
        # Queries that do not reach the broken block still work.
        self.successResultOf(sg.select("t1", MATCHER_SETS[0], 3 * H, 4 * H))

    def test_undecodable_chunk_fails_the_query_naming_the_block(self):
        """A chunk whose CRC holds but whose samples do not decode (a faulty writer) fails the
        query naming its block, from the bucket and again from the caches."""
        (good,) = self.add_blocks("t1", [(0, 2 * H)])
        d = self.local["t1"]
        labels = encode_labels(sorted([("__name__", "up"), ("job", "api"), ("instance", "host-1")]))
        bad = write_block(d, 2 * H, 4 * H, [(labels, [(2 * H, 3 * H, 1, b"\x00\x05\xff\xff\xff")])],
                          ulid=new_ulid(2 * H + 77))
        self.successResultOf(Shipper(d, for_tenant(self.bucket, "t1"), self.clock).sync())
        sg = self.gateway()
        for _ in range(2):
            f = self.failureResultOf(sg.select("t1", MATCHER_SETS[0], 0, 4 * H), StoreGatewayError)
            self.assertIn(bad, str(f.value))
            self.assertNotIn(good, str(f.value))
            self.assertEqual(f.value.cause, E.INTERNAL)
        got = self.successResultOf(sg.select("t1", MATCHER_SETS[0], 0, 2 * H - 1))
        self.assertEqual(self.plain(got), self.plain(self.expected("t1", MATCHER_SETS[0], 0, 2 * H - 1)))

    def test_missing_chunk_object_fails_the_query(self):
        """A chunk segment missing from the bucket fails the query instead of returning less data."""
        (ulid,) = self.add_blocks("t1", [(0, 2 * H)])
        sg = self.gateway()
        self.successResultOf(self.inner.delete("t1/%s/chunks/000001" % ulid))
        f = self.failureResultOf(sg.select("t1", MATCHER_SETS[0], 0, 2 * H), StoreGatewayError)
        self.assertIn(ulid, str(f.value))

    def test_corrupt_index_fails_queries_over_the_block(self):
        """A block whose index cannot be read fails queries over its range; other tenants are unaffected."""
        (ulid,) = self.add_blocks("t1", [(0, 2 * H)])
        self.add_blocks("t2", [(0, 2 * H)])
        size = len(self.successResultOf(self.inner.get("t1/%s/index" % ulid)))
        self.corrupt("t1/%s/index" % ulid, size - 10)      # inside the TOC
        sg = self.gateway()
        f = self.failureResultOf(sg.select("t1", MATCHER_SETS[0], 0, 2 * H), StoreGatewayError)
        self.assertIn("TOC", str(f.value))
        self.failureResultOf(sg.label_names("t1"), StoreGatewayError)
        self.successResultOf(sg.select("t2", MATCHER_SETS[0], 0, 2 * H))

    def test_corrupt_postings_or_series_fail_the_query(self):
        """Damaged postings lists or series entries fail the query."""
        (ulid,) = self.add_blocks("t1", [(0, 2 * H)])
        sg = self.gateway()
        header = sg.blocks("t1")[0].header
        toc = header.toc
        self.corrupt("t1/%s/index" % ulid, toc[1] + 3)        # first series entry
        f = self.failureResultOf(sg.select("t1", [Matcher("=~", "__name__", ".+")], 0, 2 * H),
                                 StoreGatewayError)
        self.assertIn("series", str(f.value))

    def test_partial_upload_is_invisible(self):
        """A block without meta.json in the bucket is not served."""
        (ulid,) = self.add_blocks("t1", [(0, 2 * H)])
        self.successResultOf(self.inner.delete("t1/%s/meta.json" % ulid))
        sg = self.gateway()
        self.assertEqual(sg.blocks("t1"), [])
        self.assertEqual(self.successResultOf(sg.select("t1", MATCHER_SETS[0], 0, 2 * H)), [])

    def test_hostile_tenant_ids_are_refused(self):
        """Tenant IDs that could escape the bucket or sync dir are refused as bad data."""
        self.add_blocks("t1", [(0, 2 * H)])
        sg = self.gateway()
        for tenant in ("..", ".", "a/b", "../t1", ""):
            f = self.failureResultOf(sg.select(tenant, MATCHER_SETS[0], 0, 2 * H), E.ComponentError)
            self.assertEqual(f.value.cause, E.BAD_DATA)

    def test_non_ulid_directories_are_ignored(self):
        """Objects under names that are not ULIDs never reach the sync dir or a query."""
        self.add_blocks("t1", [(0, 2 * H)])
        self.successResultOf(self.inner.put("t1/evil/meta.json", b'{"ulid": "../../x"}'))
        self.successResultOf(self.inner.put("t1/01ARZ3NDEKTSV4RRFFQ69G5FA/meta.json", b"{}"))
        sg = self.gateway()
        self.assertEqual(len(sg.blocks("t1")), 1)
        self.assertEqual(sorted(os.listdir(os.path.join(self.tmp, "sync", "t1"))),
                         [sg.blocks("t1")[0].ulid])

    def test_bucket_index_and_newer_blocks_are_both_served(self):
        """Blocks in the bucket index and blocks shipped after it was written are all served."""
        ulids = self.add_blocks("t1", [(0, 2 * H), (2 * H, 4 * H)])
        tb = for_tenant(self.inner, "t1")
        index = self.successResultOf(build_index(tb, self.clock))
        self.successResultOf(write_index(tb, index))
        ulids += self.add_blocks("t1", [(4 * H, 6 * H)], seed=7)
        sg = self.gateway()
        self.assertEqual([b.ulid for b in sg.blocks("t1")], ulids)
        self.assertIn(("get", "t1/bucket-index.json.gz"), self.bucket.calls)

    def test_deletion_marks_come_from_the_bucket_index(self):
        """A deletion mark listed in the bucket index hides the block after the delay."""
        a, b = self.add_blocks("t1", [(0, 2 * H), (2 * H, 4 * H)])
        tb = for_tenant(self.inner, "t1")
        self.successResultOf(mark_for_deletion(tb, a, self.clock))
        index = self.successResultOf(build_index(tb, self.clock))
        self.successResultOf(write_index(tb, index))
        self.clock.advance(2 * 3600)
        sg = self.gateway()
        self.assertEqual([x.ulid for x in sg.blocks("t1")], [b])

    def test_blocks_long_marked_for_deletion_are_not_served(self):
        """A block marked for deletion more than an hour ago is dropped; a fresh mark keeps it."""
        a, b = self.add_blocks("t1", [(0, 2 * H), (2 * H, 4 * H)])
        tb = for_tenant(self.inner, "t1")
        self.successResultOf(mark_for_deletion(tb, a, self.clock))
        sg = self.gateway()
        self.assertEqual([x.ulid for x in sg.blocks("t1")], [a, b])
        self.clock.advance(2 * 3600)
        self.successResultOf(sg.sync())
        self.assertEqual([x.ulid for x in sg.blocks("t1")], [b])
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "sync", "t1", a)))

    def test_sync_picks_up_new_and_deleted_blocks(self):
        """Periodic syncs add newly uploaded blocks and drop ones deleted from the bucket."""
        (a,) = self.add_blocks("t1", [(0, 2 * H)])
        sg = self.gateway(sync_interval_ms=60_000)
        (b,) = self.add_blocks("t1", [(2 * H, 4 * H)], seed=3)
        self.assertEqual([x.ulid for x in sg.blocks("t1")], [a])
        self.clock.advance(60)
        self.assertEqual([x.ulid for x in sg.blocks("t1")], [a, b])
        for name in list(self.successResultOf(self.inner.list("t1/%s/" % a, ""))):
            self.successResultOf(self.inner.delete(name))
        self.clock.advance(60)
        self.assertEqual([x.ulid for x in sg.blocks("t1")], [b])

    def test_needed_postings_cover_what_matching_reads(self):
        """The prefetch plan holds every postings list the matcher evaluation asks for."""
        self.add_blocks("t1", [(0, 2 * H)])
        sg = self.gateway()
        header = sg.blocks("t1")[0].header
        self.assertEqual(needed_postings(header, [Matcher("=", "job", "db")]), [("job", "db")])
        self.assertEqual(needed_postings(header, [Matcher("!=", "job", "db")]),
                         [("", ""), ("job", "db")])
        self.assertEqual(needed_postings(header, [Matcher("=~", "job", "api|web")]),
                         [("job", "api"), ("job", "web")])


class FilesystemStoreGatewayTests(StoreGatewayTests):
    """The same behaviour over the filesystem bucket."""
    make_bucket = "fs"

