"""The multi-tenant alertmanager's configuration store and validation (Mimir's
pkg/alertmanager/api.go config half and alertstore/bucketclient).

A tenant's configuration is a YAML document `{template_files: {name: body}, alertmanager_config:
"<alertmanager YAML>"}`; it is kept in the alertmanager bucket under `alerts/<tenant>` as an
alertspb.AlertConfigDesc protobuf (user=1, raw_config=2, templates=3 of {filename=1, body=2}),
Mimir's layout, so a bucket is readable by either. Errors are ComponentErrors with Mimir's texts.
"""
import fnmatch
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import yaml
from twisted.internet import defer

from urdar.components import errors as E
from urdar.components.amintegrations import validate_receivers
from urdar.components.amreceivers import ConfigError
from urdar.components.rulefmt import _field_bytes, _field_str, _fields
from urdar.gotemplate import ParseError, Template
from urdar.gotemplate.alertmanager import alertmanager_funcs
from urdar.net.offload import run_or_inline
from urdar.storage.bucket import NotFound, is_tenant_segment

if TYPE_CHECKING:
    from urdar.components.limits import Overrides
    from urdar.net.offload import Offload

log = logging.getLogger(__name__)

ALERTS_PREFIX = "alerts"
# Hard bound on one POSTed configuration (the per-tenant limit defaults to 0 = unlimited in Mimir;
# a shared service still bounds what one request holds).
MAX_CONFIG_BODY_BYTES = 8 << 20
# The top-level keys of an Alertmanager configuration file.
AM_KEYS = frozenset(("global", "route", "inhibit_rules", "receivers", "templates",
                     "mute_time_intervals", "time_intervals", "tracing"))
ERR_NOT_FOUND = "alertmanager storage object not found"
ERR_VALIDATING = "error validating Alertmanager config"
ERR_MARSHALLING = "error marshalling YAML Alertmanager config"
ERR_NO_CONFIG = ("configuration provided is empty, if you'd like to remove your configuration "
                 "please use the delete configuration endpoint")
ERR_TOO_BIG = "Alertmanager configuration is too big, limit: %d bytes"


class AlertmanagerError(E.ComponentError):
    pass


@dataclass
class AlertConfig:
    """One tenant's configuration: the alertmanager YAML and its template files."""
    user: str = ""
    raw_config: str = ""
    templates: dict[str, str] = field(default_factory=dict)


# ---- protobuf (alertspb.AlertConfigDesc) -------------------------------------------------------

def encode_config(c: AlertConfig) -> bytes:
    out = _field_str(1, c.user) + _field_str(2, c.raw_config)
    for name in sorted(c.templates):
        out += _field_bytes(3, _field_str(1, name) + _field_str(2, c.templates[name]))
    return out


def decode_config(data: bytes) -> AlertConfig:
    """AlertConfig from AlertConfigDesc bytes; ValueError (or UnicodeDecodeError) when malformed."""
    c = AlertConfig()
    for num, v in _fields(data):
        if not isinstance(v, bytes):
            continue
        if num == 1:
            c.user = v.decode("utf-8")
        elif num == 2:
            c.raw_config = v.decode("utf-8")
        elif num == 3:
            name = body = ""
            for n2, v2 in _fields(v):
                if n2 == 1 and isinstance(v2, bytes):
                    name = v2.decode("utf-8")
                elif n2 == 2 and isinstance(v2, bytes):
                    body = v2.decode("utf-8")
            c.templates[name] = body
    return c


# ---- YAML (Mimir's UserConfig) -----------------------------------------------------------------

class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: Any, s: str) -> Any:
    # Multi-line strings as literal blocks, as Go's yaml writes alertmanager_config.
    style = "|" if "\n" in s else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style=style)


_Dumper.add_representer(str, _str)


def format_user_config(c: AlertConfig) -> str:
    doc = {"template_files": dict(sorted(c.templates.items())), "alertmanager_config": c.raw_config}
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1 << 30)


def format_all(configs: dict[str, AlertConfig]) -> str:
    # Mimir streams one `tenant: config` mapping per tenant: no tenants is an empty body.
    if not configs:
        return ""
    doc = {t: {"template_files": dict(sorted(c.templates.items())),
               "alertmanager_config": c.raw_config} for t, c in sorted(configs.items())}
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1 << 30)


def _bad(reason: str) -> AlertmanagerError:
    return AlertmanagerError(E.BAD_DATA, "%s: %s" % (ERR_VALIDATING, reason))


def parse_user_config(tenant: str, body: bytes) -> AlertConfig:
    """Parse a POSTed UserConfig; AlertmanagerError(BAD_DATA) with Mimir's prefixes when not YAML."""
    try:
        doc = yaml.safe_load(body)
    except yaml.YAMLError as exc:
        raise AlertmanagerError(E.BAD_DATA, "%s: %s" % (ERR_MARSHALLING, exc)) from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise AlertmanagerError(E.BAD_DATA, "%s: the body is not a YAML mapping" % ERR_MARSHALLING)
    # Other keys are ignored, as Go's non-strict yaml.Unmarshal does.
    raw = doc.get("alertmanager_config") or ""
    files = doc.get("template_files") or {}
    if not isinstance(raw, str):
        raise AlertmanagerError(E.BAD_DATA, "%s: alertmanager_config must be a string" % ERR_MARSHALLING)
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in files.items()):
        raise AlertmanagerError(E.BAD_DATA, "%s: template_files must map names to strings"
                                % ERR_MARSHALLING)
    return AlertConfig(tenant, raw, dict(files))


# YAML aliases let a small body name one sub-route many times (and nest that): the walk over the
# route tree is bounded in depth and in routes visited, not only by the body size.
MAX_ROUTE_DEPTH = 100
MAX_ROUTES = 100000


def _route_receivers(route: Any, out: list[str], depth: int = 0) -> None:
    if depth > MAX_ROUTE_DEPTH:
        raise _bad("routes nested too deeply (limit: %d)" % MAX_ROUTE_DEPTH)
    if len(out) > MAX_ROUTES:
        raise _bad("too many routes (limit: %d)" % MAX_ROUTES)
    if not isinstance(route, dict):
        raise _bad("a route must be a mapping")
    # Every route counts against the budget, with a receiver or not.
    out.append(str(route.get("receiver") or ""))
    children = route.get("routes") or []
    if not isinstance(children, list):
        raise _bad("routes must be a list")
    for child in children:
        _route_receivers(child, out, depth + 1)


def _check_template_name(name: str) -> None:
    # A template is one file name in the tenant's template directory: no paths.
    if not name or "/" in name or name in (".", ".."):
        raise _bad("invalid template name %s: the template name cannot contain any path" % _quote(name))


def validate_config(c: AlertConfig, max_templates: int = 0, max_template_bytes: int = 0) -> None:
    """Mimir's checks before storing, in its order: a non-empty alertmanager config that loads (a
    root route with a receiver, every receiver a route names defined, unique receiver names),
    template limits and names, then the templates the config's `templates:` globs select parse
    as Go templates (Mimir parses only those)."""
    if not c.raw_config:
        raise _bad(ERR_NO_CONFIG)
    try:
        am = yaml.safe_load(c.raw_config)
    except yaml.YAMLError as exc:
        raise _bad(str(exc)) from None
    if not isinstance(am, dict):
        raise _bad("the alertmanager_config is not a YAML mapping")
    # Alertmanager loads its configuration strictly: an unknown top-level key is an error.
    for key in am:
        if key not in AM_KEYS:
            raise _bad("yaml: unmarshal errors:\n  field %s not found in type config.plain" % key)
    receivers = am.get("receivers") or []
    if not isinstance(receivers, list) or not all(isinstance(r, dict) for r in receivers):
        raise _bad("receivers must be a list of mappings")
    try:
        validate_receivers(am)      # email, Slack, PagerDuty configs and their globals
    except ConfigError as exc:
        raise _bad(str(exc)) from None
    names = set()
    for r in receivers:
        name = r.get("name")
        if not name:
            raise _bad("missing name in receiver")
        if name in names:
            raise _bad("notification config name %s is not unique" % _quote(name))
        names.add(str(name))
    route = am.get("route")
    if route is None:
        raise _bad("no routes provided")
    if not isinstance(route, dict) or not route.get("receiver"):
        raise _bad("root route must specify a default receiver")
    used: list[str] = []
    _route_receivers(route, used)
    for name in used:
        if name and name not in names:
            raise _bad("undefined receiver %s used in route" % _quote(name))
    globs = am.get("templates") or []
    if not isinstance(globs, list) or not all(isinstance(g, str) for g in globs):
        raise _bad("templates must be a list of file names")
    for g in globs:
        _check_template_name(g)
    if max_templates > 0 and len(c.templates) > max_templates:
        raise _bad("too many templates in the configuration: %d (limit: %d)"
                   % (len(c.templates), max_templates))
    if max_template_bytes > 0:
        for name in sorted(c.templates):
            size = len(c.templates[name].encode("utf-8"))
            if size > max_template_bytes:
                raise _bad("template %s is too big: %d bytes (limit: %d bytes)"
                           % (name, size, max_template_bytes))
    for name in sorted(c.templates):
        _check_template_name(name)
    selected = [name for name in sorted(c.templates)
                if any(fnmatch.fnmatchcase(name, g) for g in globs)]
    funcs = alertmanager_funcs()
    for name in selected:
        try:
            Template(name, funcs).parse(c.templates[name])
        except ParseError as exc:
            raise _bad(str(exc)) from None


def validate_semantics(c: AlertConfig) -> None:
    """What loading the configuration checks beyond its shape: routes' durations and matchers,
    time intervals, inhibit rules' matchers, receivers' integration settings."""
    from urdar.components.amcore import AMError
    from urdar.components.amdispatch import Config
    try:
        Config(c.raw_config, c.templates, None, None)
    except AMError as exc:
        raise _bad(str(exc)) from None


def _quote(s: Any) -> str:
    return '"%s"' % str(s).replace("\\", "\\\\").replace('"', '\\"')


def _key(tenant: str) -> str:
    # The tenant is one object name under alerts/: no separators or dot segments that could
    # reach another tenant's key or a directory.
    if not is_tenant_segment(tenant):
        raise AlertmanagerError(E.BAD_DATA, "invalid tenant ID")
    return "%s/%s" % (ALERTS_PREFIX, tenant)


class AlertStore:
    """Tenants' configurations in a bucket with Mimir's layout; every method returns a Deferred."""

    def __init__(self, bucket: Any, offload: "Offload | None" = None, pool: str = "alertmanager") -> None:
        self.bucket = bucket
        self.offload = offload
        self.pool = pool

    def _off(self, fn: Any, *args: Any) -> Any:
        return run_or_inline(self.offload, self.pool, fn, *args)

    def list_tenants(self) -> "defer.Deferred[list[str]]":
        d = defer.maybeDeferred(self.bucket.list, ALERTS_PREFIX + "/", "/")
        return d.addCallback(lambda names: sorted(
            n[len(ALERTS_PREFIX) + 1:] for n in names if not n.endswith("/")))

    def get(self, tenant: str) -> "defer.Deferred[AlertConfig]":
        key = _key(tenant)

        def missing(f: Any) -> Any:
            f.trap(NotFound)
            raise AlertmanagerError(E.NOT_FOUND, ERR_NOT_FOUND)

        def decode(data: bytes) -> AlertConfig:
            try:
                return decode_config(data)
            except (ValueError, UnicodeDecodeError) as exc:
                raise AlertmanagerError(E.INTERNAL, "failed to unmarshal alertmanager config %s: %s"
                                        % (key, exc)) from None
        d = defer.maybeDeferred(self.bucket.get, key).addErrback(missing)
        return d.addCallback(lambda data: self._off(decode, data))

    def set(self, c: AlertConfig) -> "defer.Deferred[None]":
        key = _key(c.user)
        return self._off(encode_config, c).addCallback(lambda data: self.bucket.put(key, data))

    def delete(self, tenant: str) -> "defer.Deferred[None]":
        """Delete the tenant's configuration; none is success (Mimir ignores not-found)."""
        key = _key(tenant)

        def check(exists: bool) -> Any:
            return self.bucket.delete(key) if exists else None
        return defer.maybeDeferred(self.bucket.exists, key).addCallback(check)


class AlertmanagerConfigs:
    """The configuration API's operations over an AlertStore and the tenants' limits."""

    def __init__(self, store: AlertStore, overrides: "Overrides", offload: "Offload | None" = None,
                 enable_api: bool = True) -> None:
        self.store = store
        self.overrides = overrides
        self.offload = offload
        self.enable_api = enable_api
        # Called with the tenant after its configuration was stored or deleted (the running
        # alertmanagers reload it at once rather than at the next poll).
        self.on_change: Callable[[str], Any] | None = None

    def _changed(self, _: Any, tenant: str) -> Any:
        # The answer waits for the reload, so the tenant's API serves the new configuration once
        # the config API has answered; a failed reload is logged (the next poll retries).
        if self.on_change is None:
            return None
        d = defer.maybeDeferred(self.on_change, tenant)
        return d.addErrback(lambda f: log.error("alertmanager of %s not reloaded: %s", tenant, f.value))

    def max_config_bytes(self, tenant: str) -> int:
        return int(self.overrides.for_tenant(tenant).alertmanager_max_config_size_bytes)

    def get_user_config(self, tenant: str) -> "defer.Deferred[str]":
        return self.store.get(tenant).addCallback(lambda c: self.store._off(format_user_config, c))

    def set_user_config(self, tenant: str, body: bytes) -> "defer.Deferred[None]":
        limit = self.max_config_bytes(tenant)
        if limit > 0 and len(body) > limit:
            raise AlertmanagerError(E.BAD_DATA, ERR_TOO_BIG % limit)
        limits = self.overrides.for_tenant(tenant)

        def check() -> AlertConfig:
            c = parse_user_config(tenant, body)
            validate_config(c, int(limits.alertmanager_max_templates_count),
                            int(limits.alertmanager_max_template_size_bytes))
            validate_semantics(c)
            return c
        _key(tenant)
        d = self.store._off(check)
        return d.addCallback(self.store.set).addCallback(self._changed, tenant)

    def delete_user_config(self, tenant: str) -> "defer.Deferred[None]":
        return self.store.delete(tenant).addCallback(self._changed, tenant)

    def list_all(self) -> "defer.Deferred[str]":
        configs: dict[str, AlertConfig] = {}

        def keep(c: AlertConfig, t: str) -> None:
            configs[t] = c

        def skip(f: Any, t: str) -> None:
            # One unreadable (or just deleted) object does not hide every other tenant's config.
            log.warning("alertmanager config of %s not listed: %s", t, f.value)

        def load(tenants: list[str]) -> Any:
            ds = []
            for t in tenants:
                ds.append(self.store.get(t).addCallback(keep, t).addErrback(skip, t))
            return defer.gatherResults(ds)
        d = self.store.list_tenants().addCallback(load)
        return d.addCallback(lambda _: self.store._off(format_all, configs))
