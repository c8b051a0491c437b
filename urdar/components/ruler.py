"""The ruler's rule store and configuration API logic (Mimir's pkg/ruler/rulestore/bucketclient and
the config half of pkg/ruler/api.go), no HTTP.

Rule groups live in the ruler bucket (-ruler-storage.*) with Mimir's layout,
`rules/<tenant>/<base64url(namespace)>/<base64url(group)>`, each object a protobuf
rules.RuleGroupDesc (components/rulefmt.py), so a Mimir ruler reads what urdar writes and back.
Namespaces and group names may hold any characters: base64url keeps every key one name segment
under the tenant's prefix. YAML parsing, validation (PromQL parses) and formatting grow with the
request and run in the "ruler" offload pool; bucket I/O is Deferreds (the filesystem backend runs
off the reactor too). Errors are ComponentErrors carrying Mimir's texts."""
import base64
import binascii
import logging
from dataclasses import dataclass
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from urdar.components import errors as E
from urdar.components.rulefmt import (
    DecodeError, RuleGroup, decode_group, decode_group_desc, encode_group, format_group,
    format_namespaces, format_tenants, validate_group)
from urdar.net.offload import run_or_inline
from urdar.storage.bucket import MAX_NAME_BYTES, NotFound, is_tenant_segment, validate_name

if TYPE_CHECKING:
    from urdar.components.limits import Overrides
    from urdar.net.offload import Offload

log = logging.getLogger("urdar.ruler")

RULES_PREFIX = "rules"
# Largest rule group body POST accepts; Mimir reads any size, urdar bounds what one request holds.
MAX_RULE_GROUP_BYTES = 1 << 20
# Groups read from the bucket at once when listing (Mimir's loadConcurrency).
LOAD_CONCURRENCY = 10

# Mimir's texts (pkg/ruler/api.go, pkg/ruler/rulestore).
ERR_GROUP_NOT_FOUND = "group does not exist"
ERR_NAMESPACE_NOT_FOUND = "group namespace does not exist"
ERR_BAD_RULE_GROUP = "unable to decode rule group"


class RulerError(E.ComponentError):
    """A ruler API failure with Mimir's message."""


@dataclass(frozen=True)
class RulerConfig:
    """What the ruler's configuration API needs from the option table."""
    enable_api: bool = True
    tenant_federation: bool = False

    @classmethod
    def from_config(cls, cfg: Any) -> "RulerConfig":
        return cls(enable_api=bool(cfg["ruler.enable_api"]),
                   tenant_federation=bool(cfg["tenant_federation.enabled"]))


def _b64(s: str) -> str:
    return base64.urlsafe_b64encode(s.encode("utf-8")).decode("ascii")


def _unb64(s: str) -> str:
    return base64.urlsafe_b64decode(s.encode("ascii")).decode("utf-8")


def group_key(tenant: str, namespace: str, group: str) -> str:
    """The object name of a group: rules/<tenant>/<b64url(ns)>/<b64url(group)>."""
    return "%s/%s/%s/%s" % (RULES_PREFIX, tenant, _b64(namespace), _b64(group))


def _tenant_prefix(tenant: str) -> str:
    if not is_tenant_segment(tenant):
        raise RulerError(E.BAD_DATA, "invalid tenant ID")
    return "%s/%s/" % (RULES_PREFIX, tenant)


def _parse_key(rest: str) -> tuple[str, str] | None:
    """(namespace, group) of "<b64>/<b64>" below a tenant; None for spurious objects."""
    parts = rest.split("/")
    if len(parts) != 2:
        return None
    try:
        ns, group = _unb64(parts[0]), _unb64(parts[1])
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if not ns or not group:
        return None
    return ns, group


class RuleStore:
    """Rule groups in a bucket with Mimir's layout; every method returns a Deferred. Protobuf
    encoding and decoding run in `offload`'s pool `pool` when given (inline otherwise: tests)."""

    def __init__(self, bucket: Any, offload: "Offload | None" = None, pool: str = "ruler") -> None:
        self.bucket = bucket
        self.offload = offload
        self.pool = pool

    def _off(self, fn: Any, *args: Any) -> Any:
        return run_or_inline(self.offload, self.pool, fn, *args)

    def list_tenants(self) -> "defer.Deferred[list[str]]":
        d = self.bucket.list(RULES_PREFIX + "/", "/")
        return d.addCallback(lambda names: [n[len(RULES_PREFIX) + 1:].rstrip("/") for n in names
                                            if n.endswith("/")])

    def list_groups(self, tenant: str, namespace: str = "") -> "defer.Deferred[list[tuple[str, str]]]":
        """[(namespace, group)] of the tenant (in one namespace when given), in key order."""
        prefix = _tenant_prefix(tenant)
        if namespace:
            prefix += _b64(namespace) + "/"
        base = _tenant_prefix(tenant)

        def parse(names: list[str]) -> list[tuple[str, str]]:
            out = []
            for name in names:
                parsed = _parse_key(name[len(base):])
                if parsed is None:
                    log.warning("invalid rule group object key %r in the ruler bucket", name)
                    continue
                out.append(parsed)
            return out
        return self.bucket.list(prefix, "").addCallback(parse)

    def get_group(self, tenant: str, namespace: str, group: str) -> "defer.Deferred[RuleGroup]":
        """The group, or RulerError(NOT_FOUND, "group does not exist")."""
        key = self._key(tenant, namespace, group)

        def missing(f: Any) -> Any:
            f.trap(NotFound)
            raise RulerError(E.NOT_FOUND, ERR_GROUP_NOT_FOUND)

        def decode(data: bytes) -> RuleGroup:
            try:
                _tenant, _ns, g = decode_group_desc(data)
            except (ValueError, UnicodeDecodeError) as exc:
                raise RulerError(E.INTERNAL, "failed to unmarshal rule group %s: %s" % (key, exc)) from None
            return g
        d = defer.maybeDeferred(self.bucket.get, key).addErrback(missing)
        return d.addCallback(lambda data: self._off(decode, data))

    def set_group(self, tenant: str, namespace: str, group: RuleGroup) -> "defer.Deferred[None]":
        key = self._key(tenant, namespace, group.name)
        d = self._off(encode_group, tenant, namespace, group)
        return d.addCallback(lambda data: self.bucket.put(key, data))

    def delete_group(self, tenant: str, namespace: str, group: str) -> "defer.Deferred[None]":
        """Delete one group; RulerError(NOT_FOUND) when it does not exist (as Mimir's S3 client)."""
        key = self._key(tenant, namespace, group)

        def check(exists: bool) -> Any:
            if not exists:
                raise RulerError(E.NOT_FOUND, ERR_GROUP_NOT_FOUND)
            return self.bucket.delete(key)
        return defer.maybeDeferred(self.bucket.exists, key).addCallback(check)

    def delete_namespace(self, tenant: str, namespace: str) -> "defer.Deferred[None]":
        """Delete every group of a namespace; RulerError(NOT_FOUND) when it has none."""
        def delete(groups: list[tuple[str, str]]) -> Any:
            if not groups:
                raise RulerError(E.NOT_FOUND, ERR_NAMESPACE_NOT_FOUND)
            return self._delete_all(tenant, groups)
        return self.list_groups(tenant, namespace).addCallback(delete)

    def delete_tenant(self, tenant: str) -> "defer.Deferred[None]":
        """Delete every group of the tenant (nothing to do is success)."""
        return self.list_groups(tenant).addCallback(lambda groups: self._delete_all(tenant, groups))

    def _delete_all(self, tenant: str, groups: list[tuple[str, str]]) -> "defer.Deferred[None]":
        d: Any = defer.succeed(None)
        for ns, g in groups:
            d.addCallback(lambda _, ns=ns, g=g: self.bucket.delete(group_key(tenant, ns, g)))
        result: defer.Deferred[None] = d
        return result

    def load_groups(self, tenant: str,
                    groups: list[tuple[str, str]]) -> "defer.Deferred[list[tuple[str, RuleGroup]]]":
        """[(namespace, group)] for the listed groups, read LOAD_CONCURRENCY at a time; a group
        deleted meanwhile is an error (the API promises a consistent answer)."""
        results: list[tuple[str, RuleGroup] | None] = [None] * len(groups)
        missing: list[int] = []
        sem = defer.DeferredSemaphore(LOAD_CONCURRENCY)

        def one(i: int, ns: str, name: str) -> Any:
            def store(g: RuleGroup) -> None:
                results[i] = (ns, g)

            def gone(f: Any) -> None:
                f.trap(RulerError)
                if f.value.cause != E.NOT_FOUND:
                    f.raiseException()
                missing.append(i)
            return self.get_group(tenant, ns, name).addCallbacks(store, gone)
        ds = [sem.run(one, i, ns, name) for i, (ns, name) in enumerate(groups)]
        d = defer.gatherResults(ds, consumeErrors=True)

        def done(_: Any) -> list[tuple[str, RuleGroup]]:
            if missing:
                raise RulerError(E.INTERNAL, "an error occurred while loading %d rule groups"
                                 % len(missing))
            return [r for r in results if r is not None]

        def failed(f: Any) -> Any:
            return f.value.subFailure if isinstance(f.value, defer.FirstError) else f
        return d.addCallbacks(done, failed)

    @staticmethod
    def _key(tenant: str, namespace: str, group: str) -> str:
        if not namespace:
            raise RulerError(E.BAD_DATA, "a namespace must be provided in the request")
        if not group:
            raise RulerError(E.BAD_DATA, "a matching group name must be provided in the request")
        _tenant_prefix(tenant)
        key = group_key(tenant, namespace, group)
        if len(key.encode("utf-8")) > MAX_NAME_BYTES:
            raise RulerError(E.BAD_DATA, "namespace and group name are too long: their object key "
                             "would exceed %d bytes" % MAX_NAME_BYTES)
        return validate_name(key)


class Ruler:
    """The configuration API of the ruler over a RuleStore, with per-tenant limits."""

    def __init__(self, store: RuleStore, overrides: "Overrides", offload: "Offload | None" = None,
                 config: RulerConfig | None = None, pool: str = "ruler") -> None:
        self.store = store
        self.overrides = overrides
        self.offload = offload
        self.config = config if config is not None else RulerConfig()
        self.pool = pool
        # Told the tenant after every change (the rule manager re-reads its groups at once).
        self.on_change: Callable[[str], Any] | None = None

    def _changed(self, d: "defer.Deferred[Any]", tenant: str) -> "defer.Deferred[Any]":
        def tell(result: Any) -> Any:
            if self.on_change is not None:
                try:
                    self.on_change(tenant)
                except Exception:
                    log.exception("rule change hook for tenant %s", tenant)
            return result
        return d.addCallback(tell)

    def _off(self, fn: Any, *args: Any) -> Any:
        return run_or_inline(self.offload, self.pool, fn, *args)

    # ---- reads ----------------------------------------------------------------------------

    def _load(self, tenant: str, namespace: str = "") -> Any:
        """A Deferred [(namespace, RuleGroup)] of the tenant's groups (one namespace when given)."""
        def load(groups: list[tuple[str, str]]) -> Any:
            return self.store.load_groups(tenant, groups) if groups else []
        return self.store.list_groups(tenant, namespace).addCallback(load)

    def list_rules(self, tenant: str, namespace: str = "") -> "defer.Deferred[str]":
        """YAML {namespace: [groups]} of the tenant (one namespace when given); "{}" when none."""
        def render(loaded: list[tuple[str, RuleGroup]]) -> Any:
            by_ns: dict[str, list[RuleGroup]] = {}
            for ns, g in loaded:
                by_ns.setdefault(ns, []).append(g)
            return self._off(format_namespaces, by_ns)
        return self._load(tenant, namespace).addCallback(render)

    def list_all_rules(self) -> "defer.Deferred[str]":
        """YAML {tenant: {namespace: [groups]}} of every tenant (/ruler/rule_groups), tenants
        read one after another."""
        found: dict[str, dict[str, list[RuleGroup]]] = {}

        def one_tenant(_: Any, tenant: str) -> Any:
            def keep(loaded: list[tuple[str, RuleGroup]]) -> None:
                for ns, g in loaded:
                    found.setdefault(tenant, {}).setdefault(ns, []).append(g)
            return self._load(tenant).addCallback(keep)

        def each(tenants: list[str]) -> Any:
            chain: Any = defer.succeed(None)
            for tenant in tenants:
                chain.addCallback(one_tenant, tenant)
            return chain
        d = self.store.list_tenants().addCallback(each)
        return d.addCallback(lambda _: self._off(format_tenants, found))

    def get_rule_group(self, tenant: str, namespace: str, group: str) -> "defer.Deferred[str]":
        return self.store.get_group(tenant, namespace, group).addCallback(
            lambda g: self._off(format_group, g))

    # ---- writes ---------------------------------------------------------------------------

    def _parse(self, payload: bytes) -> RuleGroup:
        try:
            g = decode_group(payload)
        except DecodeError:
            raise RulerError(E.BAD_DATA, ERR_BAD_RULE_GROUP) from None
        errs = validate_group(g, self.config.tenant_federation)
        if errs:
            raise RulerError(E.BAD_DATA, ", ".join(errs))
        return g

    def create_rule_group(self, tenant: str, namespace: str, payload: bytes) -> "defer.Deferred[None]":
        """Parse and validate one YAML group, check the limits, store it (replacing its namesake)."""
        if not namespace:
            raise RulerError(E.BAD_DATA, "a namespace must be provided in the request")
        limits = self.overrides.for_tenant(tenant)

        def check_rules(g: RuleGroup) -> Any:
            self.store._key(tenant, namespace, g.name)
            max_rules = int(getattr(limits, "ruler_max_rules_per_rule_group", 0) or 0)
            if max_rules > 0 and len(g.rules) > max_rules:
                raise RulerError(E.BAD_DATA, "per-user rules per rule group limit (limit: %d actual: "
                                 "%d) exceeded" % (max_rules, len(g.rules)))
            max_groups = int(getattr(limits, "ruler_max_rule_groups_per_tenant", 0) or 0)
            if max_groups <= 0:
                return g
            return self.store.list_groups(tenant).addCallback(check_groups, g, max_groups)

        def check_groups(groups: list[tuple[str, str]], g: RuleGroup, max_groups: int) -> RuleGroup:
            # Mimir counts the new group even when it replaces one (len(rgs)+1).
            if len(groups) + 1 > max_groups:
                raise RulerError(E.BAD_DATA, "per-user rule groups limit (limit: %d actual: %d) "
                                 "exceeded" % (max_groups, len(groups) + 1))
            return g
        d = self._off(self._parse, payload)
        d.addCallback(check_rules)
        d.addCallback(lambda g: self.store.set_group(tenant, namespace, g))
        return self._changed(d, tenant)

    def delete_rule_group(self, tenant: str, namespace: str, group: str) -> "defer.Deferred[None]":
        return self._changed(self.store.delete_group(tenant, namespace, group), tenant)

    def delete_namespace(self, tenant: str, namespace: str) -> "defer.Deferred[None]":
        return self._changed(self.store.delete_namespace(tenant, namespace), tenant)

    def delete_tenant_config(self, tenant: str) -> "defer.Deferred[None]":
        return self._changed(self.store.delete_tenant(tenant), tenant)
