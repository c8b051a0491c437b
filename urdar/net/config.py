"""Start-up configuration: one declarative table of options drives flags, YAML, defaults and /config.

Every option has a Mimir flag name (accepted with one or two dashes, `-flag=value`, `-flag value`,
or a bare `-flag` for booleans) and a dotted YAML path following Mimir's config file blocks
(`server`, `distributor`, `ingester`, `blocks_storage.tsdb`, `limits`, `runtime_config`, `api`).
Precedence is defaults < YAML file (`-config.file`) < flags. Unknown flags or YAML keys and values
that do not parse fail start-up with a ConfigError naming the key. Durations are stored as int
milliseconds (Prometheus' model.Duration syntax: 1h30m, 10m, 500ms, 2d); `render()` gives the YAML
shown by GET /config (?mode=diff|defaults), with secrets masked. net/main.py is the only caller
of `load()`; the per-tenant part (`limits.*`) feeds components/limits.py."""
import io
import re
from dataclasses import dataclass

import yaml

from urdar import __version__

# Every -target value Mimir accepts; "all" expands to ALL_MODULES (alertmanager is opt-in there too).
ALL_MODULES = ("distributor", "ingester", "querier", "query-frontend", "store-gateway",
               "compactor", "ruler")
KNOWN_TARGETS = ("all",) + ALL_MODULES + ("alertmanager", "query-scheduler", "overrides-exporter")


class ConfigError(ValueError):
    """A configuration problem that stops start-up; the message names the flag or YAML key."""


# ---- value types ---------------------------------------------------------------------------

_DUR_UNITS = {"y": 365 * 86400000, "w": 7 * 86400000, "d": 86400000, "h": 3600000, "m": 60000,
              "s": 1000, "ms": 1, "us": 0.001, "µs": 0.001, "ns": 0.000001}
_DUR_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|y|w|d|h|m|s)")


def parse_duration_ms(text):
    """Duration text ("2h", "1h30m", "500ms", "0") to int milliseconds; ValueError if malformed."""
    if isinstance(text, bool):
        raise ValueError("not a duration: %r" % (text,))
    if isinstance(text, int):
        if text == 0:
            return 0
        raise ValueError("duration %r needs a unit (e.g. 10s, 5m, 2h)" % (text,))
    s = str(text).strip()
    if s in ("0", "-0"):
        return 0
    neg = s.startswith("-")
    body = s[1:] if neg else s
    pos, total = 0, 0.0
    for m in _DUR_PART.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DUR_UNITS[m.group(2)]
        pos = m.end()
    if not body or pos != len(body):
        raise ValueError("not a duration: %r (use e.g. 10s, 5m, 2h, 1h30m)" % (s,))
    ms = int(round(total))
    return -ms if neg else ms


def format_duration_ms(ms):
    """Int milliseconds to Prometheus-style duration text: 7200000 -> "2h", 0 -> "0s"."""
    if ms == 0:
        return "0s"
    out = "-" if ms < 0 else ""
    ms = abs(ms)
    for unit in ("h", "m", "s", "ms"):
        size = _DUR_UNITS[unit]
        if ms >= size:
            out += "%d%s" % (ms // size, unit)
            ms %= size
    return out


def _parse_bool(v):
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("true", "1", "t", "yes"):
        return True
    if s in ("false", "0", "f", "no"):
        return False
    raise ValueError("not a boolean: %r (use true or false)" % (v,))


def _parse_int(v):
    if isinstance(v, bool):
        raise ValueError("not an integer: %r" % (v,))
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    try:
        return int(str(v).strip(), 10)
    except ValueError:
        raise ValueError("not an integer: %r" % (v,)) from None


def _parse_float(v):
    if isinstance(v, bool):
        raise ValueError("not a number: %r" % (v,))
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ValueError("not a number: %r" % (v,)) from None


def _parse_str(v):
    if v is None:
        return ""
    if isinstance(v, (dict, list)):
        raise ValueError("expected a string, got %s" % type(v).__name__)
    return str(v)


def _parse_list(v):
    if v is None:
        return ()
    if isinstance(v, (list, tuple)):
        return tuple(_parse_str(x).strip() for x in v if _parse_str(x).strip())
    return tuple(x.strip() for x in _parse_str(v).split(",") if x.strip())


def _parse_duration_list(v):
    return tuple(parse_duration_ms(x) for x in _parse_list(v))


PARSERS = {"str": _parse_str, "int": _parse_int, "float": _parse_float, "bool": _parse_bool,
           "duration": parse_duration_ms, "list": _parse_list, "duration_list": _parse_duration_list}


@dataclass(frozen=True)
class Option:
    """One setting: flag name (without dashes), dotted YAML path, kind, default and help.

    `tenant` marks per-tenant limits (also accepted in runtime-config overrides), `secret`
    values are masked on /config, `choices` restricts the (each, for lists) value."""
    flag: str
    path: str
    kind: str
    default: object
    help: str
    choices: tuple = ()
    secret: bool = False
    tenant: bool = False

    def parse(self, raw, where):
        try:
            value = PARSERS[self.kind](raw)
        except ValueError as exc:
            raise ConfigError("invalid value for %s: %s" % (where, exc)) from None
        if self.choices:
            for item in (value if isinstance(value, tuple) else (value,)):
                if item not in self.choices:
                    raise ConfigError("invalid value for %s: %r is not one of %s"
                                      % (where, item, ", ".join(self.choices)))
        if self.kind in ("int", "float", "duration") and value < 0:
            raise ConfigError("invalid value for %s: must not be negative" % (where,))
        return value

    def render(self, value):
        """The value as /config shows it (YAML scalar or list)."""
        if self.secret and value:
            return "********"
        if self.kind == "duration":
            return format_duration_ms(value)
        if self.kind == "duration_list":
            return [format_duration_ms(v) for v in value]
        if self.kind == "list":
            return ",".join(value) if self.path == "target" else list(value)
        return value


H = 3600 * 1000
M = 60 * 1000

# The option table. Order is the order of -help and of /config.
OPTIONS = (
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
           "Push requests queued for decoding or appending before new ones get 503 (0 = 2000)."),
    Option("querier.timeout", "querier.timeout", "duration", 2 * M,
           "The timeout for a query; slower queries answer 503 with errorType timeout."),
    Option("querier.max-samples", "querier.max_samples", "int", 50000000,
           "Maximum number of samples a single query can load into memory (422 beyond it)."),
    Option("querier.lookback-delta", "querier.lookback_delta", "duration", 5 * M,
           "How far back an instant vector selector looks for the newest sample."),
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
    Option("blocks-storage.s3.endpoint", "blocks_storage.s3.endpoint", "str", "",
           "S3 endpoint host[:port] without a scheme (default: s3.<region>.amazonaws.com)."),
    Option("blocks-storage.s3.bucket-name", "blocks_storage.s3.bucket_name", "str", "",
           "S3 bucket name."),
    Option("blocks-storage.s3.region", "blocks_storage.s3.region", "str", "",
           "S3 region (default us-east-1)."),
    Option("blocks-storage.s3.access-key-id", "blocks_storage.s3.access_key_id", "str", "",
           "S3 access key ID."),
    Option("blocks-storage.s3.secret-access-key", "blocks_storage.s3.secret_access_key", "str", "",
           "S3 secret access key.", secret=True),
    Option("blocks-storage.s3.insecure", "blocks_storage.s3.insecure", "bool", False,
           "Talk to the S3 endpoint over plain HTTP."),
    Option("blocks-storage.s3.bucket-lookup-type", "blocks_storage.s3.bucket_lookup_type", "str",
           "auto", "S3 addressing: auto, path or virtual-hosted.",
           choices=("auto", "path", "virtual-hosted")),
    Option("blocks-storage.s3.max-retries", "blocks_storage.s3.max_retries", "int", 10,
           "Attempts per S3 request on retryable failures (5xx, 429, connection errors)."),
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
    Option("runtime-config.file", "runtime_config.file", "list", (),
           "Comma-separated runtime configuration files (per-tenant overrides), merged left to right."),
    Option("runtime-config.reload-period", "runtime_config.period", "duration", 10000,
           "How often the runtime configuration files are re-read."),
    # Per-tenant limits (YAML `limits:`, runtime-config `overrides: {tenant: {...}}`).
    Option("distributor.ingestion-rate-limit", "limits.ingestion_rate", "float", 10000.0,
           "Per-tenant ingestion rate limit in samples (plus exemplars and metadata) per second.",
           tenant=True),
    Option("distributor.ingestion-burst-size", "limits.ingestion_burst_size", "int", 200000,
           "Per-tenant allowed ingestion burst size, in samples.", tenant=True),
    Option("ingester.max-global-series-per-user", "limits.max_global_series_per_user", "int", 150000,
           "Maximum number of in-memory series per tenant (0 = unlimited).", tenant=True),
    Option("ingester.max-global-exemplars-per-user", "limits.max_global_exemplars_per_user", "int", 0,
           "Exemplars kept in memory per tenant (0 = exemplars are dropped).", tenant=True),
    Option("ingester.out-of-order-time-window", "limits.out_of_order_time_window", "duration", 0,
           "How far behind the newest sample an out-of-order sample is still accepted (0 = off).",
           tenant=True),
    Option("querier.cardinality-analysis-enabled", "limits.cardinality_analysis_enabled", "bool", False,
           "Enables the /api/v1/cardinality/label_names and label_values endpoints for the tenant.",
           tenant=True),
    Option("validation.max-label-names-per-series", "limits.max_label_names_per_series", "int", 30,
           "Maximum number of labels per series.", tenant=True),
    Option("validation.max-length-label-name", "limits.max_label_name_length", "int", 1024,
           "Maximum length of a label name, in bytes.", tenant=True),
    Option("validation.max-length-label-value", "limits.max_label_value_length", "int", 2048,
           "Maximum length of a label value (metric names too), in bytes.", tenant=True),
    Option("validation.max-metadata-length", "limits.max_metadata_length", "int", 1024,
           "Maximum length of a metadata metric name or unit; longer help texts are truncated.",
           tenant=True),
    Option("validation.create-grace-period", "limits.creation_grace_period", "duration", 10 * M,
           "Samples with timestamps further than this in the future are refused.", tenant=True),
    Option("distributor.otel-metric-suffixes-enabled", "limits.otel_metric_suffixes_enabled", "bool",
           False, "OTLP: append type and unit suffixes (_total, _seconds, _bytes, _ratio...) to "
           "metric names, as Prometheus' OTLP translator does.", tenant=True),
    Option("distributor.otel-keep-identifying-resource-attributes",
           "limits.otel_keep_identifying_resource_attributes", "bool", False,
           "OTLP: keep service.name, service.namespace and service.instance.id on target_info "
           "(they also become job and instance).", tenant=True),
    Option("validation.past-grace-period", "limits.past_grace_period", "duration", 0,
           "Samples older than this (plus the out-of-order window) are refused (0 = off).",
           tenant=True),
    Option("compactor.blocks-retention-period", "limits.compactor_blocks_retention_period",
           "duration", 0, "Delete blocks whose samples are all older than this (0 = keep forever).",
           tenant=True),
    Option("compactor.partial-block-deletion-delay", "limits.compactor_partial_block_deletion_delay",
           "duration", 24 * H, "Blocks without meta.json whose newest file is older than this (a "
           "failed upload) are marked for deletion (0 = never).", tenant=True),
    Option("compactor.block-upload-enabled", "limits.compactor_block_upload_enabled", "bool", False,
           "Allow the tenant to upload TSDB blocks through /api/v1/upload/block/.", tenant=True),
    Option("compactor.block-upload-validation-enabled",
           "limits.compactor_block_upload_validation_enabled", "bool", True,
           "Validate uploaded blocks (index, chunks, time range) before accepting them.", tenant=True),
    Option("compactor.block-upload-verify-chunks", "limits.compactor_block_upload_verify_chunks",
           "bool", True, "Block upload validation also checks every chunk's CRC and encoding.",
           tenant=True),
    Option("compactor.block-upload-max-block-size-bytes",
           "limits.compactor_block_upload_max_block_size_bytes", "int", 0,
           "Largest block (sum of its files) a tenant may upload, in bytes (0 = unlimited).",
           tenant=True),
)



# ---- ring KV stores (net/kvstore.py): the same seven options for every ring ---------------------
def _ring_kv_options():
    from urdar.net.kvstore import RINGS, STORES
    out = []
    for ring, flag, path, _ in RINGS:
        out += [
            Option(flag + ".store", path + ".store", "str", "inmemory",
                   "KV store of the %s ring: inmemory (one process; Mimir's default is memberlist, "
                   "which urdar does not have) or etcd." % ring, choices=STORES),
            Option(flag + ".prefix", path + ".prefix", "str", "collectors/",
                   "Prefix of the %s ring's key in its KV store." % ring),
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
# ---- end of ring KV stores ----------------------------------------------------------------------

BY_FLAG = {o.flag: o for o in OPTIONS}
BY_PATH = {o.path: o for o in OPTIONS}
TENANT_OPTIONS = tuple(o for o in OPTIONS if o.tenant)


def limit_key(option):
    """The key a per-tenant limit has inside `limits:` and runtime `overrides:`."""
    return option.path.split(".", 1)[1]


LIMITS_BY_KEY = {limit_key(o): o for o in TENANT_OPTIONS}


class Config:
    """The effective configuration: `cfg["server.http_listen_port"]` by YAML path.

    `source(path)` says where a value came from: "default", "yaml" or "flag"."""

    def __init__(self, values=None, sources=None, options=OPTIONS):
        self._options = options
        self._by_path = {o.path: o for o in options}
        self.values = {o.path: o.default for o in options}
        self.sources = {o.path: "default" for o in options}
        if values:
            for path, value in values.items():
                self.set(path, value, (sources or {}).get(path, "flag"))

    def __getitem__(self, path):
        return self.values[path]

    def get(self, path, default=None):
        return self.values.get(path, default)

    def set(self, path, value, source="flag"):
        if path not in self._by_path:
            raise ConfigError("unknown configuration key %r" % (path,))
        self.values[path] = value
        self.sources[path] = source

    def source(self, path):
        return self.sources[path]

    @property
    def targets(self):
        """Component names to run, 'all' expanded (alertmanager only when asked for)."""
        out = []
        for t in self.values["target"]:
            for name in (ALL_MODULES if t == "all" else (t,)):
                if name not in out:
                    out.append(name)
        return tuple(out)

    def limits_defaults(self):
        """The `limits:` block as {limit key: value} (runtime overrides apply on top)."""
        return {limit_key(o): self.values[o.path] for o in self._options if o.tenant}

    def render(self, mode=None):
        """YAML text for GET /config: everything, mode="diff" (non-defaults) or "defaults"."""
        tree = {}
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
        return yaml.dump(tree, Dumper=yaml.CSafeDumper, sort_keys=False, default_flow_style=False)


# ---- flags -----------------------------------------------------------------------------------

def parse_flags(argv, options=OPTIONS):
    """Parse command-line flags into {path: value}. Returns (values, special) where special holds
    "help"/"version" if asked for. Raises ConfigError for unknown flags and bad values."""
    by_flag = {o.flag: o for o in options}
    values, special = {}, set()
    i = 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-") or arg in ("-", "--"):
            raise ConfigError("unexpected argument %r (flags look like -name=value)" % (arg,))
        name = arg[2:] if arg.startswith("--") else arg[1:]
        raw = None
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


def help_text(options=OPTIONS):
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

def load_yaml_text(text, where, options=OPTIONS):
    """Parse a YAML config document into {path: value}; unknown keys raise ConfigError."""
    try:
        doc = yaml.load(text, Loader=yaml.CSafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError("%s: invalid YAML: %s" % (where, exc)) from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError("%s: the top level must be a mapping of blocks" % (where,))
    by_path = {o.path: o for o in options}
    blocks = {p.rsplit(".", i)[0] for p in by_path for i in range(1, p.count(".") + 1)}
    values = {}

    def walk(node, prefix):
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


def load(argv, options=OPTIONS, read_file=None):
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


def validate(cfg):
    """Cross-option checks that a single parser cannot make."""
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
        from urdar.net.tenant import TenantError, validate_tenant
        try:
            validate_tenant(cfg["no_auth_tenant"])
        except TenantError as exc:
            raise ConfigError("invalid value for no_auth_tenant: %s" % (exc.message,)) from None


def version_text():
    return "urdar, version %s" % (__version__,)
