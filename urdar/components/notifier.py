"""Alert notifications from the ruler to Alertmanagers: Prometheus' notifier as Mimir runs it (one
notifier per tenant, pkg/ruler/notifier.go), the client side only.

`send(tenant, alerts)` only appends. Every (tenant, Alertmanager) pair has its own bounded queue
(-ruler.notification-queue-capacity; when full the oldest alerts are dropped and counted) and its
own send loop, as Prometheus' per-Alertmanager send loops, so a hung or failing Alertmanager delays
no other Alertmanager and no other tenant. A loop POSTs batches of at most MAX_BATCH alerts as a
JSON array to <URL path>/api/v2/alerts with the tenant in X-Scope-OrgID, through treq over one
persistent connection pool. A batch failing with a connection error, a timeout, a 5xx or a 429 is
retried with doubling back-off while its -ruler.notification-timeout budget lasts (at most
MAX_ATTEMPTS tries), then dropped and counted; a 4xx is not retried. URLs follow Mimir: the URL's
path is the prefix, its userinfo is basic auth, and a `dns+` URL is resolved into one Alertmanager
per address every -ruler.alertmanager-refresh-interval (plain URLs are static; their host name is
resolved by each new connection). `stop()` drains the queues (Mimir's DrainOnShutdown) within one
timeout budget, then drops what is left."""
import base64
import json
import logging
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.internet import defer, task
from twisted.internet.interfaces import IResolutionReceiver
from zope.interface import implementer

from urdar.components.amreceivers import BodyHead
from urdar.components.options import ConfigError

log = logging.getLogger("urdar.notifier")

MAX_BATCH = 64                  # alerts per POST (Mimir's Prometheus notifier batch size)
MAX_ATTEMPTS = 5                # tries of one batch to one Alertmanager, within the timeout budget
FIRST_BACKOFF_S = 0.1           # wait before the first retry; doubles up to MAX_BACKOFF_S
MAX_BACKOFF_S = 2.0
API_PATH = "api/v2/alerts"
ALERT_KEYS = ("labels", "annotations", "startsAt", "endsAt", "generatorURL")

Resolver = Callable[[str, int], "defer.Deferred[list[str]]"]


@dataclass(frozen=True)
class NotifierConfig:
    """The ruler's notification options (Mimir's names), durations in seconds."""
    alertmanager_url: str = ""
    refresh_interval_s: float = 60.0
    queue_capacity: int = 10000
    timeout_s: float = 10.0
    basic_auth_username: str = ""
    basic_auth_password: str = ""

    @classmethod
    def from_config(cls, cfg: Any) -> "NotifierConfig":
        return cls(alertmanager_url=cfg["ruler.alertmanager_url"],
                   refresh_interval_s=cfg["ruler.alertmanager_refresh_interval"] / 1000.0,
                   queue_capacity=cfg["ruler.notification_queue_capacity"],
                   timeout_s=cfg["ruler.notification_timeout"] / 1000.0,
                   basic_auth_username=cfg["ruler.alertmanager_client.basic_auth_username"],
                   basic_auth_password=cfg["ruler.alertmanager_client.basic_auth_password"])


@dataclass(frozen=True)
class AlertmanagerURL:
    """One -ruler.alertmanager-url entry: scheme, host, port, path prefix, basic auth and
    whether the host is a `dns+` name to resolve into several Alertmanagers."""
    scheme: str
    host: str
    port: int
    prefix: str
    authorization: bytes | None
    resolve: bool

    def endpoint(self, host: str | None = None) -> str:
        """The POST URL at `host` (default: the configured one): <scheme>://<host>:<port><prefix>/api/v2/alerts."""
        h = host if host is not None else self.host
        if ":" in h:
            h = "[%s]" % h          # an IPv6 address
        path = "/".join(p for p in (self.prefix.strip("/"), API_PATH) if p)
        return "%s://%s:%d/%s" % (self.scheme, h, self.port, path)


def parse_alertmanager_urls(text: str, username: str = "", password: str = "") -> list[AlertmanagerURL]:
    """The comma-separated -ruler.alertmanager-url; ConfigError for what Mimir would refuse or
    urdar does not support. -ruler.alertmanager-client.basic-auth-* override URL userinfo."""
    out = []
    for raw in text.split(","):
        raw = raw.strip()
        if not raw:
            continue
        resolve = False
        if raw.startswith("dns+"):
            resolve, raw = True, raw[len("dns+"):]
        elif raw.startswith(("dnssrv+", "dnssrvnoa+")):
            raise ConfigError("invalid value for -ruler.alertmanager-url: %r: SRV discovery (dnssrv+, "
                              "dnssrvnoa+) is not supported; use dns+ or a static URL" % raw)
        try:
            u = urlsplit(raw)
            port = u.port
        except ValueError as exc:
            raise ConfigError("invalid value for -ruler.alertmanager-url: %r: %s" % (raw, exc)) from None
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ConfigError("invalid value for -ruler.alertmanager-url: %r: want "
                              "http(s)://host[:port][/prefix]" % raw)
        if port is None:
            port = 443 if u.scheme == "https" else 80
        user, pw = unquote(u.username or ""), unquote(u.password or "")
        auth = None
        if username or password:
            user, pw = username, password
        if user or pw or u.username is not None:
            auth = b"Basic " + base64.b64encode(("%s:%s" % (user, pw)).encode("utf-8"))
        out.append(AlertmanagerURL(u.scheme, u.hostname, port, u.path, auth, resolve))
    return out


def system_resolver(reactor: Any) -> Resolver:
    """Every address of a host name through the reactor's resolver (getaddrinfo in a thread)."""
    def resolve(host: str, port: int) -> "defer.Deferred[list[str]]":
        d: defer.Deferred[list[str]] = defer.Deferred()
        found: list[str] = []

        @implementer(IResolutionReceiver)
        class Receiver:
            def resolutionBegan(self, resolution: Any) -> None:
                pass

            def addressResolved(self, address: Any) -> None:
                if address.host not in found:
                    found.append(address.host)

            def resolutionComplete(self) -> None:
                d.callback(sorted(found))
        reactor.nameResolver.resolveHostName(Receiver(), host, port)
        return d
    return resolve


class _Metrics:
    """Mimir's cortex_prometheus_notifications_* (Prometheus' notifier metrics, with `user`)."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge, Summary
        per_am = ["user", "alertmanager"]
        kw = {"registry": registry}
        p = "cortex_prometheus_notifications_"
        self.latency = Summary(p + "latency_seconds", "Latency quantiles for sending alert "
                               "notifications.", per_am, **kw)
        self.errors = Counter(p + "errors_total", "Total number of sent alerts affected by errors.",
                              per_am, **kw)
        self.sent = Counter(p + "sent_total", "Total number of alerts sent.", per_am, **kw)
        self.dropped = Counter(p + "dropped_total", "Total number of alerts dropped due to errors "
                               "when sending to Alertmanager.", per_am, **kw)
        self.queue_length = Gauge(p + "queue_length", "The number of alert notifications in the "
                                  "queue.", per_am, **kw)
        self.queue_capacity = Gauge(p + "queue_capacity", "The capacity of the alert notifications "
                                    "queue.", ["user"], **kw)
        self.discovered = Gauge(p + "alertmanagers_discovered", "The number of alertmanagers "
                                "discovered and active.", ["user"], **kw)


class _SendLoop:
    """One tenant's queue towards one Alertmanager endpoint and the loop that empties it."""

    def __init__(self, owner: "Notifier", tenant: str, url: str, authorization: bytes | None) -> None:
        self.owner = owner
        self.tenant = tenant
        self.url = url
        self.headers = {b"Content-Type": [b"application/json"], b"X-Scope-OrgID": [tenant.encode()],
                        b"User-Agent": [b"urdar-ruler"]}
        if authorization is not None:
            self.headers[b"Authorization"] = [authorization]
        self.queue: deque[dict[str, Any]] = deque()
        self.running: defer.Deferred[None] | None = None   # the loop, while it has work
        self.inflight: defer.Deferred[Any] | None = None   # the request or back-off it waits on
        self.closed = False     # no new alerts (stopping, or the Alertmanager went away)
        self.aborted = False    # drop what is queued, cancel what is in flight
        m = owner.metrics
        self.m_sent = m.sent.labels(tenant, url)
        self.m_errors = m.errors.labels(tenant, url)
        self.m_dropped = m.dropped.labels(tenant, url)
        self.m_queue = m.queue_length.labels(tenant, url)
        self.m_latency = m.latency.labels(tenant, url)

    def add(self, alerts: list[dict[str, Any]]) -> None:
        if self.closed:
            return
        cap = self.owner.config.queue_capacity
        dropped = 0
        if len(alerts) > cap:
            dropped += len(alerts) - cap
            alerts = alerts[len(alerts) - cap:]
        over = len(self.queue) + len(alerts) - cap
        for _ in range(max(over, 0)):
            self.queue.popleft()        # the oldest go first, as in Prometheus
        dropped += max(over, 0)
        self.queue.extend(alerts)
        self.m_queue.set(len(self.queue))
        if dropped:
            log.warning("alert notification queue of tenant %s for %s full, dropping %d alerts",
                        self.tenant, self.url, dropped)
            self.m_dropped.inc(dropped)
        if self.running is None and self.queue:
            d = self._run()
            d.addErrback(lambda f: log.error("alert notification loop of tenant %s for %s failed: %s",
                                             self.tenant, self.url, f.getTraceback()))
            if not d.called:        # a loop that finished at once has nothing left to track
                self.running = d

    def abort(self) -> None:
        """Stop now: what is queued is dropped (counted), the request in flight cancelled."""
        self.closed = self.aborted = True
        if self.inflight is not None:
            self.inflight.cancel()

    @defer.inlineCallbacks
    def _run(self) -> Generator["defer.Deferred[Any]", Any, None]:
        try:
            while self.queue and not self.aborted:
                batch = [self.queue.popleft() for _ in range(min(MAX_BATCH, len(self.queue)))]
                self.m_queue.set(len(self.queue))
                ok = yield self._send_batch(batch)
                if not ok:
                    self.m_dropped.inc(len(batch))
            if self.queue:
                log.warning("alert notifications of tenant %s for %s not sent on shutdown, "
                            "dropping %d alerts", self.tenant, self.url, len(self.queue))
                self.m_dropped.inc(len(self.queue))
                self.queue.clear()
                self.m_queue.set(0)
        finally:
            self.running = None

    @defer.inlineCallbacks
    def _send_batch(self, batch: list[dict[str, Any]]) -> Generator["defer.Deferred[Any]", Any, bool]:
        """True when the Alertmanager took the batch; False (logged, counted) when it failed
        for good: a 4xx, or retryable failures until the attempts or the time budget ran out."""
        clock = self.owner.clock
        payload = json.dumps(batch, separators=(",", ":")).encode("utf-8")
        begin = clock.seconds()
        deadline = begin + self.owner.config.timeout_s
        backoff = FIRST_BACKOFF_S
        attempt = 0
        while True:
            attempt += 1
            retryable = True
            try:
                d = self.owner.http.post(self.url, data=payload, headers=self.headers)
                d.addCallback(_status_and_body, clock, deadline)
                self.inflight = d.addTimeout(max(deadline - clock.seconds(), 0.0), clock)
                status, body = yield self.inflight
            except defer.TimeoutError:
                err = "timed out after %gs" % (clock.seconds() - begin)
            except defer.CancelledError:
                err, retryable = "cancelled on shutdown", False
            except Exception as exc:
                err = "%s: %s" % (type(exc).__name__, exc)
            else:
                if 200 <= status < 300:
                    self.m_latency.observe(clock.seconds() - begin)
                    self.m_sent.inc(len(batch))
                    return True
                err = "bad response status %d: %s" % (status, body.decode("utf-8", "replace").strip())
                retryable = status >= 500 or status == 429
            finally:
                self.inflight = None
            if (not retryable or self.aborted or attempt >= MAX_ATTEMPTS
                    or clock.seconds() + backoff >= deadline):
                log.error("error sending %d alerts of tenant %s to %s (attempt %d): %s",
                          len(batch), self.tenant, self.url, attempt, err)
                self.m_errors.inc(len(batch))
                return False
            self.inflight = task.deferLater(clock, backoff, lambda: None)
            try:
                yield self.inflight
            except defer.CancelledError:
                self.m_errors.inc(len(batch))
                return False
            finally:
                self.inflight = None
            backoff = min(backoff * 2, MAX_BACKOFF_S)


def _status_and_body(resp: Any, clock: Any, deadline: float) -> Any:
    """(status, the first KiB of the body: amreceivers.MAX_ERROR_BODY_BYTES) of an answer, read as
    components/amreceivers reads a receiver's: up to 64 KiB are read on so the connection can be
    reused, a longer body closes it. A 2xx counts on its status (as Prometheus' notifier): its
    body is read on in the background until `deadline` (clock seconds), then the connection is
    closed. Otherwise the body is awaited; cancelling the wait (the caller's deadline) closes
    the connection too, so a stalled answer cannot hold it."""
    head = BodyHead()
    resp.deliverBody(head)
    if 200 <= resp.code < 300:
        if not head.done.called:
            timer = clock.callLater(max(deadline - clock.seconds(), 0.0), head.done.cancel)

            def drained(result: Any) -> None:
                if timer.active():
                    timer.cancel()
            head.done.addBoth(drained)
        return (resp.code, b"")
    return head.done.addCallback(lambda text: (resp.code, text))


class Notifier:
    """Sends the ruler's alerts to the configured Alertmanagers, per tenant, off the caller's path.

    `reactor` connects and resolves; `clock` times timeouts, back-off and refreshes (the reactor
    unless given); `http` is treq's HTTPClient (one persistent pool unless given); `resolver`
    (host, port) -> Deferred[addresses] for `dns+` URLs."""

    def __init__(self, config: NotifierConfig, reactor: Any, clock: Any = None, registry: Any = None,
                 http: Any = None, resolver: Resolver | None = None) -> None:
        self.config = config
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.urls = parse_alertmanager_urls(config.alertmanager_url, config.basic_auth_username,
                                            config.basic_auth_password)
        self._pool = None
        if http is None:
            import treq
            from twisted.web.client import Agent, HTTPConnectionPool
            self._pool = HTTPConnectionPool(reactor, persistent=True)
            http = treq.client.HTTPClient(Agent(reactor, pool=self._pool,
                                                connectTimeout=config.timeout_s))
        self.http = http
        self.resolver = resolver if resolver is not None else system_resolver(reactor)
        self.metrics = _Metrics(registry)
        # The Alertmanagers alerts go to: POST URL -> Authorization header. Static URLs are
        # known now; dns+ ones after each resolution (the last good answer is kept on errors).
        self._resolved: dict[int, list[str]] = {
            i: [u.host] for i, u in enumerate(self.urls) if not u.resolve}
        self.endpoints: dict[str, bytes | None] = {}
        self._loops: dict[str, dict[str, _SendLoop]] = {}   # tenant -> endpoint URL -> loop
        self._refresh: task.LoopingCall | None = None
        self._stopping: defer.Deferred[None] | None = None
        self._update_endpoints()

    # ---- the interface the rule evaluation calls --------------------------------------------

    def send(self, tenant: str, alerts: list[dict[str, Any]]) -> None:
        """Queue `alerts` (Alertmanager API v2 postable alerts) of `tenant` for every
        Alertmanager; never blocks. Ignored once stop() was called."""
        if self._stopping is not None or not alerts:
            return
        postable = [{k: a[k] for k in ALERT_KEYS if k in a} for a in alerts]
        for loop in self._tenant(tenant).values():
            loop.add(postable)

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Resolve `dns+` URLs now and every -ruler.alertmanager-refresh-interval."""
        if any(u.resolve for u in self.urls) and self._refresh is None:
            self._refresh = task.LoopingCall(self.refresh)
            self._refresh.clock = self.clock
            self._refresh.start(self.config.refresh_interval_s, now=True).addErrback(
                lambda f: log.error("alertmanager refresh stopped: %s", f.getErrorMessage()))

    def stop(self) -> "defer.Deferred[None]":
        """Send what is queued, within one -ruler.notification-timeout; then drop (counted) what
        is left and cancel requests still in flight. Fires when every loop has ended."""
        if self._stopping is not None:
            return self._stopping
        if self._refresh is not None and self._refresh.running:
            self._refresh.stop()
        loops = [loop for per in self._loops.values() for loop in per.values()]
        for loop in loops:
            loop.closed = True
        waits = [loop.running for loop in loops if loop.running is not None]

        def abort() -> None:
            for loop in loops:
                loop.abort()
        timer = self.clock.callLater(self.config.timeout_s, abort) if waits else None
        d = defer.DeferredList(waits, consumeErrors=True)

        def done(_: Any) -> Any:
            if timer is not None and timer.active():
                timer.cancel()
            if self._pool is not None:
                return self._pool.closeCachedConnections()
            return None
        self._stopping = d.addCallback(done).addCallback(lambda _: None)
        return self._stopping

    # ---- Alertmanagers -----------------------------------------------------------------------

    def refresh(self) -> "defer.Deferred[None]":
        """Re-resolve every `dns+` URL; a failed resolution keeps the last answer."""
        ds = []
        for i, u in enumerate(self.urls):
            if not u.resolve:
                continue

            def got(addrs: list[str], i: int = i) -> None:
                self._resolved[i] = addrs

            def failed(f: Any, u: AlertmanagerURL = u) -> None:
                log.warning("resolving alertmanager host %s failed: %s", u.host, f.getErrorMessage())
            ds.append(defer.maybeDeferred(self.resolver, u.host, u.port).addCallbacks(got, failed))
        d = defer.gatherResults(ds)
        return d.addCallback(lambda _: self._update_endpoints())

    def _update_endpoints(self) -> None:
        endpoints: dict[str, bytes | None] = {}
        for i, u in enumerate(self.urls):
            for host in self._resolved.get(i, []):
                endpoints.setdefault(u.endpoint(host), u.authorization)
        if endpoints == self.endpoints:
            return
        gone = set(self.endpoints) - set(endpoints)
        self.endpoints = endpoints
        if self._stopping is not None:
            return
        for tenant, loops in self._loops.items():
            for url in gone:
                loops.pop(url).abort()       # the Alertmanager went away: its queue with it
            for url, auth in endpoints.items():
                if url not in loops:
                    loops[url] = _SendLoop(self, tenant, url, auth)
            self.metrics.discovered.labels(tenant).set(len(endpoints))

    def _tenant(self, tenant: str) -> dict[str, _SendLoop]:
        loops = self._loops.get(tenant)
        if loops is None:
            loops = self._loops[tenant] = {url: _SendLoop(self, tenant, url, auth)
                                           for url, auth in self.endpoints.items()}
            self.metrics.queue_capacity.labels(tenant).set(self.config.queue_capacity)
            self.metrics.discovered.labels(tenant).set(len(loops))
        return loops
