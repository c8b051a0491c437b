"""The vocabulary of options: value kinds, durations and the `Option` row that flags, YAML and
status pages share.

The option table itself lives on top (app/config.py, one row per flag); per-tenant limit rows live
with the limits (components/limits.py), since runtime-config overrides are parsed there too. A
`ConfigError` stops start-up (or refuses a runtime-config reload) naming the flag or key."""
import re
from dataclasses import dataclass
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem that stops start-up; the message names the flag or YAML key."""


def load_yaml_mapping(text: str, where: str, shape: str) -> dict[Any, Any]:
    """A config document's top-level mapping ({} when empty); ConfigError for invalid YAML or a
    top level that is not a mapping (`shape` says what it must be)."""
    try:
        doc = yaml.load(text, Loader=yaml.CSafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError("%s: invalid YAML: %s" % (where, exc)) from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError("%s: the top level must be %s" % (where, shape))
    return doc


# ---- value types ---------------------------------------------------------------------------

_DUR_UNITS = {"y": 365 * 86400000, "w": 7 * 86400000, "d": 86400000, "h": 3600000, "m": 60000,
              "s": 1000, "ms": 1, "us": 0.001, "µs": 0.001, "ns": 0.000001}
_DUR_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|y|w|d|h|m|s)")


def parse_duration_ms(text):
    """Duration text ("2h", "1h30m", "500ms", "0") to int milliseconds; ValueError if malformed."""
    if isinstance(text, bool):
        raise ValueError("not a duration: %r" % (text,))
    if isinstance(text, int):
        if text == 0:
            return 0
        raise ValueError("duration %r needs a unit (e.g. 10s, 5m, 2h)" % (text,))
    s = str(text).strip()
    if s in ("0", "-0"):
        return 0
    neg = s.startswith("-")
    body = s[1:] if neg else s
    pos, total = 0, 0.0
    for m in _DUR_PART.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DUR_UNITS[m.group(2)]
        pos = m.end()
    if not body or pos != len(body):
        raise ValueError("not a duration: %r (use e.g. 10s, 5m, 2h, 1h30m)" % (s,))
    ms = int(round(total))
    return -ms if neg else ms


def format_duration_ms(ms):
    """Int milliseconds to Prometheus-style duration text: 7200000 -> "2h", 0 -> "0s"."""
    if ms == 0:
        return "0s"
    out = "-" if ms < 0 else ""
    ms = abs(ms)
    for unit in ("h", "m", "s", "ms"):
        size = _DUR_UNITS[unit]
        if ms >= size:
            out += "%d%s" % (ms // size, unit)
            ms %= size
    return out


def _parse_bool(v):
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("true", "1", "t", "yes"):
        return True
    if s in ("false", "0", "f", "no"):
        return False
    raise ValueError("not a boolean: %r (use true or false)" % (v,))


def _parse_int(v):
    if isinstance(v, bool):
        raise ValueError("not an integer: %r" % (v,))
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    try:
        return int(str(v).strip(), 10)
    except ValueError:
        raise ValueError("not an integer: %r" % (v,)) from None


def _parse_float(v):
    if isinstance(v, bool):
        raise ValueError("not a number: %r" % (v,))
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ValueError("not a number: %r" % (v,)) from None


def _parse_str(v):
    if v is None:
        return ""
    if isinstance(v, (dict, list)):
        raise ValueError("expected a string, got %s" % type(v).__name__)
    return str(v)


def _parse_list(v):
    if v is None:
        return ()
    if isinstance(v, (list, tuple)):
        return tuple(_parse_str(x).strip() for x in v if _parse_str(x).strip())
    return tuple(x.strip() for x in _parse_str(v).split(",") if x.strip())


def _parse_duration_list(v):
    return tuple(parse_duration_ms(x) for x in _parse_list(v))


PARSERS = {"str": _parse_str, "int": _parse_int, "float": _parse_float, "bool": _parse_bool,
           "duration": parse_duration_ms, "list": _parse_list, "duration_list": _parse_duration_list}


@dataclass(frozen=True)
class Option:
    """One setting: flag name (without dashes), dotted YAML path, kind, default and help.

    `tenant` marks per-tenant limits (also accepted in runtime-config overrides), `secret`
    values are masked on /config, `choices` restricts the (each, for lists) value."""
    flag: str
    path: str
    kind: str
    default: object
    help: str
    choices: tuple = ()
    secret: bool = False
    tenant: bool = False

    def parse(self, raw: Any, where: str) -> Any:
        try:
            value = PARSERS[self.kind](raw)
        except ValueError as exc:
            raise ConfigError("invalid value for %s: %s" % (where, exc)) from None
        if self.choices:
            for item in (value if isinstance(value, tuple) else (value,)):
                if item not in self.choices:
                    raise ConfigError("invalid value for %s: %r is not one of %s"
                                      % (where, item, ", ".join(self.choices)))
        if self.kind in ("int", "float", "duration") and value < 0:
            raise ConfigError("invalid value for %s: must not be negative" % (where,))
        return value

    def render(self, value: Any) -> Any:
        """The value as /config shows it (YAML scalar or list)."""
        if self.secret and value:
            return "********"
        if self.kind == "duration":
            return format_duration_ms(value)
        if self.kind == "duration_list":
            return [format_duration_ms(v) for v in value]
        if self.kind == "list":
            return ",".join(value) if self.path == "target" else list(value)
        return value
