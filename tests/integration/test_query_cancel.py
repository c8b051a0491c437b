"""A query past -querier.timeout, or whose client went away, really stops: the process' CPU time
(/proc/<pid>/stat utime + stime) stops growing once it has answered 503 or lost the socket.
Real sockets on 127.0.0.1 against `python -m urdar`; every wait is bounded."""
import json
import os
import socket
import tempfile
import time
import unittest
import urllib.parse

from tests.support.services import Urdar, http

# One series of 86,400-sample windows at each of 1,441 steps: many CPU-seconds of sorting.
SLOW = "quantile_over_time(0.5, (vector(time()) % 77)[1d:1s])"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS      # utime, stime


def cpu_growth(pid, seconds):
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return cpu_seconds(pid) - before


def slow_path(now):
    return "/prometheus/api/v1/query_range?" + urllib.parse.urlencode(
        {"query": SLOW, "start": now - 86400, "end": now, "step": 60})


class _Server(unittest.TestCase):
    timeout = "1s"

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="urdar-it-")
        cls.svc = Urdar(cls.tmp.name, "-querier.timeout=" + cls.timeout,
                        "-query-frontend.split-queries-by-interval=0")
        cls.svc.wait_ready()
        cls.pid = cls.svc.proc.pid

    @classmethod
    def tearDownClass(cls):
        cls.svc.stop()
        cls.tmp.cleanup()

    def settle(self):
        """Wait (bounded) until the process is idle: under 0.1 CPU-seconds per half second."""
        deadline = time.monotonic() + 20
        while cpu_growth(self.pid, 0.5) > 0.1:
            self.assertLess(time.monotonic(), deadline, "urdar never went idle")

    def stats_line(self):
        """The last "query stats" log line (bounded wait for it to be written)."""
        deadline = time.monotonic() + 10
        while True:
            lines = [ln for ln in self.svc.output().splitlines() if 'msg="query stats"' in ln]
            if lines or time.monotonic() > deadline:
                self.assertTrue(lines, "no query stats line logged")
                return lines[-1]
            time.sleep(0.1)


class TimeoutTests(_Server):

    def test_timeout_stops_the_evaluation(self):
        """503 errorType timeout after about -querier.timeout, and no CPU burnt after it."""
        self.settle()
        cpu = cpu_seconds(self.pid)
        started = time.monotonic()
        code, body = http("GET", self.svc.base + slow_path(int(time.time())),
                          headers={"X-Scope-OrgID": "t1"}, timeout=30)
        self.assertEqual((code, json.loads(body)), (503, {
            "status": "error", "errorType": "timeout",
            "error": "query timed out in expression evaluation"}))
        self.assertLess(time.monotonic() - started, 10)
        self.assertGreater(cpu_seconds(self.pid) - cpu, 0.1)    # it did work before the deadline
        time.sleep(0.3)
        self.assertLess(cpu_growth(self.pid, 1.5), 0.15)
        self.assertIn("status=timeout", self.stats_line())


class DisconnectTests(_Server):
    timeout = "2m"

    def test_disconnect_cancels_the_evaluation(self):
        """A client closing its socket mid-query stops the evaluation long before the 2m
        -querier.timeout would."""
        self.settle()
        s = socket.create_connection(("127.0.0.1", self.svc.port), timeout=10)
        try:
            s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nX-Scope-OrgID: t1\r\n\r\n"
                       % slow_path(int(time.time()))).encode())
            # Evaluating now (the machine may be busy: a bounded wait for a little CPU).
            busy = max(cpu_growth(self.pid, 0.3) for _ in range(3))
            self.assertGreater(busy, 0.05)
        finally:
            s.close()
        time.sleep(0.2)
        self.assertLess(cpu_growth(self.pid, 1.5), 0.15)
        self.assertEqual(http("GET", self.svc.base + "/ready")[0], 200)
        self.assertIn("status=canceled", self.stats_line())
