"""kill -9 under push load: `python -m urdar` is killed 20 times while a client pushes, restarted
each time, and every sample it acknowledged (2xx) must be in the tenant's TSDB at the end.

The pusher sends one request at a time over a keep-alive connection, each request holding one
sample for each of SERIES series at its own timestamp, so "acknowledged" is exactly the set of
requests that got a 2xx before the kill. A request cut off by the kill counts as not acknowledged
(it may or may not be stored)."""
import http.client
import os
import random
import signal
import tempfile
import threading
import time
import unittest

import cramjam

from tests.support.services import Urdar
from urdar.engine.labels import labels_dict
from urdar.engine.matchers import Matcher
from urdar.engine.remotewrite import encode_write_request
from urdar.engine.tsdb import TSDB

CYCLES = 20
SERIES = 20
# Timestamps start 50 min back and advance 10 ms per request: even 100k requests over all
# cycles stay in the past (a fast server made 24k+ requests at 100 ms run past now + the 10 min
# creation grace period, and the distributor rightly refused them with 400).
STEP_MS = 10
TENANT = "crash"
HEADERS = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
           "X-Prometheus-Remote-Write-Version": "0.1.0", "X-Scope-OrgID": TENANT}


def request(t):
    series = [([("__name__", "crash_metric"), ("i", "%02d" % i)], [(t, float(t % 1000003 + i))])
              for i in range(SERIES)]
    return bytes(cramjam.snappy.compress_raw(encode_write_request(series)))


class Pusher(threading.Thread):
    """Pushes requests at t0, t0 + STEP_MS, ... until stopped or the server goes away."""

    def __init__(self, port, t):
        super().__init__(daemon=True)
        self.port = port
        self.t = t              # timestamp of the next request
        self.acked = []         # timestamps whose request got a 2xx
        self.statuses = {}
        self.stop_flag = threading.Event()

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            while not self.stop_flag.is_set():
                body = request(self.t)
                try:
                    conn.request("POST", "/api/v1/push", body, HEADERS)
                    resp = conn.getresponse()
                    resp.read()
                except (OSError, http.client.HTTPException):
                    return          # killed mid-request: not acknowledged
                self.statuses[resp.status] = self.statuses.get(resp.status, 0) + 1
                if 200 <= resp.status < 300:
                    self.acked.append(self.t)
                self.t += STEP_MS
        finally:
            conn.close()


class CrashRecoveryTests(unittest.TestCase):
    def test_kill_9_under_push_load_loses_no_acknowledged_sample(self):
        """After 20 kill -9s during pushes and restarts, every acknowledged sample is stored."""
        tmp = tempfile.TemporaryDirectory(prefix="urdar-crash-")
        self.addCleanup(tmp.cleanup)
        rnd = random.Random(20261202)
        t = int(time.time() * 1000) - 50 * 60 * 1000
        acked, statuses, served = [], {}, 0
        for cycle in range(CYCLES):
            svc = Urdar(tmp.name)
            self.addCleanup(lambda svc=svc: svc.alive() and svc.stop(5, signal.SIGKILL))
            svc.wait_ready(120)
            pusher = Pusher(svc.port, t)
            pusher.start()
            time.sleep(0.5 + rnd.random())
            svc.proc.send_signal(signal.SIGKILL)      # mid-load, no shutdown of any kind
            svc.proc.wait()
            pusher.stop_flag.set()
            pusher.join(30)
            svc.stop()
            acked.extend(pusher.acked)
            served += len(pusher.acked)
            for code, n in pusher.statuses.items():
                statuses[code] = statuses.get(code, 0) + n
            t = pusher.t + STEP_MS      # the cut-off request's timestamp is never reused
        self.assertEqual(set(statuses), {200}, statuses)
        self.assertGreater(len(acked), CYCLES, "the load barely ran: %r" % statuses)

        db = TSDB(os.path.join(tmp.name, "tsdb", TENANT))
        try:
            got = {labels_dict(k)["i"]: set(ts) for k, ts, _ in db.select([Matcher("=", "__name__", "crash_metric")])}
        finally:
            db.close()
        lost = 0
        for i in range(SERIES):
            lost += len(set(acked) - got.get("%02d" % i, set()))
        print("\ncrash recovery: %d cycles, %d acknowledged requests (%d samples), %d lost"
              % (CYCLES, len(acked), len(acked) * SERIES, lost))
        self.assertEqual(lost, 0)


if __name__ == "__main__":
    unittest.main()
