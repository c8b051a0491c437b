"""The ruler's rule evaluation (Prometheus' rules/manager.go, group.go, alerting.go, recording.go
as Mimir's ruler runs them per tenant), no HTTP.

`RuleManager` loads every tenant's rule groups from the RuleStore at start, re-syncs every
-ruler.poll-interval and right after a change through the configuration API, and runs each group
on its own timer. A group evaluates its rules one after another at timestamps aligned on its
interval (offset by a hash of its name, as Prometheus does); the queries go through the tenant's
in-process query path (a Deferred each, with a deadline of one interval), results go back
through the distributor's push path (`Pusher`), so nothing here blocks the reactor and a slow
tenant only delays its own groups. Work that grows with a rule's result (building samples,
rendering alert templates) runs in the "ruler" offload pool; the alert state machine, which
touches a handful of fields per alert, stays on the reactor where the read API sees it.

Alert templates may call `query`: rendering runs in the pool with a `query` that answers from a
per-evaluation cache; a query the cache lacks is recorded and answered as empty, then the reactor
runs the recorded queries and renders again, at most MAX_TEMPLATE_QUERY_ROUNDS times. No thread
ever waits on the reactor, and the final rendering saw real answers for every query it made."""
import logging
import math
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import quote_plus

from twisted.internet import defer, task

from urdar.components.rulefmt import Rule, RuleGroup
from urdar.engine.labels import decode_labels
from urdar.engine.matchers import Matcher

if TYPE_CHECKING:
    from urdar.components.ruler import RuleStore
    from urdar.net.offload import Offload

log = logging.getLogger("urdar.rulemanager")

Labels = tuple[tuple[str, str], ...]
Notify = Callable[[str, list[dict[str, Any]]], None]

STALE_NAN: float = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
RESOLVED_RETENTION_MS = 15 * 60 * 1000      # Prometheus keeps resolved alerts 15m (resolvedRetention)
MAX_TEMPLATE_QUERY_ROUNDS = 4               # template `query` answers fetched per rendering, at most
MAX_CACHED_TEMPLATES = 256                  # parsed templates kept per alerting rule
MAX_TEMPLATE_QUERIES = 100                  # distinct template queries per rule evaluation
MAX_CONCURRENT_QUERIES = 4                  # template queries of one rule in flight at once
PUSH_BATCH = 5000                           # samples per push request of rule results
ALERT_METRIC = "ALERTS"
ALERT_FOR_STATE_METRIC = "ALERTS_FOR_STATE"
ZERO_TIME = "0001-01-01T00:00:00Z"          # Go's zero time.Time in JSON


@dataclass(frozen=True)
class RuleManagerConfig:
    """The ruler's evaluation settings (-ruler.*), times in ms."""
    evaluation_interval_ms: int = 60_000        # -ruler.evaluation-interval
    poll_interval_ms: int = 60_000              # -ruler.poll-interval
    resend_delay_ms: int = 60_000               # -ruler.resend-delay
    for_outage_tolerance_ms: int = 3_600_000    # -ruler.for-outage-tolerance
    for_grace_period_ms: int = 600_000          # -ruler.for-grace-period
    external_url: str = ""                      # -ruler.external.url
    external_labels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_config(cls, cfg: Any) -> "RuleManagerConfig":
        return cls(evaluation_interval_ms=cfg["ruler.evaluation_interval"],
                   poll_interval_ms=cfg["ruler.poll_interval"],
                   resend_delay_ms=cfg["ruler.resend_delay"],
                   for_outage_tolerance_ms=cfg["ruler.for_outage_tolerance"],
                   for_grace_period_ms=cfg["ruler.for_grace_period"],
                   external_url=cfg["ruler.external.url"])


# ---- seams ---------------------------------------------------------------------------------------

class QueryFunc(Protocol):
    def __call__(self, tenant: str, query: str, t_ms: int,
                 timeout_s: float) -> "defer.Deferred[Any]": ...


class SelectFunc(Protocol):
    def __call__(self, tenant: str, matchers: Sequence[Matcher], mint: int,
                 maxt: int) -> "defer.Deferred[Any]": ...


class Pusher(Protocol):
    """Where rule results go: `push(tenant, [(labels, t_ms, value)])` -> Deferred."""

    def push(self, tenant: str, samples: list[tuple[Labels, int, float]]) -> "defer.Deferred[Any]": ...


class DistributorPusher:
    """Pushes rule results through the in-process distributor as a remote-write request with
    Mimir's RULE source, encoded in the offload pool."""

    def __init__(self, distributor: Any, offload: "Offload | None" = None, pool: str = "ruler") -> None:
        self.distributor = distributor
        self.offload = offload
        self.pool = pool

    @staticmethod
    def encode(samples: list[tuple[Labels, int, float]]) -> bytes:
        import cramjam

        from urdar.engine.remotewrite import encode_write_request
        series = [(list(labels), [(t, v)]) for labels, t, v in samples]
        return bytes(cramjam.snappy.compress_raw(encode_write_request(series, source=1)))

    def push(self, tenant: str, samples: list[tuple[Labels, int, float]]) -> "defer.Deferred[Any]":
        """Push in requests of at most PUSH_BATCH samples, one after another (a large rule
        result stays under the distributor's request size limit); the first failure stops."""
        d: defer.Deferred[Any] = defer.succeed(None)
        for i in range(0, len(samples), PUSH_BATCH):
            d.addCallback(self._push_one, tenant, samples[i:i + PUSH_BATCH])
        return d

    def _push_one(self, _: Any, tenant: str,
                  batch: list[tuple[Labels, int, float]]) -> "defer.Deferred[Any]":
        if self.offload is None:
            d: defer.Deferred[Any] = defer.maybeDeferred(self.encode, batch)
        else:
            d = self.offload.run(self.pool, self.encode, batch)
        return d.addCallback(lambda body: self.distributor.push(tenant, body))


def querier_funcs(querier: Any) -> tuple[QueryFunc, SelectFunc]:
    """The query and select seams over components/querier.Querier."""
    def query(tenant: str, q: str, t_ms: int, timeout_s: float) -> "defer.Deferred[Any]":
        return querier.instant_query(tenant, q, t_ms, timeout_s=timeout_s)

    def select(tenant: str, matchers: Sequence[Matcher], mint: int, maxt: int) -> "defer.Deferred[Any]":
        return querier.select(tenant, matchers, mint, maxt)
    return cast(QueryFunc, query), select


MAX_REMOTE_ANSWER_BYTES = 100 << 20         # largest query answer read from a remote frontend


class RemoteQuery:
    """The query seam over HTTP (Mimir's remote rule evaluation, -ruler.query-frontend.address,
    which Mimir speaks over gRPC): each rule query is a POST to
    `<base><prefix>/api/v1/query` of a query-frontend (or querier) with the tenant in
    X-Scope-OrgID; the JSON answer is decoded in the offload pool into the Result a local
    query gives. `http` is treq-like (request(method, url, data=, headers=))."""

    def __init__(self, address: str, prefix: str, http: Any, clock: Any,
                 offload: "Offload | None" = None, pool: str = "ruler") -> None:
        base = address if "://" in address else "http://" + address
        self.url = base.rstrip("/") + prefix.rstrip("/") + "/api/v1/query"
        self.http = http
        self.clock = clock
        self.offload = offload
        self.pool = pool

    def __call__(self, tenant: str, query: str, t_ms: int, timeout_s: float) -> "defer.Deferred[Any]":
        import treq
        from urllib.parse import urlencode
        body = urlencode({"query": query, "time": "%.3f" % (t_ms / 1000.0)}).encode()
        headers = {b"X-Scope-OrgID": [tenant.encode()],
                   b"Content-Type": [b"application/x-www-form-urlencoded"]}
        d = defer.maybeDeferred(self.http.request, "POST", self.url, data=body, headers=headers)

        def got(resp: Any) -> Any:
            chunks: list[bytes] = []
            size = [0]

            def collect(data: bytes) -> None:
                size[0] += len(data)
                if size[0] > MAX_REMOTE_ANSWER_BYTES:
                    raise EvalError("query answer larger than %d bytes" % MAX_REMOTE_ANSWER_BYTES)
                chunks.append(data)
            return treq.collect(resp, collect).addCallback(
                lambda _: self._off(decode_query_answer, resp.code, b"".join(chunks)))

        def failed(f: Any) -> Any:
            if f.check(EvalError):
                return f
            raise EvalError("remote query to %s: %s" % (self.url, f.getErrorMessage()
                                                        or f.type.__name__))

        def timed_out(result: Any, timeout: float) -> Any:
            raise EvalError("remote query to %s: no answer within %gs" % (self.url, timeout))
        d.addCallback(got).addErrback(failed)
        if timeout_s > 0:
            d.addTimeout(timeout_s, self.clock, onTimeoutCancel=timed_out)
        return d

    def _off(self, fn: Callable[..., Any], *args: Any) -> "defer.Deferred[Any]":
        if self.offload is None:
            return defer.maybeDeferred(fn, *args)
        return self.offload.run(self.pool, fn, *args)


def decode_query_answer(status: int, body: bytes) -> Any:
    """Pool thread: a Prometheus /api/v1/query JSON answer as a promql Result (vector or
    scalar, what a rule accepts); EvalError with the answer's error text otherwise."""
    import json

    from urdar.promql.value import Result
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise EvalError("remote query failed with status %d: %s"
                        % (status, body[:512].decode("utf-8", "replace").strip()))
    if status != 200 or doc.get("status") != "success":
        raise EvalError(str(doc.get("error") or "remote query failed with status %d" % status))
    data = doc.get("data") or {}
    kind = data.get("resultType")
    try:
        if kind == "vector":
            return Result("vector", [(tuple(sorted(s["metric"].items())), float(s["value"][1]))
                                     for s in data["result"]])
        if kind == "scalar":
            return Result("scalar", float(data["result"][1]))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise EvalError("malformed remote query answer: %s" % exc) from None
    return Result(str(kind), None)


# ---- helpers -------------------------------------------------------------------------------------

class EvalError(Exception):
    """A rule evaluation failure; str() is Prometheus' text."""


def result_vector(result: Any) -> list[tuple[Labels, float]]:
    """A query Result as a rule sees it (Prometheus' EngineQueryFunc): a vector, or a scalar as
    one sample without labels."""
    if result.type == "vector":
        return [(tuple(labels), float(v)) for labels, v in result.value]
    if result.type == "scalar":
        return [((), float(result.value))]
    raise EvalError("rule result is not a vector or scalar")


def go_time(ms: int | None) -> str:
    """A time as Go's time.Time marshals to JSON (RFC 3339, trailing zeros of the fraction
    dropped); Go's zero time for None."""
    if ms is None:
        return ZERO_TIME
    import datetime
    s, frac = divmod(int(ms), 1000)
    dt = datetime.datetime.fromtimestamp(s, datetime.timezone.utc)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        text += ("." + "%03d" % frac).rstrip("0")
    return text + "Z"


def rfc3339_millis(ms: int) -> str:
    """Alertmanager's strfmt.DateTime form for postable alerts."""
    import datetime
    s, frac = divmod(int(ms), 1000)
    dt = datetime.datetime.fromtimestamp(s, datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + ".%03dZ" % frac


def format_float_e(v: float) -> str:
    """Go's strconv.FormatFloat(v, 'e', -1, 64)."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == 0:
        return "-0e+00" if math.copysign(1.0, v) < 0 else "0e+00"
    # Shortest round-trip digits: repr's digits with the exponent recomputed.
    r = repr(abs(v))
    if "e" in r:
        m, e = r.split("e")
        e10 = int(e)
    else:
        m, e10 = r, 0
    ip, _, fp = m.partition(".")
    digits = (ip + fp).lstrip("0")
    lead_zeros = len(ip + fp) - len(digits)
    point = len(ip) + e10 - lead_zeros
    digits = digits.rstrip("0") or "0"
    exp10 = point - 1
    body = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return "%s%se%s%02d" % ("-" if v < 0 else "", body, "-" if exp10 < 0 else "+", abs(exp10))


def with_stale_markers(samples: list[tuple[Labels, int, float]], previous: set[Labels],
                       t_ms: int) -> tuple[list[tuple[Labels, int, float]], set[Labels], int]:
    """Pool thread: (samples plus a stale marker at t_ms for each series of the previous
    evaluation missing now, the series now, the number of samples)."""
    current = {s for s, _, _ in samples}
    gone = sorted(s for s in previous if s not in current)
    return list(samples) + [(s, t_ms, STALE_NAN) for s in gone], current, len(samples)


def table_link(expr: str) -> str:
    """Prometheus' strutil.TableLinkForExpression."""
    return "/graph?g0.expr=%s&g0.tab=1" % quote_plus(expr)


def _fnv64a(data: bytes) -> int:
    h = 0xcbf29ce484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


# ---- rules ---------------------------------------------------------------------------------------

class RuleBase:
    """What every rule reports to the read API."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.health = "unknown"
        self.last_error = ""
        self.last_evaluation_ms: int | None = None
        self.evaluation_time_s = 0.0
        self.series_in_previous_eval: set[Labels] = set()

    @property
    def name(self) -> str:
        return self.rule.record or self.rule.alert

    def key(self) -> str:
        """Prometheus' nameAndLabels: how a changed group finds a rule's old state."""
        return self.name + repr(sorted(self.rule.labels.items()))


class RecordingRule(RuleBase):
    def samples(self, vector: list[tuple[Labels, float]], t_ms: int,
                limit: int) -> list[tuple[Labels, int, float]]:
        """Pool thread: the result as the series to record, with Prometheus' errors."""
        out = []
        seen: set[Labels] = set()
        extra = self.rule.labels
        for labels, v in vector:
            d = dict(labels)
            d["__name__"] = self.rule.record
            for k, val in extra.items():
                if val == "":
                    d.pop(k, None)
                else:
                    d[k] = val
            lset = tuple(sorted(d.items()))
            if lset in seen:
                raise EvalError("vector contains metrics with the same labelset after applying rule labels")
            seen.add(lset)
            out.append((lset, t_ms, v))
        if limit > 0 and len(out) > limit:
            raise EvalError("exceeded limit of %d with %d series" % (limit, len(out)))
        return out


INACTIVE, PENDING, FIRING = 0, 1, 2
STATE_NAMES = {INACTIVE: "inactive", PENDING: "pending", FIRING: "firing"}


class Alert:
    __slots__ = ("labels", "annotations", "value", "state", "active_at_ms", "fired_at_ms",
                 "resolved_at_ms", "last_sent_at_ms", "valid_until_ms", "keep_firing_since_ms")

    def __init__(self, labels: Labels, annotations: Labels, value: float, active_at_ms: int) -> None:
        self.labels = labels
        self.annotations = annotations
        self.value = value
        self.state = PENDING
        self.active_at_ms = active_at_ms
        self.fired_at_ms: int | None = None
        self.resolved_at_ms: int | None = None
        self.last_sent_at_ms: int | None = None
        self.valid_until_ms: int | None = None
        self.keep_firing_since_ms: int | None = None

    def needs_sending(self, ts_ms: int, resend_delay_ms: int) -> bool:
        if self.state == PENDING:
            return False
        if self.resolved_at_ms is not None and (self.last_sent_at_ms is None
                                                or self.resolved_at_ms > self.last_sent_at_ms):
            return True
        return self.last_sent_at_ms is None or self.last_sent_at_ms + resend_delay_ms < ts_ms


class AlertingRule(RuleBase):
    def __init__(self, rule: Rule, restored: bool) -> None:
        super().__init__(rule)
        self.active: dict[Labels, Alert] = {}
        self.restored = restored
        self._templates: dict[str, Any] = {}
        self._ctx: tuple[dict[str, Any], set[str], float] = ({}, set(), 0.0)

    def state(self) -> int:
        return max((a.state for a in self.active.values()), default=INACTIVE)

    def render(self, vector: list[tuple[Labels, float]], ts_ms: int, external_url: str,
               external_labels: dict[str, str], answers: dict[str, Any],
               missing: set[str]) -> list[tuple[Labels, Labels, float]]:
        """Pool thread: each sample's alert labels and annotations, templates expanded with
        `query` answered from `answers` (questions it lacks go to `missing`)."""
        # The templates are parsed once per rule (parsing costs far more than executing);
        # their `query` and `now` read this evaluation's context. A group's rules render one
        # at a time, so one context per rule is enough.
        self._ctx = (answers, missing, ts_ms / 1000.0)

        def expand(name: str, text: str, data: Any) -> str:
            if "{{" not in text:
                return text
            try:
                t = self._templates.get(text)
                if t is None:
                    t = self._parse(name, text, external_url)
                return t.execute(data)
            except Exception as exc:
                return "<error expanding template: %s>" % exc
        out = []
        seen: set[Labels] = set()
        tmpl_name = "__alert_" + self.rule.alert
        for labels, v in vector:
            data = self._data(dict(labels), external_labels, external_url, v)
            d = {k: val for k, val in labels if k != "__name__"}
            for k, text in self.rule.labels.items():
                val = expand(tmpl_name, text, data)
                if val == "":
                    d.pop(k, None)
                else:
                    d[k] = val
            d["alertname"] = self.rule.alert
            lset = tuple(sorted(d.items()))
            if lset in seen:
                raise EvalError("vector contains metrics with the same labelset after applying "
                                "alert labels")
            seen.add(lset)
            ann = tuple(sorted((k, expand(tmpl_name, text, data))
                               for k, text in self.rule.annotations.items()))
            out.append((lset, ann, v))
        return out

    @staticmethod
    def _data(labels: dict[str, str], external_labels: dict[str, str], external_url: str,
              v: float) -> Any:
        from urdar.gotemplate.prometheus import alert_template_data
        return alert_template_data(labels, external_labels, external_url, v)

    def _query(self, q: str) -> list[Any]:
        from urdar.gotemplate.prometheus import Sample
        answers, missing, _ = self._ctx
        if q not in answers:
            missing.add(q)
            return []
        got = answers[q]
        if isinstance(got, Exception):
            raise got
        return [Sample(dict(labels), v) for labels, v in got]

    def _parse(self, name: str, text: str, external_url: str) -> Any:
        """Parse (and cache) one template; a parse error is raised each time it is used."""
        from urdar.gotemplate.execute import Func
        from urdar.gotemplate.prometheus import ALERT_TEMPLATE_PREFIX, prometheus_funcs
        from urdar.gotemplate.template import Template
        funcs = prometheus_funcs(query=self._query, external_url=external_url)
        funcs["now"] = Func(lambda: float(self._ctx[2]), 0, 0)
        t = Template(name, funcs, missing_key="zero").parse(ALERT_TEMPLATE_PREFIX + text)
        if len(self._templates) < MAX_CACHED_TEMPLATES:
            self._templates[text] = t
        return t

    def update(self, rendered: list[tuple[Labels, Labels, float]], ts_ms: int, query_t_ms: int,
               limit: int) -> list[tuple[Labels, int, float]]:
        """Reactor: Prometheus' alert state machine for one evaluation; returns the ALERTS and
        ALERTS_FOR_STATE samples (none until the `for` state is restored)."""
        current: set[Labels] = set()
        for lset, ann, v in rendered:
            current.add(lset)
            a = self.active.get(lset)
            if a is not None and a.state != INACTIVE:
                a.value = v
                a.annotations = ann
                continue
            self.active[lset] = Alert(lset, ann, v, ts_ms)
        out: list[tuple[Labels, int, float]] = []
        n_active = 0
        for lset, a in list(self.active.items()):
            if lset not in current:
                keep = False
                if a.state == FIRING and self.rule.keep_firing_for_ms > 0:
                    if a.keep_firing_since_ms is None:
                        a.keep_firing_since_ms = ts_ms
                    keep = ts_ms - a.keep_firing_since_ms < self.rule.keep_firing_for_ms
                if a.state == PENDING or (a.resolved_at_ms is not None
                                          and ts_ms - a.resolved_at_ms > RESOLVED_RETENTION_MS):
                    del self.active[lset]
                if a.state != INACTIVE and not keep:
                    a.state = INACTIVE
                    a.resolved_at_ms = ts_ms
                if not keep:
                    continue
            else:
                a.keep_firing_since_ms = None
            n_active += 1
            if a.state == PENDING and ts_ms - a.active_at_ms >= self.rule.for_ms:
                a.state = FIRING
                a.fired_at_ms = ts_ms
            if self.restored:
                out.append((self.alert_series(a), query_t_ms, 1.0))
                out.append((self.for_state_series(a), query_t_ms, float(a.active_at_ms // 1000)))
        if limit > 0 and n_active > limit:
            self.active = {}
            raise EvalError("exceeded limit of %d with %d alerts" % (limit, n_active))
        return out

    @staticmethod
    def alert_series(a: Alert) -> Labels:
        d = dict(a.labels)
        d["__name__"] = ALERT_METRIC
        d["alertstate"] = STATE_NAMES[a.state]
        return tuple(sorted(d.items()))

    @staticmethod
    def for_state_series(a: Alert) -> Labels:
        d = dict(a.labels)
        d["__name__"] = ALERT_FOR_STATE_METRIC
        return tuple(sorted(d.items()))

    def alerts_to_send(self, ts_ms: int, resend_delay_ms: int, interval_ms: int,
                       generator_url: str) -> list[dict[str, Any]]:
        out = []
        for a in self.active.values():
            if not a.needs_sending(ts_ms, resend_delay_ms):
                continue
            a.last_sent_at_ms = ts_ms
            # Valid for four sends' worth, allowing for two failed evaluations or sends.
            a.valid_until_ms = ts_ms + 4 * max(resend_delay_ms, interval_ms)
            ends = a.resolved_at_ms if a.resolved_at_ms is not None else a.valid_until_ms
            out.append({
                "labels": dict(a.labels),
                "annotations": dict(a.annotations),
                # Prometheus sends FiredAt (zero while pending, which is never sent).
                "startsAt": rfc3339_millis(a.fired_at_ms if a.fired_at_ms is not None
                                           else a.active_at_ms),
                "endsAt": rfc3339_millis(ends),
                "generatorURL": generator_url,
            })
        return out


# ---- groups --------------------------------------------------------------------------------------

def group_label(namespace: str, name: str) -> str:
    return "%s;%s" % (namespace, name)


class Group:
    """One rule group of one tenant, evaluated on its own timer."""

    def __init__(self, mgr: "RuleManager", tenant: str, namespace: str, rg: RuleGroup,
                 restore: bool) -> None:
        self.mgr = mgr
        self.tenant = tenant
        self.namespace = namespace
        self.rg = rg
        # Prometheus' group `limit`: a rule producing more series (alerts) fails (0: none).
        self.limit = max(0, rg.limit)
        self.interval_ms = rg.interval_ms or mgr.config.evaluation_interval_ms
        self.rules: list[RuleBase] = [
            AlertingRule(r, restored=not restore) if r.alert else RecordingRule(r) for r in rg.rules]
        self.should_restore = restore
        self.iterations_done = 0
        self.last_evaluation_ms: int | None = None
        self.evaluation_time_s = 0.0
        self.eval_ts_ms: int | None = None
        self.stale_series: list[Labels] = []     # from a previous version of the group
        self._call: Any = None
        self._running = False
        self._busy: defer.Deferred[Any] | None = None
        self.label = group_label(namespace, rg.name)

    @property
    def name(self) -> str:
        return self.rg.name

    def query_offset_ms(self) -> int:
        if self.rg.query_offset_ms is not None:
            return self.rg.query_offset_ms
        if self.rg.evaluation_delay_ms is not None:
            return self.rg.evaluation_delay_ms
        return self.mgr.default_query_offset_ms(self.tenant)

    def hash_offset_ms(self) -> int:
        if self.rg.align_evaluation_time_on_interval:
            return 0
        return _fnv64a(("%s;%s" % (self.rg.name, self.namespace)).encode()) % self.interval_ms

    def eval_timestamp(self, now_ms: int) -> int:
        """The latest aligned evaluation time at or before now (Prometheus' EvalTimestamp)."""
        offset = self.hash_offset_ms()
        adj = now_ms - offset
        return adj - adj % self.interval_ms + offset

    # ---- lifecycle ----

    def start(self) -> None:
        self._running = True
        now = self.mgr.now_ms()
        if self.eval_ts_ms is None:
            self.eval_ts_ms = self.eval_timestamp(now)
        self._schedule(self.eval_ts_ms + self.interval_ms)

    def stop(self) -> None:
        self._running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self, at_ms: int) -> None:
        if not self._running:
            return
        delay = max(0.0, (at_ms - self.mgr.now_ms()) / 1000.0)
        self._call = self.mgr.clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._call = None
        if not self._running:
            return
        assert self.eval_ts_ms is not None
        now = self.mgr.now_ms()
        missed = (now - self.eval_ts_ms) // self.interval_ms - 1
        m = self.mgr.metrics
        if missed > 0:
            m.iterations_missed.labels(self.tenant, self.label).inc(missed)
            m.iterations.labels(self.tenant, self.label).inc(missed)
        self.eval_ts_ms += (max(missed, 0) + 1) * self.interval_ms
        ts = self.eval_ts_ms
        d = self.iterate(ts)
        self._busy = d          # None again once done (at once if it completed synchronously)

        def restore(_: Any) -> Any:
            # As Prometheus: restore after the second evaluation, once recording rules have
            # refreshed the values the alerts may depend on.
            self.iterations_done += 1
            if self.should_restore and self._running and self.iterations_done >= 2:
                self.should_restore = False
                return self.restore_for_state(self.mgr.now_ms())
            return None

        def next_one(_: Any) -> None:
            self._busy = None
            self._schedule(ts + self.interval_ms)
        d.addCallback(restore)
        d.addErrback(lambda f: log.error("rule group %s of tenant %s: %s", self.label, self.tenant,
                                         f.getErrorMessage()))
        d.addCallback(next_one)

    # ---- evaluation ----

    def iterate(self, ts_ms: int) -> "defer.Deferred[None]":
        """Evaluate every rule at ts_ms, one after another; Deferred fires when all are done."""
        m = self.mgr.metrics
        m.iterations.labels(self.tenant, self.label).inc()
        started = self.mgr.clock.seconds()
        query_t = ts_ms - self.query_offset_ms()
        counted = [0]
        chain: defer.Deferred[Any] = defer.succeed(None)

        def one(_: Any, rule: RuleBase) -> "defer.Deferred[None]":
            return self.eval_rule(rule, ts_ms, query_t, counted)
        for rule in self.rules:
            chain.addCallback(one, rule)

        def stale(_: Any) -> Any:
            # Series of rules a change removed, after this evaluation's own samples: a renamed
            # rule that now writes one of them wins (the marker is a duplicate and dropped).
            if not self.stale_series:
                return None
            series, self.stale_series = self.stale_series, []
            return self._push([(s, query_t, STALE_NAN) for s in series]).addErrback(
                lambda f: log.warning("stale markers of %s: %s", self.label, f.getErrorMessage()))
        chain.addCallback(stale)

        def done(_: Any) -> None:
            self.evaluation_time_s = max(0.0, self.mgr.clock.seconds() - started)
            # Prometheus shows the wall-clock start of the evaluation as lastEvaluation.
            self.last_evaluation_ms = int(started * 1000)
            m.last_duration.labels(self.tenant, self.label).set(self.evaluation_time_s)
            m.group_duration.labels(self.tenant).observe(self.evaluation_time_s)
            m.last_samples.labels(self.tenant, self.label).set(counted[0])
            m.last_eval_ts.labels(self.tenant, self.label).set(ts_ms / 1000.0)
        return chain.addCallback(done)

    def _push(self, samples: list[tuple[Labels, int, float]]) -> "defer.Deferred[Any]":
        if not samples:
            return defer.succeed(None)
        return self.mgr.pusher.push(self.tenant, samples)

    def eval_rule(self, rule: RuleBase, ts_ms: int, query_t: int,
                  counted: list[int]) -> "defer.Deferred[None]":
        m = self.mgr.metrics
        m.evaluations.labels(self.tenant, self.label).inc()
        started = self.mgr.clock.seconds()
        timeout_s = self.interval_ms / 1000.0
        if self.rg.source_tenants:
            # Querying the source tenants needs tenant federation in the query path; answering
            # from the owner's own data instead would be silently wrong.
            d: defer.Deferred[Any] = defer.fail(EvalError(
                "federated rule groups (source_tenants) are not evaluated: this urdar has no "
                "tenant federation in its query path"))
        else:
            d = self.mgr.query(self.tenant, rule.rule.expr, query_t, timeout_s)
        d.addCallback(lambda res: self.mgr.off(result_vector, res))
        if isinstance(rule, AlertingRule):
            d.addCallback(self._alert_samples, rule, ts_ms, query_t, timeout_s)
            if self.mgr.notify is not None:
                d.addCallback(self._send, rule, ts_ms)
        else:
            assert isinstance(rule, RecordingRule)
            d.addCallback(lambda vec: self.mgr.off(rule.samples, vec, query_t, self.limit))

        def write(res: tuple[list[tuple[Labels, int, float]], set[Labels], int]) -> Any:
            out, current, n = res
            counted[0] += n

            def written(_: Any) -> None:
                rule.series_in_previous_eval = current
            return self._push(out).addCallback(written)

        def ok(_: Any) -> None:
            rule.health = "ok"
            rule.last_error = ""

        def failed(f: Any) -> None:
            rule.health = "err"
            rule.last_error = f.getErrorMessage()
            m.failures.labels(self.tenant, self.label).inc()
            log.info("rule %s of group %s (tenant %s) failed: %s", rule.name, self.label,
                     self.tenant, rule.last_error)

        def timing(_: Any) -> None:
            rule.last_evaluation_ms = int(started * 1000)
            rule.evaluation_time_s = max(0.0, self.mgr.clock.seconds() - started)
            m.eval_duration.labels(self.tenant).observe(rule.evaluation_time_s)
        d.addCallback(lambda samples: self.mgr.off(with_stale_markers, samples,
                                                   rule.series_in_previous_eval, query_t))
        d.addCallback(write)

        def timed_out(result: Any, timeout: float) -> Any:
            raise EvalError("rule evaluation timed out after %gs" % timeout)
        # The whole evaluation (query, templates, push) ends within one interval, so a stuck
        # write cannot stall the group for good.
        d.addTimeout(timeout_s, self.mgr.clock, onTimeoutCancel=timed_out)
        d.addCallbacks(ok, failed)
        return d.addCallback(timing)

    def _alert_samples(self, vector: list[tuple[Labels, float]], rule: AlertingRule, ts_ms: int,
                       query_t: int, timeout_s: float) -> "defer.Deferred[Any]":
        answers: dict[str, Any] = {}
        ext = dict(self.mgr.config.external_labels)
        url = self.mgr.config.external_url

        def round_(n: int) -> Any:
            missing: set[str] = set()
            d = self.mgr.off(self._render_catching, rule, vector, ts_ms, url, ext, answers, missing)

            def check(res: tuple[Any, Exception | None]) -> Any:
                rendered, err = res
                if missing and n < MAX_TEMPLATE_QUERY_ROUNDS:
                    return self._answer(sorted(missing), answers, ts_ms, timeout_s).addCallback(
                        lambda _: round_(n + 1))
                if err is not None:
                    raise err
                return rule.update(rendered, ts_ms, query_t, self.limit)
            return d.addCallback(check)
        return round_(0)

    @staticmethod
    def _render_catching(rule: AlertingRule, *args: Any) -> tuple[Any, Exception | None]:
        try:
            return rule.render(*args), None
        except EvalError as exc:
            return None, exc

    def _answer(self, queries: list[str], answers: dict[str, Any], ts_ms: int,
                timeout_s: float) -> "defer.Deferred[Any]":
        """Reactor: run the templates' queries (at the evaluation time, as Prometheus does),
        at most MAX_TEMPLATE_QUERIES distinct ones per rule evaluation, MAX_CONCURRENT_QUERIES
        at a time; results become sample lists in the pool."""
        ds = []
        sem = defer.DeferredSemaphore(MAX_CONCURRENT_QUERIES)
        for q in queries:
            if len(answers) >= MAX_TEMPLATE_QUERIES:
                answers[q] = ValueError("more than %d distinct queries in this rule's templates"
                                        % MAX_TEMPLATE_QUERIES)
                continue
            answers[q] = ValueError("query did not finish")     # until it does

            def keep(vec: list[tuple[Labels, float]], q: str = q) -> None:
                answers[q] = vec

            def bad(f: Any, q: str = q) -> None:
                answers[q] = ValueError(f.getErrorMessage())

            def run(q: str = q) -> "defer.Deferred[Any]":
                d = self.mgr.query(self.tenant, q, ts_ms, timeout_s)
                return d.addCallback(lambda res: self.mgr.off(result_vector, res))
            ds.append(sem.run(run).addCallbacks(keep, bad))
        return defer.gatherResults(ds)

    def _send(self, samples: Any, rule: AlertingRule, ts_ms: int) -> Any:
        url = self.mgr.config.external_url.rstrip("/") + table_link(rule.rule.expr)
        alerts = rule.alerts_to_send(ts_ms, self.mgr.config.resend_delay_ms, self.interval_ms, url)
        if alerts and self.mgr.notify is not None:
            try:
                self.mgr.notify(self.tenant, alerts)
            except Exception:
                log.exception("sending alerts of tenant %s", self.tenant)
        return samples

    # ---- restore ----

    def restore_for_state(self, now_ms: int) -> "defer.Deferred[None]":
        """Prometheus' RestoreForState: each active alert's ActiveAt from the last sample of its
        ALERTS_FOR_STATE series (within -ruler.for-outage-tolerance), shifted by the outage.
        One read per alerting rule; a failed read leaves the rule's alerts as they are."""
        cfg = self.mgr.config
        mint = now_ms - cfg.for_outage_tolerance_ms
        ds = []
        for rule in self.rules:
            if not isinstance(rule, AlertingRule):
                continue
            if rule.rule.for_ms < cfg.for_grace_period_ms:
                rule.restored = True
                continue
            ms = [Matcher("=", "__name__", ALERT_FOR_STATE_METRIC),
                  Matcher("=", "alertname", rule.rule.alert)]
            d = self.mgr.select(self.tenant, ms, mint, now_ms)
            d.addCallback(lambda series: self.mgr.off(_last_samples, series))
            d.addCallback(self._restore_rule, rule, now_ms)
            d.addErrback(lambda f: log.warning("restoring alert state of %s: %s", self.label,
                                               f.getErrorMessage()))
            ds.append(d)

        def mark(_: Any) -> None:
            for rule in self.rules:
                if isinstance(rule, AlertingRule):
                    rule.restored = True
        return defer.gatherResults(ds).addCallback(mark)

    def _restore_rule(self, last: dict[Labels, tuple[int, float]], rule: AlertingRule,
                      now_ms: int) -> None:
        hold = rule.rule.for_ms
        grace = self.mgr.config.for_grace_period_ms
        for a in rule.active.values():
            got = last.get(a.labels)
            if got is None:
                continue
            t, v = got
            if struct.pack("<d", v) == struct.pack("<d", STALE_NAN):
                continue        # the alert was not active any more
            down_ms = (t // 1000) * 1000
            active_ms = int(v) * 1000
            remaining = hold - (down_ms - active_ms)
            if remaining <= 0:
                continue        # it was firing: the next evaluation fires it again if still true
            if remaining < grace:
                active_ms = now_ms + grace - hold
            else:
                active_ms += now_ms - down_ms
            a.active_at_ms = active_ms


def _last_samples(series: list[Any]) -> dict[Labels, tuple[int, float]]:
    """Pool thread: {labels without __name__: (t, v) of the last sample} of selected series."""
    out = {}
    for item in series:
        key, ts, vals = item[0], item[1], item[2]
        if len(ts):
            labels = tuple(sorted((k, v) for k, v in decode_labels(key) if k != "__name__"))
            out[labels] = (int(ts[-1]), float(vals[-1]))
    return out


# ---- the manager ---------------------------------------------------------------------------------

class RulerMetrics:
    def __init__(self, registry: Any = None) -> None:
        from prometheus_client import Counter, Gauge
        L = ["user", "rule_group"]
        self.evaluations = Counter("cortex_prometheus_rule_evaluations_total",
                                   "The total number of rule evaluations.", L, registry=registry)
        self.failures = Counter("cortex_prometheus_rule_evaluation_failures_total",
                                "The total number of rule evaluation failures.", L, registry=registry)
        self.iterations = Counter("cortex_prometheus_rule_group_iterations_total",
                                  "The total number of scheduled rule group evaluations, whether "
                                  "executed or missed.", L, registry=registry)
        self.iterations_missed = Counter("cortex_prometheus_rule_group_iterations_missed_total",
                                         "The total number of rule group evaluations missed due "
                                         "to slow rule group evaluation.", L, registry=registry)
        self.last_duration = Gauge("cortex_prometheus_rule_group_last_duration_seconds",
                                   "The duration of the last rule group evaluation.", L,
                                   registry=registry)
        self.last_samples = Gauge("cortex_prometheus_last_evaluation_samples",
                                  "The number of samples returned during the last rule group "
                                  "evaluation.", L, registry=registry)
        self.last_eval_ts = Gauge("cortex_prometheus_rule_group_last_evaluation_timestamp_seconds",
                                  "The timestamp of the last rule group evaluation in seconds.", L,
                                  registry=registry)
        self.rules = Gauge("cortex_prometheus_rule_group_rules", "The number of rules.", L,
                           registry=registry)
        self.interval = Gauge("cortex_prometheus_rule_group_interval_seconds",
                              "The interval of a rule group.", L, registry=registry)
        from prometheus_client import Summary
        self.eval_duration = Summary("cortex_prometheus_rule_evaluation_duration_seconds",
                                     "The duration for a rule to execute.", ["user"],
                                     registry=registry)
        self.group_duration = Summary("cortex_prometheus_rule_group_duration_seconds",
                                      "The duration of rule group evaluations.", ["user"],
                                      registry=registry)
        self._all = (self.evaluations, self.failures, self.iterations, self.iterations_missed,
                     self.last_duration, self.last_samples, self.last_eval_ts, self.rules,
                     self.interval)

    def remove(self, tenant: str, label: str) -> None:
        for m in self._all:
            try:
                m.remove(tenant, label)
            except KeyError:
                pass


class RuleManager:
    """Every tenant's rule groups, evaluated (see the module docstring)."""

    def __init__(self, store: "RuleStore | None", query: QueryFunc, select: SelectFunc,
                 pusher: Pusher, clock: Any, config: RuleManagerConfig | None = None,
                 offload: "Offload | None" = None, pool: str = "ruler",
                 notify: Notify | None = None, overrides: Any = None, registry: Any = None) -> None:
        self.store = store
        self.query = query
        self.select = select
        self.pusher = pusher
        self.clock = clock
        self.config = config if config is not None else RuleManagerConfig()
        self.offload = offload
        self.pool = pool
        self.notify = notify
        self.overrides = overrides
        self.metrics = RulerMetrics(registry)
        self.groups: dict[str, dict[tuple[str, str], Group]] = {}
        self._loaded_tenants: set[str] = set()
        self._loop: task.LoopingCall | None = None
        self._syncing: dict[str, defer.Deferred[Any]] = {}
        self._again: dict[str, bool] = {}      # tenant -> the re-run's restore_new
        self._pending_stale: set[Any] = set()
        self.running = False
        # With a ruler ring: whether this ruler evaluates (tenant, namespace, group), and the
        # other rulers the read API asks for theirs (components/rulershard.py).
        self.owns: Callable[[str, str, str], bool] | None = None
        self.peers: Any = None

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def off(self, fn: Callable[..., Any], *args: Any) -> "defer.Deferred[Any]":
        if self.offload is None:
            return defer.maybeDeferred(fn, *args)
        return self.offload.run(self.pool, fn, *args)

    def default_query_offset_ms(self, tenant: str) -> int:
        if self.overrides is None:
            return 0
        lim = self.overrides.for_tenant(tenant)
        return int(getattr(lim, "ruler_evaluation_delay_duration", 0) or 0)

    # ---- lifecycle ----

    def start(self) -> "defer.Deferred[None]":
        """Load every tenant's groups (the Deferred fires then; a failure is logged and the next
        poll retries) and poll the store from now on."""
        self.running = True
        d = self.sync().addErrback(lambda f: log.error("ruler sync: %s", f.getErrorMessage()))
        self._loop = task.LoopingCall(self._poll)
        self._loop.clock = self.clock
        self._loop.start(self.config.poll_interval_ms / 1000.0, now=False)
        return d

    def _poll(self) -> None:
        self.sync().addErrback(lambda f: log.error("ruler sync: %s", f.getErrorMessage()))

    def stop(self) -> None:
        self.running = False
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for groups in self.groups.values():
            for g in groups.values():
                g.stop()
        for call in list(self._pending_stale):
            if call.active():
                call.cancel()
        self._pending_stale.clear()

    # ---- loading ----

    def sync(self, restore_new: bool = False) -> "defer.Deferred[None]":
        """Re-read every tenant's groups from the store; tenants gone from it stop.
        `restore_new` (after a ruler ring change): groups new here restore their `for` state,
        which the ruler that evaluated them before left in ALERTS_FOR_STATE."""
        assert self.store is not None

        def each(tenants: list[str]) -> Any:
            for gone in set(self.groups) - set(tenants):
                self.set_groups(gone, [])
            return defer.gatherResults([self.sync_tenant(t, restore_new) for t in tenants])
        return self.store.list_tenants().addCallback(each).addCallback(lambda _: None)

    def sync_tenant(self, tenant: str, restore_new: bool = False) -> "defer.Deferred[None]":
        """Re-read one tenant's groups this ruler owns (after a change through the
        configuration API); a sync asked for while one runs runs again after it."""
        assert self.store is not None
        if tenant in self._syncing:
            self._again[tenant] = self._again.get(tenant, False) or restore_new
            return self._syncing[tenant]
        store = self.store

        def load(groups: list[tuple[str, str]]) -> Any:
            if self.owns is not None:
                owns = self.owns
                groups = [(ns, g) for ns, g in groups if owns(tenant, ns, g)]
            return store.load_groups(tenant, groups) if groups else []

        def apply(loaded: list[tuple[str, RuleGroup]]) -> None:
            if self.running:
                self.set_groups(tenant, loaded, restore_new=restore_new)

        def done(result: Any) -> Any:
            self._syncing.pop(tenant, None)
            if tenant in self._again:
                self.sync_tenant(tenant, self._again.pop(tenant)).addErrback(
                    lambda f: log.error("ruler sync of %s: %s", tenant, f.getErrorMessage()))
            return result
        # Registered before the chain runs: with a synchronous store it completes right here.
        d: defer.Deferred[Any] = defer.Deferred()
        self._syncing[tenant] = d
        d.addCallback(lambda _: store.list_groups(tenant)).addCallback(load).addCallback(apply)
        d.addBoth(done)
        d.addErrback(lambda f: log.error("ruler sync of %s: %s", tenant, f.getErrorMessage()))
        d.callback(None)
        return d

    def set_groups(self, tenant: str, loaded: Iterable[tuple[str, RuleGroup]],
                   restore: bool | None = None, restore_new: bool = False) -> None:
        """Make `loaded` the tenant's groups: unchanged groups keep running, changed ones restart
        with their rules' state carried over, removed ones stop and mark their series stale.
        `restore_new`: groups not here before restore their `for` state (taken over from
        another ruler) even when this is not the tenant's first load."""
        old = self.groups.get(tenant, {})
        # Prometheus restores `for` state for the groups of a manager's first load only.
        first = tenant not in self._loaded_tenants if restore is None else restore
        self._loaded_tenants.add(tenant)
        new: dict[tuple[str, str], Group] = {}
        for ns, rg in loaded:
            key = (ns, rg.name)
            prev = old.get(key)
            if prev is not None and prev.rg == rg:
                new[key] = prev
                if self.running and not prev._running:
                    prev.eval_ts_ms = None      # a restarted manager: the next slot from now
                    prev.start()
                continue
            g = Group(self, tenant, ns, rg, restore=first or (restore_new and prev is None))
            self.metrics.rules.labels(tenant, g.label).set(len(g.rules))
            self.metrics.interval.labels(tenant, g.label).set(g.interval_ms / 1000.0)
            new[key] = g
            if prev is not None:
                prev.stop()
                if prev._busy is not None:
                    # As Prometheus waits for the old group to terminate: its evaluation in
                    # flight finishes first, then the new group takes over its state.
                    prev._busy.addBoth(self._take_over, prev, g)
                    continue
                self._carry_state(prev, g)
            if self.running:
                g.start()
        for key, g in old.items():
            if key not in new:
                g.stop()
                self._mark_stale(g)
                self.metrics.remove(tenant, g.label)
        if new:
            self.groups[tenant] = new
        else:
            self.groups.pop(tenant, None)

    def _take_over(self, result: Any, old: Group, new: Group) -> Any:
        self._carry_state(old, new)
        if self.running and self.groups.get(new.tenant, {}).get((new.namespace, new.name)) is new:
            new.start()
        return result

    @staticmethod
    def _carry_state(old: Group, new: Group) -> None:
        """Prometheus' CopyState: rules matched by name and labels (in order) keep their series
        and active alerts; series of rules that are gone are marked stale at the next evaluation."""
        by_key: dict[str, list[RuleBase]] = {}
        for r in old.rules:
            by_key.setdefault(r.key(), []).append(r)
        new.evaluation_time_s = old.evaluation_time_s
        new.last_evaluation_ms = old.last_evaluation_ms
        if old.interval_ms == new.interval_ms:
            new.eval_ts_ms = old.eval_ts_ms
        used: set[int] = set()
        for r in new.rules:
            olds = by_key.get(r.key())
            if not olds:
                continue
            o = olds.pop(0)
            used.add(id(o))
            r.series_in_previous_eval = o.series_in_previous_eval
            r.health, r.last_error = o.health, o.last_error
            r.last_evaluation_ms, r.evaluation_time_s = o.last_evaluation_ms, o.evaluation_time_s
            if isinstance(r, AlertingRule) and isinstance(o, AlertingRule):
                r.active = o.active
                r.restored = o.restored or r.restored
        for o in old.rules:
            if id(o) not in used:
                new.stale_series.extend(sorted(o.series_in_previous_eval))

    def _mark_stale(self, g: Group) -> None:
        """A removed group's series get stale markers stamped with the removal time, written two
        intervals later (as Prometheus does): a renamed rule that writes the same series in the
        meantime makes them out of order, so they are dropped instead of cutting its series."""
        series = sorted({s for r in g.rules for s in r.series_in_previous_eval})
        if not series:
            return
        t = self.now_ms() - g.query_offset_ms()

        def write() -> None:
            self._pending_stale.discard(call)
            if not self.running:
                return
            self.pusher.push(g.tenant, [(s, t, STALE_NAN) for s in series]).addErrback(
                lambda f: log.warning("stale markers of removed group %s: %s", g.label,
                                      f.getErrorMessage()))
        call = self.clock.callLater(2 * g.interval_ms / 1000.0, write)
        self._pending_stale.add(call)

    # ---- reads (the Prometheus rules and alerts API) ----

    def tenant_groups(self, tenant: str) -> list[Group]:
        return sorted(self.groups.get(tenant, {}).values(), key=lambda g: (g.namespace, g.name))

    def rules_api(self, tenant: str, rule_type: str = "", rule_names: Sequence[str] = (),
                  groups: Sequence[str] = (), files: Sequence[str] = ()) -> dict[str, Any]:
        """The data of GET /api/v1/rules for the tenant's groups evaluated here, with its
        filters (Mimir's shapes)."""
        return filter_rules(self.group_dicts(tenant), rule_type, rule_names, groups, files)

    def alerts_api(self, tenant: str) -> dict[str, Any]:
        """The data of GET /api/v1/alerts: every pending or firing alert of the tenant's groups
        evaluated here."""
        return alerts_of(self.group_dicts(tenant))

    def all_groups(self, tenant: str) -> "defer.Deferred[list[dict[str, Any]]]":
        """group_dicts of the tenant's groups on every ruler (this one's and `peers`'), by
        namespace and name; a group two rulers report while it moves between them once."""
        local = self.group_dicts(tenant)
        if self.peers is None:
            return defer.succeed(local)

        def merge(remote: list[dict[str, Any]]) -> list[dict[str, Any]]:
            seen: set[tuple[str, str]] = set()
            out = []
            for g in local + remote:
                key = (str(g.get("file")), str(g.get("name")))
                if key not in seen:
                    seen.add(key)
                    out.append(g)
            return sorted(out, key=lambda g: (str(g.get("file")), str(g.get("name"))))
        d: defer.Deferred[list[dict[str, Any]]] = self.peers.groups(tenant).addCallback(merge)
        return d

    def group_dicts(self, tenant: str) -> list[dict[str, Any]]:
        """Every group of the tenant evaluated here as the rules API shows it, unfiltered (what
        this ruler answers to the others' fan-out)."""
        out = []
        for g in self.tenant_groups(tenant):
            rules: list[dict[str, Any]] = []
            for r in g.rules:
                if isinstance(r, AlertingRule):
                    rules.append({
                        "state": STATE_NAMES[r.state()], "name": r.name, "query": r.rule.expr,
                        "duration": r.rule.for_ms / 1000.0,
                        "keepFiringFor": r.rule.keep_firing_for_ms / 1000.0,
                        "labels": dict(sorted(r.rule.labels.items())),
                        "annotations": dict(sorted(r.rule.annotations.items())),
                        "alerts": [alert_json(a) for a in sorted(r.active.values(),
                                                                 key=lambda a: a.labels)
                                   if a.state != INACTIVE],
                        "health": r.health, "lastError": r.last_error, "type": "alerting",
                        "lastEvaluation": go_time(r.last_evaluation_ms),
                        "evaluationTime": r.evaluation_time_s})
                else:
                    rules.append({
                        "name": r.name, "query": r.rule.expr,
                        "labels": dict(sorted(r.rule.labels.items())),
                        "health": r.health, "lastError": r.last_error, "type": "recording",
                        "lastEvaluation": go_time(r.last_evaluation_ms),
                        "evaluationTime": r.evaluation_time_s})
            out.append({"name": g.name, "file": g.namespace, "rules": rules,
                        "interval": g.interval_ms / 1000.0,
                        "lastEvaluation": go_time(g.last_evaluation_ms),
                        "evaluationTime": g.evaluation_time_s,
                        "sourceTenants": list(g.rg.source_tenants) or None})
        return out


def filter_rules(groups: list[dict[str, Any]], rule_type: str = "", rule_names: Sequence[str] = (),
                 group_names: Sequence[str] = (), files: Sequence[str] = ()) -> dict[str, Any]:
    """The data of GET /api/v1/rules from group_dicts with its filters: type (alert|record),
    rule_name[], rule_group[], file[]; with a rule filter, groups left without rules go."""
    out = []
    names, gnames, fnames = set(rule_names), set(group_names), set(files)
    for g in groups:
        if fnames and g.get("file") not in fnames:
            continue
        if gnames and g.get("name") not in gnames:
            continue
        rules = [r for r in g.get("rules") or ()
                 if (not names or r.get("name") in names)
                 and not (rule_type == "record" and r.get("type") == "alerting")
                 and not (rule_type == "alert" and r.get("type") == "recording")]
        if (names or rule_type) and not rules:
            continue
        out.append(dict(g, rules=rules))
    return {"groups": out}


def alerts_of(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The data of GET /api/v1/alerts from group_dicts: their pending and firing alerts."""
    alerts: list[dict[str, Any]] = []
    for g in groups:
        for r in g.get("rules") or ():
            if r.get("type") == "alerting":
                alerts.extend(r.get("alerts") or ())
    return {"alerts": alerts}


def alert_json(a: Alert) -> dict[str, Any]:
    """An alert as Prometheus 3.x's API writes it: keepFiringSince only while a firing alert is
    kept firing by keep_firing_for (its expression no longer true)."""
    out: dict[str, Any] = {"labels": dict(a.labels), "annotations": dict(a.annotations),
                           "state": STATE_NAMES[a.state], "activeAt": go_time(a.active_at_ms)}
    if a.keep_firing_since_ms is not None:
        out["keepFiringSince"] = go_time(a.keep_firing_since_ms)
    out["value"] = format_float_e(a.value)
    return out
