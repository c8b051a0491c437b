"""PromQL functions over native histograms (Prometheus' functions.go, the histogram halves).

The float paths stay in promql/calls.py and the kernels; these run only where a vector or range
carries histogram samples (Series.hists / MatrixValue.hists), in Python over the steps. The
arithmetic is in promql/histograms.py.
"""

from __future__ import annotations

import math
import struct
from array import array
from bisect import bisect_right

from urdar.engine.histogram import GAUGE_TYPE
from urdar.promql import ast as A
from urdar.promql import histograms as H
from urdar.promql.value import NAME, Series, get_label, zeros


def instant_with_hists(ts, vs, hts, hvs, refs, lookback):
    """An instant selector's values for a series with histogram samples: per reference time
    the latest float or histogram sample within the lookback (a stale marker hides it)."""
    n = len(refs)
    vals = zeros(n)
    mask = bytearray(n)
    sts = array("q", bytes(8 * n))
    hists = [None] * n
    count = 0
    for k, t in enumerate(refs):
        fi = bisect_right(ts, t) - 1
        hi = bisect_right(hts, t) - 1
        ft = ts[fi] if fi >= 0 else None
        ht = hts[hi] if hi >= 0 else None
        if ht is not None and (ft is None or ht > ft):
            if ht > t - lookback:
                h = hvs[hi]
                if not _is_stale(h.sum):
                    hists[k] = h
                    mask[k] = 1
                    sts[k] = ht
                    count += 1
        elif ft is not None and ft > t - lookback:
            v = vs[fi]
            if not _is_stale(v):
                vals[k] = v
                mask[k] = 1
                sts[k] = ft
                count += 1
    return vals, sts, mask, hists, count


_STALE_BITS = 0x7FF0000000000002


def _is_stale(v):
    return v != v and struct.unpack("<Q", struct.pack("<d", v))[0] == _STALE_BITS


def drop_stale_hists(ts, vals, hp):
    """A range's histogram samples without stale ones; None when none remain."""
    hts, hvs = hp
    if not any(_is_stale(h.sum) for h in hvs):
        return hp
    keep = [i for i, h in enumerate(hvs) if not _is_stale(h.sum)]
    if not keep:
        return None
    return array("q", [hts[i] for i in keep]), [hvs[i] for i in keep]


def drop_stale_hists_st(hp, hst):
    """drop_stale_hists for histogram samples with start timestamps: (hp, hst) or (None,
    None) when none remain."""
    hts, hvs = hp
    if not any(_is_stale(h.sum) for h in hvs):
        return hp, hst
    keep = [i for i, h in enumerate(hvs) if not _is_stale(h.sum)]
    if not keep:
        return None, None
    return ((array("q", [hts[i] for i in keep]), [hvs[i] for i in keep]),
            array("q", [hst[i] for i in keep]))


def st_reset(prev_st, prev_t, cur_st, cur_t):
    """Whether cur's start timestamp says the counter restarted after prev (as the float
    kernel's st_reset: OTel's delta and unknown-start cases included)."""
    if cur_st == 0 or cur_st >= cur_t or cur_st < prev_t:
        return False
    if cur_st > prev_t:
        return True
    # ST == previous T: a delta sample, unless prev's own start was unknown or invalid
    if prev_st > prev_t:
        return False
    return prev_st != 0 and prev_st != prev_t


def stats_only(hvs):
    """A series' histograms as Prometheus' HistogramStatsIterator hands them out: schema, count
    and sum only, an unknown reset hint resolved against the sample before."""
    out = []
    last = None
    for h in hvs:
        if _is_stale(h.sum):
            out.append(H.FloatHistogram(schema=h.schema, count=h.count, sum=h.sum,
                                        counter_reset_hint=h.counter_reset_hint))
            continue
        hint = h.counter_reset_hint
        if hint == 0 and last is not None:
            hint = 1 if H.detect_reset(h, last) else 2
        out.append(H.FloatHistogram(schema=h.schema, count=h.count, sum=h.sum,
                                    counter_reset_hint=hint))
        last = h
    return out


def metric_name(labels) -> str:
    return get_label(labels, NAME)


def _quoted_name(labels):
    return A.go_quote(metric_name(labels))


# -- histogram_count / sum / avg / stddev / stdvar ----------------------------------------------

def _simple(f):
    def call(ev, node, times):
        v = ev.eval(node.args[0], times)
        n = len(times)
        out = []
        for s in ev.each(v):
            if s.hists is None:
                continue
            vals = zeros(n)
            mask = bytearray(n)
            for k, h in enumerate(s.hists):
                if h is not None and s.mask[k]:
                    vals[k] = f(h)
                    mask[k] = 1
            if any(mask):
                out.append(Series(s.labels, vals, mask, True))
        return out
    return call


def _avg(h):
    return h.sum / h.count if h.count != 0 else (math.nan if h.sum == 0 or h.sum != h.sum
                                                  else math.copysign(math.inf, h.sum))


def _stddev(h):
    v = H.stdvar(h)
    return math.sqrt(v) if v >= 0 else math.nan


HISTOGRAM_ONLY = {
    "histogram_count": _simple(lambda h: h.count),
    "histogram_sum": _simple(lambda h: h.sum),
    "histogram_avg": _simple(_avg),
    "histogram_stdvar": _simple(H.stdvar),
    "histogram_stddev": _simple(_stddev),
}


def native_quantiles(ev, v, qs, lows, highs, vnode, fraction):
    """histogram_quantile / histogram_fraction over the native histogram steps of v."""
    n = len(qs) if qs is not None else len(lows)
    out = []
    for s in v:
        if s.hists is None:
            continue
        vals = zeros(n)
        mask = bytearray(n)
        for k, h in enumerate(s.hists):
            if h is None or not s.mask[k]:
                continue
            if fraction:
                r, info = H.fraction(lows[k], highs[k], h)
                if info:
                    ev.info("input to histogram_fraction has NaN observations, which are "
                            "excluded from all fractions for metric name %s"
                            % _quoted_name(s.labels), vnode)
            else:
                r, info = H.quantile(qs[k], h)
                if info == "nan_result":
                    ev.info("input to histogram_quantile has NaN observations, result is NaN "
                            "for metric name %s" % _quoted_name(s.labels), vnode)
                elif info == "nan_skew":
                    ev.info("input to histogram_quantile has NaN observations, result is "
                            "skewed higher for metric name %s" % _quoted_name(s.labels), vnode)
            vals[k] = r
            mask[k] = 1
        if any(mask):
            out.append(Series(s.labels, vals, mask, True))
    return out


# -- range functions ----------------------------------------------------------------------------

HIST_RANGE = frozenset(("rate", "increase", "delta", "irate", "idelta", "sum_over_time",
                        "avg_over_time", "count_over_time", "last_over_time", "first_over_time",
                        "present_over_time", "resets", "changes", "ts_of_last_over_time",
                        "ts_of_first_over_time"))
# The other range functions take float samples only: a window with floats and histograms
# gets an info, one with histograms only no value.


def range_with_hists(ev, node, times, m, float_out, margs):
    """Merge a range function's float results (float_out, computed on the float samples) with
    its results at the steps whose windows hold histogram samples."""
    name = node.func.name
    n = len(times)
    by_labels = {s.labels: s for s in float_out}
    out = []
    done = set()
    for si, (labels, ts, vs, drop) in enumerate(m.series):
        hp = m.hists[si]
        fs = by_labels.get(labels)
        if hp is None:
            if fs is not None and labels not in done:
                out.append(fs)
                done.add(labels)
            continue
        done.add(labels)
        hts, hvs = hp
        vals = array("d", fs.vals) if fs is not None else zeros(n)
        mask = bytearray(fs.mask) if fs is not None else bytearray(n)
        hists = [None] * n
        vsel = getattr(m.node, "vector_selector", None)
        extended = vsel is not None and (vsel.anchored or vsel.smoothed) and \
            name in ("rate", "increase", "delta")
        anchored_rc = vsel is not None and vsel.anchored and name in ("resets", "changes")
        hst = m.hsts[si] if m.hsts is not None and name in ST_FUNCS and \
            not (vsel is not None and (vsel.anchored or vsel.smoothed)) else None
        for k in range(n):
            e = m.ends[k]
            lo = e - m.range_ms
            if anchored_rc:
                # The last sample at or before the range start (float or histogram) anchors
                # the window (Prometheus' pickFirstSampleIndices).
                xlo = lo - ev.lookback
                h0, h1 = bisect_right(hts, xlo), bisect_right(hts, e)
                if h0 == h1:
                    continue
                f0, f1 = bisect_right(ts, xlo), bisect_right(ts, e)
                fin = [(t, v) for t, v in zip(ts[f0:f1], vs[f0:f1]) if t > lo]
                hin = [(t, h) for t, h in zip(hts[h0:h1], hvs[h0:h1]) if t > lo]
                if not fin and not hin:
                    mask[k] = 0
                    continue
                before = [(t, v) for t, v in zip(ts[f0:f1], vs[f0:f1]) if t <= lo] + \
                    [(t, h) for t, h in zip(hts[h0:h1], hvs[h0:h1]) if t <= lo]
                pts = ([max(before, key=lambda p: p[0])] if before else []) + fin + hin
                wh = [p for p in pts if isinstance(p[1], H.FloatHistogram)]
                wf = [p for p in pts if not isinstance(p[1], H.FloatHistogram)]
                vals[k] = _window(ev, name, wh, wf, lo, e, m.range_ms, labels, margs[0])
                mask[k] = 1
                continue
            if extended:
                # anchored/smoothed: the window reaches a lookback back (smoothed: and ahead)
                xlo, xhi = lo - ev.lookback, e + (ev.lookback if vsel.smoothed else 0)
                h0, h1 = bisect_right(hts, xlo), bisect_right(hts, xhi)
                if h0 == h1:
                    continue
                f0, f1 = bisect_right(ts, xlo), bisect_right(ts, xhi)
                res = None
                if f1 > f0:
                    ev.warn("encountered a mix of histograms and floats for metric name %s"
                            % _quoted_name(labels), margs[0])
                else:
                    res = _extended_rate(ev, list(zip(hts[h0:h1], hvs[h0:h1])), lo, e,
                                         m.range_ms, vsel.smoothed, name != "delta",
                                         name == "rate", labels, margs[0])
                if res is None:
                    mask[k] = 0
                else:
                    hists[k] = res
                    vals[k] = 0.0
                    mask[k] = 1
                continue
            h0, h1 = bisect_right(hts, lo), bisect_right(hts, e)
            if h0 == h1:
                continue  # floats only (or nothing): the float result stands
            f0, f1 = bisect_right(ts, lo), bisect_right(ts, e)
            if name not in HIST_RANGE:
                if f1 > f0:
                    ev.info("ignored histograms in a range containing both floats and "
                            "histograms for metric name %s" % _quoted_name(labels), margs[0])
                continue
            wh = list(zip(hts[h0:h1], hvs[h0:h1]))
            wf = list(zip(ts[f0:f1], vs[f0:f1]))
            if hst is not None and not wf:
                res = _st_window(ev, name, wh, hst[h0:h1], lo, e, m.range_ms, labels,
                                 margs[0])
            else:
                res = _window(ev, name, wh, wf, lo, e, m.range_ms, labels, margs[0])
            if res is None:
                mask[k] = 0
                continue
            if isinstance(res, H.FloatHistogram):
                hists[k] = res
                vals[k] = 0.0
            else:
                vals[k] = res
            mask[k] = 1
        if any(mask):
            keep = name in ("last_over_time", "first_over_time")
            out.append(Series(labels, vals, mask, drop or not keep, None,
                              hists if any(h is not None for h in hists) else None))
    return out


def _window(ev, name, wh, wf, lo, e, range_ms, labels, pos):
    """One step's value over window samples wh (histograms) and wf (floats): a float, a
    FloatHistogram or None (no value)."""
    if name == "count_over_time":
        return float(len(wh) + len(wf))
    if name == "present_over_time":
        return 1.0
    if name in ("last_over_time", "first_over_time"):
        last = name == "last_over_time"
        ht, h = wh[-1] if last else wh[0]
        if wf:
            ft, f = wf[-1] if last else wf[0]
            if (ft > ht) if last else (ft < ht):
                return f
        return H.copy(h)
    if name in ("resets", "changes"):
        pts = sorted(wh + wf, key=lambda p: p[0])
        c = 0
        for (_, a), (_, b) in zip(pts, pts[1:]):
            ah, bh = isinstance(a, H.FloatHistogram), isinstance(b, H.FloatHistogram)
            if ah != bh:
                c += 1  # a float after a histogram or back: a change and a reset
            elif name == "changes":
                if ah:
                    if not H.equals(a, b):
                        c += 1
                elif not (a == b or (a != a and b != b)):
                    c += 1
            elif ah:
                if H.detect_reset(b, a):
                    c += 1
            elif b < a:
                c += 1
        return float(c)
    if name in ("ts_of_last_over_time", "ts_of_first_over_time"):
        last = name == "ts_of_last_over_time"
        t = wh[-1][0] if last else wh[0][0]
        if wf:
            t = max(t, wf[-1][0]) if last else min(t, wf[0][0])
        return t / 1000.0
    if name in ("irate", "idelta"):
        return _instant_value(ev, name == "irate", wh, wf, labels, pos)
    if wf:
        ev.warn("encountered a mix of histograms and floats for metric name %s"
                % _quoted_name(labels), pos)
        return None
    hs = [h for _, h in wh]
    if name in ("sum_over_time", "avg_over_time"):
        acc = H.Summer(hs[0])
        mean = name == "avg_over_time"
        try:
            for h in hs[1:]:
                acc.add(h, mean)
        except H.IncompatibleSchema:
            ev.warn("vector contains a mix of histograms with exponential and custom buckets "
                    "schemas for metric name %s" % _quoted_name(labels), pos)
            return None
        if acc.reset_seen and acc.not_reset_seen:
            ev.warn("conflicting counter resets during histogram aggregation", pos)
        if acc.reconciled:
            ev.info("mismatched custom buckets were reconciled during aggregation", pos)
        return acc.mean_result() if mean else acc.sum_result()
    # rate / increase / delta
    if len(wh) < 2:
        return None
    is_counter = name != "delta"
    r = _histogram_rate(ev, wh, is_counter, labels, pos)
    if r is None:
        return None
    first_t, last_t = wh[0][0], wh[-1][0]
    to_start = (first_t - lo) / 1000.0
    to_end = (e - last_t) / 1000.0
    sampled = (last_t - first_t) / 1000.0
    avg = sampled / (len(wh) - 1)
    thr = avg * 1.1
    if to_start >= thr:
        to_start = avg / 2
    if is_counter:
        to_zero = to_start
        if r.count > 0 and wh[0][1].count >= 0:
            to_zero = sampled * (wh[0][1].count / r.count)
        if to_zero < to_start:
            to_start = to_zero
    return _extrapolated(r, name, range_ms, sampled, to_start, to_end, avg)


def _extrapolated(r, name, range_ms, sampled, to_start, to_end, avg):
    """The window's increase r stretched to the range as Prometheus extrapolates (to_end capped
    at half an average interval when the series ends well before it), per second for rate."""
    if to_end >= avg * 1.1:
        to_end = avg / 2
    factor = (sampled + to_start + to_end) / sampled if sampled != 0 else 1.0
    if name == "rate":
        factor /= range_ms / 1000.0
    out = H.scale(r, factor)
    out.counter_reset_hint = GAUGE_TYPE
    return out


# The range functions that use the samples' start timestamps (as calls.ST_FUNCS for floats).
ST_FUNCS = frozenset(("rate", "increase", "irate", "resets"))


def _st_window(ev, name, wh, st, lo, e, range_ms, labels, pos):
    """rate/increase/irate/resets over a window of histogram samples wh with start timestamps
    st (aligned, 0 = unknown), as the float kernel's st_range_one: a start time after the
    previous sample marks a reset, and a zero at the first sample's start time (inside the
    range) replaces extrapolating to the left."""
    n = len(wh)
    resets = [False] + [H.detect_reset(wh[i][1], wh[i - 1][1]) or
                        st_reset(st[i - 1], wh[i - 1][0], st[i], wh[i][0]) for i in range(1, n)]
    if name == "resets":
        return float(sum(resets))
    if name == "irate":
        if n < 2 or wh[-1][0] == wh[-2][0]:
            return None
        r = _histogram_rate(ev, wh[-2:], True, labels, pos, resets[-2:])
        if r is None:
            return None
        r = H.divide(r, (wh[-1][0] - wh[-2][0]) / 1000.0)
        r.counter_reset_hint = GAUGE_TYPE
        return r
    for i in range(1, n):
        if st[i] != 0 and st[i] < wh[i - 1][0] and st[i] != st[i - 1]:
            ev.warn("sample has start time that overlaps with previous sample timestamp for "
                    "metric %s" % _quoted_name(labels), pos)
            break
    first_t, last_t = wh[0][0], wh[-1][0]
    to_start = (first_t - lo) / 1000.0
    to_end = (e - last_t) / 1000.0
    sampled = (last_t - first_t) / 1000.0
    avg = sampled / (n - 1) if n > 1 else 0.0
    thr = avg * 1.1
    from_zero = st[0] != 0 and lo < st[0] < first_t
    if not from_zero and n == 1:
        return None
    r = _histogram_rate(ev, wh, True, labels, pos, resets, from_zero)
    if r is None:
        return None
    if from_zero:
        to_start = 0.0
        sampled = (last_t - st[0]) / 1000.0
    else:
        if to_start >= thr:
            to_start = avg / 2
        to_zero = to_start
        if r.count > 0 and wh[0][1].count >= 0:
            to_zero = sampled * (wh[0][1].count / r.count)
        if to_zero < to_start:
            to_start = to_zero
    return _extrapolated(r, name, range_ms, sampled, to_start, to_end, avg)


def interpolate(h1, t1, h2, t2, t, is_counter):
    """The histogram at t between samples (t1, h1) and (t2, h2), linearly; a counter reset
    between them makes it h2 scaled (the counter restarted from zero)."""
    if t == t1:
        return H.copy(h1)
    if t == t2:
        return H.copy(h2)
    fraction = (t - t1) / (t2 - t1)
    if is_counter and H.detect_reset(h2, h1):
        return H.scale(h2, fraction)
    diff, _, _ = H.sub(h2, h1)
    res, _, _ = H.add(H.scale(diff, fraction), h1)
    res.counter_reset_hint = h2.counter_reset_hint
    return res


def smoothed_with_hists(ev, node, labels, ts, vs, hts, hvs, refs):
    """`metric smoothed` for a series with histogram samples: per reference time the sample
    there, or the value interpolated between the samples around it, or the last one within
    the lookback; a window mixing floats and histograms has no value (and a warning)."""
    n = len(refs)
    vals = zeros(n)
    mask = bytearray(n)
    hists = [None] * n
    lb = ev.lookback
    for k, t in enumerate(refs):
        f0, f1 = bisect_right(ts, t - lb), bisect_right(ts, t + lb)
        h0, h1 = bisect_right(hts, t - lb), bisect_right(hts, t + lb)
        if f0 == f1 and h0 == h1:
            continue
        if f1 > f0 and h1 > h0:
            ev.warn("encountered a mix of histograms and floats for metric name %s"
                    % _quoted_name(labels), node)
            continue
        if f1 > f0:
            i = next((j for j in range(f0, f1) if ts[j] >= t), f1)
            if i < f1 and ts[i] == t:
                vals[k] = vs[i]
            elif f0 < i < f1:
                a, b = vs[i - 1], vs[i]
                vals[k] = a + (b - a) * (t - ts[i - 1]) / (ts[i] - ts[i - 1])
            elif i > f0:
                vals[k] = vs[i - 1]
            else:
                continue
            mask[k] = 1
            continue
        i = next((j for j in range(h0, h1) if hts[j] >= t), h1)
        if i < h1 and hts[i] == t:
            h = H.copy(hvs[i])
        elif h0 < i < h1:
            a, b = hvs[i - 1], hvs[i]
            if H.uses_custom(a) != H.uses_custom(b):
                ev.warn("vector contains a mix of histograms with exponential and custom "
                        "buckets schemas for metric name %s" % _quoted_name(labels), node)
                continue
            counter = a.counter_reset_hint != GAUGE_TYPE or b.counter_reset_hint != GAUGE_TYPE
            h = interpolate(a, hts[i - 1], b, hts[i], t, counter)
        elif i > h0:
            h = H.copy(hvs[i - 1])
            h.counter_reset_hint = 0
        else:
            continue
        hists[k] = h
        mask[k] = 1
    return vals, mask, (hists if any(h is not None for h in hists) else None)


def _extended_rate(ev, h, start, end, range_ms, smoothed, is_counter, is_rate, labels, pos):
    """rate/increase/delta over an anchored or smoothed window of histogram samples h
    (Prometheus' extendedHistogramRate)."""
    last = len(h) - 1
    first = max(0, next((i for i in range(last) if h[i][0] > start), last) - 1)
    if smoothed:
        last = next((i for i in range(last) if h[i][0] >= end), last)
    if h[last][0] <= start or (smoothed and h[first][0] > end):
        return None
    custom = H.uses_custom(h[first][1])
    for _, x in h[first:last + 1]:
        if H.uses_custom(x) != custom:
            ev.warn("vector contains a mix of histograms with exponential and custom buckets "
                    "schemas for metric name %s" % _quoted_name(labels), pos)
            return None
        if is_counter and x.counter_reset_hint == GAUGE_TYPE:
            ev.warn("this native histogram metric is not a counter: %s" % _quoted_name(labels),
                    pos)
    try:
        if smoothed and h[first][0] < start:
            left = interpolate(h[first][1], h[first][0], h[first + 1][1], h[first + 1][0],
                               start, is_counter)
        else:
            left = H.copy(h[first][1])
        if smoothed and last > 0 and h[last][0] > end:
            right = interpolate(h[last - 1][1], h[last - 1][0], h[last][1], h[last][0], end,
                                is_counter)
        else:
            right = H.copy(h[last][1])
        if not is_counter and (left.counter_reset_hint != GAUGE_TYPE or
                               right.counter_reset_hint != GAUGE_TYPE):
            ev.warn("this native histogram metric is not a gauge: %s" % _quoted_name(labels),
                    pos)
        result, _, rec = H.sub(right, left)
        if rec:
            ev.info("mismatched custom buckets were reconciled during subtraction", pos)
        if is_counter:
            lo = first + 1
            prev = left
            if smoothed and h[first][0] < start and H.detect_reset(h[first + 1][1], h[first][1]):
                prev = h[first + 1][1]
                lo += 1
            hi = last - 1
            correction = None
            if lo <= hi + 1:
                for _, x in h[lo:hi + 1]:
                    if H.detect_reset(x, prev):
                        correction = H.copy(prev) if correction is None else \
                            H.add(correction, prev)[0]
                    prev = x
                if H.detect_reset(right, prev):
                    correction = H.copy(prev) if correction is None else \
                        H.add(correction, prev)[0]
            if correction is not None:
                result, _, rec = H.add(result, correction)
                if rec:
                    ev.info("mismatched custom buckets were reconciled during addition", pos)
    except H.IncompatibleSchema:
        ev.warn("vector contains a mix of histograms with exponential and custom buckets "
                "schemas for metric name %s" % _quoted_name(labels), pos)
        return None
    if is_rate:
        result = H.divide(result, range_ms / 1000.0)
    result.counter_reset_hint = GAUGE_TYPE
    return H.compact(result)


def _instant_value(ev, is_rate, wh, wf, labels, pos):
    """irate / idelta from the window's last two samples (floats and histograms)."""
    pts = sorted(wh[-2:] + wf[-2:], key=lambda p: p[0])[-2:]
    if len(pts) < 2:
        return None
    (t0, a), (t1, b) = pts
    if t1 == t0:
        return None
    ah, bh = isinstance(a, H.FloatHistogram), isinstance(b, H.FloatHistogram)
    if ah != bh:
        ev.warn("encountered a mix of histograms and floats for metric name %s"
                % _quoted_name(labels), pos)
        return None
    dt = (t1 - t0) / 1000.0
    if not ah:
        if is_rate and b < a:
            return b / dt
        return (b - a) / dt if is_rate else b - a
    if is_rate and (a.counter_reset_hint == GAUGE_TYPE or b.counter_reset_hint == GAUGE_TYPE):
        ev.warn("this native histogram metric is not a counter: %s" % _quoted_name(labels), pos)
    if not is_rate and (a.counter_reset_hint != GAUGE_TYPE or b.counter_reset_hint != GAUGE_TYPE):
        ev.warn("this native histogram metric is not a gauge: %s" % _quoted_name(labels), pos)
    if not is_rate or not H.detect_reset(b, a):
        try:
            r, _, rec = H.sub(b, a)
        except H.IncompatibleSchema:
            ev.warn("vector contains a mix of histograms with exponential and custom buckets "
                    "schemas for metric name %s" % _quoted_name(labels), pos)
            return None
        if rec:
            ev.info("mismatched custom buckets were reconciled during subtraction", pos)
    else:
        r = H.compact(b)
    if is_rate:
        r = H.divide(r, dt)
    r.counter_reset_hint = GAUGE_TYPE
    return r


def _histogram_rate(ev, wh, is_counter, labels, pos, resets=None, from_zero=False):
    """The increase over window samples wh (last minus first plus every value before a
    reset). `resets` (per sample: a reset before it, e.g. from start timestamps) replaces
    comparing the histograms; with `from_zero` the counter counts from zero before the first
    sample (its start time is in the range)."""
    prev = wh[0][1]
    last = wh[-1][1]
    if is_counter and (prev.counter_reset_hint == GAUGE_TYPE or
                       last.counter_reset_hint == GAUGE_TYPE):
        ev.warn("this native histogram metric is not a counter: %s" % _quoted_name(labels), pos)
    if from_zero:
        prev = H.FloatHistogram(schema=prev.schema, custom_values=prev.custom_values)
    elif is_counter:
        second = wh[1][1]
        if resets[1] if resets is not None else H.detect_reset(second, prev):
            prev = H.FloatHistogram(schema=second.schema, custom_values=second.custom_values)
    custom = H.uses_custom(prev)
    mixed_schema = H.uses_custom(last) != custom
    min_schema = min(last.schema, prev.schema)
    for _, cur in wh[1:-1]:
        if not is_counter:
            continue
        if cur.counter_reset_hint == GAUGE_TYPE:
            ev.warn("this native histogram metric is not a counter: %s" % _quoted_name(labels),
                    pos)
        min_schema = min(min_schema, cur.schema)
        if H.uses_custom(cur) != custom:
            mixed_schema = True
    if mixed_schema:
        ev.warn("vector contains a mix of histograms with exponential and custom buckets "
                "schemas for metric name %s" % _quoted_name(labels), pos)
        return None
    acc = H._Acc(last)
    if not custom and acc.schema > min_schema:
        acc.pos = H.reduce_map(acc.pos, acc.schema, min_schema)
        acc.neg = H.reduce_map(acc.neg, acc.schema, min_schema)
        acc.schema = min_schema
    try:
        _, rec = acc.add(prev, -1.0)
        if rec:
            ev.info("mismatched custom buckets were reconciled during subtraction", pos)
        if is_counter:
            # a reset at the second sample already dropped the first (prev is empty)
            skip = prev is not wh[0][1] and not from_zero
            p = prev if skip else wh[0][1]
            for i, (_, cur) in enumerate(wh[1:], 1):
                if (resets[i] and not (i == 1 and skip)) if resets is not None else \
                        H.detect_reset(cur, p):
                    _, rec = acc.add(p)
                    if rec:
                        ev.info("mismatched custom buckets were reconciled during addition",
                                pos)
                p = cur
    except H.IncompatibleSchema:
        ev.warn("vector contains a mix of histograms with exponential and custom buckets "
                "schemas for metric name %s" % _quoted_name(labels), pos)
        return None
    if not is_counter and (wh[0][1].counter_reset_hint != GAUGE_TYPE or
                           last.counter_reset_hint != GAUGE_TYPE):
        ev.warn("this native histogram metric is not a gauge: %s" % _quoted_name(labels), pos)
    acc.hint = GAUGE_TYPE
    return acc.result()


# -- binary operators ---------------------------------------------------------------------------

_CMP = frozenset(("==", "!=", ">", "<", ">=", "<=", "</", ">/"))


def incompatible(op, lt, rt):
    return ("incompatible sample types encountered for binary operator %s: %s %s %s"
            % (A.go_quote(op), lt, op, rt))


def elem_binop(op, lf, lh, rf, rh, float_op):
    """One sample pair where at least one side is a histogram (Prometheus' vectorElemBinop):
    (float, histogram, keep, annotation or None, annotation kind "info"/"warn", dropped by the
    annotation). float_op(lf, rf) -> (value, keep) does float pairs."""
    if lh is None and rh is None:
        if float_op is None:
            return 0.0, None, False, incompatible(op, "float", "float"), "info"
        f, keep = float_op(lf, rf)
        return f, None, keep, None, None
    if lh is None:
        if op == "*":
            return 0.0, H.scale(rh, lf), True, None, None
        return 0.0, None, False, incompatible(op, "float", "histogram"), "info"
    if rh is None:
        if op == "*":
            return 0.0, H.scale(lh, rf), True, None, None
        if op == "/":
            return 0.0, H.divide(lh, rf), True, None, None
        if op in ("</", ">/"):
            return 0.0, H.trim(lh, rf, op == "</"), True, None, None
        return 0.0, None, False, incompatible(op, "histogram", "float"), "info"
    if op in ("+", "-"):
        try:
            res, collision, rec = (H.add if op == "+" else H.sub)(lh, rh)
        except H.IncompatibleSchema:
            return 0.0, None, False, ("vector contains a mix of histograms with exponential "
                                      "and custom buckets schemas for metric name \"\""), "warn"
        if op == "-":
            res.counter_reset_hint = GAUGE_TYPE
        if collision:
            return 0.0, res, True, ("conflicting counter resets during histogram %s"
                                    % ("addition" if op == "+" else "subtraction")), "warn"
        if rec:
            return 0.0, res, True, ("mismatched custom buckets were reconciled during %s"
                                    % ("addition" if op == "+" else "subtraction")), "info"
        return 0.0, res, True, None, None
    if op == "==":
        return 0.0, lh, H.equals(lh, rh), None, None
    if op == "!=":
        return 0.0, lh, not H.equals(lh, rh), None, None
    return 0.0, None, False, incompatible(op, "histogram", "histogram"), "info"
