"""Instant-vector label work and vector matching in C loops, for promql/evaluator.py.

An instant query over 10k series spent most of its time in per-series Python: generator
expressions building match signatures and grouping keys, a dict and a sort per output label
set, and one kernel call with freshly allocated one-step arrays per matched pair
(benchmarks/query_bench.py, `group_left`). These helpers do the same work in typed loops:
label sets are tuples of sorted (name, value) pairs of str, as everywhere in the evaluator;
the arithmetic itself stays in promql/kernels.binop (one call over all pairs, so there is one
copy of Prometheus' operator semantics)."""

cimport cython
from libc.stdint cimport uint8_t
from libc.string cimport memcpy, memset
from cpython.array cimport array as carray
from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_AS_STRING

from array import array

from urdar.promql import kernels as K
from urdar.promql.value import QueryError, Series

cdef str NAME = "__name__"
cdef frozenset METADATA = frozenset(("__name__", "__type__", "__unit__"))


from urdar.promql.bufptr cimport mdptr as dptr, cdptr, mptr


cdef inline tuple sig_of(object labels, frozenset names, bint keep):
    # keep: the pairs named in `names` (on(...), by(...)); else all others but __name__
    # (ignoring(...), without(...)). Checked indexing throughout: a label set is a tuple of
    # (name, value) pairs, but nothing here may crash if one is not.
    cdef list out = []
    for p in labels:
        name = p[0]
        if keep:
            if name in names:
                out.append(p)
        elif name not in names and name != NAME:
            out.append(p)
    return tuple(out)


def signatures(list series, frozenset names, bint keep):
    """Per series (anything with .labels) its match signature: with keep, the label pairs
    named in `names`; else the pairs not named there, without __name__."""
    return [sig_of(s.labels, names, keep) for s in series]


def group_index(list series, frozenset names, bint keep):
    """(keys, groups): the distinct signatures (as signatures()) in first-seen order and, per
    series, the index of its own in keys (array('q'))."""
    cdef dict index = {}
    cdef list keys = []
    cdef Py_ssize_t i, n = len(series)
    groups = array("q", bytes(8 * n))
    cdef long long *g = (<carray>groups).data.as_longlongs
    for i in range(n):
        key = sig_of(series[i].labels, names, keep)
        gi = index.get(key)
        if gi is None:
            gi = index[key] = len(keys)
            keys.append(key)
        g[i] = gi
    return keys, groups


def by_signature(list series, list sigs):
    """{signature: [series with it]} in series order."""
    cdef dict out = {}
    cdef Py_ssize_t i
    for i in range(len(series)):
        key = sigs[i]
        lst = out.get(key)
        if lst is None:
            out[key] = [series[i]]
        else:
            (<list>lst).append(series[i])
    return out


cdef tuple _result_labels(object lhs, object rhs, bint drop_meta, bint one_to_one, bint on,
                          frozenset names, tuple incl):
    cdef Py_ssize_t j
    cdef list d = []
    for p in lhs:
        name = p[0]
        if drop_meta and name in METADATA:
            continue
        if one_to_one:
            if on:
                if name not in names:
                    continue
            elif name in names:
                continue
        d.append(p)
    if incl:
        for ln in incl:
            v = ""
            for p in rhs:
                if p[0] == ln:
                    v = p[1]
                    break
            # d is sorted by name (names are unique): replace, insert in order, or drop.
            for j in range(len(d)):
                name = d[j][0]
                if name == ln:
                    if v:
                        d[j] = (ln, v)
                    else:
                        del d[j]
                    break
                if name > ln:
                    if v:
                        d.insert(j, (ln, v))
                    break
            else:
                if v:
                    d.append((ln, v))
    return tuple(d)


def result_labels(lhs, rhs, bint drop_meta, bint one_to_one, bint on,
                  frozenset names, tuple incl):
    """The labels of `lhs op rhs` as Prometheus' resultMetric builds them: lhs without the
    metadata labels when the operator changes the schema, cut to the matching labels
    (one-to-one on) or without them (one-to-one ignoring), then each `incl` label
    (group_left/right) copied from rhs (dropped where rhs has none)."""
    return _result_labels(lhs, rhs, drop_meta, one_to_one, on, names, incl)


@cython.boundscheck(False)
@cython.wraparound(False)
def match_floats(int bop, bint cmp, bint return_bool, bint one_to_one, bint swapped,
                 Py_ssize_t n, list lhs, list lsigs, dict right, dict claimed,
                 bint drop_meta, bint on, frozenset names, tuple incl):
    """The float-only vector matching of eval_vector_binop (no fill, no histograms): every
    lhs series against the rhs series of its signature (rhs already the "one" side; swapped:
    the operands' original order is rhs op lhs). `claimed` carries the steps matched so far
    per signature (one-to-one) or per (signature, labels) across calls, so the caller may
    pass lhs in slices. Returns the output series in Prometheus' order; raises QueryError on
    a duplicate match."""
    cdef Py_ssize_t i, j, k, p, npairs = 0, cnt
    cdef list pl = [], pr = []
    for i in range(len(lhs)):
        rs = right.get(lsigs[i])
        if rs is None:
            continue
        for r in <list>rs:
            pl.append(i)
            pr.append(r)
    npairs = len(pl)
    if npairs == 0:
        return []
    cdef Py_ssize_t total = npairs * n
    a = array("d", bytes(8 * total))
    b = array("d", bytes(8 * total))
    am = bytearray(total)
    bm = bytearray(total)
    cdef double *ap = (<carray>a).data.as_doubles
    cdef double *bp = (<carray>b).data.as_doubles
    cdef uint8_t *amp = <uint8_t *>PyByteArray_AS_STRING(am)
    cdef uint8_t *bmp = <uint8_t *>PyByteArray_AS_STRING(bm)
    for p in range(npairs):
        s = lhs[<Py_ssize_t>pl[p]]
        r = pr[p]
        x, y = (r, s) if swapped else (s, r)
        if len(x.vals) != n or len(y.vals) != n or len(x.mask) != n or len(y.mask) != n:
            raise ValueError("series of the wrong length")
        memcpy(ap + p * n, cdptr(x.vals), n * sizeof(double))
        memcpy(bp + p * n, cdptr(y.vals), n * sizeof(double))
        memcpy(amp + p * n, mptr(x.mask), n)
        memcpy(bmp + p * n, mptr(y.mask), n)
    ov = array("d", bytes(8 * total))
    om = bytearray(total)
    K.binop(bop, a, am, b, bm, ov, om, True, 0)
    cdef uint8_t *omp = <uint8_t *>PyByteArray_AS_STRING(om)
    cdef uint8_t *kmp = omp
    kv = ov
    km = om
    if cmp:
        kv = array("d", bytes(8 * total))
        km = bytearray(total)
        K.binop(bop, a, am, b, bm, kv, km, return_bool, 0)
        kmp = <uint8_t *>PyByteArray_AS_STRING(km)
    cdef uint8_t *pm
    cdef bint any_k
    out = []
    for p in range(npairs):
        cnt = 0
        for k in range(p * n, p * n + n):
            cnt += omp[k]
        if cnt == 0:
            continue    # no step with both sides: not a match
        i = pl[p]
        s = lhs[i]
        r = pr[p]
        key = lsigs[i]
        labels = _result_labels(s.labels, r.labels, drop_meta, one_to_one, on, names, incl)
        ck = key if one_to_one else (key, labels)
        prev = claimed.get(ck)
        if prev is None:
            claimed[ck] = om[p * n:p * n + n]
        else:
            pm = <uint8_t *>PyByteArray_AS_STRING(prev)
            for k in range(n):
                if omp[p * n + k]:
                    if pm[k]:
                        if one_to_one:
                            raise QueryError("multiple matches for labels: many-to-one matching "
                                             "must be explicit (group_left/group_right)")
                        raise QueryError("multiple matches for labels: grouping labels must "
                                         "ensure unique matches")
                    pm[k] = 1
        if cmp and not return_bool:
            any_k = False
            for k in range(p * n, p * n + n):
                if kmp[k]:
                    any_k = True
                    break
            if any_k:
                out.append(Series(labels, kv[p * n:p * n + n], km[p * n:p * n + n], False))
        elif cmp:
            out.append(Series(labels, kv[p * n:p * n + n], km[p * n:p * n + n], return_bool))
        else:
            out.append(Series(labels, ov[p * n:p * n + n], om[p * n:p * n + n], return_bool))
    return out


@cython.boundscheck(False)
@cython.wraparound(False)
def scalar_floats(int bop, list series, scalar, bint swap, bint return_bool, bint drop,
                  Py_ssize_t n):
    """vector op scalar (scalar op vector with swap) over float-only series: the output
    series with a value at one step at least; comparisons without bool keep the vector's
    value. drop: the outputs lose __name__ (arithmetic, bool), else keep the input's flag."""
    cdef Py_ssize_t ns = len(series), i, k, cnt
    if ns == 0:
        return []
    if len(scalar) != n:
        raise ValueError("scalar of the wrong length")
    cdef Py_ssize_t total = ns * n
    v = array("d", bytes(8 * total))
    vm = bytearray(total)
    sc = array("d", bytes(8 * total))
    cdef double *vp = (<carray>v).data.as_doubles
    cdef double *sp = (<carray>sc).data.as_doubles
    cdef uint8_t *vmp = <uint8_t *>PyByteArray_AS_STRING(vm)
    cdef const double *scp = cdptr(scalar)
    for i in range(ns):
        s = series[i]
        if len(s.vals) != n or len(s.mask) != n:
            raise ValueError("series of the wrong length")
        memcpy(vp + i * n, cdptr(s.vals), n * sizeof(double))
        memcpy(vmp + i * n, mptr(s.mask), n)
        memcpy(sp + i * n, scp, n * sizeof(double))
    ov = array("d", bytes(8 * total))
    om = bytearray(total)
    if swap:
        K.binop(bop, sc, b"", v, vm, ov, om, return_bool, 1)
    else:
        K.binop(bop, v, vm, sc, b"", ov, om, return_bool, 0)
    cdef uint8_t *omp = <uint8_t *>PyByteArray_AS_STRING(om)
    out = []
    for i in range(ns):
        cnt = 0
        for k in range(i * n, i * n + n):
            cnt += omp[k]
        if cnt:
            s = series[i]
            out.append(Series(s.labels, ov[i * n:i * n + n], om[i * n:i * n + n],
                              True if drop else s.drop_name))
    return out


# ---- selection ------------------------------------------------------------------------------------

def split_selected(items, dict cache, decode, list sts, list hists, list hsts):
    """The evaluator's _select loop: ([(labels, ts, vals)], sample count) of a Queryable's
    items (label key, ts, vals[, sts[, hist times, hists[, hist sts]]]). Label keys (bytes)
    become label tuples through `cache` ({key: labels}; misses go to decode(key), which fills
    it). With sts / hists / hsts lists, each series' start timestamps (or None), its
    (hist times, hists) (or None; their count is added) and its histogram start timestamps
    (or None) are appended to them."""
    cdef list out = []
    cdef Py_ssize_t total = 0, n
    for item in items:
        n = len(item)
        key = item[0]
        ts = item[1]
        if sts is not None:
            sts.append(item[3] if n > 3 else None)
        if hsts is not None:
            hsts.append(item[6] if n > 6 and item[4] is not None and len(item[4]) else None)
        if hists is not None:
            if n > 5 and item[4] is not None and len(item[4]):
                hists.append((item[4], item[5]))
                total += len(item[4])
            else:
                hists.append(None)
        if type(key) is bytes:
            labels = cache.get(key)
            if labels is None:
                labels = decode(key)
        elif isinstance(key, (bytearray, memoryview)):
            labels = decode(bytes(key))
        else:
            labels = tuple(key)
        out.append((labels, ts, item[2]))
        total += len(ts)
    return out, total


cdef extern from *:
    """
    static inline uint64_t urdar_vec_f64_bits(double v) { uint64_t u; memcpy(&u, &v, 8); return u; }
    """
    unsigned long long urdar_vec_f64_bits(double v) nogil

cdef unsigned long long STALE_BITS = 0x7ff0000000000002ULL


def drop_stale(list data):
    """[(labels, ts, vals, False)] of the (labels, ts, vals) items with at least one sample
    once staleness markers are dropped (promql/kernels.filter_stale, called only for the
    series that have a marker)."""
    cdef list out = []
    cdef const double *vp
    cdef Py_ssize_t i, n
    cdef bint stale
    for item in data:
        labels, ts, vals = item
        n = len(vals)
        if len(ts) != n:
            raise ValueError("timestamps and values differ in length")
        stale = False
        if n:
            vp = cdptr(vals)
            for i in range(n):
                if urdar_vec_f64_bits(vp[i]) == STALE_BITS:
                    stale = True
                    break
        if stale:
            ts, vals = K.filter_stale(ts, vals)
            n = len(ts)
        if n:
            out.append((labels, ts, vals, False))
    return out


cdef tuple _without_meta(tuple labels):
    cdef list out = None
    cdef Py_ssize_t i, n = len(labels)
    for i in range(n):
        p = labels[i]
        if p[0] in METADATA:
            if out is None:
                out = list(labels[:i])
        elif out is not None:
            out.append(p)
    return labels if out is None else tuple(out)


def instant_samples(list series):
    """The samples of an instant query's final vector: [(labels, value)] of the float series
    (promql.value.Series, one step) present at their step, metadata labels dropped where the
    series says so, in series order; QueryError when two have the same label set. None when
    a series has histogram samples (the evaluator's Python path handles those)."""
    cdef list out = []
    cdef set seen = set()
    for s in series:
        if (<object>s).hists is not None:
            return None
    for s in series:
        mask = (<object>s).mask
        if not mask[0]:
            continue
        labels = (<object>s).labels
        if (<object>s).drop_name:
            labels = _without_meta(labels) if type(labels) is tuple else \
                tuple([p for p in labels if p[0] not in METADATA])
        if labels in seen:
            raise QueryError("vector cannot contain metrics with the same labelset")
        seen.add(labels)
        out.append((labels, (<object>s).vals[0]))
    return out


def any_hists(list series):
    """Whether one of the series (promql.value.Series) has histogram samples."""
    for s in series:
        if (<object>s).hists is not None:
            return True
    return False
