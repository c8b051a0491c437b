"""Per-tenant limits: defaults from the `limits:` block/flags, overrides from the runtime config.

`Overrides.for_tenant(t)` gives a TenantLimits whose attributes are the limit keys of Mimir's
`limits:` block (ingestion_rate, max_label_names_per_series, creation_grace_period in ms, ...).
The runtime config file(s) (`-runtime-config.file`, merged left to right) hold
`overrides: {tenant: {limit: value}}`; RuntimeConfig re-reads them every
`-runtime-config.reload-period` on the injected clock, in an offload pool, and keeps the old
overrides (logging why) when a reload is malformed. RateLimiter is the per-tenant token bucket
behind -distributor.ingestion-rate-limit / -distributor.ingestion-burst-size."""
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import yaml
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from urdar.components.options import ConfigError, Option, format_duration_ms, load_yaml_mapping
from urdar.net.tenant import TenantError, validate_tenant

if TYPE_CHECKING:
    from urdar.net.offload import Offload

log = logging.getLogger("urdar.limits")

H = 3600 * 1000
M = 60 * 1000

# Per-tenant limits: rows of the option table (YAML `limits:`, flags) that runtime-config
# `overrides: {tenant: {...}}` may also set. app/config.py appends them to its OPTIONS.
LIMIT_OPTIONS = (
    Option("distributor.ingestion-rate-limit", "limits.ingestion_rate", "float", 10000.0,
           "Per-tenant ingestion rate limit in samples (plus exemplars and metadata) per second.",
           tenant=True),
    Option("distributor.ingestion-burst-size", "limits.ingestion_burst_size", "int", 200000,
           "Per-tenant allowed ingestion burst size, in samples.", tenant=True),
    Option("distributor.ingestion-tenant-shard-size", "limits.ingestion_tenant_shard_size", "int", 0,
           "Ingesters of the ring that hold the tenant's series (shuffle sharding; 0 = all).",
           tenant=True),
    Option("store-gateway.tenant-shard-size", "limits.store_gateway_tenant_shard_size", "int", 0,
           "Store-gateways of the ring that hold the tenant's blocks (shuffle sharding; 0 = all).",
           tenant=True),
    Option("ingester.max-global-series-per-user", "limits.max_global_series_per_user", "int", 150000,
           "Maximum number of in-memory series per tenant (0 = unlimited).", tenant=True),
    Option("ingester.max-global-series-per-metric", "limits.max_global_series_per_metric", "int", 0,
           "Maximum number of in-memory series per metric name, per tenant (0 = unlimited).",
           tenant=True),
    Option("ingester.max-global-exemplars-per-user", "limits.max_global_exemplars_per_user", "int", 0,
           "Exemplars kept in memory per tenant (0 = exemplars are dropped).", tenant=True),
    Option("ingester.out-of-order-time-window", "limits.out_of_order_time_window", "duration", 0,
           "How far behind the newest sample an out-of-order sample is still accepted (0 = off).",
           tenant=True),
    Option("querier.max-fetched-series-per-query", "limits.max_fetched_series_per_query", "int", 0,
           "Maximum unique series a query, series request or remote read may fetch (0 = no limit).",
           tenant=True),
    Option("querier.max-fetched-chunks-per-query", "limits.max_fetched_chunks_per_query", "int",
           2000000, "Maximum chunks (120 samples each) a query, series request or remote read may "
           "fetch (0 = no limit).", tenant=True),
    Option("querier.max-fetched-chunk-bytes-per-query", "limits.max_fetched_chunk_bytes_per_query",
           "int", 0, "Maximum bytes of samples (16 per decoded sample) a query, series request or "
           "remote read may fetch (0 = no limit).", tenant=True),
    Option("querier.max-partial-query-length", "limits.max_partial_query_length", "duration", 0,
           "Longest time range one selector of a (split) query may read; the querier answers 422 "
           "beyond it (0 = no limit; then -store.max-query-length applies).", tenant=True),
    Option("store.max-query-length", "limits.max_query_length", "duration", 0,
           "Deprecated: the default of both -querier.max-partial-query-length and "
           "-query-frontend.max-total-query-length when they are 0.", tenant=True),
    Option("query-frontend.max-total-query-length", "limits.max_total_query_length", "duration", 0,
           "Longest end - start a range query may span, checked by the query-frontend before "
           "splitting: 400 beyond it (0 = no limit; then -store.max-query-length applies).",
           tenant=True),
    Option("query-frontend.max-query-expression-size-bytes",
           "limits.max_query_expression_size_bytes", "int", 0,
           "Longest query text (bytes) the query-frontend accepts: 400 beyond it (0 = no limit).",
           tenant=True),
    Option("querier.max-query-lookback", "limits.max_query_lookback", "duration", 0,
           "How far back from now queries may read: earlier start times are moved up to it, "
           "queries ending before it answer empty (0 = no limit).", tenant=True),
    Option("querier.max-query-parallelism", "limits.max_query_parallelism", "int", 14,
           "Most split parts of one query the query-frontend runs at once.", tenant=True),
    Option("query-frontend.max-queriers-per-tenant", "limits.max_queriers_per_tenant", "int", 0,
           "Most queriers that run one tenant's queries (a shuffle shard of them; 0 = all).",
           tenant=True),
    Option("query-frontend.max-cache-freshness", "limits.max_cache_freshness", "duration", 10 * M,
           "Results newer than this before now are never cached by the query-frontend "
           "(they may still change).", tenant=True),
    Option("query-frontend.results-cache-ttl-for-labels-query",
           "limits.results_cache_ttl_for_labels_query", "duration", 0,
           "How long the query-frontend keeps label names and values answers in the results "
           "cache (0 = not cached).", tenant=True),
    Option("query-frontend.results-cache-ttl-for-cardinality-query",
           "limits.results_cache_ttl_for_cardinality_query", "duration", 0,
           "How long the query-frontend keeps cardinality API answers in the results cache "
           "(0 = not cached).", tenant=True),
    Option("query-frontend.query-sharding-total-shards", "limits.query_sharding_total_shards",
           "int", 16, "Shards a shardable query is split into when query sharding is on "
           "(-query-frontend.parallelize-shardable-queries); 0 or 1 turns it off.", tenant=True),
    Option("query-frontend.query-sharding-max-sharded-queries",
           "limits.query_sharding_max_sharded_queries", "int", 128, "Most shard queries one "
           "query runs over all its split parts and sharded legs; fewer shards are used to stay "
           "below it (0 = no limit).", tenant=True),
    Option("query-frontend.query-sharding-max-regexp-size-bytes",
           "limits.query_sharding_max_regexp_size_bytes", "int", 4096, "Queries with a regexp "
           "matcher longer than this many bytes are not sharded (0 = no limit).", tenant=True),
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
    Option("validation.max-native-histogram-buckets", "limits.max_native_histogram_buckets", "int", 0,
           "Maximum number of buckets of a native histogram sample (0 = no limit).", tenant=True),
    Option("validation.reduce-native-histogram-over-max-buckets",
           "limits.reduce_native_histogram_over_max_buckets", "bool", True,
           "Reduce the resolution of native histograms over the bucket limit instead of refusing them.",
           tenant=True),
    Option("ingester.native-histograms-ingestion-enabled",
           "limits.native_histograms_ingestion_enabled", "bool", True,
           "Store native histogram samples; when false they are ignored without an error (as "
           "Mimir's ingester does).", tenant=True),
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
    Option("ruler.max-rules-per-rule-group", "limits.ruler_max_rules_per_rule_group", "int", 20,
           "Most rules in one rule group of the tenant (0 = no limit).", tenant=True),
    Option("ruler.evaluation-delay-duration", "limits.ruler_evaluation_delay_duration", "duration",
           0, "Rules of the tenant query this long before the evaluation time (a group's "
           "query_offset overrides it).", tenant=True),
    Option("alertmanager.max-config-size-bytes", "limits.alertmanager_max_config_size_bytes", "int",
           0, "Largest alertmanager configuration body the tenant may store (0 = no limit).",
           tenant=True),
    Option("alertmanager.max-templates-count", "limits.alertmanager_max_templates_count", "int", 0,
           "Most template files in the tenant's alertmanager configuration (0 = no limit).",
           tenant=True),
    Option("alertmanager.max-template-size-bytes", "limits.alertmanager_max_template_size_bytes",
           "int", 0, "Largest template file in the tenant's alertmanager configuration (0 = no "
           "limit).", tenant=True),
    # Mimir's defaults are 0 (no limit); the counts keep the caps urdar had, so a tenant's posts
    # cannot grow the process without bound unless an operator says so.
    Option("alertmanager.max-alerts-count", "limits.alertmanager_max_alerts_count", "int", 100000,
           "Most alerts the tenant's alertmanager holds; more are dropped with a log line "
           "(0 = no limit).", tenant=True),
    Option("alertmanager.max-alerts-size-bytes", "limits.alertmanager_max_alerts_size_bytes",
           "int", 0, "Largest total size of the tenant's alerts (bytes of labels, annotations and "
           "generator URLs); more are dropped with a log line (0 = no limit).", tenant=True),
    Option("alertmanager.max-silences-count", "limits.alertmanager_max_silences_count", "int",
           10000, "Most silences, expired ones included, the tenant may have (0 = no limit).",
           tenant=True),
    Option("alertmanager.max-silence-size-bytes", "limits.alertmanager_max_silence_size_bytes",
           "int", 0, "Largest silence of the tenant, in bytes as Alertmanager encodes it (0 = no "
           "limit).", tenant=True),
    Option("ruler.max-rule-groups-per-tenant", "limits.ruler_max_rule_groups_per_tenant", "int", 70,
           "Most rule groups the tenant may have, over all namespaces (0 = no limit).", tenant=True),
    Option("compactor.block-upload-max-block-size-bytes",
           "limits.compactor_block_upload_max_block_size_bytes", "int", 0,
           "Largest block (sum of its files) a tenant may upload, in bytes (0 = unlimited).",
           tenant=True),
    # HA tracker (components/hatracker.py), as Mimir names them
    Option("distributor.ha-tracker.enable-for-all-users", "limits.accept_ha_samples", "bool", False,
           "Deduplicate the tenant's samples from Prometheus HA replicas (needs "
           "-distributor.ha-tracker.enable).", tenant=True),
    Option("distributor.ha-tracker.cluster", "limits.ha_cluster_label", "str", "cluster",
           "Label naming the Prometheus HA cluster of a series.", tenant=True),
    Option("distributor.ha-tracker.replica", "limits.ha_replica_label", "str", "__replica__",
           "Label naming the replica within the HA cluster; removed from accepted series.",
           tenant=True),
    Option("distributor.ha-tracker.max-clusters", "limits.ha_max_clusters", "int", 100,
           "Most HA clusters the HA tracker follows for the tenant; pushes naming more are "
           "refused (0 = no limit).", tenant=True),
)


def limit_key(option: Option) -> str:
    """The key a per-tenant limit has inside `limits:` and runtime `overrides:`."""
    return option.path.split(".", 1)[1]


LIMITS_BY_KEY = {limit_key(o): o for o in LIMIT_OPTIONS}

# Runtime-config top-level keys Mimir defines; only `overrides` is used so far.
RUNTIME_KEYS = ("overrides", "ingester_limits", "distributor_limits",
                "ingester_stream_chunks_when_using_blocks")


class TenantLimits:
    """One tenant's effective limits; attribute names are the `limits:` YAML keys."""

    def __init__(self, values):
        self.__dict__.update(values)

    def as_dict(self):
        return dict(self.__dict__)


class Overrides:
    """Defaults plus per-tenant overrides; `for_tenant` is cheap (cached until overrides change)."""

    def __init__(self, defaults: Mapping[str, Any],
                 overrides: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.defaults = dict(defaults)
        self._overrides: dict[str, dict[str, Any]] = {}
        self._cache: dict[str, TenantLimits] = {}
        self.set_overrides(overrides or {})

    def set_overrides(self, overrides):
        self._overrides = {t: dict(v) for t, v in overrides.items()}
        self._cache = {}

    @property
    def overrides(self):
        return {t: dict(v) for t, v in self._overrides.items()}

    def for_tenant(self, tenant):
        lim = self._cache.get(tenant)
        if lim is None:
            values = dict(self.defaults)
            values.update(self._overrides.get(tenant, {}))
            lim = self._cache[tenant] = TenantLimits(values)
        return lim


def parse_runtime_config(text, where):
    """Runtime config YAML -> {tenant: {limit key: parsed value}}; ConfigError on unknown keys."""
    doc = load_yaml_mapping(text, where, "a mapping")
    for key in doc:
        if key not in RUNTIME_KEYS:
            raise ConfigError("%s: unknown key %s" % (where, key))
    out = {}
    overrides = doc.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError("%s: overrides must be a mapping of tenants to limits" % (where,))
    for tenant, limits in overrides.items():
        tenant = str(tenant)
        try:
            validate_tenant(tenant)
        except TenantError as exc:
            raise ConfigError("%s: overrides.%s: %s" % (where, tenant, exc.message)) from None
        if limits is None:
            limits = {}
        if not isinstance(limits, dict):
            raise ConfigError("%s: overrides.%s must be a mapping of limits" % (where, tenant))
        parsed = {}
        for key, value in limits.items():
            opt = LIMITS_BY_KEY.get(key)
            if opt is None:
                raise ConfigError("%s: unknown key overrides.%s.%s" % (where, tenant, key))
            parsed[key] = opt.parse(value, "%s key overrides.%s.%s" % (where, tenant, key))
        out[tenant] = parsed
    return out


def render_runtime_config(overrides, defaults, mode=None):
    """YAML for GET /runtime_config, as Mimir shows it: by default every overridden tenant's
    complete limits (the `limits:` defaults filled in, in option-table order); mode="diff" only
    the values that differ from the defaults (a tenant whose overrides all equal them is left out)."""
    tree = {}
    for tenant, limits in sorted(overrides.items()):
        node = {}
        for key, opt in LIMITS_BY_KEY.items():
            value = limits.get(key, defaults.get(key, opt.default))
            if mode == "diff" and value == defaults.get(key, opt.default):
                continue
            node[key] = opt.render(value)
        if node or mode != "diff":
            tree[tenant] = node
    return yaml.dump({"overrides": tree}, Dumper=yaml.CSafeDumper, sort_keys=False)


class RuntimeConfig:
    """Loads the runtime config files into `overrides` now and every `period_ms` after start()."""

    def __init__(self, files: Sequence[str], period_ms: int, overrides: Overrides, clock: IReactorTime,
                 offload: "Offload | None" = None, read_file: Callable[[str], str] | None = None) -> None:
        self.files = tuple(files)
        self.period_ms = period_ms
        self.overrides = overrides
        self.clock = clock
        self.offload = offload
        self._read = read_file or _read_text
        self._loop = None
        self.last_error = None
        self.loaded = False

    def load_now(self) -> None:
        """Read and apply the files synchronously (start-up); raises ConfigError on problems."""
        merged = self._load()
        self.overrides.set_overrides(merged)
        self.loaded = True

    def _load(self):
        merged = {}
        for path in self.files:
            try:
                text = self._read(path)
            except OSError as exc:
                raise ConfigError("cannot read -runtime-config.file %s: %s" % (path, exc.strerror)) from None
            for tenant, limits in parse_runtime_config(text, path).items():
                merged.setdefault(tenant, {}).update(limits)
        return merged

    def start(self):
        if not self.files or not self.period_ms:
            return
        self._loop = task.LoopingCall(self.reload)
        self._loop.clock = self.clock
        self._loop.start(self.period_ms / 1000.0, now=False).addErrback(
            lambda f: log.error("runtime config reloader stopped: %s", f.getErrorMessage()))

    def stop(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def reload(self):
        """Re-read the files (in the admin pool when there is one); keep the old values on error."""
        d = self.offload.run("admin", self._load) if self.offload else defer.maybeDeferred(self._load)

        def ok(merged):
            self.overrides.set_overrides(merged)
            self.last_error = None

        def bad(f):
            self.last_error = f.getErrorMessage()
            log.error("runtime config reload failed, keeping the previous overrides: %s", self.last_error)

        return d.addCallbacks(ok, bad)


def _read_text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


class RateLimiter:
    """Per-tenant token buckets on an injected clock (`clock.seconds()`).

    A bucket holds up to `burst` tokens and refills at `rate` per second; allow(n) takes n tokens
    or refuses without taking any, so one refused request does not starve the next."""

    def __init__(self, clock):
        self.clock = clock
        self._buckets = {}   # tenant -> [tokens, last refill time, rate, burst]
        # The push fast path charges buckets from decode pool threads.
        self._lock = threading.Lock()

    def allow(self, tenant, n, rate, burst):
        with self._lock:
            return self._allow(tenant, n, rate, burst)

    def _allow(self, tenant, n, rate, burst):
        now = self.clock.seconds()
        b = self._buckets.get(tenant)
        if b is None or b[2] != rate or b[3] != burst:
            tokens = burst if b is None else min(b[0], burst)
            b = self._buckets[tenant] = [tokens, now, rate, burst]
        b[0] = min(burst, b[0] + (now - b[1]) * rate)
        b[1] = now
        if n <= b[0]:
            b[0] -= n
            return True
        return False


def describe_limit(key, value):
    """Human text for a limit value (durations readable), for status pages."""
    opt = LIMITS_BY_KEY[key]
    return format_duration_ms(value) if opt.kind == "duration" else value
