"""The query-frontend: sits between the query_range route and the querier, aligning range queries
to their step (-query-frontend.align-queries-with-step), splitting them at
-query-frontend.split-queries-by-interval boundaries, running the parts at most
`max_query_parallelism` at a time, and caching the parts' results as extents (Mimir's
querymiddleware: step_align.go, split_and_cache.go, results_cache.go); a part that reaches the
querier goes through the query-sharding step (-query-frontend.parallelize-shardable-queries,
components/querysharding.py) first; no HTTP here.

The querier is reached through `RangeQuerier` (components/querier.Querier in this process; a
remote querier can be plugged in later). Each part is an ordinary range query on the same step
grid (start + k*step), so every evaluation step is computed exactly once and the merged matrix
equals the unsplit one. `@ start()` / `@ end()` are rewritten to the whole query's times before
splitting. Cached extents hold only steps older than now - max_cache_freshness, are keyed per
tenant, query, step, lookback and split interval, and are only kept for step-aligned requests
without annotations, negative offsets or `@` times past the cacheable range. Merging, encoding
and decoding run in the "query" pool (a long query is parsed there too; a short one is planned
on the reactor, as the querier does); the reactor only schedules.

A dashboard refresh over a window ending now (the common repeated query) costs: its extents
from the cache (the in-memory backend keeps them as objects, memcached's are decoded), the
fresh steps after the cache edge from the querier, and one pool job (the querier's, which
renders the fresh part) that cuts the cached points at the window's start and writes them and
the fresh points straight into the answer (components/pointtext.pyx; no Python work per
point, one copy). Only the fetched steps become new extents, coalesced log-structured."""
import hashlib
import struct
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

from twisted.internet import defer

from urdar.components import errors as E
from urdar.promql import ast as A
from urdar.promql.value import HISTOGRAMS_LABEL, Result

DAY_MS = 86400 * 1000
SMALL_QUERY_CHARS = 2048    # planned on the reactor up to this size (components/querier.py's)
_MAGIC = b"URFE2"   # 2: label sets as one length-prefixed blob
# Gaps between cached extents of one part fetched separately; more make the part one fetch.
MAX_GAP_FETCHES = 4


class _EmptyRange(Exception):
    """The query's whole range is older than the tenant may read."""


class RangeQuerier(Protocol):
    """What the frontend needs of a querier: one range or instant query, Deferred[promql
    Result]. The querier of this process, or components/scheduler's queue in front of local
    workers (QueuedQuerier) or of remote queriers (RemoteQuerier)."""

    def range_query(self, tenant: str, query: str, start: int, end: int, step: int,
                    lookback_ms: Optional[int] = None, render: Any = None,
                    timeout_s: Optional[float] = None, parse: Any = None,
                    stats: Any = None) -> "defer.Deferred[Any]":
        ...

    def instant_query(self, tenant: str, query: str, t: int, lookback_ms: Optional[int] = None,
                      render: Any = None, timeout_s: Optional[float] = None,
                      parse: Any = None, stats: Any = None) -> "defer.Deferred[Any]":
        ...

    def read_request(self, tenant: str, kind: str, args: dict) -> "defer.Deferred[bytes]":
        """A label names/values, series or cardinality request (handlers/querier.READ_APIS)
        with its parameters: Deferred[the answer body]."""
        ...


@dataclass(frozen=True)
class FrontendConfig:
    align_queries_with_step: bool = False
    split_interval_ms: int = DAY_MS
    cache_results: bool = False
    parallelize_shardable_queries: bool = False     # query sharding (components/querysharding.py)

    @classmethod
    def from_config(cls, cfg: Any) -> "FrontendConfig":
        return cls(cfg["frontend.align_queries_with_step"], cfg["frontend.split_queries_by_interval"],
                   cfg["frontend.cache_results"], cfg["frontend.parallelize_shardable_queries"])

    @property
    def passthrough(self) -> bool:
        """Nothing to do: range queries go to the querier unchanged."""
        return not (self.align_queries_with_step or self.split_interval_ms or self.cache_results
                    or self.parallelize_shardable_queries)


# ---- splitting (pure; runs in the pool) -----------------------------------------------------------

def next_interval_boundary(t: int, step: int, interval: int) -> int:
    """The last step-grid time (t + k*step) before the next multiple of `interval` after t."""
    start_of_next = (t // interval + 1) * interval
    target = start_of_next - ((start_of_next - t) % step)
    if target == start_of_next:
        target -= step
    return target


def split_by_interval(start: int, end: int, step: int, interval: int) -> list[tuple[int, int]]:
    """[(start, end)] parts on the grid start + k*step, cut at `interval` boundaries, covering
    every step of [start, end] exactly once."""
    if not interval:
        return [(start, end)]
    parts = []
    s = start
    while True:
        e = next_interval_boundary(s, step, interval)
        if e + step >= end or e >= end:
            e = end
        parts.append((s, e))
        if e >= end:
            break
        s = e + step
    return parts


@dataclass
class Plan:
    """A parsed range query: its text for the parts (with @ start()/end() made absolute), the
    parts, and whether their results may be cached at all."""
    text: str
    start: int
    end: int
    parts: list
    cacheable: bool
    max_at_ms: Optional[int]     # latest `@` time in the query (it must be older than the cache edge)


def plan_query(text: str, start: int, end: int, step: int, cfg: FrontendConfig,
               parse: Optional[Callable[[str], Any]]) -> Plan:
    """Parse (raising the handler's parameter errors), align, rewrite `@`, split."""
    if parse is None:
        from urdar.promql.parser import parse_expr
        expr = parse_expr(text)
    else:
        expr = parse(text)
    if cfg.align_queries_with_step:
        start, end = start // step * step, end // step * step
    rewritten = False
    negative_offset = False
    max_at = None
    for node in A.walk(expr):
        if isinstance(node, (A.VectorSelector, A.SubqueryExpr)):
            if node.start_or_end is not None:
                node.timestamp_ms = start if node.start_or_end == "start" else end
                node.start_or_end = None
                rewritten = True
            if node.timestamp_ms is not None:
                max_at = node.timestamp_ms if max_at is None else max(max_at, node.timestamp_ms)
            if node.offset_ms < 0 or node.offset_expr is not None:
                negative_offset = True
    if rewritten:
        text = str(expr)
    parts = split_by_interval(start, end, step, cfg.split_interval_ms)
    # Only step-aligned requests share a grid with other requests (Mimir caches no others).
    cacheable = (cfg.cache_results and start % step == 0 and end % step == 0
                 and not negative_offset)
    return Plan(text, start, end, parts, cacheable, max_at)


# ---- matrices and extents (pure; run in the pool) ------------------------------------------------

# Cached results keep each series' points already rendered as the Prometheus API's JSON text
# (`[t,"v"],[t,"v"]`, what render_matrix writes), so a cache hit costs a few byte copies instead
# of formatting every point again (benchmarks/frontend_bench.py: rendering is most of a cached
# answer's cost). A series is (labels, ts array('q') ms, text bytes, offs array('q')): point i is
# text[offs[i]:offs[i+1]-1] and offs[n] == len(text)+1 (as if a comma followed the last point).

def from_matrix(matrix: list) -> list:
    """A promql matrix [(labels, ts, values)] -> series with rendered point text."""
    from urdar.promql.kernels import format_points_offsets
    out = []
    for item in matrix:
        labels, ts, vs = item[0], item[1], item[2]
        if len(item) > 3:
            # Native histograms: their points as a second series (HISTOGRAMS_LABEL appended),
            # each point's text `[t,{...}]` (histogram JSON holds "],[" itself).
            from urdar.promql.histograms import api_json
            parts = ["[%s,%s]" % (_ts_text(t), api_json(h)) for t, h in zip(item[3], item[4])]
            hoffs = array("q", [0])
            for p in parts:
                hoffs.append(hoffs[-1] + len(p.encode("utf-8")) + 1)
            out.append((labels + (HISTOGRAMS_LABEL,), array("q", item[3]),
                        ",".join(parts).encode("utf-8"), hoffs))
            if not len(ts):
                continue
        ts = array("q", ts)
        text, offs = format_points_offsets(ts, array("d", vs))
        out.append((labels, ts, text, offs))
    return out


def _ts_text(t_ms: int) -> str:
    """A timestamp as the API writes it: seconds, three decimals unless whole."""
    sign = "-" if t_ms < 0 else ""
    s, frac = divmod(abs(int(t_ms)), 1000)
    return "%s%d.%03d" % (sign, s, frac) if frac else "%s%d" % (sign, s)


def merge_pieces(pieces: list) -> list:
    """Series lists of consecutive, non-overlapping time ranges (in time order) -> one list
    sorted by labels, as the engine sorts a range query's result."""
    return merge_windows([(m, None, None) for m in pieces])


def merge_windows(windows: list, lazy: bool = False) -> list:
    """merge_pieces over windows (matrix, mint, maxt) of series lists: only each matrix' points
    with mint <= t <= maxt (None, None: all of them) are taken, cut and joined in one copy.
    With `lazy`, for an answer about to be rendered: a series made of several pieces or a cut
    one has as its text the list of its pieces (memoryviews and commas) and no times or
    offsets, so its points are copied once, into the answer."""
    from urdar.components.pointtext import bounds, join_parts
    by: dict = {}
    for matrix, mint, maxt in windows:
        for item in matrix:
            ts = item[1]
            if mint is None:
                i, j = 0, len(ts)
            else:
                i, j = bounds(ts, mint, maxt)
                if i == j:
                    continue
            part = (ts, item[2], item[3], i, j)
            cur = by.get(item[0])
            if cur is None:
                by[item[0]] = (item, [part])
            else:
                cur[1].append(part)
    out = []
    for labels in sorted(by):
        item, parts = by[labels]
        if len(parts) == 1 and parts[0][3] == 0 and parts[0][4] == len(item[1]):
            out.append(item)            # one whole piece: as it is
        elif lazy:
            pieces: list = []
            for _, text, offs, i, j in parts:
                if i == j:
                    continue
                if pieces:
                    pieces.append(b",")
                pieces.append(memoryview(text)[offs[i]:offs[j] - 1])
            out.append((labels, None, pieces, None))
        else:
            ts, text, offs = join_parts(parts)
            out.append((labels, ts, text, offs))
    return out


def slice_matrix(matrix: list, mint: int, maxt: int) -> list:
    """The points of `matrix` with mint <= t <= maxt (series left without points dropped)."""
    from urdar.components.pointtext import bounds, join_parts
    out = []
    for item in matrix:
        ts = item[1]
        i, j = bounds(ts, mint, maxt)
        if i == 0 and j == len(ts):
            out.append(item)
        elif j > i:
            ts2, text, offs = join_parts([(ts, item[2], item[3], i, j)])
            out.append((item[0], ts2, text, offs))
    return out


@dataclass
class Extent:
    """Cached results of one query for every grid step in [start, end] (ms, inclusive)."""
    start: int
    end: int
    matrix: list


def missing_ranges(extents: list, start: int, end: int, step: int) -> list:
    """How to answer [start, end] from `extents`: in time order, ("fetch", s, e) for steps no
    extent holds and ("cached", matrix, mint, maxt) for the points extents do (cut when the
    answer is merged: merge_windows)."""
    todo: list = []
    cur = start
    for ext in sorted(extents, key=lambda x: x.start):
        if ext.end < cur or ext.start > end:
            continue
        if (ext.start - start) % step:
            continue
        if ext.start > cur:
            todo.append(("fetch", cur, min(ext.start - step, end)))
        hi = min(ext.end, end)
        todo.append(("cached", ext.matrix, max(cur, ext.start), hi))
        cur = hi + step
        if cur > end:
            break
    if cur <= end:
        todo.append(("fetch", cur, end))
    return todo


MAX_EXTENTS = 8     # per cache entry; more are coalesced into one


def add_extent(extents: list, new: Extent, step: int) -> list:
    """`extents` plus `new`, overlapping ones coalesced (their data agree where they overlap:
    both are answers to the same query on the same grid). Adjacent ones are coalesced only
    when the newer run is about as long as the one before it (or there are more than
    MAX_EXTENTS), so a dashboard whose cache edge moves by one step per refresh does not copy
    its whole cached range every time: each step is copied O(log n) times in all."""
    all_ = sorted(extents + [new], key=lambda x: x.start)
    out: list = []
    for ext in all_:
        if out and ext.start <= out[-1].end and (ext.start - out[-1].start) % step == 0:
            last = out[-1]
            if ext.start <= last.start and ext.end >= last.end:
                out[-1] = ext           # the newer answer holds all of the older one
            elif ext.end > last.end:
                out[-1] = _coalesce(last, ext, step)
        else:
            out.append(ext)
        while (len(out) > 1 and out[-1].start == out[-2].end + step
               and (out[-2].end - out[-2].start <= 2 * (out[-1].end - out[-1].start)
                    or len(out) > MAX_EXTENTS)):
            last = out.pop()
            out[-1] = _coalesce(out[-1], last, step)
    return out


def _coalesce(a: Extent, b: Extent, step: int) -> Extent:
    """One extent of `a` and the part of `b` after it (b ends later, on a's grid)."""
    return Extent(a.start, b.end, merge_windows([(a.matrix, None, None),
                                                 (b.matrix, a.end + step, b.end)]))


# Label set <-> its encoded form, both ways: a dashboard's refreshes decode and re-encode the
# same series' labels every time. Bounded by clearing; dict operations are atomic under the GIL.
_BLOB_OF: dict = {}
_LABELS_OF: dict = {}
_LABEL_CACHE_MAX = 100_000
_U32 = struct.Struct("<I")
_EXT_HEAD = struct.Struct("<qqI")


def _labels_blob(labels: tuple) -> bytes:
    """A label set as count, then (length, UTF-8) per name and value."""
    blob = _BLOB_OF.get(labels)
    if blob is None:
        parts = [_U32.pack(len(labels))]
        for n, v in labels:
            for x in (n, v):
                b = x.encode("utf-8", "surrogateescape")
                parts += (_U32.pack(len(b)), b)
        blob = b"".join(parts)
        if len(_BLOB_OF) >= _LABEL_CACHE_MAX:
            _BLOB_OF.clear()
        _BLOB_OF[labels] = blob
    return blob


def _blob_labels(blob: bytes) -> tuple:
    """_labels_blob's inverse; ValueError when malformed."""
    labels = _LABELS_OF.get(blob)
    if labels is not None:
        return labels
    (count,), pos = _U32.unpack_from(blob, 0), 4
    strs = []
    for _ in range(2 * count):
        (n,) = _U32.unpack_from(blob, pos)
        pos += 4
        if pos + n > len(blob):
            raise ValueError("truncated label set in results cache entry")
        strs.append(blob[pos:pos + n].decode("utf-8", "surrogateescape"))
        pos += n
    if pos != len(blob):
        raise ValueError("trailing bytes in a label set of a results cache entry")
    labels = tuple(zip(strs[0::2], strs[1::2]))
    if len(_LABELS_OF) >= _LABEL_CACHE_MAX:
        _LABELS_OF.clear()
    _LABELS_OF[blob] = labels
    return labels


def encode_extents(extents: list) -> bytes:
    """Extents -> compact bytes: magic, count, then per extent start, end, series count and per
    series its label set (length-prefixed: count, then length-prefixed UTF-8 names and values),
    point count, int64 times, int64 text offsets (count + 1) and the points' JSON text
    (length-prefixed); joined once."""
    parts = [_MAGIC, _U32.pack(len(extents))]
    for ext in extents:
        parts.append(_EXT_HEAD.pack(ext.start, ext.end, len(ext.matrix)))
        for labels, ts, text, offs in ext.matrix:
            blob = _labels_blob(labels)
            parts += (_U32.pack(len(blob)), blob, _U32.pack(len(ts)), array("q", ts).tobytes(),
                      array("q", offs).tobytes(), _U32.pack(len(text)), text)
    return b"".join(parts)


def decode_extents(raw: bytes) -> list:
    """encode_extents' inverse; ValueError on anything malformed (a foreign or damaged value)."""
    if raw[:len(_MAGIC)] != _MAGIC:
        raise ValueError("not a results cache entry")
    size = len(raw)
    pos = len(_MAGIC)

    def take(n: int) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > size:
            raise ValueError("truncated results cache entry")
        pos += n
        return raw[pos - n:pos]

    def u32() -> int:
        nonlocal pos
        (v,) = _U32.unpack_from(raw, pos)   # struct.error when short: a miss too
        pos += 4
        return int(v)
    from urdar.components.pointtext import check as check_points
    out = []
    for _ in range(u32()):
        start, end, n_series = _EXT_HEAD.unpack_from(raw, pos)
        pos += _EXT_HEAD.size
        matrix = []
        for _ in range(n_series):
            labels = _blob_labels(take(u32()))
            n = u32()
            ts = array("q")
            ts.frombytes(take(8 * n))
            offs = array("q")
            offs.frombytes(take(8 * (n + 1)))
            text = take(u32())
            check_points(ts, text, offs)     # ValueError: a damaged entry is a miss
            matrix.append((labels, ts, text, offs))
        out.append(Extent(start, end, matrix))
    if pos != size:
        raise ValueError("trailing bytes in results cache entry")
    return out


def extents_size(extents: list) -> int:
    """About the bytes `extents` hold in memory: point text, times and offsets, and a share for
    each series' objects and label set."""
    return sum(len(text) + 16 * len(ts) + 256 for ext in extents for _, ts, text, _ in ext.matrix)


# ---- caches ----------------------------------------------------------------------------------------

class InMemoryResultsCache:
    """Results cache in this process: LRU, bounded by the bytes of the values it holds. Range
    query extents are kept as they are (a list of Extent, never changed once stored), not
    encoded: a refresh of a dashboard then costs no decoding of its cached part."""

    holds_objects = True

    def __init__(self, max_size_bytes: int) -> None:
        self.max_size_bytes = max_size_bytes
        self._items: "OrderedDict[str, tuple[Any, int]]" = OrderedDict()
        self.size_bytes = 0

    def get(self, key: str) -> "defer.Deferred[Any]":
        v = self._items.get(key)
        if v is not None:
            self._items.move_to_end(key)
            return defer.succeed(v[0])
        return defer.succeed(None)

    def put(self, key: str, value: Any, ttl_ms: int = 0) -> None:
        """`value`: bytes, or a list of Extent (its size counted as its points' bytes)."""
        # Entries with a TTL carry their expiry themselves (decode_read_entry checks it).
        old = self._items.pop(key, None)
        if old is not None:
            self.size_bytes -= old[1]
        size = len(value) if isinstance(value, (bytes, bytearray)) else extents_size(value)
        if size > self.max_size_bytes:
            return
        self._items[key] = (value, size)
        self.size_bytes += size
        while self.size_bytes > self.max_size_bytes:
            _, (_, dropped) = self._items.popitem(last=False)
            self.size_bytes -= dropped

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class MemcachedResultsCache:
    """Results cache in memcached (net/memcached.MemcachedClient): a server that is down, slow
    or failing is a miss; writes are fire and forget (too large: not stored)."""

    holds_objects = False

    TTL_S = 7 * 86400

    def __init__(self, client: Any) -> None:
        self.client = client

    def get(self, key: str) -> "defer.Deferred[Optional[bytes]]":
        mk = key.encode("ascii")
        d = self.client.get_multi([mk])
        d.addCallback(lambda found: found.get(mk))
        return d.addErrback(lambda f: None)

    def put(self, key: str, value: bytes, ttl_ms: int = 0) -> None:
        ttl_s = -(-ttl_ms // 1000) if ttl_ms > 0 else self.TTL_S
        self.client.set(key.encode("ascii"), value, ttl_s)

    def start(self) -> None:
        self.client.start()

    def stop(self) -> None:
        self.client.stop()


def cache_key(tenant: str, text: str, step: int, lookback_ms: Optional[int], interval: int,
              start: int, shards: int = 0) -> str:
    """Memcached-safe key of one query's extents in one split interval; the tenant is part of
    what is hashed, so tenants never share entries. Sharded answers (`shards` per leg) are kept
    apart from unsharded ones: their float sums may differ in the last bits."""
    raw = "%s\x00%s\x00%d\x00%s\x00%d" % (tenant, text, step, lookback_ms, start // interval)
    if shards:
        raw += "\x00shards=%d" % shards
    return "FR:" + hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest()


# ---- label names/values and cardinality requests -----------------------------------------------
# Mimir's labels_query_cache.go and cardinality_query_cache.go: a whole answer per request, kept
# for the tenant's results_cache_ttl_for_labels_query / results_cache_ttl_for_cardinality_query
# (0: not cached) under a key of the tenant and the request's normalised parameters
# (handlers/querier.read_api_key). Series requests pass through, as in Mimir; none is split.

READ_CACHE_PREFIXES = {"labels": "ln:", "label_values": "lv:",
                       "cardinality_label_names": "cn:", "cardinality_label_values": "cv:",
                       "cardinality_active_series": "ca:"}
_READ_MAGIC = b"URFR1"


def read_cache_key(tenant: str, kind: str, text: str) -> tuple[str, str]:
    """(full key, hashed memcached-safe key) of a read request's answer: the tenant is part of
    both, the request type picks the prefix."""
    full = "%s:%s" % (tenant, text)
    return full, READ_CACHE_PREFIXES[kind] + hashlib.sha256(
        full.encode("utf-8", "surrogateescape")).hexdigest()


def encode_read_entry(full_key: str, expires_ms: int, body: bytes) -> bytes:
    """A cached answer: magic, expiry (ms), the full key (a hash collision is a miss), body."""
    k = full_key.encode("utf-8", "surrogateescape")
    return _READ_MAGIC + struct.pack("<qI", expires_ms, len(k)) + k + body


def decode_read_entry(raw: Optional[bytes], full_key: str, now_ms: int) -> Optional[bytes]:
    """The body of a cached answer, None when absent, damaged, expired (the TTL is checked here
    too, so the in-memory backend expires entries like memcached does) or another key's."""
    if raw is None or raw[:len(_READ_MAGIC)] != _READ_MAGIC or len(raw) < len(_READ_MAGIC) + 12:
        return None
    expires_ms, n = struct.unpack_from("<qI", raw, len(_READ_MAGIC))
    pos = len(_READ_MAGIC) + 12
    if expires_ms <= now_ms or raw[pos:pos + n] != full_key.encode("utf-8", "surrogateescape"):
        return None
    return bytes(raw[pos + n:])


# ---- the frontend ------------------------------------------------------------------------------------

class Frontend:
    """Runs range queries through alignment, splitting, the results cache and `querier`.
    `overrides` gives per-tenant max_query_parallelism and max_cache_freshness."""

    def __init__(self, querier: RangeQuerier, offload: Any, clock: Any, overrides: Any,
                 config: FrontendConfig, cache: Any = None, pool: str = "query",
                 registry: Any = None) -> None:
        self.querier = querier
        self.offload = offload
        self.clock = clock
        self.overrides = overrides
        self.config = config
        self.cache = cache if config.cache_results else None
        self.pool = pool
        self.cache_hits = 0       # parts answered (at least partly) from cached extents
        from urdar.components.querysharding import QuerySharding
        self.sharding = QuerySharding(querier, offload, clock, pool, registry)
        self.cache_misses = 0     # parts looked up and not found
        from prometheus_client import Counter
        # Mimir's query-frontend metrics, for range queries only (request_type="query_range").
        self.m_split = Counter("cortex_frontend_split_queries", "Total number of underlying "
                               "query requests after the split by interval is applied.",
                               registry=registry)
        self.m_cache_requests = Counter("cortex_frontend_query_result_cache_requests",
                                        "Total number of requests (or partial requests) looked "
                                        "up in the results cache.", ["request_type"],
                                        registry=registry)
        self.m_cache_hits = Counter("cortex_frontend_query_result_cache_hits", "Total number of "
                                    "requests (or partial requests) fetched from the results "
                                    "cache.", ["request_type"], registry=registry)

    def cardinality_enabled(self, tenant: str) -> bool:
        return bool(self._limit(tenant, "cardinality_analysis_enabled", 0))

    def read_request(self, tenant: str, kind: str, args: dict, key_text: Optional[str],
                     no_store: bool = False) -> "defer.Deferred[bytes]":
        """Deferred[the answer body] of a label names/values, series or cardinality request
        (handlers/querier.READ_APIS), validated and keyed (`key_text`, None: never cached) by
        the caller: from the results cache when the tenant's TTL for its type is on and the
        request allows it (no `Cache-Control: no-store`), else from a querier through the queue
        (and stored for the TTL)."""
        cardinality = kind.startswith("cardinality_")
        ttl_ms = 0
        if key_text is not None and self.cache is not None and not no_store:
            ttl_ms = self._limit(tenant, "results_cache_ttl_for_cardinality_query" if cardinality
                                 else "results_cache_ttl_for_labels_query", 0)
        if ttl_ms <= 0:
            return self.querier.read_request(tenant, kind, args)
        assert self.cache is not None and key_text is not None
        cache = self.cache
        request_type = "cardinality" if cardinality else "label_names_and_values"
        full, hashed = read_cache_key(tenant, kind, key_text)
        self.m_cache_requests.labels(request_type).inc()

        def looked_up(raw: Optional[bytes]) -> Any:
            body = decode_read_entry(raw, full, int(self.clock.seconds() * 1000))
            if body is not None:
                self.m_cache_hits.labels(request_type).inc()
                return body
            d = self.querier.read_request(tenant, kind, args)

            def store(body: bytes) -> bytes:
                expires = int(self.clock.seconds() * 1000) + ttl_ms
                cache.put(hashed, encode_read_entry(full, expires, body), ttl_ms)
                return body
            return d.addCallback(store)
        return cache.get(hashed).addCallback(looked_up)

    def start(self) -> None:
        if self.cache is not None:
            self.cache.start()

    def stop(self) -> None:
        if self.cache is not None:
            self.cache.stop()

    def _limit(self, tenant: str, name: str, default: int) -> int:
        v = getattr(self.overrides.for_tenant(tenant), name, default) if self.overrides else default
        return int(v)

    def check_query_size(self, tenant: str, query: str) -> None:
        """-query-frontend.max-query-expression-size-bytes (400 bad_data, Mimir's message)."""
        lim = self.overrides.for_tenant(tenant) if self.overrides else None
        limit = getattr(lim, "max_query_expression_size_bytes", 0) or 0
        size = len(query.encode("utf-8", "surrogateescape")) if limit else 0
        if limit and size > limit:
            raise E.ComponentError(E.BAD_DATA, E.mimir_message(
                "the raw query size in bytes exceeds the limit (query size: %d, limit: %d)"
                % (size, limit), "max-query-expression-size-bytes",
                ("query-frontend.max-query-expression-size-bytes",)))

    def _apply_limits(self, tenant: str, start: int, end: int) -> int:
        """Mimir's limits middleware: the start moved up to now - min(max query lookback, blocks
        retention) (_EmptyRange when the query ends before it), then the total length checked
        against -query-frontend.max-total-query-length (400 bad_data)."""
        lim = self.overrides.for_tenant(tenant) if self.overrides else None
        lookback = min([v for v in (getattr(lim, "max_query_lookback", 0),
                                    getattr(lim, "compactor_blocks_retention_period", 0)) if v]
                       or [0])
        if lookback:
            min_start = int(self.clock.seconds() * 1000) - lookback
            if end < min_start:
                raise _EmptyRange()
            start = max(start, min_start)
        limit = (getattr(lim, "max_total_query_length", 0)
                 or getattr(lim, "max_query_length", 0) or 0)
        if limit and end - start > limit:
            raise E.ComponentError(E.BAD_DATA, E.mimir_message(
                "the total query time range exceeds the limit (query length: %s, limit: %s)"
                % (E.go_duration(end - start), E.go_duration(limit)), "max-total-query-length",
                ("query-frontend.max-total-query-length",)))
        return start

    def instant_query(self, tenant: str, query: str, t: int, lookback_ms: Optional[int] = None,
                      render: Any = None, timeout_s: Optional[float] = None,
                      parse: Any = None, stats: Any = None) -> "defer.Deferred[Any]":
        """Deferred[render(Result)]: an instant query, through the sharding step when query
        sharding is on and the query shards (Mimir shards instant queries too), else sent to a
        querier as it is."""
        shards = (self._limit(tenant, "query_sharding_total_shards", 16)
                  if self.config.parallelize_shardable_queries else 0)
        if shards <= 1:
            return self.querier.instant_query(tenant, query, t, lookback_ms, render=render,
                                              timeout_s=timeout_s, parse=parse, stats=stats)
        d = self.offload.run(self.pool, _plan_instant_sharding, query, parse, shards,
                             self._limit(tenant, "query_sharding_max_sharded_queries", 128),
                             self._limit(tenant, "query_sharding_max_regexp_size_bytes", 4096))

        def run(sharding: Any) -> "defer.Deferred[Any]":
            self.sharding.count(sharding)
            if sharding.query is None:
                return self.querier.instant_query(tenant, query, t, lookback_ms, render=render,
                                                  timeout_s=timeout_s, parse=parse, stats=stats)
            if stats is not None:
                stats.add(sharded_queries=sharding.query.sharded_queries)
            parallelism = max(1, self._limit(tenant, "max_query_parallelism", 14))
            return self.sharding.instant_query(tenant, sharding.query, query, t, lookback_ms,
                                               render, timeout_s, parallelism, stats)
        return d.addCallback(run)

    def range_query(self, tenant: str, query: str, start: int, end: int, step: int,
                    lookback_ms: Optional[int] = None, render: Any = None,
                    timeout_s: Optional[float] = None, parse: Any = None,
                    no_store: bool = False, render_text: Any = None,
                    stats: Any = None) -> "defer.Deferred[Any]":
        """Deferred[render(Result)] (or the Result) of the range query, assembled from parts.
        `no_store` (Cache-Control: no-store) bypasses the results cache both ways. The cache is
        used only with `render_text(series, warnings, infos)`, which renders the answer from
        series whose points are already JSON text (labels, ts, text bytes, offsets)."""
        try:
            start = self._apply_limits(tenant, start, end)
            self.check_query_size(tenant, query)
        except _EmptyRange:
            # Wholly before the max query lookback: an empty matrix, no querier call (Mimir).
            return defer.execute(render or (lambda r: r), Result("matrix", []))
        except E.ComponentError as exc:
            return defer.fail(exc)
        cfg = self.config
        interval = cfg.split_interval_ms
        one_part = not interval or start // interval == end // interval
        shards = (self._limit(tenant, "query_sharding_total_shards", 16)
                  if cfg.parallelize_shardable_queries else 0)
        if cfg.passthrough or (one_part and not cfg.align_queries_with_step and shards <= 1
                               and not (cfg.cache_results and self.cache is not None)):
            # Nothing to split, align, shard or cache: the querier's answer as it is (no
            # second parse).
            if stats is not None and interval:
                stats.add(split_queries=1)      # Mimir's splitter counts its single part too
            return self.querier.range_query(tenant, query, start, end, step, lookback_ms,
                                            render=render, timeout_s=timeout_s, parse=parse,
                                            stats=stats)
        plan_args = (query, start, end, step, cfg, parse, shards,
                     self._limit(tenant, "query_sharding_max_sharded_queries", 128),
                     self._limit(tenant, "query_sharding_max_regexp_size_bytes", 4096))
        # A short query is planned right here (well under a millisecond, as the querier does),
        # saving a thread hop; a long one (it may be megabytes) in the pool.
        d: "defer.Deferred[Any]" = (
            defer.execute(lambda: _plan_and_shard(*plan_args)) if len(query) <= SMALL_QUERY_CHARS
            else self.offload.run(self.pool, _plan_and_shard, *plan_args))

        def run(planned: tuple) -> "defer.Deferred[Any]":
            plan, sharding = planned
            parallelism = max(1, self._limit(tenant, "max_query_parallelism", 14))
            sem = defer.DeferredSemaphore(parallelism)
            # The parts running at once share the parallelism among their shard queries.
            shard_slots = max(1, parallelism // min(len(plan.parts), parallelism))
            use_cache = (self.cache is not None and plan.cacheable and not no_store
                         and render_text is not None)
            interval = cfg.split_interval_ms or DAY_MS
            freshness = self._limit(tenant, "max_cache_freshness", 600_000)
            max_cache_t = (int(self.clock.seconds() * 1000) - freshness) // step * step
            if plan.max_at_ms is not None and plan.max_at_ms > max_cache_t:
                use_cache = False       # `@` past the cache edge: its data may still change
            cancelled: list[bool] = []
            self.m_split.inc(len(plan.parts))
            if stats is not None:
                stats.add(split_queries=len(plan.parts))

            def start(fn: Callable[..., Any], *args: Any) -> Any:
                # A part waiting for its turn when the query is cancelled never starts.
                if cancelled:
                    raise defer.CancelledError()
                return fn(*args)
            ds = []
            # One part: it renders the answer in the job that merges it (one pool hop fewer).
            single = render_text if len(plan.parts) == 1 else None
            for s, e in plan.parts:
                if use_cache:
                    key = cache_key(tenant, plan.text, step, lookback_ms, interval, s,
                                    sharding.shards)
                    ds.append(sem.run(start, self._cached_part, tenant, plan.text, s, e, step,
                                      lookback_ms, timeout_s, key, max_cache_t, single, stats,
                                      (sharding, shard_slots)))
                else:
                    ds.append(sem.run(start, self._fetch, tenant, plan.text, s, e, step,
                                      lookback_ms, timeout_s, False, stats,
                                      (sharding, shard_slots)))
            parts = defer.gatherResults(ds, consumeErrors=True)

            def cancel(_: Any) -> None:
                cancelled.append(True)
                parts.cancel()
            gathered: "defer.Deferred[Any]" = defer.Deferred(canceller=cancel)
            parts.addErrback(_first_error).chainDeferred(gathered)
            if use_cache and single is not None:
                return gathered.addCallback(lambda results: results[0])
            if use_cache:
                return gathered.addCallback(lambda results: self.offload.run(
                    self.pool, _assemble_text, results, render_text))
            return gathered.addCallback(
                lambda results: self.offload.run(self.pool, _assemble, results, plan.start, render))
        return d.addCallback(run)

    def _fetch(self, tenant: str, text: str, s: int, e: int, step: int,
               lookback_ms: Optional[int], timeout_s: Optional[float],
               rendered: bool = False, stats: Any = None,
               sharding: Optional[tuple] = None, render: Any = None) -> "defer.Deferred[Any]":
        """Deferred[(matrix, warnings, infos)] of one part from the querier, through the
        sharding step when `sharding` = (ShardingPlan, concurrent shard queries) shards it;
        with `rendered` the matrix holds series with rendered point text (see from_matrix);
        with `render`, render(the part's Result) instead (called in the pool)."""
        if render is None:
            render = _rendered_part if rendered else _plain_part
        if sharding is not None:
            plan, slots = sharding
            self.sharding.count(plan)
            if plan.query is not None:
                if stats is not None:
                    stats.add(sharded_queries=plan.query.sharded_queries)
                return self.sharding.range_query(tenant, plan.query, text, s, e, step,
                                                 lookback_ms, render, timeout_s, slots, stats)
        d = self.querier.range_query(tenant, text, s, e, step, lookback_ms, timeout_s=timeout_s,
                                     render=render, stats=stats)
        return d

    def _cached_part(self, tenant: str, text: str, s: int, e: int, step: int,
                     lookback_ms: Optional[int], timeout_s: Optional[float], key: str,
                     max_cache_t: int, render_text: Any = None,
                     stats: Any = None,
                     sharding: Optional[tuple] = None) -> "defer.Deferred[Any]":
        """Deferred[(series with point text, warnings, infos)] of one part from its cached
        extents plus fresh fetches of the steps they lack; with `render_text` (a query of one
        part) the rendered answer instead, made in the same pool job as the merge."""
        assert self.cache is not None
        cache = self.cache
        objects = getattr(cache, "holds_objects", False)

        def looked_up(entry: Any) -> Any:
            if entry is None:
                return [], [("fetch", s, e)]
            if isinstance(entry, list):
                # The in-memory backend keeps the extents themselves: planning only compares
                # their bounds (the points are cut when the answer is merged).
                return entry, missing_ranges(entry, s, e, step)
            # Decoding grows with the entry: in the pool.
            return self.offload.run(self.pool, _decode_and_plan, entry, s, e, step)

        def fill(planned: tuple) -> "defer.Deferred[Any]":
            extents, todo = planned
            if sum(1 for item in todo if item[0] == "fetch") > MAX_GAP_FETCHES:
                # A part riddled with gaps (a tenant can leave many small extents behind) is
                # fetched whole, as on a miss, rather than with one querier call per gap.
                extents, todo = [], [("fetch", s, e)]
            self.m_cache_requests.labels("query_range").inc()
            if any(item[0] == "cached" for item in todo):
                self.cache_hits += 1
                self.m_cache_hits.labels("query_range").inc()
            else:
                self.cache_misses += 1
            fetches = [item for item in todo if item[0] == "fetch"]
            if len(fetches) == 1:
                # One fetch (a refresh: cached extents, then the fresh steps): the merge and
                # the answer are made in the querier's job that renders the fresh part, one
                # pool hop fewer.
                cached: list = [(item[1:], [], []) for item in todo if item[0] == "cached"]
                at = next(k for k, item in enumerate(todo) if item[0] == "fetch")

                def merged(result: Any) -> tuple:
                    pieces = list(cached)
                    pieces.insert(at, _whole_window(_rendered_part(result), fetches[0][1],
                                                    fetches[0][2]))
                    return _merge_and_extend(pieces, extents, s, e, step, max_cache_t, True,
                                             render_text, not objects)
                return self._fetch(tenant, text, fetches[0][1], fetches[0][2], step,
                                   lookback_ms, timeout_s, stats=stats, sharding=sharding,
                                   render=merged)
            ds = []
            for item in todo:
                if item[0] == "fetch":
                    d = self._fetch(tenant, text, item[1], item[2], step, lookback_ms,
                                    timeout_s, rendered=True, stats=stats, sharding=sharding)
                    ds.append(d.addCallback(_whole_window, item[1], item[2]))
                else:
                    ds.append(defer.succeed((item[1:], [], [])))
            fetched = bool(fetches)
            g = defer.gatherResults(ds, consumeErrors=True)
            g.addErrback(_first_error)
            return g.addCallback(lambda pieces: self.offload.run(
                self.pool, _merge_and_extend, pieces, extents, s, e, step, max_cache_t, fetched,
                render_text, not objects))

        def store(out: tuple) -> tuple:
            result, entry = out
            if entry is not None:
                cache.put(key, entry)
            return result
        d = cache.get(key).addCallback(looked_up)
        return d.addCallback(fill).addCallback(store)


def _whole_window(part: tuple, fs: int, fe: int) -> tuple:
    """A part's (matrix, warnings, infos) fetched for [fs, fe] as a window of all its points."""
    return (part[0], None, None, fs, fe), part[1], part[2]


def _plan_and_shard(text: str, start: int, end: int, step: int, cfg: FrontendConfig,
                    parse: Optional[Callable[[str], Any]], total_shards: int,
                    max_sharded_queries: int, max_regexp_bytes: int) -> tuple:
    """Pool: (Plan, querysharding.ShardingPlan) of a range query; one job, so the query is
    parsed on the reactor never and in the pool once per step that needs its own tree."""
    from urdar.components.querysharding import NOT_SHARDED, plan_sharding
    plan = plan_query(text, start, end, step, cfg, parse)
    if total_shards <= 1:
        return plan, NOT_SHARDED
    from urdar.promql.parser import parse_expr
    return plan, plan_sharding(plan.text, parse or parse_expr, total_shards, max_sharded_queries,
                               max_regexp_bytes, len(plan.parts))


def _plan_instant_sharding(text: str, parse: Optional[Callable[[str], Any]], total_shards: int,
                           max_sharded_queries: int, max_regexp_bytes: int) -> Any:
    """Pool: the querysharding.ShardingPlan of an instant query (the handler's parse raises its
    parameter errors, as the querier would)."""
    from urdar.components.querysharding import plan_sharding
    from urdar.promql.parser import parse_expr
    return plan_sharding(text, parse or parse_expr, total_shards, max_sharded_queries,
                         max_regexp_bytes, 1)


def _plain_part(result: Any) -> tuple:
    return result.value, list(result.warnings), list(result.infos)


def _rendered_part(result: Any) -> tuple:
    """Pool (called by the querier after evaluation): a part with rendered point text."""
    return from_matrix(result.value), list(result.warnings), list(result.infos)


def _first_error(f: Any) -> Any:
    """gatherResults wraps a part's failure; pass the part's own error on."""
    if f.check(defer.FirstError):
        return f.value.subFailure
    return f


def _decode_or_empty(raw: bytes) -> list:
    try:
        return decode_extents(raw)
    except (ValueError, struct.error):
        return []       # damaged or foreign: a miss


def _decode_and_plan(raw: bytes, s: int, e: int, step: int) -> tuple:
    """Pool: (extents, missing_ranges for [s, e]) of a cache entry (damaged: a miss)."""
    extents = _decode_or_empty(raw)
    return extents, missing_ranges(extents, s, e, step)


def _merge_and_extend(pieces: list, extents: list, s: int, e: int, step: int, max_cache_t: int,
                      fetched: bool, render_text: Any = None, encode: bool = True) -> tuple:
    """Pool: the part's (matrix, warnings, infos) from its pieces ((matrix, mint, maxt)
    windows, warnings, infos; a fetched piece's window is (matrix, None, None, its start, its
    end)), or render_text's answer for them, and the extents to store, encoded unless `encode`
    is false (None: nothing new, a piece had annotations, or the part is entirely newer than
    the cache edge). Only what was fetched is added to the extents."""
    windows = [p[0][:3] for p in pieces]
    warnings = [w for p in pieces for w in p[1]]
    infos = [i for p in pieces for i in p[2]]
    entry: Any = None
    hi = min(e, max_cache_t)
    if fetched and not warnings and not infos and hi >= s:
        added = extents
        for p in pieces:
            if len(p[0]) > 3 and p[0][3] <= hi:
                fs, fe = p[0][3], min(p[0][4], hi)
                new = Extent(fs, fe, slice_matrix(p[0][0], fs, fe))
                if not any(x.start <= fs and fe <= x.end for x in added):
                    added = add_extent(added, new, step)
        if added is not extents:
            entry = encode_extents(added) if encode else added
    if render_text is not None:
        matrix = merge_windows(windows, lazy=True)
        warnings, infos = _annotations([(None, warnings, infos)])
        return render_text(matrix, warnings, infos), entry
    return (merge_windows(windows), warnings, infos), entry


def _annotations(results: list) -> tuple[list, list]:
    warnings = list(dict.fromkeys(w for r in results for w in r[1]))
    infos = list(dict.fromkeys(i for r in results for i in r[2]))
    return warnings, infos


def _assemble(results: list, start: int, render: Any) -> Any:
    """Pool: the parts' (matrix, warnings, infos) -> one Result (rendered when `render`)."""
    by: dict = {}
    for matrix, _, _ in results:
        for item in matrix:
            labels, ts, vs = item[0], item[1], item[2]
            cur = by.get(labels)
            if cur is None:
                cur = by[labels] = (labels, array("q", ts), array("d", vs), array("q"), [])
            else:
                cur[1].extend(ts)
                cur[2].extend(vs)
            if len(item) > 3:
                cur[3].extend(item[3])
                cur[4].extend(item[4])
    by = {k: (v if v[4] else v[:3]) for k, v in by.items()}
    warnings, infos = _annotations(results)
    result = Result("matrix", [by[k] for k in sorted(by)], start, warnings, infos)
    return render(result) if render is not None else result


def _assemble_text(results: list, render_text: Any) -> Any:
    """Pool: the parts' (series with point text, warnings, infos) -> render_text's answer."""
    warnings, infos = _annotations(results)
    return render_text(merge_pieces([r[0] for r in results]), warnings, infos)


def results_cache_from_config(cfg: Any, clock: Any, reactor: Any, metrics: Any = None) -> Any:
    """The results cache -query-frontend.results-cache.backend names (None when caching is off);
    `metrics`: the process' net/memcached.MemcachedMetrics (one per registry)."""
    if not cfg["frontend.cache_results"]:
        return None
    if cfg["frontend.results_cache.backend"] == "memcached":
        from urdar.components.storecache import memcached_addresses
        from urdar.net.memcached import MemcachedClient
        y = "frontend.results_cache.memcached."
        client = MemcachedClient(
            memcached_addresses(cfg[y + "addresses"],
                                "query-frontend.results-cache.memcached.addresses"),
            clock, reactor, timeout_s=cfg[y + "timeout"] / 1000.0,
            connect_timeout_s=cfg[y + "connect_timeout"] / 1000.0,
            max_item_size=cfg[y + "max_item_size"],
            max_get_multi_batch_size=cfg[y + "max_get_multi_batch_size"],
            max_async_buffer_size=cfg[y + "max_async_buffer_size"], name="frontend-cache",
            metrics=metrics)
        return MemcachedResultsCache(client)
    return InMemoryResultsCache(cfg["frontend.results_cache.inmemory.max_size_bytes"])
