"""Engine errors: one class per cause, each also subclassing the matching builtin."""


class CorruptionError(ValueError):
    """On-disk bytes that do not follow their format: bad magic, CRC, length or reference.

    `path` names the file, `offset` the byte position (or None), `reason` what was wrong."""

    def __init__(self, path, offset, reason):
        self.path = path
        self.offset = offset
        self.reason = reason
        where = "%s" % (path,) if offset is None else "%s at offset %d" % (path, offset)
        super().__init__("corrupt %s: %s" % (where, reason))


class RemoteWriteDecodeError(ValueError):
    """A remote-write request body that is not a well-formed protobuf WriteRequest.

    `reason` says what was malformed (and in which message), `offset` is the byte position
    in the decompressed body where decoding stopped."""

    def __init__(self, reason, offset):
        self.reason = reason
        self.offset = offset
        super().__init__("malformed remote-write request at byte %d: %s" % (offset, reason))


class WALCorruptionError(CorruptionError):
    """A WAL or checkpoint segment whose fragments break the wlog format (CRC, fragment
    order, length, torn tail). `segment` is the segment number, `offset` the byte position
    in that segment where the first unreadable record starts (repair cuts there)."""

    def __init__(self, path, offset, reason, segment=None):
        self.segment = segment
        super().__init__(path, offset, reason)


class UnsupportedWALCompression(WALCorruptionError):
    """A WAL record compressed with a codec urdar cannot read (zstd). The bytes may be
    valid, so replay refuses it instead of repairing (cutting) the WAL."""


class MalformedRecordError(CorruptionError):
    """A logical WAL record whose body does not follow its type's layout (record.go);
    `path` is "<record type N>", `offset` the byte where decoding stopped."""

    def __init__(self, rec_type, offset, reason):
        self.rec_type = rec_type
        super().__init__("<record type %d>" % rec_type, offset, reason)


class RegexError(ValueError):
    """A label-matcher regex that is not valid RE2 syntax. The message follows Go's
    regexp package: "error parsing regexp: <code>: `<expr>`"; `code` and `expr` hold the parts."""

    def __init__(self, code, expr):
        self.code = code
        self.expr = expr
        super().__init__("error parsing regexp: %s: `%s`" % (code, expr))


class UnsupportedRegexError(RegexError):
    """Valid RE2 that urdar cannot evaluate (e.g. Unicode script classes such as \\p{Greek});
    `code` names the construct and why, `expr` quotes it."""


class UnsupportedChunkEncoding(ValueError):
    """A block chunk whose encoding byte urdar cannot decode yet (histograms: 2, 3, ...).
    The bytes may be valid; `encoding` is the byte, `ref` the chunk ref."""

    def __init__(self, encoding, ref):
        self.encoding = encoding
        self.ref = ref
        super().__init__("unsupported chunk encoding %d (chunk ref 0x%x)" % (encoding, ref))


class ShortRead(ValueError):
    """A buffer from a ranged read ends inside the entry being decoded; `needed` is the number of
    bytes from the entry's start that would hold it whole (0 when even its length is cut off)."""

    def __init__(self, needed):
        self.needed = needed
        super().__init__("buffer ends inside an entry (%d bytes needed)" % (needed,))


def public_message(exc):
    """str(exc) fit for a response body: a server path the error names (CorruptionError.path,
    OSError's filenames) is cut to its last two parts ("<ULID>/index"), so clients never learn
    where the data directories are. Logs keep the full text."""
    text = str(exc)
    for attr in ("path", "filename", "filename2"):
        path = getattr(exc, attr, None)
        if isinstance(path, bytes):
            path = path.decode("utf-8", "replace")
        if isinstance(path, str) and path.startswith("/"):
            text = text.replace(path, "/".join([p for p in path.split("/") if p][-2:]))
    return text
