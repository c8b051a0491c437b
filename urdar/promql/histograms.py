"""Native histogram arithmetic for PromQL (Prometheus' model/histogram FloatHistogram methods).

Operations never modify their inputs: the engine shares FloatHistogram objects between steps
and series. Buckets are handled as {bucket index: count} maps; results that Prometheus compacts
(`Compact(0)`: every empty bucket dropped, adjacent spans joined) are built from those maps, the
others keep their input's layout. Exponential schemas -4..8 and custom buckets (schema -53) are
supported; mixing the two raises IncompatibleSchema (Prometheus' ErrHistogramsIncompatibleSchema).
"""

from __future__ import annotations

import math
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from urdar.engine.histogram import (
    COUNTER_RESET, CUSTOM_BUCKETS_SCHEMA, GAUGE_TYPE, NOT_COUNTER_RESET, UNKNOWN_COUNTER_RESET,
    FloatHistogram, Histogram)
from urdar.promql.histbounds import FRACTIONS

Buckets = Dict[int, float]
MAX_FLOAT = 1.7976931348623157e308


class IncompatibleSchema(ValueError):
    """Exponential and custom-bucket histograms meet in one operation."""


def uses_custom(h) -> bool:
    return h.schema == CUSTOM_BUCKETS_SCHEMA


def as_float(h) -> FloatHistogram:
    return h.to_float() if isinstance(h, Histogram) else h


def copy(h: FloatHistogram) -> FloatHistogram:
    return FloatHistogram(
        schema=h.schema, zero_threshold=h.zero_threshold, zero_count=h.zero_count,
        count=h.count, sum=h.sum, positive_spans=h.positive_spans,
        negative_spans=h.negative_spans, positive_buckets=h.positive_buckets,
        negative_buckets=h.negative_buckets, custom_values=h.custom_values,
        counter_reset_hint=h.counter_reset_hint)


# -- bucket maps --------------------------------------------------------------------------------

def _indexed(spans, buckets) -> Iterator[Tuple[int, float]]:
    idx = 0
    bi = 0
    for si, (off, length) in enumerate(spans):
        idx += off if si == 0 else off
        for _ in range(length):
            if bi >= len(buckets):
                return
            yield idx, buckets[bi]
            bi += 1
            idx += 1


def bucket_map(spans, buckets) -> Buckets:
    out: Buckets = {}
    for i, c in _indexed(spans, buckets):
        out[i] = out.get(i, 0.0) + c
    return out


def _spans_of(m: Buckets) -> Tuple[List[Tuple[int, int]], List[float]]:
    """Compact spans/buckets of a map: empty buckets dropped, consecutive buckets one span."""
    spans: List[Tuple[int, int]] = []
    buckets: List[float] = []
    prev = None
    for i in sorted(m):
        c = m[i]
        if c == 0:
            continue
        if prev is not None and i == prev + 1:
            off, ln = spans[-1]
            spans[-1] = (off, ln + 1)
        else:
            spans.append((i if prev is None else i - prev - 1, 1))
        buckets.append(c)
        prev = i
    return spans, buckets


def build(schema, zero_threshold, zero_count, count, sum_, pos: Buckets, neg: Buckets,
          custom_values=(), hint=UNKNOWN_COUNTER_RESET) -> FloatHistogram:
    ps, pb = _spans_of(pos)
    ns, nb = _spans_of(neg)
    return FloatHistogram(schema=schema, zero_threshold=zero_threshold, zero_count=zero_count,
                          count=count, sum=sum_, positive_spans=ps, positive_buckets=pb,
                          negative_spans=ns, negative_buckets=nb, custom_values=custom_values,
                          counter_reset_hint=hint)


def compact(h: FloatHistogram) -> FloatHistogram:
    return build(h.schema, h.zero_threshold, h.zero_count, h.count, h.sum,
                 bucket_map(h.positive_spans, h.positive_buckets),
                 bucket_map(h.negative_spans, h.negative_buckets), h.custom_values,
                 h.counter_reset_hint)


def target_idx(idx: int, origin: int, target: int) -> int:
    return ((idx - 1) >> (origin - target)) + 1


def reduce_map(m: Buckets, origin: int, target: int) -> Buckets:
    if origin == target:
        return dict(m)
    out: Buckets = {}
    for i, c in m.items():
        j = target_idx(i, origin, target)
        out[j] = out.get(j, 0.0) + c
    return out


# -- bounds -------------------------------------------------------------------------------------

def bound(idx: int, schema: int, custom_values: Sequence[float] = ()) -> float:
    """Upper bound of bucket idx (Prometheus' getBound)."""
    if schema == CUSTOM_BUCKETS_SCHEMA:
        if idx == len(custom_values):
            return math.inf
        if idx == -1:
            return -math.inf
        return custom_values[idx]
    if schema < 0:
        exp = idx << -schema
        if exp == 1024:
            return MAX_FLOAT
        try:
            return math.ldexp(1.0, exp)
        except OverflowError:
            return math.inf
    frac = FRACTIONS[schema][idx & ((1 << schema) - 1)]
    exp = (idx >> schema) + 1
    if frac == 0.5 and exp == 1025:
        return MAX_FLOAT
    try:
        return math.ldexp(frac, exp)
    except OverflowError:
        return math.inf


class Bucket:
    __slots__ = ("lower", "upper", "count", "lower_inclusive", "upper_inclusive", "index")

    def __init__(self, lower, upper, count, lower_inclusive, upper_inclusive, index=0):
        self.lower = lower
        self.upper = upper
        self.count = count
        self.lower_inclusive = lower_inclusive
        self.upper_inclusive = upper_inclusive
        self.index = index


def positive_buckets(h) -> List[Bucket]:
    out = []
    for i, c in _indexed(h.positive_spans, h.positive_buckets):
        out.append(Bucket(bound(i - 1, h.schema, h.custom_values),
                          bound(i, h.schema, h.custom_values), c, False, True, i))
    return out


def negative_buckets(h) -> List[Bucket]:
    """Ascending by index, i.e. by absolute value."""
    out = []
    for i, c in _indexed(h.negative_spans, h.negative_buckets):
        out.append(Bucket(-bound(i, h.schema), -bound(i - 1, h.schema), c, True, False, i))
    return out


def all_buckets(h) -> List[Bucket]:
    """Every bucket from lowest to highest value (Prometheus' AllBucketIterator)."""
    zt = h.zero_threshold
    out = []
    for b in reversed(negative_buckets(h)):
        if b.upper < 0 and b.upper > -zt:
            b.upper = -zt
        elif b.lower > 0 and b.lower < zt:
            b.lower = zt
        out.append(b)
    if h.zero_count > 0:
        out.append(Bucket(-zt, zt, h.zero_count, True, True))
    for b in positive_buckets(h):
        if b.lower > 0 and b.lower < zt:
            b.lower = zt
        elif b.upper < 0 and b.upper > -zt:
            b.upper = -zt
        out.append(b)
    return out


# -- zero bucket --------------------------------------------------------------------------------

def _zero_count_for_larger_threshold(h, pos: Buckets, neg: Buckets, larger: float,
                                     schema: int) -> Tuple[float, float]:
    """(zero count, threshold) once h's zero bucket widens to `larger` (moved to the upper
    bound of a populated bucket it would cut)."""
    if larger == h.zero_threshold:
        return h.zero_count, larger
    while True:
        zc = h.zero_count
        for i in sorted(pos):
            lo, up = bound(i - 1, schema), bound(i, schema)
            if lo >= larger:
                break
            zc += pos[i]
            if up > larger:
                if pos[i] != 0:
                    larger = up
                break
        redo = False
        for i in sorted(neg):
            lo, up = -bound(i, schema), -bound(i - 1, schema)
            if up <= -larger:
                break
            zc += neg[i]
            if lo < -larger:
                if neg[i] != 0:
                    larger = -lo
                    redo = True
                break
        if not redo:
            return zc, larger


def _trim_zero(pos: Buckets, neg: Buckets, threshold: float, schema: int):
    for m in (pos, neg):
        for i in list(m):
            if bound(i - 1, schema) < threshold:
                del m[i]


class _Acc:
    """A histogram under construction as bucket maps (the receiver of Add/Sub)."""
    __slots__ = ("schema", "zt", "zc", "count", "sum", "pos", "neg", "cv", "hint")

    def __init__(self, h: FloatHistogram):
        self.schema = h.schema
        self.zt = h.zero_threshold
        self.zc = h.zero_count
        self.count = h.count
        self.sum = h.sum
        self.pos = bucket_map(h.positive_spans, h.positive_buckets)
        self.neg = bucket_map(h.negative_spans, h.negative_buckets)
        self.cv = list(h.custom_values)
        self.hint = h.counter_reset_hint

    def result(self) -> FloatHistogram:
        return build(self.schema, self.zt, self.zc, self.count, self.sum, self.pos, self.neg,
                     self.cv, self.hint)

    def add(self, other: FloatHistogram, sign: float = 1.0,
            comp: "Optional[_Comp]" = None) -> Tuple[bool, bool]:
        """self += sign * other; returns (counter reset collision, custom bounds reconciled).
        With comp, the additions are Kahan-compensated into it (Prometheus' KahanAdd)."""
        if uses_custom(self) != uses_custom(other):
            raise IncompatibleSchema("cannot apply this operation to histograms with a mix of "
                                     "exponential and custom bucket schemas")
        collision = self._adjust_hint(other)
        if comp is None:
            self.count += sign * other.count
            self.sum += sign * other.sum
        else:
            self.count, comp.count = _kahan_inc(sign * other.count, self.count, comp.count)
            self.sum, comp.sum = _kahan_inc(sign * other.sum, self.sum, comp.sum)
        opos = bucket_map(other.positive_spans, other.positive_buckets)
        if uses_custom(self):
            reconciled = False
            if not _bounds_match(self.cv, other.custom_values):
                reconciled = True
                bounds = [b for b in self.cv if b in set(other.custom_values)]
                self.pos = _map_custom(self.pos, self.cv, bounds)
                opos = _map_custom(opos, other.custom_values, bounds)
                if comp is not None:
                    comp.pos = _map_custom(comp.pos, self.cv, bounds)
                self.cv = bounds
            _add_into(self.pos, opos, sign, None if comp is None else comp.pos)
            return collision, reconciled
        oneg = bucket_map(other.negative_spans, other.negative_buckets)
        oschema = other.schema
        if oschema < self.schema:
            self.pos = reduce_map(self.pos, self.schema, oschema)
            self.neg = reduce_map(self.neg, self.schema, oschema)
            if comp is not None:
                comp.pos = reduce_map(comp.pos, self.schema, oschema)
                comp.neg = reduce_map(comp.neg, self.schema, oschema)
            self.schema = oschema
        elif oschema > self.schema:
            opos = reduce_map(opos, oschema, self.schema)
            oneg = reduce_map(oneg, oschema, self.schema)
        # Zero buckets: widen the narrower to the wider (reconcileZeroBuckets).
        ozc, ozt = other.zero_count, other.zero_threshold
        oview = _View(ozt, ozc)
        while ozt != self.zt:
            if self.zt > ozt:
                ozc, ozt = _zero_count_for_larger_threshold(oview, opos, oneg, self.zt,
                                                            self.schema)
                oview = _View(ozt, ozc)
            if ozt > self.zt:
                self.zc, self.zt = _zero_count_for_larger_threshold(self, self.pos, self.neg,
                                                                    ozt, self.schema)
                _trim_zero(self.pos, self.neg, self.zt, self.schema)
        if ozt != other.zero_threshold:
            _trim_zero(opos, oneg, ozt, self.schema)
        if comp is None:
            self.zc += sign * ozc
        else:
            self.zc, comp.zc = _kahan_inc(sign * ozc, self.zc, comp.zc)
            _trim_zero(comp.pos, comp.neg, self.zt, self.schema)
        _add_into(self.pos, opos, sign, None if comp is None else comp.pos)
        _add_into(self.neg, oneg, sign, None if comp is None else comp.neg)
        return collision, False

    def scale(self, f: float):
        self.zc *= f
        self.count *= f
        self.sum *= f
        for m in (self.pos, self.neg):
            for i in m:
                m[i] *= f

    def has_overflow(self) -> bool:
        return any(math.isinf(x) for x in (self.zc, self.count, self.sum)) or \
            any(math.isinf(x) for x in self.pos.values()) or \
            any(math.isinf(x) for x in self.neg.values())

    def clone(self) -> "_Acc":
        c = _Acc.__new__(_Acc)
        for k in _Acc.__slots__:
            v = getattr(self, k)
            setattr(c, k, dict(v) if isinstance(v, dict) else
                    (list(v) if isinstance(v, list) else v))
        return c

    def plus(self, comp: "_Comp", div: float = 1.0) -> FloatHistogram:
        """(self + comp) / div as a compacted histogram (the Kahan sum's final value)."""
        pos = dict(self.pos)
        neg = dict(self.neg)
        for m, cm in ((pos, comp.pos), (neg, comp.neg)):
            for i, c in cm.items():
                if i in m or c != 0:
                    m[i] = m.get(i, 0.0) + c
        r = build(self.schema, self.zt, self.zc + comp.zc, self.count + comp.count,
                  self.sum + comp.sum, pos, neg, self.cv, self.hint)
        return r if div == 1.0 else divide(r, div)


    # The zero-bucket helper reads these names off its first argument.
    @property
    def zero_threshold(self):
        return self.zt

    @property
    def zero_count(self):
        return self.zc

    def _adjust_hint(self, other) -> bool:
        a, b = self.hint, other.counter_reset_hint
        if a == b or a == GAUGE_TYPE:
            return False
        if b == GAUGE_TYPE:
            self.hint = GAUGE_TYPE
            return False
        if a == UNKNOWN_COUNTER_RESET:
            return False
        self.hint = UNKNOWN_COUNTER_RESET
        return b != UNKNOWN_COUNTER_RESET


class _Comp:
    """The Kahan compensation terms of a histogram sum."""
    __slots__ = ("zc", "count", "sum", "pos", "neg")

    def __init__(self) -> None:
        self.zc = self.count = self.sum = 0.0
        self.pos: Buckets = {}
        self.neg: Buckets = {}

    def scale(self, f: float):
        self.zc *= f
        self.count *= f
        self.sum *= f
        for m in (self.pos, self.neg):
            for i in m:
                m[i] *= f

    def clone(self) -> "_Comp":
        c = _Comp()
        c.zc, c.count, c.sum = self.zc, self.count, self.sum
        c.pos, c.neg = dict(self.pos), dict(self.neg)
        return c


def _add_into(m: Buckets, other: Buckets, sign: float, comp: Optional[Buckets]):
    if comp is None:
        for i, c in other.items():
            m[i] = m.get(i, 0.0) + sign * c
        return
    for i, c in other.items():
        m[i], comp[i] = _kahan_inc(sign * c, m.get(i, 0.0), comp.get(i, 0.0))


class _View:
    __slots__ = ("zero_threshold", "zero_count")

    def __init__(self, zt, zc):
        self.zero_threshold = zt
        self.zero_count = zc


def _bounds_match(a, b) -> bool:
    return len(a) == len(b) and all(x == y for x, y in zip(a, b))


def _map_custom(m: Buckets, bounds: Sequence[float], target: Sequence[float]) -> Buckets:
    """Buckets of custom bounds `bounds` merged into the coarser `target` bounds."""
    out: Buckets = {}
    pos = {b: j for j, b in enumerate(target)}
    for i, c in m.items():
        up = bounds[i] if i < len(bounds) else math.inf
        # The target bucket holding upper bound `up`: the first target bound >= up.
        j = pos.get(up)
        if j is None:
            j = next((k for k, b in enumerate(target) if b >= up), len(target))
        out[j] = out.get(j, 0.0) + c
    return out


def add(a: FloatHistogram, b: FloatHistogram) -> Tuple[FloatHistogram, bool, bool]:
    acc = _Acc(a)
    col, rec = acc.add(b)
    return acc.result(), col, rec


def sub(a: FloatHistogram, b: FloatHistogram) -> Tuple[FloatHistogram, bool, bool]:
    acc = _Acc(a)
    col, rec = acc.add(b, -1.0)
    return acc.result(), col, rec


class Summer:
    """Kahan-compensated sum (or mean) of histograms, as Prometheus' sum/avg aggregations and
    sum_over_time/avg_over_time: direct summation while no value overflows, then an
    incremental mean."""

    def __init__(self, first: FloatHistogram):
        self.acc = _Acc(first)
        self.comp = _Comp()
        self.n = 1
        self.mean: Optional[_Acc] = None
        self.reset_seen = first.counter_reset_hint == COUNTER_RESET
        self.not_reset_seen = first.counter_reset_hint == NOT_COUNTER_RESET
        self.reconciled = False

    def add(self, h: FloatHistogram, for_mean: bool = False) -> bool:
        """Add h; true when custom bucket bounds were reconciled."""
        if h.counter_reset_hint == COUNTER_RESET:
            self.reset_seen = True
        elif h.counter_reset_hint == NOT_COUNTER_RESET:
            self.not_reset_seen = True
        self.n += 1
        n = float(self.n)
        if self.mean is None:
            if not for_mean:
                _, rec = self.acc.add(h, 1.0, self.comp)
                self.reconciled = self.reconciled or rec
                return rec
            acc, comp = self.acc.clone(), self.comp.clone()
            _, rec = acc.add(h, 1.0, comp)
            self.reconciled = self.reconciled or rec
            if not acc.has_overflow():
                self.acc, self.comp = acc, comp
                return rec
            # The running sum would overflow: continue with the incremental mean.
            self.mean = self.acc
            self.mean.scale(1.0 / (n - 1))
            self.comp.scale(1.0 / (n - 1))
        q = (n - 1) / n
        self.comp.scale(q)
        self.mean.scale(q)
        _, rec = self.mean.add(divide(h, n), 1.0, self.comp)
        self.reconciled = self.reconciled or rec
        return rec

    def sum_result(self) -> FloatHistogram:
        return self.acc.plus(self.comp)

    def mean_result(self) -> FloatHistogram:
        if self.mean is not None:
            return self.mean.plus(self.comp)
        return self.acc.plus(self.comp, float(self.n))


def scale(h: FloatHistogram, factor: float) -> FloatHistogram:
    """h * factor, compacted (Mul then Compact(0))."""
    pos = {i: c * factor for i, c in bucket_map(h.positive_spans, h.positive_buckets).items()}
    neg = {i: c * factor for i, c in bucket_map(h.negative_spans, h.negative_buckets).items()}
    hint = GAUGE_TYPE if factor < 0 else h.counter_reset_hint
    return build(h.schema, h.zero_threshold, h.zero_count * factor, h.count * factor,
                 h.sum * factor, pos, neg, h.custom_values, hint)


def negate(h: FloatHistogram) -> FloatHistogram:
    """-h (Mul(-1), layout kept): every count and the sum change sign, a gauge results."""
    return FloatHistogram(
        schema=h.schema, zero_threshold=h.zero_threshold, zero_count=-h.zero_count,
        count=-h.count, sum=-h.sum, positive_spans=h.positive_spans,
        negative_spans=h.negative_spans, positive_buckets=[-c for c in h.positive_buckets],
        negative_buckets=[-c for c in h.negative_buckets], custom_values=h.custom_values,
        counter_reset_hint=GAUGE_TYPE)


def divide(h: FloatHistogram, d: float) -> FloatHistogram:
    """h / d, compacted; division by zero drops every bucket (Div then Compact(0))."""
    if d == 0:
        return build(h.schema, h.zero_threshold, _div(h.zero_count, d), _div(h.count, d),
                     _div(h.sum, d), {}, {}, h.custom_values, h.counter_reset_hint)
    pos = {i: c / d for i, c in bucket_map(h.positive_spans, h.positive_buckets).items()}
    neg = {i: c / d for i, c in bucket_map(h.negative_spans, h.negative_buckets).items()}
    hint = GAUGE_TYPE if d < 0 else h.counter_reset_hint
    return build(h.schema, h.zero_threshold, h.zero_count / d, h.count / d, h.sum / d, pos, neg,
                 h.custom_values, hint)


def _div(a: float, b: float) -> float:
    if b != 0:
        return a / b
    if a == 0 or math.isnan(a):
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


def equals(a: FloatHistogram, b: FloatHistogram) -> bool:
    """Exact equality of two compacted histograms (Prometheus' Equals, bit patterns)."""
    def same(x, y):
        return x == y or (x != x and y != y)
    if a.schema != b.schema or not same(a.count, b.count) or not same(a.sum, b.sum):
        return False
    if uses_custom(a):
        if not _bounds_match(a.custom_values, b.custom_values):
            return False
    else:
        if a.zero_threshold != b.zero_threshold or not same(a.zero_count, b.zero_count):
            return False
        if list(a.negative_spans) != list(b.negative_spans) or \
                not all(same(x, y) for x, y in zip(a.negative_buckets, b.negative_buckets)) or \
                len(a.negative_buckets) != len(b.negative_buckets):
            return False
    return list(a.positive_spans) == list(b.positive_spans) and \
        len(a.positive_buckets) == len(b.positive_buckets) and \
        all(same(x, y) for x, y in zip(a.positive_buckets, b.positive_buckets))


# -- counter resets -----------------------------------------------------------------------------

def detect_reset(cur: FloatHistogram, prev: FloatHistogram) -> bool:
    """Whether cur starts over relative to prev (Prometheus' DetectReset)."""
    if cur.counter_reset_hint == COUNTER_RESET:
        return True
    if cur.counter_reset_hint == NOT_COUNTER_RESET:
        return False
    if cur.count < prev.count:
        return True
    if uses_custom(cur) or uses_custom(prev):
        if uses_custom(cur) != uses_custom(prev):
            return True
        cp = bucket_map(cur.positive_spans, cur.positive_buckets)
        pp = bucket_map(prev.positive_spans, prev.positive_buckets)
        if not _bounds_match(cur.custom_values, prev.custom_values):
            bounds = [b for b in cur.custom_values if b in set(prev.custom_values)]
            cp = _map_custom(cp, cur.custom_values, bounds)
            pp = _map_custom(pp, prev.custom_values, bounds)
        return any(c != 0 and cp.get(i, 0.0) < c for i, c in pp.items())
    if cur.schema > prev.schema:
        return True
    if cur.zero_threshold < prev.zero_threshold:
        return True
    ppos = reduce_map(bucket_map(prev.positive_spans, prev.positive_buckets), prev.schema,
                      cur.schema)
    pneg = reduce_map(bucket_map(prev.negative_spans, prev.negative_buckets), prev.schema,
                      cur.schema)
    pzc, thr = _zero_count_for_larger_threshold(prev, ppos, pneg, cur.zero_threshold,
                                                cur.schema)
    if thr != cur.zero_threshold:
        return True
    if cur.zero_count < pzc:
        return True
    cpos = bucket_map(cur.positive_spans, cur.positive_buckets)
    cneg = bucket_map(cur.negative_spans, cur.negative_buckets)
    for pm, cm in ((ppos, cpos), (pneg, cneg)):
        for i, c in pm.items():
            if bound(i, cur.schema) <= cur.zero_threshold:
                continue  # inside the zero bucket: counted above
            if c != 0 and cm.get(i, 0.0) < c:
                return True
    return False


# -- statistics ---------------------------------------------------------------------------------

def quantile(q: float, h: FloatHistogram) -> Tuple[float, Optional[str]]:
    """(value, info kind or None): "nan_result" / "nan_skew" as Prometheus annotates."""
    if q < 0:
        return -math.inf, None
    if q > 1:
        return math.inf, None
    if h.count == 0 or math.isnan(q):
        return math.nan, None
    buckets = all_buckets(h)
    forward = math.isnan(h.sum) or q < 0.5
    if forward:
        rank = q * h.count
        seq = buckets
    else:
        rank = (1 - q) * h.count
        seq = list(reversed(buckets))
    count = 0.0
    b = None
    k = -1
    for k, b in enumerate(seq):
        if b.count == 0:
            continue
        count += b.count
        if count >= rank:
            break
    if b is None:
        b = Bucket(0.0, 0.0, 0.0, False, True)
    lower, upper = b.lower, b.upper
    custom = uses_custom(h)
    if not custom and lower < 0 and upper > 0:
        if not h.negative_buckets and h.positive_buckets:
            lower = 0.0
        elif not h.positive_buckets and h.negative_buckets:
            upper = 0.0
    elif custom:
        if lower == -math.inf:
            if upper <= 0:
                return upper, None
            lower = 0.0
        elif upper == math.inf:
            return lower, None
    if count > h.count:
        count = h.count
    if count < rank:
        if math.isnan(h.sum):
            return math.nan, "nan_result"
        return upper, None
    if forward:
        rank -= count - b.count
    else:
        rank = count - rank
    info = None
    if math.isnan(h.sum):
        total = count + sum(x.count for x in seq[k + 1:])
        if total < h.count:
            info = "nan_skew"
    fraction = rank / b.count
    if custom or (lower <= 0 and upper >= 0):
        return lower + (upper - lower) * fraction, info
    log_lower = math.log2(abs(lower))
    log_upper = math.log2(abs(upper))
    if lower > 0:
        return 2.0 ** (log_lower + (log_upper - log_lower) * fraction), info
    return -(2.0 ** (log_upper + (log_lower - log_upper) * (1 - fraction))), info


def fraction(lower: float, upper: float, h: FloatHistogram) -> Tuple[float, Optional[str]]:
    if h.count == 0 or math.isnan(lower) or math.isnan(upper):
        return math.nan, None
    if lower >= upper:
        return 0.0, None
    custom = uses_custom(h)
    buckets = all_buckets(h)
    count = rank = lower_rank = upper_rank = 0.0
    lower_set = upper_set = False
    k = -1
    for k, b in enumerate(buckets):
        count += b.count
        lo, up = b.lower, b.upper
        zero = False
        if lo <= 0 and up >= 0:
            zero = True
            if not h.negative_buckets and h.positive_buckets:
                lo = 0.0
            elif not h.positive_buckets and h.negative_buckets:
                up = 0.0

        def below(v, linear):
            if linear:
                if lo == -math.inf:
                    return b.count
                return rank + b.count * (v - lo) / (up - lo)
            ll, lu, lv = math.log2(abs(lo)), math.log2(abs(up)), math.log2(abs(v))
            if v > 0:
                return rank + b.count * (lv - ll) / (lu - ll)
            return rank + b.count * (1 - (lv - lu) / (ll - lu))
        if not lower_set and lo >= lower:
            lower_rank, lower_set = rank, True
        if not upper_set and lo >= upper:
            upper_rank, upper_set = rank, True
        if lower_set and upper_set:
            break
        if not lower_set and lo < lower < up:
            lower_rank, lower_set = below(lower, custom or zero), True
        if not upper_set and lo < upper < up:
            upper_rank, upper_set = below(upper, custom or zero), True
        if lower_set and upper_set:
            break
        rank += b.count
    info = None
    if math.isnan(h.sum):
        count += sum(b.count for b in buckets[k + 1:])
        if count < h.count:
            info = "nan"
    else:
        count = h.count
    if not lower_set or lower_rank > count:
        lower_rank = count
    if not upper_set or upper_rank > count:
        upper_rank = count
    return (upper_rank - lower_rank) / h.count, info


def stdvar(h: FloatHistogram) -> float:
    """Estimated variance of the observations (Prometheus' histogram_stdvar)."""
    mean = _div(h.sum, h.count)
    var = 0.0
    comp = 0.0
    for b in all_buckets(h):
        if b.count == 0:
            continue
        if uses_custom(h):
            val = (b.upper + b.lower) / 2.0
        elif b.lower <= 0 <= b.upper:
            val = 0.0
        else:
            val = math.sqrt(b.upper * b.lower)
            if b.upper < 0:
                val = -val
        delta = val - mean
        var, comp = _kahan_inc(b.count * delta * delta, var, comp)
    var += comp
    return _div(var, h.count)


def _kahan_inc(inc: float, s: float, c: float) -> Tuple[float, float]:
    t = s + inc
    if math.isinf(t):
        c = 0.0
    elif abs(s) >= abs(inc):
        c += (s - t) + inc
    else:
        c += (inc - t) + s
    return t, c


def go_string(h: FloatHistogram) -> str:
    """Prometheus' FloatHistogram.String(), as count_values writes a histogram value."""
    from urdar.promql.value import fmt_g

    def bucket(b):
        return "%s%s,%s%s:%s" % ("[" if b.lower_inclusive else "(", fmt_g(b.lower),
                                 fmt_g(b.upper), "]" if b.upper_inclusive else ")",
                                 fmt_g(b.count))
    parts = ["{count:%s, sum:%s" % (fmt_g(h.count), fmt_g(h.sum))]
    parts += [bucket(b) for b in reversed(negative_buckets(h)) if b.count != 0]
    if h.zero_count != 0:
        parts.append(bucket(Bucket(-h.zero_threshold, h.zero_threshold, h.zero_count, True,
                                   True)))
    parts += [bucket(b) for b in positive_buckets(h) if b.count != 0]
    return ", ".join(parts) + "}"


def api_json(h) -> str:
    """A native histogram as the Prometheus API's JSON object: count, sum and the populated
    buckets as [boundary rule, "lower", "upper", "count"] (rule 0: (l,u], 1: [l,u), 2: (l,u),
    3: [l,u]); numbers as the API's float strings. A JsonHistogram is its own text."""
    text = getattr(h, "json", None)
    if text is not None:
        return text
    from urdar.promql.kernels import format_value as fv
    out = '{"count":"%s","sum":"%s"' % (fv(h.count), fv(h.sum))
    buckets = to_api_buckets(h)
    if buckets:
        out += ',"buckets":[' + ",".join('[%d,"%s","%s","%s"]' % (rule, fv(lo), fv(up), fv(c))
                                         for rule, lo, up, c in buckets) + "]"
    return out + "}"


def to_api_buckets(h: FloatHistogram) -> List[Tuple[int, float, float, float]]:
    """The JSON API's buckets: (boundary rule, lower, upper, count), empty ones left out."""
    out = []
    for b in all_buckets(h):
        if b.count == 0:
            continue
        if b.lower_inclusive:
            rule = 3 if b.upper_inclusive else 1
        else:
            rule = 0 if b.upper_inclusive else 2
        out.append((rule, b.lower, b.upper, b.count))
    return out


# -- trim (the </ and >/ operators) -------------------------------------------------------------

def trim(h: FloatHistogram, rhs: float, upper_trim: bool) -> FloatHistogram:
    """h </ rhs (upper_trim: keep observations below rhs) or h >/ rhs (keep those above),
    interpolating in the bucket holding rhs (Prometheus' TrimBuckets)."""
    custom = uses_custom(h)
    pos = list(h.positive_buckets)
    neg = list(h.negative_buckets)
    count = total = 0.0
    trimmed = False
    has = {True: False, False: False}
    for positive, bl, store in ((True, positive_buckets(h), pos), (False, negative_buckets(h), neg)):
        for i, b in enumerate(bl):
            if b.count == 0:
                continue
            has[positive] = True
            if upper_trim:
                whole, part = b.upper <= rhs, b.lower < rhs
            else:
                whole, part = b.lower >= rhs, b.upper > rhs
            if whole:
                count += b.count
                total += _midpoint(b.lower, b.upper, positive, custom) * b.count
            elif part:
                keep, mid = _bucket_trim(b, rhs, upper_trim, positive, custom)
                count += keep
                total += mid * keep
                if store[i] != keep:
                    store[i] = keep
                    trimmed = True
            else:
                store[i] = 0.0
                trimmed = True
    zc = h.zero_count
    if zc > 0:
        keep, mid = _zero_trim(h.zero_threshold, zc, rhs, has[False], has[True], upper_trim)
        if keep != zc:
            zc = keep
            trimmed = True
        total += mid * keep
        count += keep
    if not trimmed:
        return h
    return build(h.schema, h.zero_threshold, zc, count, total,
                 bucket_map(h.positive_spans, pos), bucket_map(h.negative_spans, neg),
                 h.custom_values, h.counter_reset_hint)


def _midpoint(lo, up, positive, linear):
    if math.isinf(lo):
        if math.isinf(up):
            return 0.0
        return up / 2 if up > 0 else up
    if math.isinf(up):
        return lo
    if linear:
        return (lo + up) / 2
    g = math.sqrt(abs(lo * up))
    return g if positive else -g


def _fraction_below(b, v, linear):
    if linear:
        return (v - b.lower) / (b.upper - b.lower)
    ll, lu, lv = math.log2(abs(b.lower)), math.log2(abs(b.upper)), math.log2(abs(v))
    if v > 0:
        return (lv - ll) / (lu - ll)
    return 1 - ((lv - lu) / (ll - lu))


def _bucket_trim(b, rhs, upper_trim, positive, custom):
    if math.isinf(b.lower) or math.isinf(b.upper):
        return _inf_bucket_trim(b, rhs, upper_trim)
    if rhs <= b.lower:
        under = 0.0
    elif rhs >= b.upper:
        under = b.count
    else:
        under = b.count * _fraction_below(b, rhs, custom)
    if upper_trim:
        return under, _midpoint(b.lower, rhs, positive, custom)
    return b.count - under, _midpoint(rhs, b.upper, positive, custom)


def _inf_bucket_trim(b, rhs, upper_trim):
    def fin(x):
        return 0.0 if math.isinf(x) else x
    if b.lower == -math.inf:
        if upper_trim:
            if rhs >= b.upper:
                return b.count, 0.0
            if rhs > 0 and b.upper > 0 and not math.isinf(b.upper):
                return b.count * rhs / b.upper, rhs / 2
            if b.upper <= 0:
                return b.count, rhs
            return 0.0, fin(b.upper)
        if rhs <= b.lower:
            return b.count, 0.0
        if rhs >= 0 and b.upper > rhs and not math.isinf(b.upper):
            return b.count * (1 - rhs / b.upper), (rhs + b.upper) / 2
        return 0.0, fin(b.upper)
    if upper_trim:
        return 0.0, fin(b.lower)
    if rhs >= b.lower:
        return b.count, rhs
    return 0.0, fin(b.lower)


def _zero_trim(zt, zc, rhs, has_neg, has_pos, upper_trim):
    lo, up = -zt, zt
    if has_neg and not has_pos:
        up = 0.0
    if has_pos and not has_neg:
        lo = 0.0
    if upper_trim:
        if rhs <= lo:
            return 0.0, 0.0
        if rhs >= up:
            return zc, (lo + up) / 2
        return zc * (rhs - lo) / (up - lo), (lo + rhs) / 2
    if rhs <= lo:
        return zc, (lo + up) / 2
    if rhs >= up:
        return 0.0, 0.0
    return zc * (up - rhs) / (up - lo), (rhs + up) / 2
