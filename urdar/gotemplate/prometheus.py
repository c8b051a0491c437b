"""Prometheus' template functions (template/template.go) for the ruler's alert labels and annotations.

    funcs = prometheus_funcs(query=run_instant_query, external_url=url, now_s=eval_time_s)
    t = Template(name, funcs, missing_key="zero").parse(ALERT_TEMPLATE_PREFIX + text)
    t.execute(alert_template_data(labels, external_labels, external_url, value))
"""
from __future__ import annotations

import math
import re
import urllib.parse
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

from urdar.gostrconv import quote

from .common import (convert_to_float, humanize, humanize1024, humanize_duration, match,
                     re_replace_all, safe_html, title_words)
from .errors import FuncError
from .execute import Func, StringMap
from .gofmt import sprintf
from .gotime import GoDuration, GoTime

# Prometheus prepends these to every alert label and annotation template.
ALERT_TEMPLATE_PREFIX = ("{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}"
                         "{{$externalURL := .ExternalURL}}{{$value := .Value}}")


class Sample:
    """One element of a `query` result: .Labels (name -> value) and .Value."""

    __slots__ = ("Labels", "Value")

    def __init__(self, labels: Mapping[str, str], value: float) -> None:
        self.Labels = StringMap(labels)
        self.Value = float(value)

    def __repr__(self) -> str:
        return "Sample(%r, %r)" % (self.Labels, self.Value)


class AlertTemplateData:
    """What an alert's templates see as dot: .Labels, .ExternalLabels, .ExternalURL, .Value."""

    __slots__ = ("Labels", "ExternalLabels", "ExternalURL", "Value")

    def __init__(self, labels: Mapping[str, str], external_labels: Mapping[str, str],
                 external_url: str, value: float) -> None:
        self.Labels = StringMap(labels)
        self.ExternalLabels = StringMap(external_labels)
        self.ExternalURL = external_url
        self.Value = value


def alert_template_data(labels: Mapping[str, str], external_labels: Mapping[str, str],
                        external_url: str, value: float) -> AlertTemplateData:
    return AlertTemplateData(labels, external_labels, external_url, value)


def _labels_of(s: Any) -> Mapping[str, str]:
    labels = s.get("Labels") if isinstance(s, dict) else getattr(s, "Labels", None)
    if not isinstance(labels, Mapping):
        raise FuncError("wrong type for value; expected *template.sample; got %s" % type(s).__name__)
    return labels


def _value_of(s: Any) -> float:
    v = s.get("Value") if isinstance(s, dict) else getattr(s, "Value", None)
    if v is None:
        raise FuncError("wrong type for value; expected *template.sample; got %s" % type(s).__name__)
    return float(v)


def first(v: Any) -> Any:
    if not isinstance(v, (list, tuple)):
        raise FuncError("wrong type for value; expected template.queryResult")
    if not v:
        raise FuncError("first() called on vector with no elements")
    return v[0]


def label(name: str, s: Any) -> str:
    return _labels_of(s).get(name, "")


def value(s: Any) -> float:
    return _value_of(s)


def strvalue(s: Any) -> str:
    return _labels_of(s).get("__value__", "")


def args(*a: Any) -> Dict[str, Any]:
    return {"arg%d" % i: x for i, x in enumerate(a)}


def sort_by_label(name: str, v: Any) -> List[Any]:
    if not isinstance(v, (list, tuple)):
        raise FuncError("wrong type for value; expected template.queryResult")
    return sorted(v, key=lambda s: _labels_of(s).get(name, ""))


def split_host_port(host_port: str) -> Optional[tuple[str, str]]:
    """net.SplitHostPort: (host, port), or None where Go returns an error."""
    if host_port.startswith("["):
        end = host_port.find("]")
        if end < 0 or host_port[end + 1:end + 2] != ":":
            return None
        host, port = host_port[1:end], host_port[end + 2:]
        if "[" in host or "]" in port or "[" in port:
            return None
        return host, port
    i = host_port.rfind(":")
    if i < 0:
        return None
    host, port = host_port[:i], host_port[i + 1:]
    if ":" in host or "[" in host or "]" in host or "[" in port or "]" in port:
        return None
    return host, port


def _is_ip(host: str) -> bool:
    import ipaddress
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def strip_port(host_port: str) -> str:
    hp = split_host_port(host_port)
    return host_port if hp is None else hp[0]


def strip_domain(host_port: str) -> str:
    hp = split_host_port(host_port)
    host, port = (host_port, "") if hp is None else hp
    if _is_ip(host):
        return host_port
    host = host.split(".")[0]
    if port:
        return "[%s]:%s" % (host, port) if ":" in host else "%s:%s" % (host, port)
    return host


def graph_link(expr: str) -> str:
    return "/graph?g0.expr=%s&g0.tab=0" % urllib.parse.quote_plus(expr, safe="-_.~")


def table_link(expr: str) -> str:
    return "/graph?g0.expr=%s&g0.tab=1" % urllib.parse.quote_plus(expr, safe="-_.~")


def humanize_percentage(v: Any) -> str:
    return sprintf("%.4g%%", [convert_to_float(v) * 100])


def _float_to_time(v: float) -> GoTime:
    ns = v * 1e9
    if ns > 9.223372036854775807e18 or ns < -9.223372036854775808e18:
        raise FuncError("%s cannot be represented as a nanoseconds timestamp since it overflows int64"
                        % sprintf("%v", [v]))
    return GoTime.from_unix(v)


def humanize_timestamp(v: Any) -> str:
    x = convert_to_float(v)
    if math.isnan(x) or math.isinf(x):
        return sprintf("%.4g", [x])
    return str(_float_to_time(x))


def to_time(v: Any) -> GoTime:
    x = convert_to_float(v)
    if math.isnan(x) or math.isinf(x):
        raise FuncError("value is NaN or Inf")
    return _float_to_time(x)


def to_duration(v: Any) -> GoDuration:
    x = convert_to_float(v)
    if math.isnan(x) or math.isinf(x):
        raise FuncError("value is NaN or Inf")
    return GoDuration(int(x * 1e9))


_DURATION = re.compile(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")
_UNIT_MS = [365 * 86400_000, 7 * 86400_000, 86400_000, 3600_000, 60_000, 1000, 1]


def parse_duration(s: str) -> float:
    """Prometheus' duration syntax ("1h30m", "5m", "0", and negative "-5m" as in Prometheus 3) as seconds."""
    if s.startswith("-") and not s.startswith("--"):
        try:
            v = parse_duration(s[1:])
        except FuncError:
            raise FuncError("not a valid duration string: %s" % quote(s)) from None
        return -v if v else 0.0
    if s == "0":
        return 0.0
    m = _DURATION.match(s) if s else None
    if m is None or not any(m.groups()):
        raise FuncError("not a valid duration string: %s" % quote(s))
    ms = sum(int(g) * u for g, u in zip(m.groups(), _UNIT_MS) if g)
    if ms >= 1 << 63:
        raise FuncError("duration out of range")
    return ms / 1000.0


S = "string"


def prometheus_funcs(*, query: Optional[Callable[[str], Iterable[Any]]] = None,
                     external_url: str = "", now_s: float = 0.0) -> Dict[str, Func]:
    """Prometheus' alert template function map.

    query: runs an instant PromQL query at the evaluation time, returning samples (objects or
    dicts with Labels and Value); external_url: the -web.external-url; now_s: the evaluation
    time in seconds, returned by `now`.
    """
    def query_fn(q: str) -> List[Any]:
        if query is None:
            raise FuncError("query is not available in this context")
        return list(query(q))

    path = urllib.parse.urlsplit(external_url).path
    return {
        "query": Func(query_fn, 1, 1, types=(S,)),
        "first": Func(first, 1, 1),
        "label": Func(label, 2, 2, types=(S, None)),
        "value": Func(value, 1, 1),
        "strvalue": Func(strvalue, 1, 1),
        "args": Func(args, 0, None),
        "reReplaceAll": Func(re_replace_all, 3, 3, types=(S, S, S)),
        "safeHtml": Func(safe_html, 1, 1, types=(S,)),
        "match": Func(match, 2, 2, types=(S, S)),
        "title": Func(title_words, 1, 1, types=(S,)),
        "toUpper": Func(str.upper, 1, 1, types=(S,)),
        "toLower": Func(str.lower, 1, 1, types=(S,)),
        "graphLink": Func(graph_link, 1, 1, types=(S,)),
        "tableLink": Func(table_link, 1, 1, types=(S,)),
        "sortByLabel": Func(sort_by_label, 2, 2, types=(S, None)),
        "stripPort": Func(strip_port, 1, 1, types=(S,)),
        "stripDomain": Func(strip_domain, 1, 1, types=(S,)),
        "humanize": Func(humanize, 1, 1),
        "humanize1024": Func(humanize1024, 1, 1),
        "humanizeDuration": Func(humanize_duration, 1, 1),
        "humanizePercentage": Func(humanize_percentage, 1, 1),
        "humanizeTimestamp": Func(humanize_timestamp, 1, 1),
        "toTime": Func(to_time, 1, 1),
        "toDuration": Func(to_duration, 1, 1),
        "now": Func(lambda: float(now_s), 0, 0),
        "pathPrefix": Func(lambda: path, 0, 0),
        "externalURL": Func(lambda: external_url, 0, 0),
        "parseDuration": Func(parse_duration, 1, 1, types=(S,)),
    }
