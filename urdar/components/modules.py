"""Composition root: builds what -target asks for, in dependency order, and wires the HTTP app.

Order: metrics registry -> overrides + runtime config -> offload pools -> ingester -> distributor
(reaching the ingester only through LocalIngesterClient) -> handlers -> one Klein app. `start()`
replays the ingester's TSDBs and fires when the process is ready (main.py then tells systemd);
`stop()` marks the process not ready and stops components in reverse order. Targets that urdar
does not implement yet (querier, store-gateway, ...) are accepted and listed as such on /services.
Nothing here touches the global reactor: main.py passes it in."""
import logging
import os

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from twisted.internet import defer

from urdar.components.distributor import Distributor, InstanceLimits
from urdar.components.ingester import Ingester, default_tsdb_factory
from urdar.components.ingester_client import LocalIngesterClient
from urdar.components.limits import Overrides, RuntimeConfig
from urdar.handlers.admin import AdminHandlers
from urdar.handlers.distributor import DistributorHandlers
from urdar.handlers.ingester import IngesterHandlers
from urdar.net.config import ConfigError
from urdar.net.offload import Offload
from urdar.net.server import Instrument, build_app
from urdar.net.tenant import Tenancy

log = logging.getLogger("urdar.modules")

IMPLEMENTED = ("distributor", "ingester", "querier", "compactor", "store-gateway")


def make_registry():
    """A registry with process, platform and GC metrics (Mimir exposes Go's equivalents)."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def default_offload(reactor, cfg):
    """decode/append pools sized to the CPUs with Mimir's in-flight push limit as their bound."""
    cpus = os.cpu_count() or 2
    inflight = cfg["distributor.instance_limits.max_inflight_push_requests"] or 2000
    off = Offload(reactor)
    off.add_pool("decode", max(2, cpus), inflight)
    off.add_pool("append", max(2, cpus), inflight)
    off.add_pool("compact", 1, 1000)
    off.add_pool("admin", 1, 100)
    off.add_pool("query", max(2, cpus), 20)   # PromQL and reads; Mimir's -querier.max-concurrent 20
    return off


class Modules:
    """Everything one urdar process runs. `app` is the Klein app serving all of it."""

    def __init__(self, config, reactor, clock, offload=None, registry=None,
                 tsdb_factory=default_tsdb_factory, read_file=None):
        self.config = cfg = config
        self.clock = clock
        self.targets = cfg.targets
        self.registry = registry if registry is not None else make_registry()
        self.offload = offload if offload is not None else default_offload(reactor, cfg)
        self.state = "Starting"
        self.overrides = Overrides(cfg.limits_defaults())
        self.runtime = RuntimeConfig(cfg["runtime_config.file"], cfg["runtime_config.period"],
                                     self.overrides, clock, self.offload, read_file=read_file)
        if self.runtime.files:
            self.runtime.load_now()
        self.tenancy = Tenancy.from_config(cfg)
        self.instrument = Instrument(clock, self.registry)
        self.ingester = None
        self.distributor = None
        self.reactor = reactor
        self.bucket = None
        self.storegateway = None
        if "store-gateway" in self.targets or (
                "ingester" in self.targets and cfg["blocks_storage.tsdb.ship_interval"]):
            self.bucket = self._build_bucket(cfg, reactor)
        if "ingester" in self.targets:
            self.ingester = Ingester(
                cfg["blocks_storage.tsdb.dir"], self.overrides, self.offload, clock,
                tsdb_factory=tsdb_factory,
                block_range_ms=cfg["blocks_storage.tsdb.block_ranges_period"][0],
                retention_ms=cfg["blocks_storage.tsdb.retention_period"],
                head_compaction_interval_ms=cfg["blocks_storage.tsdb.head_compaction_interval"],
                flush_on_shutdown=cfg["blocks_storage.tsdb.flush_blocks_on_shutdown"],
                registry=self.registry, bucket=self.bucket,
                ship_interval_ms=cfg["blocks_storage.tsdb.ship_interval"])
        if "store-gateway" in self.targets:
            from urdar.components.storecache import caches_from_config
            from urdar.components.storegateway import StoreGateway
            self._ensure_pool("storegateway", max(2, os.cpu_count() or 2), 100)
            self.storegateway = StoreGateway(
                self.bucket, cfg["blocks_storage.bucket_store.sync_dir"], clock,
                offload=self.offload, pool="storegateway", reactor=reactor,
                **caches_from_config(cfg, clock, reactor, self.registry),
                sync_interval_ms=cfg["blocks_storage.bucket_store.sync_interval"])
        if "distributor" in self.targets:
            if self.ingester is None:
                raise ConfigError("invalid value for target: a distributor without an ingester in the "
                                  "same process needs the ingester ring, which urdar does not have yet; "
                                  "use -target=all or -target=distributor,ingester")
            self.distributor = Distributor(
                self.overrides, LocalIngesterClient(self.ingester), self.offload, clock,
                registry=self.registry, max_recv_msg_size=cfg["distributor.max_recv_msg_size"],
                max_otlp_request_size=cfg["distributor.max_otlp_request_size"],
                instance_limits=InstanceLimits(
                    cfg["distributor.instance_limits.max_inflight_push_requests"],
                    cfg["distributor.instance_limits.max_inflight_push_requests_bytes"],
                    cfg["distributor.instance_limits.max_ingestion_rate"]))
        self.querier = None
        if "querier" in self.targets and self.ingester is not None:
            self.querier = self._build_querier(cfg)
        self.compactor = None
        if "compactor" in self.targets:
            self.compactor = self._build_compactor(cfg, reactor)
        self.kv, self.lifecyclers = self._build_ring(cfg, clock)
        self.handlers = [AdminHandlers(self)]
        if self.distributor is not None:
            self.handlers.append(DistributorHandlers(
                self.distributor, self.tenancy, cfg["api.skip_label_name_validation_header_enabled"],
                retry_after=(cfg["distributor.retry_after_header.enabled"],
                             cfg["distributor.retry_after_header.min_backoff"] / 1000.0,
                             cfg["distributor.retry_after_header.max_backoff"] / 1000.0)))
        if self.ingester is not None:
            self.handlers.append(IngesterHandlers(self.ingester))
        if self.storegateway is not None:
            from urdar.handlers.storegateway import StoreGatewayHandlers
            self.handlers.append(StoreGatewayHandlers(self.storegateway))
        if self.querier is not None:
            from urdar.handlers.querier import QuerierHandlers
            self.handlers.append(QuerierHandlers(self.querier, self.tenancy,
                                                 cfg["api.prometheus_http_prefix"]))
        if self.compactor is not None:
            from urdar.handlers.compactor import CompactorHandlers
            self.handlers.append(CompactorHandlers(self.compactor, self.tenancy))
        self.handlers.append(self._memberlist_handlers())
        if cfg["server.register_instrumentation"]:
            self.handlers.append(self._build_pprof(reactor, clock))
        self.app = build_app(self.handlers, self.instrument)
        missing = [t for t in self.targets if t not in IMPLEMENTED]
        if missing:
            log.warning("components not implemented yet, not started: %s", ", ".join(missing))

    def _ensure_pool(self, name, workers, max_queued):
        if name not in self.offload.stats():
            self.offload.add_pool(name, workers, max_queued)

    def _build_bucket(self, cfg, reactor):
        """The blocks bucket (-blocks-storage.*) of the shipper and the store-gateway; file I/O
        and S3 hashing run in the "bucket" pool."""
        from urdar.storage.factory import bucket_from_config
        self._ensure_pool("bucket", max(2, os.cpu_count() or 2), 1000)
        return bucket_from_config(cfg, reactor=reactor, offload=self.offload, pool="bucket",
                                  clock=self.clock)

    def _build_querier(self, cfg):
        """The querier reads the in-process ingester for the last -querier.query-ingesters-within
        and the in-process store-gateway (when running) for data older than
        -querier.query-store-after; the overlap is merged and de-duplicated."""
        from urdar.components.ingester_client import LocalIngesterReader
        from urdar.components.querier import Querier, TimeBoundedSource
        self._ensure_pool("query", max(2, os.cpu_count() or 2), 20)
        sources = [TimeBoundedSource(LocalIngesterReader(self.ingester, self.offload), self.clock,
                                     within_ms=cfg["querier.query_ingesters_within"])]
        if self.storegateway is not None:
            from urdar.components.storegateway import StoreGatewayReader
            sources.append(TimeBoundedSource(StoreGatewayReader(self.storegateway, self.reactor),
                                             self.clock, after_ms=cfg["querier.query_store_after"]))
        return Querier(sources, self.offload, self.clock,
                       self.overrides, timeout_s=cfg["querier.timeout"] / 1000.0,
                       max_samples=cfg["querier.max_samples"], lookback_ms=cfg["querier.lookback_delta"],
                       registry=self.registry)

    def _build_compactor(self, cfg, reactor):
        """The compactor over the shared -blocks-storage.* bucket, merging in its own one-thread pool."""
        from urdar.components.compactor import Compactor
        if self.bucket is None:
            self.bucket = self._build_bucket(cfg, reactor)
        bucket = self.bucket
        self._ensure_pool("compactor", 1, 1000)
        addr = "%s:%d" % (cfg["server.http_listen_address"] or "0.0.0.0", cfg["server.http_listen_port"])
        return Compactor(
            bucket, self.overrides, self.clock, cfg["compactor.data_dir"], offload=self.offload,
            reactor=reactor, block_ranges_ms=cfg["compactor.block_ranges"],
            compaction_interval_ms=cfg["compactor.compaction_interval"],
            cleanup_interval_ms=cfg["compactor.cleanup_interval"],
            deletion_delay_ms=cfg["compactor.deletion_delay"],
            first_level_wait_ms=cfg["compactor.first_level_compaction_wait_period"],
            tenant_cleanup_delay_ms=cfg["compactor.tenant_cleanup_delay"],
            max_validations=cfg["compactor.max_block_upload_validation_concurrency"],
            instance_addr=addr, registry=self.registry)

    def _build_ring(self, cfg, clock):
        """The in-memory KV store and one ring entry per running component that has a ring in Mimir."""
        import socket
        from urdar.net.kv import MemoryKV
        from urdar.net.ring import RING_KEYS, RingLifecycler, default_instance_addr
        kv = MemoryKV(clock)
        self.instance_id = socket.gethostname()
        self.instance_addr = "%s:%d" % (default_instance_addr(cfg["server.http_listen_address"]),
                                        cfg["server.http_listen_port"])
        built = {"ingester": self.ingester, "distributor": self.distributor,
                 "compactor": getattr(self, "compactor", None),
                 "store-gateway": getattr(self, "storegateway", None)}
        return kv, [RingLifecycler(kv, clock, key, self.instance_id, self.instance_addr)
                    for name, key in RING_KEYS if built.get(name) is not None]

    def _memberlist_handlers(self):
        from urdar.handlers.memberlist import MemberlistHandlers
        return MemberlistHandlers(self.kv, self.lifecyclers, self.clock, self.instance_id,
                                  self.instance_addr)

    def _build_pprof(self, reactor, clock):
        """/debug/pprof/* and /debug/fgprof; profiles are encoded in the one-thread "admin" pool."""
        from urdar.handlers.pprof import PprofHandler
        if "admin" not in self.offload.stats():
            self.offload.add_pool("admin", 1, 100)
        return PprofHandler(reactor, self.offload, pool="admin", clock=clock)

    def routes(self):
        return [r for h in self.handlers for r in h.ROUTES]

    def resource(self):
        return self.app.resource()

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self):
        """Start components; the Deferred fires when ready (WAL replay done)."""
        self.runtime.start()
        for lc in self.lifecyclers:
            lc.join()
        d = self.ingester.start() if self.ingester is not None else defer.succeed(None)
        if self.storegateway is not None:
            sg = self.storegateway

            def start_sg(result):
                # Readiness does not wait for the bucket (it may be down, or large): queries sync
                # a tenant lazily, the periodic sync retries, /services shows the state.
                sg.start().addErrback(
                    lambda f: log.error("store-gateway initial sync failed: %s", f.getErrorMessage()))
                return result
            d.addCallback(start_sg)

        def running(_):
            if self.distributor is not None:
                self.distributor.start()
            if self.compactor is not None:
                self.compactor.start()
            self.state = "Running"
            for lc in self.lifecyclers:
                lc.set_state("ACTIVE")

        def failed(f):
            self.state = "Failed"
            return f
        return d.addCallbacks(running, failed)

    def stop(self):
        """Not ready from now on; stop components in reverse dependency order."""
        self.state = "Stopping"
        for lc in self.lifecyclers:
            lc.leave()
        if self.distributor is not None:
            self.distributor.stop()
        if self.compactor is not None:
            self.compactor.stop()
        self.runtime.stop()
        if self.storegateway is not None:
            self.storegateway.stop()
        d = self.ingester.stop() if self.ingester is not None else defer.succeed(None)

        def done(_):
            self.state = "Terminated"
        return d.addCallback(done)

    def ready(self):
        """(ready?, reason) for /ready."""
        if self.state != "Running":
            return False, "Some services are not Running:\n%s: 1" % self.state
        if self.ingester is not None and not self.ingester.ready():
            return False, "Ingester not ready: ingester is %s" % self.ingester.state
        return True, ""

    def services(self):
        out = [("server", "Running" if self.state != "Terminated" else "Terminated"),
               ("runtime-config", "Running" if self.runtime.files else "Disabled (no -runtime-config.file)")]
        if self.ingester is not None:
            out.append(("ingester", self.ingester.state))
        if self.distributor is not None:
            out.append(("distributor", self.state))
        if self.querier is not None:
            out.append(("querier", self.state))
        if self.storegateway is not None:
            out.append(("store-gateway", self.storegateway.state))
        if self.compactor is not None:
            out.append(("compactor", self.compactor.state))
        for t in self.targets:
            if t not in IMPLEMENTED:
                out.append((t, "Not implemented yet"))
        for name, (inflight, workers, queued) in sorted(self.offload.stats().items()):
            out.append(("offload pool %s" % name, "%d in flight (%d workers, %d queued max)"
                        % (inflight, workers, queued)))
        return out
