"""HTTP pages of the store-gateway (Mimir's): GET /store-gateway/tenants lists the tenants with
blocks in the bucket, GET /store-gateway/tenant/{tenant}/blocks lists one tenant's blocks (ULID,
time range, size, compaction level, sources). HTML only; the data comes from the component."""
import datetime
import html
from typing import TYPE_CHECKING

from urdar.components import errors as E
from urdar.handlers.render import json_object_body
from urdar.handlers.routes import route
from urdar.net.tenant import TenantError, validate_tenant

if TYPE_CHECKING:
    from urdar.components.storegateway import StoreGateway

_PAGE = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>%s</title></head><body>"
         "<h1>%s</h1>%s</body></html>")


def _time(ms):
    try:
        return datetime.datetime.fromtimestamp(ms / 1000.0, datetime.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        return str(ms)


def _html(request, title, body):
    request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
    t = html.escape(title)
    return (_PAGE % (t, t, body)).encode("utf-8")


class StoreGatewayHandlers:
    ROUTES = (
        route("/store-gateway/tenants", ("GET",), "tenants"),
        # The tenant is a path argument of this status page, not the request's X-Scope-OrgID.
        route("/store-gateway/tenant/<tenant>/blocks", ("GET",), "tenant_blocks"),
    )

    def __init__(self, storegateway: "StoreGateway") -> None:
        self.storegateway = storegateway

    def tenants(self, request):
        def render(tenants):
            rows = "".join('<li><a href="tenant/%s/blocks">%s</a></li>'
                           % (html.escape(t, quote=True), html.escape(t)) for t in tenants)
            body = "<p>%d tenants with blocks in the bucket.</p><ul>%s</ul>" % (len(tenants), rows)
            return _html(request, "Store-gateway: tenants", body)
        return self.storegateway.list_tenants().addCallback(render)

    def tenant_blocks(self, request, tenant):
        try:
            validate_tenant(tenant)
        except TenantError as exc:
            raise E.ComponentError(E.BAD_DATA, "invalid tenant ID: %s" % exc.message) from None

        def render(_):
            rows = []
            for b in self.storegateway.blocks(tenant):
                rows.append("<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%d</td><td>%d</td>"
                            "<td>%s</td><td>%s</td></tr>" % (
                                html.escape(b.ulid), _time(b.mint), _time(b.maxt),
                                html.escape(str(datetime.timedelta(milliseconds=b.maxt - b.mint))
                                            if b.maxt > b.mint else ""),
                                b.size_bytes, b.level,
                                html.escape(" ".join(b.sources)),
                                html.escape(b.error or "")))
            body = ("<p>%d blocks.</p><table border=\"1\"><tr><th>Block ULID</th><th>Min time</th>"
                    "<th>Max time</th><th>Duration</th><th>Size (bytes)</th><th>Compaction level</th>"
                    "<th>Sources</th><th>Error</th></tr>%s</table>" % (len(rows), "".join(rows)))
            return _html(request, "Store-gateway: blocks of tenant %s" % tenant, body)
        return self.storegateway.sync_tenant(tenant).addCallback(render)


MAX_BLOCK_IDS = 100_000     # block IDs one internal request may name


class StoreGatewayClientHandlers:
    """The internal endpoints queriers of other processes read this store-gateway by (tenant in
    X-Scope-OrgID; bodies as components/ingester_remote.py's select/label_* plus "blocks", the
    ULIDs to read: every one must be loaded here, else 503 and the querier asks another replica).
    components/storegateway_remote.RemoteStoreGatewayClient is their client."""
    ROUTES = tuple(route("/store-gateway/client/" + op, ("POST",), op, tenant=True)
                   for op in ("select", "label_names", "label_values"))

    def __init__(self, storegateway: "StoreGateway", offload) -> None:
        from urdar.components.storegateway import StoreGatewayReader
        self.reader = StoreGatewayReader(storegateway)
        self.offload = offload

    def _doc(self, request):
        from urdar.components import ingester_remote as R
        doc = json_object_body(request)
        blocks = doc.get("blocks")
        if blocks is not None:
            if (not isinstance(blocks, list) or len(blocks) > MAX_BLOCK_IDS
                    or not all(isinstance(b, str) for b in blocks)):
                raise E.ComponentError(E.BAD_DATA, "bad request body: blocks must be a list of "
                                       "at most %d block IDs" % MAX_BLOCK_IDS)
            blocks = frozenset(blocks)
        return R.decode_matchers(doc.get("matchers", ())), R.decode_hints(doc), blocks, doc

    @staticmethod
    def _answer(request, body, content_type):
        request.setHeader(b"Content-Type", content_type)
        return body

    def select(self, request, tenant):
        from urdar.components import ingester_remote as R
        matchers, hints, blocks, _ = self._doc(request)
        d = self.reader.select(tenant, matchers, hints, blocks)
        d.addCallback(lambda series: self.offload.run("storegateway", R.encode_series, series))
        return d.addCallback(self._answer_bytes, request)

    def _answer_bytes(self, body, request):
        return self._answer(request, body, b"application/octet-stream")

    def _answer_json(self, value, request):
        import json
        return self._answer(request, json.dumps(value).encode(), b"application/json")

    def label_names(self, request, tenant):
        matchers, hints, blocks, _ = self._doc(request)
        return self.reader.label_names(tenant, matchers, hints, blocks).addCallback(
            self._answer_json, request)

    def label_values(self, request, tenant):
        matchers, hints, blocks, doc = self._doc(request)
        return self.reader.label_values(tenant, str(doc.get("name", "")), matchers, hints,
                                        blocks).addCallback(self._answer_json, request)
