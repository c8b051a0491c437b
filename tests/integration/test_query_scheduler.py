"""Three `python -m urdar` processes on 127.0.0.1: a query-scheduler, a query-frontend sending
queries to it (-query-frontend.scheduler-address) and a querier (with its ingester) whose workers
pull them (-querier.scheduler-address). Queries through the frontend answer what the querier
answers directly; with no querier running, a tenant's full queue answers 429 through the frontend,
a client that hangs up leaves the queue, and the waiting queries are answered once a querier
comes."""
import json
import os
import re
import tempfile
import threading
import time
import unittest
import urllib.parse
import urllib.request

import cramjam

from tests.support.etcd import Etcd, have_etcd
from tests.support.services import Urdar, http, wait_for
from urdar.engine.remotewrite import encode_write_request


def metric(base, name, **labels):
    status, body = http("GET", base + "/metrics")
    assert status == 200
    want = name + ("{%s}" % ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
                   if labels else "")
    for line in body.decode().splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return None


class QuerySchedulerTests(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="urdar-sched-")
        self.addCleanup(self.tmp.cleanup)

    def cluster(self, max_outstanding=100):
        """Start the query-scheduler and the query-frontend."""
        self.scheduler = self.start("scheduler", "-target=query-scheduler",
                                    "-query-scheduler.max-outstanding-requests-per-tenant=%d"
                                    % max_outstanding)
        self.addr = "127.0.0.1:%d" % self.scheduler.port
        # Range queries are split in 5-minute parts and cached: each part goes through the
        # scheduler on its own.
        self.frontend = self.start("frontend", "-target=query-frontend",
                                   "-query-frontend.scheduler-address=" + self.addr,
                                   "-query-frontend.split-queries-by-interval=5m",
                                   "-query-frontend.cache-results=true",
                                   "-query-frontend.results-cache-ttl-for-labels-query=1h",
                                   "-query-frontend.query-stats-enabled=true")

    def start(self, name, *flags):
        workdir = os.path.join(self.tmp.name, name)
        os.makedirs(workdir, exist_ok=True)
        u = Urdar(workdir, *flags)
        self.addCleanup(lambda: u.alive() and u.stop())
        return u.wait_ready()

    def start_querier(self):
        return self.start("querier", "-target=distributor,ingester,querier",
                          "-querier.scheduler-address=" + self.addr, "-querier.max-concurrent=2")

    def query(self, base, path, params, tenant="t1", timeout=30):
        url = base + "/prometheus/api/v1/" + path + "?" + urllib.parse.urlencode(params)
        status, body = http("GET", url, headers={"X-Scope-OrgID": tenant}, timeout=timeout)
        return status, json.loads(body)

    def test_queries_through_scheduler_answer_like_the_querier(self):
        """Instant and range queries sent to the frontend are run by the querier process and
        answer exactly what the querier answers directly (range queries split in parts, then
        from the results cache); a bad query is its 400 bad_data."""
        self.cluster()
        querier = self.start_querier()
        now_ms = int(time.time() * 1000) // 60_000 * 60_000
        series = [([("__name__", "up"), ("job", j)],
                   [(now_ms - 600_000 + 15_000 * i, float(i % 5)) for i in range(41)])
                  for j in ("a", "b")]
        status, body = http("POST", querier.base + "/api/v1/push",
                            bytes(cramjam.snappy.compress_raw(encode_write_request(series))),
                            {"X-Scope-OrgID": "t1", "Content-Encoding": "snappy"})
        self.assertIn(status, (200, 204), body)
        t = now_ms / 1000
        cases = [("query", {"query": "sum by (job) (up)", "time": t}),
                 ("query", {"query": "up", "time": t}),
                 ("query_range", {"query": "rate(up[2m])", "start": t - 1200, "end": t - 120,
                                  "step": 60}),
                 ("query_range", {"query": "sum(up)", "start": t - 1200, "end": t - 120,
                                  "step": 30}),
                 ("query", {"query": "sum(", "time": t})]
        for path, params in cases + cases:      # the second time partly from the cache
            via = self.query(self.frontend.base, path, params)
            direct = self.query(querier.base, path, params)
            self.assertEqual(via, direct, params["query"])
        self.assertGreater(metric(self.frontend.base, "cortex_frontend_split_queries_total"), 8)
        self.assertGreater(metric(self.frontend.base, "cortex_frontend_query_result_cache_hits_total",
                                  request_type="query_range"), 0)
        self.assertEqual(via[0], 400)
        self.assertEqual(via[1]["errorType"], "bad_data")
        self.assertEqual(self.query(self.frontend.base, "query", {"query": "up", "time": t})[1]
                         ["data"]["result"].__len__(), 2)

    def test_label_and_series_requests_through_the_frontend(self):
        """Label names and values and series requests sent to the frontend are run by the
        querier process and answer what it answers directly; label answers come from the
        frontend's results cache the second time (a label pushed in between is not seen through
        the frontend until the TTL passes), series answers never do."""
        self.cluster()
        querier = self.start_querier()
        now_ms = int(time.time() * 1000)

        def push(*series):
            status, body = http("POST", querier.base + "/api/v1/push", bytes(
                cramjam.snappy.compress_raw(encode_write_request([
                    (labels, [(now_ms, 1.0)]) for labels in series]))),
                {"X-Scope-OrgID": "t1", "Content-Encoding": "snappy"})
            self.assertIn(status, (200, 204), body)
        push([("__name__", "up"), ("job", "a")], [("__name__", "up"), ("job", "b")])
        cases = [("labels", {}), ("label/job/values", {}),
                 ("label/job/values", {"match[]": 'up{job="a"}'}),
                 ("series", {"match[]": "up"})]
        first = []
        for path, params in cases:
            first.append(self.query(querier.base, path, params))
            self.assertEqual(self.query(self.frontend.base, path, params), first[-1], path)
        push([("__name__", "up"), ("job", "c"), ("zone", "z")])
        for (path, params), before in zip(cases, first):
            via = self.query(self.frontend.base, path, params)
            direct = self.query(querier.base, path, params)
            self.assertEqual(via, direct if path == "series" else before, path)
        self.assertIn("zone", self.query(querier.base, "labels", {})[1]["data"])
        self.assertEqual(self.query(self.frontend.base, "labels", {"match[]": "{"})[0], 400)
        self.assertEqual(metric(self.frontend.base, "cortex_frontend_query_result_cache_hits_total",
                                request_type="label_names_and_values"), 3)

    def test_query_stats_from_a_remote_querier(self):
        """Two processes, -target=query-frontend and a querier whose workers pull from it
        (-querier.frontend-address): the frontend's Server-Timing header and its per-tenant
        "query stats" line and counters carry what the querier fetched (2 series, 2 chunks,
        82 samples of 16 bytes) and its wall time."""
        frontend = self.start("frontend", "-target=query-frontend",
                              "-query-frontend.split-queries-by-interval=0",
                              "-query-frontend.query-stats-enabled=true")
        querier = self.start("querier", "-target=distributor,ingester,querier",
                             "-querier.frontend-address=127.0.0.1:%d" % frontend.port)
        now_ms = int(time.time() * 1000) // 1000 * 1000
        series = [([("__name__", "up"), ("job", j)],
                   [(now_ms - 600_000 + 15_000 * i, float(i % 5)) for i in range(41)])
                  for j in ("a", "b")]
        status, body = http("POST", querier.base + "/api/v1/push",
                            bytes(cramjam.snappy.compress_raw(encode_write_request(series))),
                            {"X-Scope-OrgID": "t1", "Content-Encoding": "snappy"})
        self.assertIn(status, (200, 204), body)
        t = now_ms / 1000
        url = frontend.base + "/prometheus/api/v1/query_range?" + urllib.parse.urlencode(
            {"query": "sum(up)", "start": t - 600, "end": t, "step": 60})
        req = urllib.request.Request(url, headers={"X-Scope-OrgID": "t1"})
        with urllib.request.urlopen(req, timeout=30) as r:
            timing = r.headers["Server-Timing"]
            r.read()
        wall = float(re.match(r"querier_wall_time;dur=([0-9.]+)", timing).group(1))
        self.assertGreater(wall, 0, timing)

        def stats_line():
            lines = [ln for ln in frontend.output().splitlines()
                     if '"query stats"' in ln and "query_range" in ln]
            return lines[-1] if lines else None
        line = wait_for(stats_line, 10, "the query stats line")
        for want in ("user=t1", "fetched_series_count=2", "fetched_chunks_count=2",
                     "fetched_chunk_bytes=%d" % (82 * 16), "fetched_samples_count=82",
                     "status=success"):
            self.assertIn(" " + want, line)
        self.assertEqual(metric(frontend.base, "cortex_query_fetched_series_total", user="t1"), 2)
        self.assertEqual(metric(frontend.base, "cortex_query_fetched_chunks_total", user="t1"), 2)
        self.assertGreater(metric(frontend.base, "cortex_query_seconds_total", user="t1",
                                  sharded="false"), 0)

    def test_full_queue_429_cancellation_and_late_querier(self):
        """No querier yet: two queries of t1 wait in the scheduler, a third answers 429
        too_many_requests through the frontend; a client that hangs up leaves the queue; the
        two waiting queries are answered once a querier starts."""
        self.cluster(max_outstanding=2)
        results = []

        def ask():
            results.append(self.query(self.frontend.base, "query", {"query": "vector(5)"},
                                      timeout=120))
        threads = [threading.Thread(target=ask) for _ in range(2)]
        for th in threads:
            th.start()
        wait_for(lambda: metric(self.scheduler.base, "cortex_query_scheduler_queue_length",
                                user="t1") == 2, 20, "two queued queries")
        status, body = self.query(self.frontend.base, "query", {"query": "vector(6)"})
        self.assertEqual((status, body), (429, {"status": "error", "errorType": "too_many_requests",
                                                "error": "too many outstanding requests"}))
        self.assertEqual(metric(self.scheduler.base,
                                "cortex_query_scheduler_discarded_requests_total", user="t1"), 1)
        # Another tenant is not affected by t1's full queue.
        with self.assertRaises(OSError):
            self.query(self.frontend.base, "query", {"query": "vector(7)"}, tenant="t2", timeout=2)
        wait_for(lambda: metric(self.scheduler.base, "cortex_query_scheduler_queue_length",
                                user="t2") == 0, 20, "t2's abandoned query left the queue")
        self.start_querier()
        for th in threads:
            th.join(60)
        self.assertEqual([r[0] for r in results], [200, 200])
        self.assertEqual(results[0][1]["data"]["result"][0]["value"][1], "5")
        self.assertEqual(metric(self.scheduler.base, "cortex_query_scheduler_queue_length",
                                user="t1"), 0)


class SchedulerRingTests(unittest.TestCase):
    """-query-scheduler.service-discovery-mode=ring with the query-scheduler ring in etcd."""

    def setUp(self):
        if not have_etcd():
            raise unittest.SkipTest("etcd is not installed (Debian package etcd-server)")
        self.tmp = tempfile.TemporaryDirectory(prefix="urdar-sched-ring-")
        self.addCleanup(self.tmp.cleanup)
        self.etcd = Etcd(self.tmp.name).start()
        self.addCleanup(self.etcd.stop)

    def start(self, name, *flags):
        workdir = os.path.join(self.tmp.name, name)
        os.makedirs(workdir, exist_ok=True)
        u = Urdar(workdir, "-query-scheduler.service-discovery-mode=ring",
                  "-query-scheduler.ring.store=etcd",
                  "-query-scheduler.ring.etcd.endpoints=" + self.etcd.endpoint,
                  "-query-scheduler.ring.instance-id=" + name, *flags)
        self.addCleanup(lambda: u.alive() and u.stop())
        return u.wait_ready()

    def test_frontend_and_querier_find_the_scheduler_in_its_ring(self):
        """The query-scheduler is ACTIVE on /query-scheduler/ring; a frontend and a querier
        given no addresses find it there and answer a query end to end."""
        sched = self.start("sched-a", "-target=query-scheduler")

        def ring():
            status, body = http("GET", sched.base + "/query-scheduler/ring",
                                headers={"Accept": "application/json"})
            self.assertEqual(status, 200, body)
            return [(s["id"], s["state"]) for s in json.loads(body)["shards"]]
        wait_for(lambda: ring() == [("sched-a", "ACTIVE")], 20,
                 lambda: "sched-a ACTIVE in its ring: %s" % ring())
        frontend = self.start("frontend", "-target=query-frontend")
        self.start("querier", "-target=ingester,querier")
        url = frontend.base + "/prometheus/api/v1/query?" + urllib.parse.urlencode(
            {"query": "vector(11)"})

        def answered():
            status, body = http("GET", url, headers={"X-Scope-OrgID": "t1"}, timeout=30)
            return status == 200 and json.loads(body)
        body = wait_for(answered, 30, "a query answered through the scheduler ring")
        self.assertEqual(body["data"]["result"][0]["value"][1], "11")


if __name__ == "__main__":
    unittest.main()
