"""HTTP endpoints of the distributor: remote write and tenant ingestion stats.

The push handler only resolves the tenant, enforces the body size on the bytes received, checks
the protocol headers and hands the raw body to components/distributor.py; decoding happens off the
reactor there. Success is an empty 200 (as Mimir); failures are Mimir's plain-text messages with
the status from handlers/errors.py (400 partial/bad data, 413, 415, 429, 503, 500)."""
from urdar.components import errors as E
from urdar.handlers.errors import fail_json, fail_text, json_response, text_response
from urdar.net.tenant import TenantError

RW2_PROTO = b"io.prometheus.write.v2.Request"


def _header(request, name):
    v = request.getHeader(name)
    return v.decode("latin-1") if isinstance(v, bytes) else v


class DistributorHandlers:
    ROUTES = (
        ("/api/v1/push", ("POST",), "push"),
        ("/api/v1/user_stats", ("GET",), "user_stats"),
        ("/distributor/all_user_stats", ("GET",), "all_user_stats"),
    )

    def __init__(self, distributor, tenancy, skip_label_name_validation_header_enabled=False):
        self.distributor = distributor
        self.tenancy = tenancy
        self.skip_header_enabled = skip_label_name_validation_header_enabled

    def push(self, request):
        try:
            tenant = self.tenancy.tenant_of(request)
        except TenantError as exc:
            return text_response(request, exc.status, exc.message)
        limit = self.distributor.max_recv_msg_size
        if getattr(request, "body_too_large", False):
            size = max(request.body_length, limit + 1)
            return fail_text(request, self.distributor.too_large_error(size))
        ctype = (_header(request, "Content-Type") or "").lower()
        if "proto=" in ctype:
            proto = ctype.split("proto=", 1)[1].split(";", 1)[0].strip().strip('"')
            if proto != "prometheus.writerequest":
                return fail_text(request, E.ComponentError(E.UNSUPPORTED, (
                    "remote write protobuf message %s is not supported yet; send remote write 1.0 "
                    "(prometheus.WriteRequest)" % proto) if proto == RW2_PROTO.decode().lower() else
                    "unknown remote write protobuf message %r" % proto))
        encoding = (_header(request, "Content-Encoding") or "snappy").strip().lower()
        if encoding not in ("snappy", ""):
            return fail_text(request, E.ComponentError(
                E.UNSUPPORTED, "unsupported Content-Encoding %r: remote write bodies are snappy "
                               "block-compressed" % encoding))
        body = request.content.read() if request.content is not None else b""
        if len(body) > limit:
            return fail_text(request, self.distributor.too_large_error(len(body)))
        skip = self.skip_header_enabled and \
            (_header(request, "X-Mimir-SkipLabelNameValidation") or "").lower() == "true"
        d = self.distributor.push(tenant, body, skip)

        def ok(_):
            request.setResponseCode(200)
            request.setHeader(b"Content-Length", b"0")
            return b""
        return d.addCallbacks(ok, lambda f: fail_text(request, f))

    def user_stats(self, request):
        try:
            tenant = self.tenancy.tenant_of(request)
        except TenantError as exc:
            return text_response(request, exc.status, exc.message)
        d = self.distributor.user_stats(tenant)
        return d.addCallbacks(lambda stats: json_response(request, 200, stats),
                              lambda f: fail_json(request, f))

    def all_user_stats(self, request):
        rows = []
        for tenant in self.distributor.tenants():
            rows.append("<tr><td>%s</td><td>%.2f</td></tr>" % (tenant, self.distributor.ingestion_rate(tenant)))
        body = ("<!DOCTYPE html><html><head><title>Tenants stats</title></head><body>"
                "<h1>Tenants stats</h1><table border=1><tr><th>Tenant</th><th>Ingestion rate "
                "(samples/s)</th></tr>%s</table></body></html>" % "".join(rows)).encode()
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return body
