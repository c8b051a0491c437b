"""The query queue (components/scheduler.py): per-tenant FIFOs served round-robin, 429 past
-query-scheduler.max-outstanding-requests-per-tenant, cancellation, shuffle sharding; and in a whole
-target=all process (StubTreq, inline pools, a fake clock) the in-process workers running queries
from it, with a querier made slow on purpose."""
import json
from urllib.parse import urlencode

from treq.testing import StubTreq
from twisted.internet import defer, task
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support.app import started_modules
from urdar.components import errors as E
from urdar.components.scheduler import QuerierWorkers, RequestQueue, TooManyOutstandingRequests

NOW_S = 1_699_999_980
P = "http://urdar/prometheus/api/v1/"
POOLS = (("decode", 2, 10), ("append", 2, 10), ("compact", 1, 10), ("admin", 1, 10),
         ("query", 2, 1000))
SLOW_S = 10.0


def done(d):
    """Whether a Deferred has its final result (not paused waiting on another)."""
    return d.called and not d.paused


class RequestQueueTests(SynchronousTestCase):

    def setUp(self):
        self.clock = Clock()
        self.queue = RequestQueue(self.clock, max_outstanding_per_tenant=5)

    def take_all(self, querier_id="q1", limit=100):
        order = []
        for _ in range(limit):
            d = self.queue.next_request(querier_id)
            if not d.called:
                d.addErrback(lambda f: None)
                d.cancel()
                break
            req = self.successResultOf(d)
            order.append(req.payload)
            req.finish(None)
        return order

    def test_round_robin_across_tenants(self):
        """A tenant with five queued requests and one with two take turns: a, b, a, b, then a's rest."""
        for i in range(5):
            self.queue.enqueue("a", "a%d" % i)
        for i in range(2):
            self.queue.enqueue("b", "b%d" % i)
        self.assertEqual(self.take_all(), ["a0", "b0", "a1", "b1", "a2", "a3", "a4"])

    def test_full_tenant_queue_refused(self):
        """The sixth queued request of a tenant fails with Mimir's 'too many outstanding
        requests' (rate_limited: 429); another tenant still enqueues."""
        for i in range(5):
            self.queue.enqueue("a", i)
        f = self.failureResultOf(self.queue.enqueue("a", 5), TooManyOutstandingRequests)
        self.assertEqual(f.value.cause, E.RATE_LIMITED)
        self.assertEqual(f.value.message, "too many outstanding requests")
        self.assertNoResult(self.queue.enqueue("b", 0))
        self.assertEqual(self.queue.queued("a"), 5)

    def test_cancelled_request_leaves_queue(self):
        """A cancelled queued request is gone: the worker never sees it, and it no longer
        counts against the tenant's limit."""
        ds = [self.queue.enqueue("a", i) for i in range(5)]
        ds[2].cancel()
        self.failureResultOf(ds[2], defer.CancelledError)
        self.assertEqual(self.queue.queued("a"), 4)
        self.assertNoResult(self.queue.enqueue("a", 5))
        self.assertEqual(self.take_all(), [0, 1, 3, 4, 5])

    def test_waiting_worker_gets_new_request(self):
        """A worker waiting on an empty queue gets the next request as soon as it is enqueued,
        and its result reaches the requester."""
        d = self.queue.next_request("q1")
        self.assertNoResult(d)
        result = self.queue.enqueue("a", "x")
        req = self.successResultOf(d)
        self.assertEqual((req.tenant, req.payload), ("a", "x"))
        req.finish("answer")
        self.assertEqual(self.successResultOf(result), "answer")

    def test_cancel_running_request_cancels_execution(self):
        """Cancelling a request a worker is running cancels the execution's Deferred."""
        cancelled = []
        running = defer.Deferred(lambda d: cancelled.append(True))
        result = self.queue.enqueue("a", lambda: running)
        req = self.successResultOf(self.queue.next_request("q1"))
        done = req.run()
        result.cancel()
        self.assertEqual(cancelled, [True])
        self.failureResultOf(result, defer.CancelledError)
        self.successResultOf(done)
        self.assertEqual(self.queue.inflight, {})

    def test_shuffle_shard_limits_queriers_of_a_tenant(self):
        """With max_queriers_per_tenant 1 of 3 connected queriers, only one querier ever takes
        the tenant's requests; the others keep waiting."""
        queue = RequestQueue(self.clock, 100, max_queriers=lambda tenant: 1)
        waits = {q: queue.next_request(q) for q in ("q1", "q2", "q3")}
        for i in range(3):
            queue.enqueue("a", i)
        got = [q for q, d in waits.items() if d.called]
        self.assertEqual(len(got), 1)
        owner = got[0]
        for q in ("q1", "q2", "q3"):
            if q != owner:
                self.assertNoResult(waits[q])
        for _ in range(2):
            self.assertTrue(queue.next_request(owner).called)


class Slow:
    """The querier of the process, answering only SLOW_S seconds (fake clock) after it was
    asked; records what it ran."""

    def __init__(self, querier, clock):
        self.querier = querier
        self.clock = clock
        self.started = []

    def instant_query(self, tenant, query, t, *args, **kw):
        self.started.append((tenant, query))
        return task.deferLater(self.clock, SLOW_S, self.querier.instant_query, tenant, query, t,
                               *args, **kw).addCallback(lambda d: d)

    def range_query(self, tenant, query, *args, **kw):
        self.started.append((tenant, query))
        return task.deferLater(self.clock, SLOW_S, self.querier.range_query, tenant, query,
                               *args, **kw)


class ProcessCase(SynchronousTestCase):
    """-target=all: query_range and query go through the frontend's queue to in-process workers."""
    config = {"querier.max_concurrent": 2,
              "query_scheduler.max_outstanding_requests_per_tenant": 100}

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW_S)
        self.modules = started_modules(self, self.clock, self.config, POOLS)
        self.addCleanup(lambda: self.successResultOf(self.modules.stop()))
        self.treq = StubTreq(self.modules.resource())
        dispatch = self.modules.frontend.querier
        self.slow = dispatch.querier = Slow(dispatch.querier, self.clock)

    def advance(self, s):
        self.clock.advance(s)
        self.treq.flush()       # deliver the responses of handlers that answered later

    def ask(self, tenant, query, timeout=None):
        params = {"query": query, "time": NOW_S}
        if timeout:
            params["timeout"] = timeout
        qs = urlencode(params)
        return self.treq.get(P + "query?" + qs, headers={"X-Scope-OrgID": tenant})

    def answer(self, d):
        self.treq.flush()
        r = self.successResultOf(d)
        return r.code, json.loads(self.successResultOf(r.content()))

    def metric(self, name, **labels):
        text = self.successResultOf(self.successResultOf(self.treq.get("http://urdar/metrics")).text())
        want = name + ("{%s}" % ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
                       if labels else "")
        for line in text.splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return None



class InProcessQueueTests(ProcessCase):
    # The flood takes 300 s to drain: within -querier.timeout here.
    config = dict(ProcessCase.config, **{"querier.timeout": 600_000})

    def test_flooding_tenant_does_not_starve_another(self):
        """Tenant a queues 60 slow queries; tenant b's query, sent after them, is answered within
        two slow-query times (b's turn comes after at most one of a's per worker), while a's
        flood needs 300 s."""
        flood = [self.ask("a", "vector(%d)" % i) for i in range(60)]
        self.advance(1)
        b = self.ask("b", "vector(42)")
        waited = 0.0
        while not done(b) and waited < 100:
            self.advance(1)
            waited += 1
        self.assertLessEqual(waited, 2 * SLOW_S)
        code, body = self.answer(b)
        self.assertEqual(code, 200)
        self.assertEqual(body["data"]["result"][0]["value"][1], "42")
        self.assertGreater(sum(1 for d in flood if not done(d)), 50)
        for _ in range(400):
            if all(done(d) for d in flood):
                break
            self.advance(1)
        self.assertEqual([self.answer(d)[0] for d in flood], [200] * 60)

    def test_range_queries_queue_too(self):
        """A range query is answered by an in-process worker through the queue, with the
        same body as the querier's own."""
        qs = urlencode({"query": "vector(3)", "start": NOW_S - 600, "end": NOW_S, "step": 60})
        d = self.treq.get(P + "query_range?" + qs, headers={"X-Scope-OrgID": "a"})
        self.assertNoResult(d)
        self.advance(SLOW_S)
        code, body = self.answer(d)
        self.assertEqual(code, 200)
        self.assertEqual(len(body["data"]["result"][0]["values"]), 11)
        self.assertEqual(self.slow.started, [("a", "vector(3)")])

    def test_queue_metrics(self):
        """cortex_query_frontend_queue_length counts a tenant's waiting queries and
        cortex_query_frontend_queue_duration_seconds observes each one's wait."""
        ds = [self.ask("a", "vector(1)") for _ in range(5)]
        self.assertEqual(self.metric("cortex_query_frontend_queue_length", user="a"), 3)
        self.assertEqual(self.metric("cortex_query_frontend_queue_duration_seconds_count"), 2)
        self.assertEqual(self.metric("cortex_query_frontend_inflight_requests"), 5)
        self.advance(SLOW_S)
        self.advance(SLOW_S)
        self.advance(SLOW_S)
        self.assertTrue(all(done(d) for d in ds))
        self.assertEqual(self.metric("cortex_query_frontend_queue_length", user="a"), 0)
        self.assertEqual(self.metric("cortex_query_frontend_queue_duration_seconds_count"), 5)
        # Two waited 0 s, two one query's time, the last two queries' time.
        self.assertEqual(self.metric("cortex_query_frontend_queue_duration_seconds_sum"),
                         4 * SLOW_S)


class TooManyRequestsTests(ProcessCase):
    config = {"querier.max_concurrent": 1,
              "query_scheduler.max_outstanding_requests_per_tenant": 3}

    def test_full_queue_answers_429(self):
        """With one worker busy and three queries waiting, tenant a's next query answers 429
        too_many_requests 'too many outstanding requests'; tenant b's query is still answered."""
        first = [self.ask("a", "vector(1)") for _ in range(4)]
        code, body = self.answer(self.ask("a", "vector(1)"))
        self.assertEqual(code, 429)
        self.assertEqual(body, {"status": "error", "errorType": "too_many_requests",
                                "error": "too many outstanding requests"})
        self.assertEqual(self.metric("cortex_query_frontend_discarded_requests_total", user="a"), 1)
        b = self.ask("b", "vector(2)")
        for _ in range(10):
            self.advance(SLOW_S)
        self.assertEqual(self.answer(b)[0], 200)
        self.assertEqual([self.answer(d)[0] for d in first], [200] * 4)

    def test_cancelled_query_never_runs(self):
        """A queued query whose client goes away leaves the queue and is never executed."""
        busy = self.ask("a", "vector(1)")
        self.assertEqual(len(self.slow.started), 1)
        gone = self.ask("a", "vector(99)")          # the client hangs up while it waits
        self.assertEqual(self.metric("cortex_query_frontend_queue_length", user="a"), 1)
        gone.addErrback(lambda f: None)
        gone.cancel()
        self.treq.flush()
        self.assertEqual(self.metric("cortex_query_frontend_queue_length", user="a"), 0)
        also = self.modules.frontend.instant_query("a", "vector(98)", NOW_S * 1000)
        also.cancel()                                # a cancelled call, not through HTTP
        self.failureResultOf(also, defer.CancelledError)
        self.assertEqual(self.metric("cortex_query_frontend_queue_length", user="a"), 0)
        for _ in range(5):
            self.advance(SLOW_S)
        self.assertEqual(self.answer(busy)[0], 200)
        self.assertEqual(self.slow.started, [("a", "vector(1)")])


class WorkerLoopTests(SynchronousTestCase):

    def test_many_ready_requests_do_not_grow_the_stack(self):
        """A worker finds 5000 requests ready and finishing at once, and runs them all without
        hitting the recursion limit."""
        clock = Clock()
        queue = RequestQueue(clock, 10_000)
        ds = [queue.enqueue("a", lambda: i) for i in range(5000)]
        workers = QuerierWorkers(lambda: queue.next_request("q"), lambda r: r.run(), 1, clock)
        workers.start()
        self.assertEqual([self.successResultOf(d) for d in ds][-1], 4999)
        workers.stop()

    def test_failing_fetch_is_retried(self):
        """A worker whose fetch fails (scheduler unreachable) tries again after retry_s."""
        clock = Clock()
        calls = []

        def fetch():
            calls.append(clock.seconds())
            return defer.fail(ConnectionRefusedError())
        workers = QuerierWorkers(fetch, lambda r: None, 1, clock, retry_s=2)
        workers.start()
        clock.advance(2)
        clock.advance(2)
        self.assertEqual(calls, [0, 2, 4])
        workers.stop()
        clock.advance(10)
        self.assertEqual(len(calls), 3)
        self.flushLoggedErrors()


class QueueTimeoutTests(ProcessCase):
    config = {"querier.max_concurrent": 1, "querier.timeout": 15_000}

    def test_query_timing_out_in_the_queue_leaves_it(self):
        """A query's deadline counts from when it is queued: one whose `timeout` passes while
        it waits behind a slow query answers 503 timeout and is never run; one whose deadline
        passes after it started times out in evaluation."""
        first = self.ask("a", "vector(1)")
        short = self.ask("a", "vector(2)", timeout="5s")
        later = self.ask("a", "vector(3)", timeout="12s")
        self.advance(5)
        code, body = self.answer(short)
        self.assertEqual((code, body["errorType"], body["error"]),
                         (503, "timeout", "query timed out in the query queue"))
        self.advance(5)
        self.assertEqual(self.answer(first)[0], 200)
        self.advance(2)
        code, body = self.answer(later)
        self.assertEqual((code, body["errorType"], body["error"]),
                         (503, "timeout", "query timed out in expression evaluation"))
        self.assertEqual(self.slow.started, [("a", "vector(1)"), ("a", "vector(3)")])
        self.assertEqual(self.modules.frontend.querier.queue.inflight, {})


class ShuffleShardTests(SynchronousTestCase):

    def test_querier_connecting_later_takes_its_tenants_work(self):
        """With max_queriers_per_tenant 1, work queued while only another querier waits goes
        to whichever querier the shard picks once both are connected, never to both."""
        clock = Clock()
        queue = RequestQueue(clock, 100, max_queriers=lambda tenant: 1)
        first = queue.next_request("q1")
        queue.enqueue("a", "x")
        self.assertTrue(first.called)           # one querier: it takes everything
        self.successResultOf(first).finish(None)
        waits = {q: queue.next_request(q) for q in ("q1", "q2")}
        queue.enqueue("a", "y")
        self.assertEqual(sum(1 for d in waits.values() if d.called), 1)
        for d in waits.values():
            if not d.called:
                d.addErrback(lambda f: None)
                d.cancel()
