"""Start-up configuration: one declarative table of options drives flags, YAML, defaults and /config.

Every option has a Mimir flag name (accepted with one or two dashes, `-flag=value`, `-flag value`,
or a bare `-flag` for booleans) and a dotted YAML path following Mimir's config file blocks
(`server`, `distributor`, `ingester`, `blocks_storage.tsdb`, `limits`, `runtime_config`, `api`).
Precedence is defaults < YAML file (`-config.file`) < flags. Unknown flags or YAML keys and values
that do not parse fail start-up with a ConfigError naming the key. Durations are stored as int
milliseconds (Prometheus' model.Duration syntax: 1h30m, 10m, 500ms, 2d); `render()` gives the YAML
shown by GET /config (?mode=diff|defaults), with secrets masked. app/main.py is the only caller
of `load()`. Value kinds and the `Option` row are components/options.py; the per-tenant rows
(`limits.*`) are components/limits.py's LIMIT_OPTIONS, appended to this table."""
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from urdar import __version__
from urdar.components.limits import LIMIT_OPTIONS, limit_key
# ConfigError is re-exported: callers of load() catch it as urdar.app.config.ConfigError.
from urdar.components.options import ConfigError as ConfigError, Option, load_yaml_mapping
from urdar.net.tenant import TenantError, validate_tenant

# Every -target value Mimir accepts; "all" expands to ALL_MODULES (the alertmanager included:
# with no tenant configuration it runs nothing).
ALL_MODULES = ("distributor", "ingester", "querier", "query-frontend", "store-gateway",
               "compactor", "ruler", "alertmanager")
KNOWN_TARGETS = ("all",) + ALL_MODULES + ("query-scheduler", "overrides-exporter")


H = 3600 * 1000
M = 60 * 1000


def _s3_options(flag: str, path: str, of: str) -> tuple[Option, ...]:
    """The eight S3 options of one bucket (`of` names it in the help texts, "" for the blocks
    bucket); the same keys as Mimir's s3 block under blocks_storage and ruler_storage."""
    return (
        Option(flag + ".s3.endpoint", path + ".s3.endpoint", "str", "",
               "S3 endpoint host[:port]%s, without a scheme (default: s3.<region>.amazonaws.com)."
               % of),
        Option(flag + ".s3.bucket-name", path + ".s3.bucket_name", "str", "",
               "S3 bucket name%s." % of),
        Option(flag + ".s3.region", path + ".s3.region", "str", "",
               "S3 region%s (default us-east-1)." % of),
        Option(flag + ".s3.access-key-id", path + ".s3.access_key_id", "str", "",
               "S3 access key ID%s." % of),
        Option(flag + ".s3.secret-access-key", path + ".s3.secret_access_key", "str", "",
               "S3 secret access key%s." % of, secret=True),
        Option(flag + ".s3.insecure", path + ".s3.insecure", "bool", False,
               "Talk to the S3 endpoint%s over plain HTTP." % of),
        Option(flag + ".s3.bucket-lookup-type", path + ".s3.bucket_lookup_type", "str", "auto",
               "S3 addressing%s: auto, path or virtual-hosted." % of,
               choices=("auto", "path", "virtual-hosted")),
        Option(flag + ".s3.max-retries", path + ".s3.max_retries", "int", 10,
               "Attempts per S3 request%s on retryable failures (5xx, 429, connection errors)." % of),
    )


# The option table. Order is the order of -help and of /config.
OPTIONS: tuple[Option, ...] = (
    Option("config.file", "config_file", "str", "", "YAML configuration file to load."),
    Option("target", "target", "list", ("all",),
           "Comma-separated list of components to run; 'all' runs every component of the "
           "monolithic mode.", choices=KNOWN_TARGETS),
    Option("auth.multitenancy-enabled", "multitenancy_enabled", "bool", True,
           "When true, requests must carry the X-Scope-OrgID header naming the tenant."),
    Option("auth.no-auth-tenant", "no_auth_tenant", "str", "anonymous",
           "Tenant used for every request when multitenancy is disabled."),
    Option("server.http-listen-address", "server.http_listen_address", "str", "",
           "HTTP listen address; empty means all interfaces."),
    Option("server.http-listen-port", "server.http_listen_port", "int", 8080, "HTTP listen port."),
    Option("server.graceful-shutdown-timeout", "server.graceful_shutdown_timeout", "duration", 30000,
           "How long in-flight requests may run after SIGTERM before the server closes."),
    Option("server.http-conn-limit", "server.http_listen_conn_limit", "int", 0,
           "Most HTTP connections open at once; further clients wait to be accepted (0 = no limit)."),
    Option("server.http-server-read-timeout", "server.http_server_read_timeout", "duration", 30000,
           "Longest time to read one whole request (line, headers and body) from its first byte; "
           "slower clients are disconnected (0 = no limit)."),
    Option("server.http-server-idle-timeout", "server.http_server_idle_timeout", "duration", 120000,
           "Idle time after which a keep-alive connection with no request in progress is closed."),
    Option("server.register-instrumentation", "server.register_instrumentation", "bool", True,
           "Serve the profiling endpoints /debug/pprof/* and /debug/fgprof (they sample only "
           "while a profile is requested)."),
    Option("log.level", "server.log_level", "str", "info", "Only log messages at this level or above.",
           choices=("debug", "info", "warn", "error")),
    Option("http.prometheus-http-prefix", "api.prometheus_http_prefix", "str", "/prometheus",
           "HTTP URL path prefix for the Prometheus-compatible API."),
    Option("http.alertmanager-http-prefix", "api.alertmanager_http_prefix", "str", "/alertmanager",
           "HTTP URL path prefix for the Alertmanager API."),
    Option("api.skip-label-name-validation-header-enabled",
           "api.skip_label_name_validation_header_enabled", "bool", False,
           "Honour the X-Mimir-SkipLabelNameValidation: true header on pushes."),
    Option("distributor.max-recv-msg-size", "distributor.max_recv_msg_size", "int", 104857600,
           "Largest push request body, in bytes, both compressed and decompressed."),
    Option("distributor.remote-timeout", "distributor.remote_timeout", "duration", 2000,
           "Timeout of one push to one ingester of the ring (separate processes only)."),
    Option("distributor.max-otlp-request-size", "distributor.max_otlp_request_size", "int", 104857600,
           "Largest OTLP request body, in bytes, both compressed and decompressed."),
    Option("distributor.retry-after-header.enabled", "distributor.retry_after_header.enabled", "bool",
           True, "Set Retry-After on 429 and 5xx push responses (exponential in the client's "
           "Retry-Attempt header, with jitter)."),
    Option("distributor.retry-after-header.min-backoff", "distributor.retry_after_header.min_backoff",
           "duration", 6000, "Retry-After for the first attempt (doubles per attempt)."),
    Option("distributor.retry-after-header.max-backoff", "distributor.retry_after_header.max_backoff",
           "duration", 96000, "Largest Retry-After."),
    Option("distributor.instance-limits.max-inflight-push-requests",
           "distributor.instance_limits.max_inflight_push_requests", "int", 2000,
           "Push requests in flight (being received or processed) before new ones get 503 "
           "(0 = unlimited); also bounds the decode and append queues (2000 when 0)."),
    Option("distributor.instance-limits.max-inflight-push-requests-bytes",
           "distributor.instance_limits.max_inflight_push_requests_bytes", "int", 256 << 20,
           "Sum of the body sizes of push requests being received or processed before new ones "
           "get 503, counted from Content-Length before the body is read (0 = unlimited). Not "
           "Mimir's default of 0: bodies are held in this one process, so the default bounds "
           "what any client picking a tenant ID can make it buffer."),
    Option("distributor.instance-limits.max-ingestion-rate",
           "distributor.instance_limits.max_ingestion_rate", "float", 0.0,
           "Samples per second this process accepts across all tenants (moving average) before "
           "pushes get 503 (0 = unlimited)."),
    # Cortex's flag (Mimir always divides): YAML under limits, not a per-tenant override.
    Option("distributor.ingestion-rate-limit-strategy", "limits.ingestion_rate_strategy", "str",
           "global", "global: each distributor enforces the tenant's ingestion rate divided by the "
           "healthy distributors of the distributor ring (Mimir's behaviour; the burst is not "
           "divided); local: each distributor enforces the whole rate.",
           choices=("global", "local")),
    # HA tracker (components/hatracker.py); its KV store options follow the rings' below.
    Option("distributor.ha-tracker.enable", "distributor.ha_tracker.enable_ha_tracker", "bool",
           False, "Enable the HA tracker, deduplicating samples of Prometheus HA replicas for the "
           "tenants with accept_ha_samples."),
    Option("distributor.ha-tracker.update-timeout", "distributor.ha_tracker.ha_tracker_update_timeout",
           "duration", 15000, "Refresh the elected replica's timestamp in the KV store once it is "
           "this old."),
    Option("distributor.ha-tracker.update-timeout-jitter-max",
           "distributor.ha_tracker.ha_tracker_update_timeout_jitter_max", "duration", 5000,
           "Largest jitter added to the update timeout, spreading the refreshes over time."),
    Option("distributor.ha-tracker.failover-timeout",
           "distributor.ha_tracker.ha_tracker_failover_timeout", "duration", 30000,
           "Elect another replica once the elected one has not been heard from for this long; "
           "must exceed the update timeout plus the jitter by 1s."),
    Option("querier.timeout", "querier.timeout", "duration", 2 * M,
           "The timeout for a query; slower queries answer 503 with errorType timeout."),
    Option("querier.max-samples", "querier.max_samples", "int", 50000000,
           "Maximum number of samples a single query can load into memory (422 beyond it)."),
    Option("querier.lookback-delta", "querier.lookback_delta", "duration", 5 * M,
           "How far back an instant vector selector looks for the newest sample."),
    Option("querier.promql-experimental-functions-enabled",
           "querier.promql_experimental_functions_enabled", "bool", False,
           "Enable experimental PromQL functions (info, limitk, limit_ratio, sort_by_label, ...)."),
    Option("blocks-storage.tsdb.dir", "blocks_storage.tsdb.dir", "str", "./tsdb/",
           "Directory holding one TSDB (WAL, head chunks, cut blocks) per tenant."),
    Option("blocks-storage.tsdb.block-ranges-period", "blocks_storage.tsdb.block_ranges_period",
           "duration_list", (2 * H,), "TSDB block range; the head is cut into blocks of this size."),
    Option("blocks-storage.tsdb.retention-period", "blocks_storage.tsdb.retention_period", "duration",
           13 * H, "How long cut blocks are kept on the ingester's local disk."),
    Option("blocks-storage.tsdb.head-compaction-interval", "blocks_storage.tsdb.head_compaction_interval",
           "duration", 1 * M, "How often the ingester checks whether the head can be cut into a block."),
    Option("blocks-storage.tsdb.flush-blocks-on-shutdown", "blocks_storage.tsdb.flush_blocks_on_shutdown",
           "bool", False, "Cut the whole head into blocks on shutdown."),
    Option("blocks-storage.tsdb.ship-interval", "blocks_storage.tsdb.ship_interval", "duration", 1 * M,
           "How often the ingester uploads newly cut blocks to object storage (0 = never ship)."),
    Option("blocks-storage.backend", "blocks_storage.backend", "str", "filesystem",
           "Object storage backend for blocks.", choices=("filesystem", "s3")),
    Option("blocks-storage.filesystem.dir", "blocks_storage.filesystem.dir", "str", "blocks",
           "Local directory holding the blocks bucket (filesystem backend)."),
    Option("blocks-storage.storage-prefix", "blocks_storage.storage_prefix", "str", "",
           "Prefix for every object name in the blocks bucket (no '/' at either end)."),
    *_s3_options("blocks-storage", "blocks_storage", ""),
    Option("blocks-storage.bucket-store.sync-dir", "blocks_storage.bucket_store.sync_dir", "str",
           "./tsdb-sync/", "Directory where the store-gateway keeps block index-headers."),
    Option("blocks-storage.bucket-store.sync-interval", "blocks_storage.bucket_store.sync_interval",
           "duration", 15 * M, "How often the store-gateway re-reads each tenant's block list."),
    Option("blocks-storage.bucket-store.index-cache.inmemory.max-size-bytes",
           "blocks_storage.bucket_store.index_cache.inmemory.max_size_bytes", "int", 1 << 30,
           "Store-gateway in-memory cache for postings and series entries, in bytes (0 = off)."),
    Option("blocks-storage.bucket-store.chunks-cache.inmemory.max-size-bytes",
           "blocks_storage.bucket_store.chunks_cache.inmemory.max_size_bytes", "int", 1 << 30,
           "Store-gateway in-memory cache for chunk bytes, in bytes (0 = off)."),
    Option("blocks-storage.bucket-store.index-cache.backend",
           "blocks_storage.bucket_store.index_cache.backend", "str", "inmemory",
           "Store-gateway index cache (postings and series): inmemory or memcached.",
           choices=("inmemory", "memcached")),
    Option("blocks-storage.bucket-store.index-cache.memcached.addresses",
           "blocks_storage.bucket_store.index_cache.memcached.addresses", "list", (),
           "Comma-separated memcached servers (host:port; dns+host:port is one server) of the "
           "store-gateway index cache; keys are spread over them by hash."),
    Option("blocks-storage.bucket-store.index-cache.memcached.timeout",
           "blocks_storage.bucket_store.index_cache.memcached.timeout", "duration", 200,
           "Longest wait for a memcached answer of the store-gateway index cache; a late "
           "answer is a miss."),
    Option("blocks-storage.bucket-store.index-cache.memcached.connect-timeout",
           "blocks_storage.bucket_store.index_cache.memcached.connect_timeout", "duration", 200,
           "Longest wait to connect to a memcached server of the store-gateway index cache."),
    Option("blocks-storage.bucket-store.index-cache.memcached.max-item-size",
           "blocks_storage.bucket_store.index_cache.memcached.max_item_size", "int", 1 << 20,
           "Largest value stored in the store-gateway index cache, in bytes; larger ones "
           "are not cached (0 = no limit)."),
    Option("blocks-storage.bucket-store.index-cache.memcached.max-get-multi-batch-size",
           "blocks_storage.bucket_store.index_cache.memcached.max_get_multi_batch_size", "int", 100,
           "Most keys per memcached get request of the store-gateway index cache."),
    Option("blocks-storage.bucket-store.index-cache.memcached.max-async-buffer-size",
           "blocks_storage.bucket_store.index_cache.memcached.max_async_buffer_size", "int", 25000,
           "Most writes to the store-gateway index cache in flight; more are dropped."),
    Option("blocks-storage.bucket-store.chunks-cache.backend",
           "blocks_storage.bucket_store.chunks_cache.backend", "str", "inmemory",
           "Store-gateway chunks cache: inmemory, memcached, or empty for none.",
           choices=("", "inmemory", "memcached")),
    Option("blocks-storage.bucket-store.chunks-cache.memcached.addresses",
           "blocks_storage.bucket_store.chunks_cache.memcached.addresses", "list", (),
           "Comma-separated memcached servers (host:port; dns+host:port is one server) of the "
           "store-gateway chunks cache; keys are spread over them by hash."),
    Option("blocks-storage.bucket-store.chunks-cache.memcached.timeout",
           "blocks_storage.bucket_store.chunks_cache.memcached.timeout", "duration", 200,
           "Longest wait for a memcached answer of the store-gateway chunks cache; a late "
           "answer is a miss."),
    Option("blocks-storage.bucket-store.chunks-cache.memcached.connect-timeout",
           "blocks_storage.bucket_store.chunks_cache.memcached.connect_timeout", "duration", 200,
           "Longest wait to connect to a memcached server of the store-gateway chunks cache."),
    Option("blocks-storage.bucket-store.chunks-cache.memcached.max-item-size",
           "blocks_storage.bucket_store.chunks_cache.memcached.max_item_size", "int", 1 << 20,
           "Largest value stored in the store-gateway chunks cache, in bytes; larger ones "
           "are not cached (0 = no limit)."),
    Option("blocks-storage.bucket-store.chunks-cache.memcached.max-get-multi-batch-size",
           "blocks_storage.bucket_store.chunks_cache.memcached.max_get_multi_batch_size", "int",
           100,
           "Most keys per memcached get request of the store-gateway chunks cache."),
    Option("blocks-storage.bucket-store.chunks-cache.memcached.max-async-buffer-size",
           "blocks_storage.bucket_store.chunks_cache.memcached.max_async_buffer_size", "int", 25000,
           "Most writes to the store-gateway chunks cache in flight; more are dropped."),
    Option("query-frontend.query-stats-enabled", "frontend.query_stats_enabled", "bool", True,
           "False to disable query statistics tracking. When enabled, a message with some "
           "statistics is logged for every query."),
    Option("query-frontend.align-queries-with-step", "frontend.align_queries_with_step", "bool",
           False, "Round range queries' start and end down to a multiple of their step."),
    Option("query-frontend.split-queries-by-interval", "frontend.split_queries_by_interval",
           "duration", 24 * H, "Split range queries at these day-aligned boundaries and run the "
           "parts in parallel (0 = no splitting)."),
    Option("query-frontend.cache-results", "frontend.cache_results", "bool", False,
           "Cache range query results (per tenant, query and step) and reuse them."),
    Option("query-frontend.parallelize-shardable-queries", "frontend.parallelize_shardable_queries",
           "bool", False, "Shard range queries' shardable aggregations by series (-query-"
           "frontend.query-sharding-total-shards) and run the shards in parallel."),
    Option("query-frontend.results-cache.backend", "frontend.results_cache.backend", "str",
           "inmemory", "Where range query results are cached: inmemory or memcached.",
           choices=("inmemory", "memcached")),
    Option("query-frontend.results-cache.inmemory.max-size-bytes",
           "frontend.results_cache.inmemory.max_size_bytes", "int", 256 << 20,
           "Bytes of encoded results the in-memory results cache holds (least recently used "
           "ones are dropped first)."),
    Option("query-frontend.results-cache.memcached.addresses",
           "frontend.results_cache.memcached.addresses", "list", (),
           "Comma-separated memcached servers (host:port) of the results cache."),
    Option("query-frontend.results-cache.memcached.timeout",
           "frontend.results_cache.memcached.timeout", "duration", 200,
           "Longest wait for a memcached answer of the results cache; a late answer is a miss."),
    Option("query-frontend.results-cache.memcached.connect-timeout",
           "frontend.results_cache.memcached.connect_timeout", "duration", 200,
           "Longest wait to connect to a memcached server of the results cache."),
    Option("query-frontend.results-cache.memcached.max-item-size",
           "frontend.results_cache.memcached.max_item_size", "int", 1 << 20,
           "Largest value stored in the results cache, in bytes; larger ones are not cached."),
    Option("query-frontend.results-cache.memcached.max-get-multi-batch-size",
           "frontend.results_cache.memcached.max_get_multi_batch_size", "int", 100,
           "Most keys per memcached get request of the results cache."),
    Option("query-frontend.results-cache.memcached.max-async-buffer-size",
           "frontend.results_cache.memcached.max_async_buffer_size", "int", 25000,
           "Most writes to the results cache in flight; more are dropped."),
    Option("query-scheduler.max-outstanding-requests-per-tenant",
           "query_scheduler.max_outstanding_requests_per_tenant", "int", 100,
           "Most queries (or split parts) of one tenant waiting in the query queue (the "
           "query-scheduler's, or the query-frontend's own without one); more get 429."),
    Option("query-scheduler.service-discovery-mode", "query_scheduler.service_discovery_mode",
           "str", "dns", "How query-frontends and queriers find query-schedulers: dns (the "
           "-query-frontend.scheduler-address / -querier.scheduler-address) or ring (the "
           "query-scheduler ring, -query-scheduler.ring.*).", choices=("dns", "ring")),
    Option("query-frontend.scheduler-address", "frontend.scheduler_address", "str", "",
           "host:port of the query-scheduler the query-frontend sends queries to (empty: the "
           "query-frontend queues them itself)."),
    Option("querier.max-concurrent", "querier.max_concurrent", "int", 20,
           "Queries one querier runs at once: the number of workers taking queries from the "
           "query queue."),
    Option("querier.scheduler-address", "frontend_worker.scheduler_address", "str", "",
           "host:port of the query-scheduler the querier's workers take queries from."),
    Option("querier.frontend-address", "frontend_worker.frontend_address", "str", "",
           "host:port of a query-frontend without a query-scheduler the querier's workers take "
           "queries from."),
    Option("querier.id", "frontend_worker.id", "str", "",
           "This querier's ID for the query queue's tenant shuffle sharding (default: the "
           "hostname and HTTP port)."),
    Option("querier.query-ingesters-within", "querier.query_ingesters_within", "duration", 13 * H,
           "Only ask ingesters for data newer than this before now (0 = always ask them)."),
    Option("querier.query-store-after", "querier.query_store_after", "duration", 12 * H,
           "Only ask the store-gateways for data older than this before now (0 = always ask them)."),
    Option("compactor.block-ranges", "compactor.block_ranges", "duration_list", (2 * H, 12 * H, 24 * H),
           "Compaction ranges: 2h blocks are merged into the next range, and so on."),
    Option("compactor.compaction-interval", "compactor.compaction_interval", "duration", 1 * H,
           "How often the compactor looks for blocks to compact, per tenant."),
    Option("compactor.data-dir", "compactor.data_dir", "str", "./data-compactor/",
           "Scratch directory for blocks being downloaded, compacted and validated."),
    Option("compactor.deletion-delay", "compactor.deletion_delay", "duration", 12 * H,
           "How long a block marked for deletion stays in the bucket before it is deleted."),
    Option("compactor.cleanup-interval", "compactor.cleanup_interval", "duration", 15 * M,
           "How often marked blocks are deleted, deleted tenants cleaned and bucket indexes rewritten."),
    Option("compactor.first-level-compaction-wait-period",
           "compactor.first_level_compaction_wait_period", "duration", 25 * M,
           "How long after upload a level-1 block waits before it is compacted (time for every "
           "ingester to ship its copy)."),
    Option("compactor.tenant-cleanup-delay", "compactor.tenant_cleanup_delay", "duration", 6 * H,
           "How long after a deleted tenant's blocks are gone its deletion mark is removed."),
    Option("compactor.max-block-upload-validation-concurrency",
           "compactor.max_block_upload_validation_concurrency", "int", 1,
           "Block upload validations run at once; more finish requests get 429 (0 = unlimited)."),
    Option("ruler.enable-api", "ruler.enable_api", "bool", True,
           "Serve the ruler's rule configuration API (<prefix>/config/v1/rules...)."),
    Option("ruler.alertmanager-url", "ruler.alertmanager_url", "str", "",
           "Comma-separated URLs of the Alertmanagers to send alerts to; the URL path is the API "
           "prefix, userinfo is basic auth, a dns+ URL is one Alertmanager per resolved address."),
    Option("ruler.alertmanager-refresh-interval", "ruler.alertmanager_refresh_interval", "duration",
           1 * M, "How often the host names of dns+ Alertmanager URLs are re-resolved."),
    Option("ruler.notification-queue-capacity", "ruler.notification_queue_capacity", "int", 10000,
           "Capacity of each tenant's queue of notifications to be sent to each Alertmanager."),
    Option("ruler.notification-timeout", "ruler.notification_timeout", "duration", 10000,
           "HTTP timeout (retries included) for sending one batch of alerts to an Alertmanager."),
    Option("ruler.alertmanager-client.basic-auth-username",
           "ruler.alertmanager_client.basic_auth_username", "str", "",
           "HTTP basic authentication username for the Alertmanagers (overrides the URL's)."),
    Option("ruler.alertmanager-client.basic-auth-password",
           "ruler.alertmanager_client.basic_auth_password", "str", "",
           "HTTP basic authentication password for the Alertmanagers (overrides the URL's).",
           secret=True),
    Option("ruler.query-frontend.address", "ruler.query_frontend.address", "str", "",
           "host:port (or URL) of a query-frontend or querier the ruler sends its rule queries "
           "to (<prefix>/api/v1/query over HTTP; Mimir uses gRPC); empty: evaluate in the ruler."),
    Option("ruler.evaluation-interval", "ruler.evaluation_interval", "duration", 1 * M,
           "How frequently to evaluate rule groups that set no interval of their own."),
    Option("ruler.poll-interval", "ruler.poll_interval", "duration", 1 * M,
           "How frequently to re-read every tenant's rule groups from the ruler bucket."),
    Option("ruler.resend-delay", "ruler.resend_delay", "duration", 1 * M,
           "Minimum time between resends of a still-firing alert to the Alertmanager."),
    Option("ruler.for-outage-tolerance", "ruler.for_outage_tolerance", "duration", 1 * H,
           "Max time to tolerate an outage when restoring the 'for' state of alerts."),
    Option("ruler.for-grace-period", "ruler.for_grace_period", "duration", 10 * M,
           "Minimum duration between an alert and its restored 'for' state firing; alerts "
           "with a shorter 'for' are not restored."),
    Option("ruler.external.url", "ruler.external.url", "str", "",
           "URL of the UI alerts link to (the alerts' generatorURL)."),
    Option("tenant-federation.enabled", "tenant_federation.enabled", "bool", False,
           "Accept rule groups with source_tenants (federated rule groups)."),
    Option("ruler-storage.backend", "ruler_storage.backend", "str", "filesystem",
           "Object storage backend for rule groups.", choices=("filesystem", "s3")),
    Option("ruler-storage.filesystem.dir", "ruler_storage.filesystem.dir", "str", "./ruler",
           "Local directory holding the rule groups bucket (filesystem backend)."),
    Option("ruler-storage.storage-prefix", "ruler_storage.storage_prefix", "str", "",
           "Prefix for every object name in the ruler bucket (no '/' at either end)."),
    *_s3_options("ruler-storage", "ruler_storage", " of the ruler bucket"),
    Option("alertmanager.enable-api", "alertmanager.enable_api", "bool", True,
           "Serve the alertmanager's tenant configuration API (/api/v1/alerts)."),
    Option("alertmanager-storage.backend", "alertmanager_storage.backend", "str", "filesystem",
           "Object storage backend for alertmanager configurations.", choices=("filesystem", "s3")),
    Option("alertmanager-storage.filesystem.dir", "alertmanager_storage.filesystem.dir", "str",
           "./alertmanager", "Local directory holding the alertmanager bucket (filesystem backend)."),
    Option("alertmanager-storage.storage-prefix", "alertmanager_storage.storage_prefix", "str", "",
           "Prefix for every object name in the alertmanager bucket (no '/' at either end)."),
    *_s3_options("alertmanager-storage", "alertmanager_storage", " of the alertmanager bucket"),
    Option("alertmanager.storage.path", "alertmanager.data_dir", "str", "./data-alertmanager/",
           "Directory of the tenants' alertmanager state (silences, notification log)."),
    Option("alertmanager.storage.retention", "alertmanager.retention", "duration", 120 * H,
           "How long expired silences and notification log entries are kept."),
    Option("alertmanager.poll-interval", "alertmanager.poll_interval", "duration", 15 * 1000,
           "How often the tenants' alertmanager configurations are reloaded from storage."),
    Option("alertmanager.fallback-config-file", "alertmanager.fallback_config_file", "str", "",
           "Alertmanager configuration for tenants that have none, when they use the API."),
    Option("alertmanager.web.external-url", "alertmanager.external_url", "str", "",
           "URL the alertmanager is reached at (the notifications' externalURL)."),
    Option("runtime-config.file", "runtime_config.file", "list", (),
           "Comma-separated runtime configuration files (per-tenant overrides), merged left to right."),
    Option("runtime-config.reload-period", "runtime_config.period", "duration", 10000,
           "How often the runtime configuration files are re-read."),
)

OPTIONS = OPTIONS + LIMIT_OPTIONS


# ---- ring KV stores (net/kvstore.py): the same seven options for every ring ---------------------
def _ring_kv_options() -> tuple[Option, ...]:
    from urdar.net.kvstore import DEFAULT_PREFIXES, HA_TRACKER_KV, RINGS, STORES
    out: list[Option] = []
    for ring, flag, path, _ in RINGS + (HA_TRACKER_KV,):
        ha = ring == HA_TRACKER_KV[0]
        out += [
            Option(flag + ".store", path + ".store", "str", "inmemory",
                   "KV store of the %s: inmemory (one process; Mimir's default is memberlist, "
                   "which urdar does not have) or etcd." % (ring if ha else ring + " ring"),
                   choices=STORES),
            Option(flag + ".prefix", path + ".prefix", "str",
                   "ha-tracker/" if ha else DEFAULT_PREFIXES.get(ring, "collectors/"),
                   "Prefix of the %s's keys in its KV store." % (ring if ha else ring + " ring")),
            Option(flag + ".etcd.endpoints", path + ".etcd.endpoints", "list", (),
                   "etcd endpoints (host:port) of the %s ring's store, tried in turn." % ring),
            Option(flag + ".etcd.dial-timeout", path + ".etcd.dial_timeout", "duration", 10000,
                   "How long one etcd request may go unanswered before the next endpoint is tried."),
            Option(flag + ".etcd.max-retries", path + ".etcd.max_retries", "int", 10,
                   "Attempts of an etcd write (failed requests and lost compare-and-swap races)."),
            Option(flag + ".etcd.username", path + ".etcd.username", "str", "", "etcd username."),
            Option(flag + ".etcd.password", path + ".etcd.password", "str", "", "etcd password.",
                   secret=True),
        ]
    return tuple(out)


OPTIONS = OPTIONS + _ring_kv_options()


# ---- ring members (net/ring.py): heartbeats, identity, tokens, as Mimir has them per ring -------
def _ring_member_options() -> tuple[Option, ...]:
    import socket
    from urdar.net.ring import RING_FLAGS
    host = socket.gethostname()
    out: list[Option] = []
    for ring, (flag, path, num_tokens, full) in RING_FLAGS.items():
        out += [
            Option(flag + ".heartbeat-period", path + ".heartbeat_period", "duration", 15000,
                   "How often this instance refreshes its entry in the %s ring." % ring),
            Option(flag + ".heartbeat-timeout", path + ".heartbeat_timeout", "duration", 60000,
                   "A member of the %s ring whose last heartbeat is older than this is unhealthy "
                   "(0 = never)." % ring),
            Option(flag + ".instance-id", path + ".instance_id", "str", host,
                   "This instance's ID in the %s ring (default: the hostname)." % ring),
            Option(flag + ".instance-addr", path + ".instance_addr", "str", "",
                   "Address other members reach this instance at (default: the listen address, "
                   "else the address of the default route)."),
            Option(flag + ".instance-port", path + ".instance_port", "int", 0,
                   "Port other members reach this instance at (default: the HTTP listen port)."),
        ]
        if full:
            out += [
                Option(flag + ".replication-factor", path + ".replication_factor", "int", 3,
                       "Instances of the %s ring that hold each key." % ring),
                Option(flag + ".zone-awareness-enabled", path + ".zone_awareness_enabled", "bool",
                       False, "Put the replicas of a key in distinct availability zones."),
                Option(flag + ".num-tokens", path + ".num_tokens", "int", num_tokens,
                       "Tokens this instance owns in the %s ring." % ring),
                Option(flag + ".tokens-file-path", path + ".tokens_file_path", "str", "",
                       "File keeping this instance's tokens across restarts (empty: none)."),
                Option(flag + ".instance-availability-zone", path + ".instance_availability_zone",
                       "str", "", "This instance's availability zone."),
                Option(flag + ".unregister-on-shutdown", path + ".unregister_on_shutdown", "bool",
                       True, "Remove this instance from the %s ring on shutdown (false: it stays "
                       "LEAVING and keeps its tokens for its restart)." % ring),
            ]
    return tuple(out)


OPTIONS = OPTIONS + _ring_member_options() + (
    # Mimir's ruler ring has tokens but none of the other flags of a full ring (RF is 1).
    Option("ruler.ring.num-tokens", "ruler.ring.num_tokens", "int", 128,
           "Tokens this instance owns in the ruler ring."),
    # The alertmanager ring (components/amshard.py): 128 tokens as in Mimir, which has no flag
    # for them, and a replication factor.
    Option("alertmanager.sharding-ring.replication-factor",
           "alertmanager.sharding_ring.replication_factor", "int", 3,
           "Alertmanagers of the alertmanager ring that run each tenant's Alertmanager."),
    Option("alertmanager.peer-timeout", "alertmanager.peer_timeout", "duration", 15000,
           "How long the replica at position p of a tenant waits (p times this) before sending a "
           "notification, so that the replicas before it send it first."),)
# ---- end of ring KV stores ----------------------------------------------------------------------

BY_FLAG = {o.flag: o for o in OPTIONS}
BY_PATH = {o.path: o for o in OPTIONS}


class Config:
    """The effective configuration: `cfg["server.http_listen_port"]` by YAML path.

    `source(path)` says where a value came from: "default", "yaml" or "flag". Values are Any:
    their type follows the option's kind (str, int, bool, tuple...), known only at run time."""

    def __init__(self, values: Mapping[str, Any] | None = None,
                 sources: Mapping[str, str] | None = None,
                 options: Sequence[Option] = OPTIONS) -> None:
        self._options = options
        self._by_path = {o.path: o for o in options}
        self.values: dict[str, Any] = {o.path: o.default for o in options}
        self.sources = {o.path: "default" for o in options}
        if values:
            for path, value in values.items():
                self.set(path, value, (sources or {}).get(path, "flag"))

    def __getitem__(self, path: str) -> Any:
        return self.values[path]

    def get(self, path: str, default: Any = None) -> Any:
        return self.values.get(path, default)

    def set(self, path: str, value: Any, source: str = "flag") -> None:
        if path not in self._by_path:
            raise ConfigError("unknown configuration key %r" % (path,))
        self.values[path] = value
        self.sources[path] = source

    def source(self, path: str) -> str:
        return self.sources[path]

    @property
    def targets(self) -> tuple[str, ...]:
        """Component names to run, 'all' expanded (alertmanager only when asked for)."""
        out: list[str] = []
        for t in self.values["target"]:
            for name in (ALL_MODULES if t == "all" else (t,)):
                if name not in out:
                    out.append(name)
        return tuple(out)

    def limits_defaults(self) -> dict[str, Any]:
        """The `limits:` block as {limit key: value} (runtime overrides apply on top)."""
        return {limit_key(o): self.values[o.path] for o in self._options if o.tenant}

    def render(self, mode: str | None = None) -> str:
        """YAML text for GET /config: everything, mode="diff" (non-defaults) or "defaults"."""
        tree: dict[str, Any] = {}
        for o in self._options:
            if o.path == "config_file":
                continue
            value = o.default if mode == "defaults" else self.values[o.path]
            if mode == "diff" and value == o.default:
                continue
            node = tree
            parts = o.path.split(".")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = o.render(value)
        if not tree:
            return "{}\n"
        text: str = yaml.dump(tree, Dumper=yaml.CSafeDumper, sort_keys=False,
                              default_flow_style=False)
        return text


# ---- flags -----------------------------------------------------------------------------------

def parse_flags(argv: Sequence[str],
                options: Sequence[Option] = OPTIONS) -> tuple[dict[str, Any], set[str]]:
    """Parse command-line flags into {path: value}. Returns (values, special) where special holds
    "help"/"version" if asked for. Raises ConfigError for unknown flags and bad values."""
    by_flag = {o.flag: o for o in options}
    values: dict[str, Any] = {}
    special: set[str] = set()
    i = 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-") or arg in ("-", "--"):
            raise ConfigError("unexpected argument %r (flags look like -name=value)" % (arg,))
        name = arg[2:] if arg.startswith("--") else arg[1:]
        raw: str | None = None
        if "=" in name:
            name, raw = name.split("=", 1)
        if name in ("h", "help", "help-all"):
            special.add("help")
            continue
        if name == "version":
            special.add("version")
            continue
        opt = by_flag.get(name)
        if opt is None:
            raise ConfigError("flag provided but not defined: -%s" % (name,))
        if raw is None:
            if opt.kind == "bool":
                raw = "true"
            elif i < len(argv):
                raw = argv[i]
                i += 1
            else:
                raise ConfigError("flag needs an argument: -%s" % (name,))
        values[opt.path] = opt.parse(raw, "flag -%s" % (name,))
    return values, special


def mask_argv(argv: Sequence[str], options: Sequence[Option] = OPTIONS) -> list[str]:
    """`argv` with the values of secret flags replaced as /config shows them ("********"), for
    /debug/pprof/cmdline. Anything that is not one of our flags (the interpreter, -m) passes."""
    secret = {o.flag for o in options if o.secret}
    out: list[str] = []
    mask_next = False
    for arg in argv:
        if mask_next:
            out.append("********")
            mask_next = False
            continue
        if arg.startswith("-") and arg not in ("-", "--"):
            dashes = "--" if arg.startswith("--") else "-"
            name, eq, value = arg[len(dashes):].partition("=")
            if name in secret:
                if eq:
                    arg = "%s%s=%s" % (dashes, name, "********" if value else "")
                else:
                    mask_next = True
        out.append(arg)
    return out


def help_text(options: Sequence[Option] = OPTIONS) -> str:
    """-help output: every flag, its kind, default and meaning."""
    out = io.StringIO()
    out.write("Usage of urdar (flags take one or two dashes; -flag=value or -flag value):\n")
    for o in options:
        default = o.render(o.default)
        if isinstance(default, list):
            default = ",".join(default)
        out.write("  -%s %s\n    \t%s (default %r)\n" % (o.flag, o.kind, o.help, default))
    return out.getvalue()


# ---- YAML ------------------------------------------------------------------------------------

def load_yaml_text(text: str, where: str, options: Sequence[Option] = OPTIONS) -> dict[str, Any]:
    """Parse a YAML config document into {path: value}; unknown keys raise ConfigError."""
    doc = load_yaml_mapping(text, where, "a mapping of blocks")
    by_path = {o.path: o for o in options}
    blocks = {p.rsplit(".", i)[0] for p in by_path for i in range(1, p.count(".") + 1)}
    values: dict[str, Any] = {}

    def walk(node: dict[Any, Any], prefix: str) -> None:
        for key, value in node.items():
            path = "%s.%s" % (prefix, key) if prefix else str(key)
            if path in by_path and path != "config_file":
                values[path] = by_path[path].parse(value, "%s key %s" % (where, path))
            elif path in blocks:
                if value is None:
                    continue
                if not isinstance(value, dict):
                    raise ConfigError("%s: key %s must be a mapping" % (where, path))
                walk(value, path)
            else:
                raise ConfigError("%s: unknown key %s" % (where, path))

    walk(doc, "")
    return values


def load(argv: Sequence[str], options: Sequence[Option] = OPTIONS,
         read_file: Callable[[str], str] | None = None) -> tuple[Config, set[str]]:
    """Build the Config from flags and the YAML file they name. Returns (config, special)."""
    flag_values, special = parse_flags(argv, options)
    cfg = Config(options=options)
    path = flag_values.get("config_file", "")
    if path:
        if read_file is None:
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except OSError as exc:
                raise ConfigError("cannot read -config.file %s: %s" % (path, exc.strerror)) from None
        else:
            text = read_file(path)
        for p, value in load_yaml_text(text, path, options).items():
            cfg.set(p, value, "yaml")
    for p, value in flag_values.items():
        cfg.set(p, value, "flag")
    validate(cfg)
    return cfg, special


def validate(cfg: Config) -> None:
    """Cross-option checks that a single parser cannot make."""
    from urdar.net.ring import RING_FLAGS
    for flag, path, _, _ in RING_FLAGS.values():
        for leaf, dash, least in (("num_tokens", "num-tokens", 1), ("replication_factor",
                                  "replication-factor", 1), ("heartbeat_period", "heartbeat-period", 1)):
            if path + "." + leaf in cfg.values and cfg[path + "." + leaf] < least:
                raise ConfigError("invalid value for -%s.%s: must be positive" % (flag, dash))
    if "target" in cfg.values and not cfg["target"]:
        raise ConfigError("invalid value for target: at least one component is required")
    if "blocks_storage.tsdb.block_ranges_period" in cfg.values:
        ranges = cfg["blocks_storage.tsdb.block_ranges_period"]
        if not ranges or any(r <= 0 for r in ranges):
            raise ConfigError("invalid value for blocks_storage.tsdb.block_ranges_period: "
                              "needs at least one positive duration")
    if "server.http_listen_port" in cfg.values and not 0 <= cfg["server.http_listen_port"] <= 65535:
        raise ConfigError("invalid value for server.http_listen_port: %d is not a TCP port"
                          % cfg["server.http_listen_port"])
    if "no_auth_tenant" in cfg.values:
        try:
            validate_tenant(cfg["no_auth_tenant"])
        except TenantError as exc:
            raise ConfigError("invalid value for no_auth_tenant: %s" % (exc.message,)) from None


def version_text() -> str:
    return "urdar, version %s" % (__version__,)
