"""How much freed memory glibc's malloc keeps for reuse, for processes that read blocks.

A long-range query decodes tens of MB of samples into arrays (engine/querier.decode_chunk_parts
in the store-gateway's pool threads) that live until the query is evaluated. By default glibc
gives the free top of a thread's heap back to the kernel as soon as it passes a few hundred KB
(MADV_DONTNEED), so the next query page-faults every page in again: about a third of a 7-day
query's CPU was the kernel zeroing and mapping those pages (benchmarks/storage_bench.py, perf).
M_TOP_PAD keeps up to `nbytes` of freed top per heap instead, as Go's runtime keeps freed spans
for a while; the cost is that much resident memory per heap that ever held it. An operator's
GLIBC_TUNABLES malloc settings win: nothing is changed then."""
import ctypes
import os
import platform

M_TOP_PAD = -2                      # mallopt parameter number (malloc.h)
QUERY_HEAP_PAD_BYTES = 32 << 20     # two decode threads' share of a 7-day, 100-series query

_applied: list[bool] = []


def retain_freed_heap(nbytes: int = QUERY_HEAP_PAD_BYTES) -> bool:
    """Set glibc's M_TOP_PAD to at least `nbytes` once per process; whether it is set (False
    off glibc, or when GLIBC_TUNABLES already sets malloc tunables)."""
    if _applied:
        return _applied[0]
    ok = False
    if platform.libc_ver()[0] == "glibc" and "glibc.malloc." not in os.environ.get("GLIBC_TUNABLES", ""):
        try:
            mallopt = ctypes.CDLL(None).mallopt
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            mallopt.restype = ctypes.c_int
            ok = mallopt(M_TOP_PAD, int(nbytes)) == 1
        except (OSError, AttributeError):
            ok = False
    _applied.append(ok)
    return ok
