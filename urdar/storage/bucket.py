"""The object-storage seam: the `Bucket` protocol every backend implements, its errors, and name rules.

Blocks travel ingester -> shipper -> bucket -> store-gateway/compactor through this one small
interface (Thanos' objstore.Bucket, cut down). Every method returns a Deferred. Names are
'/'-separated keys as in S3; `validate_name` refuses names that could escape a filesystem root or a
tenant prefix. `list` has S3's ListObjectsV2 semantics on every backend: the prefix is a raw string
prefix (pass "tenant/" to list a tenant), results are sorted by code point (= UTF-8 byte order), and
with delimiter "/" the keys below the next "/" collapse into one "dir/" entry (a common prefix).
Errors carry a `retryable` flag which `retrying.py` reads: server-side (5xx, 429) and connection
failures are retryable, a missing object or a refused signature is not."""
import io
import os
from typing import NamedTuple, Protocol, Union

from twisted.internet import defer, threads

# S3's limit on key length, in UTF-8 bytes.
MAX_NAME_BYTES = 1024

#: What `put` accepts: the bytes themselves, a local file path, or a readable binary stream.
PutData = Union[bytes, bytearray, memoryview, str, os.PathLike, io.IOBase]


class BucketError(Exception):
    """Base of every bucket failure. `name` is the object name involved ('' when none)."""
    retryable = False

    def __init__(self, message, name=""):
        self.name = name
        super().__init__(message)


class NotFound(BucketError, LookupError):
    """The object does not exist (S3 NoSuchKey / 404, a missing file)."""

    def __init__(self, name):
        super().__init__("object %r not found in bucket" % (name,), name)


class AccessDenied(BucketError, PermissionError):
    """The store refused our credentials or signature (S3 403: AccessDenied, SignatureDoesNotMatch,
    InvalidAccessKeyId). Never retried: fix the configuration."""

    def __init__(self, message, name="", code="AccessDenied"):
        self.code = code
        super().__init__(message, name)


class InvalidName(BucketError, ValueError):
    """An object name or prefix that the bucket layer refuses ('..', absolute, empty segment, NUL)."""

    def __init__(self, name, reason):
        self.reason = reason
        super().__init__("invalid object name %r: %s" % (name, reason), name)


class BucketHTTPError(BucketError):
    """A store answered with an error status. `status` is the HTTP status, `code` the S3 error code
    (e.g. 'InternalError', 'SlowDown', 'NoSuchBucket'); 5xx and 429 are retryable."""

    def __init__(self, status, code="", message="", name=""):
        self.status = status
        self.code = code
        text = "bucket request failed with HTTP %d" % (status,)
        if code:
            text += " %s" % (code,)
        if message:
            text += ": %s" % (message,)
        if name:
            text += " (object %r)" % (name,)
        super().__init__(text, name)

    @property
    def retryable(self):
        return self.status >= 500 or self.status == 429


class BucketUnavailable(BucketError):
    """The store could not be reached or the connection broke mid-request (retryable)."""
    retryable = True

    def __init__(self, message, name="", cause=None):
        self.cause = cause
        super().__init__(message, name)


class ObjectConflict(BucketError):
    """The filesystem backend cannot hold both 'a' and 'a/b' (S3 can); the put was refused."""


class BucketConfigError(BucketError, ValueError):
    """The bucket configuration is unusable; the message names the flag."""


class Attributes(NamedTuple):
    """What `attributes` returns: `size` in bytes, `last_modified` in Unix seconds (float)."""
    size: int
    last_modified: float


class Bucket(Protocol):
    """An object store. All methods return Deferreds; names follow `validate_name`."""

    def get(self, name):
        """Deferred[bytes]: the whole object; fails with NotFound when absent."""

    def get_range(self, name, offset, length):
        """Deferred[bytes]: `length` bytes from byte `offset`, cut short at the object's end
        (b'' when offset is at or past the end); NotFound when absent."""

    def put(self, name, data):
        """Deferred[None]: store `data` (bytes-like, a local file path, or a binary stream read
        from its current position) as `name`, replacing any object; readers never see a partial one."""

    def list(self, prefix="", delimiter="/"):
        """Deferred[list[str]]: sorted names starting with `prefix`; with delimiter '/' names with a
        further '/' after the prefix collapse into 'dir/' entries, with '' the listing is recursive."""

    def delete(self, name):
        """Deferred[None]: remove `name`; succeeds when it is already absent."""

    def exists(self, name):
        """Deferred[bool]."""

    def attributes(self, name):
        """Deferred[Attributes]; NotFound when absent."""


def is_tenant_segment(tenant):
    """Whether `tenant` can be one object-name segment under a per-tenant prefix: non-empty, no
    separator and no dot segment, so it can never reach another tenant's keys."""
    return bool(tenant) and "/" not in tenant and tenant not in (".", "..")


def validate_name(name):
    """Return `name` if it is a usable object name, else raise InvalidName.

    A name is non-empty, at most 1024 UTF-8 bytes, has no NUL, does not start with '/', and every
    '/'-separated segment is non-empty and neither '.' nor '..'."""
    if not isinstance(name, str):
        raise InvalidName(name, "names are str")
    if not name:
        raise InvalidName(name, "empty name")
    _check_common(name)
    for seg in name.split("/"):
        _check_segment(name, seg)
    return name


def validate_prefix(prefix):
    """Return `prefix` if it is a usable listing prefix ('' lists everything), else raise InvalidName.

    Like a name, but the last segment is only a string prefix of names: it may be empty (a
    trailing '/'), or '.' (which matches '.hidden')."""
    if not isinstance(prefix, str):
        raise InvalidName(prefix, "prefixes are str")
    if not prefix:
        return prefix
    _check_common(prefix)
    segs = prefix.split("/")
    for seg in segs[:-1]:
        _check_segment(prefix, seg)
    return prefix


def _check_common(name):
    if "\x00" in name:
        raise InvalidName(name, "NUL byte")
    if name.startswith("/"):
        raise InvalidName(name, "absolute name (leading '/')")
    try:
        n = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidName(name, "not valid UTF-8 (lone surrogate)") from None
    if n > MAX_NAME_BYTES:
        raise InvalidName(name, "longer than %d UTF-8 bytes" % (MAX_NAME_BYTES,))


def _check_segment(name, seg):
    if not seg:
        raise InvalidName(name, "empty segment ('//' or trailing '/')")
    if seg in (".", ".."):
        raise InvalidName(name, "'.' and '..' segments are not allowed")


def list_names(names, prefix, delimiter):
    """S3 listing over an iterable of object names: filter by `prefix`, collapse at `delimiter`
    ('/' or ''), dedupe and sort. Shared by the memory and filesystem backends and tests."""
    if delimiter not in ("", "/"):
        raise ValueError("delimiter must be '/' or '' (recursive), not %r" % (delimiter,))
    out = set()
    n = len(prefix)
    for name in names:
        if not name.startswith(prefix):
            continue
        if delimiter:
            i = name.find(delimiter, n)
            if i >= 0:
                out.add(name[:i + 1])
                continue
        out.add(name)
    return sorted(out)


def put_data_kind(data):
    """'bytes', 'path' or 'stream' for a `put` argument; TypeError for anything else."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return "bytes"
    if isinstance(data, (str, os.PathLike)):
        return "path"
    if hasattr(data, "read"):
        return "stream"
    raise TypeError("put() takes bytes, a file path or a binary stream, not %s"
                    % (type(data).__name__,))


def read_put_data(data):
    """Blocking: the bytes a `put` argument stands for (reads a path or the rest of a stream)."""
    kind = put_data_kind(data)
    if kind == "bytes":
        return bytes(data)
    if kind == "path":
        with open(data, "rb") as f:
            return f.read()
    out = data.read()
    if not isinstance(out, (bytes, bytearray)):
        raise TypeError("put() streams must be binary")
    return bytes(out)


def check_range(offset, length):
    """Argument check shared by every get_range: non-negative ints (ValueError otherwise)."""
    if (not isinstance(offset, int) or not isinstance(length, int) or isinstance(offset, bool)
            or offset < 0 or length < 0):
        raise ValueError("get_range needs offset >= 0 and length >= 0, got %r, %r" % (offset, length))


def run_off_reactor(offload, pool, reactor, fn, *args):
    """Deferred of fn(*args) run off the reactor thread: in `offload`'s pool `pool` when an Offload
    is given, else in `reactor`'s thread pool, else inline (tests and tools without a reactor)."""
    if offload is not None:
        return offload.run(pool, fn, *args)
    if reactor is not None:
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args)
    return defer.maybeDeferred(fn, *args)
