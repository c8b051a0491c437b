"""The tenant's Alertmanager web UI under -http.alertmanager-http-prefix (Mimir serves the
embedded Alertmanager's UI there): one HTML page and its script and style sheet, all shipped in
this package (handlers/static/). The page draws alert groups, silences and the silence form from
the tenant's own API v2 (/alertmanager/api/v2/...), building every element with textContent so no
label value is ever parsed as HTML.

Like every route under the prefix in Mimir, the page belongs to the tenant of X-Scope-OrgID: a
tenant without a configuration gets the fallback configuration's Alertmanager or 404 "the
Alertmanager is not configured" (AlertmanagerAPIHandlers._am)."""
from html import escape
from importlib import resources
from typing import Any

from urdar.handlers.alertmanager import AlertmanagerAPIHandlers
from urdar.handlers.routes import route

# name -> content type; nothing else under static/ is served.
STATIC = {"amui.js": b"text/javascript; charset=utf-8", "amui.css": b"text/css; charset=utf-8"}

# The page runs only its own script: no inline script, no other origin (a label that somehow
# became markup still could not run).
CSP = (b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       b"img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Alertmanager</title>
<link rel="stylesheet" href="%(prefix)s/static/amui.css">
<script src="%(prefix)s/static/amui.js" defer></script>
</head>
<body data-api="%(prefix)s/api/v2">
<header><h1>Alertmanager</h1><span class="tenant">tenant <b>%(tenant)s</b></span>
<button type="button" id="refresh">Refresh</button><span id="updated"></span></header>
<main>
<section id="alerts-section">
<h2>Alerts</h2>
<label><input type="checkbox" id="show-silenced" checked> show silenced and inhibited</label>
<div id="alert-error" class="error" role="alert"></div>
<div id="groups"><p class="empty">Loading&hellip;</p></div>
</section>
<section id="silences-section">
<h2>Silences</h2>
<div id="silence-error" class="error" role="alert"></div>
<nav id="silence-tabs">
<button type="button" data-state="active" class="selected">Active <span class="count"></span></button>
<button type="button" data-state="pending">Pending <span class="count"></span></button>
<button type="button" data-state="expired">Expired <span class="count"></span></button>
</nav>
<div id="silences"></div>
</section>
<section id="new-silence">
<h2>New silence</h2>
<form id="silence-form" novalidate>
<fieldset><legend>Matchers</legend>
<div id="matchers"></div>
<button type="button" id="add-matcher">Add matcher</button>
</fieldset>
<div class="row">
<label>Start <input name="startsAt" id="startsAt" placeholder="2006-01-02T15:04:05Z"></label>
<label>Duration <input name="duration" id="duration" value="2h" placeholder="2h"></label>
<label>End <input name="endsAt" id="endsAt" placeholder="2006-01-02T17:04:05Z"></label>
</div>
<div class="row">
<label>Created by <input name="createdBy" id="createdBy"></label>
<label class="wide">Comment <input name="comment" id="comment"></label>
</div>
<button type="submit" id="create-silence">Create silence</button>
<span id="form-result" role="status"></span>
</form>
</section>
</main>
</body>
</html>
"""


def _static(name: str) -> bytes:
    return resources.files("urdar.handlers").joinpath("static", name).read_bytes()


class AlertmanagerUIHandlers:
    """GET <prefix> and <prefix>/ (the page), <prefix>/static/<name> (its script and styles)."""
    tenancy = None

    def __init__(self, api: AlertmanagerAPIHandlers, prefix: str = "/alertmanager") -> None:
        self.api = api
        self.prefix = prefix.rstrip("/")
        self.files = {name: _static(name) for name in STATIC}     # read once, at startup
        rows = [route(self.prefix + "/static/<name>", ("GET",), "static", tenant=True,
                      errors="am_errors")]
        if self.prefix:     # an empty prefix leaves "/" to the index page
            rows += [route(self.prefix + "/", ("GET",), "page", tenant=True, errors="am_errors"),
                     route(self.prefix, ("GET",), "page", tenant=True, errors="am_errors")]
        self.ROUTES = tuple(rows)

    am_errors = staticmethod(AlertmanagerAPIHandlers.am_errors)

    @staticmethod
    def _answer(request: Any, body: bytes, ctype: bytes) -> bytes:
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", ctype)
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Cache-Control", b"no-cache")
        return body

    def page(self, request: Any, tenant: str) -> Any:
        def render(_: Any) -> bytes:
            body = PAGE % {"prefix": escape(self.prefix), "tenant": escape(tenant)}
            request.setHeader(b"Content-Security-Policy", CSP)
            request.setHeader(b"X-Frame-Options", b"DENY")
            return self._answer(request, body.encode("utf-8"), b"text/html; charset=utf-8")
        return self.api._am(tenant).addCallback(render)

    def static(self, request: Any, tenant: str, name: str) -> Any:
        def send(_: Any) -> bytes:
            if name not in self.files:
                request.setResponseCode(404)
                request.setHeader(b"Content-Length", b"0")
                return b""
            return self._answer(request, self.files[name], STATIC[name])
        return self.api._am(tenant).addCallback(send)
