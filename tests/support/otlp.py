"""Builders for OTLP ExportMetricsServiceRequests in tests (opentelemetry-proto message classes).

`request(resource={attr: value}, metrics=[...])` with metrics from `gauge`, `counter`, `sum_`,
`histogram`, `summary`, `exp_histogram`; points are dicts (t_ns, value/count..., attrs, flags,
exemplars) so a test reads like the OTLP it sends."""
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as ms
from opentelemetry.proto.metrics.v1 import metrics_pb2 as m

T0_NS = 1_700_000_000_000_000_000   # 2023-11-14T22:13:20Z
CUMULATIVE, DELTA = 2, 1


def _set_attrs(target, attrs):
    for k, v in (attrs or {}).items():
        a = target.add()
        a.key = k
        if isinstance(v, bool):
            a.value.bool_value = v
        elif isinstance(v, int):
            a.value.int_value = v
        elif isinstance(v, float):
            a.value.double_value = v
        elif isinstance(v, bytes):
            a.value.bytes_value = v
        elif isinstance(v, (list, tuple)):
            for x in v:
                a.value.array_value.values.add().string_value = str(x)
        else:
            a.value.string_value = v


def _exemplars(pt, exemplars):
    for ex in exemplars or ():
        e = pt.exemplars.add()
        e.time_unix_nano = ex.get("t", T0_NS)
        e.as_double = ex["value"]
        if "trace_id" in ex:
            e.trace_id = ex["trace_id"]
        if "span_id" in ex:
            e.span_id = ex["span_id"]
        _set_attrs(e.filtered_attributes, ex.get("attrs"))


def _number_points(container, points):
    for p in points:
        pt = container.data_points.add()
        pt.time_unix_nano = p.get("t", T0_NS)
        if isinstance(p.get("value"), int):
            pt.as_int = p["value"]
        else:
            pt.as_double = p.get("value", 0.0)
        pt.flags = p.get("flags", 0)
        _set_attrs(pt.attributes, p.get("attrs"))
        _exemplars(pt, p.get("exemplars"))


def gauge(name, points, unit="", description=""):
    metric = m.Metric(name=name, unit=unit, description=description)
    metric.gauge.SetInParent()
    _number_points(metric.gauge, points)
    return metric


def sum_(name, points, monotonic=True, temporality=CUMULATIVE, unit="", description=""):
    metric = m.Metric(name=name, unit=unit, description=description)
    metric.sum.is_monotonic = monotonic
    metric.sum.aggregation_temporality = temporality
    _number_points(metric.sum, points)
    return metric


def counter(name, points, **kw):
    return sum_(name, points, monotonic=True, **kw)


def histogram(name, points, temporality=CUMULATIVE, unit="", description=""):
    metric = m.Metric(name=name, unit=unit, description=description)
    metric.histogram.aggregation_temporality = temporality
    for p in points:
        pt = metric.histogram.data_points.add()
        pt.time_unix_nano = p.get("t", T0_NS)
        pt.count = p["count"]
        if "sum" in p:
            pt.sum = p["sum"]
        pt.explicit_bounds.extend(p.get("bounds", ()))
        pt.bucket_counts.extend(p.get("buckets", ()))
        pt.flags = p.get("flags", 0)
        _set_attrs(pt.attributes, p.get("attrs"))
        _exemplars(pt, p.get("exemplars"))
    return metric


def summary(name, points, unit="", description=""):
    metric = m.Metric(name=name, unit=unit, description=description)
    metric.summary.SetInParent()
    for p in points:
        pt = metric.summary.data_points.add()
        pt.time_unix_nano = p.get("t", T0_NS)
        pt.count = p["count"]
        pt.sum = p["sum"]
        for q, v in p.get("quantiles", ()):
            qv = pt.quantile_values.add()
            qv.quantile = q
            qv.value = v
        pt.flags = p.get("flags", 0)
        _set_attrs(pt.attributes, p.get("attrs"))
    return metric


def exp_histogram(name, n_points=1, temporality=CUMULATIVE):
    metric = m.Metric(name=name)
    metric.exponential_histogram.aggregation_temporality = temporality
    for _ in range(n_points):
        pt = metric.exponential_histogram.data_points.add()
        pt.time_unix_nano = T0_NS
        pt.count = 1
    return metric


def request(metrics, resource=None, more=()):
    """One ResourceMetrics (plus `more` (resource, metrics) pairs) in a request."""
    req = ms.ExportMetricsServiceRequest()
    for res, mets in ((resource, metrics),) + tuple(more):
        rm = req.resource_metrics.add()
        _set_attrs(rm.resource.attributes, res)
        sm = rm.scope_metrics.add()
        sm.scope.name = "tests"
        for metric in mets:
            sm.metrics.add().CopyFrom(metric)
    return req
