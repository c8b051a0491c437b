"""The multi-tenant alertmanager (Mimir's MultitenantAlertmanager): one TenantAlertmanager per
tenant with a configuration in the alertmanager bucket, synced at start, every
-alertmanager.poll-interval and at once after a configuration API call.

A tenant without a configuration gets -alertmanager.fallback-config-file when it first calls the
Alertmanager API (Mimir stores an empty configuration for it, which means "the fallback"); with no
fallback its requests answer 404 "the Alertmanager is not configured". A tenant whose
configuration disappears is stopped (its state was written to disk at stop).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Optional

from twisted.internet import defer, task

from urdar.components import errors as E
from urdar.components.alertmanager import AlertConfig, AlertmanagerError
from urdar.components.amcore import AMError
from urdar.components.amdispatch import Config, TenantAlertmanager
from urdar.net.offload import run_or_inline
from urdar.storage.bucket import is_tenant_segment

log = logging.getLogger(__name__)

ERR_NOT_CONFIGURED = "the Alertmanager is not configured"
CONNECT_TIMEOUT_S = 10


def http_client(reactor: Any) -> Any:
    """The receivers' HTTP client: treq over one persistent connection pool."""
    import treq
    from twisted.web.client import Agent, HTTPConnectionPool
    pool = HTTPConnectionPool(reactor, persistent=True)
    return treq.client.HTTPClient(Agent(reactor, connectTimeout=CONNECT_TIMEOUT_S, pool=pool))


class MultitenantAlertmanager:
    def _limits_of(self, tenant: str) -> Optional[Callable[[], Any]]:
        overrides = getattr(self.configs, "overrides", None)
        if overrides is None:
            return None
        return lambda: overrides.for_tenant(tenant)

    def __init__(self, configs: Any, clock: Any, http_client: Any, data_dir: str,
                 poll_interval: float = 15.0, fallback_config: str = "",
                 retention: float = 120 * 3600.0, external_url: str = "",
                 offload: Any = None, registry: Any = None) -> None:
        self.configs = configs              # components/alertmanager.AlertmanagerConfigs
        self.insert_limited: Any = None
        if registry is not None:
            from prometheus_client import Counter
            self.insert_limited = Counter(
                "cortex_alertmanager_alerts_insert_limited_total",
                "Total number of failures to store alert due to hitting alertmanager limits.",
                ["user"], registry=registry)
        self.store = configs.store
        self.clock = clock
        self.http = http_client
        self.data_dir = data_dir
        self.poll_interval = poll_interval
        self.fallback = fallback_config
        self.retention = retention
        self.external_url = external_url
        self.offload = offload
        self.tenants: dict[str, TenantAlertmanager] = {}
        self.applied: dict[str, tuple[str, tuple]] = {}
        self.errors: dict[str, str] = {}       # tenant -> why its configuration is not loaded
        self.locks: dict[str, defer.DeferredLock] = {}
        self.loop: Optional[task.LoopingCall] = None
        self._syncing: Optional[defer.Deferred] = None
        # Sharded over the alertmanager ring (components/amshard.py): None runs every tenant.
        self.sharding: Any = None
        self.replicator: Any = None
        self.distributor: Any = None
        configs.on_change = self.sync_tenant

    def owns(self, tenant: str) -> bool:
        return self.sharding is None or self.sharding.owns(tenant)

    def start(self) -> "defer.Deferred[None]":
        first = self.sync()
        self.loop = task.LoopingCall(self.sync)
        self.loop.clock = self.clock
        self.loop.start(self.poll_interval, now=False)
        return first

    def stop(self) -> "defer.Deferred[Any]":
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        ds = [am.stop() for am in self.tenants.values()]
        self.tenants = {}
        self.applied = {}
        return defer.DeferredList(ds)

    def sync(self) -> "defer.Deferred[None]":
        """Load every tenant's configuration; tenants without one are stopped."""
        if self._syncing is not None:
            return self._syncing

        def load(tenants: list[str]) -> Any:
            tenants = [t for t in tenants if self.owns(t)]
            gone = [self._locked(t, None) for t in list(self.tenants) if t not in tenants]
            return defer.gatherResults(gone + [self.sync_tenant(t) for t in tenants])

        def failed(f: Any) -> None:
            log.error("alertmanager configurations not synced: %s", f.value)

        def done(_: Any) -> None:
            self._syncing = None
        d = self.store.list_tenants().addCallback(load).addErrback(failed).addBoth(done)
        if not d.called:
            self._syncing = d
        return d

    def sync_tenant(self, tenant: str) -> "defer.Deferred[None]":
        """Load (or drop) one tenant's configuration; changes to one tenant run one at a time."""
        if not self.owns(tenant):
            return self._locked(tenant, None)
        def got(c: AlertConfig) -> Any:
            return self._locked(tenant, c)

        def missing(f: Any) -> Any:
            f.trap(AlertmanagerError)
            if f.value.cause == E.NOT_FOUND:
                return self._locked(tenant, None)
            log.error("alertmanager configuration of %s not loaded: %s", tenant, f.value)
            return None
        return self.store.get(tenant).addCallbacks(got, missing)

    def _locked(self, tenant: str, c: Optional[AlertConfig]) -> "defer.Deferred[None]":
        lock = self.locks.setdefault(tenant, defer.DeferredLock())
        return lock.run(self._apply, tenant, c)

    def _apply(self, tenant: str, c: Optional[AlertConfig]) -> "defer.Deferred[None]":
        raw = (c.raw_config or self.fallback) if c is not None else ""
        if not raw:
            return self._remove(tenant)
        assert c is not None
        templates = dict(c.templates)
        key = (raw, tuple(sorted(templates.items())))
        if self.applied.get(tenant) == key and tenant in self.tenants:
            return defer.succeed(None)
        # YAML and template parsing off the reactor (a configuration may have megabytes).
        d = run_or_inline(self.offload, "alertmanager", Config, raw, templates, self.http,
                          self.clock)

        def install(cfg: Config) -> Any:
            am = self.tenants.get(tenant)
            if am is not None:
                am.install(cfg, templates)
                self._applied(tenant, key)
                return None
            am = TenantAlertmanager(tenant, self.clock, self.http,
                                    os.path.join(self.data_dir, tenant), self.retention,
                                    self.external_url, offload=self.offload,
                                    limits=self._limits_of(tenant),
                                    on_insert_limited=self._insert_limited_of(tenant))

            def started(_: Any) -> None:
                am.install(cfg, templates)
                self.tenants[tenant] = am
                self._applied(tenant, key)
            return am.start().addCallback(self._join_replicas, tenant, am).addCallback(started)

        def bad(f: Any) -> None:
            f.trap(AMError, ValueError)
            # The last good configuration keeps running (Alertmanager's reload does the same).
            self.errors[tenant] = str(f.value)
            log.error("alertmanager configuration of %s not applied: %s", tenant, f.value)
        return d.addCallback(install).addErrback(bad)

    def _join_replicas(self, _: Any, tenant: str, am: TenantAlertmanager) -> Any:
        """With a ring: wait by position before notifying, send new state to the other
        replicas, and take their state before serving (a failed pull leaves ours as it is)."""
        if self.sharding is None or self.replicator is None:
            return None
        sharding, replicator = self.sharding, self.replicator
        am.peer_wait = lambda: sharding.peer_wait(tenant)
        am.on_state = lambda kind, items: replicator.push(tenant, kind, items)

        def merge(state: Any) -> None:
            if state is not None:
                am.merge_state(state)

        def failed(f: Any) -> None:
            log.warning("tenant %s: no state from the other replicas: %s", tenant,
                        f.getErrorMessage())
        return replicator.pull(tenant).addCallbacks(merge, failed)

    def _applied(self, tenant: str, key: tuple) -> None:
        self.applied[tenant] = key
        self.errors.pop(tenant, None)

    def _insert_limited_of(self, tenant: str) -> Optional[Callable[[int], Any]]:
        """The tenant's count of alerts refused by its limits (shown from 0 while it runs, as
        Mimir's per-tenant registry shows it)."""
        if self.insert_limited is None:
            return None
        return self.insert_limited.labels(tenant).inc

    def _remove(self, tenant: str) -> "defer.Deferred[None]":
        am = self.tenants.pop(tenant, None)
        self.applied.pop(tenant, None)
        if am is None:
            return defer.succeed(None)
        if self.insert_limited is not None:
            try:
                self.insert_limited.remove(tenant)
            except KeyError:
                pass
        return am.stop()

    def instance(self, tenant: str) -> "defer.Deferred[TenantAlertmanager]":
        """The tenant's Alertmanager; with a fallback configuration one is created on first use."""
        am = self.tenants.get(tenant)
        if am is not None:
            return defer.succeed(am)
        if not self.fallback or not is_tenant_segment(tenant) or not self.owns(tenant):
            return defer.fail(AlertmanagerError(E.NOT_FOUND, ERR_NOT_CONFIGURED))

        def loaded(_: Any) -> TenantAlertmanager:
            am = self.tenants.get(tenant)
            if am is None:
                raise AlertmanagerError(E.INTERNAL, "Failed to initialize the Alertmanager")
            return am
        # An empty configuration in the bucket keeps the tenant active at the next poll.
        empty = AlertConfig(tenant, "", {})
        d = self.store.set(empty).addCallback(lambda _: self._locked(tenant, empty))
        return d.addCallback(loaded)
