# cython: language_level=3
"""Disk fault injection (see faults.pxd): tests arm a site with an errno, optionally only for
paths under one directory and only a number of times; the engine's write paths then fail there
exactly as a full or broken disk makes them fail, and work again once the fault is cleared."""
import errno as _errno
import os

from libc.string cimport strncmp, strlen, memcpy

SITES = {"wal_write": FAULT_WAL_WRITE, "wal_sync": FAULT_WAL_SYNC, "wal_create": FAULT_WAL_CREATE,
         "head_chunks": FAULT_HEAD_CHUNKS, "block_write": FAULT_BLOCK_WRITE}

cdef extern from *:
    """
    #define urdar_fault_dec(p) __atomic_sub_fetch((p), 1, __ATOMIC_RELAXED)
    """
    long urdar_fault_dec(long *p) nogil

ctypedef struct fault_t:
    int err             # errno to fail with; 0 = not armed
    bint limited        # False = fail until cleared
    long remaining      # failures left when limited (may go below zero)
    long hits           # failures delivered so far
    char prefix[4096]   # only paths starting with this fail ("" = every path)

cdef fault_t _faults[FAULT_N_SITES]
cdef int _armed = 0


cdef int fault_hit(int site, const char *path) noexcept nogil:
    cdef fault_t *f
    if not _armed or site < 0 or site >= FAULT_N_SITES:
        return 0
    f = &_faults[site]
    if f.err == 0:
        return 0
    if f.prefix[0] and (path == NULL or strncmp(path, f.prefix, strlen(f.prefix)) != 0):
        return 0
    if f.limited and urdar_fault_dec(&f.remaining) < 0:
        return 0
    f.hits += 1
    return -f.err


cdef int _site(name) except -1:
    try:
        return SITES[name]
    except KeyError:
        raise ValueError("unknown fault site %r (one of %s)" % (name, ", ".join(sorted(SITES))))


def inject(site, err=_errno.ENOSPC, times=None, under=None):
    """Make `site` fail with OSError(err) from now on: `times` times (None = until cleared),
    only for paths under directory `under` when given."""
    cdef int k = _site(site)
    global _armed
    prefix = os.fsencode(os.path.abspath(under)) if under is not None else b""
    if len(prefix) >= 4096:
        raise ValueError("path prefix too long")
    if err <= 0:
        raise ValueError("err must be a positive errno")
    _faults[k].err = 0
    memcpy(_faults[k].prefix, <const char *>prefix, len(prefix))
    _faults[k].prefix[len(prefix)] = 0
    _faults[k].limited = times is not None
    _faults[k].remaining = 0 if times is None else int(times)
    _faults[k].hits = 0
    _faults[k].err = err
    _armed = 1


def clear(site=None):
    """Disarm `site`, or every site."""
    global _armed
    for name, k in SITES.items():
        if site is None or name == site:
            _faults[k].err = 0
    _armed = any(_faults[k].err for k in SITES.values())


def hits(site):
    """How many failures `site` has delivered since it was armed."""
    return _faults[_site(site)].hits


def check(site, path):
    """For Python write paths: raise the armed OSError when `site` fails for `path`."""
    cdef int k = _site(site)
    b = os.fsencode(os.path.abspath(path))
    cdef int rc = fault_hit(k, b)
    if rc:
        raise OSError(-rc, "%s (injected)" % os.strerror(-rc), os.fsdecode(b))
