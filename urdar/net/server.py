"""The HTTP server: one Klein app built from every handler's route table, served by a Twisted Site.

`build_app(handlers, instrument)` mounts plain ROUTES tables (path, methods, method name) on one
Klein app (the process itself mounts its routes through handlers/routes.py, which also resolves
tenants and renders errors); `Instrument` wraps every route to count requests in flight (graceful stop waits for
them), keep cortex_inflight_requests{method,route} and observe
cortex_request_duration_seconds{method,route,status_code,ws}. `HTTPServer`
listens on -server.http-listen-address/port ("" = all interfaces, IPv6 and IPv4 where possible)
and `stop()` stops listening, waits up to the graceful-shutdown timeout for in-flight requests,
then drops the rest. Bodies are vetted before they are read: `GuardedChannel` asks the
`Admission` (404/405 for unknown routes, then the route's ADMIT check: tenant, Content-Length,
instance limits) when the headers are complete and answers refusals without reading the body;
`LimitedRequest` never keeps more than the request's limit in memory; slow clients are dropped
after -server.http-server-read-timeout, idle ones after -server.http-server-idle-timeout; at
-server.http-conn-limit open connections the server stops accepting until one closes.

Per request, the channel parses a head that arrived whole in one pass (twisted's line-by-line
parse takes the rest) and writes answers to the socket at once when nothing is queued; push
routes skip the router (Admission.direct)."""
import io
import logging
import re
import time
from typing import Any
from urllib.parse import unquote_to_bytes as unquote

from klein import Klein
from prometheus_client import Gauge, Histogram
from twisted.internet import defer, error
from twisted.python import failure
from twisted.protocols import basic
from twisted.web import http, server
from twisted.web.http_headers import Headers, InvalidHeaderName
from twisted.web.http_headers import _nameEncoder as _name_encoder
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import RoutingException

# twisted.web.http is a deprecated-module proxy whose every attribute read costs a Python call;
# the channel's per-line and per-chunk paths use the class directly.
_HTTPChannel = http.HTTPChannel
_LineReceiver = basic.LineReceiver
_parse_request_line = http._parseRequestLine
# header name as sent -> twisted's canonical spelling (bounded: names are client-chosen)
_CANONICAL: dict[bytes, bytes] = {}
_CANONICAL_MAX = 1024
_BODY_FRAMING = (b"Content-Length", b"Transfer-Encoding")
_SERVER = server.version
_POSTPATHS: dict[bytes, tuple[bytes, ...]] = {}
_datetime_to_string = http.datetimeToString
_date = [0, b""]      # [second, its Date header value]: formatted once a second, not per answer


def _http_date():
    now = int(time.time())
    if now != _date[0]:
        _date[1] = _datetime_to_string(now)
        _date[0] = now
    return _date[1]


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
        # labels() costs a lock and a tuple hash per call; the children are few (routes x
        # methods x status codes), so keep them
        self._gauges = {}
        self._durations = {}
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
                gauge = self._gauges.get((request.method, route))
                if gauge is None:
                    gauge = self._gauges[(request.method, route)] = self.inflight_gauge.labels(
                        request.method.decode("ascii", "replace"), route)
                gauge.inc()

            def finished(_):
                self.inflight -= 1
                if gauge is not None:
                    gauge.dec()
                if self.duration is not None:
                    key = (request.method, route, request.code)
                    hist = self._durations.get(key)
                    if hist is None:
                        hist = self._durations[key] = self.duration.labels(
                            request.method.decode("ascii", "replace"), route, str(request.code), "false")
                    hist.observe(max(0.0, self.clock.seconds() - start))
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
    """One Klein app serving every handler's ROUTES table; `app.admission` vets request bodies
    before they are read, with the checks named in each handler's ADMIT table."""
    app = Klein()
    seen = {}
    checks = {}
    for h in handlers:
        admit = getattr(h, "ADMIT", {})
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
            if name in admit:
                checks[endpoint] = getattr(h, admit[name])
    app.admission = Admission(app.url_map, checks)
    return app


class Refusal:
    """An answer given as soon as the headers are in, before any body byte is read."""
    route = "other"

    def __init__(self, status, body, content_type=b"text/plain; charset=utf-8", headers=()):
        self.status = status
        self.body = body if isinstance(body, bytes) else (body.rstrip("\n") + "\n").encode("utf-8")
        self.content_type = content_type
        self.headers = tuple(headers)


class Ticket:
    """What an admitted request may read: `max_body_bytes` (0 = no limit) and, past it, the
    refusal `too_large(size)`; `grow(n)` charges n more body bytes to whatever reserved them
    (a Refusal when that would break a limit, else None); `release()` runs once when the request
    is over (finished, refused or the connection lost)."""

    def __init__(self, max_body_bytes=0, too_large=None, grow=None, release=None):
        self.max_body_bytes = max_body_bytes
        self._too_large = too_large
        self._grow = grow
        self._release = release

    def too_large(self, size):
        if self._too_large is not None:
            return self._too_large(size)
        return Refusal(413, "request body too large: %d bytes, the limit is %d bytes"
                       % (size, self.max_body_bytes))

    def grow(self, n):
        return self._grow(n) if self._grow is not None else None

    def release(self):
        release, self._release = self._release, None
        if release is not None:
            release()


class Admission:
    """Decides from the request line and headers alone whether a body may be read.

    Unknown paths get 404 and wrong methods 405 (as the router would say), then the route's own
    check runs: a handler may name, in its ADMIT table (route method name -> check method name),
    a `check(headers, length)` returning a Refusal (401 without a tenant, 413 from
    Content-Length, 503 at an instance limit) or a Ticket. Routes without a check get a Ticket
    with the server-wide body limit."""

    def __init__(self, url_map, checks, max_body_bytes=0):
        self.url_map = url_map
        self.checks = checks
        self.max_body_bytes = max_body_bytes
        # (method, raw path) -> fn(request) of routes served without the router (LimitedRequest
        # .process); filled by the route table for its hot, argument-free routes (pushes).
        self.direct = {}
        # (method, raw path) -> (endpoint, route) of those routes, the router's answer for them
        self._static = {}

    def add_direct(self, method, path, endpoint, fn):
        """Serve `method path` (a route without arguments, also registered with the router
        as `endpoint`) by calling fn(request) directly: no router match per request."""
        key = (method.encode("ascii"), path.encode("utf-8"))
        self.direct[key] = fn
        self._static[key] = (endpoint, route_label(path))

    def admit(self, method, uri, headers, length):
        """A Refusal, a Ticket, or None when the router must decide (redirects, odd paths)."""
        static = self._static.get((method, uri))
        if static is not None:
            return self._verdict(static[0], static[1], headers, length)
        path = _path_info(uri)
        if path is None:
            return None
        try:
            rule, _args = self.url_map.bind("localhost", path_info=path,
                                            default_method=method.decode("ascii")).match(return_rule=True)
        except NotFound:
            return _labelled(Refusal(404, "404 page not found"), "notfound")
        except MethodNotAllowed as exc:
            allow = ", ".join(sorted(exc.valid_methods or ())).encode("ascii")
            return _labelled(Refusal(405, "method not allowed", headers=((b"Allow", allow),)), "other")
        except (HTTPException, RoutingException, UnicodeDecodeError):
            return None
        return self._verdict(rule.endpoint, route_label(rule.rule), headers, length)

    def _verdict(self, endpoint, label, headers, length):
        check = self.checks.get(endpoint)
        verdict = check(headers, length) if check is not None else Ticket()
        if isinstance(verdict, Ticket):
            if not verdict.max_body_bytes:
                verdict.max_body_bytes = self.max_body_bytes
            if verdict.max_body_bytes and length is not None and length > verdict.max_body_bytes:
                verdict.release()
                verdict = verdict.too_large(length)
        if isinstance(verdict, Refusal):
            _labelled(verdict, label)
        return verdict


def _labelled(refusal, route):
    refusal.route = route       # the route label its cortex_request_duration_seconds sample gets
    return refusal


def _path_info(uri):
    """The decoded path Klein matches routes on (segments unquoted, as twisted.web splits them)."""
    path = uri.split(b"?", 1)[0]
    if not path.startswith(b"/"):
        return None
    try:
        return "/" + "/".join(unquote(seg).decode("utf-8") for seg in path[1:].split(b"/"))
    except UnicodeDecodeError:
        return None


class LimitedRequest(server.Request):
    """A Request that never keeps more body bytes than its limit.

    Behind a GuardedChannel the limit comes from the request's Ticket and going past it answers
    at once (413, connection closed); otherwise it is the Site's `max_body_bytes` and the rest of
    the body is dropped with `body_too_large` set for the handler to answer."""
    body_too_large = False
    body_length = 0
    ticket = None

    def _limit(self):
        if self.ticket is not None:
            return self.ticket.max_body_bytes
        return getattr(self.channel.site, "max_body_bytes", 0) if self.channel else 0

    def gotLength(self, length):
        limit = self._limit()
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
        if self.body_too_large:
            return
        limit = self._limit()
        self.body_length += len(data)
        refuse = getattr(self.channel, "refuse", None) if self.channel else None
        if limit and self.body_length > limit:
            self.body_too_large = True
            if refuse is not None and self.ticket is not None:
                refuse(self.ticket.too_large(self.body_length))
            return
        if self.ticket is not None and self.channel.length is None:
            # Chunked: nothing was reserved up front, so charge bytes as they arrive.
            refusal = self.ticket.grow(len(data))
            if refusal is not None:
                self.body_too_large = True
                refuse(refusal)
                return
        server.Request.handleContentChunk(self, data)

    def requestReceived(self, command, path, version):
        # twisted.web parses every POST's Content-Type with the email package (~0.1 ms) to see
        # whether the body is a form; only a type naming "form" can be one (the same header,
        # the first, is what twisted looks at).
        ctype = self.requestHeaders.getRawHeaders(b"Content-Type")
        if ctype and b"form" not in ctype[0].lower():
            self._parsePOSTFormSubmission = False
        server.Request.requestReceived(self, command, path, version)

    def process(self):
        """Routes the route table serves directly (Admission.direct: pushes) skip the router
        and Klein's per-request Deferred chain; everything else goes the usual way. The
        route's function is the same one Klein would call (instrumented, tenant resolved,
        errors rendered), and the answer is written as Klein writes it."""
        site = self.channel.site
        admission = getattr(site, "admission", None)
        fn = admission.direct.get((self.method, self.path)) if admission is not None else None
        if fn is None:
            return server.Request.process(self)
        self.site = site
        self.setHeader(b"Server", _SERVER)
        self.setHeader(b"Date", _http_date())
        self.prepath = []
        segments = _POSTPATHS.get(self.path)
        if segments is None:        # one entry per direct route: their paths are fixed
            segments = _POSTPATHS[self.path] = tuple(unquote(seg) for seg in self.path[1:].split(b"/"))
        self.postpath = list(segments)
        try:
            result = fn(self)
        except Exception:
            self.processingFailed(failure.Failure())
            return None
        if isinstance(result, defer.Deferred):
            result.addCallback(self._answer).addErrback(self._answer_failed)
        else:
            self._answer(result)
        return None

    def _answer(self, body):
        if self._disconnected or self.finished:
            return
        if isinstance(body, str):
            body = body.encode("utf-8")
        if isinstance(body, bytes):
            self.write(body)
        self.finish()

    def _answer_failed(self, f):
        if self._disconnected or self.finished:
            log.error("error after a request was over: %s", f.getTraceback())
            return
        self.processingFailed(f)

    def connectionLost(self, reason):
        self._release_ticket()
        server.Request.connectionLost(self, reason)

    def finish(self):
        self._release_ticket()
        return server.Request.finish(self)

    def _release_ticket(self):
        if self.ticket is not None:
            self.ticket.release()


class GuardedChannel(_HTTPChannel):
    """An HTTPChannel that admits bodies before reading them and bounds how long reading takes.

    When the headers of a request with a body are in, the Site's Admission decides; a Refusal is
    written straight away with `Connection: close`, the write side is shut and whatever the
    client still sends is discarded unread until it closes (or `LINGER_S` later, a reset), so the
    client sees the answer rather than a reset. A request must arrive whole (line, headers, body)
    within `read_timeout_s` of the accept (first request) or of its first byte (later ones) or
    the connection is dropped; idle keep-alive connections go after the Site's `timeout`
    (twisted.web's idle timer)."""
    LINGER_S = 1.0
    _host = None
    _refused = False
    _read_deadline = None
    _linger = None

    _peer = None

    def getHost(self):
        # twisted.web asks for every request (Request.__init__): one getsockname() per
        # connection is enough
        if self._host is None:
            self._host = _HTTPChannel.getHost(self)
        return self._host

    def getPeer(self):
        # likewise: one address object per connection, not one per request
        if self._peer is None:
            self._peer = _HTTPChannel.getPeer(self)
        return self._peer

    def connectionMade(self):
        _HTTPChannel.connectionMade(self)
        self._arm_read_deadline()      # the first request is due from accept on, as in Go
        opened = getattr(self.site, "connection_opened", None)
        if opened is not None:
            opened()

    def dataReceived(self, data):
        if self._refused:
            return      # an early answer was given: the rest of the body is never parsed
        if not self._handlingRequest:
            self._arm_read_deadline()
        self.resetTimeout()
        if (self.line_mode and not self._buffer and not self._busyReceiving
                and not self.paused and self._HTTPChannel__first_line == 1 and self.persistent):
            data = self._head_in_one_pass(data)
            if data is None:
                return
        _LineReceiver.dataReceived(self, data)

    def _head_in_one_pass(self, data):
        """A request's line and headers parsed in one pass when they arrived whole: the same
        state twisted's line-by-line parse (lineReceived, headerReceived) leaves, at a fraction
        of the calls. Returns the bytes after the header block for the usual path (body,
        pipelined requests), `data` untouched for that path to parse when anything is unusual
        (an incomplete or oversized block, folded lines, stray CR/LF/NUL, a malformed line:
        it gives the answers), or None when the request was answered already (a refusal)."""
        end = data.find(b"\r\n\r\n")
        if end <= 0 or end > self.totalHeadersSize:
            return data
        block = data[:end]
        lines = block.split(b"\r\n")
        n = len(lines) - 1
        if (n > self.maxHeaders or block.count(b"\n") != n or block.count(b"\r") != n
                or b"\x00" in block):
            return data
        try:
            command, path, version = _parse_request_line(lines[0])
        except ValueError:
            return data
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            canonical = _CANONICAL.get(name)
            if canonical is None or not colon:
                if not colon or line[:1] in b" \t":     # malformed, or folded onto the last
                    return data
                try:
                    canonical = _name_encoder.encode(name)
                except InvalidHeaderName:
                    return data
                if len(_CANONICAL) >= _CANONICAL_MAX:
                    _CANONICAL.clear()
                _CANONICAL[name] = canonical
            headers.append((canonical, value.strip(b" \t")))
        # From here on as lineReceived and headerReceived do it.
        request = self.requestFactory(self, len(self.requests))
        self.requests.append(request)
        self._HTTPChannel__first_line = 0
        self._command, self._path, self._version = command, path, version
        raw = request.requestHeaders._rawHeaders
        for name, value in headers:
            if name in _BODY_FRAMING and not self._maybeChooseTransferDecoder(name, value):
                return None     # answered 400, connection closing
            values = raw.get(name)
            if values is None:
                raw[name] = [value]
            else:
                values.append(value)
        self._receivedHeaderCount = n
        self._receivedHeaderSize = end - 2 * n
        self._busyReceiving = True      # data arriving meanwhile queues, as in LineReceiver
        try:
            self.allHeadersReceived()
            if self._refused or self.transport.disconnecting:
                return None
            if self.length == 0:
                self.allContentReceived()
            else:
                self.setRawMode()
        finally:
            self._busyReceiving = False
        rest = data[end + 4:]
        if self._buffer:
            rest, self._buffer = self._buffer + rest, b""
        return rest

    def writeHeaders(self, version, code, reason, headers):
        if not isinstance(headers, Headers):
            return _HTTPChannel.writeHeaders(self, version, code, reason, headers)
        out = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                out += (name, b": ", value, b"\r\n")
        out.append(b"\r\n")
        self._send(b"".join(out))
        return None

    def write(self, data):
        self._send(data)

    def writeSequence(self, iovec):
        self._send(b"".join(iovec))

    def _send(self, data):
        """Write `data` to the socket now when nothing is queued before it, the rest (or all
        of it, for other transports) through the transport's buffer. Twisted's transport would
        register for writability and send on the next reactor turn: two epoll_ctl calls and a
        turn per answer, where one send() usually takes all of a small answer."""
        t = self.transport
        sock = getattr(t, "socket", None)
        if (sock is not None and data and t.connected and not t.disconnecting
                and not t._writeDisconnected and not t.dataBuffer and not t._tempDataBuffer
                and not getattr(t, "TLS", True)):
            try:
                sent = sock.send(data)
            except OSError:
                sent = 0        # full (EAGAIN) or broken: the transport's own write takes it
            if sent == len(data):
                return
            data = data[sent:]
        t.write(data)

    def lineReceived(self, line):
        if self._read_deadline is None:
            self._arm_read_deadline()
        _HTTPChannel.lineReceived(self, line)

    def rawDataReceived(self, data):
        if not self._refused:
            _HTTPChannel.rawDataReceived(self, data)

    def allHeadersReceived(self):
        req = self.requests[-1]
        admission = getattr(self.site, "admission", None)
        if self.length != 0 and admission is not None:      # a body follows (None = chunked)
            try:
                verdict = admission.admit(self._command, self._path, req.requestHeaders, self.length)
            except Exception:
                # A broken check must not take the connection down unanswered or let the body in.
                log.exception("admission check failed for %r", self._path)
                verdict = Refusal(500, "internal error")
            if isinstance(verdict, Refusal):
                self.refuse(verdict)
                return
            req.ticket = verdict
        _HTTPChannel.allHeadersReceived(self)

    def allContentReceived(self):
        if self._refused:
            return
        self._cancel_read_deadline()
        _HTTPChannel.allContentReceived(self)

    def refuse(self, refusal):
        """Answer `refusal` now, stop parsing and close once the client has had the answer."""
        if self._refused:
            return
        self._refused = True
        self._cancel_read_deadline()
        self.setTimeout(None)
        for req in self.requests:
            if req.ticket is not None:
                req.ticket.release()
        lines = [b"HTTP/1.1 %d %s" % (refusal.status, http.RESPONSES.get(refusal.status, b"Error")),
                 b"Content-Type: " + refusal.content_type,
                 b"Content-Length: %d" % len(refusal.body),
                 b"X-Content-Type-Options: nosniff",
                 b"Connection: close"]
        lines += [b"%s: %s" % kv for kv in refusal.headers]
        instrument = getattr(self.site, "instrument", None)
        if instrument is not None and instrument.duration is not None:
            # Counted like any answered request; the body was never read, so it took no time.
            method = (getattr(self, "_command", None) or b"").decode("ascii", "replace")
            instrument.duration.labels(method, refusal.route, str(refusal.status), "false").observe(0.0)
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + refusal.body)
        lose_write = getattr(self.transport, "loseWriteConnection", None)
        if lose_write is not None:
            lose_write()
            self._linger = self.callLater(self.LINGER_S, self.transport.abortConnection)
        else:
            self.transport.loseConnection()

    def _arm_read_deadline(self):
        timeout_s = getattr(self.site, "read_timeout_s", 0)
        if timeout_s and self._read_deadline is None and not self._refused:
            self._read_deadline = self.callLater(timeout_s, self._read_timed_out)

    def _cancel_read_deadline(self):
        if self._read_deadline is not None:
            if self._read_deadline.active():
                self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self):
        self._read_deadline = None
        log.info("dropping a client that did not send its request within %.0fs: %s",
                 self.site.read_timeout_s, self.transport.getPeer())
        self.transport.abortConnection()

    def connectionLost(self, reason):
        self._cancel_read_deadline()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        _HTTPChannel.connectionLost(self, reason)
        closed = getattr(self.site, "connection_closed", None)
        if closed is not None:
            closed()


def quiet_connection_pool(reactor: Any, persistent: bool = True) -> Any:
    """An HTTPConnectionPool whose connection factories log nothing: twisted's default logs
    "Starting/Stopping factory" at info for every new connection, two lines per etcd request."""
    from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

    class QuietFactory(_HTTP11ClientFactory):
        noisy = False
    pool = HTTPConnectionPool(reactor, persistent=persistent)
    pool._factory = QuietFactory
    return pool


class QuietSite(server.Site):
    """A Site with our Request and channel classes and no per-request access log lines.

    `timeout` (twisted.web's) is the idle timeout of keep-alive connections; `read_timeout_s`
    bounds reading one request; `admission` (optional) vets bodies before they are read."""
    requestFactory = LimitedRequest
    protocol = GuardedChannel  # type: ignore[assignment]  # an HTTPChannel subclass; stubs want a factory
    noisy = False

    def __init__(self, resource, max_body_bytes=0, admission=None, read_timeout_s=0,
                 max_connections=0, instrument=None, **kw):
        super().__init__(resource, **kw)
        self.instrument = instrument
        self.max_body_bytes = max_body_bytes
        self.admission = admission
        self.read_timeout_s = read_timeout_s
        self.max_connections = max_connections
        self.connections = 0
        self.port = None            # the listening port, paused while at max_connections

    def connection_opened(self):
        self.connections += 1
        if self.max_connections and self.connections >= self.max_connections and self.port is not None:
            # Stop accepting: further clients wait in the kernel's backlog, as Go's LimitListener.
            self.port.stopReading()

    def connection_closed(self):
        self.connections -= 1
        if (self.max_connections and self.connections == self.max_connections - 1
                and self.port is not None):
            self.port.startReading()

    def log(self, request):
        pass


class HTTPServer:
    """Listens with a QuietSite on (address, port) and stops gracefully."""

    def __init__(self, reactor, resource, address, port, instrument, max_body_bytes=0,
                 graceful_timeout_s=30.0, admission=None, read_timeout_s=0, idle_timeout_s=None,
                 max_connections=0):
        self.reactor = reactor
        if admission is not None and not admission.max_body_bytes:
            admission.max_body_bytes = max_body_bytes
        kw = {"timeout": idle_timeout_s} if idle_timeout_s else {}
        self.site = QuietSite(resource, max_body_bytes=max_body_bytes, reactor=reactor,
                              instrument=instrument, admission=admission,
                              read_timeout_s=read_timeout_s, max_connections=max_connections, **kw)
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
        if hasattr(self.listening, "stopReading"):
            self.site.port = self.listening
        host = self.listening.getHost()
        log.info("HTTP server listening on %s:%d", host.host, host.port)
        return host.port

    def stop(self):
        """Stop accepting connections, then wait (bounded) for in-flight requests to finish."""
        d = defer.maybeDeferred(self.listening.stopListening) if self.listening else defer.succeed(None)
        self.listening = self.site.port = None

        def drain(_):
            if not self.instrument.inflight:
                return None
            log.info("waiting up to %.0fs for %d in-flight requests", self.graceful_timeout_s,
                     self.instrument.inflight)
            idle = self.instrument.wait_idle()
            idle.addTimeout(self.graceful_timeout_s, self.reactor, onTimeoutCancel=lambda r, t: None)
            return idle
        return d.addCallback(drain)
