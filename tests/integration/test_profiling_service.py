"""The profiling endpoints of a running `python -m urdar` under remote-write load, read with
`go tool pprof` (Debian's golang-go) like an operator would.

A push load (tests/support/pushload.py: pre-encoded requests from two threads) runs while the
test fetches the CPU profile, fgprof, the goroutine pages, the block/mutex profiles (before and
after switching them on), the always-on heap profile and the index. The binary profiles must parse with `go tool pprof -top`,
and the push path's functions must appear in the CPU and wall-clock profiles."""
import tempfile
import unittest

from tests.profiling.support import GO, go_pprof
from tests.support.pushload import PushLoad
from tests.support.services import Urdar, http


@unittest.skipUnless(GO, "go (Debian golang-go) is not installed")
class ProfilingUnderLoadTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="urdar-prof-it-")
        cls.urdar = Urdar(cls.tmp.name, "-distributor.ingestion-rate-limit=100000000",
                          "-distributor.ingestion-burst-size=100000000",
                          "-ingester.max-global-series-per-user=0").wait_ready()
        cls.load = PushLoad(cls.urdar.base, seconds=300).start()

    @classmethod
    def tearDownClass(cls):
        cls.load.stop()
        code, _killed = cls.urdar.stop()
        cls.tmp.cleanup()
        assert code == 0, cls.urdar.output()

    def get(self, path, timeout=60):
        status, body = http("GET", self.urdar.base + path, timeout=timeout)
        self.assertEqual(status, 200, body[:500])
        return body

    def assert_load_running(self):
        self.assertFalse(self.load.done(), "the push load ran out before the profile ended")
        self.assertGreater(self.load.pushed, 0, self.load.statuses)

    def test_cpu_profile_shows_the_push_path(self):
        """A 2 s CPU profile under push load names the push path's functions in `go tool pprof -top -cum`."""
        data = self.get("/debug/pprof/profile?seconds=2")
        self.assert_load_running()
        top = go_pprof(self, data, "-top", "-nodecount=15")
        self.assertIn("Type: cpu", top)
        # Flat CPU: the pool jobs' frames (decode and append are Cython, shown by their callers).
        self.assertRegex(top, r"TSDB\.append_batch|Distributor\.prepare", top)

    def test_fgprof_shows_the_push_path_and_waiting_threads(self):
        """A 2 s fgprof profile under load names the push path and the idle pool workers' waits."""
        data = self.get("/debug/fgprof?seconds=2")
        self.assert_load_running()
        # Every node: pprof's default -nodefraction=0.005 drops nodes under 0.5% of all samples,
        # and the push path's share of every thread's wall time is about that (lower under load).
        top = go_pprof(self, data, "-top", "-cum", "-nodecount=400", "-nodefraction=0")
        self.assertRegex(top, r"append_batch|push|_decode|prepare", top[:3000])
        self.assertRegex(top, r"threading\.Condition\.wait|_worker|mainLoop|doIteration|poll", top[:3000])

    def test_goroutine_pages(self):
        """The thread dump in its three forms: pprof for go tool, grouped text and the full dump."""
        top = go_pprof(self, self.get("/debug/pprof/goroutine"), "-top")
        self.assertIn("Type: goroutine", top)
        text1 = self.get("/debug/pprof/goroutine?debug=1").decode()
        self.assertIn("thread profile: total", text1)
        self.assertIn("urdar-decode", text1 + self.get("/debug/pprof/goroutine?debug=1").decode())
        self.assertIn("reactor:", text1)
        text2 = self.get("/debug/pprof/goroutine?debug=2").decode()
        self.assertIn('"MainThread"', text2)
        self.assertIn("offload pool decode:", text2)
        self.assertIn("pending Deferreds in the heap", text2)

    def test_block_and_mutex_after_enable(self):
        """After ?enable=1 the block and mutex profiles are served and parse with go tool pprof."""
        self.get("/debug/pprof/mutex?enable=1")
        try:
            for kind in ("block", "mutex"):
                data = self.get("/debug/pprof/%s?seconds=2" % kind)
                self.assertIn("Type: delay", go_pprof(self, data, "-top"))
            data = self.get("/debug/pprof/block")
            self.assertIn("Type: delay", go_pprof(self, data, "-top"))
        finally:
            self.get("/debug/pprof/mutex?disable=1")

    def test_heap_without_any_enable_step(self):
        """/debug/pprof/heap and /allocs answer at once under load, and go tool pprof shows the push path allocating."""
        top = go_pprof(self, self.get("/debug/pprof/heap?gc=1"), "-top", "-sample_index=inuse_space")
        self.assertIn("Type: inuse_space", top)
        top = go_pprof(self, self.get("/debug/pprof/allocs"), "-top", "-cum", "-nodecount=200")
        self.assertIn("Type: alloc_space", top)
        self.assertRegex(top, r"append_batch|push|_decode|prepare", top[:3000])

    def test_block_and_mutex_always_answer(self):
        """Block and mutex answer 200 with a profile go tool pprof reads, recording on or not (Go's behaviour)."""
        for kind in ("block", "mutex"):
            self.assertIn("Type: delay", go_pprof(self, self.get("/debug/pprof/%s" % kind), "-top"))

    def test_index_and_root_link(self):
        """/debug/pprof/ lists every profile and the service index page links to it."""
        body = self.get("/debug/pprof/").decode()
        for name in ("block", "cmdline", "fgprof", "goroutine", "heap", "mutex", "profile", "trace"):
            self.assertIn(">%s</a>" % name, body)
        self.assertIn('href="/debug/pprof/"', self.get("/").decode())

    def test_memberlist_and_metrics_of_the_running_service(self):
        """The running service lists its rings ACTIVE on /memberlist and counts the load on /metrics."""
        page = self.get("/memberlist").decode()
        for key in ("collectors/ring", "collectors/distributor", "collectors/compactor",
                    "collectors/store-gateway"):
            self.assertIn("<td>%s</td>" % key, page)
        self.assertIn("<td>ACTIVE</td>", page)
        self.assertIn('href="/memberlist"', self.get("/").decode())
        from prometheus_client.parser import text_string_to_metric_families
        fams = {f.name: f for f in text_string_to_metric_families(self.get("/metrics").decode())}
        received = sum(s.value for s in fams["cortex_distributor_received_samples"].samples
                       if s.name.endswith("_total"))
        self.assertGreater(received, 0)
        inflight = {tuple(sorted(s.labels.items())): s.value for s in fams["cortex_inflight_requests"].samples}
        self.assertEqual(inflight[(("method", "GET"), ("route", "metrics"))], 1)

