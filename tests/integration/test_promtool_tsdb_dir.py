"""A whole urdar TSDB directory (blocks cut from the head, WAL, chunks_head) read by promtool.

promtool opens the directory as Prometheus would: blocks, then the head from chunks_head/
and the WAL. Every sample urdar accepted must come out of `promtool tsdb dump`."""
import random
import shutil
import tempfile
import unittest
from array import array

from tests.integration.test_promtool_blocks import (HAVE_PROMTOOL, comparable, parse_dump,
                                                    realistic_series, run)
from urdar.engine.labels import decode_labels, hash_key
from urdar.engine.tsdb import TSDB

HOUR = 3600 * 1000


@unittest.skipUnless(HAVE_PROMTOOL, "promtool is not installed")
class PromtoolReadsUrdarTSDBTests(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="urdar-promtool-db-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_blocks_head_and_wal_dump_identically(self):
        """promtool dumps exactly the samples urdar accepted, from its blocks, chunks_head and WAL."""
        rng = random.Random(11)
        start = 1_700_000_000_000 // (2 * HOUR) * (2 * HOUR)
        data = realistic_series(rng, 120, start, start + 7 * HOUR)
        keys = list(data)
        blob = b"".join(keys)
        koff = array("Q", [0])
        for k in keys:
            koff.append(koff[-1] + len(k))
        hashes = array("Q", [hash_key(k) for k in keys])
        db = TSDB(self.dir, compaction_ranges_ms=())
        # feed scrape by scrape: the k-th sample of every series that has one
        pos = [0] * len(keys)
        accepted = {}
        while True:
            soff = array("Q", [0])
            ts = array("q")
            vs = array("d")
            rows = []
            for i, k in enumerate(keys):
                t_list, v_list = data[k]
                if pos[i] < len(t_list):
                    ts.append(t_list[pos[i]])
                    vs.append(v_list[pos[i]])
                    rows.append((k, t_list[pos[i]], v_list[pos[i]]))
                    pos[i] += 1
                soff.append(len(ts))
            if not rows:
                break
            out = bytearray(len(ts))
            db.append_batch(blob, koff, hashes, soff, ts, vs, out)
            for (k, t, v), o in zip(rows, out):
                self.assertEqual(o, 0)
                accepted[(tuple(sorted(decode_labels(k))), t)] = comparable(v)
        made = db.cut_blocks()
        self.assertEqual(len(made), 2)
        db.close()
        for ulid in made:
            self.assertIn("Block ID: " + ulid, run("tsdb", "analyze", self.dir, ulid))
        dumped = parse_dump(run("tsdb", "dump", self.dir))
        self.assertEqual(len(dumped), len(accepted))
        self.assertEqual({k: comparable(v) for k, v in dumped.items()}, accepted)
