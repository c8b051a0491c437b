"""One tenant's TSDB: the head (WAL, open chunks) plus the local blocks it has cut.

This is the ingester's storage unit (Mimir keeps one Prometheus TSDB per tenant). It cuts
the head into 2h blocks in the Prometheus on-disk format, compacts local blocks, applies
retention, and answers selects over head and blocks as one store, merging overlap."""
import logging
import os
import shutil

from urdar.engine import block as _block
from urdar.engine import compact as _compact
from urdar.engine.blockquery import block_select, block_label_names, block_label_values
from urdar.engine.head import Head
from urdar.engine.histchunk import merge_histogram_parts
from urdar.engine.index import sort_label_keys
from urdar.engine.querier import merge_samples
from urdar.profiling.contention import Lock

log = logging.getLogger("urdar.engine.tsdb")

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
HOUR_MS = 3600 * 1000


class TSDB:
    """Head + blocks of one tenant under `dir` (wal/, chunks_head/, <ULID>/...).

    block_range_ms: head block size (and chunk range), Mimir's -blocks-storage.tsdb.block-ranges-period.
    compaction_ranges_ms: local levelled compaction ranges after the first (empty = none).
    retention_ms: blocks ending more than this before the newest block's end are deleted (0 = keep).
    """

    def __init__(self, dir, block_range_ms=2 * HOUR_MS, ooo_window_ms=0, retention_ms=0,
                 compaction_ranges_ms=(12 * HOUR_MS, 24 * HOUR_MS), max_series=0,
                 max_exemplars=100000, wal_segment_bytes=128 * 1024 * 1024,
                 head_chunk_file_bytes=128 * 1024 * 1024):
        self.dir = os.fspath(dir)
        self.block_range_ms = block_range_ms
        self.retention_ms = retention_ms
        self.compaction_ranges_ms = tuple(compaction_ranges_ms)
        self._blocks_lock = Lock()       # urdar.profiling.contention: shows in /debug/pprof/block
        self._compact_lock = Lock()
        os.makedirs(self.dir, exist_ok=True)
        self._clean_tmp_dirs()
        self._blocks = self._open_blocks()
        min_valid = max((b.meta["maxTime"] for b in self._blocks), default=INT64_MIN)
        self.head = Head(self.dir, chunk_range=block_range_ms, ooo_window=ooo_window_ms,
                         max_series=max_series, min_valid_time=min_valid,
                         max_exemplars=max_exemplars, wal_segment_bytes=wal_segment_bytes,
                         head_chunk_file_bytes=head_chunk_file_bytes)

    # ---- lifecycle -------------------------------------------------------------------

    def _clean_tmp_dirs(self):
        for name in os.listdir(self.dir):
            if name.endswith((".tmp-for-creation", ".tmp-for-deletion", ".tmp")):
                shutil.rmtree(os.path.join(self.dir, name), ignore_errors=True)

    def _open_blocks(self):
        blocks = []
        for name in sorted(os.listdir(self.dir)):
            path = os.path.join(self.dir, name)
            if _block.is_ulid(name) and os.path.isfile(os.path.join(path, "meta.json")):
                blocks.append(_block.BlockReader(path))
        blocks.sort(key=lambda b: (b.meta["minTime"], b.meta["maxTime"]))
        return blocks

    def close(self):
        self.head.close()
        with self._blocks_lock:
            for b in self._blocks:
                b.close()
            self._blocks = []

    def blocks(self):
        """Snapshot of the open blocks, oldest first."""
        with self._blocks_lock:
            return list(self._blocks)

    # ---- writing ---------------------------------------------------------------------

    def append_batch(self, *args, **kwargs):
        """See Head.append_batch."""
        return self.head.append_batch(*args, **kwargs)

    def cut_blocks(self, force=False):
        """Write head data to blocks: each complete block range (head spans > 1.5 ranges), or
        with force=True everything (flush/shutdown). Returns the new block ULIDs."""
        with self._compact_lock:
            return self._cut_blocks(force)

    def _cut_blocks(self, force):
        made = []
        while True:
            if force:
                if self.head.maxt == INT64_MIN or self.head.num_series == 0:
                    break
                lo = (self.head.mint // self.block_range_ms) * self.block_range_ms
                hi = min(lo + self.block_range_ms, self.head.maxt + 1)
            else:
                r = self.head.compactable_range()
                if r is None:
                    break
                lo, hi = r
            self.head.seal(hi)
            series = self.head.chunks_for_block(lo, hi)
            ulid = None
            if series:
                ulid = _block.write_block(self.dir, lo, hi, series)
                reader = _block.BlockReader(os.path.join(self.dir, ulid))
                with self._blocks_lock:
                    self._blocks.append(reader)
                    self._blocks.sort(key=lambda b: (b.meta["minTime"], b.meta["maxTime"]))
                made.append(ulid)
                log.info("cut block %s [%d, %d) with %d series", ulid, lo, hi, len(series))
            self.head.truncate(hi)
        return made

    def compact(self):
        """One round of local compaction and retention; returns the new block ULIDs."""
        with self._compact_lock:
            made = []
            while True:
                plan = _compact.plan(self.blocks(), (self.block_range_ms,) + self.compaction_ranges_ms)
                if not plan:
                    break
                ulid = _compact.compact_blocks(self.dir, plan)
                new = _block.BlockReader(os.path.join(self.dir, ulid))
                self._replace_blocks(plan, [new])
                made.append(ulid)
            self.apply_retention()
            return made

    def _replace_blocks(self, old, new):
        with self._blocks_lock:
            gone = {b.dir for b in old}
            self._blocks = [b for b in self._blocks if b.dir not in gone] + list(new)
            self._blocks.sort(key=lambda b: (b.meta["minTime"], b.meta["maxTime"]))
        for b in old:
            # Readers still holding the block keep their mappings; unlinking is safe on Linux.
            self._delete_block_dir(b.dir)

    def delete_blocks(self, blocks):
        """Drop these blocks (BlockReaders from blocks()) from the TSDB and delete them on disk,
        e.g. once shipped to object storage and past local retention."""
        if blocks:
            self._replace_blocks(list(blocks), [])

    def _delete_block_dir(self, path):
        tmp = path + ".tmp-for-deletion"
        os.rename(path, tmp)
        shutil.rmtree(tmp, ignore_errors=True)

    def apply_retention(self):
        """Delete blocks that end retention_ms or more before the newest block's end."""
        if not self.retention_ms:
            return []
        blocks = self.blocks()
        if not blocks:
            return []
        newest = max(b.meta["maxTime"] for b in blocks)
        old = [b for b in blocks if b.meta["maxTime"] <= newest - self.retention_ms]
        if old:
            self._replace_blocks(old, [])
        return [b.meta["ulid"] for b in old]

    # ---- reading ---------------------------------------------------------------------

    def select(self, matchers, mint=INT64_MIN, maxt=INT64_MAX, samples=True):
        """Series matching matchers with samples in [mint, maxt], head and blocks merged.

        Returns [(label key, array('q') ts, array('d') vals)] sorted in label order; with
        samples=False the arrays are None. Series with native histograms in range come as
        (key, ts, vals, None, hts, hvs) (Head.select's contract)."""
        head = self.head.select(matchers, mint, maxt, samples)
        blocks = [b for b in self.blocks() if not (b.meta["maxTime"] <= mint or b.meta["minTime"] > maxt)]
        if not blocks:
            # Head only (recent data, e.g. instant queries): keys are unique, just sort them.
            return [head[i] for i in sort_label_keys([item[0] for item in head])]
        parts = {}
        hparts = {}
        for item in head:
            parts[item[0]] = [(item[1], item[2])]
            if len(item) > 4:
                hparts[item[0]] = [(item[4], item[5])]
        for b in blocks:
            for item in block_select(b, matchers, mint, maxt, samples):
                key = item[0]
                p = parts.get(key)
                if p is None:
                    parts[key] = [(item[1], item[2])]
                else:
                    p.append((item[1], item[2]))
                if len(item) > 4:
                    hparts.setdefault(key, []).append((item[4], item[5]))
        out = []
        keys = list(parts)
        for key in (keys[i] for i in sort_label_keys(keys)):
            if samples:
                p = parts[key]
                ts, vs = p[0] if len(p) == 1 else merge_samples(p)
                hp = hparts.get(key)
                if hp:
                    hts, hvs = merge_histogram_parts(hp)
                    if len(hts):
                        out.append((key, ts, vs, None, hts, hvs))
                        continue
                if len(ts):
                    out.append((key, ts, vs))
            else:
                out.append((key, None, None))
        return out

    def append_histograms(self, labels_key, samples):
        """See Head.append_histograms."""
        return self.head.append_histograms(labels_key, samples)

    def label_names(self, matchers=(), mint=INT64_MIN, maxt=INT64_MAX):
        return _union_sorted([self.head.label_names_for(matchers, mint, maxt)] + [
            block_label_names(b, matchers) for b in self.blocks()
            if not (b.meta["maxTime"] <= mint or b.meta["minTime"] > maxt)])

    def label_values(self, name, matchers=(), mint=INT64_MIN, maxt=INT64_MAX):
        return _union_sorted([self.head.label_values_for(name, matchers, mint, maxt)] + [
            block_label_values(b, name, matchers) for b in self.blocks()
            if not (b.meta["maxTime"] <= mint or b.meta["minTime"] > maxt)])


def _union_sorted(lists):
    """The sorted distinct strings of sorted distinct lists: the one non-empty list as it is
    (a head-only tenant's 200k label values skip a set and a sort)."""
    lists = [x for x in lists if x]
    if len(lists) <= 1:
        return list(lists[0]) if lists else []
    return sorted(set().union(*lists))
