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


# ---- one block series in one call ---------------------------------------------------------------
# BlockReader.series_samples decoded chunk by chunk through Python (a memoryview, two arrays
# and two extends per chunk); this reads all of a series' overlapping chunks straight from the
# mapped segments into one pair of arrays (benchmarks/query_bench.py, range queries over blocks).

from cpython.array cimport array as carray, clone, resize
from libc.stdint cimport uint8_t, uint64_t
from urdar.engine.chunkfile cimport ChunkReader
from urdar.engine.xorchunk cimport xor_num_samples, xor_decode_range
from urdar.engine.errors import CorruptionError, UnsupportedChunkEncoding

cdef carray _I64 = array("q")
cdef carray _F64 = array("d")


def read_chunks(ChunkReader cr, const int64_t[::1] mints, const int64_t[::1] maxts,
                const uint64_t[::1] refs, int64_t mint, int64_t maxt):
    """(array('q'), array('d')) of the samples in [mint, maxt] (ms, inclusive) of the XOR
    chunks refs[i] (time-ordered, covering [mints[i], maxts[i]]) held by `cr`."""
    cdef Py_ssize_t nchunks = refs.shape[0], k, total = 0, n = 0, got
    cdef const uint8_t *p
    cdef size_t plen = 0
    cdef uint8_t enc = 0
    cdef int cnt
    if mints.shape[0] != nchunks or maxts.shape[0] != nchunks:
        raise ValueError("chunk metadata arrays differ in length")
    if cr._closed:
        raise ValueError("ChunkReader is closed")
    for k in range(nchunks):
        if maxts[k] < mint or mints[k] > maxt:
            continue
        p = cr.cr_chunk_checked(refs[k], &plen, &enc, cr._verify)
        if p == NULL:
            cr._raise(refs[k], enc)
        if enc != 1:
            raise UnsupportedChunkEncoding(enc, refs[k])
        cnt = xor_num_samples(p, plen)
        if cnt < 0:
            raise CorruptionError(cr._dir, refs[k] & 0xFFFFFFFF, "XOR chunk header (ref 0x%x)" % refs[k])
        total += cnt
    cdef carray ts = clone(_I64, total, False)
    cdef carray vs = clone(_F64, total, False)
    for k in range(nchunks):
        if maxts[k] < mint or mints[k] > maxt:
            continue
        p = cr.cr_chunk_checked(refs[k], &plen, &enc, False)
        with nogil:
            got = xor_decode_range(p, plen, mint, maxt, <int64_t *>ts.data.as_longlongs + n,
                                   vs.data.as_doubles + n, total - n)
        if got < 0:
            raise CorruptionError(cr._dir, refs[k] & 0xFFFFFFFF, "XOR chunk does not decode (ref 0x%x)" % refs[k])
        n += got
    if n != total:
        resize(ts, n)
        resize(vs, n)
    return ts, vs


# ---- one series over several bucket blocks in one call --------------------------------------------
# The store-gateway used to decode each chunk into its own pair of arrays, extend per-block arrays
# with them and merge the blocks' arrays pairwise (components/sources.merge_series): two Python
# calls and three copies per chunk. This walks a series' chunks of every block (blocks in time
# order) and decodes them straight into one pair of arrays.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE


cdef Py_ssize_t _decode_run(const uint8_t **ps, const size_t *lens, Py_ssize_t nchunks,
                            int64_t mint, int64_t maxt, int64_t *ot, double *ov,
                            Py_ssize_t total) noexcept nogil:
    # samples decoded; -1 corrupt; -2 not strictly ascending (the writer's order is checked at
    # every step, chunk boundaries included)
    cdef Py_ssize_t n = 0, got, i, c
    for c in range(nchunks):
        got = xor_decode_range(ps[c], lens[c], mint, maxt, ot + n, ov + n, total - n)
        if got < 0:
            return -1
        if got:
            if n and ot[n] <= ot[n - 1]:
                return -2
            for i in range(n + 1, n + got):
                if ot[i] <= ot[i - 1]:
                    return -2
            n += got
    return n


def decode_chunk_parts(parts, int64_t mint, int64_t maxt):
    """(array('q'), array('d')) of the samples in [mint, maxt] (ms, inclusive) of one series
    whose chunks are spread over `parts`, one per block in time order, each a sequence of the
    block's chunks of the series in time order as (encoding, data bytes). None when the chunks
    cannot be laid end to end: one is not XOR (histograms), or the samples are not strictly
    after those before them (overlapping blocks or chunks); the caller then merges block by
    block. The decoding runs without the GIL: several threads decode different series at once."""
    cdef Py_ssize_t total = 0, n = 0, nchunks = 0, k = 0
    cdef int cnt
    cdef const uint8_t **ps
    cdef size_t *lens
    datas = []
    for part in parts:
        for enc, data in part:
            if enc != 1:
                return None
            if not isinstance(data, bytes):
                raise TypeError("chunk data must be bytes")
            datas.append(data)
    nchunks = len(datas)
    ps = <const uint8_t **>malloc(sizeof(uint8_t *) * (nchunks + 1))
    lens = <size_t *>malloc(sizeof(size_t) * (nchunks + 1))
    if ps == NULL or lens == NULL:
        free(ps)
        free(lens)
        raise MemoryError()
    try:
        for data in datas:
            ps[k] = <const uint8_t *>PyBytes_AS_STRING(data)
            lens[k] = <size_t>PyBytes_GET_SIZE(data)
            cnt = xor_num_samples(ps[k], lens[k])
            if cnt < 0:
                raise CorruptionError("<xor chunk>", 0, "XOR chunk header")
            total += cnt
            k += 1
        ts = clone(_I64, total, False)
        vs = clone(_F64, total, False)
        with nogil:
            n = _decode_run(ps, lens, nchunks, mint, maxt,
                            <int64_t *>(<carray>ts).data.as_longlongs,
                            (<carray>vs).data.as_doubles, total)
    finally:
        free(ps)
        free(lens)
    if n == -2:
        return None
    if n < 0:
        raise CorruptionError("<xor chunk>", 0, "XOR chunk does not decode")
    if n != total:
        resize(ts, n)
        resize(vs, n)
    return ts, vs


def chunk_slice(const int64_t[::1] mints, const int64_t[::1] maxts, int64_t mint, int64_t maxt):
    """(k0, k1): the chunks k0 <= k < k1 of a series are those overlapping [mint, maxt], when
    its chunks are in time order (mints and maxts ascending, as writers leave them); None when
    they are not (the caller then tests each chunk)."""
    cdef Py_ssize_t n = mints.shape[0], k, k0, k1
    if maxts.shape[0] != n:
        raise ValueError("chunk metadata arrays differ in length")
    with nogil:
        for k in range(1, n):
            if mints[k] < mints[k - 1] or maxts[k] < maxts[k - 1]:
                break
        else:
            k = n
    if k < n:
        return None
    k0 = 0
    while k0 < n and maxts[k0] < mint:
        k0 += 1
    k1 = k0
    while k1 < n and mints[k1] <= maxt:
        k1 += 1
    return k0, k1
