"""Quantile math over classic histogram buckets: histogram_quantile and histogram_fraction.

Buckets are (upper bound, cumulative count) pairs of one series group at one step, as the
function table (promql/calls.py) collects them from the `le` label; the interpolation,
monotonicity fix-up and fraction rules follow Prometheus' promql/quantile.go.
"""

from __future__ import annotations

import math


def parse_go_float(s: str) -> float:
    """Go's strconv.ParseFloat as applied to an `le` label value; ValueError where Go fails."""
    t = s.strip()
    if t != s:
        raise ValueError(s)
    low = t.lower().lstrip("+-")
    if low in ("inf", "infinity"):
        return -math.inf if t.startswith("-") else math.inf
    if low == "nan":
        return math.nan
    if "_" in t:
        raise ValueError(s)
    if low.startswith("0x"):
        return float.fromhex(t)
    return float(t)


def bucket_quantile(q, buckets):
    """Prometheus' bucketQuantile over (upper bound, cumulative count) pairs.
    Returns (value, forced_monotonic, fixed_precision)."""
    if math.isnan(q):
        return math.nan, False, False
    if q < 0:
        return -math.inf, False, False
    if q > 1:
        return math.inf, False, False
    buckets = sorted(buckets, key=lambda b: b[0])
    if not math.isinf(buckets[-1][0]) or buckets[-1][0] < 0:
        return math.nan, False, False
    # Coalesce equal upper bounds.
    merged = []
    for ub, c in buckets:
        if merged and merged[-1][0] == ub:
            merged[-1] = (ub, merged[-1][1] + c)
        else:
            merged.append((ub, c))
    buckets = merged
    forced, fixed = ensure_monotonic(buckets, 1e-12)
    if len(buckets) < 2:
        return math.nan, forced, fixed
    observations = buckets[-1][1]
    if observations == 0:
        return math.nan, forced, fixed
    rank = q * observations
    b = 0
    while b < len(buckets) - 1 and buckets[b][1] < rank:
        b += 1
    # sort.Search for the first bucket with count >= rank.
    b = len(buckets) - 1
    for i, (_, c) in enumerate(buckets):
        if c >= rank:
            b = i
            break
    if b == len(buckets) - 1:
        return buckets[-2][0], forced, fixed
    if b == 0 and buckets[0][0] <= 0:
        return buckets[0][0], forced, fixed
    bucket_start = 0.0
    bucket_end = buckets[b][0]
    count = buckets[b][1]
    if b > 0:
        bucket_start = buckets[b - 1][0]
        count -= buckets[b - 1][1]
        rank -= buckets[b - 1][1]
    return bucket_start + (bucket_end - bucket_start) * (rank / count), forced, fixed


def ensure_monotonic(buckets, tolerance):
    forced = False
    fixed = False
    prev = buckets[0][1]
    for i in range(1, len(buckets)):
        cur = buckets[i][1]
        if cur == prev:
            continue
        if abs(cur - prev) <= tolerance * max(abs(cur), abs(prev)):
            buckets[i] = (buckets[i][0], prev)
            fixed = True
            continue
        if cur < prev:
            buckets[i] = (buckets[i][0], prev)
            forced = True
            continue
        prev = cur
    return forced, fixed


def bucket_fraction(lower, upper, buckets):
    """Prometheus' BucketFraction over classic (upper bound, cumulative count) buckets."""
    buckets = sorted(buckets, key=lambda b: b[0])
    if not (math.isinf(buckets[-1][0]) and buckets[-1][0] > 0):
        return math.nan
    merged = []
    for ub, c in buckets:
        if merged and merged[-1][0] == ub:
            merged[-1] = (ub, merged[-1][1] + c)
        else:
            merged.append((ub, c))
    buckets = merged
    count = buckets[-1][1]
    if count == 0 or math.isnan(lower) or math.isnan(upper):
        return math.nan
    if lower >= upper:
        return 0.0
    rank = lower_rank = upper_rank = 0.0
    lower_set = upper_set = False
    lb = 0.0 if buckets[0][0] > 0 else -math.inf
    for i, (ub, c) in enumerate(buckets):
        if i > 0:
            lb = buckets[i - 1][0]

        def interp(x):
            if lb == -math.inf:
                return c
            return rank + (c - rank) * (x - lb) / (ub - lb)
        if not lower_set and lb >= lower:
            lower_rank, lower_set = rank, True
        if not upper_set and lb >= upper:
            upper_rank, upper_set = rank, True
        if lower_set and upper_set:
            break
        if not lower_set and lb < lower < ub:
            lower_rank, lower_set = interp(lower), True
        if not upper_set and lb < upper < ub:
            upper_rank, upper_set = interp(upper), True
        if lower_set and upper_set:
            break
        rank = c
    if not lower_set or lower_rank > count:
        lower_rank = count
    if not upper_set or upper_rank > count:
        upper_rank = count
    return (upper_rank - lower_rank) / count


