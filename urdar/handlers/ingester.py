"""HTTP endpoints of the ingester: /ingester/flush and /ingester/shutdown (GET or POST, as Mimir).

flush cuts the heads of the `tenant=` tenants (repeatable; none = all) into blocks, in the
background unless `wait=true`; shutdown flushes everything, stops the ingester (so /ready turns
503; pushes 503 from the moment it starts) and leaves terminating the process to the operator's
SIGTERM. Both answer 204. With a ring (`ring=` the ingester's RingLifecycler) shutdown marks it
LEAVING first and removes it from the ring once stopped, even with
-ingester.ring.unregister-on-shutdown=false (Mimir: the endpoint is for scaling down)."""
import logging
from typing import TYPE_CHECKING

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
