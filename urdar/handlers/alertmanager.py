"""HTTP endpoints of the multi-tenant alertmanager's configuration API (Mimir's
pkg/alertmanager/api.go, config half): /api/v1/alerts (GET, POST, DELETE; -alertmanager.enable-api),
/multitenant_alertmanager/delete_tenant_config and the operators' /multitenant_alertmanager/configs
and /multitenant_alertmanager/status.

Answers are Mimir's: the tenant's UserConfig as YAML (200), 404 "alertmanager storage object not
found", 201 on a stored config, 200 on delete, plain-text 400 with the reason when validation or a
limit fails. The body is bounded at header time by MAX_CONFIG_BODY_BYTES (413) and then by the
tenant's -alertmanager.max-config-size-bytes (400, Mimir's text)."""
import json
import re
from typing import TYPE_CHECKING, Any

import re2
from twisted.internet import defer

from urdar.components import errors as E
from urdar.components.alertmanager import ERR_TOO_BIG, MAX_CONFIG_BODY_BYTES, AlertmanagerError
from urdar.components.amcore import AMError, Matcher, NotFound as SilenceNotFound, Silence
from urdar.components.amshard import FORWARDED_HEADER
from urdar.components.amcore import filter_matches, format_time, parse_matchers, parse_time
from urdar.handlers.errors import json_response, text_response
from urdar.handlers.routes import require_tenant, route
from urdar.net.server import Refusal

if TYPE_CHECKING:
    from urdar.components.alertmanager import AlertmanagerConfigs
    from urdar.components.ammultitenant import MultitenantAlertmanager


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


# ---- API v2 (/alertmanager/api/v2/...) ----------------------------------------------------------

MAX_API_BODY_BYTES = 4 << 20
MAX_FILTERS = 100


def _am_style(request: Any, status: int, err: Any) -> bytes:
    """Alertmanager's API answers errors as a JSON string; Mimir's own refusals (no configuration,
    no tenant) stay plain text."""
    if isinstance(err, NotConfigured) or status in (401, 413):
        return text_response(request, status, err.message)
    if isinstance(err, SpecError):
        return json_response(request, status, {"code": err.code, "message": err.message})
    return json_response(request, status, err.message)


class NotConfigured(AlertmanagerError):
    pass


class SpecError(AlertmanagerError):
    """A request the OpenAPI spec refuses before Alertmanager's handler runs: go-swagger's
    {"code", "message"} body (602 a required field, 601 a wrongly typed one, 400 a body that is
    not JSON)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(E.BAD_DATA if code == 400 else E.UNPROCESSABLE, message)
        self.code = code


UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")


def _uuid_path(sid: str) -> None:
    if not UUID_RE.match(sid):
        raise SpecError(601, "silenceID in path must be of type uuid: %s" % json.dumps(sid))


def _required(obj: dict, fields: tuple, where: str = "") -> None:
    for f in fields:
        if obj.get(f) is None:
            raise SpecError(602, "%s%s in body is required" % (where, f))


def _bad(msg: str) -> AlertmanagerError:
    return AlertmanagerError(E.BAD_DATA, msg)


def _bool_arg(request: Any, name: str) -> bool:
    vals = request.args.get(name.encode())
    if not vals:
        return True
    # Alertmanager takes anything but a false value as the default (true).
    return vals[-1].decode("utf-8", "replace") not in ("false", "0", "f", "F", "FALSE", "False")


def _filters(request: Any) -> list:
    vals = request.args.get(b"filter") or []
    if len(vals) > MAX_FILTERS:
        raise _bad("too many filters (limit: %d)" % MAX_FILTERS)
    out = []
    for v in vals:
        try:
            out.extend(parse_matchers(v.decode("utf-8")))
        except (AMError, UnicodeDecodeError) as exc:
            raise _bad(str(exc)) from None
    return out


def _receiver_re(request: Any) -> Any:
    vals = request.args.get(b"receiver")
    if not vals or not vals[-1]:
        return None
    text = vals[-1].decode("utf-8", "replace")
    try:
        return re2.compile("^(?:" + text + ")$")
    except Exception as exc:
        raise _bad("failed to parse receiver param: %s" % exc) from None


def _json_body(request: Any, what: str) -> Any:
    if getattr(request, "body_too_large", False):
        raise AlertmanagerError(E.TOO_LARGE, "request body too large: the limit is %d bytes"
                                % MAX_API_BODY_BYTES)
    request.content.seek(0)
    raw = request.content.read(MAX_API_BODY_BYTES + 1)
    if len(raw) > MAX_API_BODY_BYTES:
        raise AlertmanagerError(E.TOO_LARGE, "request body too large: the limit is %d bytes"
                                % MAX_API_BODY_BYTES)
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise SpecError(400, "parsing %s body from \"\" failed, because %s" % (what, exc)) from None


def gettable_silence(s: Any, now: float) -> dict:
    return {"id": s.id, "status": {"state": s.state(now)}, "updatedAt": format_time(s.updated_at),
            "comment": s.comment, "createdBy": s.created_by, "endsAt": format_time(s.ends_at),
            "matchers": [{"isEqual": m.is_equal, "isRegex": m.is_regex, "name": m.name,
                          "value": m.value} for m in s.matchers],
            "startsAt": format_time(s.starts_at)}


def _silence_order(s: Any, now: float) -> tuple:
    st = s.state(now)
    if st == "active":
        return (0, s.ends_at)
    if st == "pending":
        return (1, s.starts_at)
    return (2, -s.ends_at)


def postable_silence(body: Any) -> Any:
    if not isinstance(body, dict):
        raise SpecError(400, "parsing silence body from \"\" failed, because it is not an object")
    _required(body, ("comment", "createdBy", "endsAt", "matchers", "startsAt"))
    ms = body.get("matchers")
    if not isinstance(ms, list):
        raise SpecError(400, "parsing silence body from \"\" failed, because matchers is not an array")
    if not ms:
        raise SpecError(612, "matchers in body should have at least 1 items")
    matchers = []
    for i, m in enumerate(ms):
        if not isinstance(m, dict):
            raise SpecError(400, "parsing silence body from \"\" failed, because a matcher is not an object")
        _required(m, ("isRegex", "name", "value"), "matchers.%d." % i)
        if not isinstance(m.get("name"), str) or not isinstance(m.get("value"), str):
            raise SpecError(400, "parsing silence body from \"\" failed, because a matcher's name "
                            "and value are strings")
        regex, equal = bool(m.get("isRegex", False)), bool(m.get("isEqual", True))
        op = ("=~" if equal else "!~") if regex else ("=" if equal else "!=")
        try:
            matchers.append(Matcher(op, m["name"], m["value"]))
        except AMError as exc:
            raise _bad(str(exc)) from None
    try:
        starts, ends = parse_time(body.get("startsAt")), parse_time(body.get("endsAt"))
    except AMError as exc:
        raise _bad(str(exc)) from None
    if starts is None:
        raise _bad("startsAt in body is required")
    if ends is None:
        raise _bad("endsAt in body is required")
    sid = body.get("id") or ""
    return Silence(str(sid), matchers, starts, ends, 0.0, str(body.get("createdBy") or ""),
                   str(body.get("comment") or ""))


class AlertmanagerAPIHandlers:
    """Alertmanager's API v2 for the tenant of X-Scope-OrgID, under -http.alertmanager-http-prefix."""
    tenancy = None

    def __init__(self, mt: "MultitenantAlertmanager", prefix: str = "/alertmanager") -> None:
        self.mt = mt
        p = prefix.rstrip("/") + "/api/v2"
        self.ROUTES = (
            route(p + "/alerts", ("GET", "POST"), "alerts", tenant=True, errors="am_errors"),
            route(p + "/alerts/groups", ("GET",), "groups", tenant=True, errors="am_errors"),
            route(p + "/silences", ("GET", "POST"), "silences", tenant=True, errors="am_errors"),
            route(p + "/silence/<sid>", ("GET", "DELETE"), "silence", tenant=True,
                  errors="am_errors"),
            route(p + "/status", ("GET",), "status", tenant=True, errors="am_errors"),
            route(p + "/receivers", ("GET",), "receivers", tenant=True, errors="am_errors"),
        )
        self.ADMIT = {"alerts": "admit_body", "silences": "admit_body"}

    am_errors = staticmethod(_am_style)

    def admit_body(self, headers: Any, length: Any) -> Any:
        return require_tenant(self.tenancy, headers, MAX_API_BODY_BYTES, lambda size: Refusal(
            413, "request body too large: %d bytes, the limit is %d" % (size, MAX_API_BODY_BYTES)))

    def _am(self, tenant: str) -> "defer.Deferred[Any]":
        def not_configured(f: Any) -> Any:
            f.trap(AlertmanagerError)
            if f.value.cause == E.NOT_FOUND:
                raise NotConfigured(E.NOT_FOUND, f.value.message)
            return f
        return self.mt.instance(tenant).addErrback(not_configured)

    def _forward(self, request: Any, tenant: str) -> "defer.Deferred[bytes] | None":
        """With a ring (components/amshard.py): alerts POSTs go to every replica of the tenant,
        other requests to a replica when this instance is not one; None: served here."""
        dist = getattr(self.mt, "distributor", None)
        if dist is None or request.getHeader(FORWARDED_HEADER) is not None:
            return None
        to_all = request.method == b"POST" and request.path.endswith(b"/alerts")
        if not to_all and self.mt.owns(tenant):
            return None
        body = None
        if request.method in (b"POST", b"PUT"):
            if getattr(request, "body_too_large", False):
                raise AlertmanagerError(E.TOO_LARGE, "request body too large: the limit is %d "
                                        "bytes" % MAX_API_BODY_BYTES)
            request.content.seek(0)
            body = request.content.read(MAX_API_BODY_BYTES + 1)
        d = dist.forward(tenant, request.method.decode(), request.uri.decode("latin-1"), body,
                         request.getHeader(b"Content-Type") or b"", to_all)

        def answer(r: Any) -> bytes:
            request.setResponseCode(r.code)
            if r.ctype:
                request.setHeader(b"Content-Type", r.ctype)
            request.setHeader(b"Content-Length", b"%d" % len(r.body))
            return bytes(r.body)

        def failed(f: Any) -> Any:
            raise AlertmanagerError(E.UNAVAILABLE, "alertmanager replicas of the tenant did not "
                                    "answer: %s" % (f.getErrorMessage() or f.type.__name__))
        return d.addCallbacks(answer, failed)

    @staticmethod
    def _empty(request: Any) -> bytes:
        request.setResponseCode(200)
        request.setHeader(b"Content-Length", b"0")
        return b""

    @staticmethod
    def _json(request: Any, obj: Any, code: int = 200) -> bytes:
        return json_response(request, code, obj)

    def alerts(self, request: Any, tenant: str) -> Any:
        fw = self._forward(request, tenant)
        if fw is not None:
            return fw
        if request.method == b"POST":
            body = _json_body(request, "alerts")
            if not isinstance(body, list):
                raise SpecError(400, "parsing alerts body from \"\" failed, because the body is "
                                "not an array")
            for i, item in enumerate(body):
                if isinstance(item, dict):
                    _required(item, ("labels",), "%d." % i)

            def post(am: Any) -> bytes:
                errs = am.post_alerts(body)
                if errs:
                    raise _bad("; ".join(errs))
                return self._empty(request)
            return self._am(tenant).addCallback(post)
        filters, rcv = _filters(request), _receiver_re(request)
        flags = {k: _bool_arg(request, k) for k in ("silenced", "inhibited", "active", "unprocessed")}
        d = self._am(tenant).addCallback(lambda am: am.list_alerts(filters, rcv, **flags))
        return d.addCallback(lambda out: self._json(request, out))

    def groups(self, request: Any, tenant: str) -> Any:
        fw = self._forward(request, tenant)
        if fw is not None:
            return fw
        filters, rcv = _filters(request), _receiver_re(request)
        flags = {k: _bool_arg(request, k) for k in ("silenced", "inhibited", "active")}
        d = self._am(tenant).addCallback(lambda am: am.alert_groups(filters, rcv, **flags))
        return d.addCallback(lambda out: self._json(request, out))

    def silences(self, request: Any, tenant: str) -> Any:
        fw = self._forward(request, tenant)
        if fw is not None:
            return fw
        if request.method == b"POST":
            sil = postable_silence(_json_body(request, "silence"))

            def post(am: Any) -> bytes:
                now = am.clock.seconds()
                if sil.starts_at >= sil.ends_at:
                    raise _bad("Failed to create silence: start time must be before end time")
                if sil.ends_at < now:
                    raise _bad("Failed to create silence: end time can't be in the past")
                try:
                    sid = am.silences.set(sil)
                except SilenceNotFound:
                    raise AlertmanagerError(E.NOT_FOUND, "silence not found") from None
                except AMError as exc:
                    raise _bad(str(exc)) from None
                return self._json(request, {"silenceID": sid})
            return self._am(tenant).addCallback(post)
        filters = _filters(request)

        def get(am: Any) -> bytes:
            now = am.clock.seconds()
            out = [s for s in am.silences.by_id.values()
                   if filter_matches(filters, {m.name: m.value for m in s.matchers})]
            out.sort(key=lambda s: _silence_order(s, now))
            return self._json(request, [gettable_silence(s, now) for s in out])
        return self._am(tenant).addCallback(get)

    def silence(self, request: Any, tenant: str, sid: str) -> Any:
        fw = self._forward(request, tenant)
        if fw is not None:
            return fw
        _uuid_path(sid)
        def run(am: Any) -> bytes:
            try:
                if request.method == b"DELETE":
                    am.silences.expire(sid)
                    return self._empty(request)
                return self._json(request, gettable_silence(am.silences.get(sid), am.clock.seconds()))
            except SilenceNotFound:
                request.setResponseCode(404)
                request.setHeader(b"Content-Length", b"0")
                return b""
            except AMError as exc:
                raise AlertmanagerError(E.INTERNAL, str(exc)) from None
        return self._am(tenant).addCallback(run)

    def status(self, request: Any, tenant: str) -> Any:
        fw = self._forward(request, tenant)
        if fw is not None:
            return fw
        def run(am: Any) -> bytes:
            return self._json(request, {
                "cluster": {"status": "disabled", "peers": []},
                "config": {"original": am.config.raw if am.config else ""},
                "uptime": format_time(am.started_at),
                "versionInfo": {"branch": "", "buildDate": "", "buildUser": "", "goVersion": "",
                                "revision": "", "version": "0.25.0-urdar"}})
        return self._am(tenant).addCallback(run)

    def receivers(self, request: Any, tenant: str) -> Any:
        fw = self._forward(request, tenant)
        if fw is not None:
            return fw
        return self._am(tenant).addCallback(lambda am: self._json(
            request, [{"name": n} for n in (am.config.receivers if am.config else {})]))


class AlertmanagerStateHandlers:
    """The replicas' internal endpoint (components/amshard.py's StateReplicator): GET the
    tenant's silences and notification log, POST some of them to be merged by Alertmanager's
    rules. 404 when this instance does not run the tenant's Alertmanager."""
    tenancy = None

    def __init__(self, mt: "MultitenantAlertmanager") -> None:
        from urdar.components.amshard import INTERNAL_STATE_PATH
        self.mt = mt
        self.ROUTES = (route(INTERNAL_STATE_PATH, ("GET", "POST"), "state", tenant=True,
                             errors="am_errors"),)
        self.ADMIT = {"state": "admit_body"}

    am_errors = staticmethod(_am_style)

    def admit_body(self, headers: Any, length: Any) -> Any:
        return require_tenant(self.tenancy, headers, MAX_API_BODY_BYTES, lambda size: Refusal(
            413, "request body too large: %d bytes, the limit is %d" % (size, MAX_API_BODY_BYTES)))

    def state(self, request: Any, tenant: str) -> Any:
        am = self.mt.tenants.get(tenant)
        if am is None:
            raise NotConfigured(E.NOT_FOUND, "the Alertmanager of this tenant does not run here")
        if request.method == b"GET":
            return json_response(request, 200, am.state())
        body = _json_body(request, "state")
        if not isinstance(body, dict) or not all(
                isinstance(body.get(k, []), list) for k in ("silences", "nflog")):
            raise SpecError(400, "expected {\"silences\": [...], \"nflog\": [...]}")
        try:
            am.merge_state(body)
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError(400, "invalid state: %s" % exc) from None
        request.setResponseCode(200)
        request.setHeader(b"Content-Length", b"0")
        return b""
