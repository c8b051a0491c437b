"""A memcached client for caches that must never slow a query down: one persistent TCP connection per
server (Twisted's MemCacheProtocol), keys spread over the servers by a jump consistent hash of the
key, reconnects after a back-off, and every read bounded by `timeout_s`. Failures of any kind (server
down, slow, refused, garbage) turn into cache misses and dropped writes, counted, never raised. The
store-gateway's index and chunks caches (components/storecache.py) use it on the reactor thread;
nothing here blocks. Keys longer than memcached's 250 bytes or holding spaces or control bytes are
replaced by a hash (`safe_key`), values above `max_item_size` are not stored."""
import base64
import hashlib
import logging

from prometheus_client import Counter
from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory
from twisted.protocols.memcache import ClientError, MemCacheProtocol, ServerError
from twisted.python.failure import Failure

log = logging.getLogger("urdar.memcached")

MAX_KEY_BYTES = 250
# Back-off after a connection is lost or refused: doubles per consecutive failure up to the max.
MIN_BACKOFF_S = 0.1
MAX_BACKOFF_S = 10.0


def safe_key(raw):
    """`raw` (bytes) if memcached accepts it as a key (1..250 bytes, each 0x21-0x7e), else a fixed-
    size hash of it ("H:" + 40 base64url characters; 240 bits of BLAKE2b, so collisions do not
    happen in practice)."""
    if 0 < len(raw) <= MAX_KEY_BYTES and all(0x21 <= c <= 0x7E for c in raw):
        return raw
    return b"H:" + base64.urlsafe_b64encode(hashlib.blake2b(raw, digest_size=30).digest())


def jump_hash(key, buckets):
    """Bucket in [0, buckets) of the 64-bit `key` (Lamping and Veach's jump consistent hash: adding
    a server moves only 1/n of the keys)."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def parse_address(address):
    """"host:port" (or "[v6]:port") -> (host, port); the port defaults to 11211."""
    address = address.strip()
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif address.count(":") == 1:
        host, port = address.split(":")
    else:
        host, port = address, ""
    if not host:
        raise ValueError("memcached address %r has no host" % (address,))
    try:
        port = int(port) if port else 11211
    except ValueError:
        raise ValueError("memcached address %r has a bad port" % (address,)) from None
    if not 0 < port < 65536:
        raise ValueError("memcached address %r has a bad port" % (address,))
    return host, port


class MemcachedMetrics:
    """Mimir's (dskit's) memcached client metrics, labelled by cache `name`; one per registry,
    shared by every client on it (registry None: counted but not exported)."""

    def __init__(self, registry=None):
        kw = {"registry": registry}
        self.operations = Counter("thanos_memcached_operations",
                                  "Total number of operations against memcached.",
                                  ["name", "operation"], **kw)
        self.failures = Counter("thanos_memcached_operation_failures",
                                "Total number of operations against memcached that failed.",
                                ["name", "operation", "reason"], **kw)
        self.skipped = Counter("thanos_memcached_operation_skipped",
                               "Total number of operations against memcached that have been skipped.",
                               ["name", "operation", "reason"], **kw)
        self.requests = Counter("thanos_cache_requests",
                                "Total number of keys requested from the cache.", ["name"], **kw)
        self.hits = Counter("thanos_cache_hits",
                            "Total number of keys found in the cache.", ["name"], **kw)


def _failure_reason(f):
    if f.check(defer.TimeoutError, defer.CancelledError):
        return "timeout"
    if f.check(ServerError, ClientError):
        return "server-error"
    if f.check(ConnectionError, error.ConnectionLost, error.ConnectionDone, error.ConnectError,
               RuntimeError):
        return "network-error"
    return "other"


class _Server:
    """One memcached server: its connection (None when down), the Deferreds of requests waiting for
    a connection being made, and the back-off state."""

    def __init__(self, client, address):
        self.client = client
        self.address = address
        self.host, self.port = parse_address(address)
        self.proto = None
        self.connecting = None        # list of waiters while a connect is in flight
        self.retry_at = 0.0           # clock time before which no new connect is tried
        self.failures = 0             # consecutive connection failures (back-off exponent)

    def connection(self):
        """Deferred[MemCacheProtocol]; fails at once while the server is backing off."""
        if self.proto is not None:
            return defer.succeed(self.proto)
        if self.connecting is not None:
            d = defer.Deferred()
            self.connecting.append(d)
            return d
        if self.client.clock.seconds() < self.retry_at:
            return defer.fail(ConnectionError("memcached %s: backing off" % (self.address,)))
        self.connecting = []
        d = defer.Deferred()
        self.connecting.append(d)
        self._connect()
        return d

    def _connect(self):
        factory = Factory.forProtocol(lambda: _Protocol(self))
        try:
            d = self.client.connect(self.host, self.port, factory)
        except Exception as e:    # a connector bug must not escape into a query
            d = defer.fail(e)
        d.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, proto):
        if self.retry_at == float("inf"):      # the client stopped while this connect ran
            proto.transport.loseConnection()
            proto = None
        self.proto = proto
        waiters, self.connecting = self.connecting or [], None
        for w in waiters:
            if proto is None:
                w.errback(ConnectionError("memcached %s: client stopped" % (self.address,)))
            else:
                w.callback(proto)

    def _connect_failed(self, f):
        self.client.connect_failures += 1
        self._back_off()
        log.debug("memcached %s: connect failed: %s", self.address, f.getErrorMessage())
        waiters, self.connecting = self.connecting or [], None
        for w in waiters:
            w.errback(ConnectionError("memcached %s: %s" % (self.address, f.getErrorMessage())))

    def _back_off(self):
        self.failures += 1
        delay = min(MAX_BACKOFF_S, MIN_BACKOFF_S * (2 ** (self.failures - 1)))
        self.retry_at = self.client.clock.seconds() + delay

    def lost(self, proto):
        """The connection `proto` closed (by the server, an error, or our own abort on timeout)."""
        if self.proto is proto:
            self.proto = None
            self._back_off()

    def answered(self):
        """A request got its answer: the server works, the next failure starts a new back-off."""
        self.failures = 0

    def abort(self):
        """Drop the connection: a request timed out, so later answers on it cannot be trusted to
        arrive; every other request on it becomes a miss at once (connectionLost fails them)."""
        proto = self.proto
        if proto is not None:
            self.lost(proto)
            if proto.transport is not None:
                proto.transport.abortConnection()


class _Protocol(MemCacheProtocol):
    """MemCacheProtocol without its own idle timeout (it would use the global reactor): the client
    bounds each request on its injected clock instead."""

    def __init__(self, server):
        super().__init__(timeOut=None)
        self._server = server

    def connectionLost(self, reason):
        self._server.lost(self)
        super().connectionLost(reason)


class MemcachedClient:
    """Memcached over `addresses` ("host:port", ...). All methods run on the reactor thread and
    return Deferreds that never fail. `connect(host, port, factory)` -> Deferred[protocol] is the
    seam tests replace; the default dials with HostnameEndpoint on `reactor`."""

    def __init__(self, addresses, clock, reactor=None, timeout_s=0.2, connect_timeout_s=0.2,
                 max_item_size=1 << 20, max_get_multi_batch_size=100, max_async_buffer_size=25000,
                 connect=None, name="memcached", metrics=None):
        if not addresses:
            raise ValueError("memcached: no server addresses given")
        self.name = name
        self.clock = clock
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_item_size = max_item_size
        # Twisted's protocol parses a multi-get answer recursively (a few frames per value): the
        # batch size bounds that depth as well as the request size.
        self.max_get_multi_batch_size = max(1, min(max_get_multi_batch_size or 100, 200))
        self.max_async_buffer_size = max_async_buffer_size
        self._reactor = reactor
        self.connect = connect or self._dial
        self.servers = [_Server(self, a) for a in addresses]
        self.metrics = metrics if metrics is not None else MemcachedMetrics()
        self._pending_sets = 0
        # Counters (operations, per key for gets).
        self.hits = 0
        self.misses = 0
        self.timeouts = 0
        self.failures = 0           # requests failed for any other reason (down, refused, errors)
        self.connect_failures = 0
        self.sets = 0
        self.skipped_too_large = 0
        self.dropped_sets = 0       # more than max_async_buffer_size writes in flight

    @property
    def pending_sets(self):
        """Writes sent and not yet answered (or timed out)."""
        return self._pending_sets

    def _dial(self, host, port, factory):
        if self._reactor is None:
            return defer.fail(RuntimeError("memcached: no reactor to connect with"))
        return HostnameEndpoint(self._reactor, host, port,
                                timeout=max(self.connect_timeout_s, 0.001)).connect(factory)

    def start(self):
        """Open a connection to every server now (so the first query's writes are not lost to a
        connect in flight); failures only start the back-off."""
        for s in self.servers:
            s.connection().addErrback(lambda f: None)

    def stop(self):
        for s in self.servers:
            if s.proto is not None and s.proto.transport is not None:
                s.proto.transport.loseConnection()
            s.proto = None
            s.retry_at = float("inf")   # no reconnects after stop

    def server_for(self, key):
        """The _Server owning `key` (bytes, already safe)."""
        if len(self.servers) == 1:
            return self.servers[0]
        h = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
        return self.servers[jump_hash(h, len(self.servers))]

    def _bounded(self, server, op):
        """Deferred of op(protocol) on `server`, failing after timeout_s (and then dropping the
        connection, whose queue of requests can no longer be answered in time)."""
        d = server.connection().addCallback(op)

        def on_timeout(result, timeout):
            self.timeouts += 1
            server.abort()
            if isinstance(result, Failure) and result.check(defer.CancelledError):
                raise defer.TimeoutError(timeout, "memcached %s" % (server.address,))
            return result
        return d.addTimeout(self.timeout_s, self.clock, onTimeoutCancel=on_timeout)

    def get_multi(self, keys):
        """Deferred[{key: value bytes}] of the `keys` (safe bytes keys) memcached holds; a key
        that is missing, or on a server that is down, slow or failing, is simply absent."""
        keys = list(dict.fromkeys(keys))
        if not keys:
            return defer.succeed({})
        by_server = {}
        for k in keys:
            by_server.setdefault(self.server_for(k), []).append(k)
        ds = []
        for server, ks in by_server.items():
            for i in range(0, len(ks), self.max_get_multi_batch_size):
                batch = ks[i:i + self.max_get_multi_batch_size]
                ds.append(self._get_batch(server, batch))
        out = {}

        def merge(results):
            for r in results:
                out.update(r)
            self.hits += len(out)
            self.misses += len(keys) - len(out)
            self.metrics.requests.labels(self.name).inc(len(keys))
            self.metrics.hits.labels(self.name).inc(len(out))
            return out
        return defer.gatherResults(ds).addCallback(merge)

    def _get_batch(self, server, keys):
        self.metrics.operations.labels(self.name, "getmulti").inc()
        d = self._bounded(server, lambda proto: proto.getMultiple(keys))

        def got(values):
            server.answered()
            return {k: v for k, (_flags, v) in values.items() if v is not None}

        def failed(f):
            self.metrics.failures.labels(self.name, "getmulti", _failure_reason(f)).inc()
            if not f.check(defer.TimeoutError):
                self.failures += 1
                log.debug("memcached %s: get failed: %s", server.address, f.getErrorMessage())
            return {}
        return d.addCallbacks(got, failed)

    def set(self, key, value, ttl_s=0):
        """Store `value` (bytes) under `key` (safe bytes) for `ttl_s` seconds (0 = no expiry, at
        most 30 days). Deferred[bool]: whether it was stored; too large or failed -> False."""
        if self.max_item_size and len(value) > self.max_item_size:
            self.skipped_too_large += 1
            self.metrics.skipped.labels(self.name, "set", "max-item-size").inc()
            return defer.succeed(False)
        if self._pending_sets >= self.max_async_buffer_size:
            self.dropped_sets += 1
            self.metrics.skipped.labels(self.name, "set", "async-buffer-full").inc()
            return defer.succeed(False)
        server = self.server_for(key)
        self._pending_sets += 1
        self.sets += 1
        self.metrics.operations.labels(self.name, "set").inc()
        ttl_s = int(min(max(ttl_s, 0), 30 * 86400))
        d = self._bounded(server, lambda proto: proto.set(key, bytes(value), 0, ttl_s))

        def done(result):
            self._pending_sets -= 1
            if result is True:
                server.answered()
                return True
            if not isinstance(result, bool):
                self.metrics.failures.labels(self.name, "set", _failure_reason(result)).inc()
                if not result.check(defer.TimeoutError):
                    self.failures += 1
                log.debug("memcached %s: set failed: %s", server.address, result.getErrorMessage())
            return False
        return d.addBoth(done)

    def stats(self):
        """Deferred[{address: {stat name: value}}] of every reachable server (for tests and pages)."""
        ds = [self._bounded(s, lambda proto: proto.stats()).addErrback(lambda f: None)
              for s in self.servers]

        def collect(results):
            return {s.address: {k.decode(): v.decode() for k, v in r.items()}
                    for s, r in zip(self.servers, results) if r is not None}
        return defer.gatherResults(ds).addCallback(collect)
