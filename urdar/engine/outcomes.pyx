# cython: language_level=3
"""Per-sample append outcome codes (defined once, in outcomes.pxd) as Python ints.

Head.append_batch fills one code per sample; components/ingester.py counts them and
components/distributor.py maps each refusal to its Mimir error (status, err-mimir-* id)."""

OK = APPEND_OK
OUT_OF_ORDER = APPEND_OUT_OF_ORDER
DUPLICATE = APPEND_DUPLICATE
TOO_OLD = APPEND_TOO_OLD
SERIES_LIMIT = APPEND_SERIES_LIMIT
SKIPPED = APPEND_SKIPPED
DUPLICATE_SAME = APPEND_DUPLICATE_SAME
OUT_OF_BOUNDS = APPEND_OUT_OF_BOUNDS
SERIES_PER_METRIC_LIMIT = APPEND_SERIES_PER_METRIC_LIMIT

# NAMES[code] -> a short name for logs and counters
NAMES = ("ok", "out_of_order", "duplicate_timestamp", "too_old", "series_limit", "skipped",
         "duplicate_same", "out_of_bounds", "series_per_metric_limit")
assert len(NAMES) == APPEND_N_OUTCOMES

# Codes that leave the sample stored (a no-op for an identical duplicate).
STORED = frozenset((OK, DUPLICATE_SAME))
