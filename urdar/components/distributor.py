"""The distributor: validate a remote-write request, apply per-tenant limits, hand it to ingesters.

Flow of `push(tenant, body)`: the snappy raw block is size-checked (decompress_raw_len, before
decompressing), decompressed and decoded by engine/remotewrite into columns in the "decode" offload
pool, and validated there too: series whose labels break a rule are marked in `skip` (their
samples are discarded, the rest kept), samples too far in the future (creation grace period) or
past are filtered out, native histograms are decoded and checked as Mimir does (schema, structure,
bucket limit with resolution reduction) when the ingester client carries them. Then, on the
reactor, the tenant's token bucket is charged for what survived (429 if empty). The batch goes to
the ingester through the client interface (a Deferred); its per-sample outcomes turn into Mimir's
out-of-order / duplicate / too-old / series-limit errors. If anything was refused the call fails
with a soft ComponentError (400) naming the first failure of each kind, after the good part was
stored, as Mimir does. Counters: cortex_discarded_samples_total{reason,user} and friends."""
import json
import logging
import mmap
import zlib
from array import array
from dataclasses import dataclass

import cramjam
from prometheus_client import Counter, Gauge
from twisted.internet import defer, task

from urdar.components import errors as E
from urdar.components import ingester_client as IC
from urdar.components.options import format_duration_ms
from urdar.engine import outcomes as O

log = logging.getLogger("urdar.distributor")

# Mimir's ingestion-rate EWMA: ticks every 15 s (ingestion_rate.go uses the same shape).
RATE_TICK_S = 15.0
RATE_ALPHA = 0.2


def format_series(labels, limit=200):
    """Prometheus labels.String() form, cut to `limit` characters as Mimir's %.200s does."""
    s = "{" + ", ".join("%s=%s" % (n, json.dumps(v, ensure_ascii=False)) for n, v in labels) + "}"
    return s[:limit]


def format_timestamp(t_ms):
    """RFC 3339 with nanosecond precision trimmed, UTC, like Go's time.RFC3339Nano, for any int64
    ms: the proleptic Gregorian calendar (civil-from-days, Hinnant) instead of datetime, which
    stops at year 1, so a sample before year 1 gets its 400 instead of a 500 (clients retry 5xx)."""
    secs, ms = divmod(t_ms, 1000)
    days, rem = divmod(secs, 86400)
    z = days + 719468                      # days since 0000-03-01
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    frac = ("%03d" % ms).rstrip("0")
    # Go pads the year to 4 digits after its sign ("-0001", "0000", "12345").
    ytext = ("-%04d" % -year) if year < 0 else ("%04d" % year)
    return "%s-%02d-%02dT%02d:%02d:%02d%sZ" % (ytext, month, day, rem // 3600, rem // 60 % 60, rem % 60,
                                               "." + frac if frac else "")


def _metric_name(labels):
    for n, v in labels:
        if n == "__name__":
            return v
    return ""


def _go_float(x):
    return "%d" % x if float(x).is_integer() else repr(float(x))


class Prepared:
    """Output of validation: the batch to store, errors [(reason, cause, message)], discards."""

    def __init__(self, batch, errors, discarded, discarded_metadata, samples_in, count,
                 exemplars_in=0, metadata_in=0):
        self.batch = batch
        self.exemplars_in = exemplars_in
        self.metadata_in = metadata_in
        self.errors = errors
        self.discarded = discarded
        self.discarded_metadata = discarded_metadata
        self.samples_in = samples_in
        self.count = count           # samples + exemplars + metadata kept (rate-limit cost)
        self.translation = None      # OTLP: the components.otlp.Translation behind the batch


@dataclass
class OTLPResult:
    """Outcome of an OTLP push that stored something: points refused and why (partial success)."""
    rejected: int
    message: str


class _Errors:
    """First message per Mimir error id, in the order they were met, and discard counts."""

    def __init__(self):
        self.first = {}
        self.discarded = {}

    def add(self, err_id, reason, cause, message_fn, n):
        if n <= 0:
            return
        self.discarded[reason] = self.discarded.get(reason, 0) + n
        if err_id not in self.first:
            self.first[err_id] = (reason, cause, message_fn())


@dataclass(frozen=True)
class DistributorConfig:
    """The distributor's instance settings (-distributor.*); per-tenant limits are in Overrides."""
    max_recv_msg_size: int = 104857600          # bytes, compressed and decompressed
    max_otlp_request_size: int = 104857600      # bytes, compressed and decompressed
    # -distributor.instance-limits.*: process-wide, 0 = off (see InstanceLimits)
    max_inflight_push_requests: int = 2000
    max_inflight_push_requests_bytes: int = 0
    max_ingestion_rate: float = 0.0

    @classmethod
    def from_config(cls, cfg):
        return cls(max_recv_msg_size=cfg["distributor.max_recv_msg_size"],
                   max_otlp_request_size=cfg["distributor.max_otlp_request_size"],
                   max_inflight_push_requests=cfg["distributor.instance_limits.max_inflight_push_requests"],
                   max_inflight_push_requests_bytes=cfg[
                       "distributor.instance_limits.max_inflight_push_requests_bytes"],
                   max_ingestion_rate=cfg["distributor.instance_limits.max_ingestion_rate"])


# Mimir's per-instance ingestion rate: an EWMA of samples/s updated every second.
INSTANCE_RATE_TICK_S = 1.0


class InstanceLimits:
    """Process-wide push limits, Mimir's -distributor.instance-limits.*: requests in flight,
    their body bytes (reserved from Content-Length before the body is read, or as a chunked
    body arrives) and the samples/s accepted across all tenants. 0 turns a limit off.
    Reactor thread only."""

    def __init__(self, max_inflight_push_requests=2000, max_inflight_push_requests_bytes=0,
                 max_ingestion_rate=0.0):
        self.max_inflight = max_inflight_push_requests
        self.max_inflight_bytes = max_inflight_push_requests_bytes
        self.max_ingestion_rate = max_ingestion_rate
        self.inflight = 0
        self.inflight_bytes = 0
        self.rate = 0.0
        self._pending = 0
        self._ticked = False
        self.on_reject = None        # callable(reason), for cortex_distributor_instance_rejected_requests_total

    def _reject(self, err):
        if self.on_reject is not None:
            self.on_reject(err.reason)
        return err

    def start_push(self, n_bytes):
        """Reserve one push of `n_bytes`; a PushReservation, or ComponentError(UNAVAILABLE) at
        a limit (checked in Mimir's order: requests, ingestion rate, bytes)."""
        if self.max_inflight and self.inflight >= self.max_inflight:
            raise self._reject(_instance_error(
                "the write request has been rejected because the distributor exceeded the allowed "
                "number of inflight push requests", "distributor-max-inflight-push-requests",
                "distributor.instance-limits.max-inflight-push-requests"))
        if self.max_ingestion_rate and self.rate >= self.max_ingestion_rate:
            raise self._reject(_instance_error(
                "the write request has been rejected because the distributor exceeded the "
                "ingestion rate limit", "distributor-max-ingestion-rate",
                "distributor.instance-limits.max-ingestion-rate"))
        if self.max_inflight_bytes and self.inflight_bytes + n_bytes > self.max_inflight_bytes:
            raise self._bytes_error()
        self.inflight += 1
        self.inflight_bytes += n_bytes
        return PushReservation(self, n_bytes)

    def _bytes_error(self):
        return self._reject(_instance_error(
            "the write request has been rejected because the distributor exceeded the allowed "
            "total size in bytes of inflight push requests", "distributor-max-inflight-push-requests-bytes",
            "distributor.instance-limits.max-inflight-push-requests-bytes"))

    def add_samples(self, n):
        self._pending += n

    def tick(self):
        """Fold the last second's samples into the moving average (every INSTANCE_RATE_TICK_S)."""
        inst = self._pending / INSTANCE_RATE_TICK_S
        self._pending = 0
        self.rate = inst if not self._ticked else self.rate + RATE_ALPHA * (inst - self.rate)
        self._ticked = True


class PushReservation:
    """One admitted push's share of the instance limits; `release()` once it is over."""

    def __init__(self, limits, n_bytes):
        self._limits = limits
        self.n_bytes = n_bytes
        self._held = True

    def grow(self, n):
        """Charge `n` more body bytes (chunked bodies); ComponentError(UNAVAILABLE) past the cap."""
        lim = self._limits
        if lim.max_inflight_bytes and lim.inflight_bytes + n > lim.max_inflight_bytes:
            raise lim._bytes_error()
        lim.inflight_bytes += n
        self.n_bytes += n

    def release(self):
        if self._held:
            self._held = False
            self._limits.inflight -= 1
            self._limits.inflight_bytes -= self.n_bytes


def _instance_error(text, err_id, flag):
    err = E.ComponentError(E.UNAVAILABLE, E.mimir_message(text, err_id, (flag,), instance=True))
    err.reason = err_id.replace("-", "_")
    return err


class _Translated:
    """What _otlp_result reads of a Prepared, for the HA path (which prepares on its own)."""
    __slots__ = ("translation",)

    def __init__(self, translation):
        self.translation = translation


class Distributor:
    """Validation, limits and forwarding of remote-write pushes for every tenant."""

    def __init__(self, overrides, ingester_client, offload, clock, config=DistributorConfig(),
                 registry=None, rate_limiter=None, instance_limits=None, ha_tracker=None,
                 healthy_distributors=None):
        """ha_tracker: a components.hatracker.HATracker (None: HA deduplication off).
        healthy_distributors: () -> healthy distributors in the ring, for the global ingestion
        rate strategy (None: the local strategy, each distributor enforces the whole rate)."""
        from urdar.components.limits import RateLimiter
        self.ha_tracker = ha_tracker
        self.healthy_distributors = healthy_distributors
        self.overrides = overrides
        self.instance_limits = instance_limits or InstanceLimits(
            config.max_inflight_push_requests, config.max_inflight_push_requests_bytes,
            config.max_ingestion_rate)
        self._instance_loop = None
        self.ingesters = ingester_client
        self.offload = offload
        self.clock = clock
        self.config = config
        self.max_recv_msg_size = config.max_recv_msg_size
        self.max_otlp_request_size = config.max_otlp_request_size
        self.rate_limiter = rate_limiter or RateLimiter(clock)
        self._pending_rate = {}
        self._rates = {}
        self._tenant_counters = {}
        self._loop = None
        kw = {"registry": registry}
        self.m_received = Counter("cortex_distributor_received_samples",
                                  "The total number of received samples, excluding rejected samples.",
                                  ["user"], **kw)
        self.m_samples_in = Counter("cortex_distributor_samples_in",
                                    "The total number of samples that have come in to the distributor.",
                                    ["user"], **kw)
        self.m_requests_in = Counter("cortex_distributor_requests_in",
                                     "The total number of requests that have come in to the distributor.",
                                     ["user"], **kw)
        self.m_discarded = Counter("cortex_discarded_samples",
                                   "The total number of samples that were discarded.",
                                   ["reason", "user"], **kw)
        self.m_discarded_meta = Counter("cortex_discarded_metadata",
                                        "The total number of metadata that were discarded.",
                                        ["reason", "user"], **kw)
        self.m_exemplars_in = Counter("cortex_distributor_exemplars_in",
                                      "Exemplars that came in to the distributor, refused ones included.",
                                      ["user"], **kw)
        self.m_metadata_in = Counter("cortex_distributor_metadata_in",
                                     "Metadata entries that came in to the distributor, refused ones included.",
                                     ["user"], **kw)
        self.m_received_exemplars = Counter("cortex_distributor_received_exemplars",
                                            "Exemplars that passed validation and limits.", ["user"], **kw)
        self.m_received_metadata = Counter("cortex_distributor_received_metadata",
                                           "Metadata entries that passed validation and limits.",
                                           ["user"], **kw)
        self.m_received_requests = Counter("cortex_distributor_received_requests",
                                           "Push requests that passed validation and limits.",
                                           ["user"], **kw)
        self.m_deduped = Counter("cortex_distributor_deduped_samples",
                                 "The total number of deduplicated samples.", ["user", "cluster"], **kw)
        self.m_non_ha = Counter("cortex_distributor_non_ha_samples_received",
                                "The total number of received samples for a user that has HA tracking "
                                "turned on, but the sample didn't contain both HA labels.", ["user"], **kw)
        lim = self.instance_limits
        self.m_instance_rejected = Counter(
            "cortex_distributor_instance_rejected_requests", "Requests discarded for hitting per-instance limits.",
            ["reason"], **kw)
        lim.on_reject = lambda reason: self.m_instance_rejected.labels(reason).inc()
        self.m_instance_limits = Gauge("cortex_distributor_instance_limits",
                                       "Instance limits used by this distributor.", ["limit"], **kw)
        for name, value in (("max_inflight_push_requests", lim.max_inflight),
                            ("max_inflight_push_requests_bytes", lim.max_inflight_bytes),
                            ("max_ingestion_rate", lim.max_ingestion_rate)):
            self.m_instance_limits.labels(name).set(value)
        Gauge("cortex_distributor_inflight_push_requests", "Current number of inflight push requests in "
              "distributor.", **kw).set_function(lambda: lim.inflight)
        Gauge("cortex_distributor_inflight_push_requests_bytes", "Current sum of inflight push requests in "
              "distributor in bytes.", **kw).set_function(lambda: lim.inflight_bytes)
        Gauge("cortex_distributor_ingestion_rate_samples_per_second", "Current ingestion rate in samples/sec "
              "that distributor is using to limit access.", **kw).set_function(lambda: lim.rate)

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self):
        self._loop = task.LoopingCall(self._tick_rates)
        self._loop.clock = self.clock
        self._loop.start(RATE_TICK_S, now=False)
        self._instance_loop = task.LoopingCall(self.instance_limits.tick)
        self._instance_loop.clock = self.clock
        self._instance_loop.start(INSTANCE_RATE_TICK_S, now=False)
        if self.ha_tracker is not None:
            self.ha_tracker.start()

    def stop(self):
        for loop in (self._loop, self._instance_loop):
            if loop is not None and loop.running:
                loop.stop()
        if self.ha_tracker is not None:
            self.ha_tracker.stop()

    def start_push(self, n_bytes):
        """Reserve a push of `n_bytes` against the instance limits (see InstanceLimits)."""
        return self.instance_limits.start_push(n_bytes)

    def _tick_rates(self):
        for tenant in set(self._rates) | set(self._pending_rate):
            n = self._pending_rate.pop(tenant, 0)
            inst = n / RATE_TICK_S
            old = self._rates.get(tenant)
            self._rates[tenant] = inst if old is None else old + RATE_ALPHA * (inst - old)

    def ingestion_rate(self, tenant):
        """Samples per second accepted for `tenant` (EWMA over 15 s ticks)."""
        return self._rates.get(tenant, 0.0)

    def tenants(self):
        return sorted(set(self._rates) | set(self._pending_rate))

    # ---- push ---------------------------------------------------------------------------------

    def push(self, tenant, body, skip_label_validation=False, v2=False):
        """Validate and store one snappy-compressed WriteRequest body (`v2`: a remote write 2.0
        io.prometheus.write.v2.Request); Deferred[PushResult].

        Fails with ComponentError: TOO_LARGE, BAD_DATA (malformed, or soft: some data refused),
        TENANT_LIMIT (soft), RATE_LIMITED; PoolFull when the decode pool is saturated."""
        self._counters(tenant)[0].inc()
        if len(body) > self.max_recv_msg_size:
            return defer.fail(self.too_large_error(len(body)))
        limits = self.overrides.for_tenant(tenant)
        now_ms = int(self.clock.seconds() * 1000)
        if self.ha_tracker is not None and limits.accept_ha_samples:
            return self._push_ha(tenant, body, limits, now_ms, skip_label_validation, v2=v2)
        local = getattr(self.ingesters, "local_push", None)
        local = local(tenant) if local is not None else None
        if local is not None:
            # In-process ingester with the tenant's TSDB open: decode, validate, charge the
            # rate limit and append in one pool job (one thread hop, one reactor turn).
            append, done = local
            d = self.offload.run("decode", self._prepare_and_append, append, body, limits, now_ms,
                                 skip_label_validation, tenant, v2)
            d.addBoth(done)
            return d.addCallback(lambda pr: self._finish(pr[0], tenant, limits, pr[1]))
        d = self.offload.run("decode", self.prepare, body, limits, now_ms, skip_label_validation, v2)
        d.addCallback(self._limit_and_send, tenant, limits)
        return d

    def _prepare_and_append(self, append, body, limits, now_ms, skip_label_validation, tenant,
                            v2=False):
        """Pool thread: prepare(), charge the tenant's bucket, append. Returns (Prepared, PushResult)."""
        prep = self.prepare(body, limits, now_ms, skip_label_validation, v2)
        self._charge(prep, tenant, limits)
        if not prep.batch.n_series and not prep.batch.metadata:
            return prep, IC.PushResult(0, 0, bytearray())
        return prep, append(prep.batch)

    def too_large_error(self, size):
        """The 413 error for a body (or decompressed body) of `size` bytes."""
        return E.ComponentError(E.TOO_LARGE, E.mimir_message(
            "the incoming push request has been rejected because its message size of %d bytes is "
            "larger than the allowed limit of %d bytes" % (size, self.max_recv_msg_size),
            "distributor-max-write-message-size", ("distributor.max-recv-msg-size",), instance=True))

    # ---- OTLP -------------------------------------------------------------------------------------

    def push_otlp(self, tenant, body, encoding="", json_body=False):
        """Translate and store one OTLP ExportMetricsServiceRequest body; Deferred[OTLPResult].

        The body is decompressed (`encoding`: "", gzip, lz4 or zstd), parsed, translated
        (components/otlp.py), encoded as a WriteRequest and then takes exactly the remote-write
        path: decode, validate, rate limit, ingester. Points that could not be translated and
        soft validation/limit refusals come back in the OTLPResult (partial success); a request
        where nothing could be translated fails with BAD_DATA, hard failures as for push()."""
        self.m_requests_in.labels(tenant).inc()
        if len(body) > self.max_otlp_request_size:
            return defer.fail(self.otlp_too_large_error(len(body)))
        limits = self.overrides.for_tenant(tenant)
        now_ms = int(self.clock.seconds() * 1000)
        ha = self.ha_tracker is not None and limits.accept_ha_samples

        def soft(f):
            f.trap(E.ComponentError)
            if not f.value.soft:
                return f
            return OTLPResult(getattr(f.value, "rejected", 0), f.value.message)
        if ha:
            # The same HA deduplication as remote write (Mimir runs one push middleware chain
            # for both): on the translated WriteRequest, its first series deciding.
            d = self.offload.run("decode", self.translate_otlp, body, encoding, json_body, limits)

            def send_ha(translated):
                wr, tr = translated
                sent = self._push_ha(tenant, None, limits, now_ms, False, raw=wr)
                sent.addCallbacks(lambda _: OTLPResult(0, ""), soft)
                return sent.addCallback(self._otlp_result, _Translated(tr))
            return d.addCallback(send_ha)
        d = self.offload.run("decode", self.prepare_otlp, body, encoding, json_body, limits, now_ms)

        def send(prep):
            sent = defer.maybeDeferred(self._limit_and_send, prep, tenant, limits)
            sent.addCallbacks(lambda _: OTLPResult(0, ""), soft)
            return sent.addCallback(self._otlp_result, prep)
        return d.addCallback(send)

    @staticmethod
    def _otlp_result(res, prep):
        tr = prep.translation
        if tr.errors:
            log.warning("OTLP points dropped in translation: %s", tr.error_message())
        messages = [m for m in (tr.error_message(), res.message) if m]
        return OTLPResult(res.rejected + tr.dropped_points, "; ".join(messages))

    def otlp_too_large_error(self, size):
        """The 413 error for an OTLP body (or decompressed body) of `size` bytes."""
        return E.ComponentError(E.TOO_LARGE, E.mimir_message(
            "the incoming OTLP request has been rejected because its message size of %d bytes is "
            "larger than the allowed limit of %d bytes" % (size, self.max_otlp_request_size),
            "distributor-max-otlp-request-size", ("distributor.max-otlp-request-size",), instance=True))

    def prepare_otlp(self, body, encoding, json_body, limits, now_ms):
        """Decompress, parse, translate, encode, decode and validate (decode pool): a Prepared
        whose `translation` says what could not be converted."""
        wr, tr = self.translate_otlp(body, encoding, json_body, limits)
        prep = self.prepare_raw(memoryview(wr), limits, now_ms)
        prep.translation = tr
        return prep

    def translate_otlp(self, body, encoding, json_body, limits):
        """Decompress, parse and translate (decode pool): (WriteRequest bytes, Translation)."""
        from urdar.components import otlp
        from urdar.engine import remotewrite as rw
        raw = self._otlp_decompress(body, encoding)
        try:
            req = otlp.parse_request(raw, json_body)
        except otlp.OTLPError as exc:
            raise E.ComponentError(E.BAD_DATA, str(exc)) from None
        tr = otlp.translate(
            req, add_suffixes=getattr(limits, "otel_metric_suffixes_enabled", False),
            keep_identifying=getattr(limits, "otel_keep_identifying_resource_attributes", False))
        if tr.errors and not tr.series:
            raise E.ComponentError(E.BAD_DATA, tr.error_message())
        return rw.encode_write_request(tr.write_series(), metadata=tr.metadata, source=2), tr

    def _otlp_decompress(self, body, encoding):
        limit = self.max_otlp_request_size
        if encoding in ("", "identity"):
            return body
        try:
            if encoding == "gzip":
                dec = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                raw = dec.decompress(body, limit + 1)
                if len(raw) <= limit and not dec.eof:
                    raise ValueError("truncated gzip stream")
            elif encoding == "lz4":
                import lz4.frame
                dec = lz4.frame.LZ4FrameDecompressor()
                raw = dec.decompress(body, max_length=limit + 1)
                if len(raw) <= limit and not dec.eof:
                    raise ValueError("truncated lz4 frame")
            elif encoding == "zstd":
                # A lazily zero-filled anonymous mapping one byte past the limit: a bigger
                # output fails to fit instead of growing without bound.
                with mmap.mmap(-1, limit + 1) as out:
                    try:
                        n = cramjam.zstd.decompress_into(body, out)
                    except cramjam.DecompressionError as exc:
                        if "whole buffer" in str(exc):
                            n = limit + 1
                        else:
                            raise
                    raw = out[:min(n, limit + 1)]
            else:
                raise E.ComponentError(E.UNSUPPORTED, "unsupported compression: %s. Only \"gzip\", "
                                       "\"lz4\", \"zstd\" or no compression supported" % encoding)
        except E.ComponentError:
            raise
        except Exception as exc:
            raise E.ComponentError(E.BAD_DATA, "decompress %s OTLP request body: %s"
                                   % (encoding, exc)) from None
        if len(raw) > limit:
            raise self.otlp_too_large_error(len(raw))
        return raw

    def prepare(self, body, limits, now_ms, skip_label_validation=False, v2=False):
        """Decompress, decode and validate (runs in the decode pool). Returns a Prepared."""
        return self.prepare_raw(self.decompress(body, v2), limits, now_ms, skip_label_validation)

    def decompress(self, body, v2=False):
        """The snappy-decompressed request body, its size checked first (decode pool); a
        remote write 2.0 Request (`v2`) comes back as the 1.0 WriteRequest of the same data."""
        if not len(body):
            raise E.ComponentError(E.BAD_DATA, "empty request body: expected a snappy-compressed "
                                               "protobuf WriteRequest")
        try:
            raw_len = cramjam.snappy.decompress_raw_len(body)
        except Exception as exc:
            raise E.ComponentError(E.BAD_DATA, "decompress snappy request body: %s" % (exc,)) from None
        if raw_len > self.max_recv_msg_size:
            raise self.too_large_error(raw_len)
        try:
            raw = cramjam.snappy.decompress_raw(body)
        except Exception as exc:
            raise E.ComponentError(E.BAD_DATA, "decompress snappy request body: %s" % (exc,)) from None
        if v2:
            from urdar.engine.rw2 import RW2TooLarge, to_v1
            try:
                # labels are spelled out per series: bounded, as a 1.0 body of that size would be
                raw = to_v1(memoryview(raw), V2_EXPANSION * self.max_recv_msg_size)[0]
            except RW2TooLarge:
                raise self.too_large_error(V2_EXPANSION * self.max_recv_msg_size + 1) from None
            except ValueError as exc:
                raise E.ComponentError(E.BAD_DATA, "decode remote write 2.0 request: %s"
                                       % (exc,)) from None
        return raw

    # ---- HA deduplication (components/hatracker.py) --------------------------------------------

    def _push_ha(self, tenant, body, limits, now_ms, skip_label_validation, raw=None, v2=False):
        """A push of a tenant with accept_ha_samples: decode with the replica label cut from every
        series, ask the HA tracker about the (cluster, replica) of the FIRST series (as Mimir
        does), then validate, limit and send what the elected replica sent. A request whose first
        series lacks either label is stored as it came (the label put back by decoding again).
        `body` is snappy-compressed, or None with `raw` the uncompressed WriteRequest (OTLP)."""
        from urdar.engine import remotewrite as rw
        replica_label = limits.ha_replica_label.encode("utf-8")
        raws = []       # the decompressed request of the last decode (its histograms for validate)

        def decode(drop):
            data = raw if body is None else self.decompress(body, v2)
            raws.append(data)
            try:
                return rw.decode(memoryview(data), max_label_name_length=limits.max_label_name_length,
                                 max_label_value_length=limits.max_label_value_length,
                                 max_label_names_per_series=limits.max_label_names_per_series,
                                 drop_label=drop)
            except ValueError as exc:
                raise E.ComponentError(E.BAD_DATA, "decode protobuf WriteRequest: %s" % (exc,)) from None

        def decided(dw):
            n = dw.n_samples + dw.n_histograms
            cluster = replica = ""
            if dw.n_series:
                cluster = dict(dw.labels(0)).get(limits.ha_cluster_label, "")
                replica = (dw.first_dropped_value or b"").decode("utf-8", "replace")
            if not dw.n_series or not cluster or not replica or \
                    len(replica.encode("utf-8")) > limits.max_label_value_length:
                if dw.n_series:
                    self.m_non_ha.labels(tenant).inc(n)
                if dw.dropped_labels:
                    return self.offload.run("decode", decode, b"")   # keep the label after all
                return dw

            def refused(f):
                f.trap(E.ComponentError)
                if f.value.cause == E.DEDUPED:
                    self.m_deduped.labels(tenant, cluster).inc(n)
                elif f.value.cause == E.TENANT_LIMIT:
                    self.m_discarded.labels("too_many_ha_clusters", tenant).inc(n)
                return f
            return self.ha_tracker.check(tenant, cluster, replica).addCallbacks(
                lambda _: dw, refused)

        d = self.offload.run("decode", decode, replica_label)
        d.addCallback(decided)
        d.addCallback(lambda dw: self.offload.run(
            "decode", validate, dw, limits, now_ms, skip_label_validation, rw, raws[-1],
            getattr(self.ingesters, "carries_histograms", False)))
        d.addCallback(self._limit_and_send, tenant, limits)
        return d

    def prepare_raw(self, raw, limits, now_ms, skip_label_validation=False):
        """Decode and validate an uncompressed WriteRequest (decode pool). Returns a Prepared."""
        from urdar.engine import remotewrite as rw
        try:
            dw = rw.decode(memoryview(raw), max_label_name_length=limits.max_label_name_length,
                           max_label_value_length=limits.max_label_value_length,
                           max_label_names_per_series=limits.max_label_names_per_series)
        except ValueError as exc:
            raise E.ComponentError(E.BAD_DATA, "decode protobuf WriteRequest: %s" % (exc,)) from None
        return validate(dw, limits, now_ms, skip_label_validation, rw, raw,
                        getattr(self.ingesters, "carries_histograms", False))

    def _limit_and_send(self, prep, tenant, limits):
        self._charge(prep, tenant, limits)
        if not prep.batch.n_series and not prep.batch.metadata:
            return self._finish(prep, tenant, limits, IC.PushResult(0, 0, bytearray()))
        d = self.ingesters.push(tenant, prep.batch)
        d.addCallback(lambda res: self._finish(prep, tenant, limits, res))
        return d

    def _charge(self, prep, tenant, limits):
        """Count what came in and take it from the tenant's token bucket (RATE_LIMITED if empty).
        Thread-safe (metrics and the rate limiter lock): runs on the reactor or a pool thread."""
        self._counters(tenant)[1].inc(prep.samples_in)
        if prep.exemplars_in:
            self.m_exemplars_in.labels(tenant).inc(prep.exemplars_in)
        if prep.metadata_in:
            self.m_metadata_in.labels(tenant).inc(prep.metadata_in)
        for reason, n in prep.discarded.items():
            self.m_discarded.labels(reason, tenant).inc(n)
        for reason, n in prep.discarded_metadata.items():
            self.m_discarded_meta.labels(reason, tenant).inc(n)
        if prep.count and not self.rate_limiter.allow(tenant, prep.count, self.tenant_rate(limits),
                                                      limits.ingestion_burst_size):
            kept = prep.batch.n_series and (len(prep.batch.ts) - _skipped_samples(prep.batch))
            self.m_discarded.labels("rate_limited", tenant).inc(kept)
            raise E.ComponentError(E.RATE_LIMITED, E.mimir_message(
                "the request has been rejected because the tenant exceeded the ingestion rate limit, "
                "set to %s items/s with a maximum allowed burst of %d. This limit is applied on the "
                "total number of samples, exemplars and metadata received across all distributors"
                % (_go_float(limits.ingestion_rate), limits.ingestion_burst_size),
                "tenant-max-ingestion-rate",
                ("distributor.ingestion-rate-limit", "distributor.ingestion-burst-size")))

    def _counters(self, tenant):
        """The tenant's requests-in, samples-in, received-requests and received-samples counter
        children, looked up once per tenant rather than by labels() several times per push
        (the distributor never removes these series). Any thread."""
        c = self._tenant_counters.get(tenant)
        if c is None:
            c = self._tenant_counters[tenant] = (
                self.m_requests_in.labels(tenant), self.m_samples_in.labels(tenant),
                self.m_received_requests.labels(tenant), self.m_received.labels(tenant))
        return c

    def tenant_rate(self, limits):
        """The tenant's ingestion rate this distributor enforces: the whole limit (local), or
        its share among the healthy distributors (global; the whole limit while none is)."""
        if self.healthy_distributors is None:
            return limits.ingestion_rate
        n = self.healthy_distributors()
        return limits.ingestion_rate / n if n > 0 else limits.ingestion_rate

    def _finish(self, prep, tenant, limits, res):
        self._counters(tenant)[2].inc()
        if prep.batch.exemplars:
            self.m_received_exemplars.labels(tenant).inc(len(prep.batch.exemplars))
        if prep.batch.metadata:
            self.m_received_metadata.labels(tenant).inc(len(prep.batch.metadata))
        out, hout = res.outcomes, res.histogram_outcomes
        if not prep.errors and out.count(O.OK) == len(out) and (not hout or hout.count(O.OK) == len(hout)):
            # Everything stored (the usual push): nothing to count as discarded or to report.
            return self._accepted(tenant, res)
        errs = _Errors()
        for reason, cause, msg in prep.errors:
            errs.first.setdefault(reason, (reason, cause, msg))
        batch, out = prep.batch, res.outcomes
        ooo = limits.out_of_order_time_window
        checks = (
            (O.OUT_OF_ORDER, "sample-out-of-order", "sample-out-of-order",
             "the sample has been rejected because another sample with a more recent timestamp has "
             "already been ingested and out-of-order samples are not allowed"),
            # Mimir: Prometheus' ErrOutOfBounds, older than the head allows (head max time minus
            # half the block range, or an already cut block)
            (O.OUT_OF_BOUNDS, "sample-timestamp-too-old", "sample-out-of-bounds",
             "the sample has been rejected because its timestamp is too old"),
            (O.TOO_OLD, "sample-timestamp-too-old", "sample-too-old",
             "the sample has been rejected because another sample with a more recent timestamp has "
             "already been ingested and this sample is beyond the out-of-order time window of %s"
             % format_duration_ms(ooo) if ooo else
             "the sample has been rejected because its timestamp is too old"),
            (O.DUPLICATE, "sample-duplicate-timestamp", "new-value-for-timestamp",
             "the sample has been rejected because another sample with the same timestamp, but a "
             "different value, has already been ingested"),
        )
        hout = res.histogram_outcomes
        for code, err_id, reason, text in checks:
            n = out.count(code)
            nh = hout.count(code) if hout else 0
            if not n and not nh:
                continue
            if n:
                j = out.find(code)
                i, t = batch.series_of_sample(j), batch.ts[j]
            else:
                i, t, _ = batch.histograms[hout.find(code)]

            def msg(err_id=err_id, text=text, t=t, i=i):
                from urdar.engine.labels import decode_labels
                return "%s. The affected sample has timestamp %s and is from series %s" % (
                    E.mimir_message(text, err_id), format_timestamp(t),
                    format_series(decode_labels(batch.key(i)), limit=10**6))
            errs.add(err_id, reason, E.BAD_DATA, msg, n + nh)
        n = out.count(O.SERIES_LIMIT) + (hout.count(O.SERIES_LIMIT) if hout else 0)
        errs.add("max-series-per-user", "per_user_series_limit", E.TENANT_LIMIT, lambda: E.mimir_message(
            "per-user series limit of %d exceeded" % limits.max_global_series_per_user,
            "max-series-per-user", ("ingester.max-global-series-per-user",)), n)
        n = out.count(O.SERIES_PER_METRIC_LIMIT)
        errs.add("max-series-per-metric", "per_metric_series_limit", E.TENANT_LIMIT,
                 lambda: E.mimir_message(
                     "per-metric series limit of %d exceeded" % limits.max_global_series_per_metric,
                     "max-series-per-metric", ("ingester.max-global-series-per-metric",)), n)
        for reason, count in errs.discarded.items():
            self.m_discarded.labels(reason, tenant).inc(count)
        self._accepted(tenant, res)
        if errs.first:
            causes = [c for _, c, _ in errs.first.values()]
            cause = E.BAD_DATA if E.BAD_DATA in causes else E.TENANT_LIMIT
            err = E.ComponentError(cause, "\n".join(m for _, _, m in errs.first.values()), soft=True)
            err.rejected = sum(errs.discarded.values()) + sum(prep.discarded.values())
            err.result = res        # what was written all the same (remote write 2.0 headers)
            raise err
        return res

    def _accepted(self, tenant, res):
        """Count a push's stored samples (received, the tenant's and the instance's rates)."""
        self._counters(tenant)[3].inc(res.accepted)
        self._pending_rate[tenant] = self._pending_rate.get(tenant, 0) + res.accepted
        self.instance_limits.add_samples(res.accepted)
        return res

    def user_stats(self, tenant):
        """Deferred[dict] in /api/v1/user_stats' shape."""
        d = self.ingesters.user_stats(tenant)

        def shape(stats):
            rate = self.ingestion_rate(tenant)
            return {"numSeries": stats.get("numSeries", 0), "ingestionRate": rate,
                    "APIIngestionRate": rate, "RuleIngestionRate": 0}
        return d.addCallback(shape)


# How much larger than -distributor.max-recv-msg-size the remote write 1.0 form of a 2.0 request
# may get (its labels spelled out per series instead of referenced).
V2_EXPANSION = 8


def _skipped_samples(batch):
    if not batch.skip:
        return 0
    offs = batch.sample_offsets
    return sum(offs[i + 1] - offs[i] for i, s in enumerate(batch.skip) if s)


# ---- validation (decode pool thread) ------------------------------------------------------------

def validate(dw, limits, now_ms, skip_label_validation, rw, raw=None, histograms_ok=False):
    """Turn a DecodedWrite into a Prepared: skip invalid series, drop out-of-window samples.
    `raw` is the decoded request's bytes (its native histograms are read from there);
    histograms_ok says the ingester client carries them (else they are refused per series)."""
    errs = _Errors()
    n = dw.n_series
    offs = dw.sample_offsets
    skip = None
    mask = rw.SERIES_ERRORS
    if skip_label_validation:
        mask &= ~(rw.INVALID_METRIC_NAME | rw.INVALID_LABEL_NAME | rw.INVALID_UTF8)
    flags = dw.series_flags
    # Fast path: all-zero flags compare as bytes at C speed.
    if n and flags.tobytes() != bytes(4 * n):
        for i in range(n):
            f = flags[i] & mask
            if not f:
                continue
            if skip is None:
                skip = bytearray(n)
            skip[i] = 1
            _series_error(errs, dw, i, f, limits, rw, offs[i + 1] - offs[i] + dw.histogram_counts[i])
    histograms = _histograms(dw, raw, skip, limits, now_ms, errs, histograms_ok) if dw.n_histograms else []
    ts, vals = dw.ts, dw.vals
    # Creation grace period (future) and past grace period.
    hi = now_ms + limits.creation_grace_period
    lo = (now_ms - limits.past_grace_period - limits.out_of_order_time_window
          if limits.past_grace_period else None)
    if len(ts) and (max(ts) > hi or (lo is not None and min(ts) < lo)):
        ts, vals, offs = _filter_window(dw, skip, lo, hi, errs)
    skip_bytes = bytes(skip) if skip is not None else None
    exemplars = _exemplars(dw, skip, limits) if dw.n_exemplars else []
    metadata, meta_discarded = _metadata(dw.metadata, limits, errs) if dw.metadata else ([], {})
    batch = IC.WriteBatch(dw.keys, dw.key_offsets, dw.key_hashes, offs, ts, vals, skip_bytes,
                          exemplars, metadata, histograms)
    kept = len(ts) - _skipped_samples(batch) + len(histograms)
    return Prepared(batch, list(errs.first.values()), errs.discarded, meta_discarded,
                    dw.n_samples + dw.n_histograms, kept + len(exemplars) + len(metadata),
                    dw.n_exemplars, len(dw.metadata))


# Prometheus' histogram.Validate failures -> Mimir's error ids (ingester nativeHistogramValidationError)
_HIST_STRUCTURE_IDS = (
    ("spans need", "native-histogram-spans-buckets-mismatch"),
    ("span number", "native-histogram-span-negative-offset"),
    ("is negative", "native-histogram-negative-bucket-count"),
    ("observations found in buckets", "native-histogram-count-not-big-enough"),
    ("custom buckets", "native-histogram-custom-buckets-invalid"),
)


def _histograms(dw, raw, skip, limits, now_ms, errs, supported):
    """The request's native histograms worth storing as WriteBatch.histograms rows, after
    Mimir's checks: time window, schema, Prometheus' structure rules, bucket limit (resolution
    reduced when allowed). Rare path: the request is walked again in Python."""
    from urdar.engine import prompbhist as PH
    if raw is None:
        raise E.ComponentError(E.INTERNAL, "native histograms without the request bytes")
    try:
        per_series = PH.request_histograms(raw)
    except ValueError as exc:
        raise E.ComponentError(E.BAD_DATA, "decode protobuf WriteRequest: histogram: %s" % (exc,)) from None
    if len(per_series) != dw.n_series:
        raise E.ComponentError(E.INTERNAL, "histogram walk found %d series, decoder %d"
                               % (len(per_series), dw.n_series))
    hi = now_ms + limits.creation_grace_period
    lo = (now_ms - limits.past_grace_period - limits.out_of_order_time_window
          if limits.past_grace_period else None)
    limit = limits.max_native_histogram_buckets
    rows = []

    def refuse(err_id, reason, text, flags=()):
        errs.add(err_id, reason, E.BAD_DATA, lambda: E.mimir_message(text, err_id, flags), 1)

    for i, hs in enumerate(per_series):
        if not hs or (skip and skip[i]):
            continue
        if not supported:
            errs.add("native-histogram", "native_histogram_unsupported", E.BAD_DATA,
                     lambda i=i, h=len(hs): "received %d native histogram sample(s), which this "
                     "urdar deployment's ingesters do not store yet; they were discarded and the "
                     "float samples of the series were kept, series: '%s'"
                     % (h, format_series(dw.labels(i))), len(hs))
            continue
        series = None
        for t, h in hs:
            if series is None:
                series = format_series(dw.labels(i), limit=10 ** 6)
            name = _metric_name(dw.labels(i))[:200]
            if t > hi:
                refuse("too-far-in-future", "too_far_in_future",
                       "received a sample whose timestamp is too far in the future, timestamp: %d "
                       "series: '%s'" % (t, name), ("validation.create-grace-period",))
                continue
            if lo is not None and t < lo:
                refuse("too-far-in-past", "too_far_in_past",
                       "received a sample whose timestamp is too far in the past, timestamp: %d "
                       "series: '%s'" % (t, name), ("validation.past-grace-period",))
                continue
            if not (-4 <= h.schema <= 8 or h.schema == -53):
                refuse("invalid-native-histogram-schema", "invalid_native_histogram_schema",
                       "received a native histogram sample with an invalid schema: %d" % h.schema)
                continue
            if limit > 0 and PH.bucket_count(h) > limit:
                n = PH.bucket_count(h)
                if h.schema == -53:
                    refuse("native-histogram-custom-buckets-not-reducible", "max_native_histogram_buckets",
                           "received a native histogram sample with more custom buckets than the "
                           "limit, timestamp: %d series: %s, buckets: %d, limit: %d" % (t, series, n, limit))
                    continue
                if not limits.reduce_native_histogram_over_max_buckets:
                    refuse("max-native-histogram-buckets", "max_native_histogram_buckets",
                           "received a native histogram sample with too many buckets, timestamp: %d "
                           "series: %s, buckets: %d, limit: %d" % (t, series, n, limit))
                    continue
                try:
                    while True:   # Mimir reduces until strictly under the limit
                        h = PH.reduce_resolution(h)
                        if PH.bucket_count(h) < limit:
                            break
                except ValueError:
                    refuse("not-reducible-native-histogram", "max_native_histogram_buckets",
                           "received a native histogram sample with too many buckets and cannot "
                           "reduce, timestamp: %d series: %s, buckets: %d, limit: %d" % (t, series, n, limit))
                    continue
            problem = PH.structure_error(h)
            if problem is not None:
                err_id = next((e for key, e in _HIST_STRUCTURE_IDS if key in problem),
                              "native-histogram-invalid")
                refuse(err_id, err_id.replace("-", "_"), "err: %s. timestamp=%s, series=%s"
                       % (problem, format_timestamp(t), series))
                continue
            rows.append((i, t, h))
    return rows


def _series_error(errs, dw, i, f, limits, rw, n):
    labels = dw.labels(i)
    series = format_series(labels)
    b = dw.series_bad_label[i]
    name, value = labels[b] if 0 <= b < len(labels) else ("", "")
    if f & rw.NO_METRIC_NAME:
        errs.add("missing-metric-name", "missing_metric_name", E.BAD_DATA,
                 lambda: E.mimir_message("received series has no metric name", "missing-metric-name"), n)
    elif f & rw.INVALID_METRIC_NAME:
        errs.add("metric-name-invalid", "metric_name_invalid", E.BAD_DATA, lambda: E.mimir_message(
            "received a series with invalid metric name: '%s'" % _metric_name(labels)[:200],
            "metric-name-invalid"), n)
    elif f & rw.TOO_MANY_LABELS:
        full = format_series(labels, 10**9)
        errs.add("max-label-names-per-series", "max_label_names_per_series", E.BAD_DATA,
                 lambda: E.mimir_message(
                     "received a series whose number of labels exceeds the limit (actual: %d, limit: %d) "
                     "series: '%s%s'" % (len(labels), limits.max_label_names_per_series, series,
                                         "…" if len(full) > 200 else ""),
                     "max-label-names-per-series", ("validation.max-label-names-per-series",)), n)
    elif f & rw.INVALID_LABEL_NAME:
        errs.add("label-invalid", "label_invalid", E.BAD_DATA, lambda: E.mimir_message(
            "received a series with an invalid label: '%s' series: '%s'" % (name[:200], series),
            "label-invalid"), n)
    elif f & rw.LABEL_NAME_TOO_LONG:
        errs.add("label-name-too-long", "label_name_too_long", E.BAD_DATA, lambda: E.mimir_message(
            "received a series whose label name length exceeds the limit, label: '%s' series: '%s'"
            % (name[:200], series), "label-name-too-long", ("validation.max-length-label-name",)), n)
    elif f & rw.LABEL_VALUE_TOO_LONG:
        errs.add("label-value-too-long", "label_value_too_long", E.BAD_DATA, lambda: E.mimir_message(
            "received a series whose label value length exceeds the limit, label: '%s', value: '%s' "
            "(truncated) series: '%s'" % (name, value[:200], series), "label-value-too-long",
            ("validation.max-length-label-value",)), n)
    elif f & rw.INVALID_UTF8:
        errs.add("label-value-invalid", "label_value_invalid", E.BAD_DATA, lambda: E.mimir_message(
            "received a series with invalid value in label '%s': '%s' metric: '%s'"
            % (name[:200], value[:200], _metric_name(labels)[:200]), "label-value-invalid"), n)
    elif f & rw.DUPLICATE_LABEL_NAME:
        errs.add("duplicate-label-names", "duplicate_label_names", E.BAD_DATA, lambda: E.mimir_message(
            "received a series with duplicate label name, label: '%s' series: '%s'" % (name[:200], series),
            "duplicate-label-names"), n)


def _filter_window(dw, skip, lo, hi, errs):
    """Rebuild the sample columns without samples outside [lo, hi] (rare path, per sample)."""
    ts, vals, offs = dw.ts, dw.vals, dw.sample_offsets
    nts, nvals, noffs = array("q"), array("d"), array("Q", [0])
    for i in range(dw.n_series):
        for j in range(offs[i], offs[i + 1]):
            t = ts[j]
            if t > hi and not (skip and skip[i]):
                errs.add("too-far-in-future", "too_far_in_future", E.BAD_DATA,
                         lambda t=t, i=i: E.mimir_message(
                             "received a sample whose timestamp is too far in the future, timestamp: %d "
                             "series: '%s'" % (t, _metric_name(dw.labels(i))[:200]), "too-far-in-future",
                             ("validation.create-grace-period",)), 1)
                continue
            if lo is not None and t < lo and not (skip and skip[i]):
                errs.add("too-far-in-past", "too_far_in_past", E.BAD_DATA,
                         lambda t=t, i=i: E.mimir_message(
                             "received a sample whose timestamp is too far in the past, timestamp: %d "
                             "series: '%s'" % (t, _metric_name(dw.labels(i))[:200]), "too-far-in-past",
                             ("validation.past-grace-period",)), 1)
                continue
            nts.append(t)
            nvals.append(vals[j])
        noffs.append(len(nts))
    return nts, nvals, noffs


def _exemplars(dw, skip, limits):
    """Exemplars worth keeping: only when the tenant allows any, with labels and a timestamp."""
    if limits.max_global_exemplars_per_user <= 0:
        return []
    out = []
    eo = dw.exemplar_offsets
    for i in range(dw.n_series):
        if skip and skip[i]:
            continue
        key = None
        for j in range(eo[i], eo[i + 1]):
            ekey = dw.exemplar_key(j)
            if len(ekey) <= 1 or dw.exemplar_ts[j] == 0:
                continue
            key = key or dw.key(i)
            out.append((key, dw.exemplar_ts[j], dw.exemplar_vals[j], ekey))
    return out


def _metadata(items, limits, errs):
    out, discarded = [], {}
    limit = limits.max_metadata_length
    for mtype, name, help_, unit in items:
        reason = None
        if not name:
            reason = "metadata_missing_metric_name"
        elif limit and len(name.encode()) > limit:
            reason = "metric_name_too_long"
        elif limit and len(unit.encode()) > limit:
            reason = "unit_too_long"
        if reason:
            discarded[reason] = discarded.get(reason, 0) + 1
            continue
        if limit and len(help_) > limit:
            help_ = help_[:limit]
        out.append((name, mtype, help_, unit))
    return out, discarded
