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
from typing import Any, Optional

from twisted.internet import defer, task

from urdar.components import errors as E
from urdar.components.alertmanager import AlertConfig, AlertmanagerError
from urdar.components.amcore import AMError
from urdar.components.amdispatch import TenantAlertmanager
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
    def __init__(self, configs: Any, clock: Any, http_client: Any, data_dir: str,
                 poll_interval: float = 15.0, fallback_config: str = "",
                 retention: float = 120 * 3600.0, external_url: str = "",
                 offload: Any = None) -> None:
        self.configs = configs              # components/alertmanager.AlertmanagerConfigs
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
        self.loop: Optional[task.LoopingCall] = None
        self._syncing: Optional[defer.Deferred] = None
        configs.on_change = self.sync_tenant

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
            for t in list(self.tenants):
                if t not in tenants:
                    self._remove(t)
            return defer.gatherResults([self.sync_tenant(t) for t in tenants])

        def failed(f: Any) -> None:
            log.error("alertmanager configurations not synced: %s", f.value)

        def done(_: Any) -> None:
            self._syncing = None
        d = self.store.list_tenants().addCallback(load).addErrback(failed).addBoth(done)
        if not d.called:
            self._syncing = d
        return d

    def sync_tenant(self, tenant: str) -> "defer.Deferred[None]":
        def got(c: AlertConfig) -> None:
            self._apply(tenant, c)

        def missing(f: Any) -> None:
            f.trap(AlertmanagerError)
            if f.value.cause == E.NOT_FOUND:
                self._remove(tenant)
                return
            log.error("alertmanager configuration of %s not loaded: %s", tenant, f.value)
        return self.store.get(tenant).addCallbacks(got, missing)

    def _apply(self, tenant: str, c: AlertConfig) -> None:
        raw = c.raw_config or self.fallback
        if not raw:
            self._remove(tenant)
            return
        key = (raw, tuple(sorted(c.templates.items())))
        if self.applied.get(tenant) == key and tenant in self.tenants:
            return
        am = self.tenants.get(tenant)
        fresh = am is None
        if am is None:
            am = TenantAlertmanager(tenant, self.clock, self.http,
                                    os.path.join(self.data_dir, tenant), self.retention,
                                    self.external_url, offload=self.offload)
        try:
            am.apply_config(raw, c.templates)
        except (AMError, ValueError) as exc:
            # Keep running the last good configuration (Alertmanager's reload does the same).
            self.errors[tenant] = str(exc)
            log.error("alertmanager configuration of %s not applied: %s", tenant, exc)
            return
        self.errors.pop(tenant, None)
        self.applied[tenant] = key
        if fresh:
            am.start()
            self.tenants[tenant] = am

    def _remove(self, tenant: str) -> None:
        am = self.tenants.pop(tenant, None)
        self.applied.pop(tenant, None)
        if am is not None:
            am.stop()

    def instance(self, tenant: str) -> "defer.Deferred[TenantAlertmanager]":
        """The tenant's Alertmanager; with a fallback configuration one is created on first use."""
        am = self.tenants.get(tenant)
        if am is not None:
            return defer.succeed(am)
        if not self.fallback or not is_tenant_segment(tenant):
            return defer.fail(AlertmanagerError(E.NOT_FOUND, ERR_NOT_CONFIGURED))

        def stored(_: Any) -> TenantAlertmanager:
            if tenant not in self.tenants:
                self._apply(tenant, AlertConfig(tenant, "", {}))
            am = self.tenants.get(tenant)
            if am is None:
                raise AlertmanagerError(E.INTERNAL, "Failed to initialize the Alertmanager")
            return am
        # An empty configuration in the bucket keeps the tenant active at the next poll.
        return self.store.set(AlertConfig(tenant, "", {})).addCallback(stored)
