"""The work-pull protocol end to end in one test process: a frontend's RemoteQuerier enqueues
over HTTP (StubTreq, no sockets) into the scheduler's endpoints, a querier worker pulls the
request, runs it on a real Querier and posts the answer back; answers, errors, 429s and
cancellation come out as the query API gives them."""
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from treq.testing import StubTreq

from tests.support.threads import inline_offload
from urdar.app.config import Config
from urdar.components import errors as E
from urdar.components.limits import Overrides
from urdar.components.querier import Querier
from urdar.components.scheduler import QuerierWorkers, RemoteQuerier, RequestQueue
from urdar.handlers.querier import _render_result, parse_query
from urdar.handlers.routes import RouteTable
from urdar.handlers.scheduler import QuerierExecutor, SchedulerHandlers
from urdar.net.schedulerclient import SchedulerClient

T_MS = 1_700_000_000_000


class ProtocolTests(SynchronousTestCase):

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(T_MS / 1000)
        self.queue = RequestQueue(self.clock, max_outstanding_per_tenant=2)
        table = RouteTable()
        table.mount(SchedulerHandlers(self.queue, self.clock))
        self.stub = StubTreq(table.resource())
        offload = inline_offload((("query", 2, 100),))
        self.querier = Querier([], offload, self.clock, Overrides(Config().limits_defaults()))
        client = SchedulerClient("scheduler:9095", None, self.clock, http=self.stub, long_poll_s=5)
        self.remote = RemoteQuerier(client, offload, self.clock)
        executor = QuerierExecutor(self.querier)
        self.executed = []

        def execute(work):
            self.executed.append(work["payload"]["query"])
            d = executor.run(work["tenant"], work["payload"])
            return d.addCallback(lambda out: client.result(work["id"], out[0], out[1]))
        self.workers = QuerierWorkers(lambda: client.next("querier-1"), execute, 1, self.clock)

    def pump(self, d, rounds=20):
        for _ in range(rounds):
            if d.called and not d.paused:
                break
            self.stub.flush()
        return d

    def local(self, query):
        return self.successResultOf(self.querier.instant_query(
            "t1", query, T_MS, render=_render_result, parse=parse_query))

    def test_instant_and_range_answers_match_the_local_querier(self):
        """An instant query and a range query answered by the remote querier render the same
        bytes as the querier of this process."""
        self.workers.start()
        self.addCleanup(self.workers.stop)
        for query in ('vector(7)', 'label_replace(vector(1.5), "a", "b", "", "")', 'time()',
                      '"text"'):
            got = self.pump(self.remote.instant_query("t1", query, T_MS, render=_render_result))
            self.assertEqual(self.successResultOf(got), self.local(query), query)
        got = self.pump(self.remote.range_query("t1", "vector(2) * 1e-3", T_MS - 600_000, T_MS,
                                                60_000, render=_render_result))
        want = self.successResultOf(self.querier.range_query(
            "t1", "vector(2) * 1e-3", T_MS - 600_000, T_MS, 60_000, render=_render_result))
        self.assertEqual(self.successResultOf(got), want)

    def test_query_errors_keep_cause_and_message(self):
        """A query that does not parse fails with bad_data and the querier's own message."""
        self.workers.start()
        self.addCleanup(self.workers.stop)
        f = self.failureResultOf(self.pump(self.remote.instant_query("t1", "sum(", T_MS)),
                                 E.ComponentError)
        self.assertEqual(f.value.cause, E.BAD_DATA)
        local = self.failureResultOf(self.querier.instant_query("t1", "sum(", T_MS,
                                                                parse=parse_query))
        self.assertEqual(f.value.message, local.value.message)

    def test_full_queue_is_429_through_the_protocol(self):
        """With no querier pulling and two requests queued, the third fails with
        rate_limited 'too many outstanding requests'; another tenant is still queued."""
        waiting = [self.remote.instant_query("t1", "vector(1)", T_MS) for _ in range(2)]
        self.stub.flush()
        f = self.failureResultOf(self.pump(self.remote.instant_query("t1", "vector(1)", T_MS)),
                                 E.ComponentError)
        self.assertEqual((f.value.cause, f.value.message),
                         (E.RATE_LIMITED, "too many outstanding requests"))
        other = self.remote.instant_query("t2", "vector(1)", T_MS)
        self.stub.flush()
        self.assertEqual(self.queue.queued("t2"), 1)
        self.workers.start()
        self.addCleanup(self.workers.stop)
        for d in waiting + [other]:
            self.successResultOf(self.pump(d))

    def test_long_poll_ends_empty_and_worker_polls_again(self):
        """A worker's long poll answers 204 after wait_s without work; the worker asks again
        and gets the request enqueued later."""
        self.workers.start()
        self.addCleanup(self.workers.stop)
        self.stub.flush()
        self.clock.advance(5)
        self.stub.flush()
        self.assertEqual(len(self.queue._waiters), 1)
        got = self.pump(self.remote.instant_query("t1", "vector(3)", T_MS, render=_render_result))
        self.assertEqual(self.successResultOf(got), self.local("vector(3)"))

    def test_cancelled_request_leaves_queue_and_never_runs(self):
        """A frontend request cancelled while queued is gone from the scheduler's queue and no
        querier ever runs it."""
        d = self.remote.instant_query("t1", "vector(99)", T_MS)
        self.stub.flush()
        self.assertEqual(self.queue.queued("t1"), 1)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.stub.flush()
        self.assertEqual(self.queue.queued("t1"), 0)
        self.workers.start()
        self.addCleanup(self.workers.stop)
        self.stub.flush()
        self.assertEqual(self.executed, [])


class SchedulerRingTests(SynchronousTestCase):

    def test_ring_mode_registers_the_scheduler_and_frontends_find_it(self):
        """-query-scheduler.service-discovery-mode=ring: the query-scheduler is ACTIVE on
        /query-scheduler/ring and a query-frontend in the same KV store sends its queries to the
        scheduler's ring address."""
        import json
        from tests.app.test_modules import modules
        m = modules(self, ["-target=query-scheduler,query-frontend",
                           "-query-scheduler.service-discovery-mode=ring",
                           "-query-scheduler.ring.instance-id=sched-1",
                           "-query-scheduler.ring.instance-addr=10.0.0.7",
                           "-server.http-listen-port=9095"])
        self.successResultOf(m.start())
        self.addCleanup(lambda: self.successResultOf(m.stop()))
        stub = StubTreq(m.resource())
        r = self.successResultOf(stub.get("http://urdar/query-scheduler/ring",
                                          headers={"Accept": "application/json"}))
        self.assertEqual(r.code, 200)
        shards = json.loads(self.successResultOf(r.content()))["shards"]
        self.assertEqual([(s["id"], s["state"], s["address"]) for s in shards],
                         [("sched-1", "ACTIVE", "10.0.0.7:9095")])
        self.assertEqual(m.frontend.querier.dispatch.addresses(), ["10.0.0.7:9095"])

    def test_dns_mode_has_no_scheduler_ring(self):
        """Without ring mode the query-scheduler is a single instance: no ring page."""
        from tests.app.test_modules import modules
        m = modules(self, ["-target=query-scheduler"])
        self.assertNotIn("/query-scheduler/ring", [r.path for r in m.routes()])
