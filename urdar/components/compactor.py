"""The compactor: merges each tenant's blocks in object storage, deletes what it replaced or what
retention drops, keeps the bucket index, deletes tenants, and takes block uploads (Mimir's
compactor, one instance, no ring yet).

Flow per tenant and cycle (`compact_tenant`): read every complete block's meta.json (cached,
blocks never change), mark blocks entirely older than the tenant's retention for deletion, then
ask engine/compact.plan() for the next group among the blocks that are neither marked for
deletion, nor marked no-compact, nor level-1 blocks younger than the first-level wait period:
overlapping blocks first (vertical: the copies several ingesters shipped, deduplicated sample by
sample), then adjacent ones filling a larger range (horizontal: 2h -> 12h -> 24h). The group is
downloaded to the scratch dir, merged by engine/compact.compact_blocks (off the reactor, in the
`compactor` pool), uploaded with meta.json last (its `thanos` section lists the files), and only
then are the sources marked for deletion: a failed upload leaves a partial block (no meta.json)
that nobody reads, and loses nothing. `cleanup_tenant` deletes marked blocks after
-compactor.deletion-delay (meta.json first, marks last), finishes tenant deletions and rewrites
bucket-index.json.gz. A tenant with markers/tenant-deletion-mark.json is no longer compacted;
its blocks are deleted.

Block upload (`BlockUploads`) follows Mimir's API: start stores the sanitized meta as
<ULID>/uploading-meta.json, files go to <ULID>/index and <ULID>/chunks/NNNNNN, finish starts a
background validation tracked in <ULID>/validation.json ({"LastUpdate": ms, "Error": text},
heartbeat every minute) and, when the block passes, writes meta.json. State lives in the bucket,
so any compactor can answer /check."""
import datetime
import json
import logging
import os
import re
import shutil
import socket
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge
from twisted.internet import defer, task

from urdar.components import errors as E
from urdar.engine.block import BlockReader, is_ulid, meta_json, read_meta
from urdar.engine.compact import compact_blocks, plan
from urdar.engine.index import compare_label_keys
from urdar.engine.labels import decode_labels
from urdar.engine.xorchunk import decode_xor
from urdar.net.tenant import TenantError, validate_tenant
from urdar.storage import bucketindex, markers
from urdar.storage.bucket import NotFound, run_off_reactor
from urdar.storage.prefixed import for_tenant

if TYPE_CHECKING:
    from _typeshed import SupportsGetItem

log = logging.getLogger("urdar.compactor")

H_MS = 3600 * 1000
META = "meta.json"
UPLOADING_META = "uploading-meta.json"
VALIDATION = "validation.json"
# Files of a block the compactor downloads (marks and upload state stay remote), and the only
# paths the upload API accepts. [0-9], not \d: Go's \d is ASCII, Python's matches any digit.
BLOCK_FILE_RE = re.compile(r"^(index|chunks/[0-9]{6})$")
UPLOAD_PATH_RE = BLOCK_FILE_RE
MAX_META_BYTES = 1 << 20
VALIDATION_HEARTBEAT_S = 60.0
VALIDATION_HEARTBEAT_TIMEOUT_MS = 5 * 60 * 1000
COMPACTOR_SHARD_LABEL = "__compactor_shard_id__"
# External labels older Cortex/Mimir versions wrote; an upload drops them silently.
DEPRECATED_LABELS = ("__org_id__", "__ingester_id__", "__shard_id__")
_SHARD_RE = re.compile(r"^([0-9]+)_of_([0-9]+)$")


class CompactionError(Exception):
    """A tenant's compaction stopped; the message names the tenant and the block."""


class _Block:
    """What plan() needs: the meta dict (plus when meta.json was uploaded, Unix s)."""
    __slots__ = ("meta", "uploaded_at")

    def __init__(self, meta, uploaded_at):
        self.meta = meta
        self.uploaded_at = uploaded_at

    @property
    def ulid(self):
        return self.meta["ulid"]


def _now_ms(clock):
    return int(clock.seconds() * 1000)


# ---- blocking helpers (run in the compactor pool) -------------------------------------------

def _write_file(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _block_files(block_dir):
    """[(rel_path, size)] of chunks/*, index, meta.json (Thanos' `files` order; meta.json has no size)."""
    out = []
    cdir = os.path.join(block_dir, "chunks")
    if os.path.isdir(cdir):
        for name in sorted(os.listdir(cdir)):
            out.append(("chunks/" + name, os.path.getsize(os.path.join(cdir, name))))
    out.append(("index", os.path.getsize(os.path.join(block_dir, "index"))))
    out.append((META, None))
    return out


def thanos_section(files, labels=None, source="compactor"):
    """meta.json's `thanos` object for a block with these (rel_path, size) files."""
    return {"labels": dict(labels or {}), "downsample": {"resolution": 0}, "source": source,
            "segment_files": [p.split("/", 1)[1] for p, _ in files if p.startswith("chunks/")],
            "files": [{"rel_path": p} if s is None else {"rel_path": p, "size_bytes": s}
                      for p, s in files]}


def merge_local_blocks(block_dirs, out_dir, labels=None):
    """Merge downloaded blocks into one new block under out_dir (engine/compact's merger), add
    the thanos section; returns (ulid, meta dict, [(rel_path, size)]). Blocking."""
    readers = []
    try:
        for d in block_dirs:
            try:
                readers.append(BlockReader(d, verify=True))
            except Exception as e:
                raise CompactionError("block %s is unreadable: %s" % (os.path.basename(d), e)) from e
        try:
            ulid = compact_blocks(out_dir, readers)
        except Exception as e:
            raise CompactionError("merging blocks %s failed: %s"
                                  % (", ".join(r.ulid for r in readers), e)) from e
    finally:
        for r in readers:
            r.close()
    bdir = os.path.join(out_dir, ulid)
    meta = read_meta(bdir)
    files = _block_files(bdir)
    meta["thanos"] = thanos_section(files, labels)
    with open(os.path.join(bdir, META), "wb") as f:
        f.write(meta_json(meta))
    return ulid, meta, files


def verify_block(block_dir, mint, maxt, verify_chunks=True):
    """Raise ValueError naming the first problem of a downloaded block: unreadable index or chunk
    files, series out of label order, labels unsorted or duplicated, chunks outside [mint, maxt]
    or overlapping, and (verify_chunks) chunk CRCs and XOR encoding. Blocking."""
    try:
        reader = BlockReader(block_dir, verify=verify_chunks)
    except Exception as e:
        raise ValueError("error validating block: %s" % (e,)) from None
    try:
        prev = None
        n = 0
        for sid in reader.index.all_postings():
            key, mints, maxts, refs = reader.index.series(sid)
            labels = decode_labels(key)
            names = [name.encode() for name, _ in labels]
            if any(names[i] >= names[i + 1] for i in range(len(names) - 1)):
                raise ValueError("error validating block: series %s has unsorted or duplicate "
                                 "label names" % (_fmt(labels),))
            if prev is not None and compare_label_keys(prev, key) >= 0:
                raise ValueError("error validating block: series %s is out of order (after %s)"
                                 % (_fmt(labels), _fmt(decode_labels(prev))))
            prev = key
            last_max = None
            for k in range(len(refs)):
                cmin, cmax = mints[k], maxts[k]
                if cmin > cmax or cmin < mint or cmax > maxt:
                    raise ValueError("error validating block: chunk [%d, %d] of series %s is "
                                     "outside the block's time range [%d, %d)"
                                     % (cmin, cmax, _fmt(labels), mint, maxt))
                if last_max is not None and cmin <= last_max:
                    raise ValueError("error validating block: out-of-order or overlapping chunks "
                                     "in series %s" % (_fmt(labels),))
                last_max = cmax
                if verify_chunks:
                    enc, data = reader.chunks.chunk_bytes(refs[k], True)
                    if enc == 1:
                        ts, _ = decode_xor(data)
                        if len(ts) and (ts[0] < cmin or ts[len(ts) - 1] > cmax):
                            raise ValueError("error validating block: samples of series %s lie "
                                             "outside their chunk's range" % (_fmt(labels),))
            n += 1
        return n
    except ValueError as e:
        if str(e).startswith("error validating block"):
            raise
        raise ValueError("error validating block: %s" % (e,)) from None
    finally:
        reader.close()


def _fmt(labels):
    return "{%s}" % ", ".join('%s="%s"' % (n, v) for n, v in labels)


# ---- the compactor ----------------------------------------------------------------------------

@dataclass(frozen=True)
class CompactorConfig:
    """The compactor's settings (-compactor.*), durations in ms."""
    block_ranges_ms: tuple = (2 * H_MS, 12 * H_MS, 24 * H_MS)
    compaction_interval_ms: int = H_MS
    cleanup_interval_ms: int = 15 * 60 * 1000
    deletion_delay_ms: int = 12 * H_MS
    first_level_wait_ms: int = 25 * 60 * 1000
    tenant_cleanup_delay_ms: int = 6 * H_MS
    max_validations: int = 1                # concurrent block-upload validations (0 = unlimited)

    @classmethod
    def from_config(cls, cfg: "SupportsGetItem[str, Any]") -> "CompactorConfig":
        return cls(block_ranges_ms=tuple(cfg["compactor.block_ranges"]),
                   compaction_interval_ms=cfg["compactor.compaction_interval"],
                   cleanup_interval_ms=cfg["compactor.cleanup_interval"],
                   deletion_delay_ms=cfg["compactor.deletion_delay"],
                   first_level_wait_ms=cfg["compactor.first_level_compaction_wait_period"],
                   tenant_cleanup_delay_ms=cfg["compactor.tenant_cleanup_delay"],
                   max_validations=cfg["compactor.max_block_upload_validation_concurrency"])


class Compactor:
    """Compacts every tenant of `bucket` (the whole blocks bucket; tenants are its top-level dirs).

    Times: ranges and delays in ms, intervals in ms, clock in Unix seconds. `offload` runs the
    merge and validation in its `pool` (None: inline, for tests). `data_dir` is scratch space."""

    def __init__(self, bucket, overrides, clock, data_dir, config=CompactorConfig(), offload=None,
                 reactor=None, pool="compactor", instance_id=None, instance_addr="", registry=None):
        self.bucket = bucket
        self.overrides = overrides
        self.clock = clock
        self.data_dir = os.fspath(data_dir)
        self.config = config
        self.offload = offload
        self.reactor = reactor
        self.pool = pool
        self.block_ranges_ms = tuple(config.block_ranges_ms)
        self.compaction_interval_ms = config.compaction_interval_ms
        self.cleanup_interval_ms = config.cleanup_interval_ms
        self.deletion_delay_ms = config.deletion_delay_ms
        self.first_level_wait_ms = config.first_level_wait_ms
        self.tenant_cleanup_delay_ms = config.tenant_cleanup_delay_ms
        self.instance_id = instance_id or socket.gethostname()
        self.instance_addr = instance_addr
        self.state = "PENDING"
        self.tenants = []                # tenants seen in the last listing (all owned: one instance)
        self.errors = {}                 # tenant -> last error text of compaction or cleanup
        self.last_heartbeat = None       # Unix s of the last finished cycle
        self.compactions_total = 0       # blocks written by compaction
        self.deleted_total = 0           # blocks deleted after their delay
        self._metas = {}                 # (tenant, ulid) -> _Block
        self._running = None             # Deferred of the cycle in progress
        self._loops = []
        self.uploads = BlockUploads(self, config.max_validations)
        kw = {"registry": registry}
        self.m_runs_started = Counter("cortex_compactor_runs_started",
                                      "Total number of compaction runs started.", **kw)
        self.m_runs_completed = Counter("cortex_compactor_runs_completed",
                                        "Total number of compaction runs successfully completed.", **kw)
        self.m_runs_failed = Counter("cortex_compactor_runs_failed",
                                     "Total number of compaction runs failed (any tenant failing).", **kw)
        self.m_last_success = Gauge("cortex_compactor_last_successful_run_timestamp_seconds",
                                    "Unix timestamp of the last successful compaction run.", **kw)
        self.m_compactions = Counter("cortex_compactor_group_compactions",
                                     "Total number of blocks written by compaction.", **kw)
        self.m_marked = Counter("cortex_compactor_blocks_marked_for_deletion",
                                "Total number of blocks marked for deletion.", ["reason"], **kw)
        self.m_cleaned = Counter("cortex_compactor_blocks_cleaned",
                                 "Total number of blocks deleted.", **kw)

    def _off(self, fn, *args):
        return run_off_reactor(self.offload, self.pool, self.reactor, fn, *args)

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self):
        """Run a compaction cycle now and every compaction interval, cleanup likewise."""
        self.state = "ACTIVE"
        self.last_heartbeat = self.clock.seconds()
        for interval_ms, fn in ((self.compaction_interval_ms, self.compact_all),
                                (self.cleanup_interval_ms, self.cleanup_all)):
            loop = task.LoopingCall(self._guarded, fn)
            loop.clock = self.clock
            loop.start(interval_ms / 1000.0, now=True).addErrback(
                lambda f: log.error("compactor loop stopped: %s", f.getErrorMessage()))
            self._loops.append(loop)

    def stop(self):
        """Stop the loops; the Deferred fires when the running cycle (if any) is done."""
        self.state = "LEAVING"
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        d = self._running if self._running is not None else defer.succeed(None)
        out = defer.Deferred()
        d.addBoth(lambda _: out.callback(None))
        return out

    def _guarded(self, fn):
        """One cycle at a time: a cycle due while another runs is skipped."""
        if self._running is not None:
            return None
        d = self._running = fn()

        def done(result):
            self._running = None
            self.last_heartbeat = self.clock.seconds()
            return None
        d.addBoth(done)
        return None

    # ---- tenants -----------------------------------------------------------------------------

    @defer.inlineCallbacks
    def list_tenants(self):
        """Deferred[list]: the tenant directories of the bucket."""
        self.tenants = yield bucketindex.list_tenants(self.bucket)
        return self.tenants

    @defer.inlineCallbacks
    def compact_all(self):
        """Deferred: one compaction pass over every tenant; a failing tenant does not stop others."""
        self.m_runs_started.inc()
        failed = False
        try:
            tenants = yield self.list_tenants()
        except Exception as e:
            self.m_runs_failed.inc()
            log.error("compaction run failed: cannot list tenants: %s", e)
            return None
        for tenant in tenants:
            try:
                yield self.compact_tenant(tenant)
            except Exception as e:
                failed = True
                self.errors[tenant] = "compaction: %s" % (e,)
                log.error("compaction of tenant %s failed: %s", tenant, e)
        if failed:
            self.m_runs_failed.inc()
        else:
            self.m_runs_completed.inc()
            self.m_last_success.set(self.clock.seconds())
        return None

    @defer.inlineCallbacks
    def cleanup_all(self):
        """Deferred: delete due blocks, finish tenant deletions, rewrite bucket indexes."""
        for tenant in (yield self.list_tenants()):
            try:
                yield self.cleanup_tenant(tenant)
            except Exception as e:
                self.errors[tenant] = "cleanup: %s" % (e,)
                log.error("cleanup of tenant %s failed: %s", tenant, e)
        return None

    # ---- reading a tenant's blocks -----------------------------------------------------------

    @defer.inlineCallbacks
    def _load_blocks(self, tenant, tb):
        """{ulid: _Block} of the tenant's complete blocks (meta.json present and readable)."""
        blocks = {}
        for name in (yield tb.list("")):
            ulid = name[:-1]
            if not name.endswith("/") or not is_ulid(ulid):
                continue
            cached = self._metas.get((tenant, ulid))
            if cached is not None:
                blocks[ulid] = cached
                continue
            try:
                data = yield tb.get(ulid + "/" + META)
                attrs = yield tb.attributes(ulid + "/" + META)
            except NotFound:
                continue                       # partial block, or being deleted
            try:
                meta = json.loads(data)
                if not isinstance(meta, dict) or meta.get("ulid") != ulid:
                    raise ValueError("ulid does not match the directory")
                int(meta["minTime"]), int(meta["maxTime"])
            except (ValueError, KeyError, TypeError) as e:
                log.warning("tenant %s: block %s has an unusable meta.json (%s); skipped",
                            tenant, ulid, e)
                continue
            b = self._metas[(tenant, ulid)] = _Block(meta, attrs.last_modified)
            blocks[ulid] = b
        for key in [k for k in self._metas if k[0] == tenant and k[1] not in blocks]:
            del self._metas[key]
        return blocks

    # ---- compaction --------------------------------------------------------------------------

    @defer.inlineCallbacks
    def compact_tenant(self, tenant):
        """Deferred[list of new ULIDs]: retention, then compaction until nothing is due, then the
        bucket index. A tenant being deleted is deleted instead."""
        tb = for_tenant(self.bucket, tenant)
        if (yield markers.read_tenant_deletion_mark(tb)) is not None:
            yield self._delete_tenant(tenant, tb)
            return []
        blocks = yield self._load_blocks(tenant, tb)
        marks = yield markers.list_global_marks(tb)
        deleted = set(marks[markers.DELETION_MARK])
        no_compact = set(marks[markers.NO_COMPACT_MARK])
        yield self._apply_retention(tenant, tb, blocks, deleted)
        made = []
        for _ in range(10000):
            now_s = self.clock.seconds()
            candidates = []
            for ulid, b in sorted(blocks.items()):
                if ulid in deleted or ulid in no_compact:
                    continue
                level = (b.meta.get("compaction") or {}).get("level", 1)
                if level <= 1 and (now_s - b.uploaded_at) * 1000 < self.first_level_wait_ms:
                    continue
                candidates.append(b)
            group = plan(candidates, self.block_ranges_ms, keep_newest=False)
            if not group:
                break
            new = yield self._compact_group(tenant, tb, group)
            made.append(new.ulid)
            blocks[new.ulid] = new
            for b in group:
                yield markers.mark_for_deletion(tb, b.ulid, self.clock,
                                                "source of compacted block %s" % (new.ulid,))
                self.m_marked.labels("compaction").inc()
                deleted.add(b.ulid)
        self.errors.pop(tenant, None)
        yield self._write_index(tb)
        return made

    @defer.inlineCallbacks
    def _apply_retention(self, tenant, tb, blocks, deleted):
        retention = self.overrides.for_tenant(tenant).compactor_blocks_retention_period
        if not retention:
            return
        threshold = _now_ms(self.clock) - retention
        for ulid, b in sorted(blocks.items()):
            if ulid not in deleted and int(b.meta["maxTime"]) < threshold:
                log.info("tenant %s: block %s is past retention; marking for deletion", tenant, ulid)
                yield markers.mark_for_deletion(tb, ulid, self.clock, "block exceeding retention period")
                self.m_marked.labels("retention").inc()
                deleted.add(ulid)

    @defer.inlineCallbacks
    def _compact_group(self, tenant, tb, group):
        """Download, merge, upload (meta.json last); returns the new _Block."""
        scratch = os.path.join(self.data_dir, "compact", tenant, uuid.uuid4().hex)
        try:
            new = yield self._compact_group_in(tenant, tb, group, scratch)
        except BaseException:
            yield self._off(shutil.rmtree, scratch, True)
            raise
        yield self._off(shutil.rmtree, scratch, True)
        return new

    @defer.inlineCallbacks
    def _compact_group_in(self, tenant, tb, group, scratch):
        dirs = []
        for b in group:
            dirs.append((yield self._download(tb, b.ulid, os.path.join(scratch, "in"))))
        labels = _common_labels([b.meta for b in group])
        ulid, meta, files = yield self._off(merge_local_blocks, dirs,
                                            os.path.join(scratch, "out"), labels)
        log.info("tenant %s: compacted %s into %s [%d, %d)", tenant,
                 ", ".join(b.ulid for b in group), ulid, meta["minTime"], meta["maxTime"])
        yield self._upload(tb, os.path.join(scratch, "out", ulid), ulid, files)
        self.compactions_total += 1
        self.m_compactions.inc()
        attrs = yield tb.attributes(ulid + "/" + META)
        new = self._metas[(tenant, ulid)] = _Block(meta, attrs.last_modified)
        return new

    @defer.inlineCallbacks
    def _download(self, tb, ulid, parent):
        """Fetch meta.json, index and chunks/* of a block into parent/<ulid>; returns the dir."""
        bdir = os.path.join(parent, ulid)
        names = yield tb.list(ulid + "/", delimiter="")
        for name in names:
            rel = name[len(ulid) + 1:]
            if rel != META and not BLOCK_FILE_RE.match(rel):
                continue
            data = yield tb.get(name)
            yield self._off(_write_file, os.path.join(bdir, *rel.split("/")), data)
        return bdir

    @defer.inlineCallbacks
    def _upload(self, tb, bdir, ulid, files):
        """Upload a block, meta.json last; on failure remove what was uploaded (best effort)."""
        done = []
        try:
            for rel, _ in files:
                if rel == META:
                    continue
                yield tb.put(ulid + "/" + rel, os.path.join(bdir, *rel.split("/")))
                done.append(rel)
            yield tb.put(ulid + "/" + META, os.path.join(bdir, META))
        except Exception:
            for rel in done:
                try:
                    yield tb.delete(ulid + "/" + rel)
                except Exception as e:
                    log.warning("could not remove partial block file %s/%s: %s", ulid, rel, e)
            raise

    # ---- cleanup -----------------------------------------------------------------------------

    @defer.inlineCallbacks
    def cleanup_tenant(self, tenant):
        """Deferred[list of deleted ULIDs]: delete blocks marked longer than the deletion delay
        ago, then rewrite the bucket index (or delete the tenant, if it is being deleted)."""
        tb = for_tenant(self.bucket, tenant)
        if (yield markers.read_tenant_deletion_mark(tb)) is not None:
            yield self._delete_tenant(tenant, tb)
            return []
        gone = []
        now_s = self.clock.seconds()
        yield self._mark_partial_blocks(tenant, tb)
        for ulid in (yield markers.list_global_marks(tb))[markers.DELETION_MARK]:
            try:
                mark = yield markers.read_deletion_mark(tb, ulid)
                if mark is None:
                    data = yield tb.get(markers.global_mark_path(ulid, markers.DELETION_MARK))
                    mark = markers.DeletionMark.from_json(data)
            except (NotFound, markers.MarkerError) as e:
                log.warning("tenant %s: unreadable deletion mark of %s: %s", tenant, ulid, e)
                continue
            if (now_s - mark.deletion_time) * 1000 >= self.deletion_delay_ms:
                yield self._delete_block(tb, ulid)
                self._metas.pop((tenant, ulid), None)
                gone.append(ulid)
                self.deleted_total += 1
                self.m_cleaned.inc()
        if gone:
            log.info("tenant %s: deleted %d blocks: %s", tenant, len(gone), ", ".join(gone))
        yield self._write_index(tb)
        return gone

    @defer.inlineCallbacks
    def _mark_partial_blocks(self, tenant, tb):
        """Mark block dirs without meta.json (failed uploads, abandoned block uploads) for
        deletion once their newest object is older than compactor_partial_block_deletion_delay."""
        delay = self.overrides.for_tenant(tenant).compactor_partial_block_deletion_delay
        if not delay:
            return
        marked = set((yield markers.list_global_marks(tb))[markers.DELETION_MARK])
        now_s = self.clock.seconds()
        for name in (yield tb.list("")):
            ulid = name[:-1]
            if not name.endswith("/") or not is_ulid(ulid) or ulid in marked:
                continue
            if (yield tb.exists(ulid + "/" + META)):
                continue
            newest = 0.0
            for obj in (yield tb.list(ulid + "/", delimiter="")):
                try:
                    newest = max(newest, (yield tb.attributes(obj)).last_modified)
                except NotFound:
                    continue
            if (now_s - newest) * 1000 >= delay:
                log.info("tenant %s: partial block %s (no meta.json, last written %ds ago) is "
                         "marked for deletion", tenant, ulid, now_s - newest)
                yield markers.mark_for_deletion(tb, ulid, self.clock, "partial block")
                self.m_marked.labels("partial").inc()

    @defer.inlineCallbacks
    def _delete_block(self, tb, ulid):
        """Thanos' order: meta.json first (the block stops being complete), marks last."""
        names = yield tb.list(ulid + "/", delimiter="")
        yield tb.delete(ulid + "/" + META)
        keep = {ulid + "/" + markers.DELETION_MARK, ulid + "/" + markers.NO_COMPACT_MARK}
        for name in names:
            if name not in keep and name != ulid + "/" + META:
                yield tb.delete(name)
        yield markers.delete_marks(tb, ulid)

    @defer.inlineCallbacks
    def _write_index(self, tb):
        try:
            old = yield bucketindex.read_index(tb, self.offload, self.pool, self.reactor)
        except (bucketindex.IndexNotFound, bucketindex.IndexCorrupted):
            old = None
        index = yield bucketindex.build_index(tb, self.clock, old)
        yield bucketindex.write_index(tb, index, self.offload, self.pool, self.reactor)

    # ---- tenant deletion ---------------------------------------------------------------------

    def request_tenant_deletion(self, tenant):
        """Deferred: write markers/tenant-deletion-mark.json; the next cycle deletes the blocks."""
        validate_tenant(tenant)
        return markers.write_tenant_deletion_mark(for_tenant(self.bucket, tenant), self.clock)

    @defer.inlineCallbacks
    def tenant_blocks_deleted(self, tenant):
        """Deferred[bool]: whether the tenant has no block directory left in the bucket."""
        validate_tenant(tenant)
        tb = for_tenant(self.bucket, tenant)
        for name in (yield tb.list("")):
            if name.endswith("/") and is_ulid(name[:-1]):
                return False
        return True

    @defer.inlineCallbacks
    def _delete_tenant(self, tenant, tb):
        mark = yield markers.read_tenant_deletion_mark(tb)
        if mark is None:
            return
        if mark.finished_time:
            if (self.clock.seconds() - mark.finished_time) * 1000 >= self.tenant_cleanup_delay_ms:
                for name in (yield tb.list("", delimiter="")):
                    if name != markers.TENANT_DELETION_MARK_PATH:
                        yield tb.delete(name)
                yield tb.delete(markers.TENANT_DELETION_MARK_PATH)
                log.info("tenant %s: deletion finished, tenant deletion mark removed", tenant)
            return
        n = 0
        for name in (yield tb.list("")):
            if name.endswith("/") and is_ulid(name[:-1]):
                yield self._delete_block(tb, name[:-1])
                self._metas.pop((tenant, name[:-1]), None)
                n += 1
        yield bucketindex.delete_index(tb)
        for name in (yield tb.list(markers.MARKERS_DIR + "/", delimiter="")):
            if name != markers.TENANT_DELETION_MARK_PATH:
                yield tb.delete(name)
        yield markers.finish_tenant_deletion(tb, self.clock)
        log.info("tenant %s: deleted %d blocks of a deleted tenant", tenant, n)

    # ---- status ------------------------------------------------------------------------------

    def ring_status(self):
        """What /compactor/ring shows: this single instance and the tenants it owns."""
        return {"id": self.instance_id, "address": self.instance_addr, "state": self.state,
                "last_heartbeat": self.last_heartbeat, "tenants": list(self.tenants),
                "errors": dict(self.errors)}


def _common_labels(metas):
    """External labels every source block shares (the output keeps those, like Thanos)."""
    sets = [dict((m.get("thanos") or {}).get("labels") or {}) for m in metas]
    if not sets:
        return {}
    common = sets[0]
    for s in sets[1:]:
        common = {k: v for k, v in common.items() if s.get(k) == v}
    return common


# ---- block upload ------------------------------------------------------------------------------

class UploadError(E.ComponentError):
    """A block-upload request refused: a cause from components/errors.py and Mimir's text."""

    def __init__(self, cause, message):
        super().__init__(cause, message)


NOT_STARTED, UPLOADING, VALIDATING, FAILED, COMPLETE = (
    "not-started", "uploading", "validating", "failed", "complete")


class BlockUploads:
    """Mimir's block upload API over the compactor's bucket. Every method returns a Deferred and
    fails with UploadError for what the client did wrong."""

    def __init__(self, compactor, max_validations=1):
        self.c = compactor
        self.max_validations = max_validations
        self.validations = 0             # in flight
        self.background = []             # Deferreds of running validations (tests wait on them)

    # -- parameters --

    def parse(self, tenant, block_id):
        """(tenant view, canonical ULID) or UploadError(BAD_DATA)."""
        ulid = block_id.upper() if isinstance(block_id, str) else ""
        if not is_ulid(ulid):
            raise UploadError(E.BAD_DATA, "invalid block ID")
        try:
            validate_tenant(tenant)
        except TenantError:
            raise UploadError(E.BAD_DATA, "invalid tenant ID") from None
        if not self.c.overrides.for_tenant(tenant).compactor_block_upload_enabled:
            raise UploadError(E.BAD_DATA, "block upload is disabled")
        return for_tenant(self.c.bucket, tenant), ulid

    # -- state --

    @defer.inlineCallbacks
    def state(self, tb, ulid):
        """(state, uploading meta or None, validation dict or None)."""
        if (yield tb.exists(ulid + "/" + META)):
            return COMPLETE, None, None
        try:
            meta = json.loads((yield tb.get(ulid + "/" + UPLOADING_META)))
        except NotFound:
            return NOT_STARTED, None, None
        try:
            v = json.loads((yield tb.get(ulid + "/" + VALIDATION)))
        except NotFound:
            return UPLOADING, meta, None
        if v.get("Error"):
            return FAILED, meta, v
        if _now_ms(self.c.clock) - int(v.get("LastUpdate", 0)) < VALIDATION_HEARTBEAT_TIMEOUT_MS:
            return VALIDATING, meta, v
        return UPLOADING, meta, v            # stale validation: the upload may finish again

    @defer.inlineCallbacks
    def _check(self, tb, ulid, require_started):
        state, meta, v = yield self.state(tb, ulid)
        if state == COMPLETE:
            raise UploadError(E.CONFLICT, "block already exists")
        if state == VALIDATING:
            raise UploadError(E.BAD_DATA, "block validation in progress")
        if state == FAILED:
            raise UploadError(E.BAD_DATA, "block validation failed")
        if state == NOT_STARTED and require_started:
            raise UploadError(E.NOT_FOUND, "block upload not started")
        return meta

    # -- endpoints --

    @defer.inlineCallbacks
    def start(self, tenant, block_id, body):
        tb, ulid = self.parse(tenant, block_id)
        yield self._check(tb, ulid, False)
        if len(body) > MAX_META_BYTES:
            raise UploadError(E.TOO_LARGE, "The block metadata was too large (maximum size allowed is %d "
                                   "bytes)" % (MAX_META_BYTES,))
        try:
            meta = json.loads(bytes(body))
        except (ValueError, UnicodeDecodeError):
            raise UploadError(E.BAD_DATA, "malformed request body") from None
        if not isinstance(meta, dict):
            raise UploadError(E.BAD_DATA, "malformed request body")
        msg = self.sanitize(tenant, ulid, meta)
        if msg:
            raise UploadError(E.BAD_DATA, msg)
        retention = self.c.overrides.for_tenant(tenant).compactor_blocks_retention_period
        if retention and meta["maxTime"] < _now_ms(self.c.clock) - retention:
            raise UploadError(E.UNPROCESSABLE, "block max time (%s) older than retention period"
                              % (_fmt_ms(meta["maxTime"]),))
        yield tb.put(ulid + "/" + UPLOADING_META, _go_json(meta))
        log.info("tenant %s: started block upload %s", tenant, ulid)

    def sanitize(self, tenant, ulid, meta):
        """Mimir's checks of an uploaded meta.json; fixes it in place, returns '' or the error."""
        thanos = meta.get("thanos")
        if not isinstance(thanos, dict):
            return "missing thanos section in meta.json"
        down = thanos.get("downsample") or {}
        if isinstance(down, dict) and (down.get("resolution") or 0) > 0:
            return "block contains downsampled data"
        labels = thanos.get("labels") or {}
        if not isinstance(labels, dict):
            return "invalid external labels"
        for name, value in list(labels.items()):
            if name == COMPACTOR_SHARD_LABEL:
                if not value:
                    del labels[name]
                    continue
                m = _SHARD_RE.match(str(value))
                if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
                    return "invalid %s external label: %s" % (COMPACTOR_SHARD_LABEL, json.dumps(value))
            elif name in DEPRECATED_LABELS:
                del labels[name]
            else:
                return "unsupported external label: %s" % (name,)
        thanos["labels"] = labels
        meta["ulid"] = ulid
        compaction = meta.get("compaction")
        if not isinstance(compaction, dict):
            compaction = meta["compaction"] = {"level": 1}
        compaction.pop("parents", None)
        compaction["sources"] = [ulid]
        files = thanos.get("files")
        if not isinstance(files, list) or not files:
            return "missing thanos.files in meta.json"
        total = 0
        have_index = False
        for f in files:
            if not isinstance(f, dict) or not isinstance(f.get("rel_path"), str):
                return "invalid thanos.files entry"
            rel = f["rel_path"]
            if rel == META:
                continue
            if not UPLOAD_PATH_RE.match(rel):
                return "file with invalid path: %s" % (rel,)
            size = f.get("size_bytes")
            if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
                return "file with invalid size: %s" % (rel,)
            have_index = have_index or rel == "index"
            total += size
        if not have_index:
            return "missing index file in thanos.files"
        limit = self.c.overrides.for_tenant(tenant).compactor_block_upload_max_block_size_bytes
        if limit and total > limit:
            return "block exceeds the maximum block size limit of %d bytes" % (limit,)
        if meta.get("version") != 1:
            return "version must be 1"
        mint, maxt = meta.get("minTime"), meta.get("maxTime")
        if any(isinstance(x, bool) or not isinstance(x, int) for x in (mint, maxt)):
            return "invalid minTime/maxTime: minTime=%s, maxTime=%s" % (mint, maxt)
        if mint < 0 or maxt < 0 or maxt <= mint:
            return "invalid minTime/maxTime: minTime=%d, maxTime=%d" % (mint, maxt)
        grace = self.c.overrides.for_tenant(tenant).creation_grace_period
        now = _now_ms(self.c.clock)
        if mint > now + grace or maxt > now + grace:
            return ("block time(s) greater than the present: minTime=%d, maxTime=%d"
                    % (mint, maxt))
        largest = max(self.c.block_ranges_ms) if self.c.block_ranges_ms else 0
        if largest and (maxt - mint > largest or mint // largest != (maxt - 1) // largest):
            return ("block time range [%d, %d) crosses or exceeds the largest compaction range "
                    "(%d ms)" % (mint, maxt, largest))
        thanos["source"] = "upload"
        return ""

    @defer.inlineCallbacks
    def upload_file(self, tenant, block_id, path, body):
        tb, ulid = self.parse(tenant, block_id)
        if not path:
            raise UploadError(E.BAD_DATA, "missing or invalid file path")
        if path.rsplit("/", 1)[-1] == META:
            raise UploadError(E.BAD_DATA, "%s is not allowed" % (META,))
        if not UPLOAD_PATH_RE.match(path):
            raise UploadError(E.BAD_DATA, "invalid path: %s" % (json.dumps(path),))
        if not len(body):
            raise UploadError(E.BAD_DATA, "file cannot be empty")
        meta = yield self._check(tb, ulid, True)
        for f in (meta.get("thanos") or {}).get("files") or ():
            if f.get("rel_path") == path:
                if f.get("size_bytes") != len(body):
                    raise UploadError(E.BAD_DATA, "file size doesn't match %s" % (META,))
                break
        else:
            raise UploadError(E.BAD_DATA, "unexpected file")
        yield tb.put(ulid + "/" + path, body)

    @defer.inlineCallbacks
    def finish(self, tenant, block_id):
        tb, ulid = self.parse(tenant, block_id)
        meta = yield self._check(tb, ulid, True)
        limits = self.c.overrides.for_tenant(tenant)
        if not limits.compactor_block_upload_validation_enabled:
            yield self._mark_complete(tb, ulid, meta)
            return
        if self.max_validations and self.validations >= self.max_validations:
            raise UploadError(E.RATE_LIMITED, "too many block upload validations in progress, limit is %d"
                              % (self.max_validations,))
        self.validations += 1
        try:
            yield self._write_validation(tb, ulid, "")
        except Exception:
            self.validations -= 1
            raise
        d = self._validate_and_complete(tenant, tb, ulid, meta,
                                        limits.compactor_block_upload_verify_chunks)
        self.background.append(d)
        d.addBoth(self._validation_done, d)
        log.info("tenant %s: block upload %s finished by the client; validating", tenant, ulid)

    def _validation_done(self, result, d):
        self.validations -= 1
        if d in self.background:
            self.background.remove(d)
        return None

    @defer.inlineCallbacks
    def check(self, tenant, block_id):
        """Deferred[dict] for /check: {"result": ..., "error"?: ...}; 404 when never started."""
        tb, ulid = self.parse(tenant, block_id)
        state, _, v = yield self.state(tb, ulid)
        if state == NOT_STARTED:
            raise UploadError(E.NOT_FOUND, "block doesn't exist")
        out = {"result": state}
        if state == FAILED:
            out["error"] = v.get("Error", "")
        return out

    # -- validation --

    def _write_validation(self, tb, ulid, error):
        body = json.dumps({"LastUpdate": _now_ms(self.c.clock), "Error": error},
                          separators=(",", ":")).encode()
        return tb.put(ulid + "/" + VALIDATION, body)

    @defer.inlineCallbacks
    def _validate_and_complete(self, tenant, tb, ulid, meta, verify_chunks):
        heartbeat = task.LoopingCall(self._heartbeat, tb, ulid)
        heartbeat.clock = self.c.clock
        heartbeat.start(VALIDATION_HEARTBEAT_S, now=False).addErrback(lambda f: None)
        try:
            yield self._validate(tenant, tb, ulid, meta, verify_chunks)
        except Exception as e:
            if heartbeat.running:
                heartbeat.stop()
            msg = str(e) or type(e).__name__
            log.warning("tenant %s: block upload %s failed validation: %s", tenant, ulid, msg)
            try:
                yield self._write_validation(tb, ulid, msg)
            except Exception as e2:
                log.error("tenant %s: could not record the failed validation of %s: %s",
                          tenant, ulid, e2)
            return
        if heartbeat.running:
            heartbeat.stop()
        try:
            yield self._mark_complete(tb, ulid, meta)
            yield tb.delete(ulid + "/" + VALIDATION)
        except Exception as e:
            log.error("tenant %s: completing block upload %s failed: %s", tenant, ulid, e)
            try:
                yield self._write_validation(tb, ulid, "completing the upload failed: %s" % (e,))
            except Exception:
                pass
            return
        log.info("tenant %s: block upload %s complete", tenant, ulid)

    def _heartbeat(self, tb, ulid):
        d = self._write_validation(tb, ulid, "")
        d.addErrback(lambda f: log.warning("validation heartbeat of %s failed: %s", ulid,
                                           f.getErrorMessage()))
        return None

    @defer.inlineCallbacks
    def _validate(self, tenant, tb, ulid, meta, verify_chunks):
        limit = self.c.overrides.for_tenant(tenant).compactor_block_upload_max_block_size_bytes
        files = [f for f in meta["thanos"]["files"] if f.get("rel_path") != META]
        if limit and sum(f["size_bytes"] for f in files) > limit:
            raise ValueError("block exceeds the maximum block size limit of %d bytes" % (limit,))
        scratch = os.path.join(self.c.data_dir, "upload", uuid.uuid4().hex)
        try:
            yield self._download_and_verify(tb, ulid, meta, files, scratch, verify_chunks)
        except BaseException:
            yield self.c._off(shutil.rmtree, scratch, True)
            raise
        yield self.c._off(shutil.rmtree, scratch, True)

    @defer.inlineCallbacks
    def _download_and_verify(self, tb, ulid, meta, files, scratch, verify_chunks):
        bdir = os.path.join(scratch, ulid)
        present = set(n[len(ulid) + 1:] for n in (yield tb.list(ulid + "/", delimiter="")))
        for f in files:
            rel = f["rel_path"]
            if rel not in present:
                raise ValueError("missing %s file" % (rel,))
            attrs = yield tb.attributes(ulid + "/" + rel)
            if attrs.size != f["size_bytes"]:
                raise ValueError("file size mismatch for %s" % (rel,))
            data = yield tb.get(ulid + "/" + rel)
            yield self.c._off(_write_file, os.path.join(bdir, *rel.split("/")), data)
        yield self.c._off(_write_file, os.path.join(bdir, META), meta_json(meta))
        yield self.c._off(verify_block, bdir, meta["minTime"], meta["maxTime"], verify_chunks)

    @defer.inlineCallbacks
    def _mark_complete(self, tb, ulid, meta):
        yield tb.put(ulid + "/" + META, meta_json(meta))
        try:
            yield tb.delete(ulid + "/" + UPLOADING_META)
        except Exception as e:
            log.warning("could not delete %s/%s: %s", ulid, UPLOADING_META, e)


def _go_json(obj):
    """Compact JSON with a trailing newline, as Go's json.Encoder writes."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"


def _fmt_ms(t):
    """RFC 3339 UTC with milliseconds, for messages."""
    return datetime.datetime.fromtimestamp(t / 1000.0, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
