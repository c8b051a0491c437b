"""A Queryable on the real engine head, for the promqltest runner and PromQL tests.

Series are loaded into a fresh Head (no WAL, a chunk range wide enough that test data never
counts as too old), so conformance runs exercise the engine's append, chunking and select."""
import shutil
import tempfile
from array import array

from urdar.engine import outcomes as O
from urdar.engine.head import Head
from urdar.engine.labels import decode_labels


class HeadStore:
    def __init__(self):
        self._pending = {}  # key -> {t: float | Histogram | FloatHistogram}
        self._sts = {}
        self._dir = None
        self._head = None
        self.clear()

    def clear(self):
        self._pending = {}
        self._sts = {}
        self.close()
        self._dir = tempfile.mkdtemp(prefix="urdar-promql-")
        self._head = Head(self._dir, chunk_range=1 << 40, wal_enabled=False)

    def close(self):
        if self._head is not None:
            self._head.close()
            self._head = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def append(self, labels, samples, start_ts=None):
        """Queue [(t ms, value)]; a later value at the same time replaces an earlier one (a
        float or a histogram), as promqltest's load does. The queue goes into the head, in time
        order, at the next select. `start_ts` ({t: start timestamp}) gives samples start times,
        which the head does not store: select hands them out beside the samples (0 for a sample
        without)."""
        key = tuple(sorted(labels.items() if isinstance(labels, dict) else labels))
        self._pending.setdefault(key, {}).update(samples)
        if start_ts:
            self._sts.setdefault(key, {}).update(start_ts)

    def append_histograms(self, labels, samples, start_ts=None):
        """Queue [(t ms, Histogram | FloatHistogram)] like append's floats (start times too)."""
        self.append(labels, samples, start_ts)

    def _flush(self):
        # Floats and histograms of one series go in as one time-ordered stream: a run of each
        # kind at a time, so the head sees them in the order promqltest appends them.
        pending, self._pending = self._pending, {}
        for key, points in pending.items():
            run, hist = [], None
            for t, v in sorted(points.items()):
                is_hist = not isinstance(v, (int, float))
                if run and is_hist != hist:
                    self._append_run(key, run, hist)
                    run = []
                run.append((t, v))
                hist = is_hist
            if run:
                self._append_run(key, run, hist)

    def _append_run(self, key, run, hist):
        out = (self._head.append_histograms if hist else self._head.append)(key, run)
        bad = [o for o in out if o not in O.STORED]
        if bad:
            raise ValueError("head refused %d %s of %r: %s" % (
                len(bad), "histograms" if hist else "samples", key,
                sorted({O.NAMES[o] for o in bad})))

    def select(self, matchers, mint, maxt):
        if self._pending:
            self._flush()
        out = self._head.select(matchers, mint, maxt)
        if not self._sts:
            return out
        res = []
        for item in out:
            key, ts = item[0], item[1]
            lk = tuple(decode_labels(key)) if isinstance(key, bytes) else tuple(key)
            sts = self._sts.get(lk)
            if sts is None:
                res.append(item)
                continue
            sts_arr = array("q", [sts.get(t, 0) for t in ts])
            if len(item) > 5 and item[4] is not None:
                # a series with histogram samples: their start times go 7th (hsts)
                hsts = array("q", [sts.get(t, 0) for t in item[4]])
                res.append((item[0], ts, item[2], sts_arr, item[4], item[5], hsts))
            else:
                res.append((item[0], ts, item[2], sts_arr) + tuple(item[4:]))
        return res
