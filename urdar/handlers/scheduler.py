"""Server side of the work-pull protocol (net/schedulerclient.py describes it): the query queue's
endpoints, served by -target=query-scheduler and by a query-frontend that queues queries itself
for remote queriers (-querier.frontend-address), and `QuerierExecutor`, which runs a pulled
request on the querier of this process with the query API's own parsing and rendering, so a
remote querier answers exactly what /api/v1/query and /api/v1/query_range answer."""
import json
import logging
from typing import Any, Optional

from twisted.internet import defer

from urdar.components import errors as E
from urdar.components.scheduler import RequestQueue
from urdar.handlers.errors import as_component_error, classify, text_response
from urdar.handlers.querier import _render_result, parse_query, parse_range_query, run_read_api
from urdar.handlers.routes import require_tenant, route
from urdar.net.schedulerclient import (CAUSE_HEADER, MAX_STATS_HEADER_BYTES, PATH_ENQUEUE,
                                       PATH_NEXT, PATH_RESULT, STATS_HEADER)

log = logging.getLogger("urdar.handlers.scheduler")

MAX_REQUEST_BYTES = 8 << 20      # a request for a querier: mostly the query text
MAX_WAIT_S = 60.0                # longest long poll of a querier worker


def _cause_response(request: Any, exc: Any) -> bytes:
    """A failure as the protocol carries it: its status, its cause in X-Urdar-Cause, its text."""
    status, err = as_component_error(exc)
    request.setHeader(CAUSE_HEADER.encode(), err.cause.encode())
    return text_response(request, status, err.message)


class SchedulerHandlers:
    """The queue's three endpoints over `queue` (components/scheduler.RequestQueue)."""
    ADMIT = dict(enqueue="admit_enqueue")
    tenancy = None      # set by the route table when it mounts this handler

    def __init__(self, queue: RequestQueue, clock: Any) -> None:
        self.queue = queue
        self.clock = clock
        self.ROUTES = (
            route(PATH_ENQUEUE, ("POST",), "enqueue", tenant=True),
            route(PATH_NEXT, ("POST",), "next"),
            route(PATH_RESULT, ("POST",), "result"),
        )

    def admit_enqueue(self, headers: Any, length: Any) -> Any:
        return require_tenant(self.tenancy, headers, MAX_REQUEST_BYTES)

    def enqueue(self, request: Any, tenant: str) -> Any:
        try:
            payload = json.loads(request.content.read())
            if not isinstance(payload, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            return _cause_response(request, E.ComponentError(E.BAD_DATA, "bad request: %s" % exc))
        d = self.queue.enqueue(tenant, payload)

        def answered(out: tuple) -> bytes:
            cause, body = out[0], out[1]
            stats = out[2] if len(out) > 2 else None
            if stats:
                request.setHeader(STATS_HEADER.encode(), stats)
            if cause is not None:
                return _cause_response(request, E.ComponentError(
                    cause, bytes(body).decode("utf-8", "replace")))
            request.setResponseCode(200)
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Content-Length", b"%d" % len(body))
            return bytes(body)
        # A frontend that hangs up cancels `d` (Klein does): the request leaves the queue.
        return d.addCallbacks(answered, lambda f: _cause_response(request, f))

    def next(self, request: Any) -> Any:
        qid = (request.args.get(b"querier_id") or [b""])[0].decode("utf-8", "replace")
        if not qid:
            return text_response(request, 400, "querier_id is required")
        try:
            wait_s = min(MAX_WAIT_S, max(0.0, float((request.args.get(b"wait_s") or [b"15"])[0])))
        except ValueError:
            return text_response(request, 400, "wait_s must be a number of seconds")
        d = self.queue.next_request(qid)
        timer = self.clock.callLater(wait_s, d.cancel)

        def give(req: Any) -> bytes:
            if timer.active():
                timer.cancel()
            if getattr(request, "_disconnected", False):
                # The worker went away while waiting: the request goes back to the front.
                self.queue.requeue(req)
                return b""
            body = json.dumps({"id": req.id, "tenant": req.tenant, "payload": req.payload},
                              separators=(",", ":")).encode()
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Content-Length", b"%d" % len(body))
            return body

        def empty(f: Any) -> Any:
            if timer.active():
                timer.cancel()
            f.trap(defer.CancelledError)
            request.setResponseCode(204)
            return b""
        return d.addCallbacks(give, empty)

    def result(self, request: Any) -> bytes:
        try:
            rid = int((request.args.get(b"id") or [b""])[0])
        except ValueError:
            return text_response(request, 400, "id must be an integer")
        req = self.queue.inflight.get(rid)
        if req is None or req.state != "running":
            return text_response(request, 404, "no such request (it was cancelled)")
        cause = request.requestHeaders.getRawHeaders(CAUSE_HEADER.encode())
        stats = request.requestHeaders.getRawHeaders(STATS_HEADER.encode())
        stats_raw = stats[0] if stats and len(stats[0]) <= MAX_STATS_HEADER_BYTES else None
        body = request.content.read()
        req.finish((cause[0].decode("ascii", "replace") if cause else None, body, stats_raw))
        request.setResponseCode(204)
        return b""


class QuerierExecutor:
    """Runs pulled requests on `querier` (components/querier.Querier): Deferred[(cause or None,
    body, stats)], the body being the query API's answer or the failure's message, stats the
    query's counts (components/querystats.QueryStats.REMOTE_FIELDS) when the request asked for
    them and succeeded, else None."""

    def __init__(self, querier: Any) -> None:
        self.querier = querier

    def run(self, tenant: str, payload: dict
            ) -> "defer.Deferred[tuple[Optional[str], bytes, Optional[dict]]]":
        from urdar.components.querystats import QueryStats
        stats = QueryStats() if payload.get("stats") is True else None
        d = defer.maybeDeferred(self._call, tenant, payload, stats)

        def failed(f: Any) -> tuple[Optional[str], bytes, Optional[dict]]:
            err = classify(f)
            return err.cause, err.message.encode("utf-8", "replace"), None
        return d.addCallbacks(
            lambda body: (None, body, stats.remote_counts() if stats is not None else None),
            failed)

    def _call(self, tenant: str, p: dict, stats: Any = None) -> Any:
        kind = p.get("kind")
        timeout_s = p.get("timeout_s")
        if kind == "query_range":
            return self.querier.range_query(tenant, str(p["query"]), int(p["start"]), int(p["end"]),
                                            int(p["step"]), p.get("lookback_ms"),
                                            render=_render_result, timeout_s=timeout_s,
                                            parse=parse_range_query, stats=stats)
        if kind == "query":
            return self.querier.instant_query(tenant, str(p["query"]), int(p["time"]),
                                              p.get("lookback_ms"), render=_render_result,
                                              timeout_s=timeout_s, parse=parse_query, stats=stats)
        if kind == "read":
            args = p.get("args")
            if not isinstance(args, dict) or not all(
                    isinstance(v, list) and all(isinstance(x, str) for x in v)
                    for v in args.values()):
                raise E.ComponentError(E.BAD_DATA, "bad read request parameters")
            return run_read_api(self.querier, self.querier.offload, "query", tenant,
                                str(p.get("api")), args)
        raise E.ComponentError(E.BAD_DATA, "unknown request kind %r" % (kind,))
