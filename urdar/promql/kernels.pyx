# cython: language_level=3
"""Vectorized PromQL kernels: every hot loop of the evaluator (urdar/promql/evaluator.py).

The evaluator works on whole step grids: a series is a float64 array over the query's steps
plus a presence mask (bytearray, 1 = a sample exists at that step), so an instant query is a
range query with one step. These kernels fill such arrays in one call per series:
`instant_values` (newest sample in (t - lookback, t], stale markers drop it), `range_values`
(one range function over the sliding window (end - range, end] per step, two pointers over
the sorted samples), `binop` (arithmetic/comparison of two step arrays with Go float
semantics) and `Aggregator` (sum/avg/count/min/max/group/stddev/stdvar per output group with
Kahan-Neumaier compensation, fed one input series at a time). All loops run without the GIL.
"""
cimport cython
from libc.math cimport (NAN, INFINITY, isnan, isinf, fabs, floor, sqrt, fmod, pow, atan2)
from libc.stdint cimport int32_t, int64_t, uint64_t, uint8_t
from libc.stdlib cimport malloc, calloc, free, qsort
from libc.string cimport memcpy, memset

from array import array

cdef extern from *:
    """
    static inline uint64_t urdar_f64_bits(double v) { uint64_t u; memcpy(&u, &v, 8); return u; }
    """
    uint64_t urdar_f64_bits(double v) nogil

cdef uint64_t STALE_BITS = 0x7ff0000000000002ULL

# Range function ids (keep in sync with RANGE_FUNCS below).
cdef enum:
    F_RATE = 0
    F_INCREASE = 1
    F_DELTA = 2
    F_IRATE = 3
    F_IDELTA = 4
    F_AVG = 5
    F_SUM = 6
    F_COUNT = 7
    F_MIN = 8
    F_MAX = 9
    F_LAST = 10
    F_FIRST = 11
    F_PRESENT = 12
    F_STDDEV = 13
    F_STDVAR = 14
    F_QUANTILE = 15
    F_MAD = 16
    F_CHANGES = 17
    F_RESETS = 18
    F_DERIV = 19
    F_PREDICT_LINEAR = 20
    F_DES = 21
    F_TS_FIRST = 22
    F_TS_LAST = 23
    F_TS_MIN = 24
    F_TS_MAX = 25

RANGE_FUNCS = {
    "rate": F_RATE, "increase": F_INCREASE, "delta": F_DELTA, "irate": F_IRATE,
    "idelta": F_IDELTA, "avg_over_time": F_AVG, "sum_over_time": F_SUM,
    "count_over_time": F_COUNT, "min_over_time": F_MIN, "max_over_time": F_MAX,
    "last_over_time": F_LAST, "first_over_time": F_FIRST, "present_over_time": F_PRESENT,
    "stddev_over_time": F_STDDEV, "stdvar_over_time": F_STDVAR,
    "quantile_over_time": F_QUANTILE, "mad_over_time": F_MAD, "changes": F_CHANGES,
    "resets": F_RESETS, "deriv": F_DERIV, "predict_linear": F_PREDICT_LINEAR,
    "double_exponential_smoothing": F_DES, "ts_of_first_over_time": F_TS_FIRST,
    "ts_of_last_over_time": F_TS_LAST, "ts_of_min_over_time": F_TS_MIN,
    "ts_of_max_over_time": F_TS_MAX,
}


cdef inline bint is_stale(double v) noexcept nogil:
    return urdar_f64_bits(v) == STALE_BITS


cdef inline void kahan_inc(double inc, double *s, double *c) noexcept nogil:
    # Neumaier's variant: compensate with whichever of sum/increment is smaller.
    cdef double t = s[0] + inc
    if isinf(t):
        c[0] = 0
    elif fabs(s[0]) >= fabs(inc):
        c[0] += (s[0] - t) + inc
    else:
        c[0] += (inc - t) + s[0]
    s[0] = t


cdef int cmp_nan_first(const void *a, const void *b) noexcept nogil:
    # Prometheus' vectorByValueHeap order: NaN sorts before everything.
    cdef double x = (<const double *>a)[0]
    cdef double y = (<const double *>b)[0]
    if isnan(x):
        return 0 if isnan(y) else -1
    if isnan(y):
        return 1
    if x < y:
        return -1
    if x > y:
        return 1
    return 0


cdef double quantile_sorted(double q, double *v, Py_ssize_t n) noexcept nogil:
    """Prometheus' quantile() over values already sorted NaN-first; n >= 1."""
    cdef double rank, weight
    cdef Py_ssize_t lower, upper
    if isnan(q):
        return NAN
    if q < 0:
        return -INFINITY
    if q > 1:
        return INFINITY
    rank = q * (n - 1)
    lower = <Py_ssize_t>floor(rank)
    if lower < 0:
        lower = 0
    upper = lower + 1
    if upper > n - 1:
        upper = n - 1
    weight = rank - floor(rank)
    return v[lower] * (1 - weight) + v[upper] * weight


def quantile(double q, values):
    """Prometheus' quantile(q, values) (NaN sorts first, linear interpolation); NaN if empty."""
    cdef Py_ssize_t n = len(values), i
    if n == 0:
        return NAN
    cdef double *buf = <double *>malloc(n * sizeof(double))
    if buf == NULL:
        raise MemoryError()
    for i in range(n):
        buf[i] = values[i]
    qsort(buf, n, sizeof(double), cmp_nan_first)
    r = quantile_sorted(q, buf, n)
    free(buf)
    return r


def filter_stale(const int64_t[::1] ts, const double[::1] vals):
    """(ts, vals) without staleness markers (the inputs themselves when there is none)."""
    cdef Py_ssize_t n = ts.shape[0], i, k = 0, stale = 0
    for i in range(n):
        if is_stale(vals[i]):
            stale += 1
    if stale == 0:
        return None
    ots = array("q", bytes(8 * (n - stale)))
    ovs = array("d", bytes(8 * (n - stale)))
    cdef int64_t[::1] ot = ots
    cdef double[::1] ov = ovs
    for i in range(n):
        if not is_stale(vals[i]):
            ot[k] = ts[i]
            ov[k] = vals[i]
            k += 1
    return ots, ovs


def instant_values(const int64_t[::1] ts, const double[::1] vals, const int64_t[::1] times,
                   int64_t lookback, double[::1] out, int64_t[::1] out_ts, uint8_t[::1] mask):
    """For every step time t (non-decreasing), the newest sample in (t - lookback, t]; a stale
    newest sample means no value. Fills out/out_ts/mask; returns the number of present steps."""
    cdef Py_ssize_t n = ts.shape[0], nsteps = times.shape[0], k, hi = 0, cnt = 0
    cdef int64_t t
    with nogil:
        for k in range(nsteps):
            t = times[k]
            if k > 0 and t < times[k - 1]:
                hi = 0
            while hi < n and ts[hi] <= t:
                hi += 1
            mask[k] = 0
            if hi > 0 and ts[hi - 1] > t - lookback and not is_stale(vals[hi - 1]):
                out[k] = vals[hi - 1]
                out_ts[k] = ts[hi - 1]
                mask[k] = 1
                cnt += 1
    return cnt


cdef double extrapolated(const int64_t *ts, const double *v, Py_ssize_t n, int64_t start,
                         int64_t end, double range_s, bint counter, bint is_rate) noexcept nogil:
    # Prometheus' extrapolatedRate for floats; n >= 2.
    cdef double result = v[n - 1] - v[0]
    cdef Py_ssize_t i
    if counter:
        for i in range(1, n):
            if v[i] < v[i - 1]:
                result += v[i - 1]
    cdef double to_start = (ts[0] - start) / 1000.0
    cdef double to_end = (end - ts[n - 1]) / 1000.0
    cdef double sampled = (ts[n - 1] - ts[0]) / 1000.0
    cdef double avg = sampled / (n - 1)
    cdef double thr = avg * 1.1
    cdef double to_zero
    if to_start >= thr:
        to_start = avg / 2
    if counter:
        to_zero = to_start
        if result > 0 and v[0] >= 0:
            to_zero = sampled * (v[0] / result)
        if to_zero < to_start:
            to_start = to_zero
    if to_end >= thr:
        to_end = avg / 2
    cdef double factor = 1.0
    if sampled != 0:
        factor = (sampled + to_start + to_end) / sampled
    if is_rate:
        factor /= range_s
    return result * factor


cdef void linreg(const int64_t *ts, const double *v, Py_ssize_t n, int64_t icept_t,
                 double *slope, double *icept) noexcept nogil:
    cdef double sx = 0, cx = 0, sy = 0, cy = 0, sxy = 0, cxy = 0, sx2 = 0, cx2 = 0, x
    cdef double init_y = v[0], cnt = 0
    cdef bint const_y = True
    cdef Py_ssize_t i
    for i in range(n):
        if const_y and i > 0 and v[i] != init_y:
            const_y = False
        cnt += 1
        x = (ts[i] - icept_t) / 1e3
        kahan_inc(x, &sx, &cx)
        kahan_inc(v[i], &sy, &cy)
        kahan_inc(x * v[i], &sxy, &cxy)
        kahan_inc(x * x, &sx2, &cx2)
    if const_y:
        if isinf(init_y):
            slope[0] = NAN
            icept[0] = NAN
        else:
            slope[0] = 0
            icept[0] = init_y
        return
    sx += cx
    sy += cy
    sxy += cxy
    sx2 += cx2
    cdef double cov = sxy - sx * sy / cnt
    cdef double varx = sx2 - sx * sx / cnt
    slope[0] = cov / varx
    icept[0] = sy / cnt - slope[0] * sx / cnt


cdef bint range_one(int fn, const int64_t *ts, const double *v, Py_ssize_t n, int64_t end,
                    int64_t range_ms, double p1, double p2, double *scratch,
                    double *res) noexcept nogil:
    """One range function over the window samples ts[0..n) ending at `end`; False = no value."""
    cdef Py_ssize_t i
    cdef double s, c, cnt, mean, cm, aux, ca, delta, x, y, s0, s1, b, best, med
    cdef int64_t bt
    cdef bint incr
    if n == 0:
        return False
    if fn == F_RATE or fn == F_INCREASE or fn == F_DELTA:
        if n < 2:
            return False
        res[0] = extrapolated(ts, v, n, end - range_ms, end, range_ms / 1000.0,
                              fn != F_DELTA, fn == F_RATE)
        return True
    if fn == F_IRATE or fn == F_IDELTA:
        if n < 2 or ts[n - 1] == ts[n - 2]:
            return False
        if fn == F_IRATE and v[n - 1] < v[n - 2]:
            x = v[n - 1]
        else:
            x = v[n - 1] - v[n - 2]
        if fn == F_IRATE:
            x /= (ts[n - 1] - ts[n - 2]) / 1000.0
        res[0] = x
        return True
    if fn == F_COUNT:
        res[0] = n
    elif fn == F_PRESENT:
        res[0] = 1
    elif fn == F_LAST:
        res[0] = v[n - 1]
    elif fn == F_FIRST:
        res[0] = v[0]
    elif fn == F_TS_FIRST:
        res[0] = ts[0] / 1000.0
    elif fn == F_TS_LAST:
        res[0] = ts[n - 1] / 1000.0
    elif fn == F_SUM:
        s = 0
        c = 0
        for i in range(n):
            kahan_inc(v[i], &s, &c)
        res[0] = s if isinf(s) else s + c
    elif fn == F_AVG:
        s = v[0]
        c = 0
        cnt = 1
        mean = 0
        incr = False
        for i in range(1, n):
            cnt = i + 1
            if not incr:
                x = s
                y = c
                kahan_inc(v[i], &x, &y)
                if not isinf(x):
                    s = x
                    c = y
                    continue
                incr = True
                mean = s / (cnt - 1)
                c /= (cnt - 1)
            x = (cnt - 1) / cnt
            mean = x * mean
            c = x * c
            kahan_inc(v[i] / cnt, &mean, &c)
        res[0] = mean + c if incr else s / cnt + c / cnt
    elif fn == F_MIN or fn == F_MAX or fn == F_TS_MIN or fn == F_TS_MAX:
        best = v[0]
        bt = ts[0]
        for i in range(n):
            if ((fn == F_MAX and v[i] > best) or (fn == F_MIN and v[i] < best)
                    or (fn == F_TS_MAX and v[i] >= best) or (fn == F_TS_MIN and v[i] <= best)
                    or isnan(best)):
                best = v[i]
                bt = ts[i]
        res[0] = best if (fn == F_MIN or fn == F_MAX) else bt / 1000.0
    elif fn == F_STDDEV or fn == F_STDVAR:
        cnt = 0
        mean = 0
        cm = 0
        aux = 0
        ca = 0
        for i in range(n):
            cnt += 1
            delta = v[i] - (mean + cm)
            kahan_inc(delta / cnt, &mean, &cm)
            kahan_inc(delta * (v[i] - (mean + cm)), &aux, &ca)
        x = (aux + ca) / cnt
        res[0] = sqrt(x) if fn == F_STDDEV else x
    elif fn == F_QUANTILE:
        memcpy(scratch, v, n * sizeof(double))
        qsort(scratch, n, sizeof(double), cmp_nan_first)
        res[0] = quantile_sorted(p1, scratch, n)
    elif fn == F_MAD:
        for i in range(n):
            if isnan(v[i]):
                res[0] = NAN
                return True
        memcpy(scratch, v, n * sizeof(double))
        qsort(scratch, n, sizeof(double), cmp_nan_first)
        med = quantile_sorted(0.5, scratch, n)
        for i in range(n):
            scratch[i] = fabs(scratch[i] - med)
        qsort(scratch, n, sizeof(double), cmp_nan_first)
        res[0] = quantile_sorted(0.5, scratch, n)
    elif fn == F_CHANGES:
        cnt = 0
        for i in range(1, n):
            if v[i] != v[i - 1] and not (isnan(v[i]) and isnan(v[i - 1])):
                cnt += 1
        res[0] = cnt
    elif fn == F_RESETS:
        cnt = 0
        for i in range(1, n):
            if v[i] < v[i - 1]:
                cnt += 1
        res[0] = cnt
    elif fn == F_DERIV:
        if n < 2:
            return False
        linreg(ts, v, n, ts[0], &x, &y)
        res[0] = x
    elif fn == F_PREDICT_LINEAR:
        if n < 2:
            return False
        # p2 carries the evaluation time (intercept time) as a double of ms.
        linreg(ts, v, n, <int64_t>p2, &x, &y)
        res[0] = x * p1 + y
    elif fn == F_DES:
        if n < 2:
            return False
        s0 = 0
        s1 = v[0]
        b = v[1] - v[0]
        for i in range(1, n):
            x = p1 * v[i]
            if i - 1 != 0:
                b = p2 * (s1 - s0) + (1 - p2) * b
            y = (1 - p1) * (s1 + b)
            s0 = s1
            s1 = x + y
        res[0] = s1
    else:
        return False
    return True


cdef inline void window_advance(const int64_t *ts, Py_ssize_t n, const int64_t[::1] ends,
                                Py_ssize_t k, int64_t range_ms, Py_ssize_t *lo,
                                Py_ssize_t *hi) noexcept nogil:
    """Move [lo, hi) to step k's window (ends[k] - range_ms, ends[k]]: forward from the previous
    step's window, from the start again when ends went backwards."""
    cdef int64_t e = ends[k]
    if k > 0 and e < ends[k - 1]:
        lo[0] = 0
        hi[0] = 0
    while hi[0] < n and ts[hi[0]] <= e:
        hi[0] += 1
    while lo[0] < hi[0] and ts[lo[0]] <= e - range_ms:
        lo[0] += 1


def range_values(int fn, const int64_t[::1] ts, const double[::1] vals,
                 const int64_t[::1] ends, int64_t range_ms, const double[::1] p1,
                 const double[::1] p2, const int64_t[::1] evals, double[::1] out,
                 uint8_t[::1] mask):
    """Apply range function `fn` (a RANGE_FUNCS id) to the samples in (end - range_ms, end]
    for every step's `end` (non-decreasing; samples sorted, stale markers removed). p1/p2 are
    per-step scalar parameters (quantile, predict_linear seconds, smoothing factors); evals are
    the steps' evaluation times (predict_linear's intercept). Returns present steps."""
    cdef Py_ssize_t n = ts.shape[0], nsteps = ends.shape[0], k, lo = 0, hi = 0, cnt = 0
    cdef int64_t e
    cdef double r, a1, a2
    cdef double *scratch = NULL
    cdef const int64_t *tp = NULL
    cdef const double *vp = NULL
    if n > 0:
        tp = &ts[0]
        vp = &vals[0]
    if fn == F_QUANTILE or fn == F_MAD:
        scratch = <double *>malloc((n + 1) * sizeof(double))
        if scratch == NULL:
            raise MemoryError()
    with nogil:
        for k in range(nsteps):
            window_advance(tp, n, ends, k, range_ms, &lo, &hi)
            e = ends[k]
            a1 = p1[k] if p1.shape[0] > 0 else 0
            a2 = p2[k] if p2.shape[0] > 0 else 0
            if fn == F_PREDICT_LINEAR:
                a2 = <double>evals[k]
            mask[k] = 0
            if range_one(fn, tp + lo, vp + lo, hi - lo, e, range_ms, a1, a2, scratch, &r):
                out[k] = r
                mask[k] = 1
                cnt += 1
    if scratch != NULL:
        free(scratch)
    return cnt


def window_counts(const int64_t[::1] ts, const int64_t[::1] ends, int64_t range_ms,
                  int64_t[::1] out):
    """Number of samples in each step's window (end - range_ms, end]."""
    cdef Py_ssize_t n = ts.shape[0], nsteps = ends.shape[0], k, lo = 0, hi = 0
    cdef const int64_t *tp = &ts[0] if n > 0 else NULL
    with nogil:
        for k in range(nsteps):
            window_advance(tp, n, ends, k, range_ms, &lo, &hi)
            out[k] = hi - lo


# Binary operator ids.
cdef enum:
    OP_ADD = 0
    OP_SUB = 1
    OP_MUL = 2
    OP_DIV = 3
    OP_MOD = 4
    OP_POW = 5
    OP_ATAN2 = 6
    OP_EQ = 7
    OP_NE = 8
    OP_LT = 9
    OP_LE = 10
    OP_GT = 11
    OP_GE = 12

BINOPS = {"+": OP_ADD, "-": OP_SUB, "*": OP_MUL, "/": OP_DIV, "%": OP_MOD, "^": OP_POW,
          "atan2": OP_ATAN2, "==": OP_EQ, "!=": OP_NE, "<": OP_LT, "<=": OP_LE, ">": OP_GT,
          ">=": OP_GE}


cdef inline double arith(int op, double a, double b) noexcept nogil:
    if op == OP_ADD:
        return a + b
    if op == OP_SUB:
        return a - b
    if op == OP_MUL:
        return a * b
    if op == OP_DIV:
        return a / b
    if op == OP_MOD:
        return fmod(a, b)
    if op == OP_POW:
        return pow(a, b)
    return atan2(a, b)


cdef inline bint compare(int op, double a, double b) noexcept nogil:
    if op == OP_EQ:
        return a == b
    if op == OP_NE:
        return a != b
    if op == OP_LT:
        return a < b
    if op == OP_LE:
        return a <= b
    if op == OP_GT:
        return a > b
    return a >= b


def binop(int op, const double[::1] a, const uint8_t[::1] am, const double[::1] b,
          const uint8_t[::1] bm, double[::1] out, uint8_t[::1] mask, bint return_bool,
          int keep):
    """out = a op b where both sides are present. Comparisons without bool filter, keeping
    side `keep` (0: a, 1: b). An empty mask view means "present at every step". Returns the
    number of present steps."""
    cdef Py_ssize_t n = out.shape[0], k, cnt = 0
    cdef bint ha = am.shape[0] > 0, hb = bm.shape[0] > 0, c
    cdef double x, y
    with nogil:
        for k in range(n):
            mask[k] = 0
            if (ha and not am[k]) or (hb and not bm[k]):
                continue
            x = a[k]
            y = b[k]
            if op >= OP_EQ:
                c = compare(op, x, y)
                if return_bool:
                    out[k] = 1.0 if c else 0.0
                elif c:
                    out[k] = y if keep == 1 else x
                else:
                    continue
            else:
                out[k] = arith(op, x, y)
            mask[k] = 1
            cnt += 1
    return cnt


# Aggregation ids.
cdef enum:
    A_SUM = 0
    A_AVG = 1
    A_COUNT = 2
    A_MIN = 3
    A_MAX = 4
    A_GROUP = 5
    A_STDDEV = 6
    A_STDVAR = 7

AGGREGATIONS = {"sum": A_SUM, "avg": A_AVG, "count": A_COUNT, "min": A_MIN, "max": A_MAX,
                "group": A_GROUP, "stddev": A_STDDEV, "stdvar": A_STDVAR}


@cython.final
cdef class Aggregator:
    """Per (group, step) state of one simple aggregation; feed series with add()."""
    cdef int op
    cdef Py_ssize_t ngroups, nsteps
    cdef double *val
    cdef double *comp
    cdef double *mean
    cdef double *count
    cdef uint8_t *seen
    cdef uint8_t *incr

    def __cinit__(self, int op, Py_ssize_t ngroups, Py_ssize_t nsteps):
        cdef Py_ssize_t total = ngroups * nsteps if ngroups * nsteps > 0 else 1
        self.op = op
        self.ngroups = ngroups
        self.nsteps = nsteps
        self.val = <double *>malloc(total * sizeof(double))
        self.comp = <double *>malloc(total * sizeof(double))
        self.mean = <double *>malloc(total * sizeof(double))
        self.count = <double *>malloc(total * sizeof(double))
        self.seen = <uint8_t *>malloc(total)
        self.incr = <uint8_t *>malloc(total)
        if (self.val == NULL or self.comp == NULL or self.mean == NULL or self.count == NULL
                or self.seen == NULL or self.incr == NULL):
            raise MemoryError()
        for k in range(total):
            self.seen[k] = 0
            self.incr[k] = 0

    def __dealloc__(self):
        free(self.val)
        free(self.comp)
        free(self.mean)
        free(self.count)
        free(self.seen)
        free(self.incr)

    def add(self, Py_ssize_t group, const double[::1] vals, const uint8_t[::1] mask):
        """Fold one input series (values over all steps, presence mask) into `group`."""
        if vals.shape[0] < self.nsteps or mask.shape[0] < self.nsteps:
            raise IndexError("series length out of range")
        if self.nsteps:
            self._add(group, &vals[0], &mask[0])

    cdef int _add(self, Py_ssize_t group, const double *vals, const uint8_t *mask) except -1:
        # vals/mask hold nsteps entries (checked by the callers).
        cdef Py_ssize_t k, i
        cdef double f, x, y, q, delta
        cdef int op = self.op
        if group < 0 or group >= self.ngroups:
            raise IndexError("group out of range")
        with nogil:
            for k in range(self.nsteps):
                if not mask[k]:
                    continue
                f = vals[k]
                i = group * self.nsteps + k
                if not self.seen[i]:
                    self.seen[i] = 1
                    self.val[i] = f
                    self.mean[i] = f
                    self.comp[i] = 0
                    self.count[i] = 1
                    self.incr[i] = 0
                    if op == A_STDDEV or op == A_STDVAR:
                        self.val[i] = NAN if (isnan(f) or isinf(f)) else 0
                    elif op == A_GROUP:
                        self.val[i] = 1
                    continue
                if op == A_SUM:
                    kahan_inc(f, &self.val[i], &self.comp[i])
                elif op == A_AVG:
                    self.count[i] += 1
                    if not self.incr[i]:
                        x = self.val[i]
                        y = self.comp[i]
                        kahan_inc(f, &x, &y)
                        if not isinf(x):
                            self.val[i] = x
                            self.comp[i] = y
                            continue
                        self.incr[i] = 1
                        self.mean[i] = self.val[i] / (self.count[i] - 1)
                        self.comp[i] /= self.count[i] - 1
                    q = (self.count[i] - 1) / self.count[i]
                    self.mean[i] = q * self.mean[i]
                    self.comp[i] = q * self.comp[i]
                    kahan_inc(f / self.count[i], &self.mean[i], &self.comp[i])
                elif op == A_COUNT:
                    self.count[i] += 1
                elif op == A_MAX:
                    if self.val[i] < f or isnan(self.val[i]):
                        self.val[i] = f
                elif op == A_MIN:
                    if self.val[i] > f or isnan(self.val[i]):
                        self.val[i] = f
                elif op == A_STDDEV or op == A_STDVAR:
                    self.count[i] += 1
                    delta = f - self.mean[i]
                    self.mean[i] += delta / self.count[i]
                    self.val[i] += delta * (f - self.mean[i])

    def result(self, Py_ssize_t group, double[::1] out, uint8_t[::1] mask):
        """Final values of `group` over all steps; returns the number of present steps."""
        cdef Py_ssize_t k, i, cnt = 0
        cdef int op = self.op
        with nogil:
            for k in range(self.nsteps):
                i = group * self.nsteps + k
                mask[k] = self.seen[i]
                if not self.seen[i]:
                    continue
                cnt += 1
                if op == A_SUM:
                    out[k] = self.val[i] + self.comp[i]
                elif op == A_AVG:
                    if self.incr[i]:
                        out[k] = self.mean[i] + self.comp[i]
                    else:
                        out[k] = self.val[i] / self.count[i] + self.comp[i] / self.count[i]
                elif op == A_COUNT:
                    out[k] = self.count[i]
                elif op == A_STDVAR:
                    out[k] = self.val[i] / self.count[i]
                elif op == A_STDDEV:
                    out[k] = sqrt(self.val[i] / self.count[i])
                else:
                    out[k] = self.val[i]
        return cnt


# ---- batch helpers: one call per node instead of one per series ---------------------------------
# The evaluator keeps a series as array('d') values + bytearray mask; these helpers take whole
# lists of them, gather raw pointers with the GIL, and loop without it. Measured with
# benchmarks/query_bench.py (per-series calls with ~10 buffer arguments each dominated instant
# queries over 10k series).

from cpython.array cimport array as carray
from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.stdio cimport snprintf
from libc.string cimport strlen
from libc.math cimport signbit
from urdar.engine.encoding cimport wbuf_t, wbuf_init, wbuf_free, wbuf_reserve, wbuf_put


from urdar.promql.bufptr cimport cdptr as dptr, qptr, mptr


cdef inline Py_ssize_t blen(object o) except -1:
    return len(o)


# Zeroed output buffers made in C: array("d", bytes(8 * n)) goes through two Python calls and
# a temporary bytes object, a cost paid per output series (most of it for one-step queries).
from cpython.array cimport clone
from cpython.bytearray cimport PyByteArray_FromStringAndSize
cdef carray _D_TEMPLATE = array("d")
cdef carray _Q_TEMPLATE = array("q")


cdef inline carray new_d(Py_ssize_t n):
    return clone(_D_TEMPLATE, n, True)


cdef inline carray new_q(Py_ssize_t n):
    return clone(_Q_TEMPLATE, n, True)


cdef inline bytearray new_mask(Py_ssize_t n):
    cdef bytearray b = PyByteArray_FromStringAndSize(NULL, n)
    if n:
        memset(PyByteArray_AS_STRING(b), 0, n)
    return b


def compress(const int64_t[::1] times, const double[::1] vals, const uint8_t[::1] mask):
    """(array('q') times, array('d') values) of the present steps only."""
    cdef Py_ssize_t n = mask.shape[0], k, c = 0, j = 0
    for k in range(n):
        c += mask[k] != 0
    ots = new_q(c)
    ovs = new_d(c)
    if c == 0:
        return ots, ovs
    cdef int64_t *ot = <int64_t *>(<carray>ots).data.as_longlongs
    cdef double *ov = (<carray>ovs).data.as_doubles
    with nogil:
        for k in range(n):
            if mask[k]:
                ot[j] = times[k]
                ov[j] = vals[k]
                j += 1
    return ots, ovs


def instant_values_many(list tss, list valss, const int64_t[::1] times, int64_t lookback):
    """instant_values for many series: [(index, vals, sample ts, mask)] of series present at
    one step at least, with fresh arrays (array('d'), array('q'), bytearray)."""
    cdef Py_ssize_t nser = len(tss), nsteps = times.shape[0], i, k, hi, n, cnt
    cdef const int64_t *ts
    cdef const double *vs
    cdef double *out
    cdef int64_t *ots
    cdef uint8_t *mk
    cdef int64_t t
    res = []
    for i in range(nser):
        ts = qptr(tss[i])
        vs = dptr(valss[i])
        n = blen(tss[i])
        ov = new_d(nsteps)
        ot = new_q(nsteps)
        om = new_mask(nsteps)
        out = (<carray>ov).data.as_doubles
        ots = <int64_t *>(<carray>ot).data.as_longlongs
        mk = <uint8_t *>PyByteArray_AS_STRING(om)
        cnt = 0
        hi = 0
        with nogil:
            for k in range(nsteps):
                t = times[k]
                if k > 0 and t < times[k - 1]:
                    hi = 0
                while hi < n and ts[hi] <= t:
                    hi += 1
                if hi > 0 and ts[hi - 1] > t - lookback and not is_stale(vs[hi - 1]):
                    out[k] = vs[hi - 1]
                    ots[k] = ts[hi - 1]
                    mk[k] = 1
                    cnt += 1
        if cnt:
            res.append((i, ov, ot, om, cnt))
    return res


cdef inline bint extreme_before(bint is_max, double a, double b) noexcept nogil:
    # Whether b beats a for max/min_over_time: NaN loses to every number (it is kept only
    # when a window holds nothing else), ties keep the earlier sample, as the scan in range_one.
    if isnan(b):
        return False
    if isnan(a):
        return True
    return b > a if is_max else b < a


cdef Py_ssize_t sliding_extreme(bint is_max, const int64_t *ts, const double *v, Py_ssize_t n,
                                const int64_t[::1] ends, int64_t range_ms, Py_ssize_t *dq,
                                double *out, uint8_t *mk) noexcept nogil:
    """max/min_over_time at every step with a monotonic deque of sample indices (each sample
    pushed and popped once), instead of scanning every window: the same values as range_one
    (the extreme is order-free; ties and NaN as above). Returns the steps with a value."""
    cdef Py_ssize_t nsteps = ends.shape[0], k, lo = 0, hi = 0, head = 0, tail = 0, cnt = 0
    cdef int64_t e
    for k in range(nsteps):
        e = ends[k]
        if k > 0 and e < ends[k - 1]:
            lo = 0
            hi = 0
            head = 0
            tail = 0
        while hi < n and ts[hi] <= e:
            while tail > head and extreme_before(is_max, v[dq[tail - 1]], v[hi]):
                tail -= 1
            dq[tail] = hi
            tail += 1
            hi += 1
        while lo < hi and ts[lo] <= e - range_ms:
            lo += 1
        while tail > head and dq[head] < lo:
            head += 1
        if tail > head:
            out[k] = v[dq[head]]
            mk[k] = 1
            cnt += 1
    return cnt


def range_values_many(int fn, list tss, list valss, const int64_t[::1] ends, int64_t range_ms,
                      const double[::1] p1, const double[::1] p2, const int64_t[::1] evals):
    """range_values for many series: [(index, vals array('d'), mask bytearray)] of the series
    with a value at one step at least."""
    cdef Py_ssize_t nser = len(tss), nsteps = ends.shape[0], i, k, lo, hi, n, cnt, maxn = 0
    cdef const int64_t *ts
    cdef const double *vs
    cdef double *out
    cdef uint8_t *mk
    cdef int64_t e
    cdef double r, a1, a2
    cdef double *scratch = NULL
    cdef bint has1 = p1.shape[0] > 0, has2 = p2.shape[0] > 0
    cdef Py_ssize_t *dq = NULL
    cdef bint sliding = fn == F_MAX or fn == F_MIN
    if fn == F_QUANTILE or fn == F_MAD or sliding:
        for i in range(nser):
            if blen(tss[i]) > maxn:
                maxn = blen(tss[i])
        if sliding:
            dq = <Py_ssize_t *>malloc((maxn + 1) * sizeof(Py_ssize_t))
            if dq == NULL:
                raise MemoryError()
        else:
            scratch = <double *>malloc((maxn + 1) * sizeof(double))
            if scratch == NULL:
                raise MemoryError()
    res = []
    try:
        for i in range(nser):
            ts = qptr(tss[i])
            vs = dptr(valss[i])
            n = blen(tss[i])
            ov = new_d(nsteps)
            om = new_mask(nsteps)
            out = (<carray>ov).data.as_doubles
            mk = <uint8_t *>PyByteArray_AS_STRING(om)
            cnt = 0
            lo = 0
            hi = 0
            if sliding:
                with nogil:
                    cnt = sliding_extreme(fn == F_MAX, ts, vs, n, ends, range_ms, dq, out, mk)
                if cnt:
                    res.append((i, ov, om))
                continue
            with nogil:
                for k in range(nsteps):
                    window_advance(ts, n, ends, k, range_ms, &lo, &hi)
                    e = ends[k]
                    a1 = p1[k] if has1 else 0
                    a2 = p2[k] if has2 else 0
                    if fn == F_PREDICT_LINEAR:
                        a2 = <double>evals[k]
                    if range_one(fn, ts + lo, vs + lo, hi - lo, e, range_ms, a1, a2, scratch, &r):
                        out[k] = r
                        mk[k] = 1
                        cnt += 1
            if cnt:
                res.append((i, ov, om))
    finally:
        free(scratch)
        free(dq)
    return res


def aggregate_many(Aggregator agg, list valss, list masks, const int64_t[::1] groups):
    """agg.add(groups[i], valss[i], masks[i]) for every i."""
    cdef Py_ssize_t i
    for i in range(len(valss)):
        agg._add(groups[i], dptr(valss[i]), mptr(masks[i]))


# ---- topk / bottomk / limitk ----------------------------------------------------------------------

cdef enum:
    K_TOP = 0
    K_BOTTOM = 1
    K_LIMIT = 2

KOPS = {"topk": K_TOP, "bottomk": K_BOTTOM, "limitk": K_LIMIT}


cdef inline bint k_less(int op, double a, double b) noexcept nogil:
    # vectorByValueHeap / vectorByReverseValueHeap Less: NaN is always "smallest".
    if isnan(a):
        return True
    return a < b if op == K_TOP else a > b


cdef void k_swap(double *hv, Py_ssize_t *hi, Py_ssize_t i, Py_ssize_t j) noexcept nogil:
    cdef double tv = hv[i]
    cdef Py_ssize_t ti = hi[i]
    hv[i] = hv[j]
    hi[i] = hi[j]
    hv[j] = tv
    hi[j] = ti


cdef void k_up(int op, double *hv, Py_ssize_t *hi, Py_ssize_t j) noexcept nogil:
    cdef Py_ssize_t i
    while j > 0:
        i = (j - 1) // 2
        if not k_less(op, hv[j], hv[i]):
            break
        k_swap(hv, hi, i, j)
        j = i


cdef bint k_down(int op, double *hv, Py_ssize_t *hi, Py_ssize_t i0, Py_ssize_t n) noexcept nogil:
    # Go's container/heap down(); True when the element moved.
    cdef Py_ssize_t i = i0, j, j1, j2
    while True:
        j1 = 2 * i + 1
        if j1 >= n:
            break
        j = j1
        j2 = j1 + 1
        if j2 < n and k_less(op, hv[j2], hv[j1]):
            j = j2
        if not k_less(op, hv[j], hv[i]):
            break
        k_swap(hv, hi, i, j)
        i = j
    return i > i0


def select_k(int op, list valss, list masks, const int64_t[::1] groups, Py_ssize_t ngroups,
             const double[::1] param, list out_masks, bint want_order):
    """topk/bottomk/limitk at every step: sets out_masks[i][k] = 1 for the selected series of
    each group, with Go's heap mechanics (same picks among ties as Prometheus). With
    want_order, returns the selected series indices in output order (single-step queries)."""
    cdef Py_ssize_t nser = len(valss), nsteps = param.shape[0], i, k, g, kk, kmax = 0, j, m
    cdef Py_ssize_t *gstart = NULL
    cdef Py_ssize_t *glen = NULL
    cdef Py_ssize_t *gsize = NULL
    cdef Py_ssize_t *hidx = NULL
    cdef double *hval = NULL
    cdef const double **vp = NULL
    cdef const uint8_t **mp = NULL
    cdef uint8_t **op_ = NULL
    cdef Py_ssize_t *order = NULL
    cdef Py_ssize_t norder = 0, total = 0
    cdef double x, p
    if nser == 0:
        return []
    try:
        gsize = <Py_ssize_t *>calloc(ngroups + 1, sizeof(Py_ssize_t))
        gstart = <Py_ssize_t *>calloc(ngroups + 1, sizeof(Py_ssize_t))
        glen = <Py_ssize_t *>calloc(ngroups + 1, sizeof(Py_ssize_t))
        vp = <const double **>malloc(nser * sizeof(double *))
        mp = <const uint8_t **>malloc(nser * sizeof(uint8_t *))
        op_ = <uint8_t **>malloc(nser * sizeof(uint8_t *))
        if gsize == NULL or gstart == NULL or glen == NULL or vp == NULL or mp == NULL or op_ == NULL:
            raise MemoryError()
        for i in range(nser):
            vp[i] = dptr(valss[i])
            mp[i] = mptr(masks[i])
            op_[i] = <uint8_t *>PyByteArray_AS_STRING(out_masks[i])
            if groups[i] < 0 or groups[i] >= ngroups:
                raise IndexError("group out of range")
            gsize[groups[i]] += 1
        for k in range(nsteps):
            p = param[k]
            kk = <Py_ssize_t>p if p < nser else nser
            if kk > kmax:
                kmax = kk
        # Heap storage per group: min(kmax, group size) slots, total <= nser.
        for g in range(ngroups):
            gstart[g] = total
            total += gsize[g] if gsize[g] < kmax else kmax
        hval = <double *>malloc((total + 1) * sizeof(double))
        hidx = <Py_ssize_t *>malloc((total + 1) * sizeof(Py_ssize_t))
        if want_order:
            order = <Py_ssize_t *>malloc((nser * nsteps + 1) * sizeof(Py_ssize_t))
        if hval == NULL or hidx == NULL or (want_order and order == NULL):
            raise MemoryError()
        with nogil:
            for k in range(nsteps):
                p = param[k]
                kk = <Py_ssize_t>p if p < nser else nser
                if kk < 1:
                    continue
                for g in range(ngroups):
                    glen[g] = 0
                for i in range(nser):
                    if not mp[i][k]:
                        continue
                    g = groups[i]
                    m = glen[g]
                    x = vp[i][k]
                    if op == K_LIMIT:
                        if m < kk:
                            hval[gstart[g] + m] = x
                            hidx[gstart[g] + m] = i
                            glen[g] = m + 1
                    elif m < kk:
                        hval[gstart[g] + m] = x
                        hidx[gstart[g] + m] = i
                        glen[g] = m + 1
                        k_up(op, hval + gstart[g], hidx + gstart[g], m)
                    elif ((op == K_TOP and hval[gstart[g]] < x)
                          or (op == K_BOTTOM and hval[gstart[g]] > x)
                          or (isnan(hval[gstart[g]]) and not isnan(x))):
                        hval[gstart[g]] = x
                        hidx[gstart[g]] = i
                        if kk > 1:
                            if not k_down(op, hval + gstart[g], hidx + gstart[g], 0, m):
                                k_up(op, hval + gstart[g], hidx + gstart[g], 0)
                for g in range(ngroups):
                    m = glen[g]
                    if m == 0:
                        continue
                    if op != K_LIMIT:
                        # Insertion sort by reverse heap order (largest first for topk).
                        for i in range(1, m):
                            j = i
                            while j > 0 and k_less(op, hval[gstart[g] + j - 1], hval[gstart[g] + j]):
                                k_swap(hval + gstart[g], hidx + gstart[g], j, j - 1)
                                j -= 1
                    for j in range(m):
                        i = hidx[gstart[g] + j]
                        op_[i][k] = 1
                        if want_order:
                            order[norder] = i
                            norder += 1
        return [order[j] for j in range(norder)] if want_order else []
    finally:
        free(gsize)
        free(gstart)
        free(glen)
        free(vp)
        free(mp)
        free(op_)
        free(hval)
        free(hidx)
        free(order)


# ---- JSON number text -----------------------------------------------------------------------------

cdef extern from "shortest.h":
    uint64_t urdar_pow5_inv[342][2]
    uint64_t urdar_pow5[326][2]
    void urdar_shortest(double v, uint64_t *digits, int32_t *exp10) noexcept nogil
    int urdar_u64_text(char *out, uint64_t a) noexcept nogil


cdef inline Py_ssize_t fmt_uint(char *out, uint64_t a) noexcept nogil:
    # Decimal digits of a (no sign), written without printf.
    return urdar_u64_text(out, a)


cdef Py_ssize_t fmt_ts(char *out, int64_t t) noexcept nogil:
    # ms -> seconds, bare when whole, else exactly three decimals (handlers/render.py).
    cdef uint64_t a = <uint64_t>(-t) if t < 0 else <uint64_t>t
    cdef uint64_t frac = a % 1000
    cdef Py_ssize_t o = 0
    if t < 0:
        out[0] = 45  # '-'
        o = 1
    o += fmt_uint(out + o, a // 1000)
    if frac:
        out[o] = 46  # '.'
        out[o + 1] = 48 + <char>(frac // 100)
        out[o + 2] = 48 + <char>(frac // 10 % 10)
        out[o + 3] = 48 + <char>(frac % 10)
        o += 4
    return o



cdef _shortest_tables():
    """Fill shortest.h's power-of-five tables from exact integers (once, at import)."""
    cdef object i, p, x
    mask = (1 << 64) - 1
    for i in range(342):
        p = 5 ** i
        x = (1 << (p.bit_length() - 1 + 125)) // p + 1
        urdar_pow5_inv[i][0] = x & mask
        urdar_pow5_inv[i][1] = x >> 64
    for i in range(326):
        p = 5 ** i
        b = p.bit_length()
        x = p >> (b - 125) if b >= 125 else p << (125 - b)
        urdar_pow5[i][0] = x & mask
        urdar_pow5[i][1] = x >> 64


_shortest_tables()


cdef Py_ssize_t fmt_value(char *out, double v) except -1:
    """Prometheus' sample value text (render.format_value) into out (>= 64 bytes)."""
    cdef char digits[32]
    cdef Py_ssize_t nd = 0, i, o = 0, point, e
    cdef int32_t exp10 = 0
    cdef uint64_t dv
    cdef bint neg
    cdef double a
    if isnan(v):
        memcpy(out, b"NaN", 3)
        return 3
    if isinf(v):
        memcpy(out, b"+Inf" if v > 0 else b"-Inf", 4)
        return 4
    if v == 0:
        if signbit(v):
            memcpy(out, b"-0", 2)
            return 2
        out[0] = 48  # '0'
        return 1
    neg = v < 0
    a = fabs(v)
    # Shortest round-trip digits (as repr() and Go's AppendFloat(v, f, -1, 64)) in C.
    urdar_shortest(a, &dv, &exp10)
    nd = urdar_u64_text(digits, dv)
    point = nd + exp10
    while nd > 1 and digits[nd - 1] == 48:
        nd -= 1
    if neg:
        out[o] = 45  # '-'
        o += 1
    if a < 1e-6 or a >= 1e21:
        e = point - 1
        out[o] = digits[0]
        o += 1
        if nd > 1:
            out[o] = 46
            o += 1
            memcpy(out + o, digits + 1, nd - 1)
            o += nd - 1
        o += snprintf(out + o, 16, "e%s%02d", "-" if e < 0 else "+", <int>(-e if e < 0 else e))
        return o
    if point <= 0:
        out[o] = 48
        out[o + 1] = 46
        o += 2
        for i in range(-point):
            out[o] = 48
            o += 1
        memcpy(out + o, digits, nd)
        return o + nd
    if point >= nd:
        memcpy(out + o, digits, nd)
        o += nd
        for i in range(point - nd):
            out[o] = 48
            o += 1
        return o
    memcpy(out + o, digits, point)
    o += point
    out[o] = 46
    o += 1
    memcpy(out + o, digits + point, nd - point)
    return o + nd - point


def format_value(double v):
    """A sample value as Prometheus writes it inside the JSON string (render.format_value)."""
    cdef char buf[64]
    cdef Py_ssize_t n = fmt_value(buf, v)
    return PyUnicode_DecodeASCII(buf, n, NULL)


cdef inline int put_point(wbuf_t *b, int64_t t, double v) except -1:
    """`[t,"v"]` into b, which has room for it (100 bytes reserved)."""
    cdef char buf[64]
    cdef Py_ssize_t m
    b.data[b.len] = 91  # '['
    b.len += 1
    b.len += fmt_ts(<char *>b.data + b.len, t)
    memcpy(b.data + b.len, b',"', 2)
    b.len += 2
    m = fmt_value(buf, v)
    memcpy(b.data + b.len, buf, m)
    b.len += m
    memcpy(b.data + b.len, b'"]', 2)
    b.len += 2
    return 0


cdef int write_points(wbuf_t *b, const int64_t[::1] ts, const double[::1] vals,
                      int64_t *op) except -1:
    """`[t,"v"],[t,"v"],...` into b; with op, where each point starts (op[i]) and
    op[n] = the text's length + 1."""
    cdef Py_ssize_t n = ts.shape[0], i
    if vals.shape[0] != n:
        raise ValueError("ts and vals lengths differ")
    for i in range(n):
        if wbuf_reserve(b, 100) != 0:
            raise MemoryError()
        if i:
            b.data[b.len] = 44  # ','
            b.len += 1
        if op != NULL:
            op[i] = b.len
        put_point(b, ts[i], vals[i])
    if op != NULL:
        op[n] = b.len + 1
    return 0


def format_points(const int64_t[::1] ts, const double[::1] vals):
    """`[t,"v"],[t,"v"],...` for a matrix series (render.render_matrix's values, no brackets)."""
    cdef wbuf_t b
    wbuf_init(&b, 32 * ts.shape[0] + 16)
    try:
        write_points(&b, ts, vals, NULL)
        return PyUnicode_DecodeASCII(<char *>b.data, b.len, NULL)
    finally:
        wbuf_free(&b)


def format_points_offsets(const int64_t[::1] ts, const double[::1] vals):
    """format_points' text as ASCII bytes, with where each point starts: (text, offs) with
    offs = array('q') of n + 1 entries, point i = text[offs[i]:offs[i + 1] - 1] and
    offs[n] == len(text) + 1 (the query-frontend's cached form, components/frontend.py)."""
    cdef Py_ssize_t n = ts.shape[0]
    cdef wbuf_t b
    offs = array("q", bytes(8 * (n + 1)))
    wbuf_init(&b, 32 * n + 16)
    try:
        write_points(&b, ts, vals, <int64_t *>(<carray>offs).data.as_longlongs)
        return PyBytes_FromStringAndSize(<char *>b.data, b.len), offs
    finally:
        wbuf_free(&b)


def claim_steps(uint8_t[::1] taken, const uint8_t[::1] mask):
    """Mark mask's steps in `taken`; True if one was taken already (a duplicate match)."""
    cdef Py_ssize_t n = mask.shape[0], k
    cdef bint dup = False
    if taken.shape[0] < n:
        raise ValueError("taken is shorter than mask")
    with nogil:
        for k in range(n):
            if mask[k]:
                if taken[k]:
                    dup = True
                    break
                taken[k] = 1
    return dup


# -- anchored / smoothed range selectors ------------------------------------------------------

cdef inline double interpolate(int64_t t1, double y1, int64_t t2, double y2, int64_t t,
                               bint counter) noexcept nogil:
    # Linear interpolation at t; a counter that dropped restarts from 0 after the reset.
    if counter and y2 < y1:
        y1 = 0
    return y1 + (y2 - y1) * <double>(t - t1) / <double>(t2 - t1)


cdef bint extended_one(int fn, const int64_t *ts, const double *v, Py_ssize_t n, int64_t rs,
                       int64_t re, int64_t range_ms, bint smoothed, double *res) noexcept nogil:
    """rate/increase/delta/changes/resets of an `anchored` or `smoothed` range selector over
    the window rs..re, given the samples of (rs - lookback, re] (anchored) or
    (rs - lookback, re + lookback] (smoothed): the value at rs is the last sample at or before
    it (anchored) or interpolated there (smoothed), likewise at re for smoothed, so nothing is
    extrapolated (Prometheus' extendedRate / pickFirstSampleIndices)."""
    cdef Py_ssize_t last, first, i, start
    cdef double left, right, result, corr, prev, cnt
    cdef bint counter
    if n == 0:
        return False
    if fn == F_CHANGES or fn == F_RESETS:
        i = 0
        while i < n and ts[i] <= rs:
            i += 1
        if i >= n:
            return False  # nothing after the range start
        start = i - 1 if i > 0 else 0
        cnt = 0
        for i in range(start + 1, n):
            if fn == F_CHANGES:
                if v[i] != v[i - 1] and not (isnan(v[i]) and isnan(v[i - 1])):
                    cnt += 1
            elif v[i] < v[i - 1]:
                cnt += 1
        res[0] = cnt
        return True
    if fn != F_RATE and fn != F_INCREASE and fn != F_DELTA:
        return False
    counter = fn != F_DELTA
    last = n - 1
    i = 0
    while i < last and ts[i] <= rs:
        i += 1
    first = i - 1 if i > 0 else 0
    if smoothed:
        i = 0
        while i < last and ts[i] < re:
            i += 1
        last = i
    if ts[last] <= rs:
        return False
    if smoothed and ts[first] > re:
        return False
    if smoothed and ts[first] < rs:
        left = interpolate(ts[first], v[first], ts[first + 1], v[first + 1], rs, counter)
    else:
        left = v[first]
    if smoothed and last > 0 and ts[last] > re:
        right = interpolate(ts[last - 1], v[last - 1], ts[last], v[last], re, counter)
    else:
        right = v[last]
    result = right - left
    if counter:
        # Resets strictly inside the window; the boundary values handle the edges.
        if ts[first] <= rs:
            first += 1
        if ts[last] >= re:
            last -= 1
        corr = 0
        prev = left
        for i in range(first, last + 1):
            if v[i] < prev:
                corr += prev
            prev = v[i]
        if right < prev:
            corr += prev
        result += corr
    if fn == F_RATE:
        result /= range_ms / 1000.0
    res[0] = result
    return True


def extended_range_many(int fn, list tss, list valss, const int64_t[::1] ends, int64_t range_ms,
                        int64_t lookback, bint smoothed):
    """range_values_many for an `anchored` (smoothed false) or `smoothed` range selector:
    each step's window (end - range_ms, end] also sees the samples up to `lookback` before it
    (and, smoothed, after it). [(index, vals array('d'), mask bytearray)] as there."""
    cdef Py_ssize_t nser = len(tss), nsteps = ends.shape[0], i, k, lo, hi, n, cnt
    cdef const int64_t *ts
    cdef const double *vs
    cdef double *out
    cdef uint8_t *mk
    cdef int64_t e, rs, after = lookback if smoothed else 0
    cdef double r
    res = []
    for i in range(nser):
        ts = qptr(tss[i])
        vs = dptr(valss[i])
        n = blen(tss[i])
        ov = array("d", bytes(8 * nsteps))
        om = bytearray(nsteps)
        out = (<carray>ov).data.as_doubles
        mk = <uint8_t *>PyByteArray_AS_STRING(om)
        cnt = 0
        lo = 0
        hi = 0
        with nogil:
            for k in range(nsteps):
                e = ends[k]
                rs = e - range_ms
                if k > 0 and e < ends[k - 1]:
                    lo = 0
                    hi = 0
                while hi < n and ts[hi] <= e + after:
                    hi += 1
                while lo < hi and ts[lo] <= rs - lookback:
                    lo += 1
                if extended_one(fn, ts + lo, vs + lo, hi - lo, rs, e, range_ms, smoothed, &r):
                    out[k] = r
                    mk[k] = 1
                    cnt += 1
        if cnt:
            res.append((i, ov, om))
    return res


def smoothed_values_many(list tss, list valss, const int64_t[::1] refs, int64_t lookback):
    """A `smoothed` instant vector selector: per step reference time t, the sample at t, else
    the value interpolated between the samples around t, else the newest one before t, all
    within (t - lookback, t + lookback]. [(index, vals array('d'), mask bytearray)]."""
    cdef Py_ssize_t nser = len(tss), nsteps = refs.shape[0], i, k, lo, hi, j, n, cnt
    cdef const int64_t *ts
    cdef const double *vs
    cdef double *out
    cdef uint8_t *mk
    cdef int64_t t
    res = []
    for i in range(nser):
        ts = qptr(tss[i])
        vs = dptr(valss[i])
        n = blen(tss[i])
        ov = array("d", bytes(8 * nsteps))
        om = bytearray(nsteps)
        out = (<carray>ov).data.as_doubles
        mk = <uint8_t *>PyByteArray_AS_STRING(om)
        cnt = 0
        lo = 0
        hi = 0
        with nogil:
            for k in range(nsteps):
                t = refs[k]
                if k > 0 and t < refs[k - 1]:
                    lo = 0
                    hi = 0
                while hi < n and ts[hi] <= t + lookback:
                    hi += 1
                while lo < hi and ts[lo] <= t - lookback:
                    lo += 1
                j = lo
                while j < hi and ts[j] < t:
                    j += 1
                if j < hi and ts[j] == t:
                    out[k] = vs[j]
                elif j > lo and j < hi:
                    out[k] = interpolate(ts[j - 1], vs[j - 1], ts[j], vs[j], t, False)
                elif j > lo:
                    out[k] = vs[j - 1]
                else:
                    continue
                mk[k] = 1
                cnt += 1
        if cnt:
            res.append((i, ov, om))
    return res


# -- xxHash64 (seed 0): Prometheus' labels.Hash, used by limit_ratio's sampler ---------------

cdef uint64_t XXP1 = 0x9E3779B185EBCA87ULL
cdef uint64_t XXP2 = 0xC2B2AE3D27D4EB4FULL
cdef uint64_t XXP3 = 0x165667B19E3779F9ULL
cdef uint64_t XXP4 = 0x85EBCA77C2B2AE63ULL
cdef uint64_t XXP5 = 0x27D4EB2F165667C5ULL


cdef inline uint64_t xx_rotl(uint64_t x, int r) noexcept nogil:
    return (x << r) | (x >> (64 - r))


cdef inline uint64_t xx_read64(const uint8_t *p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(8):
        v |= (<uint64_t>p[i]) << (8 * i)
    return v


cdef inline uint64_t xx_round(uint64_t acc, uint64_t inp) noexcept nogil:
    acc = acc + inp * XXP2
    acc = xx_rotl(acc, 31)
    return acc * XXP1


cdef inline uint64_t xx_merge(uint64_t acc, uint64_t val) noexcept nogil:
    acc = acc ^ xx_round(0, val)
    return acc * XXP1 + XXP4


def xxh64(const uint8_t[::1] data):
    """XXH64 of data with seed 0 (the hash Go's github.com/cespare/xxhash computes)."""
    cdef Py_ssize_t n = data.shape[0], i = 0
    cdef const uint8_t *p = &data[0] if n > 0 else NULL
    cdef uint64_t h, v1, v2, v3, v4, k
    with nogil:
        if n >= 32:
            v1 = XXP1 + XXP2
            v2 = XXP2
            v3 = 0
            v4 = <uint64_t>0 - XXP1
            while i + 32 <= n:
                v1 = xx_round(v1, xx_read64(p + i))
                v2 = xx_round(v2, xx_read64(p + i + 8))
                v3 = xx_round(v3, xx_read64(p + i + 16))
                v4 = xx_round(v4, xx_read64(p + i + 24))
                i += 32
            h = xx_rotl(v1, 1) + xx_rotl(v2, 7) + xx_rotl(v3, 12) + xx_rotl(v4, 18)
            h = xx_merge(h, v1)
            h = xx_merge(h, v2)
            h = xx_merge(h, v3)
            h = xx_merge(h, v4)
        else:
            h = XXP5
        h = h + <uint64_t>n
        while i + 8 <= n:
            k = xx_round(0, xx_read64(p + i))
            h = h ^ k
            h = xx_rotl(h, 27) * XXP1 + XXP4
            i += 8
        if i + 4 <= n:
            k = (<uint64_t>p[i]) | (<uint64_t>p[i + 1] << 8) | (<uint64_t>p[i + 2] << 16) | \
                (<uint64_t>p[i + 3] << 24)
            h = h ^ (k * XXP1)
            h = xx_rotl(h, 23) * XXP2 + XXP3
            i += 4
        while i < n:
            h = h ^ ((<uint64_t>p[i]) * XXP5)
            h = xx_rotl(h, 11) * XXP1
            i += 1
        h = h ^ (h >> 33)
        h = h * XXP2
        h = h ^ (h >> 29)
        h = h * XXP3
        h = h ^ (h >> 32)
    return h


# -- start timestamps -------------------------------------------------------------------------
# A series whose samples carry start timestamps (ST: when the counter started counting towards
# the sample; 0 = unknown) lets rate/increase/irate/resets see resets that values alone hide and
# replace the extrapolation to the left by the zero value at the first sample's ST.

cdef inline bint st_reset(int64_t prev_st, int64_t prev_t, int64_t cur_st,
                          int64_t cur_t) noexcept nogil:
    """Whether cur's start timestamp says the counter restarted after prev (Prometheus'
    isStartTimestampReset, OTel's delta / unknown-start cases included)."""
    if cur_st == 0 or cur_st >= cur_t:
        return False  # unknown, invalid, or OTel's "start unknown" (ST == T)
    if cur_st < prev_t:
        return False
    if cur_st > prev_t:
        return True
    # ST == previous T: a delta sample, unless prev's own start was unknown (cumulative with
    # unknown start) or invalid.
    if prev_st > prev_t:
        return False
    return prev_st != 0 and prev_st != prev_t


cdef inline bint st_overlap(int64_t prev_st, int64_t prev_t, int64_t cur_st) noexcept nogil:
    return cur_st != 0 and cur_st < prev_t and cur_st != prev_st


cdef bint st_range_one(int fn, const int64_t *ts, const double *v, const int64_t *st,
                       Py_ssize_t n, int64_t end, int64_t range_ms, double *res,
                       bint *overlap) noexcept nogil:
    cdef Py_ssize_t i
    cdef double result, to_start, to_end, sampled, avg, thr, to_zero, factor, cnt
    cdef int64_t start = end - range_ms
    if n == 0:
        return False
    if fn == F_RESETS:
        cnt = 0
        for i in range(1, n):
            if v[i] < v[i - 1] or st_reset(st[i - 1], ts[i - 1], st[i], ts[i]):
                cnt += 1
        res[0] = cnt
        return True
    if fn == F_IRATE:
        if n < 2 or ts[n - 1] == ts[n - 2]:
            return False
        if v[n - 1] < v[n - 2] or st_reset(st[n - 2], ts[n - 2], st[n - 1], ts[n - 1]):
            result = v[n - 1]
        else:
            result = v[n - 1] - v[n - 2]
        res[0] = result / ((ts[n - 1] - ts[n - 2]) / 1000.0)
        return True
    if fn != F_RATE and fn != F_INCREASE:
        return False
    result = v[n - 1] - v[0]
    for i in range(1, n):
        if not overlap[0] and st_overlap(st[i - 1], ts[i - 1], st[i]):
            overlap[0] = True
        if v[i] < v[i - 1] or st_reset(st[i - 1], ts[i - 1], st[i], ts[i]):
            result += v[i - 1]
    to_start = (ts[0] - start) / 1000.0
    to_end = (end - ts[n - 1]) / 1000.0
    sampled = (ts[n - 1] - ts[0]) / 1000.0
    avg = sampled / (n - 1) if n > 1 else 0.0
    thr = avg * 1.1
    if st[0] != 0 and st[0] > start and st[0] < ts[0]:
        # A zero at the first sample's start time replaces extrapolating to the left.
        to_start = 0
        sampled = (ts[n - 1] - st[0]) / 1000.0
        result += v[0]
    elif n == 1:
        return False
    else:
        if to_start >= thr:
            to_start = avg / 2
        to_zero = to_start
        if result > 0 and v[0] >= 0:
            to_zero = sampled * (v[0] / result)
        if to_zero < to_start:
            to_start = to_zero
    if to_end >= thr:
        to_end = avg / 2
    factor = 1.0
    if sampled != 0:
        factor = (sampled + to_start + to_end) / sampled
    if fn == F_RATE:
        factor /= range_ms / 1000.0
    res[0] = result * factor
    return True


def st_range_many(int fn, list tss, list valss, list stss, const int64_t[::1] ends,
                  int64_t range_ms):
    """range_values_many for rate/increase/irate/resets over series with start timestamps
    (stss[i] aligned with tss[i], 0 = unknown): [(index, vals, mask, overlap)], overlap true
    when a sample's start time overlaps the previous sample (rate/increase warn about it)."""
    cdef Py_ssize_t nser = len(tss), nsteps = ends.shape[0], i, k, lo, hi, n, cnt
    cdef const int64_t *ts
    cdef const int64_t *st
    cdef const double *vs
    cdef double *out
    cdef uint8_t *mk
    cdef double r
    cdef bint overlap
    res = []
    for i in range(nser):
        ts = qptr(tss[i])
        vs = dptr(valss[i])
        st = qptr(stss[i])
        n = blen(tss[i])
        if blen(stss[i]) != n:
            raise ValueError("start timestamps do not align with the samples")
        ov = array("d", bytes(8 * nsteps))
        om = bytearray(nsteps)
        out = (<carray>ov).data.as_doubles
        mk = <uint8_t *>PyByteArray_AS_STRING(om)
        cnt = 0
        lo = 0
        hi = 0
        overlap = False
        with nogil:
            for k in range(nsteps):
                window_advance(ts, n, ends, k, range_ms, &lo, &hi)
                if st_range_one(fn, ts + lo, vs + lo, st + lo, hi - lo, ends[k], range_ms, &r,
                                &overlap):
                    out[k] = r
                    mk[k] = 1
                    cnt += 1
        if cnt or overlap:
            res.append((i, ov, om, overlap))
    return res


def filter_stale_st(const int64_t[::1] ts, const double[::1] vals, const int64_t[::1] sts):
    """filter_stale for a series with start timestamps: (ts, vals, sts) or None."""
    cdef Py_ssize_t n = ts.shape[0], i, k = 0, stale = 0
    for i in range(n):
        if is_stale(vals[i]):
            stale += 1
    if stale == 0:
        return None
    ots = array("q", bytes(8 * (n - stale)))
    ovs = array("d", bytes(8 * (n - stale)))
    osts = array("q", bytes(8 * (n - stale)))
    cdef int64_t[::1] ot = ots
    cdef double[::1] ov = ovs
    cdef int64_t[::1] os = osts
    for i in range(n):
        if not is_stale(vals[i]):
            ot[k] = ts[i]
            ov[k] = vals[i]
            os[k] = sts[i]
            k += 1
    return ots, ovs, osts
