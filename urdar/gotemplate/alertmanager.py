"""Alertmanager's template functions and data (template/template.go) for notification templates.

    t = Template("msg", alertmanager_funcs(now=clock.seconds))
    t.parse(default_templates).parse(user_templates)
    t.execute(data, name="slack.default.title")
"""
from __future__ import annotations

import datetime
import re
import urllib.parse
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

from urdar.gostrconv import quote

from .common import humanize_duration, match, re_replace_all, safe_html
from .errors import FuncError
from .execute import Func, StringMap
from .gotime import UTC, GoDuration, GoTime, in_zone


class Pair:
    """A label name and value: .Name, .Value (prints as Go prints the struct: {name value})."""

    __slots__ = ("Name", "Value")
    go_stringer = True

    def __init__(self, name: str, value: str) -> None:
        self.Name = name
        self.Value = value

    def __str__(self) -> str:
        return "{%s %s}" % (self.Name, self.Value)


class Pairs(List[Pair]):
    """Sorted label pairs; prints as "a=1, b=2" (Alertmanager's Pairs.String)."""

    go_stringer = True

    def Names(self) -> List[str]:
        return [p.Name for p in self]

    def Values(self) -> List[str]:
        return [p.Value for p in self]

    def __str__(self) -> str:
        return ", ".join("%s=%s" % (p.Name, p.Value) for p in self)


class KV(StringMap):
    """A label set (map[string]string) with Alertmanager's methods; missing keys are ""."""

    def SortedPairs(self) -> Pairs:
        """Pairs sorted by name, except that alertname comes first."""
        keys = sorted(self)
        if "alertname" in self:
            keys.remove("alertname")
            keys.insert(0, "alertname")
        return Pairs(Pair(k, self[k]) for k in keys)

    def Names(self) -> List[str]:
        return self.SortedPairs().Names()

    def Values(self) -> List[str]:
        return self.SortedPairs().Values()

    def Remove(self, keys: Iterable[str]) -> "KV":
        drop = set(keys)
        return KV((k, v) for k, v in self.items() if k not in drop)


class Alert:
    """One alert of a notification: .Status, .Labels, .Annotations, .StartsAt, .EndsAt, ..."""

    def __init__(self, status: str, labels: Mapping[str, str], annotations: Mapping[str, str],
                 starts_at: GoTime, ends_at: GoTime, generator_url: str = "",
                 fingerprint: str = "") -> None:
        self.Status = status
        self.Labels = KV(labels)
        self.Annotations = KV(annotations)
        self.StartsAt = starts_at
        self.EndsAt = ends_at
        self.GeneratorURL = generator_url
        self.Fingerprint = fingerprint


class Alerts(List[Alert]):
    """A list of alerts with .Firing and .Resolved."""

    def Firing(self) -> "Alerts":
        return Alerts(a for a in self if a.Status == "firing")

    def Resolved(self) -> "Alerts":
        return Alerts(a for a in self if a.Status == "resolved")


class Data:
    """Dot of a notification template, as Alertmanager's template.Data."""

    def __init__(self, receiver: str, status: str, alerts: Iterable[Alert],
                 group_labels: Mapping[str, str], common_labels: Mapping[str, str],
                 common_annotations: Mapping[str, str], external_url: str) -> None:
        self.Receiver = receiver
        self.Status = status
        self.Alerts = Alerts(alerts)
        self.GroupLabels = KV(group_labels)
        self.CommonLabels = KV(common_labels)
        self.CommonAnnotations = KV(common_annotations)
        self.ExternalURL = external_url


_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")


def title(s: str) -> str:
    """cases.Title: each word's first letter upper case, the rest lower case."""
    return _WORD.sub(lambda m: m.group(0)[:1].upper() + m.group(0)[1:].lower(), s)


def join(sep: str, items: Any) -> str:
    if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) for x in items):
        raise FuncError("wrong type for value; expected []string")
    return sep.join(items)


def string_slice(*s: str) -> List[str]:
    return list(s)


_HEX = "0123456789abcdefABCDEF"


def url_unescape(s: str) -> str:
    """url.QueryUnescape: '+' is a space, %XX a byte; a malformed escape is an error."""
    b = s.encode("utf-8", "surrogateescape")
    i = 0
    while True:
        i = b.find(b"%", i)
        if i < 0:
            break
        esc = b[i:i + 3]
        if len(esc) < 3 or chr(esc[1]) not in _HEX or chr(esc[2]) not in _HEX:
            raise FuncError("invalid URL escape %s" % quote(esc.decode("utf-8", "surrogateescape")))
        i += 3
    return urllib.parse.unquote_to_bytes(s.replace("+", " ")).decode("utf-8", "surrogateescape")


def _need_time(t: Any) -> GoTime:
    if not isinstance(t, GoTime):
        raise FuncError("wrong type for value; expected time.Time; got %s" % type(t).__name__)
    return t


def date(layout: str, t: Any) -> str:
    return _need_time(t).Format(layout)


def tz(name: str, t: Any) -> GoTime:
    try:
        return in_zone(name, _need_time(t))
    except ValueError as e:
        raise FuncError(str(e)) from None


S = "string"


def alertmanager_funcs(*, now: Optional[Callable[[], float]] = None) -> Dict[str, Func]:
    """Alertmanager's template function map; `now` (seconds, the caller's clock) serves since."""
    def since(t: Any) -> GoDuration:
        if now is None:
            raise FuncError("since is not available in this context")
        return GoTime(datetime.datetime.fromtimestamp(now(), UTC)).Sub(_need_time(t))

    return {
        "toUpper": Func(str.upper, 1, 1, types=(S,)),
        "toLower": Func(str.lower, 1, 1, types=(S,)),
        "title": Func(title, 1, 1, types=(S,)),
        "trimSpace": Func(str.strip, 1, 1, types=(S,)),
        "join": Func(join, 2, 2, types=(S, None)),
        "match": Func(match, 2, 2, types=(S, S)),
        "safeHtml": Func(safe_html, 1, 1, types=(S,)),
        "safeUrl": Func(safe_html, 1, 1, types=(S,)),
        "urlUnescape": Func(url_unescape, 1, 1, types=(S,)),
        "reReplaceAll": Func(re_replace_all, 3, 3, types=(S, S, S)),
        "stringSlice": Func(string_slice, 0, None, rest=S),
        "date": Func(date, 2, 2, types=(S, None)),
        "tz": Func(tz, 2, 2, types=(S, None)),
        "since": Func(since, 1, 1),
        "humanizeDuration": Func(humanize_duration, 1, 1),
    }
