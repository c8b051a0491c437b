"""HTTP endpoints of the querier under -http.prometheus-http-prefix: Prometheus' query API and Mimir's
cardinality API. Each handler parses parameters with Prometheus' (or Mimir's) rules and error texts,
calls components/querier.py and renders with handlers/render.py; nothing else.

GET and POST (form-encoded) are both accepted where Prometheus accepts them. Times are RFC3339 or
unix seconds (rounded to ms as Prometheus does), durations float seconds or 1h30m-style. Errors are
Prometheus' JSON envelope with its status codes (400 bad_data, 422 execution, 503 timeout or
unavailable, 499 canceled, 500 internal); remote read and cardinality errors are plain text like
Prometheus' and Mimir's. Anything that grows with the request (PromQL parsing, match[] parsing,
remote read decoding, evaluation, rendering) runs in the "query" pool, never on the reactor.
When the query-frontend runs (app/modules.py sets `frontend`), query, query_range and the read
APIs (label names and values, series, cardinality: validated and keyed here, then run by a querier
with run_read_api) are handed to it (components/frontend.py) with the request's Cache-Control:
no-store; the other routes are the querier's own."""
import calendar
import datetime
import logging
import math
import re
import time
from typing import TYPE_CHECKING

import cramjam
from twisted.internet import defer

from urdar.components import errors as E
from urdar.components import remoteread as RR
from urdar.handlers import render as R
from urdar.handlers.routes import require_tenant, route
from urdar.net.server import Refusal
from urdar.promql import ast as A
from urdar.promql.parser import ParseError, parse_expr, parse_metric_selector
from urdar.promql.prettier import PrettyTooLarge, prettify
from urdar.promql.value import HISTOGRAMS_LABEL

if TYPE_CHECKING:
    from urdar.components.frontend import Frontend
    from urdar.components.querystats import QueryStatsReporter

log = logging.getLogger("urdar.handlers.querier")

# Prometheus' MinTime/MaxTime (what clients send for "unbounded") in ms, and their RFC3339 text.
MIN_TIME_MS = -9223309901257974000
MAX_TIME_MS = 9223309901257974999
MIN_TIME_TEXT = "-292273086-05-16T16:47:06Z"
MAX_TIME_TEXT = "292277025-08-18T07:12:54.999999999Z"
MAX_POINTS = 11000
NS_PER_MS = 1_000_000
INT64_MAX = 2 ** 63 - 1
REMOTE_READ_MAX_BYTES = 32 << 20
STREAMED_CONTENT_TYPE = b"application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse"

_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})\Z")
_DURATION = re.compile(r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?\Z")
_DURATION_MS = (365 * 86400000, 7 * 86400000, 86400000, 3600000, 60000, 1000, 1)
_GO_FLOAT = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan)\Z", re.I)
_LEGACY_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


class ParamError(E.ComponentError):
    """A bad request parameter (bad_data, 400) with `message` as Prometheus words it."""

    def __init__(self, message):
        super().__init__(E.BAD_DATA, message)


def invalid_param(name, err):
    return ParamError('invalid parameter %s: %s' % (A.go_quote(name), err))


# ---- parameter parsing (Prometheus' web/api/v1 rules) -------------------------------------------

def _go_float(s):
    if not _GO_FLOAT.match(s):
        raise ValueError(s)
    return float(s)


def _go_round(x):
    """Go's math.Round: half away from zero, exact."""
    i = math.trunc(x)
    if abs(x - i) >= 0.5:
        i += 1 if x > 0 else -1
    return i


def parse_time(s):
    """Time parameter text -> int ms; ValueError with Prometheus' message."""
    try:
        f = _go_float(s)
    except ValueError:
        f = None
    if f is not None:
        if math.isnan(f) or math.isinf(f) or abs(f) > 9.2e15:
            raise ValueError("cannot parse %s to a valid timestamp" % A.go_quote(s))
        frac, whole = math.modf(f)
        frac_ms = _go_round(frac * 1000)               # math.Round(ns*1000)/1000 in seconds
        nsec = math.trunc((frac_ms / 1000) * 1e9)      # int64(ns * float64(time.Second))
        sec = int(whole)
        sec += nsec // 1_000_000_000                   # time.Unix normalises nsec into [0, 1e9)
        nsec %= 1_000_000_000
        return sec * 1000 + nsec // NS_PER_MS
    m = _RFC3339.match(s)
    if m:
        y, mo, d, h, mi, sec = (int(x) for x in m.groups()[:6])
        try:
            datetime.datetime(y, mo, d, h, mi, sec)
        except ValueError:
            m = None
        else:
            frac = (m.group(7) or "").ljust(9, "0")
            zone = m.group(8)
            off = 0
            if zone != "Z":
                off = (int(zone[1:3]) * 60 + int(zone[4:6])) * 60 * (1 if zone[0] == "+" else -1)
            unix = calendar.timegm((y, mo, d, h, mi, sec)) - off
            return unix * 1000 + int(frac) // NS_PER_MS
    if s == MIN_TIME_TEXT:
        return MIN_TIME_MS
    if s == MAX_TIME_TEXT:
        return MAX_TIME_MS
    raise ValueError("cannot parse %s to a valid timestamp" % A.go_quote(s))


def parse_duration_ns(s):
    """Duration parameter text (float seconds or 1h30m) -> int ns; ValueError with Prometheus' text."""
    try:
        f = _go_float(s)
    except ValueError:
        f = None
    if f is not None:
        ns = f * 1e9
        if ns != ns or ns >= 2.0 ** 63 or ns < -(2.0 ** 63):
            raise ValueError("cannot parse %s to a valid duration. It overflows int64" % A.go_quote(s))
        return math.trunc(ns)
    m = _DURATION.match(s) if s else None
    if m and s != "" and any(m.groups()):
        ms = sum(int(g) * u for g, u in zip(m.groups(), _DURATION_MS) if g)
        if ms * NS_PER_MS <= INT64_MAX:
            return ms * NS_PER_MS
    if s == "0":
        return 0
    raise ValueError("cannot parse %s to a valid duration" % A.go_quote(s))


def parse_limit(s):
    """Prometheus' parseLimitParam: "" -> 0 (no limit)."""
    if s == "":
        return 0
    try:
        v = go_atoi(s)
    except ValueError as exc:
        raise invalid_param("limit", exc) from None
    if v < 0:
        raise invalid_param("limit", "limit must be non-negative")
    return v


def go_atoi(s):
    """strconv.Atoi with Go's error text."""
    if not re.match(r"[+-]?\d+\Z", s):
        raise ValueError("strconv.Atoi: parsing %s: invalid syntax" % A.go_quote(s))
    v = int(s)
    if not -(2 ** 63) <= v <= INT64_MAX:
        raise ValueError("strconv.Atoi: parsing %s: value out of range" % A.go_quote(s))
    return v


def parse_matcher_sets(values):
    """match[] values -> [[Matcher]]; each set needs one matcher that does not match ""."""
    sets = []
    for s in values:
        try:
            sets.append(parse_metric_selector(s))
        except ParseError as exc:
            raise invalid_param("match[]", exc) from None
    for ms in sets:
        if not any(not m.matches("") for m in ms):
            raise invalid_param("match[]", "match[] must contain at least one non-empty matcher")
    return sets


def extract_selectors(expr):
    """Matchers of every vector selector in a parsed expression (parser.ExtractSelectors)."""
    return [n.matchers for n in A.walk(expr) if isinstance(n, A.VectorSelector)]


# ---- handlers -----------------------------------------------------------------------------------

# Request body caps as Prometheus has them: net/http's ParseForm reads at most 10 MiB of a form
# body, remote read decodes at most 32 MiB (storage/remote's decodeReadLimit).
MAX_FORM_BODY_BYTES = 10 << 20
MAX_READ_BODY_BYTES = 32 << 20


class QuerierHandlers:
    # Every body-taking route is tenant-scoped: refuse a missing tenant (and oversized bodies)
    # before reading the body.
    ADMIT = dict(dict.fromkeys(("query", "query_range", "query_exemplars", "format_query",
                                "series", "labels",
                                "cardinality_label_names", "cardinality_label_values",
                                "cardinality_active_series"), "admit_form"),
                 remote_read="admit_remote_read")
    tenancy = None      # set by the route table when it mounts this handler
    frontend: "Frontend | None" = None    # components/frontend.Frontend running query_range, if any
    query_stats: "QueryStatsReporter | None" = None   # set with the query-frontend when enabled

    def __init__(self, querier, prometheus_prefix="/prometheus", offload=None, pool="query"):
        self.querier = querier
        self.offload = offload if offload is not None else querier.offload
        self.pool = pool
        p = prometheus_prefix.rstrip("/")
        self.ROUTES = (
            route(p + "/api/v1/query", ("GET", "POST"), "query", tenant=True, errors="json"),
            route(p + "/api/v1/query_range", ("GET", "POST"), "query_range", tenant=True, errors="json"),
            route(p + "/api/v1/query_exemplars", ("GET", "POST"), "query_exemplars", tenant=True,
                  errors="json"),
            route(p + "/api/v1/format_query", ("GET", "POST"), "format_query", tenant=True,
                  errors="json"),
            route(p + "/api/v1/series", ("GET", "POST"), "series", tenant=True, errors="json"),
            route(p + "/api/v1/labels", ("GET", "POST"), "labels", tenant=True, errors="json"),
            route(p + "/api/v1/label/<name>/values", ("GET",), "label_values", tenant=True, errors="json"),
            route(p + "/api/v1/metadata", ("GET",), "metadata", tenant=True, errors="json"),
            route(p + "/api/v1/read", ("POST",), "remote_read", tenant=True),
            route(p + "/api/v1/cardinality/label_names", ("GET", "POST"), "cardinality_label_names",
                  tenant=True),
            route(p + "/api/v1/cardinality/label_values", ("GET", "POST"), "cardinality_label_values",
                  tenant=True),
            route(p + "/api/v1/cardinality/active_series", ("GET", "POST"),
                  "cardinality_active_series", tenant=True),
        )

    # ---- plumbing --------------------------------------------------------------------------

    def admit_form(self, headers, length):
        """Form bodies: at most Go's ParseForm cap, refused as Prometheus words the parse error."""
        return require_tenant(self.tenancy, headers, MAX_FORM_BODY_BYTES, lambda size: Refusal(
            400, R.error_body("bad_data", "error parsing form values: http: POST too large"),
            b"application/json"))

    def admit_remote_read(self, headers, length):
        return require_tenant(self.tenancy, headers, MAX_READ_BODY_BYTES)

    @staticmethod
    def _args(request, name):
        return [v.decode("utf-8", "surrogateescape") for v in request.args.get(name.encode(), [])]

    def _arg(self, request, name):
        vals = self._args(request, name)
        return vals[0] if vals else ""

    def _time(self, request, name, default):
        s = self._arg(request, name)
        if s == "":
            return default
        try:
            return parse_time(s)
        except ValueError as exc:
            raise invalid_param(name, "Invalid time value for '%s': %s" % (name, exc)) from None

    @staticmethod
    def _json(request, status, body):
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body

    def _ok(self, request, data_json, warnings=(), infos=()):
        return self._json(request, 200, R.envelope(data_json, warnings, infos))

    # ---- /api/v1/query, /api/v1/query_range -----------------------------------------------------

    def _lookback(self, request):
        s = self._arg(request, "lookback_delta")
        if s == "":
            return None
        try:
            ns = parse_duration_ns(s)
        except ValueError as exc:
            raise invalid_param("lookback_delta", exc) from None
        return ns // NS_PER_MS if ns > 0 else None

    def _timeout(self, request):
        s = self._arg(request, "timeout")
        if s == "":
            return None
        try:
            return parse_duration_ns(s) / 1e9
        except ValueError as exc:
            raise invalid_param("timeout", exc) from None

    def _with_stats(self, request, tenant, run):
        """run(stats) -> Deferred[body]; with query stats on (-query-frontend.query-stats-enabled)
        the answer gets Mimir's Server-Timing header and the query its "query stats" report."""
        rep = self.query_stats
        stats = rep.start() if rep is not None else None
        if stats is None:
            return run(None)
        started = time.monotonic()

        def report(status, error="", size=0):
            params = sorted((k.decode("utf-8", "replace"),
                             [v.decode("utf-8", "replace") for v in vs])
                            for k, vs in (request.args or {}).items())
            rep.report(stats, tenant, request.method.decode("ascii", "replace"),
                       request.path.decode("utf-8", "replace"),
                       (request.getHeader(b"user-agent") or b"").decode("utf-8", "replace"),
                       params, time.monotonic() - started, status, error, size)

        def ok(body):
            request.setHeader(b"Server-Timing",
                              rep.server_timing(stats, time.monotonic() - started))
            report("success", size=len(body))
            return body

        def failed(f):
            cause = getattr(f.value, "cause", None)
            if f.check(defer.CancelledError) or cause == E.CANCELED:
                report("canceled", f.getErrorMessage() or "context canceled")
            elif cause == E.TIMEOUT:
                report("timeout", f.getErrorMessage())
            else:
                report("failed", f.getErrorMessage())
            return f
        return defer.maybeDeferred(run, stats).addCallbacks(ok, failed)

    def query(self, request, tenant):
        return self._with_stats(request, tenant, lambda stats: self._query(request, tenant, stats))

    def _query(self, request, tenant, stats):
        t = self._time(request, "time", int(self.querier.clock.seconds() * 1000))
        if self.frontend is not None:
            self.frontend.check_query_size(tenant, self._arg(request, "query"))
        timeout = self._timeout(request)
        lookback = self._lookback(request)
        # The query text is parsed once: in the pool under the deadline when long (it may be
        # megabytes), right away when short (Querier._query).
        # Through the query-frontend when it runs (its queue decides when a querier runs it).
        q = self.frontend if self.frontend is not None else self.querier
        d = q.instant_query(tenant, self._arg(request, "query"), t, lookback,
                            render=_render_result, timeout_s=timeout, parse=parse_query,
                            stats=stats)
        return d.addCallback(lambda body: self._json(request, 200, body))

    def query_range(self, request, tenant):
        return self._with_stats(request, tenant,
                                lambda stats: self._query_range(request, tenant, stats))

    def _query_range(self, request, tenant, stats):
        try:
            start = parse_time(self._arg(request, "start"))
        except ValueError as exc:
            raise invalid_param("start", exc) from None
        try:
            end = parse_time(self._arg(request, "end"))
        except ValueError as exc:
            raise invalid_param("end", exc) from None
        if end < start:
            raise invalid_param("end", "end timestamp must not be before start time")
        try:
            step_ns = parse_duration_ns(self._arg(request, "step"))
        except ValueError as exc:
            raise invalid_param("step", exc) from None
        if step_ns <= 0:
            raise invalid_param("step", "zero or negative query resolution step widths are not "
                                        "accepted. Try a positive integer")
        if ((end - start) * NS_PER_MS) // step_ns > MAX_POINTS:
            raise ParamError("exceeded maximum resolution of 11,000 points per timeseries. Try "
                             "decreasing the query resolution (?step=XX)")
        timeout = self._timeout(request)
        lookback = self._lookback(request)
        step_ms = max(1, step_ns // NS_PER_MS)
        if self.frontend is not None:
            cache_control = b",".join(request.requestHeaders.getRawHeaders(b"cache-control", []))
            d = self.frontend.range_query(tenant, self._arg(request, "query"), start, end, step_ms,
                                          lookback, render=_render_result, timeout_s=timeout,
                                          parse=parse_range_query,
                                          no_store=b"no-store" in cache_control.lower(),
                                          render_text=_render_text_matrix, stats=stats)
        else:
            d = self.querier.range_query(tenant, self._arg(request, "query"), start, end, step_ms,
                                         lookback, render=_render_result, timeout_s=timeout,
                                         parse=parse_range_query, stats=stats)
        return d.addCallback(lambda body: self._json(request, 200, body))

    def format_query(self, request, tenant):
        """Prometheus' /api/v1/format_query: the `query` parameter prettified
        (promql/prettier.py), parsed and formatted in the pool."""
        d = self.offload.run(self.pool, format_query_text, self._arg(request, "query"))
        return d.addCallback(lambda body: self._json(request, 200, body))

    # ---- series, labels, label values, metadata, exemplars --------------------------------------

    def _read_api(self, request, tenant, kind, args):
        """A label names/values, series or cardinality request: validated (and keyed) here in
        the pool, then run through the query-frontend when it runs (its results cache and
        queue; a querier elsewhere in split mode) or on the querier of this process."""
        if self.frontend is None:
            return run_read_api(self.querier, self.offload, self.pool, tenant, kind, args)
        if kind.startswith("cardinality_") and not self.frontend.cardinality_enabled(tenant):
            raise E.ComponentError(E.BAD_DATA, "cardinality analysis is disabled for the "
                                   "tenant: %s" % tenant)
        no_store = b"no-store" in b",".join(
            request.requestHeaders.getRawHeaders(b"cache-control", [])).lower()
        frontend = self.frontend
        d = self.offload.run(self.pool, read_api_key, kind, args)
        return d.addCallback(lambda key: frontend.read_request(tenant, kind, args, key, no_store))

    def _read_api_json(self, request, tenant, kind, args):
        d = self._read_api(request, tenant, kind, args)
        return d.addCallback(lambda body: self._json(request, 200, body))

    def _request_args(self, request):
        return {k.decode("utf-8", "surrogateescape"): [v.decode("utf-8", "surrogateescape")
                                                          for v in vs]
                for k, vs in (request.args or {}).items()}

    def series(self, request, tenant):
        return self._read_api_json(request, tenant, "series", self._request_args(request))

    def labels(self, request, tenant):
        return self._read_api_json(request, tenant, "labels", self._request_args(request))

    def label_values(self, request, tenant, name):
        if isinstance(name, bytes):
            name = name.decode("utf-8", "surrogateescape")
        valid = _LEGACY_LABEL.match(name) is not None
        if name.startswith("U__"):      # Prometheus 3 escapes UTF-8 names in the path this way
            name = _unescape_utf8_name(name)
            valid = name != "" and A.is_valid_utf8(name)
        if not valid:
            raise ParamError("invalid label name: %s" % A.go_quote(name))
        args = self._request_args(request)
        args[LABEL_NAME_ARG] = [name]
        return self._read_api_json(request, tenant, "label_values", args)

    def metadata(self, request, tenant):
        limit = limit_per_metric = -1
        s = self._arg(request, "limit")
        if s != "":
            try:
                limit = go_atoi(s)
            except ValueError:
                raise ParamError("limit must be a number") from None
        s = self._arg(request, "limit_per_metric")
        if s != "":
            try:
                limit_per_metric = go_atoi(s)
            except ValueError:
                raise ParamError("limit_per_metric must be a number") from None
        metric = self._arg(request, "metric")

        def done(md):
            body = "{" + ",".join("%s:[%s]" % (R.json_string(name), ",".join(
                '{"type":%s,"help":%s,"unit":%s}' % (R.json_string(e["type"]), R.json_string(e["help"]),
                                                      R.json_string(e["unit"])) for e in entries))
                for name, entries in md.items()) + "}"
            return self._ok(request, body)
        return self.querier.metadata(tenant, limit, limit_per_metric, metric).addCallback(done)

    def query_exemplars(self, request, tenant):
        start = self._time(request, "start", MIN_TIME_MS)
        end = self._time(request, "end", MAX_TIME_MS)
        if end < start:
            raise invalid_param("end", "end timestamp must not be before start timestamp")
        d = self.offload.run(self.pool, lambda text: extract_selectors(parse_query(text)),
                             self._arg(request, "query"))

        def done(result):
            from urdar.engine.labels import decode_labels
            items = []
            for key, exs in result:
                items.append('{"seriesLabels":%s,"exemplars":[%s]}' % (
                    R.labels_json(decode_labels(key)), ",".join(
                        '{"labels":%s,"value":"%s","timestamp":%s}' % (
                            R.labels_json(decode_labels(lk) if lk else ()), R.format_value(v),
                            R.format_timestamp(t)) for t, v, lk in exs)))
            return R.envelope("[" + ",".join(items) + "]")

        def fetch(selectors):
            if not selectors:
                return R.envelope(None)
            d = self.querier.exemplars(tenant, selectors, start, end)
            return d.addCallback(lambda result: self.offload.run(self.pool, done, result))
        d.addCallback(fetch)
        return d.addCallback(lambda body: self._json(request, 200, body))

    # ---- remote read ---------------------------------------------------------------------------

    def remote_read(self, request, tenant):
        body = request.content.read() if request.content is not None else b""
        rtype = []

        def read(decoded):
            queries, rt = decoded
            rtype.append(rt)

            def encode(results):
                if rt == RR.SAMPLES:
                    return bytes(cramjam.snappy.compress_raw(RR.encode_read_response(results)))
                return b"".join(f for i, series in enumerate(results)
                                for f in RR.chunked_frames(i, series))
            return self.querier.remote_read(tenant, queries, encode)

        def send(payload):
            request.setResponseCode(200)
            if rtype[0] == RR.SAMPLES:
                request.setHeader(b"Content-Type", b"application/x-protobuf")
                request.setHeader(b"Content-Encoding", b"snappy")
            else:
                request.setHeader(b"Content-Type", STREAMED_CONTENT_TYPE)
            request.setHeader(b"Content-Length", b"%d" % len(payload))
            return payload

        d = self.offload.run(self.pool, decode_remote_read, body)
        return d.addCallback(read).addCallback(send)

    # ---- cardinality (Mimir) ---------------------------------------------------------------------

    def cardinality_label_names(self, request, tenant):
        return self._read_api_json(request, tenant, "cardinality_label_names",
                                   self._request_args(request))

    def cardinality_label_values(self, request, tenant):
        return self._read_api_json(request, tenant, "cardinality_label_values",
                                   self._request_args(request))

    def cardinality_active_series(self, request, tenant):
        """Mimir's active series API: {"data":[{label: value}...]} of the tenant's in-memory
        series matching the required `selector`, under the cardinality analysis gate."""
        return self._read_api_json(request, tenant, "cardinality_active_series",
                                   self._request_args(request))


# ---- the read APIs a querier runs for the query-frontend -----------------------------------------
# Label names and values, series and Mimir's cardinality APIs over the request's parameters
# (name -> [values]), so that the query-frontend can validate and key them (read_api_key) and
# any querier, this process' or a remote one (handlers/scheduler.QuerierExecutor), run them
# (run_read_api) with the same parsing, limits and rendering.

LABEL_NAME_ARG = "{name}"      # label_values' path parameter among the args (no query parameter)
READ_APIS = ("series", "labels", "label_values", "cardinality_label_names",
             "cardinality_label_values", "cardinality_active_series")


def _arg(args, name):
    vals = args.get(name) or ()
    return vals[0] if vals else ""


def _time_arg(args, name, default):
    s = _arg(args, name)
    if s == "":
        return default
    try:
        return parse_time(s)
    except ValueError as exc:
        raise invalid_param(name, "Invalid time value for '%s': %s" % (name, exc)) from None


def _labels_params(args):
    """(start, end, matcher sets, limit) of a labels, label values or series request."""
    limit = parse_limit(_arg(args, "limit"))
    start = _time_arg(args, "start", MIN_TIME_MS)
    end = _time_arg(args, "end", MAX_TIME_MS)
    return start, end, parse_matcher_sets(args.get("match[]", ())), limit


def _cardinality_selector(args, required=False):
    sel = args.get("selector") or []
    if required and not sel:
        raise ValueError("missing 'selector' parameter")
    if len(sel) > 1:
        raise ValueError("multiple 'selector' params are not allowed")
    if not sel:
        return []
    try:
        return parse_metric_selector(sel[0])
    except ParseError as exc:
        raise ValueError("failed to parse selector: %s" % exc) from None


def _cardinality_params(kind, args):
    """Mimir's cardinality request parameters: (matchers, limit, label names, count method);
    ValueError with Mimir's text when one is bad."""
    names = []
    if kind == "cardinality_label_values":
        names = args.get("label_names[]") or []
        if not names:
            raise ValueError("'label_names[]' param is required")
        for n in names:
            if not _LEGACY_LABEL.match(n):
                raise ValueError("invalid 'label_names' param '%s'" % n)
        names = sorted(set(names))
    if kind == "cardinality_active_series":
        return _cardinality_selector(args, required=True), 0, names, ""
    matchers = _cardinality_selector(args)
    lim = args.get("limit") or []
    limit = 20
    if len(lim) > 1:
        raise ValueError("multiple 'limit' params are not allowed")
    if lim:
        limit = go_atoi(lim[0])
        if limit < 0:
            raise ValueError("'limit' param cannot be less than '0'")
        if limit > 500:
            raise ValueError("'limit' param cannot be greater than '500'")
    cm = args.get("count_method") or []
    if cm and cm[0] not in ("active", "inmemory"):
        raise ValueError("invalid 'count_method' param '%s'. valid options are: [active,inmemory]"
                         % cm[0])
    return matchers, limit, names, cm[0] if cm else "inmemory"


def _cardinality_checked(kind, args):
    try:
        return _cardinality_params(kind, args)
    except ValueError as exc:
        raise E.ComponentError(E.BAD_DATA, str(exc)) from None


def _matchers_text(matchers):
    """Matchers in a stable order (name, kind, value), so the same selector written in another
    order shares a cache entry."""
    return ",".join(str(m) for m in sorted(matchers, key=lambda m: (m.name, m.kind, m.value)))


TWO_HOURS_MS = 2 * 3600 * 1000


def labels_cache_text(start, end, name, matcher_sets, limit):
    """Mimir's key text of a label names/values request: start and end widened to 2h block
    boundaries (label names and values are read per block, so nothing finer matters;
    unbounded ends stay as they are), the label name, the sorted matcher sets, the limit."""
    if start != MIN_TIME_MS:
        start -= start % TWO_HOURS_MS
    if end != MAX_TIME_MS and end % TWO_HOURS_MS:
        end += TWO_HOURS_MS - end % TWO_HOURS_MS
    parts = ["%d" % start, "%d" % end]
    if name:
        parts.append(name)
    parts.append(";".join(sorted(_matchers_text(ms) for ms in matcher_sets)))
    if limit > 0:
        parts.append("%d" % limit)
    return "\x00".join(parts)


def read_api_key(kind, args):
    """Pool: validate a read API request (its 4xx raised here, before any querier sees it) and
    return its results-cache key text (None: not cacheable; Mimir caches no series requests)."""
    if kind in ("series", "labels", "label_values"):
        if kind == "series" and not args.get("match[]"):
            raise ParamError("no match[] parameter provided")
        start, end, sets, limit = _labels_params(args)
        if kind == "series":
            return None
        return labels_cache_text(start, end, _arg(args, LABEL_NAME_ARG), sets, limit)
    if kind not in READ_APIS:
        raise E.ComponentError(E.BAD_DATA, "unknown read request %r" % (kind,))
    matchers, limit, names, method = _cardinality_checked(kind, args)
    return "\x00".join((_matchers_text(matchers), "%d" % limit, ",".join(names), method))


def run_read_api(querier, offload, pool, tenant, kind, args):
    """Deferred[the success body] of a read API request on `querier` (components/querier.py)."""
    if kind in ("series", "labels", "label_values"):
        if kind == "series" and not args.get("match[]"):
            raise ParamError("no match[] parameter provided")
        limit = parse_limit(_arg(args, "limit"))
        start = _time_arg(args, "start", MIN_TIME_MS)
        end = _time_arg(args, "end", MAX_TIME_MS)
        d = offload.run(pool, parse_matcher_sets, args.get("match[]", ()))
        if kind == "series":
            return d.addCallback(lambda sets: querier.series(tenant, sets, start, end, limit,
                                                             render=_render_series))
        if kind == "labels":
            d.addCallback(lambda sets: querier.label_names(tenant, sets, start, end, limit))
        else:
            name = _arg(args, LABEL_NAME_ARG)
            d.addCallback(lambda sets: querier.label_values(tenant, name, sets, start, end, limit))
        return d.addCallback(lambda values: offload.run(pool, _render_strings, values, limit))
    if kind not in READ_APIS:
        raise E.ComponentError(E.BAD_DATA, "unknown read request %r" % (kind,))
    if not querier.cardinality_enabled(tenant):
        raise E.ComponentError(E.BAD_DATA, "cardinality analysis is disabled for the tenant: %s"
                               % tenant)
    matchers, limit, names, _ = _cardinality_checked(kind, args)
    if kind == "cardinality_active_series":
        return querier.active_series(tenant, matchers, _render_active_series)
    if kind == "cardinality_label_names":
        d = querier.label_names_cardinality(tenant, matchers, limit)
    else:
        d = querier.label_values_cardinality(tenant, names, matchers, limit)
    return d.addCallback(_plain_json)


# ---- pool-thread bodies ---------------------------------------------------------------------------

def _render_active_series(label_sets, max_bytes):
    """{"data":[...]} bytes; TOO_LARGE (413, Mimir's text) past max_bytes."""
    out, size = [], 11
    for lbls in label_sets:
        item = R.labels_json(lbls)
        size += len(item) + 1
        if max_bytes and size > max_bytes:
            raise E.ComponentError(E.TOO_LARGE, "response too large: try increasing the "
                                   "requested shard count")
        out.append(item)
    return ('{"data":[' + ",".join(out) + "]}").encode("utf-8")


def parse_query(text):
    """The tree of a `query` parameter; ParamError with Prometheus' text when it is bad."""
    try:
        return parse_expr(text)
    except ParseError as exc:
        raise invalid_param("query", exc) from None


def format_query_text(text):
    """The success envelope of format_query: Prometheus' prettified form of the query."""
    try:
        pretty = prettify(parse_query(text))
    except PrettyTooLarge as exc:
        raise invalid_param("query", exc) from None
    return R.envelope(R.json_string(pretty))


def parse_range_query(text):
    expr = parse_query(text)
    if expr.type() not in (A.SCALAR, A.VECTOR):
        raise invalid_param("query", "invalid expression type %s for range query, must be Scalar "
                            "or instant Vector" % A.go_quote(A.documented_type(expr.type())))
    return expr


def decode_remote_read(body):
    """(queries, response type) of a snappy ReadRequest body; ParamError (400) when malformed."""
    try:
        n = cramjam.snappy.decompress_raw_len(body)
        if n > REMOTE_READ_MAX_BYTES:
            raise ParamError("remote read request too large: %d bytes decompressed (limit %d)"
                             % (n, REMOTE_READ_MAX_BYTES))
        raw = bytes(cramjam.snappy.decompress_raw(body))
        queries, accepted = RR.decode_read_request(raw)
    except (RR.DecodeError, cramjam.DecompressionError, ValueError) as exc:
        raise ParamError("%s" % (exc,)) from None
    for t in accepted or [RR.SAMPLES]:
        if t in RR.RESPONSE_TYPE_NAMES:
            return queries, t
    raise ParamError((
        "server does not support any of the requested response types: [%s]; supported: "
        "map[SAMPLES:{} STREAMED_XOR_CHUNKS:{}]") % " ".join(
            RR.RESPONSE_TYPE_NAMES.get(t, str(t)) for t in accepted))


def _render_series(keys, truncated):
    from urdar.engine.labels import decode_labels
    return R.envelope(R.render_series([decode_labels(k) for k in keys]),
                      ["results truncated due to limit"] if truncated else ())


def _render_strings(values, limit):
    warnings = []
    if limit and len(values) > limit:
        values = values[:limit]
        warnings.append("results truncated due to limit")
    return R.envelope(R.render_strings(values), warnings)


# ---- helpers ------------------------------------------------------------------------------------

def _render_result(result):
    """Worker thread: a promql Result -> the success envelope bytes."""
    return R.envelope(R.render_result(result), getattr(result, "warnings", ()), getattr(result, "infos", ()))


_ENVELOPE_HEAD = b'{"status":"success","data":'


def _render_text_matrix(series, warnings, infos):
    """Worker thread: the success envelope of a range query whose series carry their points as
    rendered JSON text (components/frontend.py's cached form): render_matrix's bytes, built as
    bytes with one final join, so the points' text (most of a cached answer) is copied once. A
    series' text may be a list of pieces (frontend.merge_windows(lazy=True)), joined here."""
    tail = R.envelope("null", warnings, infos)
    assert tail.startswith(_ENVELOPE_HEAD + b"null")
    out = [_ENVELOPE_HEAD, b'{"resultType":"matrix","result":[']
    hists = {lbl[:-1]: text for lbl, _ts, text, _offs in series
             if lbl and lbl[-1] == HISTOGRAMS_LABEL}
    first = True
    admit = R.memo_admits(series)
    if not hists:
        for lbl, _ts, text, _offs in series:
            out.append(b'{"metric":' if first else b',{"metric":')
            out.append(R.labels_json_bytes(lbl, admit))
            out.append(b',"values":[')
            if type(text) is list:
                out += text
            else:
                out.append(text)
            out.append(b"]}")
            first = False
    else:
        # Native histograms ride as second series (components/frontend.py from_matrix).
        floats = {lbl: text for lbl, _ts, text, _offs in series
                  if not (lbl and lbl[-1] == HISTOGRAMS_LABEL)}
        for lbl in sorted(set(floats) | set(hists)):
            out.append(b'{"metric":' if first else b',{"metric":')
            out.append(R.labels_json_bytes(lbl, admit))
            for key, texts in ((b',"values":[', floats), (b',"histograms":[', hists)):
                if lbl in texts:
                    text = texts[lbl]
                    out.append(key)
                    out += text if type(text) is list else (text,)
                    out.append(b"]")
            out.append(b"}")
            first = False
    out.append(b"]}")
    out.append(tail[len(_ENVELOPE_HEAD) + 4:])
    return b"".join(out)


def _plain_json(obj):
    import json
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).translate(
        R._HTML_ESCAPES).encode("utf-8")


def _unescape_utf8_name(name):
    """Prometheus 3's U__ label-name escaping in URL paths: `_` is `_`, `_XX_` a code point in hex."""
    out, i, s = [], 0, name[3:]
    while i < len(s):
        if s[i] == "_" and i + 1 < len(s) and s[i + 1] == "_":
            out.append("_")
            i += 2
        elif s[i] == "_":
            j = s.find("_", i + 1)
            if j < 0:
                return name
            try:
                out.append(chr(int(s[i + 1:j], 16)))
            except ValueError:
                return name
            i = j + 1
        else:
            out.append(s[i])
            i += 1
    return "".join(out)
