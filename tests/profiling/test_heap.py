"""The always-on sampled heap profile: the allocator hook (heapsample.pyx) and its pprof form (heap.py).

Sampling is random; the sizes below are chosen so that the expected number of samples is large
(about 100 per site) and the bounds checked (a factor of 2) are many standard deviations away."""
import gc
import os
import subprocess
import sys
import textwrap
import threading
import tracemalloc
import unittest

from tests.profiling.support import check_invariants, decode, go_pprof, top_functions
from urdar.profiling import heapsample
from urdar.profiling.heap import DEFAULT_RATE, HeapProfiler, rate_from_env, scale

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRUTH = 50_000 * 1024


def allocate_50mb():
    """The allocation site the heap profile must show: 50 MB in 1 KiB objects."""
    return [bytes(1024) for _ in range(50_000)]


def churn(n):
    """Allocates and frees small objects (the site of the thread test)."""
    for i in range(n):
        keep = [str(i)] * 8
        del keep


def site(rows, fn):
    """(alloc_space, inuse_space) summed over the buckets whose stack includes `fn`'s code."""
    code = fn.__code__
    alloc = inuse = 0
    for stack, _size, ao, ab, io, ib in rows:
        if any(c is code for c, _line in stack):
            alloc += ab
            inuse += ib
    return alloc, inuse


class HookCase(unittest.TestCase):
    def setUp(self):
        heapsample.start(DEFAULT_RATE)
        self.addCleanup(heapsample.start, DEFAULT_RATE)
        self.heap = HeapProfiler(DEFAULT_RATE)


class SampledSiteTests(HookCase):
    def test_hook_is_compiled(self):
        """The heap sampler is a compiled extension module (no pure-Python fallback)."""
        self.assertTrue(heapsample.__file__.endswith((".so", ".pyd")), heapsample.__file__)

    def test_big_allocation_site_within_a_factor_of_the_truth(self):
        """50 MB allocated in 1 KiB objects shows with alloc and inuse space within a factor of 2 of 50 MB."""
        kept = allocate_50mb()
        alloc, inuse = site(self.heap._rows(False)[0], allocate_50mb)
        self.assertGreater(inuse, TRUTH / 2)
        self.assertLess(inuse, TRUTH * 2)
        self.assertGreaterEqual(alloc, inuse)
        del kept

    def test_freed_memory_leaves_inuse_but_stays_in_alloc(self):
        """After the 50 MB are freed, in-use space of the site drops to zero while alloc space keeps them."""
        kept = allocate_50mb()
        alloc_before, inuse_before = site(self.heap._rows(False)[0], allocate_50mb)
        self.assertGreater(inuse_before, TRUTH / 2)
        del kept
        alloc_after, inuse_after = site(self.heap._rows(True)[0], allocate_50mb)
        self.assertEqual(inuse_after, 0)
        self.assertGreaterEqual(alloc_after, alloc_before)

    def test_profile_parses_with_go_sample_types(self):
        """The profile has Go's four heap sample types, inuse_space by default, and go tool pprof ranks the site first."""
        kept = allocate_50mb()
        data = self.heap.profile(collect=True).gzipped()
        prof = decode(data)
        check_invariants(self, prof)
        self.assertEqual(prof["sample_types"], [("alloc_objects", "count"), ("alloc_space", "bytes"),
                                                ("inuse_objects", "count"), ("inuse_space", "bytes")])
        self.assertEqual(prof["default_sample_type"], "inuse_space")
        self.assertEqual(prof["period_type"], ("space", "bytes"))
        self.assertEqual(prof["period"], DEFAULT_RATE)
        names = {f["name"] for f in prof["functions"].values()}
        self.assertIn("tests.profiling.test_heap.allocate_50mb", names)
        fn = [f for f in prof["functions"].values() if f["name"] == "tests.profiling.test_heap.allocate_50mb"][0]
        self.assertEqual(fn["start_line"], allocate_50mb.__code__.co_firstlineno)
        # Flat top: the comprehension inside it on 3.11 ('allocate_50mb.<locals>.<listcomp>').
        top = top_functions(go_pprof(self, data, "-top", "-sample_index=inuse_space"))
        self.assertTrue(top[0].startswith("tests.profiling.test_heap.allocate_50mb"), top[:5])
        raw = go_pprof(self, data, "-raw")
        self.assertIn("allocate_50mb", raw)
        del kept

    def test_text_form(self):
        """?debug=1 text starts with Go's 'heap profile: N: B [N: B] @ heap/RATE' header, names the site and ends with process memory figures."""
        kept = allocate_50mb()
        text = self.heap.text()
        self.assertRegex(text.splitlines()[0], r"^heap profile: \d+: \d+ \[\d+: \d+\] @ heap/%d$" % DEFAULT_RATE)
        self.assertIn("tests.profiling.test_heap.allocate_50mb", text)
        self.assertRegex(text, r"\n# heap sampler: \d+ samples, 0 dropped, \d+ sites, \d+ sampled blocks live\n")
        self.assertRegex(text, r"\n# gc generation 2: \d+ collections")
        del kept

    def test_scale_is_gos_unsampling(self):
        """Scaling divides by the chance 1-exp(-size/rate) that an allocation of that size was sampled."""
        self.assertEqual(scale(0, 0, DEFAULT_RATE), (0, 0))
        self.assertEqual(scale(3, 300, 1), (3, 300))
        n, b = scale(1, DEFAULT_RATE, DEFAULT_RATE)     # p = 1 - 1/e
        self.assertEqual(b, round(DEFAULT_RATE / (1 - 2.718281828459045 ** -1)))
        self.assertEqual(n, 2)
        self.assertEqual(scale(10, 10 * 100 * DEFAULT_RATE, DEFAULT_RATE), (10, 10 * 100 * DEFAULT_RATE))

    def test_rate_from_env(self):
        """$URDAR_MEMPROFILERATE sets the rate in bytes, 0 switches off, and garbage is refused with its name."""
        self.assertEqual(rate_from_env({}), 512 * 1024)
        self.assertEqual(rate_from_env({"URDAR_MEMPROFILERATE": "4096"}), 4096)
        self.assertEqual(rate_from_env({"URDAR_MEMPROFILERATE": "0"}), 0)
        for bad in ("x", "-1"):
            with self.assertRaisesRegex(ValueError, "URDAR_MEMPROFILERATE"):
                rate_from_env({"URDAR_MEMPROFILERATE": bad})


class HookSafetyTests(HookCase):
    def test_every_allocation_sampled_with_threads(self):
        """Sampling every allocation from four threads at once keeps the tables consistent: nothing stays in use."""
        heapsample.start(1)
        ts = [threading.Thread(target=churn, args=(20_000,)) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        rows = heapsample.snapshot()
        churned = [r for r in rows if any(c is churn.__code__ for c, _l in r[0])]
        self.assertGreater(sum(r[2] for r in churned), 4 * 20_000)         # allocs sampled
        self.assertEqual(sum(r[2] - r[3] for r in churned), 0)             # every one freed
        self.assertEqual(heapsample.stats()["dropped"], 0)

    def test_stop_unhooks_and_start_again(self):
        """stop() restores the previous allocators and forgets samples; start() hooks again."""
        heapsample.stop()
        self.assertFalse(heapsample.hooked())
        self.assertEqual(heapsample.rate(), 0)
        self.assertEqual(heapsample.snapshot(), [])
        kept = allocate_50mb()
        self.assertEqual(heapsample.snapshot(), [], "nothing sampled while off")
        heapsample.start(DEFAULT_RATE)
        self.assertTrue(heapsample.hooked())
        del kept

    def test_tracemalloc_on_top(self):
        """tracemalloc started after the hook wraps it; stopping either in any order leaves allocation working."""
        tracemalloc.start(4)
        try:
            kept = allocate_50mb()
            self.assertGreater(tracemalloc.get_traced_memory()[0], TRUTH // 2)
            heapsample.stop()                   # wrapped: stays in the chain, passing through
            self.assertTrue(heapsample.hooked())
            del kept
            heapsample.start(DEFAULT_RATE)
            kept = allocate_50mb()
            self.assertGreater(site(self.heap._rows(False)[0], allocate_50mb)[1], TRUTH / 2)
        finally:
            tracemalloc.stop()
        del kept
        gc.collect()
        heapsample.stop()
        self.assertFalse(heapsample.hooked(), "on top again once tracemalloc is gone")

    @unittest.skipUnless(hasattr(os, "fork"), "fork")
    def test_fork_child_keeps_working(self):
        """A forked child inherits consistent tables: it allocates, frees, profiles and exits cleanly."""
        kept = allocate_50mb()
        pid = os.fork()
        if pid == 0:                            # child: no exceptions may escape
            code = 1
            try:
                del kept[:]
                churn(10_000)
                rows = HeapProfiler(DEFAULT_RATE)._rows(True)[0]
                code = 0 if site(rows, allocate_50mb)[1] == 0 else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        del kept


class ShutdownTests(unittest.TestCase):
    def run_child(self, body, **env):
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(body)], cwd=ROOT, capture_output=True,
                           text=True, timeout=120, env=dict(os.environ, **env))
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def test_exit_with_hook_installed(self):
        """A process exits cleanly with the hook sampling every allocation and live samples at exit."""
        out = self.run_child("""
            from urdar.profiling import heapsample
            heapsample.start(1)
            keep = [bytes(100) for _ in range(10000)]
            garbage = {i: [str(i)] for i in range(10000)}
            print(heapsample.stats()["live"] > 10000)
            """)
        self.assertEqual(out.strip(), "True")

    def test_under_python_debug_allocators(self):
        """With PYTHONMALLOC=debug (GIL and buffer-overrun checks) under the hook, sampling every allocation from threads runs and exits cleanly."""
        out = self.run_child("""
            import threading
            from urdar.profiling import heapsample
            heapsample.start(1)
            def work():
                for i in range(2000):
                    d = {str(i): [bytes(i % 700)] * 3}
                    del d
            ts = [threading.Thread(target=work) for _ in range(3)]
            for t in ts: t.start()
            for t in ts: t.join()
            print(heapsample.stats()["sampled"] > 6000)
            heapsample.stop()
            print(heapsample.hooked())
            """, PYTHONMALLOC="debug")
        self.assertEqual(out.split(), ["True", "False"])

    def test_exit_under_tracemalloc_and_threads(self):
        """Exit with tracemalloc wrapping the hook and a daemon thread still allocating is clean."""
        self.run_child("""
            import threading, tracemalloc
            from urdar.profiling import heapsample
            heapsample.start(64)
            tracemalloc.start()
            def spin():
                while True:
                    [str(i) for i in range(100)]
            threading.Thread(target=spin, daemon=True).start()
            [bytes(1000) for _ in range(10000)]
            """)


class ProfileOffTests(unittest.TestCase):
    def test_rate_zero_serves_an_empty_valid_profile(self):
        """With sampling off (rate 0) the heap profile is valid and has no samples, as Go's at MemProfileRate=0."""
        self.addCleanup(heapsample.start, DEFAULT_RATE)
        hp = HeapProfiler(0)
        heapsample.stop()
        self.assertFalse(hp.enabled)
        prof = decode(hp.profile().gzipped())
        check_invariants(self, prof)
        self.assertEqual(prof["samples"], [])
        self.assertEqual(len(prof["sample_types"]), 4)
