"""Functions Prometheus' and Alertmanager's template maps share: RE2 regexps, strings, humanizing."""
from __future__ import annotations

import math
import re
from typing import Any, Dict, List

import re2

from urdar.gostrconv import quote

from .errors import FuncError
from .gofmt import go_type, sprintf
from .gotime import GoDuration, GoTime

_RE_CACHE: Dict[str, Any] = {}


def compile_re(pattern: str) -> Any:
    """A compiled RE2 regexp (Go's regexp syntax and semantics), cached by pattern."""
    r = _RE_CACHE.get(pattern)
    if r is None:
        try:
            r = re2.compile(pattern)
        except Exception as e:
            raise FuncError("error parsing regexp: %s: `%s`" % (e, pattern)) from None
        if len(_RE_CACHE) > 1024:
            _RE_CACHE.clear()
        _RE_CACHE[pattern] = r
    return r


def match(pattern: str, s: str) -> bool:
    """regexp.MatchString: does s contain a match of pattern."""
    return compile_re(pattern).search(s) is not None


_TEMPLATE_REF = re.compile(r"\$(?:\$|\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")


def _expand(repl: str, m: Any) -> str:
    """Regexp.Expand: $1, ${1}, $name, ${name}; $$ is a dollar; unknown groups are empty."""
    def one(ref: "re.Match[str]") -> str:
        name = ref.group(1) or ref.group(2)
        if name is None:
            return "$"
        try:
            if name.isdigit():
                g = m.group(int(name))
            else:
                g = m.group(name)
        except (IndexError, KeyError, ValueError, TypeError):
            return ""
        return g or ""
    return _TEMPLATE_REF.sub(one, repl)


def re_replace_all(pattern: str, repl: str, text: str) -> str:
    """Regexp.ReplaceAllString with Go's $-expansion; an empty match right after a match is skipped."""
    r = compile_re(pattern)
    out: List[str] = []
    last_end = 0
    pos = 0
    n = len(text)
    while pos <= n:
        m = r.search(text, pos)
        if m is None:
            break
        a0, a1 = m.span()
        out.append(text[last_end:a0])
        if a1 > last_end or a0 == 0:
            out.append(_expand(repl, m) if "$" in repl else repl)
        last_end = a1
        pos = pos + 1 if pos + 1 > a1 else a1
    out.append(text[last_end:])
    return "".join(out)


def _is_separator(ch: str) -> bool:
    """strings.Title's word boundaries."""
    if ch.isascii():
        return not (ch.isalnum() or ch == "_")
    if ch.isalpha() or ch.isdigit():
        return False
    return ch.isspace()


def title_words(s: str) -> str:
    """strings.Title: upper-case the first letter of each word, leave the rest as it is."""
    out: List[str] = []
    prev = " "
    for ch in s:
        out.append(ch.upper() if _is_separator(prev) else ch)
        prev = ch
    return "".join(out)


def convert_to_float(v: Any) -> float:
    """Prometheus' convertToFloat: numbers, numeric strings and durations (as seconds)."""
    if isinstance(v, bool):
        raise FuncError("can't convert bool to float")
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return parse_go_float(v)
        except ValueError:
            raise FuncError('strconv.ParseFloat: parsing %s: invalid syntax' % quote(v)) from None
    if isinstance(v, GoDuration):
        return v.Seconds()
    if isinstance(v, GoTime):
        return v.unix_seconds()
    raise FuncError("can't convert %s to float" % ("<nil>" if v is None else go_type(v)))


def parse_go_float(s: str) -> float:
    """strconv.ParseFloat(s, 64): also Inf, NaN and hex floats, no surrounding spaces."""
    t = s.strip()
    if t != s or not t:
        raise ValueError(s)
    low = t.lower().lstrip("+-")
    if low in ("inf", "infinity"):
        return -math.inf if t.startswith("-") else math.inf
    if low == "nan":
        return math.nan
    if low.startswith("0x"):
        v = float.fromhex(low)
        return -v if t.startswith("-") else v
    if "_" in t:
        raise ValueError(s)
    return float(t)


_SI_UP = ["k", "M", "G", "T", "P", "E", "Z", "Y"]
_SI_DOWN = ["m", "u", "n", "p", "f", "a", "z", "y"]


def humanize(v: Any) -> str:
    """A number with SI prefixes and 4 significant digits: 1234567 -> 1.235M."""
    x = convert_to_float(v)
    if x == 0 or math.isnan(x) or math.isinf(x):
        return sprintf("%.4g", [x])
    prefix = ""
    if abs(x) >= 1:
        for p in _SI_UP:
            if abs(x) < 1000:
                break
            prefix = p
            x /= 1000
        return sprintf("%.4g", [x]) + prefix
    for p in _SI_DOWN:
        if abs(x) >= 1:
            break
        prefix = p
        x *= 1000
    return sprintf("%.4g", [x]) + prefix


def humanize1024(v: Any) -> str:
    """A number with binary prefixes: 1048576 -> 1Mi."""
    x = convert_to_float(v)
    if abs(x) <= 1 or math.isnan(x) or math.isinf(x):
        return sprintf("%.4g", [x])
    prefix = ""
    for p in ["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"]:
        if abs(x) < 1024:
            break
        prefix = p
        x /= 1024
    return sprintf("%.4g", [x]) + prefix


def humanize_duration(v: Any) -> str:
    """Seconds as days/hours/minutes/seconds: 3601 -> 1h 0m 1s, 0.05 -> 50ms."""
    x = convert_to_float(v)
    if math.isnan(x) or math.isinf(x):
        return sprintf("%.4g", [x])
    if x == 0:
        return sprintf("%.4gs", [x])
    if abs(x) >= 1:
        sign = ""
        if x < 0:
            sign = "-"
            x = -x
        d = int(x)
        seconds, minutes, hours, days = d % 60, d // 60 % 60, d // 3600 % 24, d // 86400
        if days:
            return "%s%dd %dh %dm %ds" % (sign, days, hours, minutes, seconds)
        if hours:
            return "%s%dh %dm %ds" % (sign, hours, minutes, seconds)
        if minutes:
            return "%s%dm %ds" % (sign, minutes, seconds)
        return sign + sprintf("%.4gs", [x])
    prefix = ""
    for p in _SI_DOWN:
        if abs(x) >= 1:
            break
        prefix = p
        x *= 1000
    return sprintf("%.4g", [x]) + prefix + "s"


def safe_html(s: str) -> str:
    """html/template.HTML: in text templates a plain string."""
    return s
