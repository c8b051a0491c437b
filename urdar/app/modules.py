"""The module table: what one urdar process can run, as `name -> Module(init, deps)` (Mimir's
pkg/mimir/modules.go, dskit's module manager).

`-target` names modules; their dependencies are added and everything is built in dependency order
(`init(modules)` returns the module's object and mounts its routes on the one route table), started
in that order (`start()` fires when the process is ready: the ingester's WAL replay is done) and
stopped in reverse. Each module's state shows on /services. Modules with no init yet
(overrides-exporter) are accepted and listed as "Not implemented yet". This is also the one
place that creates the offload pools: POOLS says which modules need which pool. Nothing here
touches the global reactor: main.py passes it in."""
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads, IReactorTCP, IReactorTime
from twisted.python.failure import Failure

from urdar.components.options import ConfigError
from urdar.handlers.routes import Route, RouteTable
from urdar.net.offload import Offload
from urdar.net.reactorlag import ReactorLag
from urdar.net.server import Instrument
from urdar.net.tenant import Tenancy

if TYPE_CHECKING:
    from urdar.app.config import Config
    from urdar.components.compactor import Compactor
    from urdar.components.distributor import Distributor
    from urdar.components.frontend import Frontend
    from urdar.components.hatracker import HATracker
    from urdar.components.ingester import Ingester
    from urdar.components.limits import Overrides, RuntimeConfig
    from urdar.components.notifier import Notifier
    from urdar.components.querier import Querier
    from urdar.components.rulemanager import Notify, RuleManager
    from urdar.components.ruler import Ruler
    from urdar.components.scheduler import RequestQueue
    from urdar.components.storegateway import StoreGateway
    from urdar.handlers.querier import QuerierHandlers
    from urdar.net.kv import MemoryKV
    from urdar.net.memcached import MemcachedMetrics
    from urdar.net.ring import Ring, RingConfig, RingLifecycler, RingSet
    from urdar.storage.bucket import Bucket

log = logging.getLogger("urdar.modules")


class IAppReactor(IReactorCore, IReactorTime, IReactorTCP, IReactorFromThreads):
    """What urdar asks of the reactor main.py passes in: run/stop and shutdown triggers, timers,
    TCP listening and connecting, and callFromThread for the offload pools. Twisted's global
    reactor provides all of them (its type names only some, hence main.py's cast)."""


# Most component and handler constructors below are not annotated yet (their modules are checked
# leniently and are being reworked); calls into them carry `type: ignore[no-untyped-call]`.


def make_registry() -> CollectorRegistry:
    """A registry with process, platform and GC metrics (Mimir exposes Go's equivalents)."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def _cpus() -> int:
    return max(2, os.cpu_count() or 2)


def _inflight_pushes(cfg: "Config") -> int:
    limit: int = cfg["distributor.instance_limits.max_inflight_push_requests"] or 2000
    return limit


# Offload pools: name -> (workers, max queued jobs, modules that use it); callables take the Config.
POOLS: dict[str, tuple[Callable[["Config"], int], Callable[["Config"], int], tuple[str, ...]]] = {
    # Push decoding and appends, bounded by Mimir's in-flight push limit.
    "decode": (lambda cfg: _cpus(), _inflight_pushes, ("distributor", "ingester", "ruler")),
    "append": (lambda cfg: _cpus(), _inflight_pushes, ("distributor", "ingester", "ruler")),
    # WAL replay and head compaction.
    "compact": (lambda cfg: 1, lambda cfg: 1000, ("ingester",)),
    # Runtime-config reloads and profile encoding.
    "admin": (lambda cfg: 1, lambda cfg: 100, ("server",)),
    # PromQL and reads; Mimir's -querier.max-concurrent is 20.
    # The queue holds up to two jobs per worker of the query queue (-querier.max-concurrent).
    "query": (lambda cfg: _cpus(), lambda cfg: max(20, 2 * cfg["querier.max_concurrent"]),
              ("querier", "query-frontend", "ingester", "ruler")),
    "storegateway": (lambda cfg: _cpus(), lambda cfg: 100, ("store-gateway",)),
    # Filesystem bucket I/O and S3 hashing.
    "bucket": (lambda cfg: _cpus(), lambda cfg: 1000, ("ingester", "store-gateway", "compactor",
                                                        "querier", "ruler")),
    "compactor": (lambda cfg: 1, lambda cfg: 1000, ("compactor",)),
    # Rule group YAML parsing, validation, formatting and the ruler bucket's file I/O.
    "ruler": (lambda cfg: 2, lambda cfg: 100, ("ruler",)),
    # Alertmanager configuration YAML validation, protobuf coding and its bucket's file I/O.
    "alertmanager": (lambda cfg: 1, lambda cfg: 100, ("alertmanager",)),
    # Notification templates; a tenant renders one at a time, so one costly template holds one worker.
    "amrender": (lambda cfg: _cpus(), lambda cfg: 1000, ("alertmanager",)),
}


def ensure_pools(offload: Offload, cfg: "Config", names: Sequence[str]) -> Offload:
    """Add to `offload` every pool the modules `names` use that it does not have yet."""
    have = offload.stats()
    for pool, (workers, queued, users) in POOLS.items():
        if pool not in have and any(u in names for u in users):
            offload.add_pool(pool, workers(cfg), queued(cfg))
    return offload


# ---- module inits: init(m) -> the module's object (None when there is nothing to run) -----------

def init_server(m: "Modules") -> ReactorLag:
    """Metrics, request instrumentation, tenancy, the route table and the pages every process has."""
    from urdar.handlers.admin import AdminHandlers
    m.route_table = RouteTable(m.tenancy, m.instrument)
    m.route_table.mount(AdminHandlers(m))  # type: ignore[no-untyped-call]
    if m.config["server.register_instrumentation"]:
        from urdar.handlers.pprof import PprofHandler
        # /debug/pprof/* and /debug/fgprof; profiles are encoded in the one-thread "admin" pool.
        from urdar.app.config import mask_argv
        m.route_table.mount(PprofHandler(  # type: ignore[no-untyped-call]
            m.reactor, m.offload, pool="admin", clock=m.clock, mask_argv=mask_argv))
    # urdar_reactor_lag_seconds: how late the reactor runs a timer; started and stopped with the server.
    m.reactor_lag = ReactorLag(m.clock, m.registry)
    return m.reactor_lag


def init_runtime_config(m: "Modules") -> "RuntimeConfig":
    """Per-tenant limits: the `limits:` defaults plus the runtime config files, read now."""
    from urdar.components.limits import Overrides, RuntimeConfig
    cfg = m.config
    m.overrides = Overrides(cfg.limits_defaults())
    m.runtime = RuntimeConfig(cfg["runtime_config.file"], cfg["runtime_config.period"],
                              m.overrides, m.clock, m.offload, read_file=m.read_file)
    if m.runtime.files:
        m.runtime.load_now()
    return m.runtime


def init_memberlist_kv(m: "Modules") -> "MemoryKV":
    """The in-memory KV store every ring with -<ring>.store=inmemory shares in this process (so
    -target=all needs no etcd); rings with -<ring>.store=etcd get their own client in ring_kv()."""
    from urdar.net.kv import MemoryKV
    m.kv = MemoryKV(m.clock)
    return m.kv


def init_ring(m: "Modules") -> "RingSet":
    """The ingester ring as its readers see it (dskit's "ring" module) with /ingester/ring, and
    /memberlist; the rings components join get their pages in join_ring. Returns the RingSet that
    starts and stops every ring reader of the process."""
    from urdar.handlers.memberlist import MemberlistHandlers
    rc = m.ring_config("ingester")
    m.instance_id = rc.instance_id
    m.instance_addr = rc.addr
    m.ring_reader("ingester")
    m.route_table.mount(MemberlistHandlers(  # type: ignore[no-untyped-call]
        m.rings.stores, m.lifecyclers, m.clock, m.instance_id, m.instance_addr))
    return m.rings


def init_ingester(m: "Modules") -> "Ingester":
    from urdar.components.ingester import Ingester, IngesterConfig
    from urdar.handlers.ingester import IngesterClientHandlers, IngesterHandlers
    cfg = m.config
    config = IngesterConfig.from_config(cfg)
    m.ingester = Ingester(  # type: ignore[no-untyped-call]
        cfg["blocks_storage.tsdb.dir"], m.overrides, m.offload, m.clock, config,
        tsdb_factory=m.tsdb_factory, registry=m.registry,
        bucket=m.blocks_bucket() if config.ship_interval_ms else None)
    m.join_ring("ingester")
    lc = m.lifecycler_of("ingester")
    if lc is not None:
        # Series limits per ingester from the global ones, by the ingesters in the ring.
        from urdar.components.ingesterlimits import SeriesLimiter
        m.ingester.series_limit = SeriesLimiter(m.ring_reader("ingester"), lc.zone, m.clock,
                                                m.tenant_limit("ingestion_tenant_shard_size")).local
    m.route_table.mount(IngesterHandlers(m.ingester, ring=lc))
    # The internal endpoints distributors and queriers of other processes push and read through.
    m.route_table.mount(IngesterClientHandlers(m.ingester, m.offload,
                                               cfg["distributor.max_recv_msg_size"]))
    return m.ingester


def init_distributor(m: "Modules") -> "Distributor":
    from urdar.handlers.distributor import DistributorHandlers
    cfg = m.config
    m.distributor = build_distributor(m)
    m.join_ring("distributor")
    m.route_table.mount(DistributorHandlers(  # type: ignore[no-untyped-call]
        m.distributor, cfg["api.skip_label_name_validation_header_enabled"],
        retry_after=(cfg["distributor.retry_after_header.enabled"],
                     cfg["distributor.retry_after_header.min_backoff"] / 1000.0,
                     cfg["distributor.retry_after_header.max_backoff"] / 1000.0)))
    return m.distributor


def build_distributor(m: "Modules", ha_tracker: bool = True) -> "Distributor":
    """The distributor's validation, limits and replication (the distributor module's, and the
    ruler's when no distributor runs in its process), without its routes or ring entry. The
    ruler's has no HA tracker: rule results carry no replica labels."""
    from urdar.components.distributor import Distributor, DistributorConfig
    from urdar.components.ingester_client import LocalIngesterClient
    cfg = m.config
    # An ingester in this process is written to directly (no ring, no HTTP hop); otherwise
    # pushes are replicated over the ingester ring.
    client: Any = (LocalIngesterClient(m.ingester)  # type: ignore[no-untyped-call]
                   if m.ingester is not None else m.ring_ingesters())
    config = DistributorConfig.from_config(cfg)  # type: ignore[no-untyped-call]
    tracker = init_ha_tracker(m) if ha_tracker else None
    healthy = None
    if cfg["limits.ingestion_rate_strategy"] == "global":
        from urdar.net.ring import HealthyCount
        healthy = HealthyCount(m.ring_reader("distributor"), m.clock)
    distributor: Distributor = Distributor(  # type: ignore[no-untyped-call]
        m.overrides, client, m.offload, m.clock, config, registry=m.registry,
        ha_tracker=tracker if tracker is not None and tracker.config.enabled else None,
        healthy_distributors=healthy)
    return distributor


def init_ha_tracker(m: "Modules") -> "HATracker":
    """The distributor's HA tracker with its /distributor/ha_tracker page (always served, as in
    Mimir; empty unless -distributor.ha-tracker.enable). Its KV store is the process' in-memory
    one or an etcd client (-distributor.ha-tracker.store), closed with the rings' stores."""
    from urdar.components.hatracker import HATracker, HATrackerConfig
    from urdar.handlers.hatracker import HATrackerHandlers
    from urdar.net.kvstore import kv_from_config
    config = HATrackerConfig.from_config(m.config)
    kv = m.kv
    if config.enabled:
        try:
            kv = kv_from_config(m.config, "ha-tracker", m.reactor, m.clock, memory=m.kv)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if kv is not m.kv:
            m.rings.add_store("etcd (HA tracker)", kv, config.prefix)
    tracker = HATracker(kv, m.clock, m.overrides, config, registry=m.registry)
    m.route_table.mount(HATrackerHandlers(tracker))
    return tracker


def init_store_gateway(m: "Modules") -> "StoreGateway":
    from urdar.components.storecache import caches_from_config
    from urdar.components.storegateway import StoreGateway, StoreGatewayConfig
    from urdar.handlers.storegateway import StoreGatewayClientHandlers, StoreGatewayHandlers
    from urdar.engine.malloctune import retain_freed_heap
    retain_freed_heap()     # decoded samples of one query reuse the last one's pages
    cfg = m.config
    bucket = m.blocks_bucket()
    config = StoreGatewayConfig.from_config(cfg)  # type: ignore[no-untyped-call]
    remote = "memcached" in (cfg["blocks_storage.bucket_store.index_cache.backend"],
                             cfg["blocks_storage.bucket_store.chunks_cache.backend"])
    caches = caches_from_config(cfg, m.clock, m.reactor,  # type: ignore[no-untyped-call]
                                metrics=m.memcached_metrics() if remote else None)
    from urdar.components.blockshard import BlockOwnership
    m.join_ring("store-gateway")
    lc = m.lifecycler_of("store-gateway")
    owns = (BlockOwnership(m.ring_reader("store-gateway"), lc.instance_id,
                           m.tenant_limit("store_gateway_tenant_shard_size")).owns
            if lc is not None else None)
    m.storegateway = StoreGateway(  # type: ignore[no-untyped-call]
        bucket, cfg["blocks_storage.bucket_store.sync_dir"], m.clock, config, offload=m.offload,
        pool="storegateway", reactor=m.reactor, owns=owns, **caches)
    m.route_table.mount(StoreGatewayHandlers(m.storegateway))
    m.route_table.mount(StoreGatewayClientHandlers(m.storegateway, m.offload))
    return m.storegateway


def query_sources(m: "Modules") -> list[Any]:
    """What a querier reads (the querier module's, and the ruler's when no querier runs in its
    process): the ingesters for the last -querier.query-ingesters-within (the one of this
    process, else every ingester of the tenant's shard in the ring) and the store-gateways for
    data older than -querier.query-store-after (the one of this process, else those of the
    store-gateway ring)."""
    from urdar.components.ingester_client import LocalIngesterClient
    from urdar.components.sources import TimeBoundedSource
    cfg = m.config
    ingesters: Any = (LocalIngesterClient(m.ingester, m.offload)  # type: ignore[no-untyped-call]
                      if m.ingester is not None else m.ring_ingesters())
    sources = [TimeBoundedSource(ingesters, m.clock, within_ms=cfg["querier.query_ingesters_within"])]
    if m.storegateway is not None:
        from urdar.components.storegateway import StoreGatewayReader
        reader = StoreGatewayReader(m.storegateway)  # type: ignore[no-untyped-call]
        sources.append(TimeBoundedSource(reader, m.clock, after_ms=cfg["querier.query_store_after"]))
    else:
        # The store-gateways of the store-gateway ring, each block from one of its owners.
        from urdar.components.blocksstore import BlocksStoreSource, BucketBlockLister
        from urdar.components.ingester_remote import http_client
        from urdar.components.storegateway_remote import RemoteStoreGatewayClient
        http = http_client(m.reactor)
        timeout_s = cfg["querier.timeout"] / 1000.0
        clients: dict[str, RemoteStoreGatewayClient] = {}

        def client_for(addr: str) -> RemoteStoreGatewayClient:
            if addr not in clients:
                clients[addr] = RemoteStoreGatewayClient(addr, http, m.clock, m.offload, timeout_s)
            return clients[addr]
        lister = BucketBlockLister(m.blocks_bucket(), m.clock, m.offload, "bucket", m.reactor)
        blocks = BlocksStoreSource(m.ring_reader("store-gateway"), lister, client_for, m.offload,
                                   shard_size=m.tenant_limit("store_gateway_tenant_shard_size"))
        sources.append(TimeBoundedSource(blocks, m.clock, after_ms=cfg["querier.query_store_after"]))
    return sources


def init_querier(m: "Modules") -> object:
    """The querier over query_sources(m), the overlap of its sources merged and de-duplicated.
    With -querier.scheduler-address/-querier.frontend-address its workers also pull queries
    from a query-scheduler or query-frontend elsewhere."""
    from urdar.components.querier import Querier, QuerierConfig
    from urdar.handlers.querier import QuerierHandlers
    cfg = m.config
    m.querier = Querier(query_sources(m), m.offload, m.clock,  # type: ignore[no-untyped-call]
                        m.overrides, QuerierConfig.from_config(cfg), registry=m.registry)
    m.querier_handlers = QuerierHandlers(  # type: ignore[no-untyped-call]
        m.querier, cfg["api.prometheus_http_prefix"])
    m.route_table.mount(m.querier_handlers)
    address = m.remote_worker_address()
    if address:
        # Workers taking queries from a query-scheduler or a query-frontend in another process.
        from urdar.components.scheduler import QuerierWorkers, Services
        from urdar.handlers.scheduler import QuerierExecutor
        n = cfg["querier.max_concurrent"]
        client = m.scheduler_client("" if address == "ring" else address)
        executor = QuerierExecutor(m.querier)
        qid = cfg["frontend_worker.id"] or "%s:%d" % (m.instance_addr or "127.0.0.1",
                                                      cfg["server.http_listen_port"])

        def execute(work: dict[str, Any]) -> Any:
            d = executor.run(work["tenant"], work["payload"])
            return d.addCallback(lambda out: client.result(work["id"], out[0], out[1],
                                                           work.get("base"), out[2]))
        return Services(m.own_rings(), m.querier,
                        QuerierWorkers(lambda: client.next(qid), execute, n, m.clock))
    return m.querier


def init_query_frontend(m: "Modules") -> object:
    """The query-frontend: /api/v1/query and /api/v1/query_range run through it (alignment,
    splitting, results cache) and it dispatches each query (or split part) to a querier:
    - -query-frontend.scheduler-address: to the query-scheduler there (its queue, its queriers);
    - otherwise it queues queries itself (Mimir's v1 frontend): -querier.max-concurrent
      in-process workers run them on the querier of this process, or, when this process has
      none (or its querier has -querier.frontend-address/-querier.scheduler-address), remote
      queriers take them with -querier.frontend-address pointing here.
    Tenants take turns in the queue, so one tenant's flood of queries cannot starve another's.
    The other read routes are the in-process querier's own (none without one)."""
    from urdar.components.frontend import Frontend, FrontendConfig, results_cache_from_config
    from urdar.components.scheduler import (LocalDispatch, QuerierWorkers, QueuedQuerier,
                                            RemoteQuerier, Services)
    cfg = m.config
    config = FrontendConfig.from_config(cfg)
    cache = results_cache_from_config(cfg, m.clock, m.reactor, m.memcached_metrics()
                                      if cfg["frontend.results_cache.backend"] == "memcached"
                                      else None)
    timeout_s = cfg["querier.timeout"] / 1000.0
    queue = workers = None
    dispatch: Any
    rings = None
    if cfg["frontend.scheduler_address"] or m.scheduler_ring_mode():
        client = m.scheduler_client(cfg["frontend.scheduler_address"])
        dispatch = RemoteQuerier(client, m.offload, m.clock, timeout_s)
        rings = m.own_rings()
    elif m.querier is not None and not m.remote_worker_address():
        queue = m.request_queue("cortex_query_frontend")
        dispatch = QueuedQuerier(queue, m.querier, timeout_s)
        from urdar.handlers.querier import run_read_api
        querier = m.querier
        dispatch.read_runner = lambda tenant, kind, args: run_read_api(  # type: ignore[no-untyped-call]
            querier, m.offload, "query", tenant, kind, args)
        q = queue
        workers = QuerierWorkers(lambda: q.next_request("local"), lambda req: req.run(),
                                 cfg["querier.max_concurrent"], m.clock)
    else:
        from urdar.handlers.scheduler import SchedulerHandlers
        queue = m.request_queue("cortex_query_frontend")
        dispatch = RemoteQuerier(LocalDispatch(queue), m.offload, m.clock, timeout_s)
        m.route_table.mount(SchedulerHandlers(queue, m.clock))
    m.frontend = Frontend(dispatch, m.offload, m.clock, m.overrides, config, cache,
                          registry=m.registry)
    if m.querier_handlers is None:
        # No querier here: the query API routes the frontend serves, on the dispatcher.
        from urdar.handlers.querier import READ_APIS, QuerierHandlers
        h = QuerierHandlers(dispatch, cfg["api.prometheus_http_prefix"])  # type: ignore[no-untyped-call]
        h.ROUTES = tuple(r for r in h.ROUTES if r.name in ("query", "query_range")
                         or r.name in READ_APIS)
        m.route_table.mount(h)
        m.querier_handlers = h
    m.querier_handlers.frontend = m.frontend
    if cfg["frontend.query_stats_enabled"]:
        from urdar.components.querystats import QueryStatsReporter
        m.querier_handlers.query_stats = QueryStatsReporter(True, m.registry)
    return Services(rings, m.frontend, workers, queue)


def init_query_scheduler(m: "Modules") -> object:
    """The query-scheduler: the query queue (per-tenant FIFOs served round-robin) between
    query-frontends (-query-frontend.scheduler-address) and querier workers
    (-querier.scheduler-address), over HTTP long polls (handlers/scheduler.py)."""
    from urdar.components.scheduler import Services
    from urdar.handlers.scheduler import SchedulerHandlers
    queue = m.request_queue("cortex_query_scheduler")
    m.route_table.mount(SchedulerHandlers(queue, m.clock))
    if m.scheduler_ring_mode():
        # Its entry in the query-scheduler ring (and the /query-scheduler/ring page), where
        # frontends and queriers find it.
        m.join_ring("query-scheduler")
        return Services(m.own_rings(), queue)
    return queue


def init_compactor(m: "Modules") -> "Compactor":
    """The compactor over the shared -blocks-storage.* bucket, merging in its own one-thread pool."""
    from urdar.components.compactor import Compactor, CompactorConfig
    from urdar.handlers.compactor import CompactorHandlers
    cfg = m.config
    addr = "%s:%d" % (cfg["server.http_listen_address"] or "0.0.0.0", cfg["server.http_listen_port"])
    m.join_ring("compactor")
    lc = m.lifecycler_of("compactor")
    sharding = None
    if lc is not None and m.ring_kv("compactor") is not m.kv:
        # Compactors in a shared KV store split the tenants; alone in-process, one owns them all.
        from urdar.components.compactorshard import TenantOwnership
        sharding = TenantOwnership(m.ring_reader("compactor"), lc.instance_id)
    m.compactor = Compactor(  # type: ignore[no-untyped-call]
        m.blocks_bucket(), m.overrides, m.clock, cfg["compactor.data_dir"],
        CompactorConfig.from_config(cfg), offload=m.offload, reactor=m.reactor,
        instance_addr=addr, registry=m.registry, sharding=sharding,
        instance_id=lc.instance_id if lc is not None else None)
    m.route_table.mount(CompactorHandlers(m.compactor))
    return m.compactor


def init_alertmanager(m: "Modules") -> object:
    """The alertmanager's per-tenant configuration store (-alertmanager-storage.*, Mimir's bucket
    layout alerts/<tenant>) and its configuration API."""
    from urdar.components.alertmanager import AlertmanagerConfigs, AlertStore
    from urdar.handlers.alertmanager import AlertmanagerHandlers
    from urdar.storage.factory import bucket_from_config
    cfg = m.config
    bucket = bucket_from_config(  # type: ignore[no-untyped-call]
        cfg, reactor=m.reactor, offload=m.offload, pool="alertmanager",
        section="alertmanager_storage", clock=m.clock)
    assert m.overrides is not None
    configs = AlertmanagerConfigs(AlertStore(bucket, m.offload), m.overrides, m.offload,
                                  cfg["alertmanager.enable_api"])
    m.route_table.mount(AlertmanagerHandlers(configs))
    return AlertmanagerService(m, configs)


class AlertmanagerService:
    """The alertmanager module's running part: one Alertmanager per configured tenant and the
    API v2 (/alertmanager/api/v2/...); with no tenant configuration it holds nothing."""

    def __init__(self, m: "Modules", configs: object) -> None:
        from urdar.components.ammultitenant import MultitenantAlertmanager, http_client
        from urdar.handlers.alertmanager import AlertmanagerAPIHandlers
        cfg = m.config
        fallback = ""
        if cfg["alertmanager.fallback_config_file"]:
            try:
                with open(cfg["alertmanager.fallback_config_file"], encoding="utf-8") as f:
                    fallback = f.read()
            except OSError as exc:
                raise ConfigError("unable to read fallback config %s: %s"
                                  % (cfg["alertmanager.fallback_config_file"], exc)) from None
            from urdar.components.amcore import AMError
            from urdar.components.amdispatch import Config as AMConfig
            try:
                AMConfig(fallback, {}, None, None)
            except AMError as exc:
                raise ConfigError("invalid fallback config %s: %s"
                                  % (cfg["alertmanager.fallback_config_file"], exc)) from None
        http = http_client(m.reactor)
        self.configs = configs
        self.mt = MultitenantAlertmanager(
            configs, m.clock, http, cfg["alertmanager.data_dir"],
            poll_interval=cfg["alertmanager.poll_interval"] / 1000.0, fallback_config=fallback,
            retention=cfg["alertmanager.retention"] / 1000.0,
            external_url=cfg["alertmanager.external_url"], offload=m.offload, registry=m.registry)
        self.sharding = alertmanager_sharding(m, self.mt)
        api = AlertmanagerAPIHandlers(self.mt, cfg["api.alertmanager_http_prefix"])
        m.route_table.mount(api)
        from urdar.handlers.amui import AlertmanagerUIHandlers
        m.route_table.mount(AlertmanagerUIHandlers(api, cfg["api.alertmanager_http_prefix"]))

    def start(self) -> "Deferred[None]":
        # Without the ring module (-target=alertmanager) nothing else starts the ring's reader.
        self.sharding.ring.start()
        self.sharding.start()
        started: Deferred[None] = self.sharding.wait_joined().addCallback(
            lambda _: self.mt.start())
        return started

    def stop(self) -> "Deferred[object]":
        self.sharding.stop()
        self.sharding.ring.stop()
        return self.mt.stop()


def alertmanager_sharding(m: "Modules", mt: Any) -> Any:
    """The alertmanager's entry in the alertmanager ring (-alertmanager.sharding-ring.*,
    /multitenant_alertmanager/ring): it runs the tenants the ring gives it, re-syncs when the
    healthy alertmanagers change, and shares each tenant's state with its other replicas
    (components/amshard.py). Alone in the ring (-target=all) it owns every tenant."""
    from urdar.components.amshard import (AlertmanagerDistributor, AlertmanagerSharding,
                                          StateReplicator)
    from urdar.components.ingester_remote import http_client
    from urdar.handlers.alertmanager import AlertmanagerStateHandlers
    m.join_ring("alertmanager")
    lc = m.lifecycler_of("alertmanager")
    assert lc is not None
    sharding = AlertmanagerSharding(
        m.ring_reader("alertmanager"), lc.instance_id, m.clock,
        peer_timeout_s=m.config["alertmanager.peer_timeout"] / 1000.0,
        check_period_s=min(5.0, m.ring_config("alertmanager").heartbeat_s))
    mt.sharding = sharding
    http = http_client(m.reactor)
    mt.replicator = StateReplicator(sharding, http, m.clock)
    # Only with several alertmanagers in a ring: alone (-target=all, inmemory) it serves all.
    if m.config["alertmanager.sharding_ring.kvstore.store"] != "inmemory":
        mt.distributor = AlertmanagerDistributor(sharding, http, m.clock)
    sharding.on_change = mt.sync
    m.route_table.mount(AlertmanagerStateHandlers(mt))
    return sharding


class RulerService:
    """What the ruler module starts and stops: rule evaluation, its notifier and the ruler ring
    check; evaluation stops first so its last alerts still go out."""

    def __init__(self, ruler: "Ruler", notifier: "Notifier",
                 rule_manager: "RuleManager | None" = None, sharding: Any = None) -> None:
        self.ruler = ruler
        self.notifier = notifier
        self.rule_manager = rule_manager
        self.sharding = sharding

    def start(self) -> "Deferred[None] | None":
        self.notifier.start()
        if self.sharding is not None:
            self.sharding.start()
        return self.rule_manager.start() if self.rule_manager is not None else None

    def stop(self) -> "Deferred[None]":
        if self.sharding is not None:
            self.sharding.stop()
        if self.rule_manager is not None:
            self.rule_manager.stop()
        return self.notifier.stop()


def init_ruler(m: "Modules") -> RulerService:
    """The ruler's rule store (-ruler-storage.*, Mimir's bucket layout), its configuration API,
    its notifier (-ruler.alertmanager-url), rule evaluation and the read API (<prefix>/api/v1/rules,
    /alerts). It queries through the querier of this process, else (Mimir's ruler alone) a
    querier of its own over the ingester and store-gateway rings (query_sources), or the
    query-frontend at -ruler.query-frontend.address; it writes through the distributor of this
    process, else a distributor of its own replicating to the ingester ring."""
    from urdar.components.notifier import Notifier, NotifierConfig
    from urdar.components.ruler import Ruler, RuleStore, RulerConfig
    from urdar.handlers.ruler import RulerHandlers
    from urdar.storage.factory import bucket_from_config
    cfg = m.config
    bucket = bucket_from_config(  # type: ignore[no-untyped-call]
        cfg, reactor=m.reactor, offload=m.offload, pool="ruler", section="ruler_storage",
        clock=m.clock)
    assert m.overrides is not None
    store = RuleStore(bucket, m.offload)
    m.ruler = Ruler(store, m.overrides, m.offload, RulerConfig.from_config(cfg))
    m.route_table.mount(RulerHandlers(m.ruler, cfg["api.prometheus_http_prefix"]))
    m.notifier = Notifier(NotifierConfig.from_config(cfg), m.reactor, m.clock, m.registry)
    if m.notify is None and cfg["ruler.alertmanager_url"]:
        m.notify = m.notifier.send
    from urdar.components.rulemanager import (DistributorPusher, RemoteQuery, RuleManager,
                                              RuleManagerConfig, querier_funcs)
    from urdar.handlers.rulemanager import RulesHandlers
    querier: Any = m.querier
    if querier is None:
        from urdar.components.querier import Querier, QuerierConfig
        querier = Querier(query_sources(m), m.offload, m.clock,  # type: ignore[no-untyped-call]
                          m.overrides, QuerierConfig.from_config(cfg), registry=m.registry)
    distributor = m.distributor if m.distributor is not None else build_distributor(m, False)
    query, select = querier_funcs(querier)
    if cfg["ruler.query_frontend.address"]:
        # Remote evaluation: rule queries (not the restore of `for` state) go to a frontend.
        from urdar.components.ingester_remote import http_client
        query = RemoteQuery(cfg["ruler.query_frontend.address"], cfg["api.prometheus_http_prefix"],
                            http_client(m.reactor), m.clock, m.offload)
    m.rule_manager = RuleManager(
        store, query, select, DistributorPusher(distributor, m.offload), m.clock,
        RuleManagerConfig.from_config(cfg), offload=m.offload, notify=m.notify,
        overrides=m.overrides, registry=m.registry)
    m.ruler.on_change = m.rule_manager.sync_tenant
    m.route_table.mount(RulesHandlers(m.rule_manager, cfg["api.prometheus_http_prefix"]))
    sharding = ruler_sharding(m, m.rule_manager)
    return RulerService(m.ruler, m.notifier, m.rule_manager, sharding)


def ruler_sharding(m: "Modules", manager: "RuleManager") -> object:
    """The ruler's entry in the ruler ring (-ruler.ring.*, /ruler/ring): it evaluates the groups
    the ring gives it, re-syncs when the healthy rulers change, and its read API asks the other
    rulers for theirs (components/rulershard.py)."""
    from urdar.components.ingester_remote import http_client
    from urdar.components.rulershard import RulerPeers, RulerSharding
    m.join_ring("ruler")
    lc = m.lifecycler_of("ruler")
    assert lc is not None
    ring = m.ring_reader("ruler")
    sharding = RulerSharding(ring, lc.instance_id, m.clock,
                             check_period_s=min(5.0, m.ring_config("ruler").heartbeat_s))
    manager.owns = sharding.owns
    manager.peers = RulerPeers(sharding, http_client(m.reactor), m.clock, offload=m.offload)
    sharding.on_change = lambda: manager.sync(restore_new=True).addErrback(
        lambda f: log.error("ruler sync after a ring change: %s", f.getErrorMessage()))
    return sharding


@dataclass(frozen=True)
class Module:
    """One row of the module table. `deps` are built (and started) first and come along when
    -target names this module; `after` are only ordered before it when they run anyway (the
    querier reads an in-process store-gateway if there is one). `init` None: not implemented yet.
    `wait` False: readiness does not wait for its start (the store-gateway's first bucket sync
    may be slow or fail; queries sync a tenant lazily and the periodic sync retries)."""
    init: "Callable[[Modules], object] | None"
    deps: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    wait: bool = True


MODULES: dict[str, Module] = {
    "server": Module(init_server),
    "runtime-config": Module(init_runtime_config, ("server",)),
    "memberlist-kv": Module(init_memberlist_kv, ("server",)),
    "ring": Module(init_ring, ("server", "memberlist-kv")),
    "ingester": Module(init_ingester, ("server", "runtime-config", "ring")),
    "store-gateway": Module(init_store_gateway, ("server", "runtime-config", "ring"), wait=False),
    "querier": Module(init_querier, ("server", "runtime-config", "ring"),
                      after=("ingester", "store-gateway")),
    "distributor": Module(init_distributor, ("server", "runtime-config", "ring"), after=("ingester",)),
    "compactor": Module(init_compactor, ("server", "runtime-config", "ring")),
    # Alone (Mimir's microservice), the frontend has no querier: it queues for remote ones.
    "query-frontend": Module(init_query_frontend, ("server", "runtime-config"), after=("querier",)),
    "query-scheduler": Module(init_query_scheduler, ("server", "runtime-config")),
    # Readiness does not wait for the ruler's first load of every tenant's groups (bucket reads).
    # Alone it reads the ingester ring (ring) to query and write (Mimir's ruler: DistributorService).
    "ruler": Module(init_ruler, ("server", "runtime-config", "ring"),
                    after=("querier", "distributor"), wait=False),
    # Readiness does not wait for the first load of the tenants' configurations (bucket reads).
    "alertmanager": Module(init_alertmanager, ("server", "runtime-config"), wait=False),
    "overrides-exporter": Module(None, ("server",)),
}


def resolve(targets: Sequence[str], table: dict[str, Module] = MODULES) -> list[str]:
    """Module names to run for `targets` (already 'all'-expanded), dependencies first; among
    independent modules the table's order holds. Raises ConfigError for an unknown name."""
    wanted: list[str] = []

    def add(name: str, path: tuple[str, ...] = ()) -> None:
        if name not in table:
            raise ConfigError("invalid value for target: unknown module %r" % (name,))
        if name in path:
            raise ConfigError("module dependency cycle: %s" % " -> ".join(path + (name,)))
        if name not in wanted:
            for dep in table[name].deps:
                add(dep, path + (name,))
            wanted.append(name)
    for t in targets:
        add(t)
    order: list[str] = []
    placed: set[str] = set()

    def place(name: str) -> None:
        if name in placed:
            return
        placed.add(name)
        m = table[name]
        for dep in m.deps + tuple(a for a in m.after if a in wanted):
            place(dep)
        order.append(name)
    for name in table:
        if name in wanted:
            place(name)
    return order


class Modules:
    """Everything one urdar process runs, built from the module table. `app` is the Klein app
    serving every route; `routes()` lists them; `services()` the state of each module."""

    route_table: RouteTable

    def __init__(self, config: "Config", reactor: IAppReactor, clock: IReactorTime,
                 offload: Offload | None = None, registry: CollectorRegistry | None = None,
                 tsdb_factory: Callable[..., Any] | None = None,
                 read_file: Callable[[str], str] | None = None) -> None:
        self.config = config
        self.reactor = reactor
        self.clock = clock
        self.targets = config.targets
        self.order = resolve(self.targets)
        self.registry = registry if registry is not None else make_registry()
        self.offload = ensure_pools(offload if offload is not None else Offload(reactor), config,
                                    self.order)
        self.tsdb_factory: Callable[..., Any] | None = tsdb_factory
        if tsdb_factory is None:
            from urdar.components.ingester import default_tsdb_factory
            self.tsdb_factory = default_tsdb_factory
        self.read_file = read_file
        self.tenancy = Tenancy.from_config(config)
        self.instrument = Instrument(clock, self.registry)  # type: ignore[no-untyped-call]
        self.state = "Starting"
        self.reactor_lag: ReactorLag | None = None
        self.runtime: RuntimeConfig | None = None
        self.overrides: Overrides | None = None
        self.kv: MemoryKV | None = None
        self.ingester: Ingester | None = None
        self.distributor: Distributor | None = None
        self.querier: Querier | None = None
        self.querier_handlers: QuerierHandlers | None = None
        self.frontend: Frontend | None = None
        self._memcached_metrics: MemcachedMetrics | None = None
        self.storegateway: StoreGateway | None = None
        self.compactor: Compactor | None = None
        self.ruler: Ruler | None = None
        self.notifier: Notifier | None = None
        self.rule_manager: RuleManager | None = None
        # Where the ruler's alerts go (Notifier.send when an Alertmanager is configured).
        self.notify: Notify | None = None
        self.instance_id: str | None = None
        self.instance_addr: str | None = None
        self.lifecyclers: list[RingLifecycler] = []
        from urdar.net.ring import RingSet
        self.rings = RingSet()                  # ring readers and KV stores, by ring name
        self._ring_kvs: dict[str, Any] = {}
        self._rings_owned = False
        self._ring_of: dict[str, RingLifecycler] = {}   # module name -> its RingLifecycler
        self._bucket: Bucket | None = None
        self._ring_ingesters: Any = None
        self.objects: dict[str, object] = {}    # module name -> what its init built (None: nothing to run)
        self.states: dict[str, str] = {}        # module name -> New, Starting, Running, Stopping, ...
        for name in self.order:
            init = MODULES[name].init
            if init is None:
                continue
            self.objects[name] = init(self)
            self.states[name] = "New"
        self.app = self.route_table.app
        missing = [t for t in self.order if MODULES[t].init is None]
        if missing:
            log.warning("components not implemented yet, not started: %s", ", ".join(missing))

    def blocks_bucket(self) -> "Bucket":
        """The blocks bucket (-blocks-storage.*), shared by the shipper, store-gateway and compactor."""
        if self._bucket is None:
            from urdar.storage.factory import bucket_from_config
            self._bucket = bucket_from_config(  # type: ignore[no-untyped-call]
                self.config, reactor=self.reactor, offload=self.offload, pool="bucket", clock=self.clock)
        return self._bucket

    def remote_worker_address(self) -> str:
        """Where this process' querier workers take queries from (-querier.scheduler-address,
        else -querier.frontend-address; "ring": the query-scheduler ring; empty: from the
        in-process query-frontend)."""
        addr: str = (self.config["frontend_worker.scheduler_address"]
                     or self.config["frontend_worker.frontend_address"])
        if not addr and self.scheduler_ring_mode():
            return "ring"
        return addr

    def scheduler_ring_mode(self) -> bool:
        return bool(self.config["query_scheduler.service_discovery_mode"] == "ring")

    def scheduler_client(self, address: str) -> Any:
        """A net/schedulerclient.SchedulerClient for `address`, or, in ring mode, for the
        ACTIVE members of the query-scheduler ring."""
        from urdar.net.ring import WRITE
        from urdar.net.schedulerclient import SchedulerClient
        addresses = None
        if self.scheduler_ring_mode() and not address:
            ring = self.ring_reader("query-scheduler")
            addresses = lambda: [i.addr for i in ring.healthy_instances(WRITE)]  # noqa: E731
        return SchedulerClient(address, self.reactor, self.clock, addresses=addresses,
                               connections=self.config["querier.max_concurrent"])

    def own_rings(self) -> "RingSet | None":
        """The RingSet for the first module that needs ring readers in a process without the
        "ring" module (which otherwise starts and stops them); None after that."""
        if "ring" in self.order or self._rings_owned:
            return None
        self._rings_owned = True
        return self.rings

    def request_queue(self, prefix: str) -> "RequestQueue":
        """A query queue (-query-scheduler.max-outstanding-requests-per-tenant, the tenant's
        max_queriers_per_tenant), its metrics named `prefix`_*."""
        from urdar.components.scheduler import RequestQueue
        overrides = self.overrides

        def max_queriers(tenant: str) -> float:
            if overrides is None:
                return 0
            limits = overrides.for_tenant(tenant)  # type: ignore[no-untyped-call]
            return float(getattr(limits, "max_queriers_per_tenant", 0) or 0)
        return RequestQueue(self.clock, self.config["query_scheduler.max_outstanding_requests_per_tenant"],
                            max_queriers, registry=self.registry, prefix=prefix)

    def memcached_metrics(self) -> "MemcachedMetrics":
        """The process' memcached client metrics (one set per registry, shared by every cache)."""
        if self._memcached_metrics is None:
            from urdar.net.memcached import MemcachedMetrics
            self._memcached_metrics = MemcachedMetrics(self.registry)  # type: ignore[no-untyped-call]
        return self._memcached_metrics

    def ring_config(self, ring: str) -> "RingConfig":
        """Ring `ring`'s settings: its key (honouring -<ring>.prefix) and this instance in it."""
        from urdar.net.kvstore import ring_key
        from urdar.net.ring import RingConfig, default_instance_addr
        return RingConfig.from_config(self.config, ring, ring_key(self.config, ring),
                                      default_instance_addr(self.config["server.http_listen_address"]))

    def ring_kv(self, ring: str) -> Any:
        """The KV store of `ring` (-<ring>.store): the shared in-memory one or an etcd client."""
        kv = self._ring_kvs.get(ring)
        if kv is None:
            from urdar.net.kvstore import kv_from_config, ring_leaf
            try:
                kv = kv_from_config(self.config, ring, self.reactor, self.clock, memory=self.kv)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            self._ring_kvs[ring] = kv
            # /memberlist lists the in-memory store whole, an etcd only under the ring's prefix
            # (an etcd may be shared with other users).
            if kv is self.kv:
                self.rings.add_store("in memory", kv)
            else:
                prefix = self.ring_config(ring).key[:-len(ring_leaf(ring))]
                self.rings.add_store("etcd (%s ring)" % ring, kv, prefix)
        return kv

    def ring_ingesters(self) -> Any:
        """The ingesters of the ingester ring as one IngesterClient (components/replication.py),
        built once: pushes replicated, reads fanned out, each ingester over HTTP through one
        persistent connection pool."""
        if self._ring_ingesters is None:
            from urdar.components.ingester_remote import RemoteIngesterClient, http_client
            from urdar.components.replication import RingIngesterClient
            http = http_client(self.reactor)
            timeout_s = self.config["distributor.remote_timeout"] / 1000.0
            # Reads are bounded by the querier's own deadline; pushes by -distributor.remote-timeout.
            query_timeout_s = self.config["querier.timeout"] / 1000.0
            overrides = self.overrides

            def client_for(addr: str) -> RemoteIngesterClient:
                return RemoteIngesterClient(addr, http, self.clock, self.offload, query_timeout_s,
                                            push_timeout_s=timeout_s)

            def shard_size(tenant: str) -> int:
                lim = (overrides.for_tenant(tenant)  # type: ignore[no-untyped-call]
                       if overrides is not None else None)
                return int(getattr(lim, "ingestion_tenant_shard_size", 0) or 0)
            self._ring_ingesters = RingIngesterClient(
                self.ring_reader("ingester"), client_for, self.offload, self.clock, shard_size,
                read_lookback_s=self.config["querier.query_ingesters_within"] / 1000.0,
                registry=self.registry)
        return self._ring_ingesters

    def tenant_limit(self, name: str) -> Callable[[str], int]:
        """tenant -> the tenant's integer limit `name` (0 without overrides)."""
        overrides = self.overrides

        def get(tenant: str) -> int:
            lim = (overrides.for_tenant(tenant)  # type: ignore[no-untyped-call]
                   if overrides is not None else None)
            return int(getattr(lim, name, 0) or 0)
        return get

    def ring_reader(self, ring: str) -> "Ring":
        """A reader of `ring` (built once), with the ring's page (/<ring>/ring) mounted."""
        r = self.rings.rings.get(ring)
        if r is None:
            from urdar.handlers.ring import RingHandlers
            from urdar.net.ring import Ring
            r = Ring.from_ring_config(self.ring_kv(ring), self.clock, self.ring_config(ring))
            self.rings.rings[ring] = r
            self.route_table.mount(RingHandlers(r, ring))
        return r

    def join_ring(self, module: str) -> None:
        """Give `module` its entry in its Mimir ring (if it has one), in the ring's KV store."""
        from urdar.net.kvstore import RINGS
        from urdar.net.ring import RingLifecycler
        if module not in {r[0] for r in RINGS}:
            return
        rc = self.ring_config(module)
        lc = RingLifecycler.from_ring_config(self.ring_kv(module), self.clock, rc)
        self.ring_reader(module)
        self.lifecyclers.append(lc)
        self._ring_of[module] = lc

    def lifecycler_of(self, module: str) -> "RingLifecycler | None":
        """The RingLifecycler of `module`'s entry in its ring, if it has one."""
        return self._ring_of.get(module)

    def routes(self) -> list[Route]:
        return list(self.route_table.routes)

    def resource(self) -> Any:
        return self.app.resource()

    # ---- lifecycle -----------------------------------------------------------------------------

    def _start_one(self, name: str) -> "Deferred[None]":
        obj = self.objects[name]
        self.states[name] = "Starting"
        lc = self._ring_of.get(name)
        d: Deferred[object] = defer.succeed(None)
        if lc is not None:
            # JOINING while it starts (the ingester replays its WAL), ACTIVE once it serves. The
            # join is not waited for: with etcd down the component starts and heartbeats retry.
            def join(lc: "RingLifecycler" = lc) -> None:
                lc.join()       # raises for a bad tokens file; its write is not waited for
            d = defer.maybeDeferred(join)
        if hasattr(obj, "start"):
            d.addCallback(lambda _: obj.start())

        def running(_: object) -> None:
            self.states[name] = "Running"
            if lc is not None:
                lc.set_state("ACTIVE")

        def failed(f: Failure) -> Failure:
            self.states[name] = "Failed"
            return f
        started = d.addCallbacks(running, failed)
        if MODULES[name].wait:
            return started
        started.addErrback(lambda f: log.error("%s failed to start: %s", name, f.getErrorMessage()))
        return defer.succeed(None)

    def start(self) -> "Deferred[None]":
        """Start modules in dependency order, each after the previous one is running; the Deferred
        fires when all are (ready: the ingester has replayed its WAL)."""
        d: Deferred[None] = defer.succeed(None)

        def start_next(_: None, name: str) -> "Deferred[None]":
            return self._start_one(name)
        for name in self.objects:
            d.addCallback(start_next, name)

        def running(_: None) -> None:
            self.state = "Running"

        def failed(f: Failure) -> Failure:
            self.state = "Failed"
            return f
        return d.addCallbacks(running, failed)

    def _stop_one(self, name: str) -> "Deferred[object] | None":
        obj = self.objects[name]
        if self.states.get(name) in ("Terminated", "New"):
            self.states[name] = "Terminated"
            return None
        self.states[name] = "Stopping"
        lc = self._ring_of.get(name)
        if lc is not None:
            lc.set_state("LEAVING")     # LEAVING while it stops (the ingester flushes)
        d: Deferred[object] = (defer.maybeDeferred(obj.stop) if hasattr(obj, "stop")
                               else defer.succeed(None))

        def done(result: object) -> object:
            self.states[name] = "Terminated"
            return result

        def leave(result: object) -> object:
            # Then out of the ring (or left LEAVING, per -<ring>.unregister-on-shutdown).
            return lc.leave().addCallback(lambda _: result) if lc is not None else result
        return d.addBoth(done).addErrback(
            lambda f: log.error("error stopping %s: %s", name, f.getErrorMessage())).addCallback(leave)

    def stop(self) -> "Deferred[None]":
        """Not ready from now on; stop modules in reverse dependency order, each after the one
        that depends on it has stopped (the distributor before the ingester it writes to)."""
        self.state = "Stopping"
        d: Deferred[None] = defer.succeed(None)

        def stop_next(_: None, name: str) -> "Deferred[object] | None":
            return self._stop_one(name)
        for name in reversed(list(self.objects)):
            d.addCallback(stop_next, name)

        def done(_: None) -> None:
            self.state = "Terminated"
        return d.addCallback(done)

    def ready(self) -> tuple[bool, str]:
        """(ready?, reason) for /ready."""
        if self.state != "Running":
            return False, "Some services are not Running:\n%s: 1" % self.state
        if self.ingester is not None and not self.ingester.ready():  # type: ignore[no-untyped-call]
            return False, "Ingester not ready: ingester is %s" % self.ingester.state
        return True, ""

    def services(self) -> list[tuple[str, str]]:
        """[(name, state)] for /services: each module of -target and its dependencies, then the
        offload pools."""
        out = []
        for name in self.order:
            if MODULES[name].init is None:
                out.append((name, "Not implemented yet"))
            elif name == "runtime-config" and self.runtime is not None and not self.runtime.files:
                out.append((name, "Disabled (no -runtime-config.file)"))
            elif name == "query-frontend" and self.frontend is None:
                out.append((name, "Disabled (fronts the querier of this process; none runs here)"))
            elif name == "ingester" and self.ingester is not None:
                out.append((name, self.ingester.state))     # it reports its own (Stopping on shutdown)
            else:
                out.append((name, self.states.get(name, "New")))
        for name, (inflight, workers, queued) in sorted(self.offload.stats().items()):
            out.append(("offload pool %s" % name, "%d in flight (%d workers, %d queued max)"
                        % (inflight, workers, queued)))
        return out
