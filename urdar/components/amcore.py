"""One tenant's Alertmanager, as Prometheus Alertmanager 0.25 behaves: label matchers, the
routing tree, time intervals, alerts with resolve timeouts, silences, inhibition rules, the
notification log and the dispatcher's aggregation groups.

Everything runs on the reactor; every timer goes through an injected IReactorTime (`clock`), so
tests drive it with task.Clock. Times are float Unix seconds; None is Go's zero time.

Differences from Alertmanager, on purpose: label-set hashes in the notification log are SHA-1
prefixes (not xxhash; the log is this process's own); the notify retry back-off is Alertmanager's
exponential schedule (0.5s, x1.5, at most 60s) without its random jitter.
"""
from __future__ import annotations

import calendar
import datetime
import hashlib
import math
import re
import uuid
import zoneinfo
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from urdar.components.rulefmt import parse_duration
from urdar.engine.errors import RegexError
from urdar.engine.matchers import Matcher as _LabelMatcher
from urdar.gostrconv import quote

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
MAX_MATCHERS_TEXT = 64 << 10


class AMError(ValueError):
    """Invalid input (a matcher, a silence, an alert, a configuration): the message is the user's."""


# ---- times -------------------------------------------------------------------------------------

ZERO_TIME = "0001-01-01T00:00:00Z"
_RFC3339 = re.compile(r"^(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(\.\d+)?(Z|z|[+-]\d\d:\d\d)$")


def parse_time(text: Any) -> Optional[float]:
    """RFC 3339 (Go's time.Time / strfmt.DateTime) -> Unix seconds; "" and year 1 are zero."""
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        raise AMError("invalid time %r" % (text,))
    m = _RFC3339.match(text)
    if not m:
        raise AMError("parsing time %s: not an RFC 3339 time" % _q(text))
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    if y <= 1:
        return None
    try:
        secs = calendar.timegm(datetime.datetime(y, mo, d, h, mi, s).timetuple())
    except ValueError as exc:
        raise AMError("parsing time %s: %s" % (_q(text), exc)) from None
    frac = float(m.group(7) or 0.0)
    tzs = m.group(8)
    if tzs not in ("Z", "z"):
        sign = 1 if tzs[0] == "+" else -1
        secs -= sign * (int(tzs[1:3]) * 3600 + int(tzs[4:6]) * 60)
    return secs + frac


def format_time(t: Optional[float], millis: bool = True) -> str:
    """strfmt.DateTime (milliseconds, the API's) or time.Time RFC3339Nano (the webhook's)."""
    if t is None:
        return ZERO_TIME
    # Float seconds hold microseconds exactly at today's magnitudes: round there, so a time
    # posted as .123 prints as .123, not .122999907.
    whole = int(t // 1)
    micro = int(round((t - whole) * 1e6))
    if micro >= 1_000_000:
        whole, micro = whole + 1, micro - 1_000_000
    dt = datetime.datetime.fromtimestamp(whole, datetime.timezone.utc)
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if millis:
        return base + ".%03dZ" % (micro // 1000)
    return base + (("." + ("%06d" % micro).rstrip("0")) if micro else "") + "Z"


def _q(s: str) -> str:
    return '"%s"' % s.replace("\\", "\\\\").replace('"', '\\"')


def duration_s(value: Any, what: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return parse_duration(str(value)) / 1000.0
    except ValueError as exc:
        raise AMError("%s: %s" % (what, exc)) from None


# ---- labels ------------------------------------------------------------------------------------

def fingerprint(labels: dict[str, str]) -> int:
    """model.LabelSet.Fingerprint: FNV-1a 64 over sorted name, 0xff, value, 0xff."""
    h = 0xcbf29ce484222325
    for name in sorted(labels):
        for part in (name, labels[name]):
            for b in part.encode("utf-8"):
                h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
            h = ((h ^ 0xFF) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def fp_hex(fp: int) -> str:
    return "%016x" % fp


def labelset_string(labels: dict[str, str]) -> str:
    """model.LabelSet.String: {a="1", b="2"}."""
    return "{" + ", ".join("%s=%s" % (k, quote(labels[k])) for k in sorted(labels)) + "}"


def labels_before(a: dict[str, str], b: dict[str, str]) -> bool:
    """model.LabelSet.Before."""
    if len(a) != len(b):
        return len(a) < len(b)
    for name in sorted(list(a) + list(b)):
        if name not in a:
            return True
        if name not in b:
            return False
        if a[name] != b[name]:
            return a[name] < b[name]
    return False


def _cmp_key(before: Callable[[Any, Any], bool]) -> Any:
    import functools
    return functools.cmp_to_key(lambda x, y: -1 if before(x, y) else (1 if before(y, x) else 0))


def alert_before(a: dict[str, str], b: dict[str, str]) -> bool:
    """types.AlertSlice.Less: by job, then instance, then the label sets."""
    for key in ("job", "instance"):
        ia, ib = key in a, key in b
        if not ia and not ib:
            continue
        if not ia:
            return False
        if not ib:
            return True
        if a[key] != b[key]:
            return a[key] < b[key]
    return labels_before(a, b)


ALERT_ORDER = _cmp_key(lambda x, y: alert_before(x.labels, y.labels))


def hash_labels(labels: dict[str, str]) -> str:
    h = hashlib.sha1()
    for k in sorted(labels):
        h.update(k.encode() + b"\xff" + labels[k].encode() + b"\xff")
    return h.hexdigest()[:16]


# ---- matchers ----------------------------------------------------------------------------------

_OPS = ("=~", "!~", "!=", "=")
TYPE_NAMES = {"=": "=", "!=": "!=", "=~": "=~", "!~": "!~"}


class Matcher:
    """An Alertmanager label matcher: name, op (=, !=, =~, !~), value; regexes anchored."""

    __slots__ = ("name", "op", "value", "_m")

    def __init__(self, op: str, name: str, value: str) -> None:
        if op not in _OPS:
            raise AMError("unknown matcher type %r" % op)
        self.name, self.op, self.value = name, op, value
        try:
            self._m = _LabelMatcher(op, name, value)
        except (RegexError, ValueError) as exc:
            raise AMError("error parsing regexp: %s" % exc) from None

    @property
    def is_regex(self) -> bool:
        return self.op in ("=~", "!~")

    @property
    def is_equal(self) -> bool:
        return self.op in ("=", "=~")

    def matches(self, value: str) -> bool:
        return bool(self._m.matches(value))

    def __str__(self) -> str:
        return "%s%s%s" % (self.name, self.op, quote(self.value))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Matcher) and (self.name, self.op, self.value) == (
            other.name, other.op, other.value)

    def __hash__(self) -> int:
        return hash((self.name, self.op, self.value))

    def sort_key(self) -> tuple:
        # labels.Matchers order: name, value, then type (=, !=, =~, !~).
        return (self.name, self.value, ("=", "!=", "=~", "!~").index(self.op))


def matchers_match(ms: Iterable[Matcher], labels: dict[str, str]) -> bool:
    return all(m.matches(labels.get(m.name, "")) for m in ms)


def matchers_string(ms: list[Matcher]) -> str:
    return "{" + ",".join(str(m) for m in ms) + "}"


_MATCHER_RE = re.compile(r'^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$', re.S)


def _unquote(v: str) -> str:
    """A Go-quoted string's value (Alertmanager's matcher values)."""
    body = v[1:-1]
    out, i = [], 0
    simple = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "a": "\a",
              "b": "\b", "f": "\f", "v": "\v"}
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt in simple:
                out.append(simple[nxt])
                i += 2
                continue
            if nxt in "xuU":
                width = {"x": 2, "u": 4, "U": 8}[nxt]
                hexs = body[i + 2:i + 2 + width]
                try:
                    out.append(chr(int(hexs, 16)))
                except ValueError:
                    raise AMError("invalid escape in %s" % v) from None
                i += 2 + width
                continue
            raise AMError("invalid escape in %s" % v)
        if ch == '"':
            raise AMError("unescaped quote in %s" % v)
        out.append(ch)
        i += 1
    return "".join(out)


def parse_matcher(text: str) -> Matcher:
    """One matcher as amtool, the API's filter and `matchers:` write it: name op value, the value
    Go-quoted or bare."""
    m = _MATCHER_RE.match(text)
    if not m:
        raise AMError("bad matcher format: %s" % text)
    name, op, raw = m.groups()
    if len(raw) >= 2 and raw[0] == '"' and raw[-1] == '"':
        value = _unquote(raw)
    elif raw.startswith('"'):
        raise AMError("bad matcher format: %s" % text)
    else:
        value = raw
    return Matcher(op, name, value)


def _split_matchers(text: str) -> list[str]:
    parts, cur, quoted, esc = [], [], False, False
    for ch in text:
        if esc:
            cur.append(ch)
            esc = False
        elif ch == "\\" and quoted:
            cur.append(ch)
            esc = True
        elif ch == '"':
            cur.append(ch)
            quoted = not quoted
        elif ch == "," and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if quoted:
        raise AMError("unterminated quoted string in %s" % text)
    parts.append("".join(cur))
    return [p for p in (s.strip() for s in parts) if p]


def parse_matchers(text: str) -> list[Matcher]:
    """labels.ParseMatchers: `{a="b", c=~"d"}` or `a="b", c=~"d"`."""
    if len(text) > MAX_MATCHERS_TEXT:
        raise AMError("matchers too long")
    s = text.strip()
    if s.startswith("{"):
        if not s.endswith("}"):
            raise AMError("missing closing brace: %s" % text)
        s = s[1:-1]
    elif s.endswith("}"):
        raise AMError("missing opening brace: %s" % text)
    return [parse_matcher(p) for p in _split_matchers(s)]


def filter_matches(ms: list[Matcher], labels: dict[str, str]) -> bool:
    """The API's filter[]: an empty-valued matcher skips a label that is absent (=, =~) or present
    (!=, !~), as Alertmanager's matchFilterLabels."""
    for m in ms:
        present = m.name in labels
        v = labels.get(m.name, "")
        if m.op in ("!=", "!~"):
            if m.value == "" and present:
                continue
        elif m.value == "" and not present:
            continue
        if not m.matches(v):
            return False
    return True


def config_matchers(node: dict, prefix: str = "") -> list[Matcher]:
    """`<prefix>matchers`, `<prefix>match` and `<prefix>match_re` of a route or inhibit rule."""
    out: list[Matcher] = []
    for k, v in sorted((node.get(prefix + "match") or {}).items()):
        out.append(Matcher("=", str(k), str(v)))
    for k, v in sorted((node.get(prefix + "match_re") or {}).items()):
        out.append(Matcher("=~", str(k), str(v)))
    for text in node.get(prefix + "matchers") or []:
        out.extend(parse_matchers(str(text)))
    return out


# ---- time intervals ----------------------------------------------------------------------------

_WEEKDAYS = {d: i for i, d in enumerate(
    ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"))}
_MONTHS = {m: i + 1 for i, m in enumerate(
    ("january", "february", "march", "april", "may", "june", "july", "august", "september",
     "october", "november", "december"))}


def _ranges(items: Any, names: dict[str, int] | None, lo: int, hi: int, what: str,
            negative: bool = False) -> list[tuple[int, int]]:
    out = []
    for item in items or []:
        text = str(item).strip().lower()
        parts = text.split(":") if ":" in text else [text, text]
        if len(parts) != 2:
            raise AMError("invalid %s range %s" % (what, item))

        def val(p: str) -> int:
            if names is not None and p in names:
                return names[p]
            try:
                n = int(p)
            except ValueError:
                raise AMError("%s %s is invalid" % (what, p)) from None
            if not (lo <= n <= hi or (negative and -hi <= n <= -1)) or (negative and n == 0):
                raise AMError("%s %s is out of range" % (what, p))
            return n
        out.append((val(parts[0]), val(parts[1])))
    return out


def _clock_minutes(text: str) -> int:
    m = re.match(r"^(\d\d):(\d\d)$", str(text))
    if not m or int(m.group(1)) > 24 or int(m.group(2)) > 59 or (
            int(m.group(1)) == 24 and int(m.group(2)) != 0):
        raise AMError("couldn't parse timestamp %s, invalid format" % text)
    return int(m.group(1)) * 60 + int(m.group(2))


@dataclass
class TimeInterval:
    times: list[tuple[int, int]] = field(default_factory=list)      # minutes, [start, end)
    weekdays: list[tuple[int, int]] = field(default_factory=list)
    days_of_month: list[tuple[int, int]] = field(default_factory=list)
    months: list[tuple[int, int]] = field(default_factory=list)
    years: list[tuple[int, int]] = field(default_factory=list)
    location: Any = None

    @classmethod
    def from_config(cls, d: dict) -> "TimeInterval":
        if not isinstance(d, dict):
            raise AMError("a time interval must be a mapping")
        ti = cls()
        for t in d.get("times") or []:
            s, e = _clock_minutes(t.get("start_time", "")), _clock_minutes(t.get("end_time", ""))
            if s >= e:
                raise AMError("start time cannot be equal or greater than end time")
            ti.times.append((s, e))
        ti.weekdays = _ranges(d.get("weekdays"), _WEEKDAYS, 0, 6, "weekday")
        ti.days_of_month = _ranges(d.get("days_of_month"), None, 1, 31, "day of month", True)
        ti.months = _ranges(d.get("months"), _MONTHS, 1, 12, "month")
        ti.years = _ranges(d.get("years"), None, 0, 9999, "year")
        loc = d.get("location")
        if loc:
            try:
                ti.location = zoneinfo.ZoneInfo("UTC" if loc == "Local" else str(loc))
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise AMError("unknown time zone %s" % loc) from None
        return ti

    def contains(self, t: float) -> bool:
        dt = datetime.datetime.fromtimestamp(t, self.location or datetime.timezone.utc)
        if self.times:
            minute = dt.hour * 60 + dt.minute
            if not any(s <= minute < e for s, e in self.times):
                return False
        if self.days_of_month:
            last = calendar.monthrange(dt.year, dt.month)[1]
            ok = False
            for s, e in self.days_of_month:
                s2 = s if s > 0 else last + s + 1
                e2 = e if e > 0 else last + e + 1
                if s2 <= dt.day <= e2:
                    ok = True
                    break
            if not ok:
                return False
        if self.months and not any(s <= dt.month <= e for s, e in self.months):
            return False
        weekday = (dt.weekday() + 1) % 7           # Go: Sunday is 0
        if self.weekdays and not any(s <= weekday <= e for s, e in self.weekdays):
            return False
        if self.years and not any(s <= dt.year <= e for s, e in self.years):
            return False
        return True


def parse_time_intervals(cfg: dict) -> dict[str, list[TimeInterval]]:
    out: dict[str, list[TimeInterval]] = {}
    for key in ("mute_time_intervals", "time_intervals"):
        for entry in cfg.get(key) or []:
            name = str(entry.get("name") or "")
            if not name:
                raise AMError("missing name in %s" % key)
            if name in out:
                raise AMError("time interval %s is not unique" % _q(name))
            out[name] = [TimeInterval.from_config(x) for x in entry.get("time_intervals") or []]
    return out


# ---- the routing tree --------------------------------------------------------------------------

DEFAULT_GROUP_WAIT = 30.0
DEFAULT_GROUP_INTERVAL = 300.0
DEFAULT_REPEAT_INTERVAL = 4 * 3600.0
MAX_ROUTE_DEPTH = 100


@dataclass
class RouteOpts:
    receiver: str = ""
    group_by: frozenset = frozenset()
    group_by_all: bool = False
    group_wait: float = DEFAULT_GROUP_WAIT
    group_interval: float = DEFAULT_GROUP_INTERVAL
    repeat_interval: float = DEFAULT_REPEAT_INTERVAL
    mute_time_intervals: tuple = ()
    active_time_intervals: tuple = ()


class Route:
    def __init__(self, node: dict, parent: Optional["Route"], intervals: dict[str, Any],
                 depth: int = 0, idx: int = 0) -> None:
        if depth > MAX_ROUTE_DEPTH:
            raise AMError("routes nested too deeply")
        if not isinstance(node, dict):
            raise AMError("a route must be a mapping")
        self.parent = parent
        self.opts: RouteOpts
        base = parent.opts if parent is not None else RouteOpts()
        o = RouteOpts(**base.__dict__)
        o.mute_time_intervals = ()
        o.active_time_intervals = ()
        if node.get("receiver"):
            o.receiver = str(node["receiver"])
        # As Alertmanager: an empty group_by inherits; ['...'] groups by all labels.
        names = [str(x) for x in node.get("group_by") or []]
        if "..." in names:
            if len(names) > 1:
                raise AMError("cannot have wildcard group_by (`...`) and other other labels at the same time")
            o.group_by_all = True
        elif names:
            seen: set[str] = set()
            for n in names:
                if not LABEL_NAME.match(n):
                    raise AMError("invalid label name %s in group_by list" % _q(n))
                if n in seen:
                    raise AMError("duplicated label %s in group_by" % _q(n))
                seen.add(n)
            o.group_by_all, o.group_by = False, frozenset(names)
        for key in ("group_wait", "group_interval", "repeat_interval"):
            if node.get(key) is not None:
                setattr(o, key, duration_s(node[key], key))
        if o.group_interval == 0:
            raise AMError("group_interval cannot be zero")
        if o.repeat_interval == 0:
            raise AMError("repeat_interval cannot be zero")
        for key in ("mute_time_intervals", "active_time_intervals"):
            names = [str(x) for x in node.get(key) or []]
            for n in names:
                if n not in intervals:
                    raise AMError("undefined time interval %s used in route" % _q(n))
            setattr(o, key, tuple(names))
        self.opts = o
        self.matchers = sorted(config_matchers(node), key=Matcher.sort_key)
        if parent is None and self.matchers:
            raise AMError("root route must not have any matchers")
        self.cont = bool(node.get("continue", False))
        if parent is None and self.cont:
            raise AMError("cannot have continue in root route")
        self.idx = idx
        self.routes = [Route(c, self, intervals, depth + 1, i)
                       for i, c in enumerate(node.get("routes") or [])]

    def key(self) -> str:
        own = matchers_string(self.matchers)
        return own if self.parent is None else self.parent.key() + "/" + own

    def route_id(self) -> str:
        own = matchers_string(self.matchers)
        if self.parent is None:
            return own
        return "%s/%s/%d" % (self.parent.route_id(), own, self.idx)

    def match(self, labels: dict[str, str]) -> list["Route"]:
        if not matchers_match(self.matchers, labels):
            return []
        out: list[Route] = []
        for child in self.routes:
            got = child.match(labels)
            out.extend(got)
            if got and not child.cont:
                break
        return out or [self]

    def walk(self) -> Iterable["Route"]:
        yield self
        for c in self.routes:
            yield from c.walk()

    def group_labels(self, labels: dict[str, str]) -> dict[str, str]:
        if self.opts.group_by_all:
            return dict(labels)
        return {k: v for k, v in labels.items() if k in self.opts.group_by}


# ---- alerts ------------------------------------------------------------------------------------

@dataclass
class Alert:
    labels: dict[str, str]
    annotations: dict[str, str] = field(default_factory=dict)
    starts_at: Optional[float] = None
    ends_at: Optional[float] = None
    generator_url: str = ""
    updated_at: float = 0.0
    timeout: bool = False
    fp: int = 0

    def __post_init__(self) -> None:
        if not self.fp:
            self.fp = fingerprint(self.labels)

    def resolved_at(self, now: float) -> bool:
        return self.ends_at is not None and self.ends_at <= now

    def copy(self) -> "Alert":
        return Alert(dict(self.labels), dict(self.annotations), self.starts_at, self.ends_at,
                     self.generator_url, self.updated_at, self.timeout, self.fp)

    def merge(self, o: "Alert", now: float) -> "Alert":
        """types.Alert.Merge: the younger alert wins, the earliest start is kept, an explicit end
        later than a timed-out one stays."""
        if o.updated_at < self.updated_at:
            return o.merge(self, now)
        res = o.copy()
        if self.starts_at is not None and (res.starts_at is None or self.starts_at < res.starts_at):
            res.starts_at = self.starts_at
        if o.resolved_at(now):
            if self.resolved_at(now) and self.ends_at is not None and o.ends_at is not None \
                    and self.ends_at > o.ends_at:
                res.ends_at = self.ends_at
        elif self.ends_at is not None and (o.ends_at is None or self.ends_at > o.ends_at) \
                and not self.timeout:
            res.ends_at = self.ends_at
        return res


def validate_alert(a: Alert) -> None:
    """types.Alert.Validate."""
    if a.starts_at is None:
        raise AMError("start time missing")
    if a.ends_at is not None and a.ends_at < a.starts_at:
        raise AMError("start time must be before end time")
    if not a.labels:
        raise AMError("at least one label pair required")
    for k, v in a.labels.items():
        if not LABEL_NAME.match(k):
            raise AMError("invalid label set: invalid name %s" % _q(k))
    for k in a.annotations:
        if not LABEL_NAME.match(k):
            raise AMError("invalid annotations: invalid name %s" % _q(k))


def _after(x: Optional[float], y: Optional[float]) -> bool:
    return (x if x is not None else -1e18) > (y if y is not None else -1e18)


def _overlaps(a: Alert, old: Alert) -> bool:
    return (_after(a.ends_at, old.starts_at) and _after(old.ends_at, a.ends_at)) or (
        _after(a.starts_at, old.starts_at) and _after(old.ends_at, a.starts_at))


def alert_size(a: Alert) -> int:
    """What an alert counts against -alertmanager.max-alerts-size-bytes: the bytes of its label
    and annotation names and values and of its generator URL (as Mimir's alerts limiter)."""
    n = len(a.generator_url.encode())
    for m in (a.labels, a.annotations):
        for k, v in m.items():
            n += len(k.encode()) + len(v.encode())
    return n


class AlertStore:
    """The provider: alerts by fingerprint, merged on update, resolved ones collected by gc().
    `sizes` and `total_size` (alert_size of each stored alert) serve the size limit."""

    def __init__(self, clock: Any, on_put: Callable[[Alert], None]) -> None:
        self.clock = clock
        self.alerts: dict[int, Alert] = {}
        self.sizes: dict[int, int] = {}
        self.total_size = 0
        self.on_put = on_put
        self.version = 0            # bumped by every change (the inhibitor's index follows it)

    def put(self, alerts: Iterable[Alert]) -> None:
        now = self.clock.seconds()
        for a in alerts:
            old = self.alerts.get(a.fp)
            # Merged only when the activity ranges overlap (mem provider's Put).
            if old is not None and _overlaps(a, old):
                a = old.merge(a, now)
            self.alerts[a.fp] = a
            size = alert_size(a)
            self.total_size += size - self.sizes.get(a.fp, 0)
            self.sizes[a.fp] = size
            self.version += 1
            self.on_put(a)

    def gc(self) -> list[int]:
        now = self.clock.seconds()
        gone = [fp for fp, a in self.alerts.items() if a.resolved_at(now)]
        for fp in gone:
            del self.alerts[fp]
            self.total_size -= self.sizes.pop(fp, 0)
        if gone:
            self.version += 1
        return gone

    def active(self) -> list[Alert]:
        now = self.clock.seconds()
        return [a for a in self.alerts.values() if not a.resolved_at(now)]


# ---- silences ----------------------------------------------------------------------------------

@dataclass
class Silence:
    id: str
    matchers: list[Matcher]
    starts_at: float
    ends_at: float
    updated_at: float
    created_by: str = ""
    comment: str = ""

    def state(self, now: float) -> str:
        if self.starts_at > now:
            return "pending"
        if self.ends_at < now:
            return "expired"
        return "active"

    def to_json(self) -> dict:
        return {"id": self.id, "matchers": [[m.op, m.name, m.value] for m in self.matchers],
                "startsAt": self.starts_at, "endsAt": self.ends_at, "updatedAt": self.updated_at,
                "createdBy": self.created_by, "comment": self.comment}

    @classmethod
    def from_json(cls, d: dict) -> "Silence":
        return cls(str(d["id"]), [Matcher(op, n, v) for op, n, v in d["matchers"]],
                   float(d["startsAt"]), float(d["endsAt"]), float(d["updatedAt"]),
                   str(d.get("createdBy", "")), str(d.get("comment", "")))


def _varint_len(n: int) -> int:
    if n < 0:
        return 10
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def _pb_bytes(n: int) -> int:
    """A length-delimited field with a one-byte tag: tag, length, payload."""
    return 1 + _varint_len(n) + n


def _pb_string(s: str) -> int:
    return _pb_bytes(len(s.encode())) if s else 0


def _pb_timestamp(t: float) -> int:
    secs = math.floor(t)
    nanos = int(round((t - secs) * 1e9)) % 1000000000
    return _pb_bytes((1 + _varint_len(secs) if secs else 0) + (1 + _varint_len(nanos) if nanos else 0))


_MATCHER_TYPE = {"=": 0, "=~": 1, "!=": 2, "!~": 3}


def silence_proto_size(s: Silence, expires_at: float) -> int:
    """The size of Alertmanager's MeshSilence protobuf for `s` (what its -max-silence-size-bytes
    measures): the silence (id, matchers, three times, creator, comment) and its expiry."""
    body = _pb_string(s.id)
    for m in s.matchers:
        kind = _MATCHER_TYPE.get(m.op, 0)
        body += _pb_bytes((2 if kind else 0) + _pb_string(m.name) + _pb_string(m.value))
    body += _pb_timestamp(s.starts_at) + _pb_timestamp(s.ends_at) + _pb_timestamp(s.updated_at)
    body += _pb_string(s.created_by) + _pb_string(s.comment)
    return _pb_bytes(body) + _pb_timestamp(expires_at)


class NotFound(KeyError):
    pass


MAX_SILENCE_COMMENT_BYTES = 64 << 10
MAX_SILENCE_MATCHERS = 100


class Silences:
    """silence.Silences: set (create or update), expire, query; expired ones are kept for
    `retention` after their end, then collected."""

    def __init__(self, clock: Any, retention: float, new_id: Callable[[], str] | None = None) -> None:
        self.clock = clock
        self.retention = retention
        self.by_id: dict[str, Silence] = {}
        self.new_id = new_id or (lambda: str(uuid.uuid4()))
        self.version = 0
        self._cache: Optional[tuple] = None
        self.on_change: Optional[Callable[[Silence], Any]] = None   # replication to peers
        # (-alertmanager.max-silences-count, -alertmanager.max-silence-size-bytes) of the tenant,
        # read at each set (runtime overrides apply at once); 0 is no limit.
        self.limits: Callable[[], tuple[int, int]] = lambda: (0, 0)

    def _validate(self, s: Silence) -> None:
        if not s.matchers:
            raise AMError("at least one matcher required")
        if len(s.matchers) > MAX_SILENCE_MATCHERS:
            raise AMError("too many matchers (limit: %d)" % MAX_SILENCE_MATCHERS)
        all_empty = True
        for i, m in enumerate(s.matchers):
            if not LABEL_NAME.match(m.name):
                raise AMError("invalid label matcher %d: invalid label name %s" % (i, _q(m.name)))
            all_empty = all_empty and m.matches("")
        if all_empty:
            raise AMError("at least one matcher must not match the empty string")
        if s.ends_at < s.starts_at:
            raise AMError("end time must not be before start time")
        if len(s.comment.encode()) + len(s.created_by.encode()) > MAX_SILENCE_COMMENT_BYTES:
            raise AMError("comment too long (limit: %d bytes)" % MAX_SILENCE_COMMENT_BYTES)

    def _can_update(self, a: Silence, b: Silence, now: float) -> bool:
        if sorted(a.matchers, key=Matcher.sort_key) != sorted(b.matchers, key=Matcher.sort_key):
            return False
        st = a.state(now)
        if st == "active":
            # Whole seconds: the API shows milliseconds, the stored start has more.
            return int(b.starts_at // 1) == int(a.starts_at // 1) and not b.ends_at < now
        if st == "pending":
            return not b.starts_at < now
        return False

    def set(self, s: Silence) -> str:
        """Create (no id) or update; an update that may not change the silence in place expires
        it and creates a new one, as Alertmanager does. NotFound for an unknown id."""
        now = self.clock.seconds()
        try:
            self._validate(s)
        except AMError as exc:
            raise AMError("silence invalid: %s" % exc) from None
        prev = self.by_id.get(s.id) if s.id else None
        if s.id and prev is None:
            raise NotFound(s.id)
        max_count, max_size = self.limits()
        if prev is not None and self._can_update(prev, s, now):
            s.updated_at = now
            self._check_size(s, max_size)
            self.by_id[s.id] = s
            self.version += 1
            self._changed(s)
            return s.id
        # A new silence, or one replacing `prev`: the expired ones count too until collected.
        if max_count > 0 and len(self.by_id) + 1 > max_count:
            raise AMError("exceeded maximum number of silences: %d (limit: %d)"
                          % (len(self.by_id), max_count))
        s.id = self.new_id()
        if s.starts_at < now:
            s.starts_at = now
        s.updated_at = now
        self._check_size(s, max_size)
        if prev is not None and prev.state(now) != "expired":
            self._expire(prev, now)
        self.by_id[s.id] = s
        self.version += 1
        self._changed(s)
        return s.id

    def _check_size(self, s: Silence, limit: int) -> None:
        if limit > 0:
            n = silence_proto_size(s, s.ends_at + self.retention)
            if n > limit:
                raise AMError("silence exceeded maximum size: %d bytes (limit: %d bytes)" % (n, limit))

    def _expire(self, s: Silence, now: float) -> None:
        if s.state(now) == "pending":
            s.starts_at = now
        s.ends_at = now
        s.updated_at = now
        self.version += 1
        self._changed(s)

    def _changed(self, s: Silence) -> None:
        if self.on_change is not None:
            self.on_change(s)

    def merge(self, items: list[dict]) -> int:
        """Fold a peer's silences (JSON form) in: the later updatedAt wins (silence.Merge)."""
        from urdar.components.amshard import merge_silences
        changed = merge_silences(self.by_id, items, Silence.from_json,
                                 self.clock.seconds() - self.retention)
        if changed:
            self.version += 1
        return len(changed)

    def expire(self, sid: str) -> None:
        """End a silence now; one already expired stays as it is (idempotent, as Alertmanager)."""
        now = self.clock.seconds()
        s = self.by_id.get(sid)
        if s is None:
            raise NotFound(sid)
        if s.state(now) != "expired":
            self._expire(s, now)

    def get(self, sid: str) -> Silence:
        s = self.by_id.get(sid)
        if s is None:
            raise NotFound(sid)
        return s

    def _active(self, now: float) -> tuple[dict[str, dict[str, list[Silence]]], list[Silence]]:
        """The active silences indexed by one of their equality matchers (name -> value ->
        silences; those without one are scanned), rebuilt when a silence changes or one
        starts or ends, so an alert is checked against the few silences that can match it."""
        c = self._cache
        if c is not None and c[0] == self.version and c[1] <= now < c[2] and now <= c[3]:
            return c[4], c[5]
        index: dict[str, dict[str, list[Silence]]] = {}
        scan: list[Silence] = []
        next_start = next_end = float("inf")
        for sil in self.by_id.values():
            if sil.starts_at > now:
                next_start = min(next_start, sil.starts_at)
                continue
            if sil.ends_at < now:
                continue
            next_end = min(next_end, sil.ends_at)
            eq = next((m for m in sil.matchers if m.op == "="), None)
            if eq is None:
                scan.append(sil)
            else:
                index.setdefault(eq.name, {}).setdefault(eq.value, []).append(sil)
        self._cache = (self.version, now, next_start, next_end, index, scan)
        return index, scan

    def active_for(self, labels: dict[str, str]) -> list[str]:
        index, scan = self._active(self.clock.seconds())
        found = [s.id for s in scan if matchers_match(s.matchers, labels)]
        for name, by_value in index.items():
            for sil in by_value.get(labels.get(name, ""), ()):
                if matchers_match(sil.matchers, labels):
                    found.append(sil.id)
        return sorted(found)

    def gc(self) -> int:
        now = self.clock.seconds()
        old = [sid for sid, s in self.by_id.items() if s.ends_at + self.retention < now]
        for sid in old:
            del self.by_id[sid]
        if old:
            self.version += 1
        return len(old)

    def snapshot(self) -> list[dict]:
        return [s.to_json() for s in self.by_id.values()]

    def restore(self, items: list[dict]) -> None:
        now = self.clock.seconds()
        for d in items:
            s = Silence.from_json(d)
            if s.ends_at + self.retention >= now:
                self.by_id[s.id] = s
        self.version += 1


# ---- inhibition --------------------------------------------------------------------------------

class InhibitRule:
    def __init__(self, cfg: dict) -> None:
        if not isinstance(cfg, dict):
            raise AMError("an inhibit rule must be a mapping")
        self.source = config_matchers(cfg, "source_")
        self.target = config_matchers(cfg, "target_")
        self.equal = [str(x) for x in cfg.get("equal") or []]


class Inhibitor:
    """inhibit.Inhibitor: a target alert is muted by an unresolved source alert of the same
    rule with equal values of the rule's `equal` labels (not by one that is itself a target,
    when the alert is a source too). Source alerts are indexed per rule by those values, rebuilt
    when the store changes, so a check costs the few candidates, not every alert."""

    def __init__(self, rules: list[InhibitRule], alerts: AlertStore) -> None:
        self.rules = rules
        self.alerts = alerts
        self._version = -1
        self._index: list[dict[tuple, list[Alert]]] = []

    def _sources(self) -> list[dict[tuple, list[Alert]]]:
        if self._version != self.alerts.version:
            index: list[dict[tuple, list[Alert]]] = []
            for r in self.rules:
                by_equal: dict[tuple, list[Alert]] = {}
                for a in self.alerts.alerts.values():
                    if matchers_match(r.source, a.labels):
                        key = tuple(a.labels.get(n, "") for n in r.equal)
                        by_equal.setdefault(key, []).append(a)
                index.append(by_equal)
            self._index, self._version = index, self.alerts.version
        return self._index

    def inhibited_by(self, labels: dict[str, str]) -> list[str]:
        if not self.rules:
            return []
        now = self.alerts.clock.seconds()
        for r, by_equal in zip(self.rules, self._sources()):
            if not matchers_match(r.target, labels):
                continue
            exclude_two_sided = matchers_match(r.source, labels)
            for a in by_equal.get(tuple(labels.get(n, "") for n in r.equal), ()):
                if a.resolved_at(now):
                    continue
                if exclude_two_sided and matchers_match(r.target, a.labels):
                    continue
                return [fp_hex(a.fp)]
        return []


# ---- the notification log ----------------------------------------------------------------------

@dataclass
class LogEntry:
    group_key: str
    receiver: str
    firing: frozenset
    resolved: frozenset
    timestamp: float
    expires_at: float


class NotificationLog:
    def __init__(self, clock: Any, retention: float) -> None:
        self.clock = clock
        self.retention = retention
        self.entries: dict[tuple[str, str], LogEntry] = {}

    def query(self, group_key: str, receiver: str) -> Optional[LogEntry]:
        return self.entries.get((group_key, receiver))

    def log(self, receiver: str, group_key: str, firing: Iterable[str],
            resolved: Iterable[str], expiry: float = 0.0) -> None:
        now = self.clock.seconds()
        exp = now + (expiry if expiry > 0 else self.retention)
        self.entries[(group_key, receiver)] = LogEntry(group_key, receiver, frozenset(firing),
                                                       frozenset(resolved), now, exp)

    def gc(self) -> int:
        now = self.clock.seconds()
        old = [k for k, e in self.entries.items() if e.expires_at < now]
        for k in old:
            del self.entries[k]
        return len(old)

    def snapshot(self) -> list[dict]:
        return [{"groupKey": e.group_key, "receiver": e.receiver, "firing": sorted(e.firing),
                 "resolved": sorted(e.resolved), "timestamp": e.timestamp,
                 "expiresAt": e.expires_at} for e in self.entries.values()]

    def snapshot_entry(self, group_key: str, receiver: str) -> dict:
        e = self.entries[(group_key, receiver)]
        return {"groupKey": e.group_key, "receiver": e.receiver, "firing": sorted(e.firing),
                "resolved": sorted(e.resolved), "timestamp": e.timestamp,
                "expiresAt": e.expires_at}

    def merge(self, items: list[dict]) -> int:
        """Fold a peer's entries in: of two entries for a (group, receiver) the later wins."""
        from urdar.components.amshard import merge_nflog
        return merge_nflog(self.entries, (LogEntry(
            str(d["groupKey"]), str(d["receiver"]), frozenset(d["firing"]),
            frozenset(d["resolved"]), float(d["timestamp"]), float(d["expiresAt"]))
            for d in items), self.clock.seconds())

    def restore(self, items: list[dict]) -> None:
        now = self.clock.seconds()
        for d in items:
            e = LogEntry(str(d["groupKey"]), str(d["receiver"]), frozenset(d["firing"]),
                         frozenset(d["resolved"]), float(d["timestamp"]), float(d["expiresAt"]))
            if e.expires_at >= now:
                self.entries[(e.group_key, e.receiver)] = e


def needs_update(entry: Optional[LogEntry], firing: set, resolved: set, send_resolved: bool,
                 repeat: float, now: float) -> bool:
    """notify.DedupStage.needsUpdate."""
    if entry is None:
        return len(firing) > 0
    if not firing <= entry.firing:
        return True
    if not firing:
        return len(entry.firing) > 0
    if send_resolved and not resolved <= entry.resolved:
        return True
    return entry.timestamp < now - repeat
