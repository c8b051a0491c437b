"""Reference model of Prometheus' XOR chunk encoding (encoding 1), for tests only.

Written from the format description (shared/reference §2), deliberately naive: the
bitstream is a Python string of '0'/'1' characters. urdar never imports this module;
tests compare urdar.engine.xorchunk against it byte for byte."""
import struct

HEADER_BYTES = 2
STALE_NAN_BITS = 0x7FF0000000000002
_DOD_BUCKETS = ((14, "10"), (17, "110"), (20, "1110"))
_MASK64 = (1 << 64) - 1


def float_bits(v):
    return struct.unpack(">Q", struct.pack(">d", v))[0]


def bits_float(b):
    return struct.unpack(">d", struct.pack(">Q", b))[0]


def _uvarint(u):
    out = bytearray()
    while True:
        if u < 0x80:
            out.append(u)
            return bytes(out)
        out.append((u & 0x7F) | 0x80)
        u >>= 7


def _varint(i):
    return _uvarint(((i << 1) ^ (i >> 63)) & _MASK64)


def _bits(value, width):
    return format(value & ((1 << width) - 1), "0%db" % width) if width else ""


def _bytes_to_bits(b):
    return "".join(format(x, "08b") for x in b)


def _int64(u):
    u &= _MASK64
    return u - (1 << 64) if u >> 63 else u


def encode(ts, vals):
    """Return the chunk bytes for parallel sequences of int timestamps and float values."""
    assert len(ts) == len(vals) <= 0xFFFF
    s = []
    window = None                       # (leading, trailing) or None before the first block
    prev_t = prev_bits = prev_delta = 0
    for i, (t, v) in enumerate(zip(ts, vals)):
        vb = float_bits(v)
        if i == 0:
            s.append(_bytes_to_bits(_varint(t)))
            s.append(_bits(vb, 64))
        else:
            delta = (t - prev_t) & _MASK64
            if i == 1:
                s.append(_bytes_to_bits(_uvarint(delta)))
            else:
                dod = _int64(delta - prev_delta)
                if dod == 0:
                    s.append("0")
                else:
                    for width, prefix in _DOD_BUCKETS:
                        if -(2 ** (width - 1) - 1) <= dod <= 2 ** (width - 1):
                            s.append(prefix + _bits(dod, width))
                            break
                    else:
                        s.append("1111" + _bits(dod, 64))
            prev_delta = delta
            x = vb ^ prev_bits
            if x == 0:
                s.append("0")
            else:
                xs = _bits(x, 64)
                leading = min(len(xs) - len(xs.lstrip("0")), 31)
                trailing = len(xs) - len(xs.rstrip("0"))
                if window and leading >= window[0] and trailing >= window[1]:
                    s.append("10" + xs[window[0]:64 - window[1]])
                else:
                    window = (leading, trailing)
                    sig = 64 - leading - trailing
                    s.append("11" + _bits(leading, 5) + _bits(sig % 64, 6) + xs[leading:64 - trailing])
        prev_t, prev_bits = t, vb
    bits = "".join(s)
    bits += "0" * (-len(bits) % 8)
    body = bytes(int(bits[k:k + 8], 2) for k in range(0, len(bits), 8))
    return struct.pack(">H", len(ts)) + body


class _Reader:
    def __init__(self, data):
        self.bits = _bytes_to_bits(data)
        self.pos = 0

    def take(self, n):
        if self.pos + n > len(self.bits):
            raise ValueError("truncated")
        chunk = self.bits[self.pos:self.pos + n]
        self.pos += n
        return int(chunk, 2) if n else 0

    def uvarint(self):
        result = shift = 0
        for i in range(10):
            b = self.take(8)
            if i == 9 and b > 1:
                raise ValueError("varint overflows 64 bits")     # as Go's binary.Uvarint
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result
            shift += 7
        raise ValueError("varint too long")


def decode(data):
    """Return ([t...], [value bits...]) from chunk bytes; ValueError if malformed."""
    if len(data) < HEADER_BYTES:
        raise ValueError("short header")
    count = struct.unpack(">H", data[:2])[0]
    r = _Reader(bytes(data[2:]))
    ts, vbits = [], []
    t = vb = delta = 0
    leading = trailing = 0
    for i in range(count):
        if i == 0:
            u = r.uvarint()
            t = (u >> 1) ^ -(u & 1)
            vb = r.take(64)
        else:
            if i == 1:
                delta = r.uvarint()
            else:
                prefix = 0
                while prefix < 4 and r.take(1) == 1:
                    prefix += 1
                if prefix == 4:
                    dod = r.take(64)
                elif prefix:
                    width = _DOD_BUCKETS[prefix - 1][0]
                    dod = r.take(width)
                    if dod > 2 ** (width - 1):
                        dod -= 2 ** width
                else:
                    dod = 0
                delta = (delta + dod) & _MASK64
            t = _int64(t + delta)
            if r.take(1):
                if r.take(1):
                    leading = r.take(5)
                    sig = r.take(6) or 64
                    if leading + sig > 64:
                        raise ValueError("bad window")
                    trailing = 64 - leading - sig
                vb ^= r.take(64 - leading - trailing) << trailing
        ts.append(t)
        vbits.append(vb)
    return ts, vbits
