"""Block and tenant markers in the bucket, in Mimir's layout and JSON, read and written by the
compactor (deletion, no-compact) and the tenant-deletion API; readers use the global copies.

Every function takes the tenant's bucket view (prefixed.for_tenant), so paths are tenant-relative:
  <ULID>/deletion-mark.json              {"id","version":1,"details"?,"deletion_time"}
  <ULID>/no-compact-mark.json            {"id","version":1,"details"?,"no_compact_time","reason"}
  markers/<ULID>-deletion-mark.json      same bytes as the block's own mark (global copy)
  markers/<ULID>-no-compact-mark.json    same bytes as the block's own mark (global copy)
  markers/tenant-deletion-mark.json      {"deletion_time","finished_time"?}
Times are Unix seconds from the injected clock. JSON is compact with Go's field order, as Go's
json.Marshal writes it. A mark is written in the block first, then globally, so the global copy
never points at a mark that is absent."""
import json
from dataclasses import dataclass

from twisted.internet import defer

from urdar.engine.block import is_ulid
from urdar.storage.bucket import NotFound

DELETION_MARK = "deletion-mark.json"
NO_COMPACT_MARK = "no-compact-mark.json"
MARKERS_DIR = "markers"
TENANT_DELETION_MARK_PATH = MARKERS_DIR + "/tenant-deletion-mark.json"
MARK_VERSION = 1
NO_COMPACT_REASONS = ("manual", "index-size-exceeding", "block-index-out-of-order-chunk", "critical")


class MarkerError(ValueError):
    """A marker file that is not valid JSON of the expected shape and version."""

    def __init__(self, path, reason):
        self.path = path
        super().__init__("bad marker %s: %s" % (path, reason))


def _dumps(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _loads(path, data):
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise MarkerError(path, "not JSON (%s)" % (e,)) from None
    if not isinstance(obj, dict):
        raise MarkerError(path, "not a JSON object")
    return obj


def _int(path, obj, key, required=True):
    v = obj.get(key, None if required else 0)
    if isinstance(v, bool) or not isinstance(v, int):
        raise MarkerError(path, "%s must be an integer" % (key,))
    return v


@dataclass(frozen=True)
class DeletionMark:
    """A block marked for deletion at `deletion_time` (Unix seconds)."""
    ulid: str
    deletion_time: int
    details: str = ""
    version: int = MARK_VERSION

    def to_json(self):
        obj = {"id": self.ulid, "version": self.version}
        if self.details:
            obj["details"] = self.details
        obj["deletion_time"] = self.deletion_time
        return _dumps(obj)

    @classmethod
    def from_json(cls, data, path=DELETION_MARK):
        obj = _loads(path, data)
        mark = cls(obj.get("id"), _int(path, obj, "deletion_time"), obj.get("details") or "",
                   _int(path, obj, "version"))
        _check(path, mark.ulid, mark.version)
        return mark


@dataclass(frozen=True)
class NoCompactMark:
    """A block the compactor must leave alone, since `no_compact_time`, for `reason`."""
    ulid: str
    no_compact_time: int
    reason: str = "manual"
    details: str = ""
    version: int = MARK_VERSION

    def to_json(self):
        obj = {"id": self.ulid, "version": self.version}
        if self.details:
            obj["details"] = self.details
        obj["no_compact_time"] = self.no_compact_time
        obj["reason"] = self.reason
        return _dumps(obj)

    @classmethod
    def from_json(cls, data, path=NO_COMPACT_MARK):
        obj = _loads(path, data)
        mark = cls(obj.get("id"), _int(path, obj, "no_compact_time"), obj.get("reason") or "",
                   obj.get("details") or "", _int(path, obj, "version"))
        _check(path, mark.ulid, mark.version)
        return mark


@dataclass(frozen=True)
class TenantDeletionMark:
    """A tenant being deleted since `deletion_time`; `finished_time` (0 = not yet) when done."""
    deletion_time: int
    finished_time: int = 0

    def to_json(self):
        obj = {"deletion_time": self.deletion_time}
        if self.finished_time:
            obj["finished_time"] = self.finished_time
        return _dumps(obj)

    @classmethod
    def from_json(cls, data, path=TENANT_DELETION_MARK_PATH):
        obj = _loads(path, data)
        return cls(_int(path, obj, "deletion_time"), _int(path, obj, "finished_time", False))


def _check(path, ulid, version):
    if not isinstance(ulid, str) or not is_ulid(ulid):
        raise MarkerError(path, "id %r is not a block ULID" % (ulid,))
    if version != MARK_VERSION:
        raise MarkerError(path, "unexpected version %r, expected %d" % (version, MARK_VERSION))


def _require_ulid(ulid):
    if not isinstance(ulid, str) or not is_ulid(ulid):
        raise ValueError("not a block ULID: %r" % (ulid,))
    return ulid


def block_mark_path(ulid, mark_file):
    """'<ULID>/<mark file>': the mark inside the block."""
    return "%s/%s" % (_require_ulid(ulid), mark_file)


def global_mark_path(ulid, mark_file):
    """'markers/<ULID>-<mark file>': the global copy readers list."""
    return "%s/%s-%s" % (MARKERS_DIR, _require_ulid(ulid), mark_file)


def parse_global_mark_name(name):
    """(ULID, mark file) for a name like 'markers/<ULID>-deletion-mark.json' (with or without
    the directory), or None for anything else (e.g. the tenant deletion mark)."""
    base = name.rsplit("/", 1)[-1]
    ulid, sep, mark_file = base.partition("-")
    if not sep or mark_file not in (DELETION_MARK, NO_COMPACT_MARK) or not is_ulid(ulid):
        return None
    return ulid, mark_file


@defer.inlineCallbacks
def _write_mark(bucket, ulid, mark_file, data):
    local = block_mark_path(ulid, mark_file)
    if (yield bucket.exists(local)):
        # Mimir logs and keeps the existing mark (its time is the one that counts).
        yield bucket.put(global_mark_path(ulid, mark_file), (yield bucket.get(local)))
        return False
    yield bucket.put(local, data)
    yield bucket.put(global_mark_path(ulid, mark_file), data)
    return True


def mark_for_deletion(bucket, ulid, clock, details=""):
    """Deferred[bool]: write the deletion mark (block, then global copy); False when the block
    was already marked (the old mark is kept, its global copy restored)."""
    mark = DeletionMark(_require_ulid(ulid), int(clock.seconds()), details)
    return _write_mark(bucket, ulid, DELETION_MARK, mark.to_json())


def mark_no_compact(bucket, ulid, clock, reason="manual", details=""):
    """Deferred[bool]: write the no-compact mark; `reason` is one of NO_COMPACT_REASONS."""
    if reason not in NO_COMPACT_REASONS:
        raise ValueError("no-compact reason must be one of %s, got %r" % (NO_COMPACT_REASONS, reason))
    mark = NoCompactMark(_require_ulid(ulid), int(clock.seconds()), reason, details)
    return _write_mark(bucket, ulid, NO_COMPACT_MARK, mark.to_json())


@defer.inlineCallbacks
def _read(bucket, path, cls):
    try:
        data = yield bucket.get(path)
    except NotFound:
        return None
    return cls.from_json(data, path)


def read_deletion_mark(bucket, ulid):
    """Deferred[DeletionMark or None] from the block's own mark."""
    return _read(bucket, block_mark_path(ulid, DELETION_MARK), DeletionMark)


def read_no_compact_mark(bucket, ulid):
    """Deferred[NoCompactMark or None] from the block's own mark."""
    return _read(bucket, block_mark_path(ulid, NO_COMPACT_MARK), NoCompactMark)


@defer.inlineCallbacks
def delete_marks(bucket, ulid):
    """Deferred: remove both marks of a block, global copies first (the order of the block's
    final removal: a global copy must not outlive the mark it copies)."""
    for mark_file in (DELETION_MARK, NO_COMPACT_MARK):
        yield bucket.delete(global_mark_path(ulid, mark_file))
        yield bucket.delete(block_mark_path(ulid, mark_file))


@defer.inlineCallbacks
def list_global_marks(bucket):
    """Deferred[{mark file: sorted ULIDs}] from one listing of markers/ (no per-block reads)."""
    out = {DELETION_MARK: [], NO_COMPACT_MARK: []}
    for name in (yield bucket.list(MARKERS_DIR + "/")):
        parsed = parse_global_mark_name(name)
        if parsed is not None:
            out[parsed[1]].append(parsed[0])
    return {k: sorted(v) for k, v in out.items()}


def write_tenant_deletion_mark(bucket, clock):
    """Deferred: write markers/tenant-deletion-mark.json with deletion_time now."""
    return bucket.put(TENANT_DELETION_MARK_PATH,
                      TenantDeletionMark(int(clock.seconds())).to_json())


@defer.inlineCallbacks
def finish_tenant_deletion(bucket, clock):
    """Deferred: set finished_time to now in the tenant's deletion mark, keeping deletion_time
    (written fresh when the mark is missing)."""
    now = int(clock.seconds())
    mark = yield read_tenant_deletion_mark(bucket)
    yield bucket.put(TENANT_DELETION_MARK_PATH,
                     TenantDeletionMark(mark.deletion_time if mark else now, now).to_json())


def read_tenant_deletion_mark(bucket):
    """Deferred[TenantDeletionMark or None]."""
    return _read(bucket, TENANT_DELETION_MARK_PATH, TenantDeletionMark)
