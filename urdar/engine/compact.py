"""Compaction of local blocks: the planner and the merger (Prometheus' LeveledCompactor).

plan() picks what to merge next: overlapping blocks first (vertical compaction: the copies
several ingesters or an out-of-order head produced), then aligned groups of adjacent blocks
that fill a larger range (horizontal: 2h -> 12h -> 24h). compact_blocks() writes the merged
block: chunks that do not overlap are copied as they are; overlapping series are decoded,
merged (one sample per timestamp) and re-encoded."""
from urdar.engine import block as _block
from urdar.engine.block import ENC_FLOAT_HISTOGRAM, ENC_HISTOGRAM
from urdar.engine.histchunk import (
    decode_histogram_chunk, encode_histogram_samples, merge_histogram_parts)
from urdar.engine.querier import merge_samples
from urdar.engine.xorchunk import decode_xor, encode_xor

SAMPLES_PER_CHUNK = 120


def _span(b):
    return b.meta["minTime"], b.meta["maxTime"]


def plan(blocks, ranges, keep_newest=True):
    """Blocks to merge next (a list of 2 or more), or [] when nothing is due.

    `ranges` are the block ranges in ms, smallest first (the first is the head's). With
    keep_newest (the local TSDB, whose head may still cut a neighbour) the newest block never
    joins a horizontal group; without it (the bucket compactor, Mimir's planner) it may, but
    only in a group that fills its whole range."""
    blocks = sorted(blocks, key=_span)
    # vertical: any overlap, whatever the sizes
    group = []
    group_max = None
    for b in blocks:
        lo, hi = _span(b)
        if group and lo < group_max:
            group.append(b)
            group_max = max(group_max, hi)
            continue
        if len(group) > 1:
            return group
        group, group_max = [b], hi
    if len(group) > 1:
        return group
    if len(blocks) < 2:
        return []
    # horizontal: leave the newest block alone, give it time to be joined by its neighbours
    newest_min = blocks[-1].meta["minTime"]
    candidates = blocks[:-1] if keep_newest else blocks
    for r in ranges[1:]:
        windows = {}
        for b in candidates:
            lo, hi = _span(b)
            start = (lo // r) * r
            if hi > start + r:
                continue  # larger than this range already
            windows.setdefault(start, []).append(b)
        for start in sorted(windows):
            g = windows[start]
            if len(g) < 2:
                continue
            lo = min(b.meta["minTime"] for b in g)
            hi = max(b.meta["maxTime"] for b in g)
            if hi - lo == r or start + r <= newest_min:
                return g
    return []


def _chunks_of(b, sid):
    key, mints, maxts, refs = b.index.series(sid)
    out = []
    for k in range(len(refs)):
        enc, data = b.chunks.chunk(refs[k])
        out.append((mints[k], maxts[k], enc, bytes(data)))
    return key, out


def _overlapping(chunk_lists):
    spans = sorted((c[0], c[1]) for cl in chunk_lists for c in cl)
    return any(spans[i][0] <= spans[i - 1][1] for i in range(1, len(spans)))


def merge_series_chunks(chunk_lists):
    """One series' chunks from several blocks -> its chunks in the merged block."""
    if len(chunk_lists) == 1 or not _overlapping(chunk_lists):
        return sorted((c for cl in chunk_lists for c in cl), key=lambda c: c[0])
    parts = []
    for cl in chunk_lists:
        for mint, maxt, enc, data in cl:
            if enc == 1:
                parts.append(decode_xor(data))
    ts, vs = merge_samples(parts)
    out = []
    for a in range(0, len(ts), SAMPLES_PER_CHUNK):
        b = min(a + SAMPLES_PER_CHUNK, len(ts))
        out.append((ts[a], ts[b - 1], 1, encode_xor(ts[a:b], vs[a:b])))
    hparts = [decode_histogram_chunk(data, enc) for cl in chunk_lists
              for _, _, enc, data in cl if enc in (ENC_HISTOGRAM, ENC_FLOAT_HISTOGRAM)]
    if hparts:
        hts, hvs = merge_histogram_parts(hparts)
        out.extend(encode_histogram_samples(list(zip(hts, hvs)), SAMPLES_PER_CHUNK))
        out.sort(key=lambda c: (c[0], c[1]))
    return out


def compact_blocks(parent_dir, blocks):
    """Merge `blocks` into one new block under parent_dir; returns its ULID.

    The sources are left in place: the caller swaps them out and deletes them."""
    per_key = {}
    for b in blocks:
        for sid in b.index.all_postings():
            key, chunks = _chunks_of(b, sid)
            if chunks:
                per_key.setdefault(key, []).append(chunks)
    series = [(key, merge_series_chunks(cls)) for key, cls in per_key.items()]
    mint = min(b.meta["minTime"] for b in blocks)
    maxt = max(b.meta["maxTime"] for b in blocks)
    level = max(b.meta.get("compaction", {}).get("level", 1) for b in blocks) + 1
    sources = sorted({s for b in blocks for s in b.meta.get("compaction", {}).get("sources", [b.meta["ulid"]])})
    parents = [{"ulid": b.meta["ulid"], "minTime": b.meta["minTime"], "maxTime": b.meta["maxTime"]}
               for b in blocks]
    return _block.write_block(parent_dir, mint, maxt, series, level=level, sources=sources, parents=parents)
