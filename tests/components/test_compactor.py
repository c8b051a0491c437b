"""The compactor over a memory bucket on a Clock: vertical and horizontal compaction keep every
sample, marks and deletion after the delay, retention, no-compact marks, the wait period, the
bucket index, tenant deletion, and faults (object store errors, corrupt blocks)."""
import json
import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support.threads import inline_offload
from tests.support.tmp import mktemp
from urdar.app.config import Config
from urdar.components.compactor import Compactor, CompactorConfig, _block_files, thanos_section
from urdar.components.limits import Overrides
from urdar.engine.block import BlockReader, meta_json, new_ulid, read_meta, write_block
from urdar.engine.labels import decode_labels, encode_labels
from urdar.engine.xorchunk import encode_xor
from urdar.storage import bucketindex, markers
from urdar.storage.faulty import FaultyBucket
from urdar.storage.memory import MemoryBucket
from urdar.storage.prefixed import for_tenant
from urdar.storage.retrying import RetryingBucket

H = 3600 * 1000
DAY = 24 * H
BASE = 19700 * DAY          # a day boundary, ms
NOW_S = BASE / 1000 + 3 * 86400


# ---- builders shared with tests/handlers/test_compactor.py ---------------------------------------

def samples(mint, maxt, step=15000, offset=0.0):
    return [(t, float(t // step) + offset) for t in range(mint, maxt, step)]


def write_local_block(parent, mint, maxt, series, ulid=None, level=1, sources=None):
    """A block under `parent` with `series` {((name, value), ...): [(t, v)]} in 120-sample
    chunks; returns its ULID."""
    items = []
    for labels, smp in series.items():
        chunks = []
        for a in range(0, len(smp), 120):
            part = smp[a:a + 120]
            ts = [t for t, _ in part]
            vs = [v for _, v in part]
            from array import array
            chunks.append((ts[0], ts[-1], 1, encode_xor(array("q", ts), array("d", vs))))
        items.append((encode_labels(labels), chunks))
    return write_block(parent, mint, maxt, items, ulid=ulid or new_ulid(), level=level,
                       sources=sources)


def ship_block(bucket, tenant, block_dir, labels=None, meta_last=True):
    """Upload a local block as Mimir's shipper does: files, then meta.json with `thanos`."""
    meta = read_meta(block_dir)
    files = _block_files(block_dir)
    meta["thanos"] = thanos_section(files, labels or {}, source="receive")
    ulid = meta["ulid"]
    for rel, _ in files:
        if rel != "meta.json":
            with open(os.path.join(block_dir, *rel.split("/")), "rb") as f:
                bucket.put("%s/%s/%s" % (tenant, ulid, rel), f.read())
    bucket.put("%s/%s/meta.json" % (tenant, ulid), meta_json(meta))
    return ulid


def read_bucket_block(case, bucket, tenant, ulid):
    """{labels tuple: [(t, v)]} of one block read back from the bucket with BlockReader."""
    d = os.path.join(mktemp(case), ulid)
    prefix = "%s/%s/" % (tenant, ulid)
    for name, data in bucket.objects.items():
        if name.startswith(prefix):
            rel = name[len(prefix):]
            if rel in ("meta.json", "index") or rel.startswith("chunks/"):
                path = os.path.join(d, *rel.split("/"))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)
    out = {}
    with BlockReader(d, verify=True) as r:
        for key, ts, vs in r.iter_series():
            out[tuple(decode_labels(key))] = list(zip(ts, vs))
    return out


def merged(*dicts):
    """What a query over several blocks answers: per series, one sample per timestamp."""
    out = {}
    for d in dicts:
        for k, smp in d.items():
            out.setdefault(k, {}).update({t: v for t, v in smp if t not in out.get(k, {})})
    return {k: sorted(v.items()) for k, v in out.items()}


def complete_blocks(bucket, tenant):
    return sorted(n.split("/")[1] for n in bucket.objects
                  if n.startswith(tenant + "/") and n.endswith("/meta.json") and n.count("/") == 2)


def live_blocks(bucket, tenant):
    marked = {n.split("/")[1] for n in bucket.objects
              if n.startswith(tenant + "/") and n.endswith("/deletion-mark.json") and n.count("/") == 2}
    return [u for u in complete_blocks(bucket, tenant) if u not in marked]


SERIES_A = (("__name__", "up"), ("job", "a"))
SERIES_B = (("__name__", "up"), ("job", "b"))
SERIES_C = (("__name__", "x"), ("instance", "i1"))


class CompactorTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW_S)
        self.bucket = MemoryBucket(self.clock)
        self.local = mktemp(self)
        os.makedirs(self.local)
        self.overrides = Overrides(Config().limits_defaults())
        self.compactor = self.make(self.bucket)

    def make(self, bucket, registry=None, **config):
        config.setdefault("first_level_wait_ms", 0)
        return Compactor(bucket, self.overrides, self.clock, mktemp(self), CompactorConfig(**config),
                         offload=inline_offload((("compactor", 1, 10),)), registry=registry)

    def block(self, tenant, mint, maxt, series, bucket=None, **kw):
        d = os.path.join(self.local, write_local_block(self.local, mint, maxt, series, **kw))
        return ship_block(bucket or self.bucket, tenant, d)

    def read(self, tenant, ulid):
        return read_bucket_block(self, self.bucket, tenant, ulid)

    def meta(self, tenant, ulid):
        return json.loads(self.bucket.objects["%s/%s/meta.json" % (tenant, ulid)])

    def compact(self, tenant="t1", compactor=None):
        return self.successResultOf((compactor or self.compactor).compact_tenant(tenant))


class VerticalCompactionTests(CompactorTestCase):
    def test_ingester_copies_merge_into_one_block_with_the_same_samples(self):
        """Three ingesters' copies of one 2h block (one with an extra series and extra samples)
        become one level-2 block answering exactly what the copies answered together."""
        series = {SERIES_A: samples(BASE, BASE + 2 * H), SERIES_B: samples(BASE, BASE + 2 * H, 30000)}
        u1 = self.block("t1", BASE, BASE + 2 * H, series)
        u2 = self.block("t1", BASE, BASE + 2 * H, series)
        extra = dict(series)
        extra[SERIES_C] = samples(BASE + H, BASE + 2 * H, 10000)
        extra[SERIES_A] = samples(BASE + 7500, BASE + 2 * H, 15000)     # interleaved samples
        u3 = self.block("t1", BASE, BASE + 2 * H, extra)
        before = merged(self.read("t1", u1), self.read("t1", u2), self.read("t1", u3))
        made = self.compact()
        self.assertEqual(len(made), 1)
        self.assertEqual(live_blocks(self.bucket, "t1"), made)
        after = self.read("t1", made[0])
        self.assertEqual(after, before)
        self.assertEqual(len(after[SERIES_A]), 2 * 480)
        meta = self.meta("t1", made[0])
        self.assertEqual((meta["minTime"], meta["maxTime"]), (BASE, BASE + 2 * H))
        self.assertEqual(meta["compaction"]["level"], 2)
        self.assertEqual(sorted(meta["compaction"]["sources"]), sorted([u1, u2, u3]))
        self.assertEqual(sorted(p["ulid"] for p in meta["compaction"]["parents"]), sorted([u1, u2, u3]))
        self.assertEqual(meta["thanos"]["source"], "compactor")
        files = {f["rel_path"]: f.get("size_bytes") for f in meta["thanos"]["files"]}
        self.assertEqual(files["index"], len(self.bucket.objects["t1/%s/index" % made[0]]))
        self.assertIn("chunks/000001", files)

    def test_sources_get_both_deletion_marks(self):
        """Each source block gets <ULID>/deletion-mark.json and markers/<ULID>-deletion-mark.json."""
        series = {SERIES_A: samples(BASE, BASE + 2 * H)}
        srcs = [self.block("t1", BASE, BASE + 2 * H, series) for _ in range(2)]
        made = self.compact()
        for u in srcs:
            local = json.loads(self.bucket.objects["t1/%s/deletion-mark.json" % u])
            self.assertEqual(local["id"], u)
            self.assertEqual(local["deletion_time"], int(NOW_S))
            self.assertIn(made[0], local["details"])
            self.assertEqual(self.bucket.objects["t1/markers/%s-deletion-mark.json" % u],
                             self.bucket.objects["t1/%s/deletion-mark.json" % u])

    def test_meta_json_is_uploaded_after_the_block_files(self):
        """The compacted block's meta.json is the last object written for it (readers never see
        a meta.json whose index or chunks are missing)."""
        faulty = FaultyBucket(self.bucket)
        c = self.make(faulty)
        series = {SERIES_A: samples(BASE, BASE + 2 * H)}
        for _ in range(2):
            self.block("t1", BASE, BASE + 2 * H, series)
        made = self.compact(compactor=c)
        puts = [n for m, n in faulty.calls if m == "put" and n.startswith("t1/%s/" % made[0])]
        self.assertEqual(puts[-1], "t1/%s/meta.json" % made[0])
        self.assertEqual(set(puts), {"t1/%s/index" % made[0], "t1/%s/chunks/000001" % made[0],
                                     "t1/%s/meta.json" % made[0]})


class HorizontalCompactionTests(CompactorTestCase):
    def test_six_2h_blocks_become_one_12h_block(self):
        """Adjacent 2h blocks filling a 12h range become one 12h block with the same samples."""
        srcs = []
        for i in range(6):
            lo = BASE + i * 2 * H
            srcs.append(self.block("t1", lo, lo + 2 * H, {SERIES_A: samples(lo, lo + 2 * H, offset=i),
                                                         SERIES_B: samples(lo, lo + H)}))
        before = merged(*[self.read("t1", u) for u in srcs])
        made = self.compact()
        self.assertEqual(len(made), 1)
        meta = self.meta("t1", made[0])
        self.assertEqual((meta["minTime"], meta["maxTime"]), (BASE, BASE + 12 * H))
        self.assertEqual(self.read("t1", made[0]), before)
        self.assertEqual(live_blocks(self.bucket, "t1"), made)

    def test_a_day_of_2h_blocks_ends_as_one_24h_block(self):
        """Twelve 2h blocks of a day (and a newer one) compact 2h -> 12h -> 24h, samples kept."""
        srcs = []
        for i in range(13):
            lo = BASE + i * 2 * H
            srcs.append(self.block("t1", lo, lo + 2 * H, {SERIES_A: samples(lo, lo + 2 * H, 60000)}))
        before = merged(*[self.read("t1", u) for u in srcs])
        made = self.compact()
        live = live_blocks(self.bucket, "t1")
        spans = sorted((self.meta("t1", u)["minTime"], self.meta("t1", u)["maxTime"]) for u in live)
        self.assertEqual(spans, [(BASE, BASE + DAY), (BASE + DAY, BASE + DAY + 2 * H)])
        self.assertEqual(len(made), 3)
        self.assertEqual(merged(*[self.read("t1", u) for u in live]), before)
        day = [u for u in live if self.meta("t1", u)["maxTime"] == BASE + DAY][0]
        self.assertEqual(self.meta("t1", day)["compaction"]["level"], 3)
        self.assertEqual(len(self.meta("t1", day)["compaction"]["sources"]), 12)

    def test_incomplete_newest_range_waits(self):
        """Two 2h blocks at the start of the newest 12h range are left alone."""
        for i in range(2):
            lo = BASE + i * 2 * H
            self.block("t1", lo, lo + 2 * H, {SERIES_A: samples(lo, lo + 2 * H)})
        self.assertEqual(self.compact(), [])
        self.assertEqual(len(live_blocks(self.bucket, "t1")), 2)


class MarkTests(CompactorTestCase):
    def test_no_compact_mark_is_honoured(self):
        """A block with a no-compact mark is neither merged nor marked for deletion."""
        series = {SERIES_A: samples(BASE, BASE + 2 * H)}
        u1 = self.block("t1", BASE, BASE + 2 * H, series)
        u2 = self.block("t1", BASE, BASE + 2 * H, series)
        self.successResultOf(markers.mark_no_compact(for_tenant(self.bucket, "t1"), u2, self.clock))
        self.assertEqual(self.compact(), [])
        self.assertEqual(live_blocks(self.bucket, "t1"), sorted([u1, u2]))

    def test_fresh_level1_blocks_wait_for_the_other_ingesters(self):
        """Level-1 blocks are compacted only once the first-level wait period has passed since
        their upload."""
        c = self.make(self.bucket, first_level_wait_ms=25 * 60 * 1000)
        series = {SERIES_A: samples(BASE, BASE + 2 * H)}
        self.block("t1", BASE, BASE + 2 * H, series)
        self.block("t1", BASE, BASE + 2 * H, series)
        self.assertEqual(self.compact(compactor=c), [])
        self.clock.advance(25 * 60)
        self.assertEqual(len(self.compact(compactor=c)), 1)

    def test_marked_blocks_are_deleted_after_the_deletion_delay(self):
        """Sources stay (marked) until -compactor.deletion-delay has passed, then every object
        of theirs, marks included, is gone; the compacted block stays."""
        series = {SERIES_A: samples(BASE, BASE + 2 * H)}
        srcs = [self.block("t1", BASE, BASE + 2 * H, series) for _ in range(2)]
        made = self.compact()
        self.clock.advance(11 * 3600)
        self.assertEqual(self.successResultOf(self.compactor.cleanup_tenant("t1")), [])
        self.assertEqual(complete_blocks(self.bucket, "t1"), sorted(srcs + made))
        self.clock.advance(3600)
        self.assertEqual(sorted(self.successResultOf(self.compactor.cleanup_tenant("t1"))), sorted(srcs))
        for u in srcs:
            self.assertEqual([n for n in self.bucket.objects if u in n], [])
        self.assertEqual(complete_blocks(self.bucket, "t1"), made)
        index = self.successResultOf(bucketindex.read_index(for_tenant(self.bucket, "t1")))
        self.assertEqual(index.block_ids(), made)
        self.assertEqual(index.block_deletion_marks, [])

    def test_retention_marks_blocks_entirely_older_than_the_period(self):
        """With a per-tenant retention of 2d, blocks ending before now-2d are marked for deletion;
        another tenant without retention keeps everything."""
        self.overrides.set_overrides({"t1": {"compactor_blocks_retention_period": 2 * DAY}})
        now = int(NOW_S * 1000)
        old = self.block("t1", BASE, BASE + 2 * H, {SERIES_A: samples(BASE, BASE + 2 * H)})
        edge_lo = now - 2 * DAY - H
        edge = self.block("t1", edge_lo, edge_lo + 2 * H, {SERIES_A: samples(edge_lo, edge_lo + 2 * H)})
        other = self.block("t2", BASE, BASE + 2 * H, {SERIES_A: samples(BASE, BASE + 2 * H)})
        self.compact("t1")
        self.compact("t2")
        self.assertEqual(live_blocks(self.bucket, "t1"), [edge])
        mark = json.loads(self.bucket.objects["t1/markers/%s-deletion-mark.json" % old])
        self.assertIn("retention", mark["details"])
        self.assertEqual(live_blocks(self.bucket, "t2"), [other])

    def test_bucket_index_is_rewritten_after_each_cycle(self):
        """After a compaction cycle bucket-index.json.gz lists the new block and the sources'
        deletion marks."""
        series = {SERIES_A: samples(BASE, BASE + 2 * H)}
        srcs = [self.block("t1", BASE, BASE + 2 * H, series) for _ in range(2)]
        made = self.compact()
        index = self.successResultOf(bucketindex.read_index(for_tenant(self.bucket, "t1")))
        self.assertEqual(sorted(index.block_ids()), sorted(srcs + made))
        self.assertEqual(sorted(index.deletion_marks()), sorted(srcs))
        self.assertEqual(index.updated_at, int(NOW_S))
        new = [b for b in index.blocks if b.block_id == made[0]][0]
        self.assertEqual((new.compaction_level, new.source, new.segments_format, new.segments_num),
                         (2, "compactor", "1b6d", 1))


class PartialBlockTests(CompactorTestCase):
    def test_partial_blocks_are_marked_after_a_day_and_then_deleted(self):
        """A block dir without meta.json (an upload that died) is left alone for a day after its
        last write, then marked, then deleted after the deletion delay; complete blocks stay."""
        keep = self.block("t1", BASE, BASE + 2 * H, {SERIES_A: samples(BASE, BASE + 2 * H)})
        partial = new_ulid()
        self.bucket.put("t1/%s/chunks/000001" % partial, b"x" * 10)
        self.bucket.put("t1/%s/index" % partial, b"y" * 10)
        self.clock.advance(23 * 3600)
        self.successResultOf(self.compactor.cleanup_tenant("t1"))
        self.assertNotIn("t1/%s/deletion-mark.json" % partial, self.bucket.objects)
        self.clock.advance(3600)
        self.successResultOf(self.compactor.cleanup_tenant("t1"))
        self.assertIn("t1/markers/%s-deletion-mark.json" % partial, self.bucket.objects)
        self.clock.advance(12 * 3600)
        self.assertEqual(self.successResultOf(self.compactor.cleanup_tenant("t1")), [partial])
        self.assertEqual([n for n in self.bucket.objects if partial in n], [])
        self.assertEqual(complete_blocks(self.bucket, "t1"), [keep])

    def test_partial_block_deletion_can_be_switched_off(self):
        """With compactor_partial_block_deletion_delay 0 partial blocks are never marked."""
        self.overrides.set_overrides({"t1": {"compactor_partial_block_deletion_delay": 0}})
        partial = new_ulid()
        self.bucket.put("t1/%s/index" % partial, b"y")
        self.clock.advance(30 * 86400)
        self.successResultOf(self.compactor.cleanup_tenant("t1"))
        self.assertNotIn("t1/%s/deletion-mark.json" % partial, self.bucket.objects)


class MetricsTests(CompactorTestCase):
    def test_runs_compactions_marks_and_deletions_are_counted(self):
        """cortex_compactor_* metrics count runs, blocks written, marked (by reason) and deleted."""
        from prometheus_client import CollectorRegistry
        reg = CollectorRegistry()
        c = self.make(self.bucket, registry=reg, deletion_delay_ms=0)
        series = {SERIES_A: samples(BASE, BASE + 2 * H)}
        for _ in range(2):
            self.block("t1", BASE, BASE + 2 * H, series)
        self.successResultOf(c.compact_all())
        self.successResultOf(c.cleanup_all())
        v = reg.get_sample_value
        self.assertEqual(v("cortex_compactor_runs_started_total"), 1)
        self.assertEqual(v("cortex_compactor_runs_completed_total"), 1)
        self.assertEqual(v("cortex_compactor_runs_failed_total"), 0)
        self.assertEqual(v("cortex_compactor_group_compactions_total"), 1)
        self.assertEqual(v("cortex_compactor_blocks_marked_for_deletion_total", {"reason": "compaction"}), 2)
        self.assertEqual(v("cortex_compactor_blocks_cleaned_total"), 2)
        self.assertEqual(v("cortex_compactor_last_successful_run_timestamp_seconds"), NOW_S)


class LoopTests(CompactorTestCase):
    def test_start_runs_a_cycle_now_and_again_every_interval(self):
        """start() compacts at once and then every -compactor.compaction-interval on the clock;
        stop() ends the loops."""
        c = self.make(self.bucket, compaction_interval_ms=H, cleanup_interval_ms=15 * 60 * 1000)
        series = {SERIES_A: samples(BASE, BASE + 2 * H)}
        for _ in range(2):
            self.block("t1", BASE, BASE + 2 * H, series)
        c.start()
        self.assertEqual(len(live_blocks(self.bucket, "t1")), 1)
        self.assertEqual(c.tenants, ["t1"])
        lo = BASE + 2 * H
        for _ in range(2):
            self.block("t1", lo, lo + 2 * H, {SERIES_A: samples(lo, lo + 2 * H)})
        self.clock.advance(1800)
        self.assertEqual(len(live_blocks(self.bucket, "t1")), 3)
        self.clock.advance(1800)
        self.assertEqual(len(live_blocks(self.bucket, "t1")), 2)
        self.successResultOf(c.stop())
        self.assertEqual(c.state, "LEAVING")


class TenantDeletionTests(CompactorTestCase):
    def test_deleted_tenant_loses_its_blocks_and_is_no_longer_compacted(self):
        """After POST delete_tenant's mark, the next cycle deletes every block of the tenant
        (and its index), records finished_time, and other tenants keep theirs."""
        series = {SERIES_A: samples(BASE, BASE + 2 * H)}
        for _ in range(2):
            self.block("t1", BASE, BASE + 2 * H, series)
        keep = self.block("t2", BASE, BASE + 2 * H, series)
        self.successResultOf(self.compactor.request_tenant_deletion("t1"))
        mark = json.loads(self.bucket.objects["t1/markers/tenant-deletion-mark.json"])
        self.assertEqual(mark, {"deletion_time": int(NOW_S)})
        self.assertFalse(self.successResultOf(self.compactor.tenant_blocks_deleted("t1")))
        self.successResultOf(self.compactor.compact_all())
        self.assertTrue(self.successResultOf(self.compactor.tenant_blocks_deleted("t1")))
        self.assertEqual(sorted(self.bucket.objects.keys() & {n for n in self.bucket.objects
                                                              if n.startswith("t1/")}),
                         ["t1/markers/tenant-deletion-mark.json"])
        mark = json.loads(self.bucket.objects["t1/markers/tenant-deletion-mark.json"])
        self.assertEqual(mark["finished_time"], int(NOW_S))
        self.assertEqual(live_blocks(self.bucket, "t2"), [keep])
        self.clock.advance(6 * 3600)
        self.successResultOf(self.compactor.cleanup_all())
        self.assertEqual([n for n in self.bucket.objects if n.startswith("t1/")], [])


class FaultTests(CompactorTestCase):
    def test_store_errors_mid_upload_are_retried_and_nothing_is_lost(self):
        """An object store answering 500 to puts of the new block is retried; the block appears
        complete once and the sources are marked only afterwards."""
        faulty = FaultyBucket(self.bucket)
        c = self.make(RetryingBucket(faulty, self.clock, max_attempts=5))
        series = {SERIES_A: samples(BASE, BASE + 2 * H)}
        srcs = [self.block("t1", BASE, BASE + 2 * H, series) for _ in range(2)]
        before = merged(*[self.read("t1", u) for u in srcs])
        faulty.fail_matching(r"^t1/[0-9A-Z]{26}/(index|meta\.json)$", times=3)
        d = c.compact_tenant("t1")
        self.assertNoResult(d)
        for _ in range(60):
            self.clock.advance(1)
        made = self.successResultOf(d)
        self.assertEqual(live_blocks(self.bucket, "t1"), made)
        self.assertEqual(self.read("t1", made[0]), before)

    def test_upload_failing_for_good_leaves_no_partial_block_and_loses_nothing(self):
        """When the new block's meta.json cannot be written, the compaction fails, the sources
        are not marked, no file of the new block remains, and the next cycle succeeds."""
        faulty = FaultyBucket(self.bucket)
        c = self.make(faulty)
        series = {SERIES_A: samples(BASE, BASE + 2 * H)}
        srcs = [self.block("t1", BASE, BASE + 2 * H, series) for _ in range(2)]
        faulty.fail_matching(r"^t1/[0-9A-Z]{26}/meta\.json$")
        self.failureResultOf(c.compact_tenant("t1"))
        self.assertEqual(live_blocks(self.bucket, "t1"), sorted(srcs))
        names = {n.split("/")[1] for n in self.bucket.objects if n.startswith("t1/") and "/" in n[3:]}
        self.assertEqual(names - {"markers"}, set(srcs))
        faulty.clear()
        made = self.compact(compactor=c)
        self.assertEqual(live_blocks(self.bucket, "t1"), made)

    def test_corrupt_block_stops_its_tenant_with_a_clear_error_only(self):
        """A block whose chunk bytes are damaged stops compaction of its tenant with an error
        naming the block; other tenants are compacted in the same cycle."""
        series = {SERIES_A: samples(BASE, BASE + 2 * H)}
        bad = self.block("t1", BASE, BASE + 2 * H, series)
        self.block("t1", BASE, BASE + 2 * H, series)
        for _ in range(2):
            self.block("t2", BASE, BASE + 2 * H, series)
        name = "t1/%s/chunks/000001" % bad
        data = bytearray(self.bucket.objects[name])
        data[40] ^= 0xFF
        self.bucket.put(name, bytes(data))
        self.successResultOf(self.compactor.compact_all())
        self.assertIn("t1", self.compactor.errors)
        self.assertIn(bad, self.compactor.errors["t1"])
        self.assertEqual(len(live_blocks(self.bucket, "t1")), 2)
        self.assertEqual(len(live_blocks(self.bucket, "t2")), 1)
        self.assertNotIn("t2", self.compactor.errors)
