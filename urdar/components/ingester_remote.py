"""An ingester over HTTP: the wire encodings of the internal ingester endpoints and
`RemoteIngesterClient`, the IngesterClient (components/ingester_client.py) that speaks them.

Mimir's distributors and queriers reach ingesters over gRPC; urdar uses its one HTTP server. The
endpoints live under /ingester/client/ (handlers/ingester.py), are per tenant (X-Scope-OrgID) and
are not meant for users. Encodings (all integers little-endian):

- POST push: body is a snappy-compressed (block format) protobuf WriteRequest, Mimir's
  cortexpb.WriteRequest shape (wire-compatible with Prometheus remote-write 1.0): the series the
  distributor sends this ingester, in the order of its batch, with their exemplars, plus metadata.
  Series with native histograms carry them (prompb.Histogram, remote write 1.0's field 4).
  Answer: `<QQQI` accepted, new series, exemplars kept, histogram count H, then one outcome byte
  per float sample of the request in wire order (urdar.engine.outcomes codes), then H outcome
  bytes, one per histogram in wire order, so the distributor reports out-of-order, duplicate and
  series-limit refusals exactly as in one process.
- POST select: JSON request {"matchers": [[kind, name, value]...], "mint", "maxt", "step", "func",
  "range_ms", "limit"} (a promql SelectHints). Answer, the compact binary Mimir's
  client.QueryStreamResponse carries as protobuf: `<I` series count, then per series `<II` key
  length and sample count (0xFFFFFFFF for a label-only read, func "series"), the canonical label
  key (engine/labels), the int64 ms timestamps and the float64 values as two raw arrays. Arrays
  travel as memory copies: no per-sample work on either side. When some series have native
  histograms, a tail follows: `<I` entries, each `<II` series index and sample count, then per
  sample `<I` length and one prompb.Histogram (float counts, timestamp inside).
- POST label_names / label_values ({"name"} too): JSON list of strings.
- POST exemplars {"matchers", "mint", "maxt"}, metadata, user_stats: JSON; label keys are binary
  and travel as JSON strings of their bytes read as latin-1 (a 1:1 byte mapping).
- POST head_series {"matchers"}: `<QI` the head's series count and the number of keys, then per
  key `<I` length and the key.

Errors are plain-text bodies with the status of handlers/errors.py; the client turns the status
back into a components/errors cause (4xx keep their cause class, so the distributor can tell a
client error from an ingester failure). Answers are capped at MAX_RESPONSE_BYTES (Mimir's
-ingester.client.grpc-max-recv-msg-size default, 100 MiB)."""
import json
import struct
import sys
from array import array
from typing import Any, Sequence

import cramjam
from twisted.internet import defer

from urdar.components import errors as E
from urdar.components import ingester_client as IC
from urdar.engine.matchers import Matcher
from urdar.promql.selectors import SelectHints

PATH = "/ingester/client/"
MAX_RESPONSE_BYTES = 100 << 20
# Answers up to this size are decoded on the reactor (well under a millisecond); larger ones in
# the pool, so a wide query's many small reads do not fill the pool's queue.
INLINE_DECODE_BYTES = 64 << 10
NO_SAMPLES = 0xFFFFFFFF
_LE = sys.byteorder == "little"
_PUSH_HEAD = struct.Struct("<QQQI")
_SERIES_HEAD = struct.Struct("<II")
_U32 = struct.Struct("<I")
_HEAD_SERIES = struct.Struct("<QI")

# Client-side cause of an HTTP status (the inverse of handlers/errors.py's table, per class).
_CAUSE_OF_STATUS = {400: E.BAD_DATA, 401: E.UNAUTHORIZED, 404: E.NOT_FOUND, 409: E.CONFLICT,
                    413: E.TOO_LARGE, 415: E.UNSUPPORTED, 422: E.UNPROCESSABLE, 429: E.RATE_LIMITED,
                    499: E.CANCELED, 503: E.UNAVAILABLE, 504: E.TIMEOUT}
# Causes that are the client's fault (4xx): a quorum of these is a 4xx for the pusher.
CLIENT_CAUSES = frozenset({E.BAD_DATA, E.UNAUTHORIZED, E.TENANT_LIMIT, E.RATE_LIMITED, E.TOO_LARGE,
                           E.UNSUPPORTED, E.CONFLICT, E.UNPROCESSABLE, E.NOT_FOUND})


def is_client_error(exc: BaseException) -> bool:
    return isinstance(exc, E.ComponentError) and exc.cause in CLIENT_CAUSES


def _raw(a: Any) -> bytes:
    """The little-endian bytes of an array('q'/'d'/'Q')."""
    if _LE:
        return a.tobytes()
    b = array(a.typecode, a)
    b.byteswap()
    return b.tobytes()


def _array(typecode: str, data: Any) -> array:
    a = array(typecode)
    a.frombytes(data)
    if not _LE:
        a.byteswap()
    return a


# ---- push ---------------------------------------------------------------------------------------

def encode_push(batch: IC.WriteBatch, series: Sequence[int] | None = None,
                exemplars: Sequence[tuple] | None = None,
                metadata: Sequence[tuple] | None = None) -> tuple[bytes, list[int]]:
    """(snappy WriteRequest, order) of `batch`'s series `series` (indexes; None: every series not
    skipped) with `exemplars` (WriteBatch.exemplars rows of those series) and `metadata`
    (WriteBatch.metadata rows); None: all of the batch's. `order` lists the series in the order
    the request holds them (series with exemplars last), which is the order of the answer's
    outcomes. Runs in a pool; series without exemplars are encoded from the columns in C."""
    from urdar.engine.labels import decode_labels
    from urdar.engine.remotewrite import encode_columns, encode_write_request
    skip = batch.skip
    if series is None:
        series = [i for i in range(batch.n_series) if not (skip and skip[i])]
    if exemplars is None:
        exemplars = batch.exemplars
    if metadata is None:
        metadata = batch.metadata
    by_key: dict[bytes, list] = {}
    for key, t, v, ekey in exemplars:
        by_key.setdefault(bytes(key), []).append((decode_labels(ekey), t, v))
    hists = _histograms_by_series(batch)
    plain, rich = list(series), []
    if by_key or hists:
        plain = [i for i in series if i not in hists and bytes(batch.key(i)) not in by_key]
        rich = [i for i in series if i in hists or bytes(batch.key(i)) in by_key]
    body = encode_columns(batch.keys, batch.key_offsets, batch.sample_offsets,  # type: ignore[arg-type]
                          batch.ts, batch.vals, array("Q", plain))  # type: ignore[arg-type]
    if rich or metadata:
        offs: Any = batch.sample_offsets
        ts: Any = batch.ts
        vals: Any = batch.vals
        rows = []
        if hists:
            from urdar.engine.prompbhist import encode_histogram
        for i in rich:
            key = batch.key(i)
            a, b = offs[i], offs[i + 1]
            hs = [encode_histogram(t, h) for _, t, h in batch.histograms[slice(*hists[i])]] \
                if i in hists else []
            rows.append((decode_labels(key), list(zip(ts[a:b], vals[a:b])),
                         by_key.get(bytes(key), ()), hs))
        md = [(mtype, name, help_, unit) for name, mtype, help_, unit in metadata]
        body += encode_write_request(rows, md)
    return cramjam.snappy.compress_raw(body).read(), plain + rich


def _histograms_by_series(batch: IC.WriteBatch) -> dict[int, tuple[int, int]]:
    """{series index: (start, end) of its rows in batch.histograms} (rows come grouped)."""
    out: dict[int, tuple[int, int]] = {}
    rows = batch.histograms
    k = 0
    while k < len(rows):
        i, j = rows[k][0], k
        while j < len(rows) and rows[j][0] == i:
            j += 1
        out[i] = (k, j)
        k = j
    return out


def histogram_order(batch: IC.WriteBatch, order: Sequence[int]) -> list[int]:
    """The batch.histograms rows in the order a push body of the series `order` holds them
    (each series' histograms in turn), which is the order of the answer's histogram outcomes."""
    if not batch.histograms:
        return []
    hists = _histograms_by_series(batch)
    rows: list[int] = []
    for i in order:
        if i in hists:
            rows.extend(range(*hists[i]))
    return rows


def spread_outcomes(res: IC.PushResult, batch: IC.WriteBatch, order: Sequence[int]) -> IC.PushResult:
    """`res` (outcomes of the samples of the series `order`, in that order, then of their
    histograms) as outcomes of every sample and histogram row of `batch`, SKIPPED for series
    not sent."""
    from urdar.engine.outcomes import SKIPPED
    ts: Any = batch.ts
    offs: Any = batch.sample_offsets
    hout = bytearray([SKIPPED]) * len(batch.histograms)
    for k, row in enumerate(histogram_order(batch, order)):
        hout[row] = res.histogram_outcomes[k] if k < len(res.histogram_outcomes) else SKIPPED
    if len(order) == batch.n_series and len(res.outcomes) == len(ts) and \
            all(order[k] == k for k in range(len(order))):
        out = res.outcomes      # every series, in batch order
    else:
        out = bytearray([SKIPPED]) * len(ts)
        pos = 0
        for i in order:
            a, b = offs[i], offs[i + 1]
            out[a:b] = res.outcomes[pos:pos + b - a]
            pos += b - a
    return IC.PushResult(res.accepted, res.new_series, out, res.exemplars_kept, hout)


def decode_push(body: bytes, max_size: int) -> IC.WriteBatch:
    """The WriteBatch of a push body (BAD_DATA if it is not one). Pool thread."""
    from urdar.engine import remotewrite as rw
    try:
        if cramjam.snappy.decompress_raw_len(body) > max_size:
            raise E.ComponentError(E.TOO_LARGE, "push body larger than %d bytes" % max_size)
        raw = cramjam.snappy.decompress_raw(body)
        dw = rw.decode(memoryview(raw), max_label_name_length=1 << 30,
                       max_label_value_length=1 << 30, max_label_names_per_series=1 << 30)
    except E.ComponentError:
        raise
    except Exception as exc:
        raise E.ComponentError(E.BAD_DATA, "decode push: %s" % (exc,)) from None
    exemplars = []
    eo = dw.exemplar_offsets
    for i in range(dw.n_series) if dw.n_exemplars else ():
        for j in range(eo[i], eo[i + 1]):
            exemplars.append((dw.key(i), dw.exemplar_ts[j], dw.exemplar_vals[j], dw.exemplar_key(j)))
    metadata = [(name, mtype, help_, unit) for mtype, name, help_, unit in dw.metadata]
    histograms = []
    if dw.n_histograms:
        from urdar.engine.prompbhist import request_histograms
        try:
            per_series = request_histograms(bytes(raw))
        except ValueError as exc:
            raise E.ComponentError(E.BAD_DATA, "decode push: histogram: %s" % (exc,)) from None
        if len(per_series) != dw.n_series:
            raise E.ComponentError(E.BAD_DATA, "decode push: histogram walk found %d series, "
                                   "decoder %d" % (len(per_series), dw.n_series))
        histograms = [(i, t, h) for i, hs in enumerate(per_series) for t, h in hs]
    return IC.WriteBatch(dw.keys, dw.key_offsets, dw.key_hashes, dw.sample_offsets, dw.ts, dw.vals,
                         None, exemplars, metadata, histograms)


def encode_push_result(res: IC.PushResult) -> bytes:
    return _PUSH_HEAD.pack(res.accepted, res.new_series, res.exemplars_kept,
                           len(res.histogram_outcomes)) + bytes(res.outcomes) + \
        bytes(res.histogram_outcomes)


def decode_push_result(body: bytes) -> IC.PushResult:
    if len(body) < _PUSH_HEAD.size:
        raise E.ComponentError(E.INTERNAL, "malformed push answer (%d bytes)" % len(body))
    accepted, new_series, kept, nh = _PUSH_HEAD.unpack_from(body)
    if nh > len(body) - _PUSH_HEAD.size:
        raise E.ComponentError(E.INTERNAL, "malformed push answer (%d histogram outcomes in %d "
                               "bytes)" % (nh, len(body)))
    end = len(body) - nh
    return IC.PushResult(accepted, new_series, bytearray(body[_PUSH_HEAD.size:end]), kept,
                         bytearray(body[end:]))


# ---- reads --------------------------------------------------------------------------------------

def encode_matchers(matchers: Sequence[Any]) -> list[list[str]]:
    return [[m.kind, m.name, m.value] for m in matchers]


def decode_matchers(rows: Any) -> tuple[Matcher, ...]:
    try:
        return tuple(Matcher(str(k), str(n), str(v)) for k, n, v in rows)
    except (TypeError, ValueError) as exc:
        raise E.ComponentError(E.BAD_DATA, "bad matchers: %s" % (exc,)) from None


def encode_hints(h: SelectHints) -> dict[str, Any]:
    return {"mint": h.mint, "maxt": h.maxt, "step": h.step, "func": h.func,
            "range_ms": h.range_ms, "limit": h.limit}


def decode_hints(doc: dict[str, Any]) -> SelectHints:
    try:
        return SelectHints(int(doc["mint"]), int(doc["maxt"]), int(doc.get("step", 0)),
                           str(doc.get("func", "")), int(doc.get("range_ms", 0)),
                           int(doc.get("limit", 0)))
    except (KeyError, TypeError, ValueError) as exc:
        raise E.ComponentError(E.BAD_DATA, "bad select hints: %s" % (exc,)) from None


def encode_series(series: Sequence[tuple]) -> bytes:
    """A select answer (see the module docstring). Pool thread."""
    parts = [_U32.pack(len(series))]
    hist = []
    for idx, item in enumerate(series):
        key, ts, vals = item[0], item[1], item[2]
        if ts is None:
            parts.append(_SERIES_HEAD.pack(len(key), NO_SAMPLES))
            parts.append(bytes(key))
        else:
            parts.append(_SERIES_HEAD.pack(len(key), len(ts)))
            parts.append(bytes(key))
            parts.append(_raw(ts if isinstance(ts, array) else array("q", ts)))
            parts.append(_raw(vals if isinstance(vals, array) else array("d", vals)))
        if len(item) > 4 and item[4] is not None and len(item[4]):
            hist.append((idx, item[4], item[5]))
    if hist:
        from urdar.engine.prompbhist import encode_histogram
        parts.append(_U32.pack(len(hist)))
        for idx, hts, hvs in hist:
            parts.append(_SERIES_HEAD.pack(idx, len(hts)))
            for t, h in zip(hts, hvs):
                body = encode_histogram(t, h)
                parts.append(_U32.pack(len(body)))
                parts.append(body)
    return b"".join(parts)


def decode_series(body: bytes) -> list[tuple[bytes, Any, Any]]:
    """The [(key, array('q') ts, array('d') vals)] of a select answer. Pool thread."""
    mv = memoryview(body)
    try:
        (n,) = _U32.unpack_from(mv, 0)
        pos = _U32.size
        out: list[tuple[bytes, Any, Any]] = []
        for _ in range(n):
            klen, count = _SERIES_HEAD.unpack_from(mv, pos)
            pos += _SERIES_HEAD.size
            key = bytes(mv[pos:pos + klen])
            pos += klen
            if count == NO_SAMPLES:
                out.append((key, None, None))
                continue
            end = pos + 8 * count
            ts = _array("q", mv[pos:end])
            vals = _array("d", mv[end:end + 8 * count])
            if len(vals) != count:
                raise ValueError("truncated")
            pos = end + 8 * count
            out.append((key, ts, vals))
        if pos < len(mv):
            _decode_histogram_section(mv, pos, out)
    except (struct.error, ValueError) as exc:
        raise E.ComponentError(E.INTERNAL, "malformed select answer: %s" % (exc,)) from None
    return out


def _decode_histogram_section(mv: memoryview, pos: int, out: list) -> None:
    """The optional tail of a select answer: native histogram samples of some series, as
    `<I` entries, then per entry `<II` series index and count, and per sample `<I` length and a
    prompb.Histogram (timestamp inside). The series become (key, ts, vals, None, hts, hvs)."""
    from urdar.engine.prompbhist import decode_histogram
    (n,) = _U32.unpack_from(mv, pos)
    pos += _U32.size
    data = bytes(mv)
    for _ in range(n):
        idx, count = _SERIES_HEAD.unpack_from(mv, pos)
        pos += _SERIES_HEAD.size
        if idx >= len(out) or count > len(mv):
            raise ValueError("histogram entry for series %d of %d" % (idx, len(out)))
        hts = array("q")
        hvs = []
        for _ in range(count):
            (blen,) = _U32.unpack_from(mv, pos)
            pos += _U32.size
            if pos + blen > len(mv):
                raise ValueError("truncated histogram")
            t, h = decode_histogram(data, pos, pos + blen)
            pos += blen
            hts.append(t)
            hvs.append(h.to_float())
        key, ts, vals = out[idx][:3]
        out[idx] = (key, ts, vals, None, hts, hvs)


def encode_head_series(keys: Sequence[bytes], total: int) -> bytes:
    parts = [_HEAD_SERIES.pack(total, len(keys))]
    for k in keys:
        parts.append(_U32.pack(len(k)))
        parts.append(bytes(k))
    return b"".join(parts)


def decode_head_series(body: bytes) -> tuple[list[bytes], int]:
    mv = memoryview(body)
    try:
        total, n = _HEAD_SERIES.unpack_from(mv, 0)
        pos = _HEAD_SERIES.size
        keys = []
        for _ in range(n):
            (klen,) = _U32.unpack_from(mv, pos)
            pos += _U32.size
            if pos + klen > len(mv):
                raise ValueError("truncated")
            keys.append(bytes(mv[pos:pos + klen]))
            pos += klen
    except (struct.error, ValueError) as exc:
        raise E.ComponentError(E.INTERNAL, "malformed head_series answer: %s" % (exc,)) from None
    return keys, total


def encode_exemplars(rows: Sequence[tuple[bytes, Sequence[tuple]]]) -> bytes:
    return json.dumps([[bytes(k).decode("latin-1"), [[t, v, bytes(lk).decode("latin-1")]
                                                     for t, v, lk in exs]]
                       for k, exs in rows]).encode()


def decode_exemplars(body: bytes) -> list[tuple[bytes, list[tuple[int, float, bytes]]]]:
    return [(k.encode("latin-1"), [(int(t), float(v), lk.encode("latin-1")) for t, v, lk in exs])
            for k, exs in json.loads(body)]


def encode_metadata(md: dict[str, list[tuple]]) -> bytes:
    return json.dumps({name: [list(e) for e in entries] for name, entries in md.items()}).encode()


def decode_metadata(body: bytes) -> dict[str, list[tuple[int, str, str]]]:
    return {name: [(int(t), str(h), str(u)) for t, h, u in entries]
            for name, entries in json.loads(body).items()}


# ---- the client ---------------------------------------------------------------------------------

def http_client(reactor: Any, connect_timeout_s: float = 5.0, max_per_host: int = 32) -> Any:
    """treq's HTTPClient over one persistent connection pool (keep-alive connections reused
    across requests to every ingester)."""
    import treq
    from twisted.web.client import Agent

    from urdar.net.server import quiet_connection_pool
    pool = quiet_connection_pool(reactor, persistent=True)
    pool.maxPersistentPerHost = max_per_host
    pool.cachedConnectionTimeout = 60
    return treq.client.HTTPClient(Agent(reactor, connectTimeout=connect_timeout_s, pool=pool))


class RemoteIngesterClient:
    """IngesterClient of one ingester at `addr` (host:port) over treq-like `http`
    (request(method, url, data=, headers=)). Reads time out after `timeout_s` on `clock`,
    pushes after `push_timeout_s` (-distributor.remote-timeout); 0: no timeout. Decoding of
    large answers runs in offload pool `pool`, push encoding in `push_pool`."""

    def __init__(self, addr: str, http: Any, clock: Any, offload: Any, timeout_s: float = 120.0,
                 pool: str = "query", push_pool: str = "decode", push_timeout_s: float = 2.0) -> None:
        self.addr = addr
        self.base = addr if addr.startswith("http") else "http://" + addr
        self.http = http
        self.clock = clock
        self.offload = offload
        self.timeout_s = timeout_s
        self.push_timeout_s = push_timeout_s
        self.pool = pool
        self.push_pool = push_pool

    path = PATH     # the internal endpoints' prefix (RemoteStoreGatewayClient has its own)
    carries_histograms = True   # push bodies carry WriteBatch.histograms

    def __repr__(self) -> str:
        return "%s(%s)" % (type(self).__name__, self.addr)

    def _call(self, op: str, tenant: str, body: bytes, content_type: bytes,
              timeout_s: float | None = None) -> "defer.Deferred[bytes]":
        """POST body to the endpoint `op`; Deferred[answer bytes] or a ComponentError."""
        import treq
        from twisted.internet import error
        timeout = self.timeout_s if timeout_s is None else timeout_s
        from twisted.web import client
        url = self.base + self.path + op
        headers = {b"X-Scope-OrgID": [tenant.encode()], b"Content-Type": [content_type]}
        d = defer.maybeDeferred(self.http.request, "POST", url, data=body, headers=headers)

        def got(resp: Any) -> Any:
            size = [0]
            chunks: list[bytes] = []

            def collect(data: bytes) -> None:
                size[0] += len(data)
                if size[0] > MAX_RESPONSE_BYTES:
                    raise E.ComponentError(E.INTERNAL, "answer of ingester %s larger than %d bytes"
                                           % (self.addr, MAX_RESPONSE_BYTES))
                chunks.append(data)
            return treq.collect(resp, collect).addCallback(
                lambda _: self._answer(resp.code, b"".join(chunks)))

        def failed(f: Any) -> Any:
            if f.check(E.ComponentError):
                return f
            if f.check(defer.TimeoutError, defer.CancelledError):
                raise E.ComponentError(E.UNAVAILABLE, "ingester %s: no answer within %gs" % (
                    self.addr, timeout))
            if f.check(error.ConnectError, error.ConnectionLost, error.ConnectionDone,
                       client.ResponseFailed, client.RequestNotSent, client.ResponseNeverReceived):
                raise E.ComponentError(E.UNAVAILABLE, "ingester %s: %s" % (
                    self.addr, f.getErrorMessage() or f.type.__name__))
            return f
        d.addCallback(got)
        if timeout:
            d.addTimeout(timeout, self.clock)
        return d.addErrback(failed)

    def _answer(self, status: int, body: bytes) -> bytes:
        if status == 200:
            return body
        cause = _CAUSE_OF_STATUS.get(status, E.INTERNAL)
        raise E.ComponentError(cause, body.decode("utf-8", "replace").strip() or "status %d" % status)

    def _decode(self, body: bytes, fn: Any) -> Any:
        if len(body) <= INLINE_DECODE_BYTES:
            return fn(body)
        return self.offload.run(self.pool, fn, body)

    def _json(self, op: str, tenant: str, doc: Any) -> "defer.Deferred[bytes]":
        return self._call(op, tenant, json.dumps(doc).encode(), b"application/json")

    # ---- write half ----------------------------------------------------------------------------

    def push(self, tenant: str, batch: IC.WriteBatch) -> "defer.Deferred[IC.PushResult]":
        """Deferred[PushResult] with one outcome per sample of `batch` (SKIPPED for the samples
        of skipped series, which are not sent)."""
        def send(encoded: tuple[bytes, list[int]]) -> Any:
            body, order = encoded
            return self.push_encoded(body, tenant).addCallback(spread_outcomes, batch, order)
        return self.offload.run(self.push_pool, encode_push, batch).addCallback(send)

    def push_encoded(self, body: bytes, tenant: str) -> "defer.Deferred[IC.PushResult]":
        """Send an encode_push() body; Deferred[PushResult] for its samples in wire order."""
        return self._call("push", tenant, body, b"application/x-protobuf",
                          self.push_timeout_s).addCallback(decode_push_result)

    def user_stats(self, tenant: str) -> "defer.Deferred[dict[str, Any]]":
        return self._json("user_stats", tenant, {}).addCallback(json.loads)

    def ready(self) -> bool:
        return True     # the ring's state says whether the ingester serves

    # ---- read half ------------------------------------------------------------------------------

    def select(self, tenant: str, matchers: Sequence[Any], hints: SelectHints) -> Any:
        d = self._json("select", tenant, dict(encode_hints(hints), matchers=encode_matchers(matchers)))
        return d.addCallback(self._decode, decode_series)

    def label_names(self, tenant: str, matchers: Sequence[Any], hints: SelectHints) -> Any:
        d = self._json("label_names", tenant, dict(encode_hints(hints),
                                                   matchers=encode_matchers(matchers)))
        return d.addCallback(json.loads)

    def label_values(self, tenant: str, name: str, matchers: Sequence[Any], hints: SelectHints) -> Any:
        d = self._json("label_values", tenant, dict(encode_hints(hints), name=name,
                                                    matchers=encode_matchers(matchers)))
        return d.addCallback(json.loads)

    def exemplars(self, tenant: str, matchers: Sequence[Any], mint: int, maxt: int) -> Any:
        d = self._json("exemplars", tenant, {"matchers": encode_matchers(matchers), "mint": mint,
                                             "maxt": maxt})
        return d.addCallback(decode_exemplars)

    def metadata(self, tenant: str) -> Any:
        return self._json("metadata", tenant, {}).addCallback(decode_metadata)

    def head_series(self, tenant: str, matchers: Sequence[Any]) -> Any:
        d = self._json("head_series", tenant, {"matchers": encode_matchers(matchers)})
        return d.addCallback(self._decode, decode_head_series)
