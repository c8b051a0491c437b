# cython: language_level=3
"""Merging of sample streams from several sources (head, blocks) into one per series.

Each source gives a series as sorted (array('q') timestamps, array('d') values). Sources
may overlap (blocks shipped by several ingesters, the head and a block just cut); the merge
keeps one sample per timestamp, preferring the earlier source, like Prometheus' chained
series merge. The loop runs without the GIL."""
cimport cython
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free
from array import array


@cython.boundscheck(False)
@cython.wraparound(False)
cdef Py_ssize_t merge2(const int64_t *at, const double *av, Py_ssize_t na,
                       const int64_t *bt, const double *bv, Py_ssize_t nb,
                       int64_t *ot, double *ov) noexcept nogil:
    # bounds are checked by construction: i < na, j < nb, k < na + nb (merge_samples sizes ot)
    cdef Py_ssize_t i = 0, j = 0, k = 0
    while i < na and j < nb:
        if at[i] < bt[j]:
            ot[k] = at[i]; ov[k] = av[i]; i += 1
        elif at[i] > bt[j]:
            ot[k] = bt[j]; ov[k] = bv[j]; j += 1
        else:
            ot[k] = at[i]; ov[k] = av[i]; i += 1; j += 1
        k += 1
    while i < na:
        ot[k] = at[i]; ov[k] = av[i]; i += 1; k += 1
    while j < nb:
        ot[k] = bt[j]; ov[k] = bv[j]; j += 1; k += 1
    return k


def merge_samples(parts):
    """Merge [(ts, vals), ...] (each sorted by time) into one (array('q'), array('d')).

    At equal timestamps the sample of the earlier part wins."""
    cdef const int64_t[::1] at, bt
    cdef const double[::1] av, bv
    cdef int64_t[::1] ot
    cdef double[::1] ov
    cdef Py_ssize_t n
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return array("q"), array("d")
    ts, vs = parts[0]
    for nt, nv in parts[1:]:
        at = ts; av = vs; bt = nt; bv = nv
        if len(at) != len(av) or len(bt) != len(bv):
            raise ValueError("timestamps and values differ in length")
        out_t = array("q", bytes(8 * (len(at) + len(bt))))
        out_v = array("d", bytes(8 * (len(at) + len(bt))))
        ot = out_t; ov = out_v
        with nogil:
            n = merge2(&at[0], &av[0], at.shape[0], &bt[0], &bv[0], bt.shape[0], &ot[0], &ov[0])
        ot = None  # release the buffers before resizing the arrays
        ov = None
        del out_t[n:]
        del out_v[n:]
        ts, vs = out_t, out_v
    return ts, vs
