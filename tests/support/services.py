"""Real processes for integration tests: urdar (`python -m urdar`), Prometheus and the header proxy.

Every process listens on 127.0.0.1 on a free port, keeps its data in a caller-given temporary
directory and its output in a log file there (shown when something fails). `stop()` sends
SIGTERM and escalates to SIGKILL after a timeout."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, data=None, headers=None, timeout=10):
    """(status, body bytes) of one request; HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_for(check, timeout_s, what, interval_s=0.2):
    """Poll check() until it returns a true value (returned); AssertionError after timeout_s
    naming `what` (a string, or a callable giving one, e.g. with the processes' logs)."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval_s)
    raise AssertionError("timed out after %ss waiting for %s (last: %r)" % (
        timeout_s, what() if callable(what) else what, last))


class Process:
    name = "process"

    def __init__(self, workdir, args, env=None):
        self.log_path = os.path.join(workdir, "%s-%d.log" % (self.name, getattr(self, "port", os.getpid())))
        self.log = open(self.log_path, "w+b")
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env)

    def output(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")[-20000:]

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout_s=30, sig=signal.SIGTERM):
        """Signal, wait up to timeout_s, then SIGKILL. Returns (exit code, killed?)."""
        killed = False
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                killed = True
        self.log.close()
        return self.proc.returncode, killed


def data_dir_flags(workdir):
    """Flags that keep every directory urdar writes (TSDBs, bucket, store-gateway and compactor
    scratch space) under workdir; Mimir's defaults are relative to the current directory."""
    return ["-blocks-storage.tsdb.dir=" + os.path.join(workdir, "tsdb"),
            "-blocks-storage.filesystem.dir=" + os.path.join(workdir, "blocks"),
            "-blocks-storage.bucket-store.sync-dir=" + os.path.join(workdir, "tsdb-sync"),
            "-compactor.data-dir=" + os.path.join(workdir, "compactor"),
            "-ruler-storage.filesystem.dir=" + os.path.join(workdir, "ruler"),
            "-alertmanager-storage.filesystem.dir=" + os.path.join(workdir, "alertmanager"),
            "-alertmanager.storage.path=" + os.path.join(workdir, "alertmanager-state")]


class Urdar(Process):
    name = "urdar"

    def __init__(self, workdir, *extra, env=None):
        self.port = free_port()
        self.base = "http://127.0.0.1:%d" % self.port
        self.tsdb_dir = os.path.join(workdir, "tsdb")
        super().__init__(workdir, [
            sys.executable, "-m", "urdar", "-server.http-listen-address=127.0.0.1",
            "-server.http-listen-port=%d" % self.port, *data_dir_flags(workdir), *extra], env=env)

    def wait_ready(self, timeout_s=60):
        def ready():
            if not self.alive():
                raise AssertionError("urdar exited with %s:\n%s" % (self.proc.returncode, self.output()))
            return http("GET", self.base + "/ready", timeout=2)[0] == 200
        wait_for(ready, timeout_s, "urdar /ready")
        return self


class HeaderProxy(Process):
    """tests/support/header_proxy.py in its own process, in front of `target`."""
    name = "proxy"

    def __init__(self, workdir, target, headers):
        self.port = free_port()
        self.base = "http://127.0.0.1:%d" % self.port
        super().__init__(workdir, [sys.executable, "-m", "tests.support.header_proxy",
                                   "--listen=%d" % self.port, "--target=" + target] +
                         ["--header=%s=%s" % kv for kv in headers.items()])
        wait_for(lambda: "listening" in self.output() or (not self.alive() and self.fail()),
                 30, "header proxy to listen")

    def fail(self):
        raise AssertionError("header proxy exited:\n%s" % self.output())


class Prometheus(Process):
    """Debian's prometheus 2.42 with a temporary TSDB and a generated config."""
    name = "prometheus"

    def __init__(self, workdir, config_text, *extra):
        self.port = free_port()
        self.base = "http://127.0.0.1:%d" % self.port
        self.config_path = os.path.join(workdir, "prometheus.yml")
        with open(self.config_path, "w") as f:
            f.write(config_text.replace("$SELF", "127.0.0.1:%d" % self.port))
        super().__init__(workdir, [
            PROMETHEUS, "--config.file=" + self.config_path,
            "--storage.tsdb.path=" + os.path.join(workdir, "prometheus-data"),
            "--web.listen-address=127.0.0.1:%d" % self.port, *extra])

    def wait_ready(self, timeout_s=60):
        def ready():
            if not self.alive():
                raise AssertionError("prometheus exited:\n%s" % self.output())
            return http("GET", self.base + "/-/ready", timeout=2)[0] == 200
        wait_for(ready, timeout_s, "prometheus /-/ready")
        return self

    def query(self, expr, t=None):
        """The data of an instant query (raises on errors)."""
        params = {"query": expr}
        if t is not None:
            params["time"] = "%.3f" % t
        status, body = http("GET", self.base + "/api/v1/query?" + urllib.parse.urlencode(params))
        doc = json.loads(body)
        if status != 200 or doc.get("status") != "success":
            raise AssertionError("prometheus query %r failed: %s" % (expr, body[:500]))
        return doc["data"]

    def metric(self, name, **labels):
        """Sum of the values of one of Prometheus' own metrics on its /metrics page."""
        status, body = http("GET", self.base + "/metrics")
        total, seen = 0.0, False
        for line in body.decode().splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            if head.split("{", 1)[0] != name:
                continue
            if all('%s="%s"' % kv in head for kv in labels.items()):
                total += float(value)
                seen = True
        return total if seen else None
