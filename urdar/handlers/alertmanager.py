"""HTTP endpoints of the multi-tenant alertmanager's configuration API (Mimir's
pkg/alertmanager/api.go, config half): /api/v1/alerts (GET, POST, DELETE; -alertmanager.enable-api),
/multitenant_alertmanager/delete_tenant_config and the operators' /multitenant_alertmanager/configs
and /multitenant_alertmanager/status.

Answers are Mimir's: the tenant's UserConfig as YAML (200), 404 "alertmanager storage object not
found", 201 on a stored config, 200 on delete, plain-text 400 with the reason when validation or a
limit fails. The body is bounded at header time by MAX_CONFIG_BODY_BYTES (413) and then by the
tenant's -alertmanager.max-config-size-bytes (400, Mimir's text)."""
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from urdar.components import errors as E
from urdar.components.alertmanager import ERR_TOO_BIG, MAX_CONFIG_BODY_BYTES, AlertmanagerError
from urdar.handlers.routes import require_tenant, route
from urdar.net.server import Refusal

if TYPE_CHECKING:
    from urdar.components.alertmanager import AlertmanagerConfigs


STATUS_PAGE = """<!doctype html>
<html>
<head>
    <meta charset="UTF-8">
    <title>Alertmanager Status</title>
</head>
<body>
<h1>Alertmanager Status: %s</h1>
</body>
</html>"""


class AlertmanagerHandlers:
    tenancy = None      # set by the route table when it mounts this handler

    def __init__(self, configs: "AlertmanagerConfigs", state: Any = None) -> None:
        self.configs = configs
        # state() -> the module's service state for the status page (Mimir's services.State
        # names); the handlers are mounted once the module runs.
        self.state = state or (lambda: "Running")
        rows = [route("/multitenant_alertmanager/delete_tenant_config", ("POST",),
                      "delete_tenant_config", tenant=True),
                route("/multitenant_alertmanager/configs", ("GET",), "all_configs"),
                route("/multitenant_alertmanager/status", ("GET",), "status_page")]
        if configs.enable_api:
            # One row for the three methods (the route table names endpoints by path).
            rows.append(route("/api/v1/alerts", ("GET", "POST", "DELETE"), "alerts", tenant=True))
        self.ROUTES = tuple(rows)
        self.ADMIT = {"alerts": "admit_config", "delete_tenant_config": "admit_tenant"}

    def admit_tenant(self, headers: Any, length: Any) -> Any:
        return require_tenant(self.tenancy, headers)

    def admit_config(self, headers: Any, length: Any) -> Any:
        return require_tenant(self.tenancy, headers, MAX_CONFIG_BODY_BYTES, lambda size: Refusal(
            413, "alertmanager configuration too large: the body has %d bytes, the limit is %d"
            % (size, MAX_CONFIG_BODY_BYTES)))

    @staticmethod
    def _answer(request: Any, code: int, body: bytes = b"", ctype: bytes = b"") -> bytes:
        request.setResponseCode(code)
        if ctype:
            request.setHeader(b"Content-Type", ctype)
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body

    def alerts(self, request: Any, tenant: str) -> Any:
        if request.method == b"POST":
            return self.set_config(request, tenant)
        if request.method == b"DELETE":
            deleted = self.configs.delete_user_config(tenant)
            return deleted.addCallback(lambda _: self._answer(request, 200))
        got = self.configs.get_user_config(tenant)
        return got.addCallback(lambda text: self._answer(request, 200, text.encode("utf-8"),
                                                       b"application/yaml"))

    def set_config(self, request: Any, tenant: str) -> Any:
        if getattr(request, "body_too_large", False):
            raise AlertmanagerError(E.TOO_LARGE, "alertmanager configuration too large: the limit "
                                    "is %d bytes" % MAX_CONFIG_BODY_BYTES)
        limit = self.configs.max_config_bytes(tenant)
        request.content.seek(0)
        cap = min(limit, MAX_CONFIG_BODY_BYTES) if limit > 0 else MAX_CONFIG_BODY_BYTES
        body = request.content.read(cap + 1)
        if len(body) > cap:
            if limit > 0 and cap == limit:
                raise AlertmanagerError(E.BAD_DATA, ERR_TOO_BIG % limit)     # Mimir: no prefix
            raise AlertmanagerError(E.TOO_LARGE, "alertmanager configuration too large: the limit "
                                    "is %d bytes" % MAX_CONFIG_BODY_BYTES)
        d = defer.maybeDeferred(self.configs.set_user_config, tenant, body)
        return d.addCallback(lambda _: self._answer(request, 201))

    def all_configs(self, request: Any) -> Any:
        """Every tenant's configuration (operators; served with or without -alertmanager.enable-api)."""
        return self.configs.list_all().addCallback(
            lambda text: self._answer(request, 200, text.encode("utf-8"), b"application/yaml"))

    def status_page(self, request: Any) -> bytes:
        """Mimir's /multitenant_alertmanager/status: the service state on a small HTML page."""
        from html import escape
        body = STATUS_PAGE % escape(str(self.state()))
        return self._answer(request, 200, body.encode("utf-8"), b"text/html; charset=utf-8")

    def delete_tenant_config(self, request: Any, tenant: str) -> Any:
        return self.configs.delete_user_config(tenant).addCallback(
            lambda _: self._answer(request, 200))
