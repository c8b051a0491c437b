"""Reader for Prometheus' promqltest script format (tests/promql/testdata/*.test).

Turns a script into plain command objects (`LoadCmd`, `ClearCmd`, `EvalCmd`, each with its
1-based line number) and expands series notation (`0+10x3` -> 0 10 20 30, `_x2`, `stale`,
`{{...}}` native histogram literals). It does not evaluate anything: a runner feeds the load
commands to a store, runs the eval queries and judges results against the expectations kept
here. The format is described in tests/promql/testdata/README.md.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

from urdar.promql.parser import parse_duration_ms, parse_number, unquote

STALE_NAN_BITS = 0x7FF0000000000002
STALE_NAN = struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0]


def is_stale(v) -> bool:
    return isinstance(v, float) and math.isnan(v) and \
        struct.unpack("<Q", struct.pack("<d", v))[0] == STALE_NAN_BITS


class ScriptError(ValueError):
    """A malformed test script (not a failing test)."""

    def __init__(self, line: int, msg: str):
        self.line = line
        super().__init__("line %d: %s" % (line, msg))


@dataclass
class HistogramItem:
    """A native histogram value: `desc` (parsed literal) or, for `{{a}}+{{b}}xN` series,
    base `desc` combined `k` times with `delta` (sign +1 add, -1 subtract)."""
    desc: dict
    raw: str
    delta: Optional[dict] = None
    sign: int = 1
    k: int = 0

    @property
    def hint_set(self) -> bool:
        """Whether the literal names a counter_reset_hint (only then do evals compare it)."""
        d = self.delta if self.delta is not None else self.desc
        return "counter_reset_hint" in d

    def value(self):
        """The FloatHistogram this item stands for (base combined k times with delta)."""
        from urdar.promql import histograms as H
        h = desc_to_histogram(self.desc)
        if self.delta is None or self.k == 0:
            return h
        inc = desc_to_histogram(self.delta)
        for _ in range(self.k):
            if h.schema > inc.schema and not H.uses_custom(h):
                raise ValueError("error combining histograms: cannot merge from schema %d to %d"
                                 % (inc.schema, h.schema))
            h = (H.add if self.sign > 0 else H.sub)(h, inc)[0]
        return h


Value = Union[None, float, HistogramItem]  # None: omitted position


@dataclass
class SeriesDef:
    labels: Dict[str, str]
    values: List[Value]
    start_offsets_ms: Optional[List[Optional[int]]] = None  # from a preceding `@st` line
    line: int = 0


@dataclass
class LoadCmd:
    line: int
    interval_ms: int
    with_nhcb: bool
    series: List[SeriesDef]


@dataclass
class ClearCmd:
    line: int


@dataclass
class Expectation:
    kind: str  # "warn" / "info"
    msg: Optional[str] = None
    regex: Optional[str] = None


@dataclass
class EvalCmd:
    line: int
    expr: str
    instant: bool
    at_ms: int = 0  # instant queries
    start_ms: int = 0  # range queries
    end_ms: int = 0
    step_ms: int = 0
    fail: bool = False
    fail_msg: Optional[str] = None
    fail_regex: Optional[str] = None
    warn: List[Expectation] = field(default_factory=list)
    info: List[Expectation] = field(default_factory=list)
    expect_warn: bool = False  # eval_warn / expect warn without text
    expect_info: bool = False
    no_warn: bool = False
    no_info: bool = False
    ordered: bool = False
    expected_string: Optional[str] = None
    range_vector: Optional[Tuple[int, int, int]] = None  # expect range vector from/to/step
    expected_scalar: Optional[float] = None
    expected_series: List[SeriesDef] = field(default_factory=list)

    @property
    def exclude_from_range_query(self) -> bool:
        return self.expected_string is not None or self.range_vector is not None


Command = Union[LoadCmd, ClearCmd, EvalCmd]

_PAT_LOAD = re.compile(r"^load(?:_(with_nhcb))?\s+(.+?)$")
_PAT_INSTANT = re.compile(r"^eval(?:_(fail|warn|ordered|info))?\s+instant\s+(?:at\s+(.+?))?\s+(.+)$")
_PAT_RANGE = re.compile(r"^eval(?:_(fail|warn|info))?\s+range\s+from\s+(.+)\s+to\s+(.+)\s+step"
                        r"\s+(.+?)\s+(.+)$")
_PAT_EXPECT = re.compile(r"^expect\s+(ordered|fail|warn|no_warn|info|no_info)"
                         r"(?:\s+(regex|msg):(.+))?$")
_PAT_RANGE_VEC = re.compile(r"^expect range vector\s+from\s+(.+)\s+to\s+(.+)\s+step\s+(.+)$")


def _lines(text: str) -> List[str]:
    out = []
    for raw in text.split("\n"):
        s = raw.strip()
        out.append("" if s.startswith("#") else s)
    return out


def parse_script(text: str) -> List[Command]:
    """Parse a whole promqltest script into commands."""
    lines = _lines(text)
    cmds: List[Command] = []
    i = 0
    while i < len(lines):
        ln = lines[i]
        if ln == "":
            i += 1
            continue
        word = re.split(r"[\t ]+", ln, maxsplit=1)[0].lower()
        if word == "clear":
            cmds.append(ClearCmd(i + 1))
            i += 1
        elif word.startswith("load"):
            i, cmd = _parse_load(lines, i)
            cmds.append(cmd)
        elif word.startswith("eval"):
            i, cmd = _parse_eval(lines, i)
            cmds.append(cmd)
        else:
            raise ScriptError(i + 1, "invalid command %r" % ln)
    return cmds


def _dur(s: str, line: int) -> int:
    try:
        return parse_duration_ms(s)
    except ValueError as e:
        raise ScriptError(line, str(e))


def _parse_load(lines, i):
    m = _PAT_LOAD.match(lines[i])
    if not m:
        raise ScriptError(i + 1, "invalid load command")
    cmd = LoadCmd(i + 1, _dur(m.group(2), i + 1), m.group(1) is not None, [])
    pending_st = None
    i += 1
    while i < len(lines) and lines[i] != "":
        ln = lines[i]
        metric_txt, rest = split_series_line(ln, i + 1)
        if metric_txt.endswith("@st"):
            labels = parse_labels(metric_txt[:-3], i + 1)
            pending_st = (labels, expand_offsets(rest, i + 1))
        else:
            labels = parse_labels(metric_txt, i + 1)
            sd = SeriesDef(labels, expand_values(rest, i + 1), line=i + 1)
            if pending_st is not None:
                if pending_st[0] != labels:
                    raise ScriptError(i + 1, "@st line does not precede its series")
                sd.start_offsets_ms = pending_st[1]
                pending_st = None
            cmd.series.append(sd)
        i += 1
    return i, cmd


def _parse_eval(lines, i):
    ln = lines[i]
    mi = _PAT_INSTANT.match(ln)
    mr = None if mi else _PAT_RANGE.match(ln)
    if not mi and not mr:
        raise ScriptError(i + 1, "invalid evaluation command")
    if mi:
        mod, expr = mi.group(1), mi.group(3)
        cmd = EvalCmd(i + 1, expr, True, at_ms=_dur(mi.group(2) or "0", i + 1))
    else:
        mod, expr = mr.group(1), mr.group(5)
        cmd = EvalCmd(i + 1, expr, False, start_ms=_dur(mr.group(2), i + 1),
                      end_ms=_dur(mr.group(3), i + 1), step_ms=_dur(mr.group(4), i + 1))
        if cmd.end_ms < cmd.start_ms:
            raise ScriptError(i + 1, "end timestamp is before start timestamp")
    if mod == "ordered":
        cmd.ordered = True
    elif mod == "fail":
        cmd.fail = True
    elif mod == "warn":
        cmd.expect_warn = True
    elif mod == "info":
        cmd.expect_info = True
    i += 1
    while i < len(lines) and lines[i] != "":
        d = lines[i]
        i += 1
        if cmd.fail and d.startswith("expected_fail_message"):
            cmd.fail_msg = d[len("expected_fail_message"):].strip()
            break
        if cmd.fail and d.startswith("expected_fail_regexp"):
            cmd.fail_regex = d[len("expected_fail_regexp"):].strip()
            break
        if d.startswith("expect range vector"):
            m = _PAT_RANGE_VEC.match(d)
            if not m:
                raise ScriptError(i, "invalid range vector definition %r" % d)
            cmd.range_vector = (_dur(m.group(1), i), _dur(m.group(2), i), _dur(m.group(3), i))
            continue
        if d.startswith("expect string"):
            s = d[len("expect string"):].strip()
            if not s:
                raise ScriptError(i, "expected string literal not valid")
            try:
                cmd.expected_string = unquote(s)
            except ValueError:
                raise ScriptError(i, "expected string literal not valid")
            continue
        if d.split(" ")[0] == "expect":
            _apply_expect(cmd, d, i)
            continue
        try:
            cmd.expected_scalar = parse_number(d)
            break
        except ValueError:
            pass
        metric_txt, rest = split_series_line(d, i)
        vals = expand_values(rest, i)
        if len(vals) > 1 and cmd.instant and cmd.range_vector is None:
            raise ScriptError(i, "expecting multiple values in instant evaluation not allowed")
        cmd.expected_series.append(SeriesDef(parse_labels(metric_txt, i), vals, line=i))
    return i, cmd


def _apply_expect(cmd: EvalCmd, d: str, line: int):
    m = _PAT_EXPECT.match(d)
    if not m:
        raise ScriptError(line, "invalid expect statement %r" % d)
    kind, how, text = m.group(1), m.group(2), m.group(3)
    text = text.strip() if text is not None else None
    if kind == "ordered":
        cmd.ordered = True
    elif kind == "fail":
        if cmd.fail and (cmd.fail_msg or cmd.fail_regex):
            raise ScriptError(line, "more than one expect fail")
        cmd.fail = True
        if how == "msg":
            cmd.fail_msg = text
        elif how == "regex":
            cmd.fail_regex = text
    elif kind in ("warn", "info"):
        if getattr(cmd, "no_" + kind):
            raise ScriptError(line, "invalid expect lines, %s and no_%s cannot be used together"
                              % (kind, kind))
        setattr(cmd, "expect_" + kind, True)
        if how is not None:
            getattr(cmd, kind).append(Expectation(kind, text if how == "msg" else None,
                                                  text if how == "regex" else None))
    elif kind in ("no_warn", "no_info"):
        base = kind[3:]
        if getattr(cmd, "expect_" + base):
            raise ScriptError(line, "invalid expect lines, %s and %s cannot be used together"
                              % (base, kind))
        setattr(cmd, kind, True)


# -- series lines --------------------------------------------------------------------------------

def split_series_line(line: str, lineno: int) -> Tuple[str, str]:
    """Split `metric{labels} values...` into the metric text and the value text."""
    i, n = 0, len(line)
    while i < n and line[i] not in " \t{":
        i += 1
    if i < n and line[i] == "{":
        # Scan to the matching brace, skipping quoted strings.
        j = i + 1
        while j < n and line[j] != "}":
            if line[j] in "\"'`":
                q = line[j]
                j += 1
                while j < n and line[j] != q:
                    j += 2 if line[j] == "\\" and q != "`" else 1
            j += 1
        if j >= n:
            raise ScriptError(lineno, "unclosed label set in %r" % line)
        i = j + 1
        if line.startswith("@st", i):
            i += 3
    return line[:i], line[i:].strip()


_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def parse_labels(text: str, lineno: int) -> Dict[str, str]:
    """`name{a="b", "c.d"="e"}` / `{__name__="x"}` / `{"x"}` -> label dict (empty values kept
    out, as Prometheus' label builder drops them)."""
    text = text.strip()
    labels: Dict[str, str] = {}
    m = _IDENT.match(text)
    pos = 0
    if m:
        labels["__name__"] = m.group(0)
        pos = m.end()
    rest = text[pos:].strip()
    if not rest:
        return labels
    if rest[0] != "{" or rest[-1] != "}":
        raise ScriptError(lineno, "bad series %r" % text)
    body = rest[1:-1]
    i, n = 0, len(body)

    def read_string(i):
        q = body[i]
        j = i + 1
        while j < n and body[j] != q:
            j += 2 if body[j] == "\\" and q != "`" else 1
        if j >= n:
            raise ScriptError(lineno, "unterminated string in %r" % text)
        return unquote(body[i:j + 1]), j + 1

    while True:
        while i < n and body[i] in " \t,":
            i += 1
        if i >= n:
            break
        if body[i] in "\"'`":
            name, i = read_string(i)
        else:
            mm = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*").match(body, i)
            if not mm:
                raise ScriptError(lineno, "bad label name in %r" % text)
            name, i = mm.group(0), mm.end()
        while i < n and body[i] in " \t":
            i += 1
        if i < n and body[i] == "=":
            i += 1
            while i < n and body[i] in " \t":
                i += 1
            if i >= n or body[i] not in "\"'`":
                raise ScriptError(lineno, "bad label value in %r" % text)
            value, i = read_string(i)
            labels[name] = value
        else:
            labels["__name__"] = name  # a bare quoted metric name
    return {k: v for k, v in labels.items() if v != ""}


def _split_items(text: str) -> List[str]:
    """Whitespace-separated items, keeping `{{ ... }}` literals (which contain spaces) whole."""
    items, i, n = [], 0, len(text)
    while i < n:
        if text[i] in " \t":
            i += 1
            continue
        j = i
        while j < n and text[j] not in " \t":
            if text.startswith("{{", j):
                k = text.find("}}", j)
                if k < 0:
                    raise ValueError("unclosed histogram literal")
                j = k + 2
            else:
                j += 1
        items.append(text[i:j])
        i = j
    return items


_NUM = r"[+-]?(?:[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?|[0-9]+\.|[iI][nN][fF]|[nN][aA][nN])"
_NUM_OR_DUR = r"(?:%s|[0-9]+(?:ms|[smhdwy])(?:[0-9]+(?:ms|[smhdw]))*)" % _NUM
_RE_SEQ = re.compile(r"^(%s)(?:([+-])(%s))?x([0-9]+)$" % (_NUM_OR_DUR, _NUM_OR_DUR.replace("[+-]?", "")))
_RE_HIST = re.compile(r"^(\{\{.*?\}\})(?:([+-])(\{\{.*?\}\}))?(?:x([0-9]+))?$", re.S)


def _num(s: str) -> float:
    t = s.lstrip("+-")
    neg = s.startswith("-")
    if re.match(r"^[0-9]+(ms|[smhdwy])", t):
        v = parse_duration_ms(t) / 1000.0
    else:
        if t[:2].lower() == "0x":
            raise ValueError("hex numbers are not allowed in series values")
        v = parse_number(t)
    return -v if neg else v


def expand_values(text: str, lineno: int = 0) -> List[Value]:
    """Expand series notation into one entry per position: float, STALE_NAN, None (omitted)
    or HistogramItem."""
    out: List[Value] = []
    try:
        items = _split_items(text)
    except ValueError as e:
        raise ScriptError(lineno, str(e))
    for it in items:
        try:
            _expand_item(it, out)
        except ValueError as e:
            raise ScriptError(lineno, "bad series value %r: %s" % (it, e))
    return out


def _expand_item(it: str, out: list):
    if it == "_":
        out.append(None)
        return
    m = re.match(r"^_x([0-9]+)$", it)
    if m:
        out.extend([None] * int(m.group(1)))
        return
    if it == "stale":
        out.append(STALE_NAN)
        return
    if it.startswith("{{"):
        m = _RE_HIST.match(it)
        if not m:
            raise ValueError("bad histogram literal")
        base = parse_histogram(m.group(1))
        times = int(m.group(4)) if m.group(4) is not None else 0
        if m.group(2) is None:
            out.extend(HistogramItem(base, m.group(1)) for _ in range(times + 1))
            return
        if m.group(4) is None:
            raise ValueError("histogram series needs xN")
        delta = parse_histogram(m.group(3))
        sign = 1 if m.group(2) == "+" else -1
        out.extend(HistogramItem(base, it, delta, sign, k) for k in range(times + 1))
        return
    m = _RE_SEQ.match(it)
    if m:
        start = _num(m.group(1))
        times = int(m.group(4))
        if m.group(2) is None:
            out.extend([start] * (times + 1))
            return
        inc = _num(m.group(3))
        if m.group(2) == "-":
            inc = -inc
        v = start
        for _ in range(times + 1):
            out.append(v)
            v += inc
        return
    out.append(_num(it))


def expand_offsets(text: str, lineno: int = 0) -> List[Optional[int]]:
    """Expand an `@st` line: items `_`, `_xN`, `<d>`, `<d>xN`, `<d>+<d>xN`, `<d>-<d>xN`
    (durations, possibly negative) -> ms offsets or None."""
    out: List[Optional[int]] = []
    dur = r"(?:0|[0-9]+(?:ms|[smhdwy])(?:[0-9]+(?:ms|[smhdw]))*)"
    pat = re.compile(r"^([+-]?%s)(?:([+-])(%s))?(?:x([0-9]+))?$" % (dur, dur))

    def d(s):
        if s[0] in "+-":
            v = parse_duration_ms(s[1:])
            return -v if s[0] == "-" else v
        return parse_duration_ms(s)

    for it in text.split():
        if it == "_":
            out.append(None)
            continue
        m = re.match(r"^_x([0-9]+)$", it)
        if m:
            out.extend([None] * int(m.group(1)))
            continue
        m = pat.match(it)
        if not m:
            raise ScriptError(lineno, "bad start-timestamp item %r" % it)
        v = d(m.group(1))
        times = int(m.group(4)) if m.group(4) is not None else 0
        inc = 0
        if m.group(2) is not None:
            if m.group(4) is None:
                raise ScriptError(lineno, "bad start-timestamp item %r" % it)
            inc = d(m.group(3)) * (1 if m.group(2) == "+" else -1)
        for _ in range(times + 1):
            out.append(v)
            v += inc
    return out


_HIST_KEYS = ("schema", "sum", "count", "z_bucket", "z_bucket_w", "buckets", "offset",
              "n_buckets", "n_offset", "custom_values", "counter_reset_hint")


def parse_histogram(lit: str) -> dict:
    """`{{schema:1 sum:3 buckets:[1 2]}}` -> dict of the keys present (numbers as float or
    int, bucket lists as float lists, counter_reset_hint as a string)."""
    body = lit.strip()[2:-2].strip()
    out: dict = {}
    i, n = 0, len(body)
    while i < n:
        while i < n and body[i] in " \t":
            i += 1
        if i >= n:
            break
        m = re.compile(r"([a-z_]+):").match(body, i)
        if not m or m.group(1) not in _HIST_KEYS:
            raise ValueError("bad histogram descriptor at %r" % body[i:])
        key = m.group(1)
        if key in out:
            raise ValueError('duplicate key "%s" in histogram' % key)
        i = m.end()
        while i < n and body[i] == " ":
            i += 1
        if i < n and body[i] == "[":
            j = body.index("]", i)
            out[key] = [_num(x) for x in body[i + 1:j].split()]
            i = j + 1
        else:
            j = i
            while j < n and body[j] not in " \t":
                j += 1
            tok = body[i:j]
            i = j
            if key == "counter_reset_hint":
                if tok not in ("unknown", "reset", "not_reset", "gauge"):
                    raise ValueError("bad counter_reset_hint %r" % tok)
                out[key] = tok
            elif key in ("schema", "offset", "n_offset"):
                out[key] = int(tok)
            else:
                out[key] = _num(tok)
    return out


_HINTS = {"unknown": 0, "reset": 1, "not_reset": 2, "gauge": 3}


def desc_to_histogram(d: dict):
    """A parsed literal as a FloatHistogram (as Prometheus' buildHistogramFromMap)."""
    from urdar.engine.histogram import FloatHistogram
    pos = d.get("buckets", [])
    neg = d.get("n_buckets", [])
    return FloatHistogram(
        schema=int(d.get("schema", 0)), sum=float(d.get("sum", 0.0)),
        count=float(d.get("count", 0.0)), zero_count=float(d.get("z_bucket", 0.0)),
        zero_threshold=float(d.get("z_bucket_w", 0.0)),
        custom_values=[float(x) for x in d.get("custom_values", [])],
        counter_reset_hint=_HINTS[d.get("counter_reset_hint", "unknown")],
        positive_spans=[(int(d.get("offset", 0)), len(pos))] if pos else [],
        positive_buckets=[float(x) for x in pos],
        negative_spans=[(int(d.get("n_offset", 0)), len(neg))] if neg else [],
        negative_buckets=[float(x) for x in neg])


def load_file(path: str) -> List[Command]:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return parse_script(f.read())


def nhcb_series(cmd: "LoadCmd"):
    """`load_with_nhcb`: the classic histograms of a load (name_bucket{le=...}, name_count,
    name_sum) as native histograms with custom buckets, as promqltest converts them
    (util/convertnhcb): [(labels, [(t ms, FloatHistogram)])]. A histogram whose buckets are not
    cumulative or do not add up to its count is left out (promqltest refuses the load)."""
    from urdar.promql import histograms as H
    temps: Dict[tuple, Dict[int, dict]] = {}
    for sd in cmd.series:
        name = sd.labels.get("__name__", "")
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix):
                break
        else:
            continue
        le = None
        if suffix == "_bucket":
            try:
                le = parse_number(sd.labels.get("le", ""))
            except ValueError:
                continue
            if math.isnan(le):
                continue
        base = dict(sd.labels)
        base["__name__"] = name[:-len(suffix)]
        base.pop("le", None)
        key = tuple(sorted(base.items()))
        by_t = temps.setdefault(key, {})
        for i, v in enumerate(sd.values):
            if v is None or isinstance(v, HistogramItem):
                continue
            t = by_t.setdefault(i * cmd.interval_ms, {"buckets": {}, "count": None, "sum": 0.0})
            if suffix == "_bucket":
                t["buckets"].setdefault(le, v)
            elif suffix == "_count":
                t["count"] = v
            else:
                t["sum"] = v
    out = []
    for key, by_t in temps.items():
        points = []
        for t in sorted(by_t):
            h = _convert_nhcb(by_t[t])
            if h is not None:
                points.append((t, H.compact(h)))
        if points:
            out.append((dict(key), points))
    return out


def _convert_nhcb(temp):
    from urdar.engine.histogram import FloatHistogram
    bs = sorted(temp["buckets"].items())
    if any(c < 0 for _, c in bs) or any(b[1] < a[1] for a, b in zip(bs, bs[1:])):
        return None
    count = temp["count"]
    if count is None:
        if not bs:
            return None
        count = bs[-1][1]
    if count < 0:
        return None
    if not bs or bs[-1][0] != math.inf:
        bs.append((math.inf, count))
    if bs[-1][1] != count:
        return None
    buckets, prev = [], 0.0
    for _, c in bs:
        buckets.append(c - prev)
        prev = c
    return FloatHistogram(schema=-53, count=count, sum=temp["sum"],
                          positive_spans=[(0, len(bs))], positive_buckets=buckets,
                          custom_values=[le for le, _ in bs[:-1]])
