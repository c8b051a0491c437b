"""The ruler's read API (Mimir's pkg/ruler/api.go, read half): <prefix>/api/v1/rules and
<prefix>/api/v1/alerts, each tenant seeing only its own groups and alerts, from every ruler of
the ruler ring; and /ruler/internal/rules, the tenant's groups evaluated by this ruler, which the
other rulers ask for (Mimir's Ruler.Rules gRPC call; not for users).

`RulesHandlers(manager, prefix)` parses the filters (type, rule_name[], rule_group[], file[]),
asks components/rulemanager.py, and writes Mimir's envelope ({"status", "data", "errorType",
"error"}) as Go's encoding/json would (HTML characters escaped, floats in Go's form)."""
import json
import math
from typing import TYPE_CHECKING, Any

from urdar.components import errors as E
from urdar.components.rulemanager import alerts_of, filter_rules
from urdar.components.rulershard import INTERNAL_RULES_PATH
from urdar.handlers.render import format_value
from urdar.handlers.routes import route

if TYPE_CHECKING:
    from urdar.components.rulemanager import RuleManager

_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
               "\u2029": "\\u2029"}


def go_json(v: Any) -> str:
    """JSON text as Go's encoding/json writes it for these shapes (maps in insertion order)."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, str):
        s = json.dumps(v, ensure_ascii=False)
        for c, esc in _GO_ESCAPES.items():
            s = s.replace(c, esc)
        return s
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            raise ValueError("unsupported float")
        text = format_value(v)
        # encoding/json trims the exponent's leading zero (1e-07 -> 1e-7).
        return text.replace("e-0", "e-").replace("e+0", "e+")
    if isinstance(v, dict):
        return "{" + ",".join(go_json(str(k)) + ":" + go_json(x) for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(go_json(x) for x in v) + "]"
    raise TypeError("cannot encode %r" % type(v))


def _args(request: Any, name: str) -> list[str]:
    vals = request.args.get(name.encode(), []) + request.args.get((name + "[]").encode(), [])
    return [v.decode("utf-8", "replace") for v in vals]


class RulesHandlers:
    def __init__(self, manager: "RuleManager", prefix: str = "/prometheus") -> None:
        self.manager = manager
        base = prefix.rstrip("/") + "/api/v1"
        self.ROUTES = (
            route(base + "/rules", ("GET",), "rules", tenant=True, errors="json"),
            route(base + "/alerts", ("GET",), "alerts", tenant=True, errors="json"),
            route(INTERNAL_RULES_PATH, ("GET",), "internal_rules", tenant=True),
        )

    def _ok(self, request: Any, data: Any) -> Any:
        """The envelope around `data` (a snapshot taken on the reactor), encoded in the ruler
        pool: a tenant with many alerts makes a large body."""
        def encode() -> bytes:
            return ('{"status":"success","data":%s,"errorType":"","error":""}'
                    % go_json(data)).encode("utf-8")

        def send(body: bytes) -> bytes:
            request.setResponseCode(200)
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Content-Length", b"%d" % len(body))
            return body
        return self.manager.off(encode).addCallback(send)

    def rules(self, request: Any, tenant: str) -> Any:
        types = _args(request, "type")
        rule_type = types[0].lower() if types else ""
        if rule_type not in ("", "alert", "record"):
            raise E.ComponentError(E.BAD_DATA, "unsupported rule type %s" % json.dumps(types[0]))
        names, groups, files = (_args(request, "rule_name"), _args(request, "rule_group"),
                                _args(request, "file"))
        d = self.manager.all_groups(tenant)
        d.addCallback(lambda gs: filter_rules(gs, rule_type, names, groups, files))
        return d.addCallback(lambda data: self._ok(request, data))

    def alerts(self, request: Any, tenant: str) -> Any:
        d = self.manager.all_groups(tenant).addCallback(alerts_of)
        return d.addCallback(lambda data: self._ok(request, data))

    def internal_rules(self, request: Any, tenant: str) -> Any:
        groups = self.manager.group_dicts(tenant)

        def encode() -> bytes:
            return json.dumps({"groups": groups}, separators=(",", ":")).encode("utf-8")

        def send(body: bytes) -> bytes:
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Content-Length", b"%d" % len(body))
            return body
        return self.manager.off(encode).addCallback(send)
