"""Persistent blocks, Prometheus' on-disk layout: `<ULID>/{meta.json, index, chunks/, tombstones}`.

write_block turns finished chunks (from compaction of the head, or a test) into a block
directory, atomically (written under `<ULID>.tmp-for-creation`, fsync'd, renamed).
BlockReader opens one for the store-gateway/querier side: meta, the mmap'd index
(engine/index) and chunk segments (engine/chunkfile), and decodes XOR chunks to arrays.
ULIDs (block ids) are made and validated here too. Pure composition of the compiled
modules: the byte work happens in index.pyx, chunkfile.pyx and xorchunk.pyx."""
import json
import os
import shutil
import struct
import time
from array import array

from urdar.engine import faults as _faults
from urdar.engine.chunkfile import ChunkReader, ChunkWriter, DEFAULT_SEGMENT_BYTES
from urdar.engine.errors import CorruptionError, UnsupportedChunkEncoding
from urdar.engine.histchunk import HistogramChunkError, decode_histogram_chunk
from urdar.engine.index import IndexReader, sort_label_keys, write_index
from urdar.engine.querier import read_chunks

ENC_XOR = 1
ENC_HISTOGRAM = 2
ENC_FLOAT_HISTOGRAM = 3
META_VERSION = 1
TMP_CREATION_SUFFIX = ".tmp-for-creation"
TMP_DELETION_SUFFIX = ".tmp-for-deletion"
TOMBSTONES_MAGIC = 0x0130BA30

# ---- ULIDs --------------------------------------------------------------------------

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_VALUE = {c: i for i, c in enumerate(_CROCKFORD)}


def new_ulid(t_ms=None, rand=None):
    """A new ULID string: 48-bit Unix time in ms (now by default) then 80 random bits
    (os.urandom by default), as 26 upper-case Crockford base32 characters."""
    if t_ms is None:
        t_ms = time.time_ns() // 1_000_000
    if not 0 <= t_ms < 1 << 48:
        raise ValueError("ULID time %r out of range" % (t_ms,))
    if rand is None:
        rand = int.from_bytes(os.urandom(10), "big")
    if not 0 <= rand < 1 << 80:
        raise ValueError("ULID randomness out of range")
    v = (t_ms << 80) | rand
    return "".join(_CROCKFORD[(v >> (5 * (25 - i))) & 31] for i in range(26))


def parse_ulid(s):
    """(t_ms, random int) of a canonical ULID string; ValueError unless it is exactly 26
    upper-case Crockford base32 characters that fit 128 bits."""
    if not isinstance(s, str) or len(s) != 26:
        raise ValueError("not a ULID: %r" % (s,))
    v = 0
    for c in s:
        d = _CROCKFORD_VALUE.get(c)
        if d is None:
            raise ValueError("not a ULID (bad character %r): %r" % (c, s))
        v = (v << 5) | d
    if v >> 128:
        raise ValueError("ULID overflows 128 bits: %r" % (s,))
    return v >> 80, v & ((1 << 80) - 1)


def is_ulid(s):
    """True when `s` is a canonical ULID string (a safe block directory name)."""
    try:
        parse_ulid(s)
    except ValueError:
        return False
    return True


# ---- writing ------------------------------------------------------------------------

def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path, data):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _chunk_samples(enc, data):
    """Sample count from a chunk's 2-byte big-endian header (XOR and histogram chunks)."""
    if len(data) < 2:
        return 0
    return (data[0] << 8) | data[1]


def meta_json(meta):
    """meta.json bytes the way Prometheus writes them (tab-indented JSON)."""
    return json.dumps(meta, indent="\t").encode() + b"\n"


def write_block(parent_dir, mint, maxt, series, ulid=None, level=1, sources=None, parents=None,
                segment_bytes=DEFAULT_SEGMENT_BYTES, extra_meta=None):
    """Write a block covering [mint, maxt) ms under `parent_dir`; returns its ULID string.

    `series` is an iterable of (label key bytes, chunks), chunks being (mint, maxt,
    encoding, data) with inclusive sample times inside [mint, maxt); series and chunks may
    come in any order. level/sources/parents fill meta.json's compaction section
    (sources defaults to [ulid]; parents are dicts {ulid, minTime, maxTime}); extra_meta
    keys (e.g. "thanos") are merged into meta.json. The directory appears atomically."""
    if maxt <= mint:
        raise ValueError("block range [%d, %d) is empty" % (mint, maxt))
    ulid = new_ulid() if ulid is None else ulid
    parse_ulid(ulid)
    parent_dir = os.fspath(parent_dir)
    final = os.path.join(parent_dir, ulid)
    if os.path.exists(final):
        raise FileExistsError(final)
    tmp = final + TMP_CREATION_SUFFIX
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        items = [(bytes(k), sorted(chunks, key=lambda c: c[0])) for k, chunks in series]
        order = sort_label_keys([k for k, _ in items])
        n_samples = n_float = n_hist = n_chunks = 0
        index_series = []
        with ChunkWriter(os.path.join(tmp, "chunks"), segment_bytes) as cw:
            for i in order:
                key, chunks = items[i]
                metas = []
                for cmint, cmaxt, enc, data in chunks:
                    if cmint < mint or cmaxt >= maxt or cmaxt < cmint:
                        raise ValueError("chunk [%d, %d] of series %r is outside block [%d, %d)"
                                         % (cmint, cmaxt, key, mint, maxt))
                    ref = cw.write(enc, data)
                    metas.append((cmint, cmaxt, ref))
                    ns = _chunk_samples(enc, data)
                    n_samples += ns
                    if enc in (ENC_HISTOGRAM, ENC_FLOAT_HISTOGRAM):
                        n_hist += ns
                    else:
                        n_float += ns
                n_chunks += len(metas)
                index_series.append((key, metas))
        _faults.check("block_write", tmp)     # tests: a disk that fills up mid-block
        write_index(os.path.join(tmp, "index"), index_series)
        # An empty tombstones file: magic, version 1, CRC32C of no entries (0).
        _write_file(os.path.join(tmp, "tombstones"), struct.pack(">IBI", TOMBSTONES_MAGIC, 1, 0))
        stats = {}
        for name, v in (("numSamples", n_samples), ("numFloatSamples", n_float),
                        ("numHistogramSamples", n_hist), ("numSeries", len(items)),
                        ("numChunks", n_chunks)):
            if v:
                stats[name] = v
        compaction = {"level": level, "sources": list(sources) if sources else [ulid]}
        if parents:
            compaction["parents"] = [dict(p) for p in parents]
        meta = {"ulid": ulid, "minTime": mint, "maxTime": maxt, "stats": stats,
                "compaction": compaction, "version": META_VERSION}
        if extra_meta:
            meta.update(extra_meta)
        _write_file(os.path.join(tmp, "meta.json"), meta_json(meta))
        _fsync_dir(tmp)
        os.rename(tmp, final)
        _fsync_dir(parent_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ulid


def read_meta(block_dir):
    """meta.json of a block as a dict (unknown keys kept); CorruptionError when unusable."""
    path = os.path.join(os.fspath(block_dir), "meta.json")
    try:
        with open(path, "rb") as f:
            meta = json.loads(f.read())
    except ValueError as e:
        raise CorruptionError(path, None, "meta.json is not JSON: %s" % e) from None
    if not isinstance(meta, dict) or meta.get("version") != META_VERSION:
        raise CorruptionError(path, None, "meta.json version must be 1, got %r"
                              % (meta.get("version") if isinstance(meta, dict) else meta))
    for k in ("ulid", "minTime", "maxTime"):
        if k not in meta:
            raise CorruptionError(path, None, "meta.json lacks %r" % k)
    return meta


# ---- reading ------------------------------------------------------------------------

class BlockReader:
    """One block directory opened for reading: `meta` (dict), `index` (IndexReader) and
    `chunks` (ChunkReader), all mmap'd until close()."""

    def __init__(self, block_dir, verify=False):
        self.dir = os.fspath(block_dir)
        self.meta = read_meta(self.dir)
        self.ulid = self.meta["ulid"]
        self.mint = self.meta["minTime"]
        self.maxt = self.meta["maxTime"]
        self.index = IndexReader(os.path.join(self.dir, "index"))
        try:
            self.chunks = ChunkReader(os.path.join(self.dir, "chunks"), verify=verify)
        except BaseException:
            self.index.close()
            raise

    def series_chunks(self, sid):
        """(mint, maxt, encoding, memoryview) of each chunk of series `sid`, in time order.
        The views pin the chunk mapping: release them before close()."""
        _, mints, maxts, refs = self.index.series(sid)
        out = []
        for cmint, cmaxt, ref in zip(mints, maxts, refs):
            enc, view = self.chunks.chunk(ref)
            out.append((cmint, cmaxt, enc, view))
        return out

    def series_samples(self, sid, mint=-(1 << 63), maxt=(1 << 63) - 1):
        """(key, ts array('q'), vals array('d')) of series `sid` for samples in [mint, maxt];
        a series with native histogram samples there gives (key, ts, vals, None, hts, hvs),
        hvs FloatHistograms (the select contract of engine/head)."""
        key, mints, maxts, refs = self.index.series(sid)
        try:
            ts, vals = read_chunks(self.chunks, mints, maxts, refs, mint, maxt)
        except UnsupportedChunkEncoding as e:
            if e.encoding not in (ENC_HISTOGRAM, ENC_FLOAT_HISTOGRAM):
                raise
            return self._mixed_samples(key, mints, maxts, refs, mint, maxt)
        return key, ts, vals

    def _mixed_samples(self, key, mints, maxts, refs, mint, maxt):
        xor = ([], [], [])
        hts = array("q")
        hvs = []
        for k in range(len(refs)):
            if maxts[k] < mint or mints[k] > maxt:
                continue
            enc, view = self.chunks.chunk(refs[k])
            if enc == ENC_XOR:
                xor[0].append(mints[k]); xor[1].append(maxts[k]); xor[2].append(refs[k])
            elif enc in (ENC_HISTOGRAM, ENC_FLOAT_HISTOGRAM):
                try:
                    ts, hs = decode_histogram_chunk(bytes(view), enc, mint, maxt)
                except HistogramChunkError as e:
                    del view
                    raise CorruptionError(os.path.join(self.dir, "chunks"), refs[k] & 0xFFFFFFFF,
                                          "histogram chunk (ref 0x%x): %s" % (refs[k], e)) from None
                hts.extend(ts)
                hvs.extend(h.to_float() for h in hs)
            else:
                raise UnsupportedChunkEncoding(enc, refs[k])
            del view
        ts, vals = read_chunks(self.chunks, array("q", xor[0]), array("q", xor[1]),
                               array("Q", xor[2]), mint, maxt)
        if len(hts) and any(hts[i] >= hts[i + 1] for i in range(len(hts) - 1)):
            # chunks of two sources overlapping in one block (not compacted yet)
            order = sorted(set(hts))
            first = {}
            for t, h in zip(hts, hvs):
                first.setdefault(t, h)
            hts, hvs = array("q", order), [first[t] for t in order]
        if len(hts):
            return key, ts, vals, None, hts, hvs
        return key, ts, vals

    def iter_series(self, mint=-(1 << 63), maxt=(1 << 63) - 1, ids=None):
        """Yield (key, ts array('q'), vals array('d')) per series with samples in [mint, maxt]
        (inclusive ms), in index order; `ids` restricts it to given series ids (postings)."""
        for sid in (self.index.all_postings() if ids is None else ids):
            item = self.series_samples(sid, mint, maxt)
            if len(item[1]) or len(item) > 3:
                yield item

    def close(self):
        """Unmap index and chunks; BufferError if chunk views are still alive."""
        self.chunks.close()
        self.index.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
