"""Processes the benchmarks run side by side: urdar (`python -m urdar`) and Debian's Prometheus.

Both listen on 127.0.0.1 on free ports and keep all their data under the caller's temp dir."""
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# No limits in the way of a benchmark's load.
UNLIMITED = ("-distributor.ingestion-rate-limit=1e12", "-distributor.ingestion-burst-size=1000000000000",
             "-ingester.max-global-series-per-user=0")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port, path, timeout_s=120, ok=(200,)):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status in ok:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server on port %d not ready" % port)


def start_urdar(tmp, extra=(), env=None, entry=("-m", "urdar"), root=ROOT):
    """urdar with every data dir under tmp, limits off; returns (port, Popen) once ready.
    `entry`: what python runs (a wrapper script taking urdar's flags, e.g. a profiler); `root`:
    the checkout whose urdar runs."""
    port = free_port()
    log = open(os.path.join(tmp, "urdar.log"), "wb")
    proc = subprocess.Popen([
        sys.executable, *entry, "-server.http-listen-address=127.0.0.1",
        "-server.http-listen-port=%d" % port, "-blocks-storage.tsdb.dir=" + os.path.join(tmp, "urdar"),
        "-blocks-storage.filesystem.dir=" + os.path.join(tmp, "blocks"),
        "-blocks-storage.bucket-store.sync-dir=" + os.path.join(tmp, "tsdb-sync"),
        "-compactor.data-dir=" + os.path.join(tmp, "compactor"),
        *UNLIMITED, "-log.level=warn", *extra],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_http(port, "/ready")
    return port, proc


def start_prometheus(tmp):
    """Prometheus with a remote-write receiver and no scrapes; returns (port, Popen) once ready."""
    port = free_port()
    cfg = os.path.join(tmp, "prometheus.yml")
    with open(cfg, "w") as f:
        f.write("global:\n  scrape_interval: 1m\nscrape_configs: []\n")
    log = open(os.path.join(tmp, "prometheus.log"), "wb")
    proc = subprocess.Popen([
        shutil.which("prometheus") or "/usr/bin/prometheus", "--config.file=" + cfg,
        "--storage.tsdb.path=" + os.path.join(tmp, "prometheus"),
        "--web.listen-address=127.0.0.1:%d" % port, "--web.enable-remote-write-receiver",
        "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)
    wait_http(port, "/-/ready")
    return port, proc


def stop(proc, timeout_s=60):
    """SIGTERM, then SIGKILL after timeout_s (Prometheus can ignore SIGTERM with a dead remote)."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
