"""The compactor: merges each tenant's blocks in object storage, deletes what it replaced or what
retention drops, keeps the bucket index, deletes tenants, and takes block uploads (Mimir's
compactor); the upload API itself lives in components/blockupload.py. Several compactors share
the tenants by the compactor ring (`sharding`, components/compactorshard.py): each compacts and
cleans only the tenants it owns, asked again before each tenant, and starts once the ring shows
it ACTIVE; without a ring (one process) every tenant is its own.

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
its blocks are deleted."""
import json
import logging
import os
import shutil
import socket
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge
from twisted.internet import defer, task

from urdar.components.blockupload import BLOCK_FILE_RE, META, BlockUploads, now_ms, write_file
from urdar.engine.block import BlockReader, is_ulid, meta_json, read_meta
from urdar.engine.compact import compact_blocks, plan
from urdar.net.tenant import validate_tenant
from urdar.storage import bucketindex, markers
from urdar.storage.bucket import NotFound, run_off_reactor
from urdar.storage.prefixed import for_tenant

if TYPE_CHECKING:
    from _typeshed import SupportsGetItem

log = logging.getLogger("urdar.compactor")

H_MS = 3600 * 1000


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


# ---- blocking helpers (run in the compactor pool) -------------------------------------------

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
                 reactor=None, pool="compactor", instance_id=None, instance_addr="", registry=None,
                 sharding=None):
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
        self.sharding = sharding         # compactorshard.TenantOwnership, None: every tenant owned
        self.tenants = []                # tenants seen in the last listing
        self.errors = {}                 # tenant -> last error text of compaction or cleanup
        self.last_heartbeat = None       # Unix s of the last finished cycle
        self.compactions_total = 0       # blocks written by compaction
        self.deleted_total = 0           # blocks deleted after their delay
        self._metas = {}                 # (tenant, ulid) -> _Block
        self._running = None             # Deferred of the cycle in progress
        self._loops = []
        self._waiting = None             # the next readiness check while the ring lacks us
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

    READY_POLL_S = 0.5

    def start(self):
        """Run a compaction cycle now and every compaction interval, cleanup likewise; with a
        ring, from when the ring shows this instance ACTIVE (polled every READY_POLL_S)."""
        self.state = "ACTIVE"
        self.last_heartbeat = self.clock.seconds()
        if self.sharding is not None and not self.sharding.ready():
            self._waiting = self.clock.callLater(self.READY_POLL_S, self.start)
            return
        self._waiting = None
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
        if self._waiting is not None and self._waiting.active():
            self._waiting.cancel()
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

    def owns(self, tenant):
        """Whether this instance compacts and cleans `tenant` now (the compactor ring's owner)."""
        return self.sharding is None or self.sharding.owns(tenant)

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
            if not self.owns(tenant):
                continue
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
            if not self.owns(tenant):
                continue
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
        threshold = now_ms(self.clock) - retention
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
            if rel != META and not BLOCK_FILE_RE.fullmatch(rel):
                continue
            data = yield tb.get(name)
            yield self._off(write_file, os.path.join(bdir, *rel.split("/")), data)
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


def _common_labels(metas):
    """External labels every source block shares (the output keeps those, like Thanos)."""
    sets = [dict((m.get("thanos") or {}).get("labels") or {}) for m in metas]
    if not sets:
        return {}
    common = sets[0]
    for s in sets[1:]:
        common = {k: v for k, v in common.items() if s.get(k) == v}
    return common
