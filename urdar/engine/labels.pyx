# cython: language_level=3
"""Canonical label-set keys (see labels.pxd): encode, decode, validate, hash.

Python-side code (remote-write decoding in tests, queries, block writing) converts
between a sorted list of (name, value) str pairs and the key bytes the engine stores."""
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcmp
from urdar.engine.encoding cimport rbuf_t, rbuf_init, rbuf_uvarint, rbuf_uvarint_bytes, rbuf_left
from urdar.engine.labels cimport key_hash
from urdar.engine.shardhash cimport shard_hash as _shard_hash


def encode_labels(pairs):
    """Key bytes for an iterable of (name, value) pairs; sorts by name and drops empty values.

    Raises ValueError on a duplicate label name."""
    items = sorted((n.encode() if isinstance(n, str) else bytes(n),
                    v.encode() if isinstance(v, str) else bytes(v)) for n, v in pairs)
    out = bytearray()
    kept = [(n, v) for n, v in items if v]
    _put_uvarint(out, len(kept))
    prev = None
    for n, v in kept:
        if n == prev:
            raise ValueError("duplicate label name %r" % n.decode(errors="replace"))
        prev = n
        _put_uvarint(out, len(n)); out += n
        _put_uvarint(out, len(v)); out += v
    return bytes(out)


cdef _put_uvarint(bytearray out, uint64_t v):
    while v >= 0x80:
        out.append((v & 0x7f) | 0x80)
        v >>= 7
    out.append(v)


def decode_labels(const uint8_t[::1] key not None):
    """List of (name, value) str pairs of a key; ValueError if the bytes are malformed."""
    cdef rbuf_t r
    cdef size_t n
    cdef const uint8_t *p
    cdef uint64_t count, i
    rbuf_init(&r, &key[0] if key.shape[0] else NULL, key.shape[0])
    count = rbuf_uvarint(&r)
    if r.err or count > key.shape[0]:
        raise ValueError("malformed label key")
    out = []
    for i in range(count):
        p = rbuf_uvarint_bytes(&r, &n)
        if r.err:
            raise ValueError("malformed label key")
        name = (<const char *>p)[:n].decode("utf-8", "surrogateescape")
        p = rbuf_uvarint_bytes(&r, &n)
        if r.err:
            raise ValueError("malformed label key")
        out.append((name, (<const char *>p)[:n].decode("utf-8", "surrogateescape")))
    if rbuf_left(&r):
        raise ValueError("trailing bytes after label key")
    return out


cdef uint64_t open_key(rbuf_t *r, const uint8_t[::1] kb) except? 0xffffffffffffffff:
    """Start reading the canonical key kb: its label count, r at the first name."""
    cdef uint64_t count
    rbuf_init(r, &kb[0] if kb.shape[0] else NULL, kb.shape[0])
    count = rbuf_uvarint(r)
    if r.err or count > <uint64_t>kb.shape[0]:
        raise ValueError("malformed label key")
    return count


def names_of_keys(keys):
    """Sorted distinct label names of the keys (the label names API over matched series: no
    (name, value) pairs made per series); ValueError if a key is malformed."""
    cdef rbuf_t r
    cdef size_t n, j
    cdef const uint8_t *p
    cdef const uint8_t *v
    cdef const uint8_t[::1] kb
    cdef uint64_t count, i
    cdef bint found
    cdef bytes s
    seen = []               # few names: a scan with memcmp beats making a bytes per label
    for key in keys:
        kb = key
        count = open_key(&r, kb)
        for i in range(count):
            p = rbuf_uvarint_bytes(&r, &n)
            v = rbuf_uvarint_bytes(&r, &j)
            if r.err:
                raise ValueError("malformed label key")
            found = False
            for s in seen:
                if <size_t>len(s) == n and memcmp(<const char *>s, p, n) == 0:
                    found = True
                    break
            if not found:
                seen.append((<const char *>p)[:n])
    return sorted(s.decode("utf-8", "surrogateescape") for s in seen)


def values_of_keys(keys, name):
    """Sorted distinct non-empty values of label `name` in the keys (the label values API over
    matched series); ValueError if a key is malformed."""
    cdef rbuf_t r
    cdef size_t n, j
    cdef const uint8_t *p
    cdef const uint8_t *v
    cdef const uint8_t[::1] kb
    cdef uint64_t count, i
    cdef bytes nb = name.encode("utf-8", "surrogateescape")
    cdef const char *np = nb
    cdef size_t nlen = len(nb)
    values = set()
    for key in keys:
        kb = key
        count = open_key(&r, kb)
        for i in range(count):
            p = rbuf_uvarint_bytes(&r, &n)
            v = rbuf_uvarint_bytes(&r, &j)
            if r.err:
                raise ValueError("malformed label key")
            if n == nlen and memcmp(np, p, n) == 0:
                if j:
                    values.add((<const char *>v)[:j])
                break
    return sorted(b.decode("utf-8", "surrogateescape") for b in values)


def labels_dict(const uint8_t[::1] key not None):
    """The key's labels as a dict (name -> value)."""
    return dict(decode_labels(key))


def hash_key(const uint8_t[::1] key not None):
    """The head's 64-bit hash of a key (not stable across versions; never persisted)."""
    return key_hash(&key[0] if key.shape[0] else NULL, key.shape[0])


def shard_hash(const uint8_t[::1] key not None):
    """The frozen 64-bit hash of a key that places its series in a query shard (shardhash.pxd)."""
    return _shard_hash(&key[0] if key.shape[0] else NULL, key.shape[0])
