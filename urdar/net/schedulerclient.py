"""Client side of urdar's work-pull protocol between query-frontends, query-schedulers and
querier workers, over plain HTTP/1.1 long polls (Mimir speaks gRPC streams here; the roles and the
flow are the same). Three POSTs, all to the queue's owner (a query-scheduler, or a query-frontend
that queues itself):

  /scheduler/v1/enqueue        frontend -> queue. X-Scope-OrgID names the tenant, the body is the
                               JSON request for a querier. The answer waits until a querier has run
                               it: 200 with the querier's body, or the failure's status with its
                               cause in X-Urdar-Cause and its message as the body. Closing the
                               connection cancels the request (it leaves the queue).
  /scheduler/v1/next           querier worker -> queue, ?querier_id=&wait_s=. 200 with
                               {"id", "tenant", "payload"} as soon as there is work for this
                               querier, 204 after wait_s seconds without any.
With -query-scheduler.service-discovery-mode=ring the queues are the ACTIVE members of the
query-scheduler ring, used in turn (a result goes back to the queue its request came from).
  /scheduler/v1/result         querier worker -> queue, ?id=. The body is the querier's answer,
                               X-Urdar-Cause its failure's cause if it failed; 204, or 404 when
                               the request is gone (its frontend hung up).

Transport only: payloads are dicts and bytes; components/scheduler.py gives them meaning."""
import json
import logging
from typing import Any, Callable, Optional
from urllib.parse import urlencode

from twisted.internet import defer
from twisted.web.client import ResponseNeverReceived

log = logging.getLogger("urdar.schedulerclient")

PATH_ENQUEUE = "/scheduler/v1/enqueue"
PATH_NEXT = "/scheduler/v1/next"
PATH_RESULT = "/scheduler/v1/result"
CAUSE_HEADER = "X-Urdar-Cause"
# The querier's query statistics (JSON object of counts) with its answer: on the result it posts
# and on the enqueue answer the frontend gets, when the request asked for them ("stats": true).
STATS_HEADER = "X-Urdar-Query-Stats"
MAX_STATS_HEADER_BYTES = 1024
LONG_POLL_S = 15.0
# The answers a client reads whole: a query result, a request for a querier.
MAX_ANSWER_BYTES = 512 << 20
UNAVAILABLE = "unavailable"          # components/errors.UNAVAILABLE (net/ sits below components/)


class ProtocolError(Exception):
    """The other side answered something this protocol does not allow."""


def _http_client(reactor: Any, connections: int) -> Any:
    import treq
    from twisted.web.client import Agent, HTTPConnectionPool
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = max(2, connections)
    pool.cachedConnectionTimeout = 60
    return treq.client.HTTPClient(Agent(reactor, connectTimeout=5, pool=pool))


def _base(address: str) -> str:
    address = address.strip().rstrip("/")
    if "://" not in address:
        address = "http://" + address
    return address


class SchedulerClient:
    """Talks to the queue at `address` (host:port). `http` is treq's HTTPClient interface (tests
    pass a StubTreq); `clock` times the long polls and deadlines."""

    def __init__(self, address: str, reactor: Any, clock: Any = None, http: Any = None,
                 connections: int = 20, long_poll_s: float = LONG_POLL_S,
                 addresses: Optional[Callable[[], list[str]]] = None) -> None:
        self.address = address
        self.base = _base(address) if address else ""
        # `addresses()`: the queues to use (the query-scheduler ring's ACTIVE members), taken
        # in turn per request; None: `address` only.
        self.addresses = addresses
        self._turn = 0
        self.clock = clock if clock is not None else reactor
        self.http = http if http is not None else _http_client(reactor, connections)
        self.long_poll_s = long_poll_s

    def _pick(self) -> str:
        if self.addresses is None:
            return self.base
        found = self.addresses()
        if not found:
            raise ProtocolError("no query-scheduler is ACTIVE in the query-scheduler ring")
        self._turn += 1
        return _base(found[self._turn % len(found)])

    @staticmethod
    def _read(response: Any) -> "defer.Deferred[bytes]":
        length = response.length
        if isinstance(length, int) and length > MAX_ANSWER_BYTES:
            response.deliverBody(_Discard())
            raise ProtocolError("answer of %d bytes is over the limit of %d" % (length, MAX_ANSWER_BYTES))
        d: "defer.Deferred[bytes]" = response.content()
        return d

    def enqueue(self, tenant: str, payload: dict, timeout_s: Optional[float] = None
                ) -> "defer.Deferred[tuple[Optional[str], bytes, Optional[bytes]]]":
        """Deferred[(cause or None, body, the querier's stats header or None)] of the request
        once a querier has run it; a queue
        that cannot be reached or answers outside the protocol gives ("unavailable", message).
        Cancelling it closes the connection, which takes the request out of the queue."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        try:
            base = self._pick()
        except ProtocolError as exc:
            return defer.succeed((UNAVAILABLE, str(exc).encode(), None))
        d = self.http.post(base + PATH_ENQUEUE, data=body, headers={
            b"X-Scope-OrgID": [tenant.encode()], b"Content-Type": [b"application/json"]})
        if timeout_s:
            d.addTimeout(timeout_s, self.clock)

        def answered(response: Any) -> Any:
            cause = response.headers.getRawHeaders(CAUSE_HEADER.encode())
            stats = response.headers.getRawHeaders(STATS_HEADER.encode())
            code = response.code

            def got(content: bytes) -> tuple[Optional[str], bytes, Optional[bytes]]:
                if cause:
                    return cause[0].decode("ascii", "replace"), content, None
                if code == 200:
                    return None, content, stats[0] if stats else None
                return UNAVAILABLE, (b"query-scheduler %s answered %d: %s" % (
                    self.address.encode(), code, content[:200])), None
            return defer.maybeDeferred(self._read, response).addCallback(got)

        def unreachable(f: Any) -> Any:
            if f.check(defer.CancelledError):
                return f
            if f.check(ResponseNeverReceived) and any(
                    r.check(defer.CancelledError) for r in f.value.reasons):
                raise defer.CancelledError()        # we hung up: a cancellation, not an outage
            return UNAVAILABLE, ("query-scheduler %s: %s" % (self.address, f.getErrorMessage())
                                 ).encode("utf-8", "replace"), None
        return d.addCallback(answered).addErrback(unreachable)

    def next(self, querier_id: str) -> "defer.Deferred[Optional[dict]]":
        """Deferred[{"id", "tenant", "payload"} or None when the long poll ended empty]; fails
        when the queue cannot be reached (the worker retries)."""
        qs = urlencode({"querier_id": querier_id, "wait_s": "%g" % self.long_poll_s})
        try:
            base = self._pick()
        except ProtocolError:
            return defer.fail()
        d = self.http.post(base + PATH_NEXT + "?" + qs, data=b"")
        d.addTimeout(self.long_poll_s + 10, self.clock)

        def answered(response: Any) -> Any:
            if response.code == 204:
                return response.content().addCallback(lambda _: None)
            if response.code != 200:
                response.content().addErrback(lambda f: None)
                raise ProtocolError("%s answered %d to %s" % (self.address, response.code, PATH_NEXT))
            return defer.maybeDeferred(self._read, response).addCallback(_work, base)
        return d.addCallback(answered)

    def result(self, rid: int, cause: Optional[str], body: bytes,
               base: Optional[str] = None, stats: Optional[dict] = None) -> "defer.Deferred[bool]":
        """Deferred[True] once the queue has the answer of request `rid` (taken from the queue
        at `base`, a work item's "base"); False when the request is gone (cancelled) or the
        queue cannot be reached: the answer has nowhere to go. `stats`: the query's counts."""
        headers = {b"Content-Type": [b"application/octet-stream"]}
        if cause:
            headers[CAUSE_HEADER.encode()] = [cause.encode("ascii")]
        if stats:
            headers[STATS_HEADER.encode()] = [json.dumps(stats, separators=(",", ":")).encode()]
        d = self.http.post((base or self.base) + PATH_RESULT + "?" + urlencode({"id": rid}), data=body,
                           headers=headers)
        d.addTimeout(60, self.clock)

        def answered(response: Any) -> Any:
            return response.content().addCallback(lambda _: bool(response.code == 204))

        def failed(f: Any) -> bool:
            log.warning("querier worker: sending result %d to %s failed: %s", rid, self.address,
                        f.getErrorMessage())
            return False
        return d.addCallbacks(answered, failed)


def _work(content: bytes, base: str) -> dict:
    try:
        work = json.loads(content)
        if not (isinstance(work, dict) and isinstance(work.get("id"), int)
                and isinstance(work.get("tenant"), str) and isinstance(work.get("payload"), dict)):
            raise ValueError("not a request")
    except ValueError as exc:
        raise ProtocolError("bad work item: %s" % exc) from None
    work["base"] = base         # where its result goes
    return work


class _Discard:
    """A body consumer that drops what it is given (answers we do not read)."""

    def makeConnection(self, transport: Any) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        pass
