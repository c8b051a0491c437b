"""Process entry point (`urdar` console script, `python -m urdar`): the only importer of the global reactor.

Start-up: flags + YAML -> Config (errors exit 1 naming the key) -> Modules (composition root) ->
listen (so /ready can say 503 during WAL replay) -> components start (ingester replays every tenant's
WAL) -> systemd READY=1 via $NOTIFY_SOCKET. SIGTERM/SIGINT (Twisted's handlers stop the reactor):
STOPPING=1, /ready 503, stop listening, wait for in-flight requests (-server.graceful-shutdown-timeout),
stop components (close TSDBs: WAL flushed), then the offload pools."""
import logging
import os
import socket
import sys

from urdar.net import config as C

log = logging.getLogger("urdar.main")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}


class _LogfmtFormatter(logging.Formatter):
    def format(self, record):
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        return 'ts=%s level=%s caller=%s msg=%s' % (
            self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + ".%03dZ" % record.msecs,
            record.levelname.lower().replace("warning", "warn"), record.name,
            '"%s"' % msg.replace("\\", "\\\\").replace('"', '\\"') if (" " in msg or '"' in msg) else msg)


def setup_logging(level):
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


def sd_notify(message, environ=None):
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


def build(cfg, reactor):
    """Modules, offload pools and HTTP server for cfg (nothing started)."""
    from urdar.components.modules import Modules, default_offload
    from urdar.net.server import HTTPServer
    offload = default_offload(reactor, cfg)
    modules = Modules(cfg, reactor, reactor, offload)
    server = HTTPServer(reactor, modules.resource(), cfg["server.http_listen_address"],
                        cfg["server.http_listen_port"], modules.instrument,
                        max_body_bytes=max(cfg["distributor.max_recv_msg_size"],
                                           cfg["distributor.max_otlp_request_size"]),
                        graceful_timeout_s=cfg["server.graceful_shutdown_timeout"] / 1000.0)
    return modules, offload, server


def run(cfg, reactor):
    """Run until SIGTERM/SIGINT; returns the process exit code."""
    modules, offload, server = build(cfg, reactor)
    exit_code = [0]

    def fail(message):
        log.error("%s", message)
        exit_code[0] = 1
        if reactor.running:
            reactor.stop()

    def startup():
        offload.start()
        try:
            server.start()
        except Exception as exc:
            return fail("cannot listen on %s:%d: %s" % (
                cfg["server.http_listen_address"] or "*", cfg["server.http_listen_port"], exc))
        d = modules.start()

        def ready(_):
            log.info("urdar %s started: %s", __import__("urdar").__version__, ", ".join(cfg.targets))
            sd_notify("READY=1\nSTATUS=ready")
        d.addCallbacks(ready, lambda f: fail("start-up failed: %s" % f.getTraceback()))

    def before_shutdown():
        log.info("shutting down")
        sd_notify("STOPPING=1")
        modules.state = "Stopping"
        d = server.stop()
        d.addBoth(lambda _: modules.stop())
        d.addErrback(lambda f: log.error("error while stopping: %s", f.getTraceback()))
        return d

    reactor.callWhenRunning(startup)
    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
    reactor.addSystemEventTrigger("during", "shutdown", offload.stop)
    reactor.run()
    return exit_code[0]


def main(argv=None):
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
    prometheus_client.disable_created_metrics()
    from twisted.internet import reactor
    try:
        return run(cfg, reactor)
    except C.ConfigError as exc:
        print("error loading config: %s" % exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
