"""The route table: every HTTP route is registered here with its methods, whether it needs a
tenant, and how its errors look, so tenant resolution and error rendering happen once for all.

Each handler class lists its routes in ROUTES as `route(path, methods, method_name, tenant=...,
errors=...)` rows (Mimir's pkg/api/api.go reads the same way); `RouteTable.mount(handler)`
registers them. A tenant route resolves X-Scope-OrgID (net/tenant.py) before the handler runs and
calls `handler(request, tenant, **path_args)`; a missing tenant is 401 "no org id", a malformed
one 400, in plain text as Mimir's auth middleware answers, whatever the route's error style. Any
exception the handler raises or its Deferred fails with is rendered through handlers/errors.py:
"text" (write and Mimir endpoints), "json" (the Prometheus API envelope) or the name of a handler
method `style(request, status, err)` for protocols with their own error bodies (OTLP)."""
from dataclasses import dataclass
from typing import Any

from klein import Klein
from twisted.internet import defer

from urdar.handlers.errors import STATUS, fail, json_style, text_style
from urdar.net.server import Admission, Instrument, Refusal, Ticket, route_label
from urdar.net.tenant import Tenancy, TenantError

STYLES = {"text": text_style, "json": json_style}


@dataclass(frozen=True)
class Route:
    """One row of a handler's ROUTES: URL pattern (Klein/werkzeug syntax), methods, the name of
    the handler method, whether the route is per tenant, and its error style."""
    path: str
    methods: tuple
    name: str
    tenant: bool = False
    errors: str = "text"
    direct: bool = False
    cancel_on_hangup: bool = False


def route(path, methods, name, tenant=False, errors="text", direct=False, cancel_on_hangup=False):
    """`direct`: a hot route without path arguments (pushes, queries) that the server calls
    without matching it through the router for every request (net/server.Admission.direct);
    with `cancel_on_hangup` its Deferred answer is cancelled when the client goes away, as
    Klein does for routed requests."""
    return Route(path, tuple(methods), name, tenant, errors, direct, cancel_on_hangup)


class RouteTable:
    """One Klein app holding every registered route; `routes` lists them for the index page."""

    def __init__(self, tenancy: Tenancy | None = None, instrument: Instrument | None = None) -> None:
        self.tenancy = tenancy if tenancy is not None else Tenancy()
        self.instrument = instrument
        self.app = Klein()
        self.routes: list[Route] = []
        self._owners: dict[tuple[str, tuple[str, ...]], str] = {}
        # Header-time checks (endpoint -> check(headers, length)), consulted by net/server.py
        # before a request body is read: unknown routes 404/405, tenant routes 401/400, sizes 413.
        self._checks: dict[str, Any] = {}
        self.admission = Admission(self.app.url_map, self._checks)
        setattr(self.app, "admission", self.admission)    # for servers given only the app

    def register(self, path, fn, methods=("GET",), tenant=False, errors=text_style, owner="?",
                 admit=None, direct=False, cancel_on_hangup=False):
        """Serve `fn` at `path`; `errors` is a style(request, status, err) from handlers/errors.py;
        `admit(headers, length)` (optional) vets the request before its body is read, returning a
        net/server Refusal or Ticket; tenant routes without one still refuse a missing tenant."""
        methods = tuple(methods)
        if (path, methods) in self._owners:
            raise ValueError("route %s %s registered by %s and %s"
                             % (methods, path, self._owners[(path, methods)], owner))
        self._owners[(path, methods)] = owner
        tenancy = self.tenancy
        # Mimir's auth middleware answers before the Prometheus API does: plain text, not JSON.
        tenant_errors = text_style if errors is json_style else errors

        def call(request, **kw):
            try:
                if tenant:
                    try:
                        who = tenancy.tenant_of(request)
                    except TenantError as exc:
                        return fail(request, exc, tenant_errors)
                    result = fn(request, who, **kw)
                else:
                    result = fn(request, **kw)
            except Exception as exc:
                return fail(request, exc, errors)
            if isinstance(result, defer.Deferred):
                return result.addErrback(lambda f: fail(request, f, errors))
            return result

        endpoint = "%s:%s" % (owner, path)
        if self.instrument is not None:
            call = self.instrument.wrap(route_label(path), call)
        call.__name__ = endpoint
        self.app.route(path, methods=list(methods), endpoint=endpoint, strict_slashes=False)(call)
        if direct:
            if "<" in path:
                raise ValueError("direct route %s has path arguments" % path)
            for m in methods:
                self.admission.add_direct(m, path, endpoint, call, cancel_on_hangup)
        if admit is not None:
            self._checks[endpoint] = admit
        elif tenant:
            self._checks[endpoint] = lambda headers, length: require_tenant(tenancy, headers)
        self.routes.append(Route(path, methods, getattr(fn, "__name__", "?"), tenant, direct=direct))
        return self

    def mount(self, handler: Any) -> "RouteTable":
        """Register every row of handler.ROUTES. Rows may also be plain (path, methods, name)
        tuples: no tenant, plain-text errors."""
        owner = type(handler).__name__
        admits = getattr(handler, "ADMIT", {})
        if admits and getattr(handler, "tenancy", None) is None:
            handler.tenancy = self.tenancy      # its header-time checks resolve tenants too
        for row in handler.ROUTES:
            if not isinstance(row, Route):
                row = route(*row)
            style = STYLES.get(row.errors) or getattr(handler, row.errors)
            admit = getattr(handler, admits[row.name]) if row.name in admits else None
            self.register(row.path, getattr(handler, row.name), row.methods, row.tenant, style, owner,
                          admit, row.direct, row.cancel_on_hangup)
        return self

    def resource(self):
        return self.app.resource()


def require_tenant(tenancy, headers, max_body_bytes=0, too_large=None):
    """A header-time check for a tenant route: 401/400 (dskit's texts, statuses from the error
    table) without a usable X-Scope-OrgID, else a Ticket for `max_body_bytes` (0: the server-wide
    limit) with `too_large(size)` as its refusal past that."""
    try:
        tenancy.tenant_of_headers(headers)
    except TenantError as exc:
        return Refusal(STATUS[exc.cause], exc.message)
    return Ticket(max_body_bytes, too_large)
