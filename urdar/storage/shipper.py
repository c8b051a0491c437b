"""The shipper: uploads the blocks an ingester cuts from one tenant's TSDB directory to the bucket.

`Shipper(tsdb_dir, bucket, clock).sync()` lists the complete local blocks (`<ULID>/meta.json`),
and uploads each one not yet shipped to `<ULID>/chunks/NNNNNN`, `<ULID>/index` and, LAST,
`<ULID>/meta.json`, so a reader (store-gateway, compactor, bucket index) never sees a block whose
files are not all there: a block without meta.json is a partial upload and is ignored. The
uploaded meta.json carries Mimir's `thanos` section (labels {}, downsample resolution 0, source
"ingester", files with their sizes); the local one is left as the TSDB wrote it. What was shipped is
remembered in `<tsdb dir>/thanos.shipper.json` ({"version": 1, "uploaded": [ULIDs]}, Thanos'
file), written atomically after each block, so a restart does not upload twice. A failed upload
stops the round; the block is tried again from scratch on the next sync, nothing is lost. The
directory scan, meta.json reads and the shipper file write run off the reactor (`offload` pool
`pool`); file contents go to the bucket as paths, which each backend reads off the reactor."""
import json
import logging
import os

from twisted.internet import defer
from twisted.python.failure import Failure

from urdar.engine.block import is_ulid, read_meta
from urdar.storage.bucket import run_off_reactor

log = logging.getLogger("urdar.shipper")

SHIPPER_FILE = "thanos.shipper.json"
SHIPPER_VERSION = 1
SOURCE_INGESTER = "ingester"


class LocalBlock:
    """A complete block on local disk: its ULID, meta.json dict and files [(rel_path, size)]."""
    __slots__ = ("ulid", "dir", "meta", "files")

    def __init__(self, ulid, path, meta, files):
        self.ulid = ulid
        self.dir = path
        self.meta = meta
        self.files = files


def read_shipped(tsdb_dir):
    """Blocking: the set of ULIDs in `tsdb_dir`'s shipper file (empty when absent or unreadable;
    an unreadable file means blocks are shipped again, which is harmless)."""
    path = os.path.join(tsdb_dir, SHIPPER_FILE)
    try:
        with open(path, "rb") as f:
            obj = json.loads(f.read())
    except FileNotFoundError:
        return set()
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable shipper file %s: %s", path, e)
        return set()
    if not isinstance(obj, dict) or obj.get("version") != SHIPPER_VERSION:
        log.warning("ignoring shipper file %s of unknown version", path)
        return set()
    return {u for u in obj.get("uploaded") or () if isinstance(u, str) and is_ulid(u)}


def write_shipped(tsdb_dir, ulids):
    """Blocking: atomically replace `tsdb_dir`'s shipper file with `ulids` (sorted)."""
    path = os.path.join(tsdb_dir, SHIPPER_FILE)
    tmp = path + ".tmp"
    data = json.dumps({"version": SHIPPER_VERSION, "uploaded": sorted(ulids)}, indent="\t").encode()
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def scan_blocks(tsdb_dir):
    """Blocking: the complete blocks in `tsdb_dir` (ULID directories with a meta.json), oldest
    first. A block whose meta.json cannot be read is skipped with a warning."""
    out = []
    try:
        names = sorted(os.listdir(tsdb_dir))
    except FileNotFoundError:
        return out
    for name in names:
        path = os.path.join(tsdb_dir, name)
        if not is_ulid(name) or not os.path.isfile(os.path.join(path, "meta.json")):
            continue
        try:
            meta = read_meta(path)
            files = [("chunks/" + seg, os.path.getsize(os.path.join(path, "chunks", seg)))
                     for seg in sorted(os.listdir(os.path.join(path, "chunks")))]
            files.append(("index", os.path.getsize(os.path.join(path, "index"))))
        except (OSError, ValueError) as e:
            log.warning("not shipping block %s: %s", path, e)
            continue
        out.append(LocalBlock(name, path, meta, files))
    out.sort(key=lambda b: (b.meta["minTime"], b.ulid))
    return out


def shipped_meta_json(meta, files, source=SOURCE_INGESTER):
    """meta.json bytes as uploaded: the local meta plus Mimir's `thanos` section."""
    meta = dict(meta)
    thanos = dict(meta.get("thanos") or {})
    thanos.setdefault("labels", {})
    thanos.setdefault("downsample", {"resolution": 0})
    thanos["source"] = thanos.get("source") or source
    thanos["files"] = ([{"rel_path": rel, "size_bytes": size} for rel, size in files]
                       + [{"rel_path": "meta.json"}])
    meta["thanos"] = thanos
    return json.dumps(meta, indent="\t").encode() + b"\n"


class Shipper:
    """Ships the blocks of one TSDB directory to `bucket` (the tenant's view of the blocks bucket).

    `sync()` is safe to call repeatedly; calls made while one runs share its Deferred."""

    def __init__(self, tsdb_dir, bucket, clock, offload=None, pool="compact", reactor=None,
                 source=SOURCE_INGESTER):
        self.dir = os.fspath(tsdb_dir)
        self.bucket = bucket
        self.clock = clock
        self.source = source
        self._offload = offload
        self._pool = pool
        self._reactor = reactor
        self._shipped = None          # set of ULIDs, loaded on the first sync
        self._running = None
        self.uploads = 0              # blocks shipped by this object
        self.failures = 0             # rounds stopped by a failed upload
        self.last_success_s = None    # clock seconds of the last round with no failure

    def _run(self, fn, *args):
        return run_off_reactor(self._offload, self._pool, self._reactor, fn, *args)

    def is_shipped(self, ulid):
        """Whether `ulid` is known to be in the bucket (False before the first sync)."""
        return self._shipped is not None and ulid in self._shipped

    def shipped(self):
        """Sorted ULIDs known to be in the bucket."""
        return sorted(self._shipped or ())

    def sync(self):
        """Deferred[list of ULIDs uploaded in this round]; fails with the first upload error
        (the blocks uploaded before it stay recorded)."""
        if self._running is not None:
            waiter = defer.Deferred()
            self._running.append(waiter)
            return waiter
        self._running = []
        d = self._sync()

        def done(result):
            waiters, self._running = self._running, None
            for w in waiters:
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(result)
            return result
        return d.addBoth(done)

    @defer.inlineCallbacks
    def _sync(self):
        if self._shipped is None:
            self._shipped = yield self._run(read_shipped, self.dir)
        blocks = yield self._run(scan_blocks, self.dir)
        made = []
        try:
            for b in blocks:
                if b.ulid in self._shipped:
                    continue
                yield self._upload(b)
                self._shipped.add(b.ulid)
                yield self._run(write_shipped, self.dir, set(self._shipped))
                made.append(b.ulid)
                self.uploads += 1
                log.info("shipped block %s [%d, %d) to %r", b.ulid, b.meta["minTime"],
                         b.meta["maxTime"], self.bucket)
        except Exception as e:
            self.failures += 1
            log.warning("shipping from %s stopped (retried next round): %s", self.dir, e)
            raise
        self.last_success_s = self.clock.seconds()
        return made

    @defer.inlineCallbacks
    def _upload(self, b):
        for rel, _size in b.files:
            yield self.bucket.put("%s/%s" % (b.ulid, rel), os.path.join(b.dir, *rel.split("/")))
        # meta.json goes last: its presence is what makes the block visible.
        yield self.bucket.put(b.ulid + "/meta.json", shipped_meta_json(b.meta, b.files, self.source))

    def forget(self, ulids):
        """Drop ULIDs of blocks deleted locally from the shipper file's in-memory set (they stay
        in the bucket). Deferred."""
        if self._shipped is None:
            return defer.succeed(None)
        gone = set(ulids) & self._shipped
        if not gone:
            return defer.succeed(None)
        self._shipped -= gone
        return self._run(write_shipped, self.dir, set(self._shipped))
