"""Mimir's query statistics (-query-frontend.query-stats-enabled): what one query cost, summed
over its split parts, reported three ways when the query ends — the `Server-Timing` response
header, one "query stats" log line at info level, and per-tenant counters
(cortex_query_seconds_total, cortex_query_fetched_series_total,
cortex_query_fetched_chunk_bytes_total, cortex_query_fetched_chunks_total); no HTTP here, the
handler hands in the request's method, path, parameters and response size."""
import logging
import threading
import time
from typing import Any, Optional

log = logging.getLogger("urdar.querystats")


class QueryStats:
    """Counters of one query, added to from the reactor and from pool threads (hence the lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.wall_time_s: float = 0.0        # time the querier spent on the query's parts
        self.queue_time_s: float = 0.0       # no scheduler queue in this process yet
        self.fetched_series = 0
        self.fetched_chunks = 0
        self.fetched_chunk_bytes = 0
        self.fetched_index_bytes = 0
        self.split_queries = 0
        self.sharded_queries = 0
        self.estimated_series_count = 0
        self.fetched_samples = 0           # samples read from storage (not a Mimir field)

    # What a querier in another process reports back with its answer (handlers/scheduler.py).
    REMOTE_FIELDS = ("wall_time_s", "fetched_series", "fetched_chunks", "fetched_chunk_bytes",
                     "fetched_index_bytes", "estimated_series_count", "fetched_samples")

    def remote_counts(self) -> dict:
        """The counts a remote querier sends back (REMOTE_FIELDS)."""
        with self._lock:
            return {k: getattr(self, k) for k in self.REMOTE_FIELDS}

    def add_remote(self, counts: Any) -> None:
        """Add a remote querier's counts; anything but non-negative numbers of REMOTE_FIELDS
        is ignored (the querier is another process: its report is checked, not trusted)."""
        if not isinstance(counts, dict):
            return
        good = {k: v for k, v in counts.items() if k in self.REMOTE_FIELDS
                and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                and v == v and v != float("inf")}
        if good:
            self.add(**good)

    def add(self, **counts: float) -> None:
        with self._lock:
            for name, v in counts.items():
                setattr(self, name, getattr(self, name) + v)


def _logfmt_value(v: Any) -> str:
    s = v if isinstance(v, str) else ("%g" % v if isinstance(v, float) else str(v))
    if s == "" or any(c in s for c in ' "=\\\n\t'):
        return '"%s"' % s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return s


def _go_seconds(s: float) -> str:
    """A float second count as Go's Duration.String() prints it at µs precision."""
    us = int(round(s * 1e6))
    if us < 1000:
        return "%dµs" % us if us else "0s"
    if us < 1_000_000:
        return ("%.3f" % (us / 1000)).rstrip("0").rstrip(".") + "ms"
    h, rest = divmod(us, 3_600_000_000)
    m, rest = divmod(rest, 60_000_000)
    sec = ("%.6f" % (rest / 1e6)).rstrip("0").rstrip(".")
    return ("%dh" % h if h else "") + ("%dm" % m if h or m else "") + sec + "s"


def _ms(seconds: float) -> str:
    return ("%.6f" % (seconds * 1000)).rstrip("0").rstrip(".")


class QueryStatsReporter:
    """The per-tenant counters and the report of each finished query; `enabled` False makes
    start() return None and every report a no-op (no counters registered, as in Mimir)."""

    def __init__(self, enabled: bool = True, registry: Any = None) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from prometheus_client import Counter
        self.m_seconds = Counter("cortex_query_seconds", "Total amount of wall clock time spend "
                                 "processing queries.", ["user", "sharded"], registry=registry)
        self.m_series = Counter("cortex_query_fetched_series", "Number of series fetched to "
                                "execute a query.", ["user"], registry=registry)
        self.m_bytes = Counter("cortex_query_fetched_chunk_bytes", "Number of chunk bytes "
                               "fetched to execute a query.", ["user"], registry=registry)
        self.m_chunks = Counter("cortex_query_fetched_chunks", "Number of chunks fetched to "
                                "execute a query.", ["user"], registry=registry)

    def start(self) -> Optional[QueryStats]:
        return QueryStats() if self.enabled else None

    @staticmethod
    def server_timing(stats: QueryStats, response_s: float) -> bytes:
        """The Server-Timing header value: querier wall time and response time in ms."""
        return ("querier_wall_time;dur=%s, response_time;dur=%s"
                % (_ms(stats.wall_time_s), _ms(response_s))).encode()

    def report(self, stats: Optional[QueryStats], tenant: str, method: str, path: str,
               user_agent: str, params: Any, response_s: float, status: str,
               error: str = "", response_size: int = 0) -> None:
        """Count the query for the tenant and log its "query stats" line. `status` is
        success, failed, canceled or timeout (Mimir's words); params [(name, [values])], or
        a function returning them (called only when the line is written)."""
        if stats is None:
            return
        sharded = "true" if stats.sharded_queries > 0 else "false"
        self.m_seconds.labels(tenant, sharded).inc(stats.wall_time_s)
        self.m_series.labels(tenant).inc(stats.fetched_series)
        self.m_bytes.labels(tenant).inc(stats.fetched_chunk_bytes)
        self.m_chunks.labels(tenant).inc(stats.fetched_chunks)
        if not log.isEnabledFor(logging.INFO):
            return          # the line is not written: do not format it
        fields = [("component", "query-frontend"), ("user", tenant), ("method", method),
                  ("path", path), ("user_agent", user_agent),
                  ("response_time", _go_seconds(response_s)),
                  ("query_wall_time_seconds", stats.wall_time_s),
                  ("fetched_series_count", stats.fetched_series),
                  ("fetched_chunk_bytes", stats.fetched_chunk_bytes),
                  ("fetched_chunks_count", stats.fetched_chunks),
                  ("fetched_index_bytes", stats.fetched_index_bytes),
                  ("sharded_queries", stats.sharded_queries),
                  ("split_queries", stats.split_queries),
                  ("estimated_series_count", stats.estimated_series_count),
                  ("fetched_samples_count", stats.fetched_samples),
                  ("queue_time_seconds", stats.queue_time_s),
                  ("response_size_bytes", response_size)]
        fields += [("param_" + k, ",".join(v)) for k, v in (params() if callable(params) else params)]
        fields.append(("status", status))
        if error:
            fields.append(("err", error))
        # The fields follow msg as logfmt pairs (app/main.py's formatter appends `logfmt`).
        log.info("query stats", extra={"logfmt": " ".join(
            "%s=%s" % (k, _logfmt_value(v)) for k, v in fields)})
