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

import yaml
from twisted.internet import defer, task

from urdar.net.config import LIMITS_BY_KEY, ConfigError, format_duration_ms
from urdar.net.tenant import TenantError, validate_tenant

log = logging.getLogger("urdar.limits")

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

    def __init__(self, defaults, overrides=None):
        self.defaults = dict(defaults)
        self._overrides = {}
        self._cache = {}
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
    try:
        doc = yaml.load(text, Loader=yaml.CSafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError("%s: invalid YAML: %s" % (where, exc)) from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError("%s: the top level must be a mapping" % (where,))
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


def render_runtime_config(overrides, defaults=None, mode=None):
    """YAML for GET /runtime_config: the overrides (mode=diff: only values differing from defaults)."""
    tree = {}
    for tenant, limits in sorted(overrides.items()):
        node = {}
        for key, value in limits.items():
            if mode == "diff" and defaults is not None and defaults.get(key) == value:
                continue
            opt = LIMITS_BY_KEY[key]
            node[key] = opt.render(value)
        if node or mode != "diff":
            tree[tenant] = node
    return yaml.dump({"overrides": tree}, Dumper=yaml.CSafeDumper, sort_keys=False)


class RuntimeConfig:
    """Loads the runtime config files into `overrides` now and every `period_ms` after start()."""

    def __init__(self, files, period_ms, overrides, clock, offload=None, read_file=None):
        self.files = tuple(files)
        self.period_ms = period_ms
        self.overrides = overrides
        self.clock = clock
        self.offload = offload
        self._read = read_file or _read_text
        self._loop = None
        self.last_error = None
        self.loaded = False

    def load_now(self):
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
