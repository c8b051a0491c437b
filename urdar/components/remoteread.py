"""Remote read 1.0 on the wire (urdar/proto/read.proto): request decoding, both response encodings.

`decode_read_request(raw)` takes the snappy-decompressed body and returns the queries
[(start ms, end ms, [Matcher])] and the accepted response types. `encode_read_response` writes a
ReadResponse (SAMPLES: every sample of every series, one QueryResult per query; the handler
snappy-compresses it). `chunked_frames` writes STREAMED_XOR_CHUNKS: one ChunkedReadResponse per
series (split when its chunks pass `max_frame_bytes`), each framed as
uvarint(len) · CRC-32C(message) big-endian · message, with XOR chunks of at most 120 samples.
Plain Python over small per-series loops; the handler runs it in the query pool."""
import struct

from urdar.engine.encoding import crc32c
from urdar.engine.histchunk import encode_histogram_samples
from urdar.engine.labels import decode_labels
from urdar.engine.matchers import Matcher
from urdar.engine.prompbhist import encode_histogram
from urdar.engine.xorchunk import encode_xor

SAMPLES = 0
STREAMED_XOR_CHUNKS = 1
RESPONSE_TYPE_NAMES = {SAMPLES: "SAMPLES", STREAMED_XOR_CHUNKS: "STREAMED_XOR_CHUNKS"}
MATCH_KINDS = {0: "=", 1: "!=", 2: "=~", 3: "!~"}
SAMPLES_PER_CHUNK = 120
MAX_FRAME_BYTES = 1 << 20
XOR_ENCODING = 1


class DecodeError(ValueError):
    """A malformed ReadRequest."""


# ---- protobuf primitives ---------------------------------------------------------------------

def _uvarint(buf, pos, end):
    result = shift = 0
    while True:
        if pos >= end:
            raise DecodeError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise DecodeError("varint overflows 64 bits")


def _fields(buf, pos, end):
    """Yield (field number, wire type, value) where value is an int or a (start, stop) span."""
    while pos < end:
        key, pos = _uvarint(buf, pos, end)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, pos = _uvarint(buf, pos, end)
            yield num, wt, v
        elif wt == 2:
            n, pos = _uvarint(buf, pos, end)
            if pos + n > end:
                raise DecodeError("length-delimited field %d runs past its message" % num)
            yield num, wt, (pos, pos + n)
            pos += n
        elif wt == 1:
            if pos + 8 > end:
                raise DecodeError("truncated fixed64")
            yield num, wt, (pos, pos + 8)
            pos += 8
        elif wt == 5:
            if pos + 4 > end:
                raise DecodeError("truncated fixed32")
            yield num, wt, (pos, pos + 4)
            pos += 4
        else:
            raise DecodeError("unsupported wire type %d" % wt)


def _int64(v):
    return v - (1 << 64) if v >= (1 << 63) else v


def _put_uvarint(out, v):
    if v < 0:
        v += 1 << 64
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _uvarint_bytes(v):
    out = bytearray()
    _put_uvarint(out, v)
    return bytes(out)


def _put_bytes(out, tag, data):
    out.append(tag)
    _put_uvarint(out, len(data))
    out += data


def _text(buf, span):
    try:
        return bytes(buf[span[0]:span[1]]).decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("string field is not valid UTF-8") from None


# ---- ReadRequest -----------------------------------------------------------------------------

def decode_read_request(raw):
    """(queries [(start ms, end ms, [Matcher])], accepted response types [int])."""
    buf = memoryview(raw)
    queries, accepted = [], []
    for num, wt, v in _fields(buf, 0, len(buf)):
        if num == 1 and wt == 2:
            queries.append(_decode_query(buf, *v))
        elif num == 2 and wt == 0:
            accepted.append(v)
        elif num == 2 and wt == 2:       # packed repeated enum
            p, e = v
            while p < e:
                x, p = _uvarint(buf, p, e)
                accepted.append(x)
    return queries, accepted


def _decode_query(buf, pos, end):
    start = stop = 0
    matchers = []
    for num, wt, v in _fields(buf, pos, end):
        if num == 1 and wt == 0:
            start = _int64(v)
        elif num == 2 and wt == 0:
            stop = _int64(v)
        elif num == 3 and wt == 2:
            kind, name, value = 0, "", ""
            for n2, w2, v2 in _fields(buf, *v):
                if n2 == 1 and w2 == 0:
                    kind = v2
                elif n2 == 2 and w2 == 2:
                    name = _text(buf, v2)
                elif n2 == 3 and w2 == 2:
                    value = _text(buf, v2)
            if kind not in MATCH_KINDS:
                raise DecodeError("unknown label matcher type %d" % kind)
            try:
                matchers.append(Matcher(MATCH_KINDS[kind], name, value))
            except ValueError as exc:
                raise DecodeError(str(exc)) from None
    return start, stop, matchers


def encode_read_request(queries, accepted=()):
    """The inverse of decode_read_request, for tests and tools: queries [(start, end, [(kind
    int, name, value)])]."""
    out = bytearray()
    for start, end, matchers in queries:
        q = bytearray()
        q.append(0x08)
        _put_uvarint(q, start)
        q.append(0x10)
        _put_uvarint(q, end)
        for kind, name, value in matchers:
            m = bytearray()
            if kind:
                m.append(0x08)
                _put_uvarint(m, kind)
            _put_bytes(m, 0x12, name.encode())
            _put_bytes(m, 0x1A, value.encode())
            _put_bytes(q, 0x1A, m)
        _put_bytes(out, 0x0A, q)
    for t in accepted:
        out.append(0x10)
        _put_uvarint(out, t)
    return bytes(out)


# ---- responses -------------------------------------------------------------------------------

def _labels_message(out, key):
    for name, value in decode_labels(key):
        lab = bytearray()
        _put_bytes(lab, 0x0A, name.encode("utf-8", "surrogateescape"))
        _put_bytes(lab, 0x12, value.encode("utf-8", "surrogateescape"))
        _put_bytes(out, 0x0A, lab)


_SAMPLE = struct.Struct("<BBBdB")


def encode_read_response(results):
    """ReadResponse bytes for results = one [(label key, ts, vals)] per query."""
    out = bytearray()
    for series in results:
        qr = bytearray()
        for item in series:
            key, ts, vs = item[0], item[1], item[2]
            s = bytearray()
            _labels_message(s, key)
            for t, v in zip(ts, vs):
                tb = _uvarint_bytes(t)
                # Sample{value=1 (fixed64), timestamp=2 (varint)} inside TimeSeries.samples=2.
                s += _SAMPLE.pack(0x12, 10 + len(tb), 0x09, v, 0x10)
                s += tb
            if len(item) > 4:
                # native histograms: TimeSeries.histograms=4, prompb.Histogram with float counts
                for t, h in zip(item[4], item[5]):
                    _put_bytes(s, 0x22, encode_histogram(t, h))
            _put_bytes(qr, 0x0A, s)
        _put_bytes(out, 0x0A, qr)
    return bytes(out)


def _chunk_message(ts, vs, lo, hi):
    c = bytearray()
    c.append(0x08)
    _put_uvarint(c, ts[lo])
    c.append(0x10)
    _put_uvarint(c, ts[hi - 1])
    c.append(0x18)
    c.append(XOR_ENCODING)
    _put_bytes(c, 0x22, encode_xor(ts[lo:hi], vs[lo:hi]))
    return bytes(c)


def _histogram_chunk_message(chunk):
    mint, maxt, enc, data = chunk
    c = bytearray()
    c.append(0x08)
    _put_uvarint(c, mint)
    c.append(0x10)
    _put_uvarint(c, maxt)
    c.append(0x18)
    c.append(enc)
    _put_bytes(c, 0x22, data)
    return bytes(c)


def frame(message):
    """uvarint(len) · CRC-32C of the message (4 bytes, big-endian) · message."""
    return _uvarint_bytes(len(message)) + struct.pack(">I", crc32c(message)) + message


def chunked_frames(query_index, series, max_frame_bytes=MAX_FRAME_BYTES,
                   samples_per_chunk=SAMPLES_PER_CHUNK):
    """Yield framed ChunkedReadResponse messages for one query's [(key, ts, vals)] (native
    histograms of 6-tuples as float histogram chunks, Chunk.type 3, after the XOR chunks)."""
    for item in series:
        key, ts, vs = item[0], item[1], item[2]
        labels = bytearray()
        _labels_message(labels, key)
        pending, size = [], 0
        n = len(ts)
        chunks = [_chunk_message(ts, vs, lo, min(n, lo + samples_per_chunk))
                  for lo in range(0, n, samples_per_chunk)]
        if len(item) > 4 and len(item[4]):
            chunks.extend(_histogram_chunk_message(c) for c in encode_histogram_samples(
                list(zip(item[4], item[5])), samples_per_chunk))
        for chunk in chunks:
            pending.append(chunk)
            size += len(chunk)
            if size >= max_frame_bytes:
                yield _frame_series(query_index, labels, pending)
                pending, size = [], 0
        if pending:
            yield _frame_series(query_index, labels, pending)


def _frame_series(query_index, labels, chunks):
    cs = bytearray(labels)
    for c in chunks:
        _put_bytes(cs, 0x12, c)
    msg = bytearray()
    _put_bytes(msg, 0x0A, cs)
    if query_index:
        msg.append(0x10)
        _put_uvarint(msg, query_index)
    return frame(bytes(msg))
