"""The etcd v3 KV store for the rings when urdar runs as a cluster (-<ring>.store=etcd): the same
interface as net/kv.py's MemoryKV (get, entry, keys, cas, delete, watch, watch_prefix), reached
without blocking through etcd's grpc-gateway JSON API (POST /v3/kv/range, /v3/kv/txn,
/v3/kv/deleterange, /v3/watch; keys and values base64) over a Twisted HTTP client.

Values are urdar's JSON ring descriptors (compact, sorted keys), not Mimir's protobuf ring.Desc:
urdar and Mimir cannot share a ring in one etcd. Every method returns a Deferred. `cas(key, fn)`
reads the key, asks fn for the new value and writes it in a txn that compares the key's
mod_revision (create_revision 0 for a new key); on a conflict it re-runs fn on the value the txn
returned, up to `max_retries` times. A request that gets no answer within `dial_timeout_s` is
cancelled; failed requests move to the next endpoint and back off (doubling, on the injected
clock). When etcd is down, get/entry/keys answer from the last values this client saw (reads,
writes, watch events), cas fails with EtcdUnavailable after its retries, and watches reconnect
until etcd is back, resuming from the revision after the last event they delivered (a compacted
revision makes them re-read the keys and report what changed; a stream silent for `watch_idle_s`
is reopened the same way). With a username, requests carry etcd's auth token, fetched again when
etcd calls it invalid. Parsing happens on the reactor: a ring descriptor is one JSON document
that grows with the cluster, not with requests."""
import base64
import copy
import json
import logging

from twisted.internet import defer, protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, PotentialDataLoss, ResponseDone
from twisted.web.http_headers import Headers

log = logging.getLogger(__name__)

# Mimir's -<ring>.etcd.dial-timeout and -<ring>.etcd.max-retries defaults.
DEFAULT_DIAL_TIMEOUT_S = 10.0
DEFAULT_MAX_RETRIES = 10


class EtcdError(Exception):
    """etcd refused a request (bad input, permission) or its value is not urdar's JSON."""
    cause = "internal"


class EtcdUnavailable(EtcdError):
    """No endpoint answered within the retries (down, unreachable, timed out or 5xx)."""
    cause = "unavailable"


class EtcdTimeout(Exception):
    """One request got no answer within the dial timeout (retried like a refused connection)."""


class EtcdConflict(EtcdError):
    """cas lost the race for the key more than max_retries times in a row."""
    cause = "unavailable"


def _b64(text):
    return base64.b64encode(text.encode("utf-8") if isinstance(text, str) else text).decode("ascii")


def _unb64(text):
    return base64.b64decode(text or "")


def prefix_range_end(prefix):
    """The range_end that selects every key starting with `prefix` (bytes): its last byte that is
    not 0xff plus one, as etcd's clientv3.GetPrefixRangeEnd; b"\\0" (to the end) if there is none."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def encode_value(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")


def decode_value(key, data):
    try:
        return json.loads(data)
    except ValueError:
        raise EtcdError("value of etcd key %r is not JSON (urdar stores ring descriptors as JSON, "
                        "not Mimir's protobuf ring.Desc)" % (key,)) from None


class _Body(protocol.Protocol):
    """A response body: collected whole into `done`, or handed on line by line (the watch stream,
    newline-delimited JSON). Cancelling `done` drops the connection."""

    def __init__(self, on_line=None):
        self._on_line = on_line
        self._buf = bytearray()
        self.done = defer.Deferred(self._cancel)

    def _cancel(self, d):
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data):
        self._buf += data
        if self._on_line is None:
            return
        while not self.done.called:
            nl = self._buf.find(b"\n")
            if nl < 0:
                return
            line = bytes(self._buf[:nl])
            del self._buf[:nl + 1]
            if line.strip():
                self._on_line(line)

    def stop(self):
        if self.transport is not None:
            self.transport.stopProducing()

    def connectionLost(self, reason):
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(bytes(self._buf))
        else:
            self.done.errback(reason)


class _Seen:
    """What this client last saw of a key: value (None and version 0 once deleted), per-key
    version, mod_revision, the store revision at which that was still true (`at_rev`, to
    order answers and events that arrive over different connections) and the clock time."""
    __slots__ = ("value", "version", "mod_revision", "at_rev", "seen_s")

    def __init__(self, value, version, mod_revision, at_rev, seen_s):
        self.value, self.version, self.mod_revision = value, version, mod_revision
        self.at_rev, self.seen_s = at_rev, seen_s


def _header_rev(msg):
    return int(msg.get("header", {}).get("revision", 0))


def default_http(reactor, connect_timeout_s):
    """treq's HTTPClient on a fresh connection per request: a restarted etcd leaves no stale
    pooled connections behind, and ring traffic is a few requests per heartbeat."""
    import treq
    from urdar.net.server import quiet_connection_pool
    pool = quiet_connection_pool(reactor, persistent=False)
    return treq.client.HTTPClient(Agent(reactor, connectTimeout=connect_timeout_s, pool=pool))


class EtcdKV:
    """See the module docstring. `endpoints` are "host:port" or URLs; `http` is anything with
    treq's `request(method, url, data=, headers=)` (tests pass a fake); `clock` times timeouts
    and back-off (defaults to `reactor`)."""

    def __init__(self, endpoints, reactor, clock=None, http=None,
                 dial_timeout_s=DEFAULT_DIAL_TIMEOUT_S, max_retries=DEFAULT_MAX_RETRIES,
                 username="", password="", backoff_min_s=0.1, backoff_max_s=5.0,
                 watch_idle_s=60.0):
        if not endpoints:
            raise ValueError("etcd needs at least one endpoint")
        self.endpoints = [e.rstrip("/") if "://" in e else "http://" + e.rstrip("/") for e in endpoints]
        self.clock = clock if clock is not None else reactor
        self.http = http if http is not None else default_http(reactor, dial_timeout_s)
        self.dial_timeout_s = dial_timeout_s
        self.max_retries = max(1, max_retries)
        self.username, self._password = username, password
        self.backoff_min_s, self.backoff_max_s = backoff_min_s, backoff_max_s
        # A watch stream silent this long is reopened (from its next revision, so nothing is
        # lost): a frozen etcd or a half-open connection would otherwise hold it forever.
        self.watch_idle_s = watch_idle_s
        self._current = 0          # index of the endpoint that answered last
        self._token = None         # auth token when username is set
        self._seen = {}            # key -> _Seen
        self._watches = set()
        self.last_error = None     # the latest transport failure (str), None after a success

    # ---- transport ---------------------------------------------------------------------------

    def backoff_s(self, attempt):
        """Delay before retry number `attempt` (0-based): doubling from backoff_min_s, capped."""
        return min(self.backoff_max_s, self.backoff_min_s * (2 ** min(attempt, 30)))

    def _post_once(self, endpoint, path, body, reader=None):
        """One POST; fires with (status, body bytes), or, for a 200 when `reader` (a _Body handing
        on lines) is given, (200, reader) as soon as the headers are in. The whole exchange (a
        stream only up to its headers) is bounded by dial_timeout_s."""
        headers = {b"Content-Type": [b"application/json"]}
        if self._token:
            headers[b"Authorization"] = [self._token.encode("utf-8")]
        # unbuffered: treq would otherwise keep a copy of everything a watch stream ever said.
        d = self.http.request("POST", endpoint + path, data=json.dumps(body).encode("utf-8"),
                              headers=Headers(headers), unbuffered=True)

        def got(response):
            if reader is not None and response.code == 200:
                response.deliverBody(reader)
                return response.code, reader
            whole = _Body()
            response.deliverBody(whole)
            return whole.done.addCallback(lambda data: (response.code, data))
        d.addCallback(got)
        timer = self.clock.callLater(self.dial_timeout_s, d.cancel)

        def finished(result):
            if timer.active():
                timer.cancel()
            elif isinstance(result, Failure):
                raise EtcdTimeout("%s%s: no answer within %gs (dial timeout)" % (
                    endpoint, path, self.dial_timeout_s))
            return result
        return d.addBoth(finished)

    @defer.inlineCallbacks
    def _authenticate(self, endpoint):
        self._token = None
        code, data = yield self._post_once(endpoint, "/v3/auth/authenticate",
                                           {"name": self.username, "password": self._password})
        msg = self._decode(code, data)
        self._token = msg.get("token") or None

    @staticmethod
    def _decode(code, data):
        try:
            msg = json.loads(data) if data else {}
        except ValueError:
            msg = {"error": data[:200].decode("utf-8", "replace")}
        if code == 200 and "error" not in msg:
            return msg
        text = "etcd answered %d: %s" % (code, msg.get("message") or msg.get("error") or "")
        # gRPC Unavailable (14), DeadlineExceeded (4) and 5xx are worth another endpoint or a retry.
        if code >= 500 or msg.get("code") in (4, 14):
            raise _Retry(text)
        if msg.get("code") == 16 and "token" in text:
            raise _Retry(text, reauth=True)
        raise EtcdError(text)

    @defer.inlineCallbacks
    def _request(self, path, body, attempts=None):
        """POST to the current endpoint, failing over to the next one and backing off between
        rounds; EtcdUnavailable after `attempts` tries (max_retries by default)."""
        attempts = attempts or self.max_retries
        n = len(self.endpoints)
        reauthenticated = False
        attempt = -1
        while attempt + 1 < attempts:
            attempt += 1
            endpoint = self.endpoints[self._current]
            try:
                if self.username and self._token is None:
                    yield self._authenticate(endpoint)
                code, data = yield self._post_once(endpoint, path, body)
                msg = self._decode(code, data)
            except EtcdError:
                raise
            except _Retry as exc:
                self.last_error = str(exc)
                if exc.reauth:
                    self._token = None
                    if not reauthenticated:      # an expired token costs no attempt, once
                        reauthenticated, attempt = True, attempt - 1
                        continue
            except Exception as exc:          # connection refused/reset, timeout, DNS: next one
                self.last_error = "%s: %s" % (type(exc).__name__, exc) if str(exc) else type(exc).__name__
            else:
                self.last_error = None
                return msg
            self._current = (self._current + 1) % n
            if attempt + 1 < attempts and (attempt + 1) % n == 0:
                yield self._sleep(self.backoff_s((attempt + 1) // n - 1))
        raise EtcdUnavailable("etcd at %s: no answer after %d attempts (last error: %s)" % (
            ", ".join(self.endpoints), attempts, self.last_error))

    def _sleep(self, seconds):
        d = defer.Deferred(lambda d: call.cancel() if call.active() else None)
        call = self.clock.callLater(seconds, d.callback, None)
        return d

    # ---- what this client saw ------------------------------------------------------------------

    def _remember(self, key, kv, at_rev):
        """Record that key was `kv` (None: absent) at store revision at_rev, unless this client
        already knows of a later state; returns kv's decoded value."""
        value = decode_value(key, _unb64(kv.get("value"))) if kv is not None else None
        version = int(kv.get("version", 0)) if kv is not None else 0
        mod_rev = int(kv.get("mod_revision", 0)) if kv is not None else 0
        self._note(key, value, version, mod_rev, at_rev)
        return value

    def _note(self, key, value, version, mod_rev, at_rev):
        old = self._seen.get(key)
        if old is not None and old.at_rev > at_rev:
            return
        seen_s = old.seen_s if old is not None and old.mod_revision == mod_rev else self.clock.seconds()
        self._seen[key] = _Seen(copy.deepcopy(value), version, mod_rev, at_rev, seen_s)

    def _known(self, key):
        s = self._seen.get(key)
        return s if s is not None and s.version else None

    def _range_body(self, key, prefix=False, keys_only=False):
        body = {"key": _b64(key)}
        if prefix:
            body["key"] = _b64(key) if key else _b64(b"\0")
            body["range_end"] = _b64(prefix_range_end(key.encode("utf-8"))) if key else _b64(b"\0")
        if keys_only:
            body["keys_only"] = True
        return body

    @defer.inlineCallbacks
    def _read(self, key):
        """The key's _Seen from etcd (None if absent), or from memory when etcd does not answer."""
        try:
            msg = yield self._request("/v3/kv/range", self._range_body(key), len(self.endpoints))
        except EtcdUnavailable:
            if key in self._seen:
                return self._known(key)
            raise
        kvs = msg.get("kvs") or ()
        self._remember(key, kvs[0] if kvs else None, _header_rev(msg))
        return self._known(key)

    # ---- the MemoryKV interface ------------------------------------------------------------------

    def get(self, key):
        """Deferred: a copy of key's value, or None; the last seen value when etcd is down."""
        return self._read(key).addCallback(lambda s: copy.deepcopy(s.value) if s is not None else None)

    def entry(self, key):
        """Deferred: (value copy, version, clock seconds when this client saw that version), or None."""
        return self._read(key).addCallback(
            lambda s: (copy.deepcopy(s.value), s.version, s.seen_s) if s is not None else None)

    @defer.inlineCallbacks
    def keys(self, prefix=""):
        """Deferred: sorted keys starting with prefix; the ones last seen when etcd is down."""
        try:
            msg = yield self._request("/v3/kv/range", self._range_body(prefix, prefix=True, keys_only=True),
                                      len(self.endpoints))
        except EtcdUnavailable:
            if not self._seen:
                raise
            return sorted(k for k in self._seen if k.startswith(prefix) and self._known(k))
        return sorted(_unb64(kv["key"]).decode("utf-8") for kv in msg.get("kvs") or ())

    @defer.inlineCallbacks
    def cas(self, key, fn):
        """Deferred: set key to fn(copy of the current value or None) unless fn returns None; fires
        with the new version (the current one, 0 if missing, when unchanged). EtcdConflict after
        max_retries lost races, EtcdUnavailable when etcd does not answer."""
        msg = yield self._request("/v3/kv/range", self._range_body(key))
        kvs = msg.get("kvs") or ()
        kv = kvs[0] if kvs else None
        for _ in range(self.max_retries):
            current = self._remember(key, kv, _header_rev(msg))
            version = int(kv.get("version", 0)) if kv else 0
            new = fn(copy.deepcopy(current))
            if new is None:
                return version
            data = encode_value(new)
            compare = ({"key": _b64(key), "target": "MOD", "result": "EQUAL",
                        "mod_revision": kv.get("mod_revision", "0")} if kv else
                       {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"})
            msg = yield self._request("/v3/kv/txn", {
                "compare": [compare],
                "success": [{"request_put": {"key": _b64(key), "value": _b64(data)}}],
                "failure": [{"request_range": self._range_body(key)}]})
            if msg.get("succeeded"):
                rev = _header_rev(msg)
                self._note(key, new, version + 1, rev, rev)
                return version + 1
            # Lost the race: the failure branch read the winner's value; try fn on that.
            got = (msg.get("responses") or [{}])[0].get("response_range", {}).get("kvs") or ()
            kv = got[0] if got else None
        raise EtcdConflict("cas on etcd key %r: the key changed under us %d times in a row "
                           "(-<ring>.etcd.max-retries)" % (key, self.max_retries))

    @defer.inlineCallbacks
    def delete(self, key):
        """Deferred: forget key; True if it existed."""
        msg = yield self._request("/v3/kv/deleterange", {"key": _b64(key)})
        self._remember(key, None, _header_rev(msg))
        return int(msg.get("deleted", 0)) > 0

    def watch(self, key, callback):
        """Call callback(key, value copy or None when deleted) after every change of key, in
        order. Returns an EtcdWatch: `.started` fires once etcd streams, `.stop()` ends it."""
        return self._watch(key, False, callback)

    def watch_prefix(self, prefix, callback):
        """watch() for every key starting with prefix."""
        return self._watch(prefix, True, callback)

    def _watch(self, key, prefix, callback):
        w = EtcdWatch(self, key, prefix, callback)
        self._watches.add(w)
        w._start()
        return w

    def close(self):
        """Stop every watch (the client holds no other connections)."""
        for w in list(self._watches):
            w.stop()


class _Retry(Exception):
    def __init__(self, text, reauth=False):
        super().__init__(text)
        self.reauth = reauth


class EtcdWatch:
    """One watch stream on a key or prefix, restarted after errors from the revision after the
    last event it delivered. `started` fires when etcd first confirms it; `stop()` ends it."""

    def __init__(self, kv, key, prefix, callback):
        self._kv = kv
        self.key, self.prefix, self._callback = key, prefix, callback
        self.started = defer.Deferred()
        self.stopped = False
        self.reconnects = 0          # streams (re)opened after the first attempt
        self._next_rev = None        # revision to resume from; None: read the keys first
        self._since = None           # after a compaction: the first revision not delivered
        self._present = set()        # keys that exist as far as the callback knows
        self._failures = 0           # attempts since etcd last confirmed a stream
        self._resync_now = False     # the stream ended on a compaction: re-read without delay
        self._body = None
        self._pending = None         # a Deferred (read, request, sleep) to cancel on stop
        self._idle = None            # DelayedCall reopening a silent stream
        self._dropping = False       # the stream is being dropped: ignore what else it says

    def stop(self):
        self.stopped = True
        self._kv._watches.discard(self)
        self._quiet()
        if self._pending is not None:
            self._pending.cancel()
        if self._body is not None:
            self._body.stop()

    def _start(self):
        if self.stopped:
            return
        d = self._pending = self._resync() if self._next_rev is None else defer.succeed(None)
        d.addCallback(lambda _: self._open())
        d.addBoth(self._ended)

    @defer.inlineCallbacks
    def _resync(self):
        """Read the watched keys and resume from the revision after the read. After a compaction,
        report every key changed since the last delivered event and every key gone since."""
        kv = self._kv
        msg = yield kv._request("/v3/kv/range", kv._range_body(self.key, prefix=self.prefix),
                                len(kv.endpoints))
        now = {_unb64(item["key"]).decode("utf-8"): item for item in msg.get("kvs") or ()}
        at = _header_rev(msg)
        for k in sorted(now):
            value = kv._remember(k, now[k], at)
            if self._since is not None and (k not in self._present
                                            or int(now[k]["mod_revision"]) >= self._since):
                self._deliver(k, value)
        for k in sorted(self._present - set(now)):
            kv._remember(k, None, at)
            if self._since is not None:
                self._deliver(k, None)
        self._present = set(now)
        self._since = None
        self._next_rev = at + 1

    @defer.inlineCallbacks
    def _open(self):
        """Open the stream; fires when it ends (etcd gone, cancelled, compacted, stopped)."""
        if self.stopped:
            return
        kv = self._kv
        endpoint = kv.endpoints[kv._current]
        if kv.username and kv._token is None:
            yield kv._authenticate(endpoint)
        create = dict(kv._range_body(self.key, prefix=self.prefix), start_revision=str(self._next_rev))
        # Set before the request: a response body can arrive inside deliverBody.
        self._body = _Body(self._line)
        self._dropping = False
        code, body = yield kv._post_once(endpoint, "/v3/watch", {"create_request": create},
                                         reader=self._body)
        if code != 200:
            try:
                kv._decode(code, body)
            except _Retry as exc:
                if exc.reauth:
                    kv._token = None
                raise
        self._heard()
        yield body.done

    def _heard(self):
        """(Re)arm the idle timer: the stream said something."""
        self._quiet()
        self._idle = self._kv.clock.callLater(self._kv.watch_idle_s, self._silent)

    def _quiet(self):
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _silent(self):
        log.info("etcd watch on %r: nothing for %gs, reopening", self.key, self._kv.watch_idle_s)
        self._idle = None
        self._drop()

    def _drop(self):
        self._dropping = True
        if self._body is not None:
            self._body.stop()

    def _line(self, line):
        if self._dropping:
            return
        self._heard()
        try:
            msg = json.loads(line)
        except ValueError:
            log.warning("etcd watch: unparsable line %r", line[:200])
            return
        res = msg.get("result")
        if res is None:
            log.warning("etcd watch on %r: %s", self.key, msg.get("error") or msg)
            self._drop()
            return
        if res.get("created"):
            self._failures = 0
            self._kv.last_error = None
            if not self.started.called:
                self.started.callback(self)
        if res.get("canceled"):
            if res.get("compact_revision"):
                # Events not yet delivered were compacted away: re-read and report what changed.
                self._since, self._next_rev = self._next_rev, None
                self._resync_now = True
            self._drop()
            return
        for ev in res.get("events") or ():
            item = ev.get("kv") or {}
            rev = int(item.get("mod_revision", 0))
            if rev < self._next_rev:
                continue                 # already delivered before a reconnect
            self._next_rev = rev + 1
            key = _unb64(item.get("key")).decode("utf-8")
            try:
                if ev.get("type") == "DELETE":
                    value = self._kv._remember(key, None, rev)
                    self._present.discard(key)
                else:
                    value = self._kv._remember(key, item, rev)
                    self._present.add(key)
            except EtcdError as exc:
                log.warning("etcd watch: %s", exc)
                continue
            self._deliver(key, value)

    def _deliver(self, key, value):
        # `value` is _remember's freshly decoded value (the client's cache holds its own copy),
        # so the callback may keep or change it without a second deep copy.
        try:
            self._callback(key, value)
        except Exception:
            log.exception("etcd watch callback for %r failed", key)

    def _ended(self, result):
        """The stream, or the attempt to open it, ended: open it again after a back-off (at once
        after a compaction), on the next endpoint if this one failed."""
        self._pending = self._body = None
        self._quiet()
        if self.stopped:
            return None
        kv = self._kv
        if self._resync_now:
            self._resync_now, delay = False, 0
        else:
            if isinstance(result, Failure):
                kv.last_error = result.getErrorMessage()
                if self._failures == 0:          # once per outage, not per retry
                    log.warning("etcd watch on %r: %s; reconnecting", self.key, kv.last_error)
            kv._current = (kv._current + 1) % len(kv.endpoints)
            delay = kv.backoff_s(self._failures)
            self._failures += 1
        self.reconnects += 1
        d = self._pending = kv._sleep(delay)
        d.addCallback(lambda _: self._start())
        d.addErrback(lambda f: f.trap(defer.CancelledError))
        return None
