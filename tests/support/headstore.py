"""A Queryable on the real engine head, for the promqltest runner and PromQL tests.

Series are loaded into a fresh Head (no WAL, a chunk range wide enough that test data never
counts as too old), so conformance runs exercise the engine's append, chunking and select."""
import shutil
import tempfile
from array import array

from urdar.engine import outcomes as O
from urdar.engine.histogram import (
    COUNTER_RESET, GAUGE_TYPE, NOT_COUNTER_RESET, UNKNOWN_COUNTER_RESET)
from urdar.engine.head import Head
from urdar.engine.labels import decode_labels
from urdar.promql import histograms as H


class HeadStore:
    def __init__(self):
        self._pending = {}
        self._sts = {}
        self._hpending = {}
        self._hists = {}  # until the head stores histograms: key -> {t: FloatHistogram}
        self._hints = {}  # key -> [(t, FloatHistogram)] as read back from chunks
        self._pending_floats = {}  # key -> float sample times (chunk boundaries)
        self._dir = None
        self._head = None
        self.clear()

    def clear(self):
        self._pending = {}
        self._sts = {}
        self._hpending = {}
        self._hists = {}
        self._hints = {}
        self._pending_floats = {}
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
        """Queue [(t ms, value)]; a later value at the same time replaces an earlier one, as
        promqltest's load does. The queue goes into the head, in time order, at the next select.
        `start_ts` ({t: start timestamp}) gives samples start times, which the head does not
        store: select hands them out beside the samples (0 for a sample without)."""
        key = tuple(sorted(labels.items() if isinstance(labels, dict) else labels))
        self._pending.setdefault(key, {}).update(samples)
        if start_ts:
            self._sts.setdefault(key, {}).update(start_ts)

    def append_histograms(self, labels, samples):
        """Queue [(t ms, Histogram | FloatHistogram)] like append's floats."""
        key = tuple(sorted(labels.items() if isinstance(labels, dict) else labels))
        self._hpending.setdefault(key, {}).update(samples)
        # A float and a histogram at one time: the later load wins, as in promqltest.
        fl = self._pending.get(key)
        if fl:
            for t, _ in samples:
                fl.pop(t, None)

    def _flush(self):
        for key, points in self._pending.items():
            self._pending_floats.setdefault(key, set()).update(points)
            self._hints.pop(key, None)
            out = self._head.append(key, sorted(points.items()))
            bad = [o for o in out if o not in O.STORED]
            if bad:
                raise ValueError("head refused %d samples of %r: %s" % (
                    len(bad), key, sorted({O.NAMES[o] for o in bad})))
        self._pending = {}
        hpending, self._hpending = self._hpending, {}
        append = getattr(self._head, "append_histograms", None)
        for key, points in hpending.items():
            if append is not None:
                out = append(key, sorted(points.items()))
                bad = [o for o in out if o not in O.STORED]
                if bad:
                    raise ValueError("head refused %d histograms of %r: %s" % (
                        len(bad), key, sorted({O.NAMES[o] for o in bad})))
            else:
                # until the head stores histograms
                self._hists.setdefault(key, {}).update(points)
                self._hints.pop(key, None)

    def select(self, matchers, mint, maxt):
        if self._pending or self._hpending:
            self._flush()
        out = self._head.select(matchers, mint, maxt)
        if not self._sts and not self._hists:
            return out
        res = []
        seen = set()
        for item in out:
            key, ts, vs = item[0], item[1], item[2]
            lk = tuple(decode_labels(key)) if isinstance(key, bytes) else tuple(key)
            seen.add(lk)
            sts = self._sts.get(lk)
            sts_arr = None if sts is None else array("q", [sts.get(t, 0) for t in ts])
            h = self._hist_part(lk, mint, maxt)
            if h is not None:
                res.append((key, ts, vs, sts_arr) + h)
            elif sts_arr is None:
                res.append((key, ts, vs))
            else:
                res.append((key, ts, vs, sts_arr))
        # until the head stores histograms: series with histogram samples only
        for lk in sorted(self._hists):
            if lk in seen or not all(m.matches(dict(lk).get(m.name, "")) for m in matchers):
                continue
            h = self._hist_part(lk, mint, maxt)
            if h is not None:
                res.append((lk, array("q"), array("d"), None) + h)
        return res

    def _hist_part(self, lk, mint, maxt):
        """(hts, hvs) of a series' kept histograms in [mint, maxt], or None."""
        pts = self._hints.get(lk)
        if pts is None:
            pts = self._hints[lk] = self._with_chunk_hints(lk)
        sel = [(t, h) for t, h in pts if mint <= t <= maxt]
        if not sel:
            return None
        return (array("q", [t for t, _ in sel]), [h for _, h in sel])

    def _with_chunk_hints(self, lk):
        """A series' histograms with the counter reset hints a read from head chunks gives
        them (as Prometheus' head does): a sample that starts a chunk (the first one, one after
        a detected reset or after floats) reads back as unknown, the others as not_reset;
        gauge histograms stay gauges."""
        floats = sorted(self._pending_floats.get(lk, ()))
        out = []
        prev = None
        prev_t = None
        for t, h in sorted(self._hists.get(lk, {}).items()):
            h = H.copy(h.to_float())
            if prev_t is not None and any(prev_t < ft < t for ft in floats):
                prev = None
            given = h.counter_reset_hint
            if given == GAUGE_TYPE:
                pass
            elif prev is None or prev.counter_reset_hint == GAUGE_TYPE:
                h.counter_reset_hint = UNKNOWN_COUNTER_RESET
            else:
                h.counter_reset_hint = UNKNOWN_COUNTER_RESET
                reset = given == COUNTER_RESET or H.detect_reset(h, prev)
                # A detected reset cuts a chunk whose first sample reads back as unknown
                # (prometheus/prometheus#15346: never "reset").
                h.counter_reset_hint = UNKNOWN_COUNTER_RESET if reset else NOT_COUNTER_RESET
            out.append((t, h))
            prev, prev_t = h, t
        return out
