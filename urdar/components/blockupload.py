"""Block upload (Mimir's /api/v1/upload/block/<ULID>/{start,files,finish,check}) into the compactor's
bucket; handlers/compactor.py serves the routes, components/compactor.py owns the bucket, clock
and pool this module borrows.

start stores the sanitized meta as <ULID>/uploading-meta.json, files go to <ULID>/index and
<ULID>/chunks/NNNNNN, finish starts a background validation tracked in <ULID>/validation.json
({"LastUpdate": ms, "Error": text}, heartbeat every minute) and, when the block passes, writes
meta.json. State lives in the bucket, so any compactor can answer /check. Validation errors are
shown to clients, so they name files inside the block, never a server path."""
import datetime
import json
import logging
import os
import re
import shutil
import uuid

from twisted.internet import defer, task

from urdar.components import errors as E
from urdar.engine.block import BlockReader, is_ulid, meta_json
from urdar.engine.index import compare_label_keys
from urdar.engine.labels import decode_labels
from urdar.engine.histchunk import decode_histogram_chunk
from urdar.engine.xorchunk import decode_xor
from urdar.net.tenant import TenantError, validate_tenant
from urdar.storage.bucket import NotFound
from urdar.storage.prefixed import for_tenant

log = logging.getLogger("urdar.blockupload")

META = "meta.json"
UPLOADING_META = "uploading-meta.json"
VALIDATION = "validation.json"
# Files of a block the compactor downloads (marks and upload state stay remote), and the only
# paths the upload API accepts; always used with fullmatch ("$" would let "index\n" through).
# [0-9], not \d: Go's \d is ASCII, Python's matches any digit.
BLOCK_FILE_RE = re.compile(r"index|chunks/[0-9]{6}")
UPLOAD_PATH_RE = BLOCK_FILE_RE
MAX_META_BYTES = 1 << 20
VALIDATION_HEARTBEAT_S = 60.0
VALIDATION_HEARTBEAT_TIMEOUT_MS = 5 * 60 * 1000
COMPACTOR_SHARD_LABEL = "__compactor_shard_id__"
# External labels older Cortex/Mimir versions wrote; an upload drops them silently.
DEPRECATED_LABELS = ("__org_id__", "__ingester_id__", "__shard_id__")
_SHARD_RE = re.compile(r"([0-9]+)_of_([0-9]+)")


def now_ms(clock):
    return int(clock.seconds() * 1000)


def write_file(path, data):
    """Write `data` to `path`, creating its directory. Blocking (run in the compactor pool)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def verify_block(block_dir, mint, maxt, verify_chunks=True):
    """Raise ValueError naming the first problem of a downloaded block: unreadable index or chunk
    files, series out of label order, labels unsorted or duplicated, chunks outside [mint, maxt]
    or overlapping, and (verify_chunks) chunk CRCs and XOR encoding. Blocking."""
    try:
        reader = BlockReader(block_dir, verify=verify_chunks)
    except Exception as e:
        raise ValueError("error validating block: %s" % (_without_dir(str(e), block_dir),)) from None
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
                    if enc in (1, 2, 3):
                        ts = decode_xor(data)[0] if enc == 1 else decode_histogram_chunk(data, enc)[0]
                        if len(ts) and (ts[0] < cmin or ts[len(ts) - 1] > cmax):
                            raise ValueError("error validating block: samples of series %s lie "
                                             "outside their chunk's range" % (_fmt(labels),))
            n += 1
        return n
    except ValueError as e:
        if str(e).startswith("error validating block"):
            raise
        raise ValueError("error validating block: %s" % (_without_dir(str(e), block_dir),)) from None
    finally:
        reader.close()


def _without_dir(text, directory):
    """`text` with the local directory in front of the block's file names cut off: clients see
    "chunks/000001", never where the compactor keeps its scratch copy."""
    directory = os.path.abspath(directory).rstrip(os.sep)
    return text.replace(directory + os.sep, "").replace(directory, ".")


def _fmt(labels):
    return "{%s}" % ", ".join('%s="%s"' % (n, v) for n, v in labels)


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
        if now_ms(self.c.clock) - int(v.get("LastUpdate", 0)) < VALIDATION_HEARTBEAT_TIMEOUT_MS:
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
        if retention and meta["maxTime"] < now_ms(self.c.clock) - retention:
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
                m = _SHARD_RE.fullmatch(str(value))
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
            if not UPLOAD_PATH_RE.fullmatch(rel):
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
        now = now_ms(self.c.clock)
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
        if not UPLOAD_PATH_RE.fullmatch(path):
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
        body = json.dumps({"LastUpdate": now_ms(self.c.clock), "Error": error},
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
            # Shown by /check: drop scratch-dir paths (errors from the local copy name files).
            msg = _without_dir(str(e) or type(e).__name__, os.path.join(self.c.data_dir, "upload"))
            msg = re.sub(r"[0-9a-f]{32}/%s/" % ulid, "", msg)
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
            yield self.c._off(write_file, os.path.join(bdir, *rel.split("/")), data)
        yield self.c._off(write_file, os.path.join(bdir, META), meta_json(meta))
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
