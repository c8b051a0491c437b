"""CPU and wall-clock sampling profiles, checked with our own decoder and with `go tool pprof`."""
import hashlib
import queue
import threading
import time
import unittest

from tests.profiling.support import (check_invariants, decode, go_pprof, sleep_until, spin_until,
                                     stacks, start_thread, top_functions)
from urdar.profiling import cpu, fgprof
from urdar.profiling.sampler import SamplerBusy, StackSampler


class CPUProfileTests(unittest.TestCase):
    def record(self):
        start_thread(self, spin_until, "busy-spinner")
        start_thread(self, sleep_until, "sleeper")
        return cpu.record(1.0, hz=100)

    def test_busy_thread_is_top_of_go_pprof(self):
        """`go tool pprof -top` on a CPU profile lists the busy thread's function first."""
        b = self.record()
        data = b.gzipped()
        top = top_functions(go_pprof(self, data, "-top"))
        self.assertTrue(top, "pprof printed no rows")
        self.assertEqual(top[0], "tests.profiling.support.spin_until")

    def test_profile_decodes_with_cpu_sample_types_and_invariants(self):
        """The profile has samples/count and cpu/nanoseconds, a period, valid ids and no idle thread."""
        prof = decode(self.record().gzipped())
        check_invariants(self, prof)
        self.assertEqual(prof["sample_types"], [("samples", "count"), ("cpu", "nanoseconds")])
        self.assertEqual(prof["period_type"], ("cpu", "nanoseconds"))
        self.assertEqual(prof["period"], 10_000_000)
        self.assertEqual(prof["default_sample_type"], "cpu")
        self.assertGreater(prof["duration_nanos"], 900_000_000)
        rows = stacks(prof)
        spin = [r for r in rows if r[0][0] == "tests.profiling.support.spin_until"]
        self.assertTrue(spin)
        self.assertEqual({r[2]["thread"] for r in spin}, {"busy-spinner"})
        # ~1 s of one busy thread (shared 2-core machine: allow a wide margin).
        self.assertGreater(sum(r[1][1] for r in spin), 200_000_000)
        self.assertGreater(sum(r[1][0] for r in spin), 20)
        self.assertFalse([r for r in rows if r[2]["thread"] == "sleeper" and r[1][1] > 50_000_000],
                         "a sleeping thread uses (almost) no CPU")
        names = {f["name"] for f in prof["functions"].values()}
        self.assertNotIn("urdar.profiling.sampler.StackSampler._run", names, "the sampler is not sampled")
        fn = [f for f in prof["functions"].values() if f["name"].endswith("spin_until")][0]
        self.assertTrue(fn["filename"].endswith("tests/profiling/support.py"))
        self.assertGreater(fn["start_line"], 0)

    def test_second_cpu_profile_is_refused_while_one_runs(self):
        """Only one CPU profile records at a time; a second is refused with a clear error."""
        cpu.EXCLUSIVE.acquire()
        try:
            with self.assertRaises(SamplerBusy) as cm:
                cpu.record(0.01)
            self.assertIn("already in use", str(cm.exception))
        finally:
            cpu.EXCLUSIVE.release()

    def test_sampler_thread_only_lives_while_recording(self):
        """No profiler thread exists before start() or after stop()."""
        s = StackSampler(100, "cpu")
        self.assertFalse(s.running)
        s.start()
        self.assertTrue(s.running)
        s.stop()
        self.assertFalse(s.running)


class WallProfileTests(unittest.TestCase):
    def record(self):
        start_thread(self, spin_until, "busy-spinner")
        start_thread(self, sleep_until, "sleeper")
        return fgprof.record(1.0, hz=100)

    def test_sleeping_function_appears_off_cpu(self):
        """fgprof counts a sleeping thread's wait as much as a busy thread's work."""
        s = self.record()
        prof = decode(fgprof.wall_profile(s).gzipped())
        check_invariants(self, prof)
        self.assertEqual(prof["sample_types"], [("samples", "count"), ("time", "nanoseconds")])
        rows = stacks(prof)
        sleep_ns = sum(r[1][1] for r in rows if "tests.profiling.support.sleep_until" in r[0])
        self.assertGreater(sleep_ns, 500_000_000)
        text = go_pprof(self, fgprof.wall_profile(s).gzipped(), "-top", "-focus=sleep_until")
        self.assertIn("tests.profiling.support.sleep_until", text)

    def test_folded_output(self):
        """?format=folded lines are root-first ';'-joined function names and a sample count."""
        s = self.record()
        text = fgprof.folded(s)
        lines = text.splitlines()
        self.assertTrue(lines)
        sleeper = [l for l in lines if ";tests.profiling.support.sleep_until;threading.Event.wait" in l]
        self.assertTrue(sleeper, text)
        self.assertTrue(all(l.rsplit(" ", 1)[1].isdigit() for l in lines))
        self.assertTrue(sleeper[0].startswith("threading.Thread._bootstrap;"))


BLOCK = bytes(64 * 1024)


def short_burst(seconds):
    """Burn CPU for `seconds` in C with the GIL released, like a decode or append job."""
    end = time.thread_time() + seconds
    x = 0
    while time.thread_time() < end:
        x += hashlib.sha256(BLOCK).digest()[0]    # hashlib drops the GIL for large inputs
    return x


def pool_worker(jobs):
    """Take jobs from a queue like a Twisted pool worker and run them."""
    while True:
        item = jobs.get()
        if item is None:
            return
        short_burst(item)


class ShortJobTests(unittest.TestCase):
    def test_cpu_of_short_jobs_goes_to_the_job_not_the_queue_wait(self):
        """CPU used by pool jobs that finish between ticks is charged to the job, not to the worker's wait."""
        jobs = queue.Queue()
        worker = threading.Thread(target=pool_worker, args=(jobs,), name="short-jobs", daemon=True)
        worker.start()
        stop = threading.Event()

        def feed():
            while not stop.wait(0.006):
                jobs.put(0.002)
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        try:
            prof = decode(cpu.record(1.5, hz=100).gzipped())
        finally:
            stop.set()
            feeder.join()
            jobs.put(None)
            worker.join()
        rows = [r for r in stacks(prof) if r[2]["thread"] == "short-jobs"]
        burst = sum(r[1][1] for r in rows if r[0][0].endswith("short_burst"))
        total = sum(r[1][1] for r in rows)
        self.assertGreater(total, 100_000_000, rows)
        self.assertGreater(burst, 0.8 * total, rows)
