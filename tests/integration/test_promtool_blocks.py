"""Blocks cross-checked with Prometheus' promtool: urdar's blocks read by promtool, and
promtool's blocks read by urdar, sample for sample (values compared as float bits)."""
import math
import os
import random
import re
import shutil
import struct
import subprocess
import tempfile
import unittest
from array import array

from urdar.engine.block import BlockReader, is_ulid, write_block
from urdar.engine.labels import decode_labels, encode_labels
from urdar.engine.xorchunk import encode_xor

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
HAVE_PROMTOOL = os.access(PROMTOOL, os.X_OK)
STALE_BITS = 0x7FF0000000000002
STEP_MS = 15_000
RANGE_MS = 2 * 3600 * 1000
SAMPLES_PER_CHUNK = 120


def f64(b):
    return struct.unpack("<d", struct.pack("<Q", b))[0]


def bits(v):
    return struct.unpack("<Q", struct.pack("<d", v))[0]


def comparable(v):
    """Float bits, except every NaN compares equal (promtool prints all NaNs as "NaN")."""
    return "NaN" if math.isnan(v) else bits(v)


_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_dump(text):
    """{(labels tuple, t): value} from `promtool tsdb dump` lines `{labels} value timestamp`."""
    out = {}
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        close = line.rindex("}")
        labels = tuple(sorted((n, bytes(v, "utf-8").decode("unicode_escape"))
                              for n, v in _LABEL.findall(line[1:close])))
        value, t = line[close + 1:].split()
        out[(labels, int(t))] = float(value)
    return out


def realistic_series(rng, n_series, start, end):
    """Counters and gauges scraped every 15 s with jitter, some NaN and stale markers,
    chunks of <= 120 samples never crossing a 2h-aligned boundary."""
    series = {}
    for i in range(n_series):
        kind = "counter" if i % 2 == 0 else "gauge"
        labels = [("__name__", "http_requests_total" if kind == "counter" else "node_temp_celsius"),
                  ("instance", "host-%02d:9100" % (i // 10)), ("job", "node" if i % 3 else "api"),
                  ("path", "/api/v1/q %d" % (i % 10))]
        if i % 7 == 0:
            labels.append(("zone", "eu-west-%d" % (i % 3)))
        ts, vals = [], []
        t = start + rng.randrange(STEP_MS)
        v = rng.uniform(0, 1000) if kind == "counter" else rng.uniform(-20, 90)
        stale_from = end - rng.randrange(STEP_MS * 40) if i % 11 == 0 else None
        while t < end:
            if stale_from is not None and t >= stale_from:
                ts.append(t)
                vals.append(f64(STALE_BITS))
                break
            if kind == "counter":
                v += rng.choice([0, 0, 1, 2, 5, rng.uniform(0, 50)])
                if rng.random() < 0.002:
                    v = 0.0                        # counter reset
            else:
                v = round(v + rng.gauss(0, 0.5), rng.choice([1, 2, 17]))
            ts.append(t)
            vals.append(math.nan if kind == "gauge" and rng.random() < 0.003 else v)
            t += STEP_MS + rng.randint(-40, 40)
        series[encode_labels(labels)] = (ts, vals)
    return series


def cut_chunks(ts, vals):
    """Chunks of <= 120 samples, cut at every 2h-aligned boundary."""
    chunks, i = [], 0
    while i < len(ts):
        boundary = (ts[i] // RANGE_MS) * RANGE_MS + RANGE_MS
        j = i
        while j < len(ts) and j - i < SAMPLES_PER_CHUNK and ts[j] < boundary:
            j += 1
        t = array("q", ts[i:j])
        chunks.append((t[0], t[-1], 1, encode_xor(t, array("d", vals[i:j]))))
        i = j
    return chunks


def run(*args):
    p = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise AssertionError("promtool %s failed (%d): %s" % (" ".join(args), p.returncode, p.stderr[-2000:]))
    return p.stdout


@unittest.skipUnless(HAVE_PROMTOOL, "promtool is not installed")
class PromtoolReadsUrdarBlocksTests(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="urdar-promtool-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        os.mkdir(os.path.join(self.dir, "wal"))         # promtool tsdb dump opens the dir as a DB

    def test_analyze_and_dump_match(self):
        """promtool analyzes a realistic urdar block and dumps exactly the samples urdar wrote."""
        rng = random.Random(42)
        start = 1_700_000_000_000 // RANGE_MS * RANGE_MS
        data = realistic_series(rng, 300, start, start + RANGE_MS)
        ulid = write_block(self.dir, start, start + RANGE_MS,
                           [(k, cut_chunks(ts, vals)) for k, (ts, vals) in data.items()])
        out = run("tsdb", "analyze", self.dir, ulid)
        self.assertIn("Block ID: " + ulid, out)
        self.assertIn("Series: 300", out)
        self.assertIn("Label names: 5", out)
        dumped = parse_dump(run("tsdb", "dump", self.dir))
        expect = {}
        for key, (ts, vals) in data.items():
            labels = tuple(sorted(decode_labels(key)))
            for t, v in zip(ts, vals):
                expect[(labels, t)] = v
        self.assertEqual(len(dumped), len(expect))
        self.assertEqual({k: comparable(v) for k, v in dumped.items()},
                         {k: comparable(v) for k, v in expect.items()})

    def test_dump_time_window(self):
        """promtool's --min-time/--max-time window over an urdar block returns the same samples as urdar's."""
        rng = random.Random(7)
        start = 1_700_000_000_000 // RANGE_MS * RANGE_MS
        data = realistic_series(rng, 40, start, start + RANGE_MS)
        ulid = write_block(self.dir, start, start + RANGE_MS,
                           [(k, cut_chunks(ts, vals)) for k, (ts, vals) in data.items()])
        lo, hi = start + 1_000_000, start + 1_900_000
        dumped = parse_dump(run("tsdb", "dump", "--min-time=%d" % lo, "--max-time=%d" % hi, self.dir))
        with BlockReader(os.path.join(self.dir, ulid)) as b:
            mine = {}
            for key, ts, vals in b.iter_series(lo, hi):
                labels = tuple(sorted(decode_labels(key)))
                for t, v in zip(ts, vals):
                    mine[(labels, t)] = comparable(v)
        self.assertGreater(len(mine), 40 * 50)
        self.assertEqual({k: comparable(v) for k, v in dumped.items()}, mine)


@unittest.skipUnless(HAVE_PROMTOOL, "promtool is not installed")
class UrdarReadsPromtoolBlocksTests(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="urdar-promtool-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_create_blocks_from_openmetrics(self):
        """Blocks that promtool builds from OpenMetrics text read back in urdar with the same samples."""
        rng = random.Random(3)
        start = 1_700_000_000_000 // RANGE_MS * RANGE_MS
        # 3h of data: promtool cuts it into two 2h-aligned blocks.
        data = realistic_series(rng, 60, start, start + 3 * 3600 * 1000)
        by_name = {}
        for key, (ts, vals) in data.items():
            labels = dict(decode_labels(key))
            by_name.setdefault(labels["__name__"], []).append((labels, ts, vals))
        lines = []
        for name, entries in sorted(by_name.items()):
            kind = "counter" if name.endswith("_total") else "gauge"
            family = name[:-len("_total")] if kind == "counter" else name
            lines.append("# TYPE %s %s" % (family, kind))
            for labels, ts, vals in entries:
                lbl = ",".join('%s="%s"' % (n, v) for n, v in sorted(labels.items()) if n != "__name__")
                for t, v in zip(ts, vals):
                    if bits(v) == STALE_BITS:
                        continue                     # text formats cannot carry stale markers
                    lines.append("%s{%s} %s %d.%03d" % (name, lbl, "NaN" if math.isnan(v) else repr(v),
                                                       t // 1000, t % 1000))
        lines.append("# EOF")
        src = os.path.join(self.dir, "input.om")
        with open(src, "w") as f:
            f.write("\n".join(lines) + "\n")
        out = os.path.join(self.dir, "out")
        os.mkdir(out)
        run("tsdb", "create-blocks-from", "openmetrics", src, out)
        ulids = sorted(d for d in os.listdir(out) if is_ulid(d))
        self.assertGreaterEqual(len(ulids), 2)
        got = {}
        for u in ulids:
            with BlockReader(os.path.join(out, u), verify=True) as b:
                self.assertEqual(b.meta["ulid"], u)
                self.assertGreater(len(b.index.label_values("instance")), 1)
                for key, ts, vals in b.iter_series():
                    for t, v in zip(ts, vals):
                        self.assertTrue(b.mint <= t < b.maxt)
                        got[(key, t)] = comparable(v)
        expect = {}
        for key, (ts, vals) in data.items():
            for t, v in zip(ts, vals):
                if bits(v) != STALE_BITS:
                    expect[(key, t)] = comparable(v)
        self.assertEqual(len(got), len(expect))
        self.assertEqual(got, expect)
