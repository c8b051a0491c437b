"""Selects over one block: matchers -> postings -> series -> samples in a time range.

Composes the block's index (postings, series) with the XOR decoder; the head has the same
interface, so the TSDB merges both without caring which is which."""
from urdar.engine import matchers as _matchers
from urdar.engine import sharding as _sharding
from urdar.engine.labels import decode_labels, labels_dict


def block_select(block, matchers, mint, maxt, samples=True):
    """[(label key, array('q') ts, array('d') vals)] of the block's matching series with
    samples in [mint, maxt], in the index's (label) order; arrays are None without samples.
    A `__query_shard__` matcher keeps only the series of that shard (engine/sharding.py)."""
    shard, matchers = _sharding.split_shard_matchers(matchers)
    ids = _matchers.postings_for_matchers(block.index, matchers)
    if shard is not None:
        # Out-of-shard series are dropped on their index entry, before any chunk is read.
        ids = [sid for sid in ids if shard.matches(block.index.series(sid)[0])]
    if samples:
        return list(block.iter_series(mint, maxt, ids))
    out = []
    for sid in ids:
        key, mints, maxts, _ = block.index.series(sid)
        if any(maxts[k] >= mint and mints[k] <= maxt for k in range(len(mints))):
            out.append((key, None, None))
    return out


def block_label_names(block, matchers=()):
    if not matchers:
        return block.index.label_names()
    names = set()
    for key, _, _ in block_select(block, matchers, -(2**63), 2**63 - 1, samples=False):
        names.update(n for n, _ in decode_labels(key))
    return sorted(names)


def block_label_values(block, name, matchers=()):
    if not matchers:
        return block.index.label_values(name)
    values = set()
    for key, _, _ in block_select(block, matchers, -(2**63), 2**63 - 1, samples=False):
        v = labels_dict(key).get(name)
        if v:
            values.add(v)
    return sorted(values)
