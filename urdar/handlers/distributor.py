"""HTTP endpoints of the distributor: remote write, OTLP, tenant limits and ingestion stats.

The push handlers only resolve the tenant, enforce the body size on the bytes received, check the
protocol headers and hand the raw body to components/distributor.py; decompression and decoding
happen off the reactor there. Remote write: success is an empty 200 (as Mimir); failures are
Mimir's plain-text messages with the status from handlers/errors.py (400 partial/bad data, 413,
415, 429, 503, 500). OTLP: success is 200 with an ExportMetricsServiceResponse (partial_success
when points were refused), failures carry a google.rpc.Status body in the request's encoding.
The route table (handlers/routes.py) resolves the tenant and renders every failure."""
import html
import json
import random

from twisted.internet import defer

from urdar.components import errors as E
from urdar.handlers.errors import STATUS, json_response, text_style
from urdar.handlers.routes import route
from urdar.net.server import Refusal, Ticket
from urdar.net.tenant import TenantError

RW2_PROTO = b"io.prometheus.write.v2.Request"
OTLP_PROTOBUF = "application/x-protobuf"
OTLP_JSON = "application/json"
# gRPC status codes for the google.rpc.Status body of OTLP errors, by HTTP status.
GRPC_CODE = {400: 3, 413: 3, 415: 3, 401: 16, 429: 8, 499: 1, 503: 14, 500: 13}


def _written_headers(request, res):
    """Remote write 2.0's X-Prometheus-Remote-Write-*-Written headers of a PushResult (None:
    nothing written)."""
    from urdar.engine.outcomes import OK
    samples = res.outcomes.count(OK) if res is not None else 0
    histograms = res.histogram_outcomes.count(OK) if res is not None else 0
    exemplars = res.exemplars_kept if res is not None else 0
    for name, n in ((b"Samples", samples), (b"Histograms", histograms), (b"Exemplars", exemplars)):
        request.setHeader(b"X-Prometheus-Remote-Write-" + name + b"-Written", b"%d" % n)


def _header(request, name):
    v = request.getHeader(name)
    return v.decode("latin-1") if isinstance(v, bytes) else v


class DistributorHandlers:
    ROUTES = (
        route("/api/v1/push", ("POST",), "push", tenant=True, errors="push_error", direct=True),
        route("/otlp/v1/metrics", ("POST",), "otlp", tenant=True, errors="otlp_error", direct=True),
        route("/api/v1/user_limits", ("GET",), "user_limits", tenant=True),
        route("/api/v1/user_stats", ("GET",), "user_stats", tenant=True, errors="json"),
        route("/distributor/all_user_stats", ("GET",), "all_user_stats", errors="json"),
    )

    # Checks run when a push's headers are in, before its body is read (net/server.Admission);
    # `tenancy` is set by the route table when it mounts this handler.
    ADMIT = {"push": "admit_push", "otlp": "admit_otlp"}
    tenancy = None

    def __init__(self, distributor, skip_label_name_validation_header_enabled=False,
                 retry_after=(True, 6.0, 96.0), rng=None):
        self.distributor = distributor
        self.skip_header_enabled = skip_label_name_validation_header_enabled
        self.retry_after_enabled, self.retry_min_s, self.retry_max_s = retry_after
        self.rng = rng or random.Random()

    def _retry_after(self, request, body):
        """Add Retry-After to a 429/5xx push answer (Mimir: min*2^(attempt-1), capped, +-50%)."""
        if self.retry_after_enabled and (request.code == 429 or request.code >= 500):
            request.setHeader(b"Retry-After", retry_after_seconds(
                _header(request, "Retry-Attempt"), self.retry_min_s, self.retry_max_s, self.rng).encode())
        return body

    def push_error(self, request, status, err):
        """Push failures: Mimir's plain text, plus Retry-After on 429 and 5xx."""
        return self._retry_after(request, text_style(request, status, err))

    def otlp_error(self, request, status, err):
        """OTLP failures: a google.rpc.Status body in the request's encoding, plus Retry-After."""
        json_body = _otlp_media_type(request.requestHeaders) == OTLP_JSON
        return self._retry_after(request, _otlp_error(request, status, err.message, json_body))

    def admit_push(self, headers, length):
        """Tenant (401/400), Content-Length (413) and instance limits (503) before the body."""
        def text(status, message, extra=()):
            return Refusal(status, message, headers=extra)
        return self._admit(headers, length, self.distributor.max_recv_msg_size,
                           self.distributor.too_large_error, text)

    def admit_otlp(self, headers, length):
        """admit_push for OTLP: the refusals are google.rpc.Status bodies in the request's encoding."""
        json_body = _otlp_media_type(headers) == OTLP_JSON

        def status(code, message, extra=()):
            return Refusal(code, _status_body(GRPC_CODE.get(code, 2), message, json_body),
                           (OTLP_JSON if json_body else OTLP_PROTOBUF).encode(), extra)
        return self._admit(headers, length, self.distributor.max_otlp_request_size,
                           self.distributor.otlp_too_large_error, status)

    def _admit(self, headers, length, limit, too_large_error, refusal):
        try:
            self.tenancy.tenant_of_headers(headers)
        except TenantError as exc:
            return refusal(STATUS[exc.cause], exc.message)
        if length is not None and length > limit:
            return refusal(413, too_large_error(length).message)
        try:
            held = self.distributor.start_push(length or 0)
        except E.ComponentError as exc:
            return refusal(503, exc.message, self._retry_after_header(headers))

        def grow(n):
            try:
                held.grow(n)
            except E.ComponentError as exc:
                return refusal(503, exc.message, self._retry_after_header(headers))
            return None
        return Ticket(limit, lambda size: refusal(413, too_large_error(size).message), grow, held.release)

    def _retry_after_header(self, headers):
        if not self.retry_after_enabled:
            return ()
        attempt = (headers.getRawHeaders(b"Retry-Attempt") or [None])[0]
        return ((b"Retry-After", retry_after_seconds(
            attempt.decode("latin-1") if attempt else None, self.retry_min_s, self.retry_max_s,
            self.rng).encode()),)

    def _reserve(self, request, size):
        """The instance-limit reservation of a request that came without an admission ticket (one
        not served by our Site); released when the response is done."""
        if getattr(request, "ticket", None) is not None:
            return
        held = self.distributor.start_push(size)
        request.notifyFinish().addBoth(lambda _: held.release())

    def push(self, request, tenant):
        limit = self.distributor.max_recv_msg_size
        if getattr(request, "body_too_large", False):
            raise self.distributor.too_large_error(max(request.body_length, limit + 1))
        ctype = (_header(request, "Content-Type") or "").lower()
        v2 = False
        if "proto=" in ctype:
            proto = ctype.split("proto=", 1)[1].split(";", 1)[0].strip().strip('"')
            v2 = proto == RW2_PROTO.decode().lower()
            if proto != "prometheus.writerequest" and not v2:
                raise E.ComponentError(E.UNSUPPORTED, "unknown remote write protobuf message %s, "
                                       "supported: prometheus.WriteRequest, %s"
                                       % (proto, RW2_PROTO.decode()))
        encoding = (_header(request, "Content-Encoding") or "snappy").strip().lower()
        if encoding not in ("snappy", ""):
            raise E.ComponentError(
                E.UNSUPPORTED, "unsupported Content-Encoding %r: remote write bodies are snappy "
                               "block-compressed" % encoding)
        body = request.content.read() if request.content is not None else b""
        if len(body) > limit:
            raise self.distributor.too_large_error(len(body))
        self._reserve(request, len(body))
        skip = self.skip_header_enabled and \
            (_header(request, "X-Mimir-SkipLabelNameValidation") or "").lower() == "true"
        d = self.distributor.push(tenant, body, skip, v2=v2)

        def ok(res):
            request.setResponseCode(200)
            request.setHeader(b"Content-Length", b"0")
            if v2:
                _written_headers(request, res)
            return b""

        def failed(f):
            if v2:      # as Prometheus' receiver: the written counts on every answer
                _written_headers(request, getattr(f.value, "result", None))
            return f
        return d.addCallbacks(ok, failed)

    def otlp(self, request, tenant):
        """POST /otlp/v1/metrics: OTLP/HTTP ExportMetricsServiceRequest (protobuf or JSON)."""
        ctype = _otlp_media_type(request.requestHeaders)
        json_body = ctype == OTLP_JSON
        if ctype not in (OTLP_PROTOBUF, OTLP_JSON):
            raise E.ComponentError(E.UNSUPPORTED, "unsupported content type: %s, supported: [%s, %s]"
                                   % (ctype or "(none)", OTLP_JSON, OTLP_PROTOBUF))
        encoding = (_header(request, "Content-Encoding") or "").strip().lower()
        if encoding not in ("", "identity", "gzip", "lz4", "zstd"):
            raise E.ComponentError(E.UNSUPPORTED, "unsupported compression: %s. Only \"gzip\", "
                                   "\"lz4\", \"zstd\" or no compression supported" % encoding)
        limit = self.distributor.max_otlp_request_size
        if getattr(request, "body_too_large", False):
            raise self.distributor.otlp_too_large_error(max(request.body_length, limit + 1))
        body = request.content.read() if request.content is not None else b""
        if len(body) > limit:
            raise self.distributor.otlp_too_large_error(len(body))
        self._reserve(request, len(body))
        d = self.distributor.push_otlp(tenant, body, encoding, json_body)

        def ok(res):
            from urdar.components.otlp import response_bytes
            out = response_bytes(res.rejected, res.message, json_body)
            request.setResponseCode(200)
            request.setHeader(b"Content-Type", (OTLP_JSON if json_body else OTLP_PROTOBUF).encode())
            request.setHeader(b"Content-Length", b"%d" % len(out))
            return out
        return d.addCallback(ok)

    def user_limits(self, request, tenant):
        """GET /api/v1/user_limits: the calling tenant's limits with Mimir's JSON field names."""
        return json_response(request, 200, user_limits_json(self.distributor.overrides.for_tenant(tenant)))

    def user_stats(self, request, tenant):
        d = self.distributor.user_stats(tenant)
        return d.addCallback(lambda stats: json_response(request, 200, stats))

    def all_user_stats(self, request):
        tenants = list(self.distributor.tenants())
        d = defer.gatherResults([self.distributor.user_stats(t) for t in tenants], consumeErrors=True)

        def page(stats):
            rows = "".join(
                "<tr><td>%s</td><td>%d</td><td>%.2f</td></tr>" % (html.escape(t), s["numSeries"], s["ingestionRate"])
                for t, s in zip(tenants, stats))
            request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
            return ("<!DOCTYPE html><html><head><title>Tenants stats</title></head><body>"
                    "<h1>Tenants stats</h1><table border=1><tr><th>Tenant</th><th>Active series</th>"
                    "<th>Ingestion rate (samples/s)</th></tr>%s</table></body></html>" % rows).encode()
        return d.addCallback(page)


def retry_after_seconds(attempt_header, min_s, max_s, rng):
    """Retry-After value for a refused push: min_s * 2^(attempt-1) capped at max_s, then +-50%
    jitter (whole seconds), as Mimir computes it from the client's Retry-Attempt header."""
    try:
        attempt = int(attempt_header)
    except (TypeError, ValueError):
        attempt = 1
    attempt = max(1, min(attempt, 64))
    delay = min(max_s, min_s * 2.0 ** (attempt - 1))
    jitter = int(delay * 0.5)
    if jitter > 0:
        delay += rng.randrange(jitter * 2) - jitter
    return str(int(delay))


def user_limits_json(limits):
    """Mimir's UserLimitsResponse for one tenant; limits urdar does not have yet are 0 (= off)."""
    get = lambda key, default=0: getattr(limits, key, default)   # noqa: E731
    return {
        "compactor_blocks_retention_period_seconds": get("compactor_blocks_retention_period") // 1000,
        "ingestion_rate": float(get("ingestion_rate")),
        "ingestion_burst_size": int(get("ingestion_burst_size")),
        "ingestion_burst_factor": float(get("ingestion_burst_factor", 0.0)),
        "max_global_series_per_user": int(get("max_global_series_per_user")),
        "max_global_series_per_metric": int(get("max_global_series_per_metric")),
        "max_global_exemplars_per_user": int(get("max_global_exemplars_per_user")),
        "max_fetched_chunks_per_query": int(get("max_fetched_chunks_per_query")),
        "max_fetched_series_per_query": int(get("max_fetched_series_per_query")),
        "max_fetched_chunk_bytes_per_query": int(get("max_fetched_chunk_bytes_per_query")),
        "ruler_max_rules_per_rule_group": int(get("ruler_max_rules_per_rule_group")),
        "ruler_max_rule_groups_per_tenant": int(get("ruler_max_rule_groups_per_tenant")),
    }


def _status_body(code, message, json_body):
    """google.rpc.Status {code = 1, message = 2}, as OTLP/HTTP error bodies are."""
    if json_body:
        return json.dumps({"code": code, "message": message}, separators=(",", ":")).encode()
    msg = message.encode("utf-8", "replace")
    out = bytearray(b"\x08")
    _uvarint(out, code)
    out += b"\x12"
    _uvarint(out, len(msg))
    return bytes(out + msg)


def _uvarint(out, n):
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _otlp_error(request, status, message, json_body):
    body = _status_body(GRPC_CODE.get(status, 2), message, json_body)
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", (OTLP_JSON if json_body else OTLP_PROTOBUF).encode())
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def _otlp_media_type(headers):
    """The Content-Type's media type, lower-cased without parameters (the last header, as
    request.getHeader), for the handler and its header-time check alike."""
    ctype = (headers.getRawHeaders(b"Content-Type") or [b""])[-1]
    return ctype.decode("latin-1").split(";", 1)[0].strip().lower()
