"""Endpoints every urdar process serves: index, readiness, metrics, config, services, build info.

`AdminHandlers(modules)` reads everything from the composition root (app/modules.py):
`ready()` -> (bool, reason), `services()` -> [(name, state)], `routes()` for the index page, the
Config, the runtime config and the prometheus-client registry. Build info is also served under the
Prometheus and Alertmanager prefixes, as Mimir does."""
import html
import platform

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from urdar import __version__
from urdar.components import errors as E
from urdar.components.limits import render_runtime_config
from urdar.handlers.errors import json_response, text_response
from urdar.handlers.routes import route


def build_info():
    return {"status": "success", "data": {
        "application": "urdar", "version": __version__, "revision": "", "branch": "",
        "pythonVersion": platform.python_version(),
        "features": {"ruler_config_api": "false", "alertmanager_config_api": "false",
                     "query_sharding": "false", "federated_rules": "false"}}}


class AdminHandlers:
    def __init__(self, modules):
        self.modules = modules
        cfg = modules.config
        prom = cfg["api.prometheus_http_prefix"].rstrip("/")
        am = cfg["api.alertmanager_http_prefix"].rstrip("/")
        self.ROUTES = (
            route("/", ("GET",), "index"),
            route("/ready", ("GET",), "ready"),
            route("/metrics", ("GET",), "metrics"),
            route("/config", ("GET",), "config"),
            route("/runtime_config", ("GET",), "runtime_config"),
            route("/services", ("GET",), "services"),
            route("/api/v1/status/buildinfo", ("GET",), "buildinfo"),
            route(prom + "/api/v1/status/buildinfo", ("GET",), "buildinfo"),
            route(am + "/api/v1/status/buildinfo", ("GET",), "buildinfo"),
        )

    def index(self, request):
        links = []
        for r in self.modules.routes():
            path, methods = r.path, r.methods
            if "GET" in methods and "<" not in path:
                links.append('<li><a href="%s">%s</a></li>' % (html.escape(path), html.escape(path)))
            else:
                links.append("<li>%s %s</li>" % ("/".join(methods), html.escape(path)))
        body = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>urdar</title></head><body>"
                "<h1>urdar</h1><p>Version %s. Running: %s.</p><ul>%s</ul></body></html>" % (
                    html.escape(__version__), html.escape(", ".join(self.modules.config.targets)),
                    "".join(links))).encode()
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return body

    def ready(self, request):
        ok, reason = self.modules.ready()
        if ok:
            return text_response(request, 200, "ready")
        return text_response(request, 503, reason)

    def metrics(self, request):
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.modules.registry)

    def config(self, request):
        mode = request.args.get(b"mode", [b""])[0].decode("ascii", "replace") or None
        if mode not in (None, "diff", "defaults"):
            raise E.ComponentError(E.BAD_DATA, "unknown value for mode: %r (use diff or defaults)" % mode)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return self.modules.config.render(mode).encode()

    def runtime_config(self, request):
        runtime = self.modules.runtime
        if runtime is None or not runtime.files:
            raise E.ComponentError(E.NOT_FOUND, "runtime config file not configured: set -runtime-config.file")
        mode = request.args.get(b"mode", [b""])[0].decode("ascii", "replace") or None
        if mode not in (None, "diff"):
            raise E.ComponentError(E.BAD_DATA, "unknown value for mode: %r (use diff)" % mode)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return render_runtime_config(self.modules.overrides.overrides, self.modules.overrides.defaults,
                                     mode).encode()

    def services(self, request):
        rows = "".join("<tr><td>%s</td><td>%s</td></tr>" % (html.escape(n), html.escape(s))
                       for n, s in self.modules.services())
        body = ("<!DOCTYPE html><html><head><title>Services' status</title></head><body>"
                "<h1>Services' status</h1><table border=1><tr><th>Service</th><th>Status</th></tr>"
                "%s</table></body></html>" % rows).encode()
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return body

    def buildinfo(self, request):
        return json_response(request, 200, build_info())
