"""The per-tenant bucket index, <tenant>/bucket-index.json.gz, in Mimir's format (version 2).

The compactor rebuilds it (`build_index`, then `write_index`); queriers and store-gateways read it
(`read_index`) instead of listing the bucket. gzip of compact JSON:
  {"version":2,
   "blocks":[{"block_id","min_time","max_time" (ms, half-open),"segments_format"?,"segments_num"?,
              "uploaded_at" (s),"compactor_shard_id"?,"source"?,"compaction_level"?,
              "out_of_order"?,"labels"?}],
   "block_deletion_marks":[{"block_id","deletion_time" (s)}],
   "updated_at" (s)}
Keys marked ? are left out when empty/zero, as Go's omitempty does. Only complete blocks (with a
meta.json) are listed, marked ones included. Encoding and decoding run off the reactor when an
Offload is given (an index of many thousand blocks is megabytes of JSON)."""
import gzip
import io
import json
from dataclasses import dataclass, field

from twisted.internet import defer

from urdar.engine.block import is_ulid
from urdar.net.tenant import TenantError, validate_tenant
from urdar.storage.bucket import NotFound, run_off_reactor
from urdar.storage.markers import DELETION_MARK, DeletionMark, MarkerError, list_global_marks

INDEX_FILENAME = "bucket-index.json"
INDEX_PATH = INDEX_FILENAME + ".gz"
INDEX_VERSION = 2
SEGMENTS_FORMAT_1B6D = "1b6d"
COMPACTOR_SHARD_LABEL = "__compactor_shard_id__"
FROM_OUT_OF_ORDER_HINT = "from-out-of-order"


class IndexNotFound(NotFound):
    """The tenant has no bucket index (yet)."""

    def __init__(self, name=INDEX_PATH):
        super().__init__(name)


class IndexCorrupted(ValueError):
    """The bucket index is not gzip'd JSON of the expected shape."""

    def __init__(self, reason):
        super().__init__("bucket index corrupted: %s" % (reason,))


@dataclass
class Block:
    """One complete block as the index lists it. Times: min/max in ms, uploaded_at in s."""
    block_id: str
    min_time: int
    max_time: int
    uploaded_at: int = 0
    segments_format: str = ""
    segments_num: int = 0
    compactor_shard_id: str = ""
    source: str = ""
    compaction_level: int = 0
    out_of_order: bool = False
    labels: dict = field(default_factory=dict)

    def within(self, mint, maxt):
        """Whether the block may hold samples in [mint, maxt] (both inclusive; the block's own
        range is half-open)."""
        return self.min_time <= maxt and mint < self.max_time

    def to_obj(self):
        obj = {"block_id": self.block_id, "min_time": self.min_time, "max_time": self.max_time}
        if self.segments_format:
            obj["segments_format"] = self.segments_format
        if self.segments_num:
            obj["segments_num"] = self.segments_num
        obj["uploaded_at"] = self.uploaded_at
        for key in ("compactor_shard_id", "source", "compaction_level", "out_of_order", "labels"):
            value = getattr(self, key)
            if value:
                obj[key] = value
        return obj

    @classmethod
    def from_obj(cls, obj):
        try:
            block = cls(obj["block_id"], int(obj["min_time"]), int(obj["max_time"]),
                        int(obj.get("uploaded_at", 0)), obj.get("segments_format", ""),
                        int(obj.get("segments_num", 0)), obj.get("compactor_shard_id", ""),
                        obj.get("source", ""), int(obj.get("compaction_level", 0)),
                        bool(obj.get("out_of_order", False)), dict(obj.get("labels") or {}))
        except (KeyError, TypeError, ValueError) as e:
            raise IndexCorrupted("bad block entry %r (%s)" % (obj, e)) from None
        if not is_ulid(block.block_id):
            raise IndexCorrupted("block_id %r is not a ULID" % (block.block_id,))
        return block


@dataclass
class BlockDeletionMark:
    block_id: str
    deletion_time: int

    def to_obj(self):
        return {"block_id": self.block_id, "deletion_time": self.deletion_time}


@dataclass
class Index:
    """A tenant's blocks and deletion marks, and when (Unix s) the index was written."""
    version: int = INDEX_VERSION
    blocks: list = field(default_factory=list)
    block_deletion_marks: list = field(default_factory=list)
    updated_at: int = 0

    def block_ids(self):
        return [b.block_id for b in self.blocks]

    def deletion_marks(self):
        """{ULID: deletion_time}"""
        return {m.block_id: m.deletion_time for m in self.block_deletion_marks}


def block_from_meta(meta, uploaded_at):
    """The index entry for a block's meta.json (a dict), as Mimir derives it: segments format
    '1b6d' when the chunk files are exactly chunks/000001..N, the compactor shard from the
    __compactor_shard_id__ external label, out_of_order from the compaction hint."""
    thanos = meta.get("thanos") or {}
    labels = dict(thanos.get("labels") or {})
    compaction = meta.get("compaction") or {}
    fmt, num = _segments(thanos)
    return Block(meta["ulid"], int(meta["minTime"]), int(meta["maxTime"]), int(uploaded_at),
                 fmt, num, labels.get(COMPACTOR_SHARD_LABEL, ""), thanos.get("source", "") or "",
                 int(compaction.get("level", 0) or 0),
                 FROM_OUT_OF_ORDER_HINT in (compaction.get("hints") or ()), labels)


def _segments(thanos):
    legacy = thanos.get("segment_files") or []
    if legacy:
        if all(f == "%06d" % (i + 1) for i, f in enumerate(legacy)):
            return SEGMENTS_FORMAT_1B6D, len(legacy)
        return "", 0
    num = 0
    for f in thanos.get("files") or ():
        rel = f.get("rel_path", "")
        if not rel.startswith("chunks/"):
            continue
        if rel != "chunks/%06d" % (num + 1):
            return "", 0
        num += 1
    return (SEGMENTS_FORMAT_1B6D, num) if num else ("", 0)


def encode_index(index):
    """gzip bytes of the index JSON (gzip member name 'bucket-index.json', as Mimir writes)."""
    obj = {"version": index.version,
           "blocks": [b.to_obj() for b in index.blocks],
           "block_deletion_marks": [m.to_obj() for m in index.block_deletion_marks],
           "updated_at": index.updated_at}
    raw = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    out = io.BytesIO()
    with gzip.GzipFile(filename=INDEX_FILENAME, mode="wb", fileobj=out, mtime=0) as gz:
        gz.write(raw)
    return out.getvalue()


def decode_index(data):
    """The Index in gzip'd JSON bytes; IndexCorrupted when it is not one."""
    try:
        obj = json.loads(gzip.decompress(data))
    except (OSError, EOFError, ValueError, UnicodeDecodeError) as e:
        raise IndexCorrupted(str(e)) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("blocks", []), list):
        raise IndexCorrupted("not an index object")
    try:
        marks = [BlockDeletionMark(m["block_id"], int(m["deletion_time"]))
                 for m in obj.get("block_deletion_marks") or ()]
        return Index(int(obj.get("version", 0)), [Block.from_obj(b) for b in obj.get("blocks") or ()],
                     marks, int(obj.get("updated_at", 0)))
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, IndexCorrupted):
            raise
        raise IndexCorrupted(str(e)) from None


@defer.inlineCallbacks
def read_index(bucket, offload=None, pool="bucket", reactor=None):
    """Deferred[Index] from the tenant view `bucket`; IndexNotFound / IndexCorrupted."""
    try:
        data = yield bucket.get(INDEX_PATH)
    except NotFound:
        raise IndexNotFound() from None
    return (yield run_off_reactor(offload, pool, reactor, decode_index, data))


@defer.inlineCallbacks
def write_index(bucket, index, offload=None, pool="bucket", reactor=None):
    """Deferred: encode (off the reactor when possible) and store the index."""
    data = yield run_off_reactor(offload, pool, reactor, encode_index, index)
    yield bucket.put(INDEX_PATH, data)


def delete_index(bucket):
    """Deferred: remove the index (fine when absent)."""
    return bucket.delete(INDEX_PATH)


@defer.inlineCallbacks
def build_index(bucket, clock, old=None):
    """Deferred[Index]: scan the tenant view `bucket` as the compactor's updater does.

    Blocks are the ULID directories that have a meta.json (others are partial uploads, left out);
    entries in `old` are reused without reading meta.json again (blocks never change once
    complete); uploaded_at is meta.json's modification time. Deletion marks come from the global
    markers/ copies; a mark that cannot be read is skipped (and retried next time). A meta.json
    that is not valid JSON leaves its block out."""
    known = {b.block_id: b for b in (old.blocks if old else ())}
    old_marks = old.deletion_marks() if old else {}
    blocks = []
    for name in (yield bucket.list("")):
        ulid = name[:-1]
        if not name.endswith("/") or not is_ulid(ulid):
            continue
        if ulid in known:
            blocks.append(known[ulid])
            continue
        try:
            data = yield bucket.get(ulid + "/meta.json")
            attrs = yield bucket.attributes(ulid + "/meta.json")
        except NotFound:
            continue                       # partial block: no meta.json yet (or being deleted)
        try:
            meta = json.loads(data)
            blocks.append(block_from_meta(meta, attrs.last_modified))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    marks = []
    for ulid in (yield list_global_marks(bucket))[DELETION_MARK]:
        if ulid in old_marks:
            marks.append(BlockDeletionMark(ulid, old_marks[ulid]))
            continue
        try:
            mark = DeletionMark.from_json((yield bucket.get("markers/%s-%s" % (ulid, DELETION_MARK))))
        except (NotFound, MarkerError):
            continue
        marks.append(BlockDeletionMark(ulid, mark.deletion_time))
    return Index(INDEX_VERSION, blocks, marks, int(clock.seconds()))


@defer.inlineCallbacks
def list_tenants(bucket):
    """Deferred[sorted tenant IDs that have a directory at the top of the bucket]; other top-level
    entries (not valid tenant IDs, or reserved `__` names) are skipped."""
    out = []
    for name in (yield bucket.list("")):
        if not name.endswith("/"):
            continue
        tenant = name[:-1]
        try:
            validate_tenant(tenant)
        except TenantError:
            continue
        if not tenant.startswith("__"):
            out.append(tenant)
    return sorted(out)
