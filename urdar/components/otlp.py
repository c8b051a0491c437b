"""OTLP metrics -> Prometheus series, as Prometheus' OTLP translator and Mimir's distributor do it.

`parse_request(raw, content_type)` turns an ExportMetricsServiceRequest body (protobuf via the
`opentelemetry-proto` classes on the upb runtime, or OTLP/JSON) into the message; `translate(req)`
walks it into `Translation`: series [(labels, samples, exemplars)] merged by label set, metadata
(type, family, help, unit) and the points that could not be converted (delta temporality,
exponential histograms, empty metrics) with one message per metric. components/distributor.py
encodes the series as a remote-write WriteRequest and sends it down the same decode / validate /
limit / ingester path as /api/v1/push, so both write paths share one set of rules.

Mapping (per data point, timestamps ns -> ms by integer division):
- gauge -> `<name>`; sum: monotonic+cumulative -> counter `<name>` (`_total` with suffixes),
  non-monotonic cumulative -> gauge; delta/unspecified temporality -> dropped.
- histogram (cumulative) -> `<name>_bucket{le}` with cumulative counts and `le="+Inf"` = count,
  `<name>_sum` (when set), `<name>_count`; exemplars go to the first bucket whose bound >= value.
- summary -> `<name>{quantile}`, `<name>_sum`, `<name>_count`.
- data point attributes -> labels (sanitised; names colliding after sanitising join values with
  ';'); resource service.namespace/service.name -> `job`, service.instance.id -> `instance`; the
  other resource attributes -> one `target_info` sample (value 1, at the resource's newest point).
- the no-recorded-value flag -> Prometheus' stale marker on every series of that point.
Metric names: invalid characters -> `_` (runs collapse); with `add_suffixes` (Mimir's
-distributor.otel-metric-suffixes-enabled) the unit (`_seconds`, `_bytes`, `_per_second`...),
`_total` for counters and `_ratio` for unit "1" gauges are appended as Prometheus does."""
import base64
import json
import math
import re
import struct
from dataclasses import dataclass, field
from decimal import Decimal

# Prometheus' stale marker: a NaN with this exact bit pattern.
STALE_NAN = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
STALE_NAN_BITS = 0x7FF0000000000002

# MetricMetadata.type values (remote-write proto).
COUNTER, GAUGE, HISTOGRAM, SUMMARY = 1, 2, 3, 5

SERVICE_NAME = "service.name"
SERVICE_NAMESPACE = "service.namespace"
SERVICE_INSTANCE_ID = "service.instance.id"
IDENTIFYING = (SERVICE_NAMESPACE, SERVICE_NAME, SERVICE_INSTANCE_ID)

NO_RECORDED_VALUE = 1          # DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
CUMULATIVE = 2                 # AggregationTemporality
MAX_EXEMPLAR_RUNES = 128       # OpenMetrics' limit on an exemplar's label set

# OTel unit -> Prometheus unit word (the "main" unit), and the "per" unit words.
UNITS = {
    "d": "days", "h": "hours", "min": "minutes", "s": "seconds", "ms": "milliseconds",
    "us": "microseconds", "ns": "nanoseconds",
    "By": "bytes", "KiBy": "kibibytes", "MiBy": "mebibytes", "GiBy": "gibibytes",
    "TiBy": "tibibytes", "KBy": "kilobytes", "MBy": "megabytes", "GBy": "gigabytes",
    "TBy": "terabytes",
    "m": "meters", "V": "volts", "A": "amperes", "J": "joules", "W": "watts", "g": "grams",
    "Cel": "celsius", "Hz": "hertz", "1": "", "%": "percent",
}
PER_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month",
             "y": "year"}

_INVALID_METRIC_CHAR = re.compile(r"[^a-zA-Z0-9:_]+")
_INVALID_LABEL_CHAR = re.compile(r"[^a-zA-Z0-9_]")
_NON_ALNUM = re.compile(r"[^a-zA-Z0-9]+")
_TOKEN_SPLIT = re.compile(r"[^a-zA-Z0-9:]+")


class OTLPError(ValueError):
    """The body is not a well-formed ExportMetricsServiceRequest."""


# ---- parsing ------------------------------------------------------------------------------------

def _messages():
    # Imported lazily: the opentelemetry-proto classes cost ~50 ms to load.
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
    return metrics_service_pb2


def parse_request(raw, json_body=False):
    """ExportMetricsServiceRequest from protobuf bytes (or OTLP/JSON when json_body)."""
    pb = _messages()
    req = pb.ExportMetricsServiceRequest()
    if json_body:
        from google.protobuf import json_format
        try:
            doc = json.loads(bytes(raw))
            _hex_ids_to_base64(doc)
            json_format.ParseDict(doc, req, ignore_unknown_fields=True)
        except Exception as exc:
            raise OTLPError("unmarshal OTLP/JSON request: %s" % (exc,)) from None
        return req
    try:
        req.ParseFromString(raw)
    except Exception as exc:
        raise OTLPError("unmarshal OTLP protobuf request: %s" % (exc,)) from None
    return req


def _hex_ids_to_base64(node):
    """OTLP/JSON spells exemplar traceId/spanId in hex; protobuf's JSON mapping wants base64."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("traceId", "spanId", "trace_id", "span_id") and isinstance(v, str):
                try:
                    node[k] = base64.b64encode(bytes.fromhex(v)).decode("ascii")
                except ValueError:
                    pass
            else:
                _hex_ids_to_base64(v)
    elif isinstance(node, list):
        for v in node:
            _hex_ids_to_base64(v)


def response_bytes(rejected=0, message="", json_body=False):
    """ExportMetricsServiceResponse, with partial_success when points were rejected."""
    pb = _messages()
    resp = pb.ExportMetricsServiceResponse()
    if rejected or message:
        resp.partial_success.rejected_data_points = rejected
        resp.partial_success.error_message = message
    if json_body:
        from google.protobuf import json_format
        return json_format.MessageToJson(resp, indent=None).encode()
    return resp.SerializeToString()


# ---- names ----------------------------------------------------------------------------------------

def format_float(x):
    """Go's strconv.FormatFloat(x, 'f', -1, 64): shortest digits, never an exponent."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    r = repr(float(x))
    if "e" in r or "E" in r:
        r = format(Decimal(r), "f")
    if r.endswith(".0"):
        r = r[:-2]
    return r


def normalize_label(name):
    """A Prometheus label name for an OTel attribute key (Prometheus' NormalizeLabel)."""
    if not name:
        return name
    name = _INVALID_LABEL_CHAR.sub("_", name)
    if name[0].isdigit():
        return "key_" + name
    if name.startswith("_") and not name.startswith("__"):
        return "key" + name
    return name


def _clean_unit(word):
    return "_".join(p for p in _NON_ALNUM.split(word) if p)


def metric_name(name, unit, kind, monotonic=False, add_suffixes=False):
    """Prometheus metric (family) name for an OTel metric; kind is 'gauge', 'sum', 'histogram',
    'summary' or 'exponential_histogram'."""
    if not add_suffixes:
        out = "_".join(p for p in _INVALID_METRIC_CHAR.split(name) if p)
        if out and out[0].isdigit():
            out = "_" + out
        return out
    # Full normalisation: tokens of letters and digits, then unit, _total, _ratio.
    tokens = [p for p in _TOKEN_SPLIT.split(name) if p]
    main_unit, _, per_unit = unit.partition("/")
    main_unit, per_unit = main_unit.strip(), per_unit.strip()
    main_prom = per_prom = ""
    if main_unit and "{" not in main_unit and "}" not in main_unit:
        main_prom = _clean_unit(UNITS.get(main_unit, main_unit))
        if main_prom in tokens:
            main_prom = ""
    if per_unit and "{" not in per_unit and "}" not in per_unit:
        per_prom = _clean_unit(PER_UNITS.get(per_unit, per_unit))
        if per_prom:
            per_prom = "per_" + per_prom
            if per_prom in tokens:
                per_prom = ""
    if per_prom:
        main_prom = main_prom.rstrip("_")
    if main_prom:
        tokens.append(main_prom)
    if per_prom:
        tokens.append(per_prom)
    if kind == "sum" and monotonic:
        tokens = [t for t in tokens if t != "total"] + ["total"]
    if unit == "1" and kind == "gauge":
        tokens = [t for t in tokens if t != "ratio"] + ["ratio"]
    out = "_".join(tokens)
    if out and out[0].isdigit():
        out = "_" + out
    return out


# ---- attribute values -------------------------------------------------------------------------------

def any_value_string(v):
    """pcommon.Value.AsString() for an AnyValue message."""
    which = v.WhichOneof("value")
    if which == "string_value":
        return v.string_value
    if which == "bool_value":
        return "true" if v.bool_value else "false"
    if which == "int_value":
        return str(v.int_value)
    if which == "double_value":
        return format_float(v.double_value)
    if which == "bytes_value":
        return base64.b64encode(v.bytes_value).decode("ascii")
    if which in ("array_value", "kvlist_value"):
        return json.dumps(_any_raw(v), separators=(",", ":"), ensure_ascii=False)
    return ""


def _any_raw(v):
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_any_raw(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _any_raw(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(v.bytes_value).decode("ascii")
    if which is None:
        return None
    return getattr(v, which)


def _attrs(kvs):
    return [(kv.key, any_value_string(kv.value)) for kv in kvs]


# ---- translation ------------------------------------------------------------------------------------

@dataclass
class Translation:
    """What one request became. series: {label tuple: [samples [(t, v)], exemplars]}."""
    series: dict = field(default_factory=dict)
    metadata: list = field(default_factory=list)
    points: int = 0                 # data points seen
    dropped_points: int = 0         # data points that could not be converted
    errors: list = field(default_factory=list)

    histograms: dict = field(default_factory=dict)  # {label tuple: [(t, Histogram)]}

    def add(self, labels, t, v, exemplars=()):
        entry = self.series.get(labels)
        if entry is None:
            entry = self.series[labels] = ([], [])
        entry[0].append((t, v))
        if exemplars:
            entry[1].extend(exemplars)

    def add_histogram(self, labels, t, h, exemplars=()):
        if labels not in self.series:
            self.series[labels] = ([], [])
        self.histograms.setdefault(labels, []).append((t, h))
        if exemplars:
            self.series[labels][1].extend(exemplars)

    def write_series(self):
        """(labels, samples, exemplars, histograms) items for remotewrite.encode_write_request."""
        from urdar.engine.prompbhist import encode_histogram
        return [(list(labels), s, e, [encode_histogram(t, h) for t, h in self.histograms.get(labels, ())])
                for labels, (s, e) in self.series.items()]

    def error_message(self, limit=1024):
        """The conversion errors joined as Mimir does, cut to `limit` characters."""
        return "; ".join(self.errors)[:limit]


class _Resource:
    """Label-building context of one ResourceMetrics: job/instance and the newest timestamp."""

    def __init__(self, resource, keep_identifying=False):
        self.attributes = list(resource.attributes)
        attrs = dict(_attrs(self.attributes))
        self.job = None
        if SERVICE_NAME in attrs:
            ns = attrs.get(SERVICE_NAMESPACE)
            self.job = "%s/%s" % (ns, attrs[SERVICE_NAME]) if ns is not None else attrs[SERVICE_NAME]
        self.instance = attrs.get(SERVICE_INSTANCE_ID)
        self.keep_identifying = keep_identifying
        self.newest_ms = None

    def labels(self, attributes, extras, ignore=()):
        """Sorted label tuple: sanitised attributes, then job/instance, then extras (name, le...)."""
        pairs = sorted(((k, v) for k, v in _attrs(attributes) if k not in ignore), key=lambda kv: kv[0])
        out = {}
        for k, v in pairs:
            name = normalize_label(k)
            out[name] = out[name] + ";" + v if name in out else v
        if self.job is not None:
            out["job"] = self.job
        if self.instance is not None:
            out["instance"] = self.instance
        for name, value in extras:
            if not (len(name) > 4 and name.startswith("__") and name.endswith("__")):
                name = normalize_label(name)
            out[name] = value
        return tuple(sorted((k, v) for k, v in out.items() if v != ""))

    def saw(self, t_ms):
        if self.newest_ms is None or t_ms > self.newest_ms:
            self.newest_ms = t_ms


def _ms(ns):
    return int(ns) // 1_000_000


def _exemplars(pt):
    out = []
    for ex in pt.exemplars:
        runes = 0
        labels = []
        if ex.trace_id:
            val = ex.trace_id.hex()
            runes += len("trace_id") + len(val)
            labels.append(("trace_id", val))
        if ex.span_id:
            val = ex.span_id.hex()
            runes += len("span_id") + len(val)
            labels.append(("span_id", val))
        attrs = _attrs(ex.filtered_attributes)
        for k, v in attrs:
            runes += len(k) + len(v)
        if runes <= MAX_EXEMPLAR_RUNES:
            labels.extend(attrs)
        value = float(ex.as_int) if ex.WhichOneof("value") == "as_int" else ex.as_double
        out.append((labels, _ms(ex.time_unix_nano), value))
    return out


def _number(pt):
    if pt.flags & NO_RECORDED_VALUE:
        return STALE_NAN
    return float(pt.as_int) if pt.WhichOneof("value") == "as_int" else pt.as_double


def translate(req, add_suffixes=False, keep_identifying=False):
    """Walk an ExportMetricsServiceRequest into a Translation (see the module docstring)."""
    tr = Translation()
    for rm in req.resource_metrics:
        res = _Resource(rm.resource, keep_identifying)
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                _metric(tr, res, metric, add_suffixes)
        _target_info(tr, res, keep_identifying)
    return tr


def _metric(tr, res, metric, add_suffixes):
    kind = metric.WhichOneof("data")
    if kind is None:
        tr.errors.append("unsupported metric type for metric %r: no data" % metric.name)
        return
    data = getattr(metric, kind)
    points = data.data_points
    tr.points += len(points)
    if kind in ("sum", "histogram", "exponential_histogram") and \
            data.aggregation_temporality != CUMULATIVE:
        tr.dropped_points += len(points)
        tr.errors.append(
            "invalid temporality and type combination for metric %r: %s temporality is not "
            "supported, only cumulative; configure the exporter for cumulative temporality" % (
                metric.name, "delta" if data.aggregation_temporality == 1 else "unspecified"))
        return
    monotonic = kind == "sum" and data.is_monotonic
    name = metric_name(metric.name, metric.unit, kind, monotonic, add_suffixes)
    if not len(points):
        tr.errors.append("empty data points. %s is dropped" % name)
        return
    mtype = {"gauge": GAUGE, "sum": COUNTER if monotonic else GAUGE, "histogram": HISTOGRAM,
             "exponential_histogram": HISTOGRAM, "summary": SUMMARY}[kind]
    tr.metadata.append((mtype, name, metric.description, metric.unit))
    if kind in ("gauge", "sum"):
        for pt in points:
            t = _ms(pt.time_unix_nano)
            res.saw(t)
            ex = _exemplars(pt) if (monotonic and len(pt.exemplars)) else ()
            tr.add(res.labels(pt.attributes, (("__name__", name),)), t, _number(pt), ex)
    elif kind == "histogram":
        for pt in points:
            _histogram_point(tr, res, name, pt)
    elif kind == "exponential_histogram":
        for pt in points:
            _exponential_point(tr, res, name, pt)
    else:
        for pt in points:
            _summary_point(tr, res, name, pt)


def _histogram_point(tr, res, name, pt):
    t = _ms(pt.time_unix_nano)
    res.saw(t)
    stale = bool(pt.flags & NO_RECORDED_VALUE)
    if pt.HasField("sum"):
        tr.add(res.labels(pt.attributes, (("__name__", name + "_sum"),)), t,
               STALE_NAN if stale else pt.sum)
    tr.add(res.labels(pt.attributes, (("__name__", name + "_count"),)), t,
           STALE_NAN if stale else float(pt.count))
    bounds = list(pt.explicit_bounds)
    counts = list(pt.bucket_counts)
    buckets = []
    cumulative = 0
    for i in range(min(len(bounds), len(counts))):
        cumulative += counts[i]
        buckets.append((bounds[i], res.labels(pt.attributes, (
            ("__name__", name + "_bucket"), ("le", format_float(bounds[i])))),
            STALE_NAN if stale else float(cumulative)))
    buckets.append((math.inf, res.labels(pt.attributes, (
        ("__name__", name + "_bucket"), ("le", "+Inf"))), STALE_NAN if stale else float(pt.count)))
    # Each exemplar joins the first bucket whose upper bound holds its value.
    per_bucket = [[] for _ in buckets]
    order = sorted(range(len(buckets)), key=lambda i: buckets[i][0])
    for ex in (_exemplars(pt) if len(pt.exemplars) else ()):
        for i in order:
            if ex[2] <= buckets[i][0]:
                per_bucket[i].append(ex)
                break
    for (bound, labels, v), ex in zip(buckets, per_bucket):
        tr.add(labels, t, v, ex)


# Prometheus' OTLP translator: exponential histograms become native histograms of schema =
# scale, at most 8 (finer scales are merged down), at least -4 (coarser ones are refused), with
# its fixed zero threshold (the point's zero_threshold is not used).
MAX_SCALE = 8
MIN_SCALE = -4
OTLP_ZERO_THRESHOLD = 1e-128


def _exponential_point(tr, res, name, pt):
    from urdar.engine.histogram import Histogram
    t = _ms(pt.time_unix_nano)
    if pt.scale < MIN_SCALE:
        tr.dropped_points += 1
        tr.errors.append("cannot convert exponential to native histogram. Scale must be >= %d, "
                         "was %d" % (MIN_SCALE, pt.scale))
        return
    res.saw(t)
    scale_down = max(0, pt.scale - MAX_SCALE)
    pos_spans, pos = _native_buckets(pt.positive.offset, pt.positive.bucket_counts, scale_down)
    neg_spans, neg = _native_buckets(pt.negative.offset, pt.negative.bucket_counts, scale_down)
    if pt.flags & NO_RECORDED_VALUE:
        h = Histogram(schema=min(pt.scale, MAX_SCALE), zero_threshold=OTLP_ZERO_THRESHOLD,
                      count=STALE_NAN_BITS, sum=STALE_NAN)
    else:
        h = Histogram(schema=min(pt.scale, MAX_SCALE), zero_threshold=OTLP_ZERO_THRESHOLD,
                      zero_count=pt.zero_count, count=pt.count,
                      sum=pt.sum if pt.HasField("sum") else 0.0,
                      positive_spans=pos_spans, positive_buckets=pos,
                      negative_spans=neg_spans, negative_buckets=neg)
    tr.add_histogram(res.labels(pt.attributes, (("__name__", name),)), t, h,
                     _exemplars(pt) if len(pt.exemplars) else ())


def _native_buckets(offset, counts, scale_down):
    """(spans, integer deltas) of OTel buckets from index `offset` merged 2**scale_down to one.
    OTel's bucket i is (base**i, base**(i+1)], Prometheus' i is (base**(i-1), base**i]: one
    more. Empty buckets are left out, except gaps of up to two between filled ones, which are
    kept as zero buckets (as Prometheus' client and translator do) instead of a new span."""
    merged = {}
    for i, c in enumerate(counts):
        if c:
            k = ((offset + i) >> scale_down) + 1
            merged[k] = merged.get(k, 0) + c
    spans, deltas = [], []
    prev_idx = prev = None
    for k in sorted(merged):
        if prev_idx is None:
            spans.append([k, 0])
        elif k - prev_idx - 1 > 2:
            spans.append([k - prev_idx - 1, 0])
        else:
            for _ in range(k - prev_idx - 1):
                spans[-1][1] += 1
                deltas.append(-prev)
                prev = 0
        spans[-1][1] += 1
        deltas.append(merged[k] - (prev or 0))
        prev, prev_idx = merged[k], k
    return [tuple(sp) for sp in spans], deltas


def _summary_point(tr, res, name, pt):
    t = _ms(pt.time_unix_nano)
    res.saw(t)
    stale = bool(pt.flags & NO_RECORDED_VALUE)
    tr.add(res.labels(pt.attributes, (("__name__", name + "_sum"),)), t, STALE_NAN if stale else pt.sum)
    tr.add(res.labels(pt.attributes, (("__name__", name + "_count"),)), t,
           STALE_NAN if stale else float(pt.count))
    for q in pt.quantile_values:
        tr.add(res.labels(pt.attributes, (("__name__", name), ("quantile", format_float(q.quantile)))),
               t, STALE_NAN if stale else q.value)


def _target_info(tr, res, keep_identifying):
    """One target_info sample for a resource with attributes beyond job/instance."""
    if res.newest_ms is None:
        return
    keys = [kv.key for kv in res.attributes]
    if not [k for k in keys if k not in IDENTIFYING]:
        return
    ignore = () if keep_identifying else IDENTIFYING
    labels = res.labels(res.attributes, (("__name__", "target_info"),), ignore=ignore)
    if not any(n in ("job", "instance") for n, _ in labels):
        return
    tr.add(labels, res.newest_ms, 1.0)
