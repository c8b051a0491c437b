"""HTTP endpoints of the ingester: /ingester/flush and /ingester/shutdown (GET or POST, as Mimir).

flush cuts the heads of the `tenant=` tenants (repeatable; none = all) into blocks, in the
background unless `wait=true`; shutdown flushes everything, stops the ingester (so /ready turns
503; pushes 503 from the moment it starts) and leaves terminating the process to the operator's
SIGTERM. Both answer 204. With a ring (`ring=` the ingester's RingLifecycler) shutdown marks it
LEAVING first and removes it from the ring once stopped, even with
-ingester.ring.unregister-on-shutdown=false (Mimir: the endpoint is for scaling down)."""
import logging
from typing import TYPE_CHECKING

from urdar.handlers.render import json_object_body
from urdar.handlers.routes import route

if TYPE_CHECKING:
    from urdar.components.ingester import Ingester

log = logging.getLogger("urdar.handlers.ingester")


class IngesterHandlers:
    ROUTES = (
        route("/ingester/flush", ("GET", "POST"), "flush"),
        route("/ingester/shutdown", ("GET", "POST"), "shutdown"),
    )

    def __init__(self, ingester: "Ingester", ring=None) -> None:
        self.ingester = ingester
        self.ring = ring

    @staticmethod
    def _no_content(request):
        request.setResponseCode(204)
        return b""

    def flush(self, request):
        tenants = [t.decode("utf-8", "replace") for t in request.args.get(b"tenant", [])]
        wait = (request.args.get(b"wait", [b""])[0]).lower() == b"true"
        d = self.ingester.flush(tenants or None)
        if wait:
            return d.addCallback(lambda _: self._no_content(request))
        d.addErrback(lambda f: log.error("flush failed: %s", f.getErrorMessage()))
        return self._no_content(request)

    def shutdown(self, request):
        # LEAVING first (distributors stop picking it), then the ingester refuses pushes (503)
        # while it flushes every head and ships the blocks, closes, and leaves the ring even
        # with -ingester.ring.unregister-on-shutdown=false, as Mimir documents for this endpoint.
        if self.ring is not None:
            self.ring.set_state("LEAVING")
        d = self.ingester.stop(flush=True)
        if self.ring is not None:
            d.addBoth(lambda _: self.ring.leave(remove_entry=True))
        return d.addBoth(lambda _: self._no_content(request))


class IngesterClientHandlers:
    """The internal endpoints distributors and queriers of other processes reach this ingester
    by (components/ingester_remote.py documents the encodings). Decoding and encoding run in the
    offload pools: "decode" for pushes, "query" for reads (through a LocalIngesterClient)."""
    ROUTES = tuple(route("/ingester/client/" + op, ("POST",), op, tenant=True) for op in (
        "push", "select", "label_names", "label_values", "exemplars", "metadata", "head_series",
        "user_stats"))

    def __init__(self, ingester: "Ingester", offload, max_push_bytes: int = 100 << 20) -> None:
        from urdar.components.ingester_client import LocalIngesterClient
        self.ingester = ingester
        self.offload = offload
        self.local = LocalIngesterClient(ingester, offload)
        self.max_push_bytes = max_push_bytes

    @staticmethod
    def _binary(request, body, content_type=b"application/octet-stream"):
        request.setHeader(b"Content-Type", content_type)
        return body

    _doc = staticmethod(json_object_body)

    def push(self, request, tenant):
        from urdar.components import ingester_remote as R
        body = request.content.read()
        d = self.offload.run("decode", R.decode_push, body, self.max_push_bytes)
        d.addCallback(lambda batch: self.ingester.push(tenant, batch))
        return d.addCallback(lambda res: self._binary(request, R.encode_push_result(res)))

    def select(self, request, tenant):
        from urdar.components import ingester_remote as R
        doc = self._doc(request)
        d = self.local.select(tenant, R.decode_matchers(doc.get("matchers", ())), R.decode_hints(doc))
        d.addCallback(lambda series: self.offload.run("query", R.encode_series, series))
        return d.addCallback(lambda body: self._binary(request, body))

    def _json(self, request, d, encode=None):
        import json
        enc = encode or (lambda v: json.dumps(v).encode())
        return d.addCallback(lambda v: self._binary(request, enc(v), b"application/json"))

    def label_names(self, request, tenant):
        from urdar.components import ingester_remote as R
        doc = self._doc(request)
        return self._json(request, self.local.label_names(
            tenant, R.decode_matchers(doc.get("matchers", ())), R.decode_hints(doc)))

    def label_values(self, request, tenant):
        from urdar.components import ingester_remote as R
        doc = self._doc(request)
        return self._json(request, self.local.label_values(
            tenant, str(doc.get("name", "")), R.decode_matchers(doc.get("matchers", ())),
            R.decode_hints(doc)))

    def exemplars(self, request, tenant):
        from urdar.components import ingester_remote as R
        doc = self._doc(request)
        try:
            mint, maxt = int(doc["mint"]), int(doc["maxt"])
        except (KeyError, TypeError, ValueError):
            mint, maxt = -(2 ** 63), 2 ** 63 - 1
        return self._json(request, self.local.exemplars(
            tenant, R.decode_matchers(doc.get("matchers", ())), mint, maxt), R.encode_exemplars)

    def metadata(self, request, tenant):
        from urdar.components import ingester_remote as R
        return self._json(request, self.local.metadata(tenant), R.encode_metadata)

    def head_series(self, request, tenant):
        from urdar.components import ingester_remote as R
        doc = self._doc(request)
        d = self.local.head_series(tenant, R.decode_matchers(doc.get("matchers", ())))
        d.addCallback(lambda res: self.offload.run("query", R.encode_head_series, res[0], res[1]))
        return d.addCallback(lambda body: self._binary(request, body))

    def user_stats(self, request, tenant):
        return self._json(request, self.ingester.user_stats(tenant))
