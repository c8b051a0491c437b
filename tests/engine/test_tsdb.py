"""A tenant's TSDB: head cut into blocks, selects across head and blocks, compaction, retention."""
import errno
import os
import shutil
import tempfile
import unittest

from urdar.engine import faults
from urdar.engine.labels import labels_dict
from urdar.engine.matchers import Matcher
from urdar.engine.tsdb import TSDB

HOUR = 3600 * 1000


def eq(n, v):
    return Matcher("=", n, v)


class TSDBTestCase(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="urdar-tsdb-")
        self.dbs = []

    def tearDown(self):
        for db in self.dbs:
            db.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def open(self, **kw):
        db = TSDB(self.dir, **kw)
        self.dbs.append(db)
        return db

    def reopen(self, db, **kw):
        db.close()
        self.dbs.remove(db)
        return self.open(**kw)

    def fill(self, db, n_series, mint, maxt, step=60000):
        """Append like a scraper: every series at each time step, in time order."""
        for t in range(mint, maxt, step):
            for i in range(n_series):
                self.assertEqual(db.head.append({"__name__": "m", "i": str(i)}, [(t, float(t // step + i))]), [0])

    def dump(self, db, matchers=None, mint=-(2**63), maxt=2**63 - 1):
        return [(tuple(sorted(labels_dict(k).items())), list(t), list(v))
                for k, t, v in db.select(matchers or [eq("__name__", "m")], mint, maxt)]


class CutTests(TSDBTestCase):
    def test_head_cut_into_aligned_blocks(self):
        """Once the head spans more than 1.5 block ranges, the oldest 2h range becomes a block."""
        db = self.open()
        self.fill(db, 10, 0, 6 * HOUR)
        before = self.dump(db)
        made = db.cut_blocks()
        self.assertEqual(len(made), 2)
        spans = [(b.meta["minTime"], b.meta["maxTime"]) for b in db.blocks()]
        self.assertEqual(spans, [(0, 2 * HOUR), (2 * HOUR, 4 * HOUR)])
        self.assertGreaterEqual(db.head.mint, 4 * HOUR)
        self.assertEqual(self.dump(db), before)
        b = db.blocks()[0]
        self.assertEqual(b.meta["stats"]["numSamples"], 10 * 120)
        self.assertEqual(b.meta["stats"]["numSeries"], 10)

    def test_ancient_sample_cuts_one_block_not_every_empty_range(self):
        """A tenant's first samples at t=1 and 400 hours later make one block and one WAL checkpoint, not 200."""
        db = self.open()
        db.head.append({"__name__": "m", "i": "old"}, [(1, 1.0)])
        db.head.append({"__name__": "m", "i": "new"}, [(400 * HOUR, 2.0), (400 * HOUR + 60000, 3.0)])
        made = db.cut_blocks()
        self.assertEqual(len(made), 1)
        self.assertEqual([(b.meta["minTime"], b.meta["maxTime"]) for b in db.blocks()], [(0, 2 * HOUR)])
        self.assertEqual(db.head.mint, 400 * HOUR)
        self.assertEqual(db.cut_blocks(), [])
        # each head truncation checkpoints the WAL and starts the next segment: one did
        wal = os.path.join(self.dir, "wal")
        self.assertEqual(max(int(n) for n in os.listdir(wal) if n.isdigit()), 1)
        self.assertEqual(self.dump(db), [((("__name__", "m"), ("i", "new")), [400 * HOUR, 400 * HOUR + 60000], [2.0, 3.0]),
                                         ((("__name__", "m"), ("i", "old")), [1], [1.0])])

    def test_restart_keeps_blocks_and_head(self):
        """After a restart the blocks are reopened and the head replays only what is left."""
        db = self.open()
        self.fill(db, 5, 0, 6 * HOUR)
        db.cut_blocks()
        before = self.dump(db)
        db = self.reopen(db)
        self.assertEqual(self.dump(db), before)
        self.assertEqual(db.head.min_valid_time, 4 * HOUR)

    def test_force_flush_cuts_everything(self):
        """A forced cut (flush) moves all head data into blocks and empties the head."""
        db = self.open()
        self.fill(db, 3, 0, HOUR)
        before = self.dump(db)
        made = db.cut_blocks(force=True)
        self.assertEqual(len(made), 1)
        self.assertEqual(db.head.num_series, 0)
        self.assertEqual(self.dump(db), before)
        self.assertEqual(db.blocks()[0].meta["maxTime"], HOUR - 60000 + 1)

    def test_select_time_range_and_labels(self):
        """Selects honour the time range across the head/block boundary; label APIs span both."""
        db = self.open()
        self.fill(db, 3, 0, 6 * HOUR)
        db.head.append({"__name__": "late", "x": "1"}, [(6 * HOUR, 1.0)])
        db.cut_blocks()
        rows = self.dump(db, [eq("i", "1")], 4 * HOUR - 120000, 4 * HOUR + 60000)
        self.assertEqual(rows[0][1], [4 * HOUR - 120000, 4 * HOUR - 60000, 4 * HOUR, 4 * HOUR + 60000])
        self.assertEqual(db.label_names(), ["__name__", "i", "x"])
        self.assertEqual(db.label_values("__name__"), ["late", "m"])
        self.assertEqual(db.label_values("__name__", mint=0, maxt=HOUR), ["m"])
        self.assertEqual(db.label_values("i", [eq("__name__", "m")]), ["0", "1", "2"])


class CompactionTests(TSDBTestCase):
    def test_levelled_compaction_keeps_results(self):
        """Six adjacent 2h blocks are merged into one 12h block with the same samples."""
        db = self.open()
        self.fill(db, 4, 0, 16 * HOUR)
        db.cut_blocks()
        self.assertEqual(len(db.blocks()), 7)
        before = self.dump(db)
        made = db.compact()
        self.assertEqual(len(made), 1)
        spans = [(b.meta["minTime"], b.meta["maxTime"]) for b in db.blocks()]
        self.assertEqual(spans, [(0, 12 * HOUR), (12 * HOUR, 14 * HOUR)])
        self.assertEqual(db.blocks()[0].meta["compaction"]["level"], 2)
        self.assertEqual(len(db.blocks()[0].meta["compaction"]["sources"]), 6)
        self.assertEqual(self.dump(db), before)

    def test_overlapping_blocks_merged_vertically(self):
        """Two overlapping blocks (copies from two ingesters) merge into one without duplicates."""
        a = TSDB(os.path.join(self.dir, "a"))
        b = TSDB(os.path.join(self.dir, "b"))
        for db, off in ((a, 0), (b, 30000)):
            db.head.append({"__name__": "m", "i": "0"}, [(t, float(t)) for t in range(off, HOUR, 60000)])
            db.cut_blocks(force=True)
        target = os.path.join(self.dir, "t")
        os.makedirs(target)
        for db in (a, b):
            src = db.blocks()[0].dir
            shutil.copytree(src, os.path.join(target, os.path.basename(src)))
            db.close()
        db = TSDB(target)
        self.dbs.append(db)
        self.assertEqual(len(db.blocks()), 2)
        db.compact()
        self.assertEqual(len(db.blocks()), 1)
        (_, ts, vs), = self.dump(db)
        self.assertEqual(ts, sorted(set(range(0, HOUR, 60000)) | set(range(30000, HOUR, 60000))))
        self.assertEqual(vs, [float(t) for t in ts])

    def test_retention_deletes_old_blocks(self):
        """Blocks ending retention or more before the newest block's end are deleted from disk."""
        db = self.open(retention_ms=4 * HOUR, compaction_ranges_ms=())
        self.fill(db, 2, 0, 11 * HOUR)
        db.cut_blocks()
        self.assertEqual(len(db.blocks()), 4)
        gone = [b.dir for b in db.blocks()[:2]]
        db.compact()
        self.assertEqual([(b.meta["minTime"]) for b in db.blocks()], [4 * HOUR, 6 * HOUR])
        self.assertFalse(any(os.path.exists(d) for d in gone))
        self.assertEqual(self.dump(db, mint=0, maxt=4 * HOUR - 1), [])


class FaultTests(TSDBTestCase):
    def tearDown(self):
        faults.clear()
        super().tearDown()

    def test_block_write_failure_keeps_the_head_until_a_retry_succeeds(self):
        """When a block cannot be written (disk full) the head keeps its samples; the next cut writes the block."""
        db = self.open()
        self.fill(db, 3, 0, 4 * HOUR, step=10 * 60000)
        before = self.dump(db)
        faults.inject("block_write", errno.ENOSPC, under=self.dir)
        with self.assertRaises(OSError):
            db.cut_blocks()
        self.assertEqual(db.blocks(), [])
        self.assertEqual(self.dump(db), before)
        self.assertEqual([n for n in os.listdir(self.dir) if n.endswith(".tmp-for-creation")], [])
        faults.clear()
        self.assertEqual(len(db.cut_blocks()), 1)
        self.assertEqual(self.dump(db), before)
        db = self.reopen(db)
        self.assertEqual(self.dump(db), before)
