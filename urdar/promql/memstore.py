"""A small in-memory Queryable for the PromQL evaluator (tests, the promqltest runner, tools).

It keeps every series as sorted `array('q')` timestamps and `array('d')` values (stale markers
kept bit-exact) and answers `select(matchers, mint, maxt)` with the same shape as the TSDB's
select: `[(labels tuple, ts, vals)]` sorted by labels. Not for production data volumes."""

from __future__ import annotations

import bisect
from array import array
from typing import Dict, Iterable, List, Tuple

Labels = Tuple[Tuple[str, str], ...]


class MemoryStorage:
    """Series keyed by their sorted (name, value) label tuple."""

    def __init__(self):
        self._series: Dict[Labels, Tuple[array, array]] = {}

    def clear(self):
        self._series.clear()

    def append(self, labels, samples: Iterable[Tuple[int, float]]):
        """Add samples (t ms, value) to the series `labels` (dict or pairs); a sample at an
        existing timestamp replaces the old value."""
        pairs = labels.items() if isinstance(labels, dict) else labels
        key = tuple(sorted((n, v) for n, v in pairs if v != ""))
        ts, vs = self._series.setdefault(key, (array("q"), array("d")))
        for t, v in samples:
            if not ts or t > ts[-1]:
                ts.append(t)
                vs.append(v)
                continue
            i = bisect.bisect_left(ts, t)
            if i < len(ts) and ts[i] == t:
                vs[i] = v
            else:
                ts.insert(i, t)
                vs.insert(i, v)

    def select(self, matchers, mint: int, maxt: int) -> List[Tuple[Labels, array, array]]:
        out = []
        for key in sorted(self._series):
            d = dict(key)
            if not all(m.matches(d.get(m.name, "")) for m in matchers):
                continue
            ts, vs = self._series[key]
            lo = bisect.bisect_left(ts, mint)
            hi = bisect.bisect_right(ts, maxt)
            if lo >= hi:
                continue
            out.append((key, ts[lo:hi], vs[lo:hi]))
        return out
