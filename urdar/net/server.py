"""The HTTP server: one Klein app built from every handler's route table, served by a Twisted Site.

`build_app(handlers, instrument)` mounts plain ROUTES tables (path, methods, method name) on one
Klein app (the process itself mounts its routes through handlers/routes.py, which also resolves
tenants and renders errors); `Instrument` wraps every route to count requests in flight (graceful stop waits for
them), keep cortex_inflight_requests{method,route} and observe
cortex_request_duration_seconds{method,route,status_code,ws}. `HTTPServer`
listens on -server.http-listen-address/port ("" = all interfaces, IPv6 and IPv4 where possible)
and `stop()` stops listening, waits up to the graceful-shutdown timeout for in-flight requests,
then drops the rest. `LimitedRequest` stops buffering a body past the largest configured limit,
so an oversized push costs no more memory than the limit; handlers see `request.body_too_large`."""
import io
import logging
import re

from klein import Klein
from prometheus_client import Gauge, Histogram
from twisted.internet import defer, error
from twisted.web import server

log = logging.getLogger("urdar.server")

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0)


def route_label(path):
    """Mimir-style route label for a URL pattern: /api/v1/push -> api_v1_push, / -> root."""
    s = re.sub(r"<(?:[^:>]*:)?([^>]+)>", r"\1", path).strip("/")
    s = re.sub(r"[^a-zA-Z0-9_]+", "_", s)
    return s or "root"


class Instrument:
    """Per-route wrapper: in-flight accounting and the request-duration histogram."""

    def __init__(self, clock, registry=None):
        self.clock = clock
        self.inflight = 0
        self._idle_waiters = []
        self.duration = None
        self.inflight_gauge = None
        if registry is not None:
            self.inflight_gauge = Gauge(
                "cortex_inflight_requests", "Requests being served now, by method and route.",
                ["method", "route"], registry=registry)
            self.duration = Histogram(
                "cortex_request_duration_seconds", "Time (in seconds) spent serving HTTP requests.",
                ["method", "route", "status_code", "ws"], registry=registry, buckets=DURATION_BUCKETS)

    def wrap(self, route, fn):
        def wrapped(request, **kw):
            start = self.clock.seconds()
            self.inflight += 1
            gauge = None
            if self.inflight_gauge is not None:
                gauge = self.inflight_gauge.labels(request.method.decode("ascii", "replace"), route)
                gauge.inc()

            def finished(_):
                self.inflight -= 1
                if gauge is not None:
                    gauge.dec()
                if self.duration is not None:
                    self.duration.labels(request.method.decode("ascii", "replace"), route,
                                         str(request.code), "false").observe(
                        max(0.0, self.clock.seconds() - start))
                if not self.inflight:
                    waiters, self._idle_waiters = self._idle_waiters, []
                    for d in waiters:
                        if not d.called:     # a timed-out wait was cancelled already
                            d.callback(None)

            request.notifyFinish().addBoth(finished)
            return fn(request, **kw)
        return wrapped

    def wait_idle(self):
        """A Deferred that fires when no request is in flight."""
        if not self.inflight:
            return defer.succeed(None)
        d = defer.Deferred()
        self._idle_waiters.append(d)
        return d


def build_app(handlers, instrument=None):
    """One Klein app serving every handler's ROUTES table."""
    app = Klein()
    seen = {}
    for h in handlers:
        for path, methods, name in h.ROUTES:
            fn = getattr(h, name)
            key = (path, tuple(methods))
            if key in seen:
                raise ValueError("route %s %s registered by %s and %s" % (methods, path, seen[key], h))
            seen[key] = h
            label = route_label(path)
            endpoint = "%s.%s:%s" % (type(h).__name__, name, path)

            def call(request, __fn=fn, **kw):
                return __fn(request, **kw)
            if instrument is not None:
                call = instrument.wrap(label, call)
            call.__name__ = endpoint
            app.route(path, methods=list(methods), endpoint=endpoint, strict_slashes=False)(call)
    return app


class LimitedRequest(server.Request):
    """A Request that stops keeping body bytes after `max_body_bytes` (set on the Site)."""
    body_too_large = False
    body_length = 0

    def gotLength(self, length):
        limit = getattr(self.channel.site, "max_body_bytes", 0) if self.channel else 0
        if limit and length is not None and length > limit:
            # Do not even allocate the temp file: the handler answers 413 from Content-Length.
            self.body_too_large = True
            self.body_length = length
            server.Request.gotLength(self, 0)
            return
        # Twisted spools bodies of 100 kB or more (and chunked ones) to a temporary file; ours
        # are bounded by max_body_bytes and read whole right away, so keep them in memory: no
        # file writes and reads per push (ingest_bench: bodies of 2000 series are ~70-300 kB).
        self.content = io.BytesIO()

    def handleContentChunk(self, data):
        limit = getattr(self.channel.site, "max_body_bytes", 0) if self.channel else 0
        self.body_length += len(data)
        if self.body_too_large or (limit and self.body_length > limit):
            self.body_too_large = True
            return
        server.Request.handleContentChunk(self, data)


class QuietSite(server.Site):
    """A Site with our Request class and no per-request access log lines."""
    requestFactory = LimitedRequest
    noisy = False

    def __init__(self, resource, max_body_bytes=0, **kw):
        super().__init__(resource, **kw)
        self.max_body_bytes = max_body_bytes

    def log(self, request):
        pass


class HTTPServer:
    """Listens with a QuietSite on (address, port) and stops gracefully."""

    def __init__(self, reactor, resource, address, port, instrument, max_body_bytes=0,
                 graceful_timeout_s=30.0):
        self.reactor = reactor
        self.site = QuietSite(resource, max_body_bytes=max_body_bytes, reactor=reactor)
        self.address = address
        self.port = port
        self.instrument = instrument
        self.graceful_timeout_s = graceful_timeout_s
        self.listening = None

    def start(self):
        """Start listening; returns the bound port number (useful with port 0)."""
        if self.address:
            self.listening = self.reactor.listenTCP(self.port, self.site, interface=self.address)
        else:
            try:
                self.listening = self.reactor.listenTCP(self.port, self.site, interface="::")
            except error.CannotListenError:
                self.listening = self.reactor.listenTCP(self.port, self.site, interface="0.0.0.0")
        host = self.listening.getHost()
        log.info("HTTP server listening on %s:%d", host.host, host.port)
        return host.port

    def stop(self):
        """Stop accepting connections, then wait (bounded) for in-flight requests to finish."""
        d = defer.maybeDeferred(self.listening.stopListening) if self.listening else defer.succeed(None)
        self.listening = None

        def drain(_):
            if not self.instrument.inflight:
                return None
            log.info("waiting up to %.0fs for %d in-flight requests", self.graceful_timeout_s,
                     self.instrument.inflight)
            idle = self.instrument.wait_idle()
            idle.addTimeout(self.graceful_timeout_s, self.reactor, onTimeoutCancel=lambda r, t: None)
            return idle
        return d.addCallback(drain)
