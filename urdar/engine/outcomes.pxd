# Per-sample append outcomes: the one definition. head.pyx writes them into append_batch's
# `outcomes` array (and counts by them); outcomes.pyx exports them to Python, where the
# ingester, the distributor's error table and the tests import them.
cdef enum:
    APPEND_OK = 0
    APPEND_OUT_OF_ORDER = 1       # older than the series' newest sample (err-mimir-sample-out-of-order)
    APPEND_DUPLICATE = 2          # same timestamp, other value (err-mimir-sample-duplicate-timestamp)
    APPEND_TOO_OLD = 3            # out-of-order window on, sample beyond it (Prometheus ErrTooOldSample)
    APPEND_SERIES_LIMIT = 4       # new series over max_series (err-mimir-max-series-per-user)
    APPEND_SKIPPED = 5            # the caller refused the series (validation)
    APPEND_DUPLICATE_SAME = 6     # identical sample already stored: accepted, a no-op
    APPEND_OUT_OF_BOUNDS = 7      # before the appendable window (Prometheus ErrOutOfBounds)
    APPEND_SERIES_PER_METRIC_LIMIT = 8   # new series over max_series_per_metric (err-mimir-max-series-per-metric)
    APPEND_N_OUTCOMES = 9
