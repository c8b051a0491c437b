"""Reference model of Prometheus' native histogram chunk encodings 2 (integer) and 3 (float),
for tests only.

Written from the format description (FORMAT.md, Prometheus' chunkenc docs), deliberately naive:
the bitstream is a string of '0'/'1'. It encodes samples that already share one bucket layout
(the appender's job of widening layouts is not modelled here; tests feed it the samples as
urdar's chunk holds them). urdar never imports this module."""
import math
import struct

STALE_NAN_BITS = 0x7FF0000000000002
_VARBIT = ((3, "10"), (6, "110"), (9, "1110"), (12, "11110"), (18, "111110"), (25, "1111110"),
           (56, "11111110"))
_HEADER = {0: 0x00, 1: 0x80, 2: 0x40, 3: 0xC0}


def fbits(v):
    return struct.unpack(">Q", struct.pack(">d", v))[0]


def _bits(value, width):
    return format(value & ((1 << width) - 1), "0%db" % width) if width else ""


def varbit_int(v):
    if v == 0:
        return "0"
    for n, prefix in _VARBIT:
        if -((1 << (n - 1)) - 1) <= v <= (1 << (n - 1)):
            return prefix + _bits(v, n)
    return "11111111" + _bits(v, 64)


def varbit_uint(u):
    if u == 0:
        return "0"
    for n, prefix in _VARBIT:
        if u < (1 << n):
            return prefix + _bits(u, n)
    return "11111111" + _bits(u, 64)


class _Xor:
    """One XOR-compressed value stream (Gorilla value block with its own window)."""

    def __init__(self, first):
        self.prev = fbits(first)
        self.lead = None
        self.trail = None

    def put(self, v):
        x = fbits(v) ^ self.prev
        self.prev = fbits(v)
        if x == 0:
            return "0"
        lead = 64 - x.bit_length()
        trail = (x & -x).bit_length() - 1
        lead = min(lead, 31)
        if self.lead is not None and lead >= self.lead and trail >= self.trail:
            return "10" + _bits(x >> self.trail, 64 - self.lead - self.trail)
        self.lead, self.trail = lead, trail
        sig = 64 - lead - trail
        return "11" + _bits(lead, 5) + _bits(sig, 6) + _bits(x >> trail, sig)


def _zero_threshold(zt):
    if zt == 0:
        return _bits(0, 8)
    m, e = math.frexp(zt)
    if m == 0.5 and -242 <= e <= 11:
        return _bits(e + 243, 8)
    return _bits(255, 8) + _bits(fbits(zt), 64)


def _custom_bound(b):
    scaled = b * 1000
    r = math.floor(scaled + 0.5)
    if 0 <= scaled <= 33554430 and r / 1000 == b:
        return varbit_uint(int(r) + 1)
    return "0" + _bits(fbits(b), 64)


def _layout(h):
    out = _zero_threshold(h.zero_threshold) + varbit_int(h.schema)
    for spans in (h.positive_spans, h.negative_spans):
        out += varbit_uint(len(spans))
        for off, length in spans:
            out += varbit_uint(length) + varbit_int(off)
    if h.schema == -53:
        out += varbit_uint(len(h.custom_values))
        for b in h.custom_values:
            out += _custom_bound(b)
    return out


def encode(samples, header_hint=0, float_histograms=False):
    """Chunk bytes for [(t, h)] in one layout; header_hint numbered as histogram.py's hints."""
    bits = ""
    prev_t = prev_dt = 0
    for i, (t, h) in enumerate(samples):
        stale = fbits(h.sum) == STALE_NAN_BITS
        if i == 0:
            bits += _layout(h) + varbit_int(t)
            if float_histograms:
                bits += "".join(_bits(fbits(v), 64) for v in (h.count, h.zero_count, h.sum))
                bits += "".join(_bits(fbits(v), 64) for v in h.positive_buckets + h.negative_buckets)
                streams = [_Xor(h.count), _Xor(h.zero_count), _Xor(h.sum)]
                buckets = [_Xor(v) for v in h.positive_buckets + h.negative_buckets]
            else:
                bits += varbit_uint(h.count) + varbit_uint(h.zero_count) + _bits(fbits(h.sum), 64)
                bits += "".join(varbit_int(v) for v in h.positive_buckets + h.negative_buckets)
                sum_stream = _Xor(h.sum)
                prev = [h.count, h.zero_count]
                prev_d = [0, 0]
                prev_b = list(h.positive_buckets + h.negative_buckets)
                prev_bd = [0] * len(prev_b)
            prev_t, prev_dt = t, 0
            continue
        dt = t - prev_t
        bits += varbit_int(dt - prev_dt)
        prev_t, prev_dt = t, dt
        if float_histograms:
            bits += streams[0].put(0.0 if stale else h.count)
            bits += streams[1].put(0.0 if stale else h.zero_count)
            bits += streams[2].put(h.sum)
            if not stale:
                for k, v in enumerate(h.positive_buckets + h.negative_buckets):
                    bits += buckets[k].put(v)
            continue
        cur = [0, 0] if stale else [h.count, h.zero_count]
        for k in range(2):
            d = cur[k] - prev[k]
            bits += "0" if stale else varbit_int(d - prev_d[k])
            prev[k], prev_d[k] = cur[k], d
        bits += sum_stream.put(h.sum)
        if not stale:
            for k, v in enumerate(h.positive_buckets + h.negative_buckets):
                d = v - prev_b[k]
                bits += varbit_int(d - prev_bd[k])
                prev_b[k], prev_bd[k] = v, d
    bits += "0" * (-len(bits) % 8)
    body = bytes(int(bits[k:k + 8], 2) for k in range(0, len(bits), 8))
    return struct.pack(">HB", len(samples), _HEADER[header_hint]) + body
