"""pprof's profile.proto (google/pprof, perftools.profiles.Profile) written by hand, gzipped.

Every profiler in urdar/profiling/ fills a `ProfileBuilder` and serves `builder.gzipped()`, which
`go tool pprof` reads. The builder interns strings (index 0 is ""), functions (name, file, first
line) and locations (function, line: one Line per Location, Python has no inlining), so a profile
with many samples of the same code stays small. Samples list their locations leaf first, as pprof
expects. Python frames are turned into locations with `location_for_code(code, lineno, module)`
(stacks sampled through a `CodeTable` are tuples of (code id, line): `add_stack`);
sites without a code object use `location(name, file, start line, line)`.

Wire format (proto3, every integer a varint; field numbers of profile.proto):
  Profile: 1 sample_type*, 2 sample*, 3 mapping*, 4 location*, 5 function*, 6 string_table*,
           9 time_nanos, 10 duration_nanos, 11 period_type, 12 period, 13 comment*, 14 default_sample_type
  ValueType: 1 type, 2 unit (string indexes)       Sample: 1 location_id (packed), 2 value (packed), 3 label*
  Label: 1 key, 2 str, 3 num, 4 num_unit           Mapping: 1 id, 5 filename, 7..9 has_functions/filenames/lines
  Location: 1 id, 2 mapping_id, 3 address, 4 line* Line: 1 function_id, 2 line
  Function: 1 id, 2 name, 3 system_name, 4 filename, 5 start_line"""
import gzip
import sys
import time

_U64 = (1 << 64) - 1


def _uvarint(out, v):
    """Append v as a protobuf varint (negative int64 values take their two's complement, 10 bytes)."""
    v &= _U64
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _field_varint(out, field, v):
    if v:                                   # proto3: zero is the default and is not written
        _uvarint(out, field << 3)
        _uvarint(out, v)


def _field_bytes(out, field, data):
    _uvarint(out, (field << 3) | 2)
    _uvarint(out, len(data))
    out += data


def _packed(out, field, values):
    if not values:
        return
    body = bytearray()
    for v in values:
        _uvarint(body, v)
    _field_bytes(out, field, body)


def _value_type(t, u):
    b = bytearray()
    _field_varint(b, 1, t)
    _field_varint(b, 2, u)
    return b


def function_name(code, module):
    """pprof function name for a Python code object: 'module.Qual.name' (Go's 'pkg.Func' shape)."""
    qual = getattr(code, "co_qualname", code.co_name)
    return "%s.%s" % (module, qual) if module else qual


class ProfileBuilder:
    """Collects one profile. `sample_types` is [(type, unit)], e.g. [("samples", "count"),
    ("cpu", "nanoseconds")]; every sample carries one value per sample type, in that order.
    `period_type` (type, unit) and `period` describe the sampling interval; `time_nanos` is the
    profile's start (Unix ns) and `duration_nanos` its length. Not thread-safe: one owner."""

    def __init__(self, sample_types, period_type=None, period=0, default_sample_type=None,
                 time_nanos=None, duration_nanos=0, comments=()):
        self._strings = {"": 0}
        self._string_list = [""]
        self._functions = {}        # (name, file, start_line) -> id
        self._function_rows = []    # (id, name idx, file idx, start_line)
        self._locations = {}        # (function id, line) -> id
        self._location_rows = []    # (id, function id, line)
        self._code_locations = {}   # (id(code), lineno) -> (location id, code)
        self._samples = []          # (location ids, values, labels)
        self.sample_types = [(self.string(t), self.string(u)) for t, u in sample_types]
        self.period_type = (self.string(period_type[0]), self.string(period_type[1])) if period_type else None
        self.period = int(period)
        self.default_sample_type = self.string(default_sample_type) if default_sample_type else 0
        self.time_nanos = time.time_ns() if time_nanos is None else int(time_nanos)
        self.duration_nanos = int(duration_nanos)
        self.comments = [self.string(c) for c in comments]
        # One mapping for the interpreter marks every location as already symbolized, so pprof
        # never tries to find a binary to read symbols from.
        self._mapping_file = self.string(sys.executable or "python")

    def string(self, s):
        """Index of s in the string table, adding it on first use."""
        i = self._strings.get(s)
        if i is None:
            i = self._strings[s] = len(self._string_list)
            self._string_list.append(s)
        return i

    def function(self, name, filename, start_line=0):
        key = (name, filename, start_line)
        fid = self._functions.get(key)
        if fid is None:
            fid = self._functions[key] = len(self._function_rows) + 1
            self._function_rows.append((fid, self.string(name), self.string(filename), int(start_line)))
        return fid

    def location(self, name, filename, start_line, line):
        """Location id of `line` inside the function (name, filename, start_line)."""
        fid = self.function(name, filename, start_line)
        key = (fid, line)
        lid = self._locations.get(key)
        if lid is None:
            lid = self._locations[key] = len(self._location_rows) + 1
            self._location_rows.append((lid, fid, int(line)))
        return lid

    def location_for_code(self, code, lineno, module=""):
        """Location id for a Python frame position (code object, line number)."""
        key = (id(code), lineno)
        hit = self._code_locations.get(key)
        if hit is None:             # the value keeps `code` alive, so its id stays unique here
            hit = self._code_locations[key] = (self.location(
                function_name(code, module), code.co_filename, code.co_firstlineno, lineno or 0), code)
        return hit[0]

    def add_sample(self, location_ids, values, labels=None):
        """One sample: location ids leaf first, one value per sample type, labels {key: str|int}."""
        if len(values) != len(self.sample_types):
            raise ValueError("sample has %d values for %d sample types" % (len(values), len(self.sample_types)))
        self._samples.append((list(location_ids), [int(v) for v in values], labels or None))

    @property
    def sample_count(self):
        return len(self._samples)

    def encode(self):
        """The Profile message as protobuf bytes (not compressed)."""
        out = bytearray()
        for t, u in self.sample_types:
            _field_bytes(out, 1, _value_type(t, u))
        for locs, values, labels in self._samples:
            s = bytearray()
            _packed(s, 1, locs)
            _packed(s, 2, values)
            if labels:
                for k, v in labels.items():
                    lb = bytearray()
                    _field_varint(lb, 1, self.string(k))
                    if isinstance(v, int):
                        _field_varint(lb, 3, v)
                    else:
                        _field_varint(lb, 2, self.string(str(v)))
                    _field_bytes(s, 3, lb)
            _field_bytes(out, 2, s)
        m = bytearray()
        _field_varint(m, 1, 1)
        _field_varint(m, 5, self._mapping_file)
        for f in (7, 8, 9):
            _field_varint(m, f, 1)
        _field_bytes(out, 3, m)
        for lid, fid, line in self._location_rows:
            loc = bytearray()
            _field_varint(loc, 1, lid)
            _field_varint(loc, 2, 1)
            ln = bytearray()
            _field_varint(ln, 1, fid)
            _field_varint(ln, 2, line)
            _field_bytes(loc, 4, ln)
            _field_bytes(out, 4, loc)
        for fid, name, filename, start in self._function_rows:
            fn = bytearray()
            _field_varint(fn, 1, fid)
            _field_varint(fn, 2, name)
            _field_varint(fn, 3, name)
            _field_varint(fn, 4, filename)
            _field_varint(fn, 5, start)
            _field_bytes(out, 5, fn)
        # The string table goes last: labels above may still have added strings.
        for s in self._string_list:
            _field_bytes(out, 6, s.encode("utf-8", "surrogateescape"))
        _field_varint(out, 9, self.time_nanos)
        _field_varint(out, 10, self.duration_nanos)
        if self.period_type:
            _field_bytes(out, 11, _value_type(*self.period_type))
        _field_varint(out, 12, self.period)
        for c in self.comments:
            _uvarint(out, 13 << 3)
            _uvarint(out, c)
        _field_varint(out, 14, self.default_sample_type)
        return bytes(out)

    def gzipped(self):
        """The profile as served over HTTP: gzip(profile.proto bytes)."""
        return gzip.compress(self.encode(), compresslevel=6, mtime=0)


class CodeTable:
    """Code objects seen in sampled stacks, so that stacks are tuples of small ints.

    A stack is a tuple of (code id, line), leaf first. Hashing such a tuple is cheap, whereas
    hashing code objects walks their constants; the table keeps every code object alive, so an id
    is never reused while the table lives. Line numbers are cached per (code, bytecode offset):
    computing f_lineno walks the line table."""
    __slots__ = ("codes", "_lines")

    def __init__(self):
        self.codes = {}             # id(code) -> (code, module name)
        self._lines = {}            # (id(code), f_lasti) -> line

    def stack(self, frame, max_depth=256):
        """The stack of `frame` (and its callers), leaf first, at most max_depth frames."""
        codes = self.codes
        lines = self._lines
        out = []
        f = frame
        while f is not None and len(out) < max_depth:
            code = f.f_code
            cid = id(code)
            if cid not in codes:
                codes[cid] = (code, f.f_globals.get("__name__", "") or "")
            key = (cid, f.f_lasti)
            line = lines.get(key)
            if line is None:
                line = lines[key] = f.f_lineno or 0
            out.append((cid, line))
            f = f.f_back
        return tuple(out)

    def code(self, cid):
        return self.codes[cid][0]

    def name(self, cid):
        code, module = self.codes[cid]
        return function_name(code, module)


def frame_stack(frame, table, max_depth=256):
    """table.stack(frame, max_depth): the (code id, line) tuple of a frame, leaf first."""
    return table.stack(frame, max_depth)


def add_stack(builder, stack, table):
    """Location ids (leaf first) for a CodeTable stack."""
    codes = table.codes
    return [builder.location_for_code(codes[cid][0], line, codes[cid][1]) for cid, line in stack]


def sampled_profile(sampler, value_type, period_type, title):
    """A ProfileBuilder from a stopped StackSampler: sample types samples/count and `value_type`
    (the default), one sample per (thread, stack) labelled thread=<name>."""
    b = ProfileBuilder([("samples", "count"), value_type],
                       period_type=period_type, period=sampler.period_ns,
                       default_sample_type=value_type[0], time_nanos=sampler.started_ns,
                       duration_nanos=sampler.duration_ns,
                       comments=["urdar %s: %d Hz, %d ticks, sampler used %d ns of CPU"
                                 % (title, sampler.hz, sampler.ticks, sampler.overhead_ns)])
    for (thread, stack), (n, ns) in sampler.stacks.items():
        b.add_sample(add_stack(b, stack, sampler.modules), [n, ns], {"thread": thread})
    return b
