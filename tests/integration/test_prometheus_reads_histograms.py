"""Native histogram chunks urdar writes (blocks and WAL), read by a real Prometheus.

Debian's Prometheus 2.42 (`--enable-feature=native-histograms`) opens a TSDB directory urdar
wrote (blocks cut from the head with histogram chunks of encodings 2 and 3, plus the WAL with
histogram records) and answers a range-vector query: every histogram sample must come back
with urdar's count, sum and bucket counts. (`promtool tsdb dump` of 2.42 prints float samples
only — its dump loop stops at the first non-float sample — so the server is the reader here;
promtool's `tsdb analyze` and `list` are checked on the blocks as well.)"""
import math
import os
import shutil
import subprocess
import tempfile
import unittest

from tests.support.services import PROMETHEUS, Prometheus
from urdar.engine.histchunk import _bucket_indexes
from urdar.engine.histogram import FloatHistogram, GAUGE_TYPE, Histogram
from urdar.engine.tsdb import TSDB

HOUR = 3600 * 1000
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def int_hist(k):
    """A counter histogram whose buckets appear over time (layout changes: chunk re-encodes)
    and which resets at k = 300."""
    k = k % 300 + 1
    pos = {i: k * (i + 2) for i in range(-2, 2 + min(k // 40, 6))}
    idx = sorted(pos)
    from urdar.engine.histchunk import _merged_spans
    vals = [pos[i] for i in idx]
    deltas = [v - p for v, p in zip(vals, [0] + vals[:-1])]
    neg = [k, 2 * k]
    return Histogram(schema=2, zero_threshold=2.0 ** -128, zero_count=k,
                     count=sum(vals) + sum(neg) + k, sum=0.75 * k,
                     positive_spans=_merged_spans(idx), positive_buckets=deltas,
                     negative_spans=[(0, 2)], negative_buckets=[neg[0], neg[1] - neg[0]])


def float_hist(k):
    return FloatHistogram(schema=0, zero_threshold=0.001, zero_count=0.5, count=3.5 + k,
                          sum=k * 1.25, positive_spans=[(1, 2)], positive_buckets=[1.0, 2.0 + k])


def gauge_hist(k):
    return Histogram(schema=-1, count=2 + k % 5, sum=float(k % 7), counter_reset_hint=GAUGE_TYPE,
                     positive_spans=[(0, 2)], positive_buckets=[1, k % 5])


def expected_buckets(h):
    """(lower, upper, count) of non-empty buckets as Prometheus' JSON lists them (negative
    buckets from the most negative, then the zero bucket, then positive)."""
    f = h.to_float()
    base = 2.0 ** (2.0 ** -f.schema)
    out = []
    neg = list(zip(_bucket_indexes(f.negative_spans), f.negative_buckets))
    for i, c in reversed(neg):
        if c:
            out.append((-base ** i, -base ** (i - 1), c))
    if f.zero_count:
        out.append((-f.zero_threshold, f.zero_threshold, f.zero_count))
    for i, c in zip(_bucket_indexes(f.positive_spans), f.positive_buckets):
        if c:
            out.append((base ** (i - 1), base ** i, c))
    return out


def close(a, b):
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=0)


@unittest.skipUnless(os.access(PROMETHEUS, os.X_OK), "prometheus is not installed")
class PrometheusReadsUrdarHistogramsTest(unittest.TestCase):
    def setUp(self):
        self.work = tempfile.mkdtemp(prefix="urdar-nh-prom-")
        self.addCleanup(shutil.rmtree, self.work, True)

    def test_blocks_and_wal_with_histograms(self):
        data_dir = os.path.join(self.work, "prometheus-data")
        start = 1_700_000_000_000 // (2 * HOUR) * (2 * HOUR)
        step = 15000
        n = 2 * 3600 * 1000 * 3 // step         # three block ranges
        series = {
            (("__name__", "nh_int"), ("job", "a")): int_hist,
            (("__name__", "nh_float"), ("job", "a")): float_hist,
            (("__name__", "nh_gauge"), ("job", "a")): gauge_hist,
        }
        want = {}
        db = TSDB(data_dir, compaction_ranges_ms=())
        for k in range(n):
            t = start + k * step
            for labels, fn in series.items():
                h = fn(k)
                self.assertEqual(db.append_histograms(list(labels), [(t, h)]), [0])
                want.setdefault(dict(labels)["__name__"], []).append((t, h))
        made = db.cut_blocks()
        self.assertEqual(len(made), 2)          # the last range stays in the head and WAL
        db.close()
        listing = subprocess.run([PROMTOOL, "tsdb", "list", data_dir], capture_output=True,
                                 text=True, timeout=120)
        self.assertEqual(listing.returncode, 0, listing.stderr)
        for ulid in made:
            self.assertIn(ulid, listing.stdout)
            # --extended walks every chunk of the block (its sample-count header included)
            analyze = subprocess.run([PROMTOOL, "tsdb", "analyze", "--extended", data_dir, ulid],
                                     capture_output=True, text=True, timeout=120)
            self.assertEqual(analyze.returncode, 0, analyze.stderr)
            self.assertIn("Series: 3", analyze.stdout)
            self.assertIn("Compaction analysis", analyze.stdout)
        prom = Prometheus(self.work, "global: {}\n", "--enable-feature=native-histograms",
                          "--storage.tsdb.retention.time=100y")
        self.addCleanup(prom.stop)
        prom.wait_ready()
        end = (start + (n - 1) * step) / 1000.0
        for name, samples in want.items():
            data = prom.query("%s[%ds]" % (name, n * step // 1000 + 60), t=end)
            self.assertEqual(len(data["result"]), 1, (name, data, prom.output()[-3000:]))
            got = data["result"][0].get("histograms", [])
            self.assertEqual([round(t * 1000) for t, _ in got], [t for t, _ in samples], name)
            for (t, h), (_, g) in zip(samples, got):
                f = h.to_float()
                self.assertTrue(close(float(g["count"]), f.count), (name, t, g, f))
                self.assertTrue(close(float(g["sum"]), f.sum), (name, t, g, f))
                buckets = [(float(lo), float(hi), float(c)) for _, lo, hi, c in g["buckets"]]
                exp = expected_buckets(h)
                self.assertEqual(len(buckets), len(exp), (name, t, buckets, exp))
                for (lo, hi, c), (elo, ehi, ec) in zip(buckets, exp):
                    self.assertTrue(close(lo, elo) and close(hi, ehi) and c == ec,
                                    (name, t, buckets, exp))


@unittest.skipUnless(os.access(PROMETHEUS, os.X_OK), "prometheus is not installed")
class UrdarReadsPrometheusHistogramsTest(unittest.TestCase):
    """The other way round: Prometheus 2.42 receives native histograms over remote write and
    writes them to its WAL (records 7 and 8) and chunks_head; urdar opens that directory and
    gives every histogram back."""

    def setUp(self):
        self.work = tempfile.mkdtemp(prefix="urdar-nh-prom2-")
        self.addCleanup(shutil.rmtree, self.work, True)

    def test_prometheus_wal_replayed_by_urdar(self):
        import time
        import cramjam
        from tests.support.services import http
        from urdar.engine.labels import labels_dict
        from urdar.engine.matchers import Matcher
        from urdar.engine.prompbhist import encode_histogram
        from urdar.engine.remotewrite import encode_write_request
        prom = Prometheus(self.work, "global: {}\n", "--enable-feature=native-histograms",
                          "--web.enable-remote-write-receiver")
        self.addCleanup(lambda: prom.alive() and prom.stop())
        prom.wait_ready()
        now = int(time.time() * 1000) - 10 * 60 * 1000
        want = {"nh_int": [(now + 1000 * k, int_hist(k)) for k in range(400)],
                "nh_float": [(now + 1000 * k, float_hist(k)) for k in range(400)],
                "nh_gauge": [(now + 1000 * k, gauge_hist(k)) for k in range(400)]}
        for a in range(0, 400, 50):
            rows = [([("__name__", name), ("job", "p")], [], (),
                     [encode_histogram(t, h) for t, h in samples[a:a + 50]])
                    for name, samples in want.items()]
            body = bytes(cramjam.snappy.compress_raw(encode_write_request(rows)))
            status, text = http("POST", prom.base + "/api/v1/write", body,
                                {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
                                 "X-Prometheus-Remote-Write-Version": "0.1.0"})
            self.assertEqual(status, 204, text)
        # Prometheus itself has them (the receiver took histograms)
        data = prom.query("nh_int[20m]", t=(now + 400 * 1000) / 1000.0)
        self.assertEqual(len(data["result"][0]["histograms"]), 400)
        prom.stop()
        db = TSDB(os.path.join(self.work, "prometheus-data"), compaction_ranges_ms=())
        try:
            got = {labels_dict(item[0])["__name__"]: item
                   for item in db.select([Matcher("=~", "__name__", "nh_.*")])}
        finally:
            db.close()
        for name, samples in want.items():
            self.assertEqual(len(got[name]), 6, name)
            self.assertEqual(list(got[name][4]), [t for t, _ in samples], name)
            for (t, h), g in zip(samples, got[name][5]):
                f = h.to_float()
                self.assertEqual((g.count, g.sum, g.zero_count), (f.count, f.sum, f.zero_count), (name, t))
                self.assertEqual(expected_buckets(g), expected_buckets(f), (name, t))
