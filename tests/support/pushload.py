"""A bounded remote-write load for integration tests: pre-encoded requests pushed from threads.

`PushLoad(url, tenant)` encodes `rounds` x `slots` WriteRequests up front (every slot holds its own
`series_per_request` series, one sample each, rounds 15 s apart so samples stay in order), then
`start()` runs one thread per slot group that POSTs them over one keep-alive connection for
`seconds` or until `stop()`. When the requests run out, a thread starts over under the next
tenant (`tenant`-1, -2, ...), so samples stay in order without encoding anything new.
`pushed`, `failed` and `samples` count the answers."""
import http.client
import threading
import time
import urllib.parse

import cramjam

from urdar.engine.remotewrite import encode_write_request

HEADERS = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
           "X-Prometheus-Remote-Write-Version": "0.1.0"}


def encode_rounds(rounds, slots, series_per_request, t0_ms, job="load"):
    """[round][slot] -> snappy-compressed WriteRequest bytes."""
    out = []
    for r in range(rounds):
        t = t0_ms + r * 15000
        row = []
        for s in range(slots):
            series = [([("__name__", "load_metric"), ("instance", "i%d" % i), ("job", job),
                        ("slot", "s%d" % s)], [(t, float(r + i))]) for i in range(series_per_request)]
            row.append(bytes(cramjam.snappy.compress_raw(encode_write_request(series))))
        out.append(row)
    return out


class PushLoad:
    def __init__(self, base, tenant="load", rounds=100, slots=4, series_per_request=250, threads=2,
                 t0_ms=None, seconds=120.0):
        self.base = base
        self.tenant = tenant
        self.series_per_request = series_per_request
        t0 = t0_ms if t0_ms is not None else int(time.time() * 1000) - rounds * 15000
        self.requests = encode_rounds(rounds, slots, series_per_request, t0)
        self.threads = threads
        self.seconds = seconds
        self.pushed = 0
        self.failed = 0
        self.statuses = {}
        self._stop = threading.Event()
        self._workers = []
        self._count = threading.Lock()

    @property
    def samples(self):
        return self.pushed * self.series_per_request

    def start(self):
        slots = len(self.requests[0])
        for k in range(self.threads):
            mine = [s for s in range(slots) if s % self.threads == k]
            t = threading.Thread(target=self._run, args=(mine,), name="push-load-%d" % k, daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def stop(self):
        self._stop.set()
        for t in self._workers:
            t.join(60)

    def done(self):
        return all(not t.is_alive() for t in self._workers)

    def _run(self, mine):
        u = urllib.parse.urlsplit(self.base)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        deadline = time.monotonic() + self.seconds
        passes = 0
        try:
            while True:
                headers = dict(HEADERS, **{"X-Scope-OrgID": "%s-%d" % (self.tenant, passes)})
                passes += 1
                if not self._push_all(conn, mine, headers, deadline):
                    return
        finally:
            conn.close()

    def _push_all(self, conn, mine, headers, deadline):
        for row in self.requests:
            for s in mine:
                if self._stop.is_set() or time.monotonic() > deadline:
                    return False
                conn.request("POST", "/api/v1/push", row[s], headers)
                resp = conn.getresponse()
                resp.read()
                with self._count:
                    self.statuses[resp.status] = self.statuses.get(resp.status, 0) + 1
                    if resp.status in (200, 204):
                        self.pushed += 1
                    else:
                        self.failed += 1
        return True
