"""HTTP endpoints of the ruler's configuration API (Mimir's pkg/ruler/api.go, config half):
<prefix>/config/v1/rules[/{namespace}[/{group}]], /ruler/delete_tenant_config and the operators'
/ruler/rule_groups (every tenant's groups).

`RulerHandlers(ruler, prefix)` parses, calls components/ruler.py, renders. Namespaces and group
names are taken from the raw request path and unescaped per segment (as Mimir's router does with
encoded paths), so "a%2Fb" is the namespace "a/b", not two segments. Answers are Mimir's: YAML
200 for reads ("{}" when the tenant has no groups), 202 with Mimir's JSON for changes, plain-text
errors (400 validation and limits, 404 "group does not exist" / "group namespace does not
exist"), 413 for a body over MAX_RULE_GROUP_BYTES."""
import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from twisted.internet import defer

from urdar.components import errors as E
from urdar.components.ruler import MAX_RULE_GROUP_BYTES, RulerError
from urdar.handlers.routes import require_tenant, route
from urdar.net.server import Refusal

if TYPE_CHECKING:
    from urdar.components.ruler import Ruler

ACCEPTED = json.dumps({"status": "success", "data": None, "errorType": "", "error": ""},
                      separators=(",", ":")).encode()
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})(.{0,2})", re.S)


def path_segment(raw: bytes) -> str:
    """Go's url.PathUnescape of one path segment; RulerError(BAD_DATA) with Go's text when an
    escape is malformed or the result is not UTF-8."""
    bad = _BAD_ESCAPE.search(raw)
    if bad is not None:
        raise RulerError(E.BAD_DATA, "invalid URL escape %s" % json.dumps(
            (b"%" + bad.group(1)).decode("utf-8", "replace")))
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise RulerError(E.BAD_DATA, "namespace and group name must be valid UTF-8") from None


class RulerHandlers:
    tenancy = None      # set by the route table when it mounts this handler

    def __init__(self, ruler: "Ruler", prefix: str = "/prometheus") -> None:
        self.ruler = ruler
        self.base = prefix.rstrip("/") + "/config/v1/rules"
        self._depth = len(self.base.split("/"))
        rows = [route("/ruler/delete_tenant_config", ("POST",), "delete_tenant_config", tenant=True),
                route("/ruler/rule_groups", ("GET",), "rule_groups")]
        if ruler.config.enable_api:
            rows += [
                route(self.base, ("GET",), "list_rules", tenant=True),
                # One row for the three methods (the route table names endpoints by path).
                route(self.base + "/<path:rest>", ("GET", "POST", "DELETE"), "rules", tenant=True),
            ]
        self.ROUTES = tuple(rows)
        self.ADMIT = {"rules": "admit_rule_group", "delete_tenant_config": "admit_tenant"}

    # ---- helpers ---------------------------------------------------------------------------

    def admit_tenant(self, headers: Any, length: Any) -> Any:
        return require_tenant(self.tenancy, headers)

    def admit_rule_group(self, headers: Any, length: Any) -> Any:
        """A body over MAX_RULE_GROUP_BYTES (a rule group; GET and DELETE have none) is 413
        before it is read."""
        return require_tenant(self.tenancy, headers, MAX_RULE_GROUP_BYTES, lambda size: Refusal(
            413, "rule group too large: the body has %d bytes, the limit is %d" % (
                size, MAX_RULE_GROUP_BYTES)))

    def _names(self, request: Any) -> tuple[str, str]:
        """(namespace, group) from the raw path below <prefix>/config/v1/rules; group '' when
        only a namespace is given. More segments, or empty ones, are 404 as in Mimir's router."""
        segments = request.path.split(b"/")[self._depth:]
        if not 1 <= len(segments) <= 2 or not all(segments):
            raise RulerError(E.NOT_FOUND, "404 page not found")
        names = [path_segment(s) for s in segments]
        return names[0], (names[1] if len(names) == 2 else "")

    @staticmethod
    def _yaml(request: Any, text: str) -> bytes:
        body = text.encode("utf-8")
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/yaml")
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body

    @staticmethod
    def _accepted(request: Any, _: Any = None) -> bytes:
        request.setResponseCode(202)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"%d" % len(ACCEPTED))
        return ACCEPTED

    # ---- routes ----------------------------------------------------------------------------

    def list_rules(self, request: Any, tenant: str) -> Any:
        return self.ruler.list_rules(tenant).addCallback(lambda text: self._yaml(request, text))

    def rules(self, request: Any, tenant: str, rest: str) -> Any:
        method = {b"POST": self.create_rule_group,
                  b"DELETE": self.delete_rules}.get(request.method, self.get_rules)   # GET, HEAD
        return method(request, tenant)

    def get_rules(self, request: Any, tenant: str) -> Any:
        namespace, group = self._names(request)
        if group:
            d = self.ruler.get_rule_group(tenant, namespace, group)
        else:
            d = self.ruler.list_rules(tenant, namespace)
        return d.addCallback(lambda text: self._yaml(request, text))

    def create_rule_group(self, request: Any, tenant: str) -> Any:
        if getattr(request, "body_too_large", False):
            raise RulerError(E.TOO_LARGE, "rule group too large: the limit is %d bytes"
                             % MAX_RULE_GROUP_BYTES)
        namespace, group = self._names(request)
        if group:
            # Mimir has no POST route with a group name.
            raise RulerError(E.NOT_FOUND, "404 page not found")
        request.content.seek(0)
        body = request.content.read(MAX_RULE_GROUP_BYTES + 1)
        if len(body) > MAX_RULE_GROUP_BYTES:
            raise RulerError(E.TOO_LARGE, "rule group too large: the limit is %d bytes"
                             % MAX_RULE_GROUP_BYTES)
        d = defer.maybeDeferred(self.ruler.create_rule_group, tenant, namespace, body)
        return d.addCallback(lambda _: self._accepted(request))

    def delete_rules(self, request: Any, tenant: str) -> Any:
        namespace, group = self._names(request)
        if group:
            d = self.ruler.delete_rule_group(tenant, namespace, group)
        else:
            d = self.ruler.delete_namespace(tenant, namespace)
        return d.addCallback(lambda _: self._accepted(request))

    def rule_groups(self, request: Any) -> Any:
        """Every tenant's groups (an operator endpoint, served with or without -ruler.enable-api)."""
        return self.ruler.list_all_rules().addCallback(lambda text: self._yaml(request, text))

    def delete_tenant_config(self, request: Any, tenant: str) -> Any:
        def ok(_: Any) -> bytes:
            request.setResponseCode(200)
            request.setHeader(b"Content-Length", b"0")
            return b""
        return self.ruler.delete_tenant_config(tenant).addCallback(ok)

