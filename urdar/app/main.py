"""Process entry point (`urdar` console script, `python -m urdar`): the only importer of the global reactor.

Start-up: flags + YAML -> Config (errors exit 1 naming the key) -> Modules (app/modules.py builds
-target's modules and their offload pools) -> listen (so /ready can say 503 during WAL replay) ->
modules start in dependency order (the ingester replays every tenant's WAL) -> systemd READY=1 via
$NOTIFY_SOCKET. SIGTERM/SIGINT (Twisted's handlers stop the reactor):
STOPPING=1, /ready 503, stop listening, wait for in-flight requests (-server.graceful-shutdown-timeout),
stop modules in reverse order (close TSDBs: WAL flushed), then the offload pools."""
import gc
import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, cast

from urdar.app import config as C

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from urdar.app.modules import IAppReactor, Modules
    from urdar.net.offload import Offload
    from urdar.net.server import HTTPServer
    from urdar.profiling.sampler import StackSampler

log = logging.getLogger("urdar.main")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}


class _LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        # Structured lines (components/querystats.py) carry their logfmt pairs in `logfmt`.
        fields = getattr(record, "logfmt", "")
        return 'ts=%s level=%s caller=%s msg=%s%s' % (
            self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + ".%03dZ" % record.msecs,
            record.levelname.lower().replace("warning", "warn"), record.name,
            '"%s"' % msg.replace("\\", "\\\\").replace('"', '\\"') if (" " in msg or '"' in msg) else msg,
            " " + fields if fields else "")


def setup_logging(level: str) -> None:
    import time
    from twisted.logger import STDLibLogObserver, globalLogBeginner
    handler = logging.StreamHandler(sys.stderr)
    fmt = _LogfmtFormatter()
    fmt.converter = time.gmtime
    handler.setFormatter(fmt)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    globalLogBeginner.beginLoggingTo([STDLibLogObserver(name="twisted")], redirectStandardIO=False)


def sd_notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send a systemd notification (READY=1, STOPPING=1, STATUS=...) if $NOTIFY_SOCKET is set.

    Returns True when sent. No dependency: a datagram to the Unix socket ('@' = abstract)."""
    addr = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message.encode("utf-8"))
        return True
    except OSError as exc:
        log.warning("sd_notify(%s) to %s failed: %s", message, addr, exc)
        return False


# The cyclic garbage collector's young-generation threshold once the server runs (CPython's is
# 700). A query over 10k series allocates hundreds of thousands of objects that live until it
# ends; collecting every 700 allocations walked them again and again and promoted them, which
# then triggered full collections over the whole heap: about a third of the CPU time of an
# instant query (benchmarks/instant_cpu_bench.py). Reference counting still frees them at once.
GC_YOUNG_THRESHOLD = 50_000


def settle_gc() -> None:
    """After start-up: move every object that exists now (modules, configuration, the replayed
    head's Python side) out of the collector's view, and collect young objects less often."""
    gc.freeze()
    _, mid, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, mid, old)


def build(cfg: C.Config, reactor: "IAppReactor") -> tuple["Modules", "Offload", "HTTPServer"]:
    """Modules, offload pools and HTTP server for cfg (nothing started)."""
    # net/server.py and profiling/ are not annotated yet: calls into them carry type: ignore.
    from urdar.app.modules import Modules
    from urdar.net.server import HTTPServer
    modules = Modules(cfg, reactor, reactor)
    offload = modules.offload
    server = HTTPServer(  # type: ignore[no-untyped-call]
        reactor, modules.resource(), cfg["server.http_listen_address"],
        cfg["server.http_listen_port"], modules.instrument,
        max_body_bytes=max(cfg["distributor.max_recv_msg_size"],
                           cfg["distributor.max_otlp_request_size"]),
        graceful_timeout_s=cfg["server.graceful_shutdown_timeout"] / 1000.0,
        admission=modules.route_table.admission,
        read_timeout_s=cfg["server.http_server_read_timeout"] / 1000.0,
        idle_timeout_s=cfg["server.http_server_idle_timeout"] / 1000.0,
        max_connections=cfg["server.http_listen_conn_limit"])
    return modules, offload, server


def run(cfg: C.Config, reactor: "IAppReactor") -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code."""
    modules, offload, server = build(cfg, reactor)
    exit_code = [0]

    def fail(message: str) -> None:
        log.error("%s", message)
        exit_code[0] = 1
        if reactor.running:
            reactor.stop()

    def startup() -> None:
        offload.start()
        try:
            server.start()  # type: ignore[no-untyped-call]
        except Exception as exc:
            return fail("cannot listen on %s:%d: %s" % (
                cfg["server.http_listen_address"] or "*", cfg["server.http_listen_port"], exc))
        d = modules.start()

        def ready(_: None) -> None:
            settle_gc()
            log.info("urdar %s started: %s", __import__("urdar").__version__, ", ".join(cfg.targets))
            sd_notify("READY=1\nSTATUS=ready")
        d.addCallbacks(ready, lambda f: fail("start-up failed: %s" % f.getTraceback()))

    def before_shutdown() -> "Deferred[object]":
        log.info("shutting down")
        sd_notify("STOPPING=1")
        modules.state = "Stopping"
        d: "Deferred[object]" = server.stop()  # type: ignore[no-untyped-call]
        d.addBoth(lambda _: modules.stop())
        d.addErrback(lambda f: log.error("error while stopping: %s", f.getTraceback()))
        return d

    reactor.callWhenRunning(startup)
    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
    reactor.addSystemEventTrigger("during", "shutdown", offload.stop)
    profiler = start_profile(os.environ.get("URDAR_CPU_PROFILE"))
    try:
        reactor.run()
    finally:
        if profiler is not None:
            profiler()
    return exit_code[0]


def start_profile(path: str | None) -> Callable[[], None] | None:
    """Whole-run CPU profile for benchmarks: with $URDAR_CPU_PROFILE=<path>, sample every thread's
    CPU at 100 Hz from start to exit and write <path> (pprof, gzipped; `go tool pprof -top`) and
    <path>.txt (self and cumulative CPU per function, and per thread). Returns the writer."""
    if not path:
        return None
    from urdar.profiling.cpu import cpu_profile
    from urdar.profiling.sampler import StackSampler
    sampler = StackSampler(100, "cpu")  # type: ignore[no-untyped-call]
    sampler.start()  # type: ignore[no-untyped-call]

    def write() -> None:
        sampler.stop()  # type: ignore[no-untyped-call]
        with open(path, "wb") as f:
            f.write(cpu_profile(sampler).gzipped())  # type: ignore[no-untyped-call]
        with open(path + ".txt", "w") as f:
            f.write(profile_text(sampler))
        log.info("CPU profile written to %s", path)
    return write


def profile_text(sampler: "StackSampler", top: int = 40) -> str:
    """Self/cumulative CPU seconds per function and CPU per thread from a stopped sampler."""
    own: dict[str, int] = {}
    cum: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = 0
    for (thread, stack), (_n, ns) in sampler.stacks.items():
        total += ns
        group = thread.rsplit("-", 1)[0] if thread[-1:].isdigit() else thread
        threads[group] = threads.get(group, 0) + ns
        seen: set[str] = set()
        for i, (cid, _line) in enumerate(stack):
            # stacks hold code ids of the sampler's CodeTable (profiling/pprof.py)
            code = sampler.modules.code(cid)
            name = "%s %s:%d" % (code.co_qualname, code.co_filename.rsplit("/", 2)[-1],
                                 code.co_firstlineno)
            if i == 0:
                own[name] = own.get(name, 0) + ns
            if name not in seen:
                seen.add(name)
                cum[name] = cum.get(name, 0) + ns
    out = ["CPU profile: %.1f s of CPU sampled over %.1f s wall" % (total / 1e9, sampler.duration_ns / 1e9),
           "", "per thread group:"]
    out += ["  %8.2f s  %5.1f%%  %s" % (ns / 1e9, 100.0 * ns / max(total, 1), name)
            for name, ns in sorted(threads.items(), key=lambda kv: -kv[1])]
    for title, table in (("self", own), ("cumulative", cum)):
        out += ["", "top %d by %s CPU:" % (top, title)]
        out += ["  %8.2f s  %5.1f%%  %s" % (ns / 1e9, 100.0 * ns / max(total, 1), name)
                for name, ns in sorted(table.items(), key=lambda kv: -kv[1])[:top]]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg, special = C.load(argv)
    except C.ConfigError as exc:
        print("error loading config: %s" % exc, file=sys.stderr)
        return 1
    if "help" in special:
        print(C.help_text())
        return 0
    if "version" in special:
        print(C.version_text())
        return 0
    setup_logging(cfg["server.log_level"])
    import prometheus_client
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
    from twisted.internet import reactor
    try:
        # Twisted types the global reactor with only some of the interfaces it provides.
        return run(cfg, cast("IAppReactor", reactor))
    except C.ConfigError as exc:
        print("error loading config: %s" % exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
