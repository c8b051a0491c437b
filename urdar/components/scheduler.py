"""The query queue between the query-frontend and the queriers (Mimir's pkg/scheduler/queue and
pkg/querier/worker); no HTTP here.

`RequestQueue` keeps one FIFO per tenant and hands work to querier workers round-robin across
tenants: after a tenant's request is taken, that tenant goes to the back of the rotation, so a
tenant with thousands of queued parts gets one turn in N like every other tenant with work, and
cannot starve them. A tenant may have at most -query-scheduler.max-outstanding-requests-per-tenant
requests queued (not yet taken by a worker); one more is refused with Mimir's "too many
outstanding requests" (429). With the per-tenant limit max_queriers_per_tenant > 0 a tenant's
requests only go to that many of the connected queriers, picked by a shuffle shard seeded by the
tenant (a fraction below 1 is a share of the queriers). Cancelling a request's Deferred (the
client went away) takes it out of its queue if it is still there, or cancels its execution if a
worker has it. The same queue serves the in-process workers of -target=all (`QueuedQuerier`,
whose requests are closures over the local querier) and the HTTP work-pull protocol of
-target=query-scheduler (handlers/scheduler.py), whose requests are JSON payloads.
`QuerierWorkers` runs -querier.max-concurrent loops that each take the next request and execute
it, for the local queue or a remote scheduler alike."""
import hashlib
import logging
import math
import random
from collections import OrderedDict, deque
from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.python.failure import Failure

from urdar.components import errors as E

log = logging.getLogger("urdar.scheduler")

TOO_MANY_REQUESTS = "too many outstanding requests"
# A remote querier that has not asked for work for this long no longer counts as connected
# (for the shuffle shard); long polls renew it well within that.
QUERIER_FORGET_S = 60.0


class TooManyOutstandingRequests(E.ComponentError):
    """The tenant's queue is full: 429 too_many_requests, as Mimir answers."""

    def __init__(self) -> None:
        super().__init__(E.RATE_LIMITED, TOO_MANY_REQUESTS)


class QueuedRequest:
    """One request in the queue. `payload` is what the worker executes (a closure in-process, a
    JSON-able dict for remote queriers); `d` fires with the execution's result. While running,
    `on_cancel` stops the execution when the request is cancelled."""
    __slots__ = ("id", "tenant", "payload", "enqueued_s", "d", "state", "on_cancel", "_queue")

    def __init__(self, queue: "RequestQueue", rid: int, tenant: str, payload: Any,
                 enqueued_s: float) -> None:
        self._queue = queue
        self.id = rid
        self.tenant = tenant
        self.payload = payload
        self.enqueued_s = enqueued_s
        self.state = "queued"          # queued -> running -> done
        self.on_cancel: Optional[Callable[[], None]] = None
        self.d: "defer.Deferred[Any]" = defer.Deferred(canceller=self._cancelled)

    def _cancelled(self, _: Any) -> None:
        if self.state == "queued":
            self._queue._remove(self)
        elif self.state == "running" and self.on_cancel is not None:
            self.on_cancel()
        self._finish_state()

    def _finish_state(self) -> None:
        if self.state != "done":
            self.state = "done"
            self._queue._done(self)

    def finish(self, result: Any) -> None:
        """The execution's result (or Failure) for whoever waits on `d`."""
        self._finish_state()
        if not self.d.called:
            if isinstance(result, Failure):
                self.d.errback(result)
            else:
                self.d.callback(result)

    def run(self) -> "defer.Deferred[Any]":
        """Execute a closure payload (in-process workers): calls it, ties cancellation to the
        Deferred it returns and passes its result on; returns a Deferred that fires when done."""
        x = defer.maybeDeferred(self.payload)
        self.on_cancel = x.cancel
        done: "defer.Deferred[None]" = defer.Deferred()

        def fin(result: Any) -> None:
            self.finish(result)
            done.callback(None)
        x.addBoth(fin)
        return done


class RequestQueue:
    """Per-tenant FIFOs with round-robin dispatch to waiting querier workers. `max_queriers(tenant)`
    gives the tenant's max_queriers_per_tenant (0: every querier). Metrics are Mimir's, named by
    where the queue lives: `cortex_query_scheduler` in a scheduler, `cortex_query_frontend` in a
    query-frontend that queues itself (Mimir's v1 frontend)."""

    def __init__(self, clock: Any, max_outstanding_per_tenant: int = 100,
                 max_queriers: Optional[Callable[[str], float]] = None, registry: Any = None,
                 prefix: str = "cortex_query_scheduler") -> None:
        from prometheus_client import Counter, Gauge, Histogram
        self.clock = clock
        self.max_outstanding_per_tenant = max_outstanding_per_tenant
        self.max_queriers = max_queriers
        self._queues: "OrderedDict[str, deque[QueuedRequest]]" = OrderedDict()   # rotation order
        self._waiters: "deque[tuple[str, defer.Deferred[QueuedRequest]]]" = deque()
        self._queriers: dict[str, float] = {}        # querier id -> last time it asked for work
        self._shards: dict[tuple, frozenset] = {}
        self._next_id = 1
        self.inflight: dict[int, QueuedRequest] = {}  # queued or running, by id
        self.stopped = False
        self.m_length = Gauge(prefix + "_queue_length", "Number of queries in the queue.",
                              ["user"], registry=registry)
        self.m_discarded = Counter(prefix + "_discarded_requests", "Total number of query "
                                   "requests discarded.", ["user"], registry=registry)
        self.m_duration = Histogram(prefix + "_queue_duration_seconds", "Time spent by requests "
                                    "queued.", buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5,
                                                        5, 10, 30, 60), registry=registry)
        self.m_inflight = Gauge(prefix + "_inflight_requests", "Number of queries queued or "
                                "being executed.", registry=registry)
        self.m_connected = Gauge(prefix + ("_connected_querier_clients"
                                           if prefix.endswith("scheduler") else "_connected_clients"),
                                 "Number of querier worker clients currently waiting for or "
                                 "executing work.", registry=registry)
        self.m_connected.set_function(lambda: len(self._waiters) + sum(
            1 for r in self.inflight.values() if r.state == "running"))

    # ---- frontends -------------------------------------------------------------------------

    def enqueue(self, tenant: str, payload: Any) -> "defer.Deferred[Any]":
        """Deferred[the execution's result]; fails at once with TooManyOutstandingRequests when
        the tenant already has max_outstanding_per_tenant requests waiting."""
        try:
            return self.add(tenant, payload).d
        except E.ComponentError as exc:
            return defer.fail(exc)

    def add(self, tenant: str, payload: Any) -> QueuedRequest:
        """enqueue() returning the queued request; raises TooManyOutstandingRequests."""
        if self.stopped:
            raise E.ComponentError(E.UNAVAILABLE, "queue is stopped")
        q = self._queues.get(tenant)
        if q is not None and len(q) >= self.max_outstanding_per_tenant:
            self.m_discarded.labels(tenant).inc()
            raise TooManyOutstandingRequests()
        if q is None:
            q = self._queues[tenant] = deque()
        req = QueuedRequest(self, self._next_id, tenant, payload, self.clock.seconds())
        self._next_id += 1
        q.append(req)
        self.inflight[req.id] = req
        self.m_length.labels(tenant).inc()
        self.m_inflight.inc()
        self._dispatch()
        return req

    def queued(self, tenant: str) -> int:
        q = self._queues.get(tenant)
        return len(q) if q is not None else 0

    def requeue(self, req: QueuedRequest) -> None:
        """A request taken for a worker that went away before receiving it: back to the front
        of its tenant's queue."""
        if req.state != "running" or req.d.called:
            return
        req.state = "queued"
        q = self._queues.get(req.tenant)
        if q is None:
            q = self._queues[req.tenant] = deque()
        self._queues.move_to_end(req.tenant, last=False)
        q.appendleft(req)
        self.m_length.labels(req.tenant).inc()
        self._dispatch()

    def _remove(self, req: QueuedRequest) -> None:
        q = self._queues.get(req.tenant)
        if q is not None:
            try:
                q.remove(req)
            except ValueError:
                return
            self.m_length.labels(req.tenant).dec()
            if not q:
                del self._queues[req.tenant]

    def _done(self, req: QueuedRequest) -> None:
        if self.inflight.pop(req.id, None) is not None:
            self.m_inflight.dec()

    # ---- querier workers -------------------------------------------------------------------

    def next_request(self, querier_id: str) -> "defer.Deferred[QueuedRequest]":
        """Deferred[the next request this querier may run], waiting until there is one;
        cancelling it stops waiting (a worker stopping or a long poll ending)."""
        known = len(self._queriers)
        self._seen(querier_id)
        req = self._pick(querier_id)
        if req is not None:
            return defer.succeed(req)
        if len(self._queriers) != known:
            # A new querier changes the tenants' shuffle shards: other waiting workers may now
            # serve tenants they could not before.
            self._dispatch()
        entry: list = []

        def cancel(d: "defer.Deferred[QueuedRequest]") -> None:
            try:
                self._waiters.remove(entry[0])
            except ValueError:
                pass
        d: "defer.Deferred[QueuedRequest]" = defer.Deferred(canceller=cancel)
        entry.append((querier_id, d))
        self._waiters.append(entry[0])
        return d

    def _seen(self, querier_id: str) -> None:
        if querier_id not in self._queriers:
            self._shards.clear()
            if len(self._queriers) >= 10_000:
                self.connected_queriers()       # forget the long-gone ones
        self._queriers[querier_id] = self.clock.seconds()

    def _dispatch(self) -> None:
        """Give queued work to waiting workers, in the order they started waiting."""
        for _ in range(len(self._waiters)):
            if not self._queues:
                return
            querier_id, d = self._waiters.popleft()
            req = self._pick(querier_id)
            if req is None:
                self._waiters.append((querier_id, d))
            else:
                d.callback(req)

    def _pick(self, querier_id: str) -> Optional[QueuedRequest]:
        """The first request of the first tenant in rotation order this querier may serve; that
        tenant moves to the back of the rotation."""
        for tenant in list(self._queues):
            if not self._allowed(tenant, querier_id):
                continue
            q = self._queues[tenant]
            req = q.popleft()
            if q:
                self._queues.move_to_end(tenant)
            else:
                del self._queues[tenant]
            self.m_length.labels(tenant).dec()
            self.m_duration.observe(max(0.0, self.clock.seconds() - req.enqueued_s))
            req.state = "running"
            return req
        return None

    def connected_queriers(self) -> list[str]:
        now = self.clock.seconds()
        waiting = {qid for qid, _ in self._waiters}
        for qid, seen in list(self._queriers.items()):
            if qid not in waiting and now - seen > QUERIER_FORGET_S:
                del self._queriers[qid]
                self._shards.clear()
        return sorted(self._queriers)

    def _allowed(self, tenant: str, querier_id: str) -> bool:
        n = self.max_queriers(tenant) if self.max_queriers is not None else 0
        if not n or n <= 0:
            return True
        queriers = self.connected_queriers()
        if n < 1:
            n = math.ceil(n * len(queriers))
        n = int(n)
        if n >= len(queriers):
            return True
        key = (tenant, n, tuple(queriers))
        shard = self._shards.get(key)
        if shard is None:
            seed = int.from_bytes(hashlib.sha256(tenant.encode("utf-8", "surrogateescape"))
                                  .digest()[:8], "big")
            shard = self._shards[key] = frozenset(random.Random(seed).sample(queriers, n))
        return querier_id in shard

    def stop(self) -> None:
        """Refuse new requests and fail the queued ones (their clients get 503)."""
        self.stopped = True
        for q in list(self._queues.values()):
            for req in list(q):
                self._remove(req)
                req.finish(Failure(E.ComponentError(E.UNAVAILABLE, "queue is stopped")))
        for _, d in list(self._waiters):
            d.cancel()


class QueuedQuerier:
    """The in-process querier behind the queue (-target=all): each instant or range query is a
    queued closure over `querier` that an in-process worker runs. Same calls as the querier's."""

    def __init__(self, queue: RequestQueue, querier: Any, timeout_s: float = 0.0) -> None:
        self.queue = queue
        self.querier = querier
        self.timeout_s = timeout_s      # -querier.timeout (0: none)
        self.clock = querier.clock
        self.offload = querier.offload
        self.read_runner: Optional[Callable[[str, str, dict], "defer.Deferred[bytes]"]] = None

    def range_query(self, tenant: str, query: str, start: int, end: int, step: int,
                    lookback_ms: Optional[int] = None, render: Any = None,
                    timeout_s: Optional[float] = None, parse: Any = None,
                    stats: Any = None) -> "defer.Deferred[Any]":
        return self._enqueue(tenant, timeout_s, lambda: self.querier.range_query(
            tenant, query, start, end, step, lookback_ms, render=render, timeout_s=timeout_s,
            parse=parse, stats=stats), stats)

    def instant_query(self, tenant: str, query: str, t: int, lookback_ms: Optional[int] = None,
                      render: Any = None, timeout_s: Optional[float] = None,
                      parse: Any = None, stats: Any = None) -> "defer.Deferred[Any]":
        return self._enqueue(tenant, timeout_s, lambda: self.querier.instant_query(
            tenant, query, t, lookback_ms, render=render, timeout_s=timeout_s, parse=parse,
            stats=stats), stats)

    def read_request(self, tenant: str, kind: str, args: dict) -> "defer.Deferred[bytes]":
        """A label names/values, series or cardinality request, queued like a query and run by
        `read_runner(tenant, kind, args)` (app/modules.py sets it: the querier's read API)."""
        runner = self.read_runner
        if runner is None:
            return defer.fail(E.ComponentError(E.UNAVAILABLE, "no querier for read requests"))
        return self._enqueue(tenant, None, lambda: runner(tenant, kind, args))

    def _enqueue(self, tenant: str, timeout_s: Optional[float],
                 run: Callable[[], Any], stats: Any = None) -> "defer.Deferred[Any]":
        # The query's deadline (-querier.timeout, or its shorter `timeout`) counts from when it
        # is queued, as in Mimir: a query still queued when it passes leaves the queue.
        from urdar.components.querier import shorter_timeout
        timeout = shorter_timeout(self.timeout_s, timeout_s)
        if stats is not None:
            # The query stats' queue_time_seconds: from here to when a worker takes it.
            queued_at = self.queue.clock.seconds()
            inner = run

            def run() -> Any:
                stats.add(queue_time_s=max(0.0, self.queue.clock.seconds() - queued_at))
                return inner()
        try:
            req = self.queue.add(tenant, run)
        except E.ComponentError as exc:
            return defer.fail(exc)
        if not timeout:
            return req.d
        clock = self.queue.clock
        expired: list[str] = []

        def expire() -> None:
            expired.append("the query queue" if req.state == "queued" else "expression evaluation")
            req.d.cancel()
        timer = clock.callLater(timeout, expire)

        def settle(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            if expired and isinstance(result, Failure) and result.check(defer.CancelledError):
                from urdar.components.querier import QueryTimeout
                return Failure(QueryTimeout(expired[0]))
            return result
        return req.d.addBoth(settle)


class QuerierWorkers:
    """`concurrency` loops (-querier.max-concurrent), each taking one request at a time with
    `fetch_next()` (Deferred[request or None when a long poll ended empty]) and running it with
    `execute(request)` (Deferred fired when done). A failing fetch (scheduler unreachable) is
    retried after `retry_s`."""

    def __init__(self, fetch_next: Callable[[], "defer.Deferred[Any]"],
                 execute: Callable[[Any], "defer.Deferred[Any]"], concurrency: int, clock: Any,
                 retry_s: float = 1.0) -> None:
        self.fetch_next = fetch_next
        self.execute = execute
        self.concurrency = max(1, concurrency)
        self.clock = clock
        self.retry_s = retry_s
        self.running = False
        self._pending: dict[int, Any] = {}

    def start(self) -> None:
        self.running = True
        for slot in range(self.concurrency):
            self._loop(slot)

    def stop(self) -> None:
        self.running = False
        for d in list(self._pending.values()):
            d.cancel()
        self._pending.clear()

    def _loop(self, slot: int) -> None:
        # A loop, not recursion: requests that are ready (and executions that finish at once)
        # are taken one after another without growing the stack.
        while self.running:
            got: list = []
            sync = [True]

            def took(item: Any, slot: int = slot) -> None:
                self._pending.pop(slot, None)
                if sync[0]:
                    got.append(item)
                else:
                    self._run(slot, item)

            def failed(f: Failure, slot: int = slot) -> None:
                self._pending.pop(slot, None)
                if not self.running or f.check(defer.CancelledError):
                    return
                log.warning("querier worker: fetching work failed: %s", f.getErrorMessage())
                self._pending[slot] = self.clock.callLater(self.retry_s, self._retry, slot)
            d = self.fetch_next()
            self._pending[slot] = d
            d.addCallbacks(took, failed)
            sync[0] = False
            if not got:
                return
            if not self._execute_now(slot, got[0]):
                return

    def _retry(self, slot: int) -> None:
        self._pending.pop(slot, None)
        self._loop(slot)

    def _execute_now(self, slot: int, item: Any) -> bool:
        """Start `item`; True when it finished at once (the caller's loop continues)."""
        if item is None:
            return True
        x = defer.maybeDeferred(self.execute, item)
        x.addErrback(lambda f: log.error("querier worker: %s", f.getErrorMessage()))
        if x.called:
            return True
        x.addCallback(lambda _: self._loop(slot))
        return False

    def _run(self, slot: int, item: Any) -> None:
        if self._execute_now(slot, item):
            self._loop(slot)


class Services:
    """Starts `parts` (objects with optional start/stop) in order and stops them in reverse: a
    query-frontend with its queue and the workers that empty it are one module."""

    def __init__(self, *parts: Any) -> None:
        self.parts = [p for p in parts if p is not None]

    def start(self) -> "defer.Deferred[None]":
        d: "defer.Deferred[Any]" = defer.succeed(None)
        for p in self.parts:
            if hasattr(p, "start"):
                d.addCallback(_call, p.start)
        return d.addCallback(lambda _: None)

    def stop(self) -> "defer.Deferred[None]":
        d: "defer.Deferred[Any]" = defer.succeed(None)
        for p in reversed(self.parts):
            if hasattr(p, "stop"):
                d.addCallback(_call, p.stop)
        return d.addCallback(lambda _: None)


def _call(_: Any, fn: Callable[[], Any]) -> Any:
    return fn()


# ---- queries as JSON requests, for queriers in other processes ---------------------------------

class LocalDispatch:
    """`enqueue(tenant, payload)` into this process' queue, for remote queriers to take (a
    query-frontend without a query-scheduler): the result is what they post back, (cause, body)."""

    def __init__(self, queue: RequestQueue) -> None:
        self.queue = queue

    def enqueue(self, tenant: str, payload: dict, timeout_s: Optional[float] = None
                ) -> "defer.Deferred[Any]":
        return self.queue.enqueue(tenant, payload)


class RemoteQuerier:
    """Queries sent as JSON requests (see net/schedulerclient.py) to queriers in other processes
    through `dispatch` (a net/schedulerclient.SchedulerClient or a LocalDispatch). A querier's
    answer is the Prometheus API body; it is decoded back into a promql Result in the pool, so the
    frontend splits, caches and renders exactly as with a local querier. A failed query fails with
    the querier's cause and message."""

    # Waiting for an answer takes at most the querier's own deadline plus this (a querier that
    # died with the request does not hold the client forever).
    DEADLINE_MARGIN_S = 30.0

    def __init__(self, dispatch: Any, offload: Any, clock: Any, timeout_s: float = 120.0,
                 pool: str = "query") -> None:
        self.dispatch = dispatch
        self.offload = offload
        self.clock = clock
        self.timeout_s = timeout_s
        self.pool = pool

    def range_query(self, tenant: str, query: str, start: int, end: int, step: int,
                    lookback_ms: Optional[int] = None, render: Any = None,
                    timeout_s: Optional[float] = None, parse: Any = None,
                    stats: Any = None) -> "defer.Deferred[Any]":
        return self._send(tenant, {"kind": "query_range", "query": query, "start": start,
                                   "end": end, "step": step, "lookback_ms": lookback_ms,
                                   "timeout_s": timeout_s}, render, timeout_s, stats=stats)

    def instant_query(self, tenant: str, query: str, t: int, lookback_ms: Optional[int] = None,
                      render: Any = None, timeout_s: Optional[float] = None,
                      parse: Any = None, stats: Any = None) -> "defer.Deferred[Any]":
        return self._send(tenant, {"kind": "query", "query": query, "time": t,
                                   "lookback_ms": lookback_ms, "timeout_s": timeout_s},
                          render, timeout_s, stats=stats)

    def read_request(self, tenant: str, kind: str, args: dict) -> "defer.Deferred[bytes]":
        """A label names/values, series or cardinality request: the querier's body as it is."""
        return self._send(tenant, {"kind": "read", "api": kind, "args": args}, None, None,
                          raw=True)

    def _send(self, tenant: str, payload: dict, render: Any,
              timeout_s: Optional[float], raw: bool = False,
              stats: Any = None) -> "defer.Deferred[Any]":
        """`stats` (components/querystats.QueryStats): the querier is asked for its counts
        (fetched series, chunks, samples, wall time) and they are added to it."""
        from urdar.components.querier import shorter_timeout
        deadline = shorter_timeout(self.timeout_s, timeout_s)
        if stats is not None:
            payload["stats"] = True
        d = self.dispatch.enqueue(tenant, payload, timeout_s=deadline + self.DEADLINE_MARGIN_S)

        def answered(out: tuple) -> Any:
            cause, body = out[0], out[1]
            if stats is not None and cause is None:
                counts = _stats_counts(out[2] if len(out) > 2 else None)
                stats.add_remote(counts)
            if cause is not None:
                if cause not in E.CAUSES:
                    cause = E.INTERNAL
                raise E.ComponentError(cause, bytes(body).decode("utf-8", "replace").rstrip("\n"))
            if raw:
                return bytes(body)
            return self.offload.run(self.pool, _decode_and_render, body, render)
        return d.addCallback(answered)


def _stats_counts(raw: Any) -> dict:
    """A querier's stats header -> its counts ({} when absent or not a JSON object)."""
    import json
    if not raw:
        return {}
    try:
        counts = json.loads(raw)
    except ValueError:
        return {}
    return counts if isinstance(counts, dict) else {}


def _decode_and_render(body: bytes, render: Any) -> Any:
    """Pool: a querier's success body -> render(Result) (or the Result)."""
    result = result_from_json(body)
    return render(result) if render is not None else result


def _ms(t: Any) -> int:
    return int(round(float(t) * 1000))


def result_from_json(body: bytes) -> Any:
    """The Prometheus API success envelope of a query -> promql Result (values parsed back from
    their text: the same float64 the querier rendered). ValueError when it is not one."""
    import json
    from array import array

    from urdar.promql.value import JsonHistogram, Result
    doc = json.loads(body)
    if not isinstance(doc, dict) or doc.get("status") != "success":
        raise ValueError("not a query answer")
    data = doc["data"]
    kind = data["resultType"]
    warnings = list(doc.get("warnings", ()))
    infos = list(doc.get("infos", ()))
    res = data["result"]

    def labels(m: dict) -> tuple:
        return tuple(sorted(m.items()))
    def hist(obj: Any) -> JsonHistogram:
        return JsonHistogram(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))
    if kind == "matrix":
        value: Any = []
        for s in res:
            fl = s.get("values", ())
            item: tuple = (labels(s["metric"]), array("q", [_ms(p[0]) for p in fl]),
                           array("d", [float(p[1]) for p in fl]))
            hs = s.get("histograms")
            if hs:
                item += (array("q", [_ms(p[0]) for p in hs]), [hist(p[1]) for p in hs])
            value.append(item)
        return Result("matrix", value, 0, warnings, infos)
    if kind == "vector":
        t = _ms((res[0].get("value") or res[0]["histogram"])[0]) if res else 0
        return Result("vector", [(labels(s["metric"]), float(s["value"][1]) if "value" in s
                                  else hist(s["histogram"][1])) for s in res], t,
                      warnings, infos)
    if kind == "scalar":
        return Result("scalar", float(res[1]), _ms(res[0]), warnings, infos)
    if kind == "string":
        return Result("string", str(res[1]), _ms(res[0]), warnings, infos)
    raise ValueError("unknown result type %r" % (kind,))
