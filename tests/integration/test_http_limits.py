"""Hostile HTTP clients against a running `python -m urdar`: huge declared bodies, bodies that never
end, slow-loris headers. Real sockets on 127.0.0.1; every wait is bounded."""
import socket
import tempfile
import threading
import time
import unittest

from tests.support.services import Urdar, http

MB = 1 << 20
READ_TIMEOUT_S = 3


def rss_bytes(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def open_request(port, head):
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    s.sendall(head)
    return s


def answer(s):
    """What the server sent until it closed (a reset counts as closed)."""
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    return out


def push_head(length, tenant=True, path=b"/api/v1/push"):
    return (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            b"Content-Encoding: snappy\r\n%sContent-Length: %d\r\n\r\n"
            % (path, b"X-Scope-OrgID: hostile\r\n" if tenant else b"", length))


class HostileClientTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="urdar-it-")
        # The in-flight push bytes cap is left at its default (256 MiB).
        cls.svc = Urdar(cls.tmp.name, "-server.http-server-read-timeout=%ds" % READ_TIMEOUT_S)
        cls.svc.wait_ready()
        cls.port = cls.svc.port

    @classmethod
    def tearDownClass(cls):
        cls.svc.stop()
        cls.tmp.cleanup()

    def test_refusals_come_before_the_body(self):
        """Unknown paths, missing tenants and oversized declared bodies are answered without the body being sent."""
        cases = ((push_head(10 ** 12, path=b"/no/such/route"), b"HTTP/1.1 404 "),
                 (push_head(10 ** 12, tenant=False), b"HTTP/1.1 401 "),
                 (push_head(10 ** 12, tenant=False, path=b"/prometheus/api/v1/query"), b"HTTP/1.1 401 "),
                 (push_head(10 ** 12), b"HTTP/1.1 413 "))
        for head, status in cases:
            s = open_request(self.port, head)
            try:
                self.assertTrue(answer(s).startswith(status), head)
            finally:
                s.close()

    def test_slow_loris_is_disconnected(self):
        """A client sending its headers a byte at a time is dropped after the read timeout."""
        s = open_request(self.port, b"GET /ready HTTP/1.1\r\n")
        start = time.monotonic()
        closed = False
        try:
            while time.monotonic() - start < READ_TIMEOUT_S * 5:
                s.sendall(b"X")
                time.sleep(0.3)
        except OSError:
            closed = True
        finally:
            s.close()
        self.assertTrue(closed, "the server kept a slow-loris connection open")

    def test_ready_answers_while_20_clients_push_huge_and_slow_bodies(self):
        """/ready keeps answering and memory stays bounded while 20 connections push huge or trickled bodies."""
        before = rss_bytes(self.svc.proc.pid)
        stop = threading.Event()
        answers = []

        def huge():
            s = open_request(self.port, push_head(90 * MB))
            try:
                chunk = b"\0" * MB
                for _ in range(90):
                    if stop.is_set():
                        break
                    s.sendall(chunk)
            except OSError:
                pass
            answers.append(answer(s)[:12])
            s.close()

        def slow():
            s = open_request(self.port, push_head(10 * MB))
            try:
                while not stop.is_set():
                    s.sendall(b"\0" * 10)
                    time.sleep(0.2)
            except OSError:
                pass
            s.close()

        threads = [threading.Thread(target=huge if i % 2 else slow, daemon=True) for i in range(20)]
        for t in threads:
            t.start()
        peak = before
        try:
            for _ in range(10):
                status, body = http("GET", self.svc.base + "/ready", timeout=1)
                self.assertEqual((status, body.strip()), (200, b"ready"))
                peak = max(peak, rss_bytes(self.svc.proc.pid))
                time.sleep(0.3)
        finally:
            stop.set()
            for t in threads:
                t.join(READ_TIMEOUT_S * 5)
        # At most the 256 MiB in-flight cap is buffered, not 10 x 90 MiB.
        self.assertLess(peak - before, 400 * MB)
        self.assertTrue(any(a.startswith(b"HTTP/1.1 503") for a in answers), answers)
        self.assertEqual(http("GET", self.svc.base + "/ready", timeout=5)[0], 200)


if __name__ == "__main__":
    unittest.main()
