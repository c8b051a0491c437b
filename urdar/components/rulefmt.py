"""Rule groups as Prometheus' rulefmt and Mimir's ruler see them: parse one YAML group, validate it
as `promtool check rules` (and Mimir's ruler API) do, write it back as Mimir writes YAML, and
encode it as Mimir's `rules.RuleGroupDesc` protobuf (what the rule store keeps in the bucket).

Parsing decodes the way gopkg.in/yaml.v3 decodes into rulefmt.RuleGroup: unknown keys are ignored,
any scalar fills a string field with its text, a mapping or sequence where a string belongs (or a
bad duration) makes the whole body undecodable. Validation messages are Prometheus' texts with
yaml.v3's 1-based line:column prefixes and Mimir's 0-based rule index. Templates in labels and
annotations get a light syntax check of Go text/template (actions closed, quotes and parentheses
balanced, control blocks ended, variables declared), not a full parse: urdar/gotemplate/ will
replace it. YAML output follows yaml.v3's layout (4-space indent, "- " items indented, map keys in
yaml.v3's natural order, strings quoted when yaml.v3 would read them back as something else)."""
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml._yaml import CEmitter

from urdar.promql.ast import go_quote
from urdar.promql.parser import ParseError, parse_expr

# ---- the model ---------------------------------------------------------------------------------


@dataclass
class Rule:
    """One recording (`record`) or alerting (`alert`) rule; durations in ms. `pos` keeps the
    yaml.v3 (line, column) of record, alert and expr for validation messages ((0, 0) if absent)."""
    record: str = ""
    alert: str = ""
    expr: str = ""
    for_ms: int = 0
    keep_firing_for_ms: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    pos: dict[str, tuple[int, int]] = field(default_factory=dict, compare=False, repr=False)


@dataclass
class RuleGroup:
    """A rule group as Mimir stores it (rulespb.RuleGroupDesc minus user and namespace)."""
    name: str = ""
    interval_ms: int = 0
    rules: list[Rule] = field(default_factory=list)
    source_tenants: list[str] = field(default_factory=list)
    evaluation_delay_ms: int | None = None
    query_offset_ms: int | None = None
    align_evaluation_time_on_interval: bool = False
    # Prometheus' `limit` (series per recording rule, alerts per alerting rule; 0: none). Mimir's
    # RuleGroupDesc has no field for it (Mimir drops it); urdar keeps it in the message's
    # `options` (repeated google.protobuf.Any, field 9), which Mimir reads and ignores.
    limit: int = 0


class DecodeError(ValueError):
    """The body is not one YAML rule group (Mimir answers "unable to decode rule group")."""


# ---- durations (Prometheus' model.Duration) ------------------------------------------------------

_DUR_RE = re.compile(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")
_DUR_UNITS_MS = (365 * 86400000, 7 * 86400000, 86400000, 3600000, 60000, 1000, 1)
_DUR_NAMES = ("y", "w", "d", "h", "m", "s", "ms")
MAX_DURATION_MS = (1 << 63) // 1000000      # what fits a Go time.Duration


def parse_duration(text: str) -> int:
    """model.ParseDuration: "1h30m", "5m", "0" -> ms; ValueError with Prometheus' text."""
    if text == "0":
        return 0
    m = _DUR_RE.match(text)
    if not text or m is None:
        raise ValueError("not a valid duration string: %r" % (text,))
    ms = sum(int(g) * unit for g, unit in zip(m.groups(), _DUR_UNITS_MS) if g is not None)
    if ms > MAX_DURATION_MS:
        raise ValueError("duration out of range")
    return ms


def format_duration(ms: int) -> str:
    """model.Duration.String(): the largest units first, "0s" for zero."""
    if ms == 0:
        return "0s"
    out = []
    for unit, name in zip(_DUR_UNITS_MS, _DUR_NAMES):
        if ms >= unit:
            out.append("%d%s" % (ms // unit, name))
            ms %= unit
    return "".join(out)


# ---- decoding ----------------------------------------------------------------------------------

def _pos(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


# Decoding work left for the body being decoded (per thread: decodes run in offload pools).
_budget = threading.local()


def _spend(n: int) -> None:
    """Charge `n` units of decoding work; aliases could otherwise make a small body expand into
    an unbounded amount of text to decode and validate (yaml.v3 refuses excessive aliasing too)."""
    _budget.left -= n
    if _budget.left < 0:
        raise DecodeError("document contains excessive aliasing")


def _scalar(node: yaml.Node) -> str:
    """yaml.v3 decoding any scalar into a Go string: its text; null leaves it empty."""
    _spend(1 + len(getattr(node, "value", "") if isinstance(node, yaml.ScalarNode) else ""))
    if not isinstance(node, yaml.ScalarNode):
        raise DecodeError("expected a string")
    if node.tag == "tag:yaml.org,2002:null":
        return ""
    return str(node.value)


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _duration(node: yaml.Node) -> int:
    if _is_null(node):
        return 0        # yaml.v3 leaves a null field at zero without calling its unmarshaler
    try:
        return parse_duration(_scalar(node))
    except ValueError as exc:
        raise DecodeError(str(exc)) from None


def _string_map(node: yaml.Node) -> dict[str, str]:
    if _is_null(node):
        return {}
    return {key: _scalar(v) for key, v in _mapping(node)}


def _sequence(node: yaml.Node, what: str) -> list[yaml.Node] | None:
    """The items of a YAML list; None for null (the field keeps its default)."""
    if _is_null(node):
        return None
    if not isinstance(node, yaml.SequenceNode):
        raise DecodeError("%s must be a list" % what)
    return list(node.value)


def _mapping(node: yaml.Node) -> list[tuple[str, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise DecodeError("expected a mapping")
    out = []
    seen = set()
    for k, v in node.value:
        key = _scalar(k)
        if key in seen:     # yaml.v3: 'mapping key "x" already defined at line N'
            raise DecodeError("mapping key %r already defined" % (key,))
        seen.add(key)
        out.append((key, v))
    return out


# YAML duration fields -> the attribute holding them in milliseconds.
_RULE_DURATIONS = {"for": "for_ms", "keep_firing_for": "keep_firing_for_ms"}
_GROUP_DURATIONS = {"interval": "interval_ms", "evaluation_delay": "evaluation_delay_ms",
                    "query_offset": "query_offset_ms"}


def _rule(node: yaml.Node) -> Rule:
    r = Rule()
    for key, value in _mapping(node):
        if key in ("record", "alert", "expr"):
            setattr(r, key, _scalar(value))
            r.pos[key] = _pos(value)
        elif key in _RULE_DURATIONS:
            setattr(r, _RULE_DURATIONS[key], _duration(value))
        elif key == "labels":
            r.labels = _string_map(value)
        elif key == "annotations":
            r.annotations = _string_map(value)
    return r


def _int(node: yaml.Node, key: str) -> int:
    """A Go int field as yaml.v3 decodes it (decimal, 0x, 0o, 0b, leading-0 octal; null: 0)."""
    if _is_null(node):
        return 0
    text = _scalar(node)
    if not _GO_INT.match(text):
        raise DecodeError("%s must be an integer" % key)
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-")
    if len(digits) > 1 and digits[0] == "0" and digits[1] in "01234567":
        n = int(digits[1:], 8)
    else:
        n = int(digits, 0)
    n *= sign
    if not -(1 << 63) <= n < 1 << 63:
        raise DecodeError("%s must be an integer" % key)
    return n


def decode_group(payload: bytes) -> RuleGroup:
    """One YAML rule group -> RuleGroup; DecodeError when yaml.v3 would fail to decode it. The
    text decoded (and so validated) is bounded by a few times the body's size."""
    _budget.left = 4 * len(payload) + 4096
    try:
        node = yaml.compose(payload, Loader=yaml.CSafeLoader)
    except (yaml.YAMLError, UnicodeDecodeError, ValueError) as exc:
        raise DecodeError(str(exc)) from None
    g = RuleGroup()
    if node is None or _is_null(node):
        return g
    for key, value in _mapping(node):
        if key == "name":
            g.name = _scalar(value)
        elif key in _GROUP_DURATIONS:
            setattr(g, _GROUP_DURATIONS[key], _duration(value))
        elif key == "source_tenants":
            items = _sequence(value, key)
            if items is not None:
                g.source_tenants = [_scalar(v) for v in items]
        elif key == "align_evaluation_time_on_interval":
            v = _scalar(value)
            if v not in ("true", "false", "True", "False", "TRUE", "FALSE", ""):
                raise DecodeError("align_evaluation_time_on_interval must be a bool")
            g.align_evaluation_time_on_interval = v.lower() == "true"
        elif key == "rules":
            items = _sequence(value, key)
            if items is not None:
                g.rules = [_rule(v) for v in items]
        elif key == "limit":
            g.limit = _int(value, key)
    return g


# ---- validation --------------------------------------------------------------------------------

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def _at(rule: Rule, key: str) -> str:
    line, col = rule.pos.get(key, (0, 0))
    return "%d:%d: " % (line, col)


def validate_rule(r: Rule) -> list[tuple[str, str]]:
    """Prometheus' rulefmt checks of one rule: [(position prefix, message)]."""
    errs: list[tuple[str, str]] = []
    if r.record and r.alert:
        errs.append((_at(r, "record") + _at(r, "alert"), "only one of 'record' and 'alert' must be set"))
    if not r.record and not r.alert:
        errs.append((_at(r, "record") + _at(r, "alert"), "one of 'record' or 'alert' must be set"))
    if not r.expr:
        errs.append((_at(r, "expr"), "field 'expr' must be set in rule"))
    else:
        try:
            parse_expr(r.expr)
        except ParseError as exc:
            errs.append((_at(r, "expr"), "could not parse expression: %s" % (exc,)))
    if r.record:
        if r.annotations:
            errs.append((_at(r, "record"), "invalid field 'annotations' in recording rule"))
        if r.for_ms:
            errs.append((_at(r, "record"), "invalid field 'for' in recording rule"))
        if r.keep_firing_for_ms:
            errs.append((_at(r, "record"), "invalid field 'keep_firing_for' in recording rule"))
        if not _METRIC_NAME.match(r.record):
            errs.append((_at(r, "record"), "invalid recording rule name: %s" % (r.record,)))
        if "{" in r.record or "}" in r.record:
            errs.append((_at(r, "record"), "braces present in the recording rule name; should it be "
                         "in expr?: %s" % (r.record,)))
    for k, v in r.labels.items():
        if not _LABEL_NAME.match(k) or k == "__name__":
            errs.append(("", "invalid label name: %s" % (k,)))
    for k in r.annotations:
        if not _LABEL_NAME.match(k):
            errs.append(("", "invalid annotation name: %s" % (k,)))
    if r.alert:
        for kind, items in (("label", r.labels), ("annotation", r.annotations)):
            for k, v in items.items():
                err = check_template(v, "__alert_" + r.alert)
                if err:
                    errs.append(("", "%s %s: %s" % (kind, go_quote(k), err)))
    return errs


def validate_group(g: RuleGroup, federation_enabled: bool = False) -> list[str]:
    """Mimir's ValidateRuleGroup: the messages its ruler API joins with ", " in a 400."""
    if not g.name:
        return ["invalid rules configuration: rule group name must not be empty"]
    if not g.rules:
        return ["invalid rules configuration: rule group '%s' has no rules" % (g.name,)]
    errs = []
    if not federation_enabled and g.source_tenants:
        errs.append("invalid rules configuration: rule group '%s' is a federated rule group, but "
                    "rules federation is disabled; please contact your service administrator to "
                    "have it enabled" % (g.name,))
    if (g.evaluation_delay_ms is not None and g.query_offset_ms is not None
            and g.evaluation_delay_ms != g.query_offset_ms):
        errs.append("invalid rules configuration: rule group '%s' has both query_offset and "
                    "(deprecated) evaluation_delay set, but to different values; please remove "
                    "the deprecated evaluation_delay and use query_offset instead" % (g.name,))
    for i, r in enumerate(g.rules):
        name = r.alert or r.record
        for where, msg in validate_rule(r):
            errs.append("%sgroup %s, rule %d, %s: %s" % (where, go_quote(g.name), i, go_quote(name), msg))
    return errs


# Variables Prometheus defines before every rule template.
_TEMPLATE_VARS = frozenset(("$", "$labels", "$externalLabels", "$externalURL", "$value"))
_CONTROL = ("if", "range", "with", "define", "block")
# Functions a rule template may call: Go's builtins and Prometheus' template functions.
_FUNCTIONS = frozenset((
    "and", "call", "html", "index", "slice", "js", "len", "not", "or", "print", "printf",
    "println", "urlquery", "eq", "ge", "gt", "le", "lt", "ne",
    "query", "first", "label", "value", "strvalue", "args", "reReplaceAll", "safeHtml", "match",
    "title", "toUpper", "toLower", "graphLink", "tableLink", "sortByLabel", "stripPort",
    "stripDomain", "humanize", "humanize1024", "humanizeDuration", "humanizePercentage",
    "humanizeTimestamp", "toTime", "toDuration", "now", "pathPrefix", "externalURL",
    "parseDuration", "urlQueryEscape"))
_KEYWORDS = frozenset(("if", "else", "end", "range", "with", "define", "block", "template",
                       "break", "continue", "nil", "true", "false"))
_IDENT = re.compile(r"(?<![.$\w])([A-Za-z_][A-Za-z0-9_]*)")


def check_template(text: str, name: str) -> str:
    """A light syntax check of a Go text/template: '' when it looks parseable, else Go's message
    ("template: NAME:LINE: unclosed action", ...). Checks actions are closed, quotes and
    parentheses inside them balanced, control blocks ended, variables declared before use."""
    declared = set(_TEMPLATE_VARS)
    depth = 0
    i = 0
    n = len(text)
    line, counted = 1, 0        # the line of offset `counted`, advanced action by action
    while True:
        start = text.find("{{", i)
        if start < 0:
            break
        line += text.count("\n", counted, start)
        counted = start
        j = start + 2
        if text.startswith("-", j) and j + 1 < n and text[j + 1] in " \t\r\n":
            j += 1
        if text.startswith("/*", j):
            end = text.find("*/", j + 2)
            close = text.find("}}", end + 2) if end >= 0 else -1
            if end < 0 or close < 0:
                return "template: %s:%d: unclosed comment" % (name, line)
            i = close + 2
            continue
        # Scan the action, honouring quotes, so "}}" inside a string does not end it.
        k = j
        parens = 0
        end = -1
        while k < n:
            c = text[k]
            if c in "\"'`":
                q = text.find(c, k + 1) if c == "`" else _end_quote(text, k + 1, c)
                if q < 0:
                    what = "raw quoted string" if c == "`" else (
                        "quoted string" if c == '"' else "character constant")
                    return "template: %s:%d: unterminated %s" % (name, line, what)
                k = q + 1
                continue
            if c == "(":
                parens += 1
            elif c == ")":
                parens -= 1
                if parens < 0:
                    return "template: %s:%d: unexpected right paren U+0029 ')'" % (name, line)
            elif text.startswith("}}", k):
                end = k
                break
            k += 1
        if end < 0:
            return "template: %s:%d: unclosed action" % (name, line)
        if parens > 0:
            return "template: %s:%d: unclosed left paren" % (name, line)
        body = text[j:end]
        if body.endswith("-") and len(body) >= 2 and body[-2] in " \t\r\n":
            body = body[:-1]
        words = body.split()
        if not words:
            return "template: %s:%d: missing value for command" % (name, line)
        word = words[0]
        if word in ("if", "range", "with") and len(words) == 1:
            return "template: %s:%d: missing value for %s" % (name, line, word)
        if word in _CONTROL:
            depth += 1
        elif word == "end":
            if depth == 0:
                return "template: %s:%d: unexpected {{end}}" % (name, line)
            depth -= 1
        elif word == "else" and depth == 0:
            return "template: %s:%d: unexpected {{else}}" % (name, line)
        plain = _strip_strings(body)
        for ident in _IDENT.findall(re.sub(r"\d[\w.+-]*", " ", plain)):
            if ident not in _FUNCTIONS and ident not in _KEYWORDS:
                return "template: %s:%d: function %s not defined" % (name, line, go_quote(ident))
        if ":=" in plain:
            left, _, plain = plain.partition(":=")
            declared.update(re.findall(r"\$[A-Za-z0-9_]*", left))
        for var in re.findall(r"\$[A-Za-z0-9_]*", plain):
            if var not in declared:
                return "template: %s:%d: undefined variable %s" % (name, line, go_quote(var))
        i = end + 2
    if depth:
        return "template: %s:%d: unexpected EOF" % (name, text.count("\n") + 1)
    return ""


def _end_quote(text: str, k: int, q: str) -> int:
    while k < len(text):
        c = text[k]
        if c == "\\":
            k += 2
            continue
        if c == q:
            return k
        if c == "\n":
            return -1
        k += 1
    return -1


def _strip_strings(body: str) -> str:
    return re.sub(r'"(?:\\.|[^"\\])*"|`[^`]*`|\'(?:\\.|[^\'\\])*\'', '""', body)


# ---- YAML output (gopkg.in/yaml.v3's layout) ----------------------------------------------------

class _ScalarDumper(CEmitter, yaml.representer.SafeRepresenter,
                    yaml.resolver.BaseResolver):
    """libyaml's emitter (the one yaml.v3 ports) with no implicit types: every scalar is a str
    and libyaml alone picks plain, single- or double-quoted, as yaml.v3's emitter does."""

    def __init__(self, stream: Any, **kw: Any) -> None:
        CEmitter.__init__(self, stream, canonical=None, indent=4, width=-1,
                                     allow_unicode=True, line_break=None, encoding=None,
                                     explicit_start=None, explicit_end=None, version=None,
                                     tags=None)
        yaml.representer.SafeRepresenter.__init__(self, default_style=None, default_flow_style=False,
                                                  sort_keys=False)
        yaml.resolver.BaseResolver.__init__(self)


class _Styled(str):
    """A string the dumper writes in the style set on it (None: libyaml chooses)."""
    style: str | None = None


def _represent_styled(dumper: Any, data: _Styled) -> Any:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style=data.style)


def _represent_str(dumper: Any, data: str) -> Any:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_ScalarDumper.add_representer(str, _represent_str)
_ScalarDumper.add_representer(_Styled, _represent_styled)


def _styled(s: str, style: str | None) -> _Styled:
    out = _Styled(s)
    out.style = style
    return out

_OLD_BOOLS = frozenset("y Y yes Yes YES on On ON n N no No NO off Off OFF".split())
_RESOLVE_MAP = frozenset("true True TRUE false False FALSE ~ null Null NULL .nan .NaN .NAN .inf .Inf "
                         ".INF +.inf +.Inf +.INF -.inf -.Inf -.INF <<".split())
_GO_INT = re.compile(r"^[-+]?(?:0[xX][0-9a-fA-F]+|0[oO]?[0-7]+|0[bB][01]+|[1-9][0-9]*|0)$")
_YAML_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_TIMESTAMP = re.compile(r"^\d{4}-\d{1,2}-\d{1,2}(?:[Tt ]\d{1,2}:\d{1,2}:\d{1,2}(?:\.\d+)?"
                        r"(?:Z|[-+]\d{2}:\d{2})?)?$")
_BASE60 = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")


def _resolves_non_str(s: str) -> bool:
    """Whether yaml.v3 would read `s` back, written plain, as something other than a string."""
    if s == "" or s in _RESOLVE_MAP:
        return True
    if s[0] not in "+-.0123456789":
        return False
    plain = s.replace("_", "")
    return bool(_GO_INT.match(plain) or _YAML_FLOAT.match(plain) or _TIMESTAMP.match(s)
                or (s.startswith(".") and _YAML_FLOAT.match(plain)))


def _needs_quotes(s: str, node_field: bool) -> bool:
    if _resolves_non_str(s):
        return True
    return not node_field and (s in _OLD_BOOLS or bool(_BASE60.match(s)))


def _emit(value: str, style: str | None) -> str:
    out: str = yaml.dump({"k": _styled(value, style)}, Dumper=_ScalarDumper)
    if out.endswith("\n...\n"):      # libyaml ends an open-ended document (keep chomping)
        out = out[:-len("...\n")]
    return out[len("k: "):]


def _key(s: str) -> str:
    out: str = yaml.dump({_styled(s, '"' if _needs_quotes(s, False) else None): "v"},
                         Dumper=_ScalarDumper)
    return out[:-len(": v\n")]


def _scalar_lines(s: str, node_field: bool, indent: int) -> str:
    """` value` or ` |-\\n<indented lines>`: the text after "key:" for string `s`."""
    if "\n" in s:
        out = _emit(s, "|")
        if out.startswith("|"):
            head, _, body = out.partition("\n")
            lines = [ln if ln.strip(" ") else "" for ln in body.split("\n")]
            while lines and lines[-1] == "":
                lines.pop()
            if "+" in head:
                # Keep chomping: the blank lines are content (libyaml adds one more at the end
                # of a document, which a value inside a mapping does not have).
                lines += [""] * (len(s) - len(s.rstrip("\n")) - 1)
            pad = " " * indent
            text = "\n".join((pad + ln[4:]) if ln else "" for ln in lines)
            return " " + head + "\n" + text.rstrip(" ")
        return " " + out.rstrip("\n")
    out = _emit(s, '"' if _needs_quotes(s, node_field) else None)
    return " " + out.rstrip("\n")


def _next_indent(indent: int, in_sequence: bool) -> int:
    return indent + 2 if in_sequence else 4 * ((indent + 4) // 4)


def _key_order(keys: list[str]) -> list[str]:
    import functools
    return sorted(keys, key=functools.cmp_to_key(_yaml_v3_cmp))


def _yaml_v3_cmp(a: str, b: str) -> int:
    """yaml.v3's map key order: letters before other runes, digit runs compared as numbers."""
    digits = False
    for i in range(min(len(a), len(b))):
        ca, cb = a[i], b[i]
        if ca == cb:
            digits = ca.isdigit()
            continue
        al, bl = ca.isalpha(), cb.isalpha()
        if al and bl:
            return -1 if ca < cb else 1
        if al or bl:
            first_a = al if digits else bl
            return -1 if first_a else 1
        an = bn = 0
        if ca == "0" or cb == "0":
            j = i - 1
            while j >= 0 and a[j].isdigit():
                if a[j] != "0":
                    an = bn = 1
                    break
                j -= 1
        ai = i
        while ai < len(a) and a[ai].isdigit():
            an = an * 10 + (ord(a[ai]) - 48)
            ai += 1
        bi = i
        while bi < len(b) and b[bi].isdigit():
            bn = bn * 10 + (ord(b[bi]) - 48)
            bi += 1
        if an != bn:
            return -1 if an < bn else 1
        if ai != bi:
            return -1 if ai < bi else 1
        return -1 if ca < cb else 1
    if len(a) == len(b):
        return 0
    return -1 if len(a) < len(b) else 1


def _emit_map(out: list[str], items: dict[str, str], indent: int) -> None:
    for k in _key_order(list(items)):
        out.append(" " * indent + _key(k) + ":" + _scalar_lines(items[k], False,
                                                                _next_indent(indent, False)))


def _group_lines(g: RuleGroup, indent: int, first_prefix: str) -> list[str]:
    """The mapping of one group at `indent`; its first line starts with `first_prefix` ('- ')."""
    fields: list[tuple[str, Any]] = [("name", g.name)]
    if g.interval_ms:
        fields.append(("interval", format_duration(g.interval_ms)))
    if g.evaluation_delay_ms:
        fields.append(("evaluation_delay", format_duration(g.evaluation_delay_ms)))
    if g.query_offset_ms:
        fields.append(("query_offset", format_duration(g.query_offset_ms)))
    if g.limit:
        fields.append(("limit", str(g.limit)))
    fields.append(("rules", g.rules))
    if g.source_tenants:
        fields.append(("source_tenants", g.source_tenants))
    if g.align_evaluation_time_on_interval:
        fields.append(("align_evaluation_time_on_interval", True))
    out: list[str] = []
    in_seq = bool(first_prefix)
    for n, (key, value) in enumerate(fields):
        lead = (" " * (indent - len(first_prefix)) + first_prefix) if n == 0 and in_seq else " " * indent
        if key == "rules":
            if not value:
                out.append(lead + "rules: []")
                continue
            out.append(lead + "rules:")
            seq = _next_indent(indent, False)
            for r in value:
                out.extend(_rule_lines(r, seq + 2))
        elif key == "source_tenants":
            out.append(lead + "source_tenants:")
            seq = _next_indent(indent, False)
            for t in value:
                out.append(" " * seq + "-" + _scalar_lines(t, False, _next_indent(seq, True)))
        elif value is True:
            out.append(lead + key + ": true")
        elif key == "limit":
            out.append(lead + key + ": " + value)
        else:
            out.append(lead + key + ":" + _scalar_lines(value, False, _next_indent(indent, False)))
    return out


def _rule_lines(r: Rule, indent: int) -> list[str]:
    out: list[str] = []
    fields: list[tuple[str, Any, bool]] = []
    if r.record:
        fields.append(("record", r.record, True))
    else:
        fields.append(("alert", r.alert, True))
    fields.append(("expr", r.expr, True))
    if r.for_ms:
        fields.append(("for", format_duration(r.for_ms), False))
    if r.keep_firing_for_ms:
        fields.append(("keep_firing_for", format_duration(r.keep_firing_for_ms), False))
    if r.labels:
        fields.append(("labels", r.labels, False))
    if r.annotations:
        fields.append(("annotations", r.annotations, False))
    for n, (key, value, node_field) in enumerate(fields):
        lead = " " * (indent - 2) + "- " if n == 0 else " " * indent
        if isinstance(value, dict):
            out.append(lead + key + ":")
            _emit_map(out, value, _next_indent(indent, False))
        else:
            out.append(lead + key + ":" + _scalar_lines(value, node_field, _next_indent(indent, False)))
    return out


def format_group(g: RuleGroup) -> str:
    """One group as Mimir's GET .../rules/{namespace}/{group} writes it."""
    return "\n".join(_group_lines(g, 0, "")) + "\n"


def format_namespaces(namespaces: dict[str, list[RuleGroup]], indent: int = 0) -> str:
    """{namespace: [groups]} as Mimir's GET .../rules writes it ("{}" when empty); `indent` > 0
    writes it as the value of an enclosing key (/ruler/rule_groups nests it under the tenant)."""
    if not namespaces:
        return "{}\n"
    out: list[str] = []
    pad = " " * indent
    seq = _next_indent(indent, False)
    for ns in _key_order(list(namespaces)):
        lines: list[str] = []
        for g in namespaces[ns]:
            lines.extend(_group_lines(g, seq + 2, "- "))
        if "\n" in ns or len(ns.encode("utf-8")) > 128:
            # Not a simple key for yaml.v3: "? key" then ":" in the key's column of the value.
            out.append(pad + "?" + _scalar_lines(ns, False, seq))
            lines[0] = pad + ":" + lines[0][indent + 1:]
        else:
            out.append(pad + _key(ns) + ":")
        out.extend(lines)
    return "\n".join(out) + "\n"


def format_tenants(tenants: dict[str, dict[str, list[RuleGroup]]]) -> str:
    """/ruler/rule_groups: {tenant: {namespace: [groups]}} for each tenant in turn, as Mimir
    streams one yaml.v3 document per tenant (no separators); '' when there are none."""
    out = []
    for tenant in sorted(tenants):
        if tenants[tenant]:
            out.append(_key(tenant) + ":\n" + format_namespaces(tenants[tenant], 4))
    return "".join(out)


# ---- protobuf (Mimir's rules.RuleGroupDesc) ----------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(num: int, data: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(data)) + data


def _field_str(num: int, s: str) -> bytes:
    return _field_bytes(num, s.encode("utf-8")) if s else b""


def _duration_msg(ms: int) -> bytes:
    """google.protobuf.Duration of `ms` (non-nullable: written even when zero, as gogo does)."""
    seconds, rest = divmod(ms, 1000)
    out = b""
    if seconds:
        out += _varint(1 << 3) + _varint(seconds)
    if rest:
        out += _varint(2 << 3) + _varint(rest * 1000000)
    return out


def _labels_msg(num: int, items: dict[str, str]) -> bytes:
    out = b""
    for k in sorted(items):
        out += _field_bytes(num, _field_str(1, k) + _field_str(2, items[k]))
    return out


def encode_group(tenant: str, namespace: str, g: RuleGroup) -> bytes:
    """rulespb.RuleGroupDesc bytes, as Mimir's bucket rule store writes them."""
    out = _field_str(1, g.name) + _field_str(2, namespace)
    out += _field_bytes(3, _duration_msg(g.interval_ms))
    for r in g.rules:
        body = _field_str(1, r.expr) + _field_str(2, r.record) + _field_str(3, r.alert)
        body += _field_bytes(4, _duration_msg(r.for_ms))
        body += _labels_msg(5, r.labels) + _labels_msg(6, r.annotations)
        body += _field_bytes(13, _duration_msg(r.keep_firing_for_ms))
        out += _field_bytes(4, body)
    out += _field_str(6, tenant)
    for t in g.source_tenants:
        out += _field_bytes(10, t.encode("utf-8"))
    out += _field_bytes(11, _duration_msg(g.evaluation_delay_ms or 0))
    if g.align_evaluation_time_on_interval:
        out += _varint(12 << 3) + _varint(1)
    out += _field_bytes(13, _duration_msg(g.query_offset_ms or 0))
    if g.limit:
        limit_msg = _varint(1 << 3) + _varint(g.limit)
        out += _field_bytes(9, _field_str(1, LIMIT_OPTION_TYPE) + _field_bytes(2, limit_msg))
    return out


# The type URL of the google.protobuf.Any in RuleGroupDesc.options that carries the group's
# `limit`: a message whose field 1 is the int64 limit.
LIMIT_OPTION_TYPE = "type.googleapis.com/urdar.rules.RuleGroupLimit"


def _read_limit_option(data: bytes) -> int | None:
    """The limit of an `options` entry, None for an option of another type."""
    type_url, value = "", b""
    for num, v in _fields(data):
        if num == 1 and isinstance(v, bytes):
            type_url = v.decode("utf-8")
        elif num == 2 and isinstance(v, bytes):
            value = v
    if type_url != LIMIT_OPTION_TYPE:
        return None
    for num, v in _fields(value):
        if num == 1 and isinstance(v, int):
            return v if v < 1 << 63 else v - (1 << 64)
    return 0


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """Decode protobuf fields: [(number, int or bytes)]; ValueError when malformed."""
    out: list[tuple[int, int | bytes]] = []
    i, n = 0, len(data)

    def varint() -> int:
        nonlocal i
        shift = result = 0
        while True:
            if i >= n or shift > 63:
                raise ValueError("truncated varint")
            b = data[i]
            i += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
    while i < n:
        key = varint()
        num, wire = key >> 3, key & 7
        if wire == 0:
            out.append((num, varint()))
        elif wire == 2:
            size = varint()
            if i + size > n:
                raise ValueError("truncated field")
            out.append((num, bytes(data[i:i + size])))
            i += size
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError("unsupported wire type %d" % wire)
    if i > n:
        raise ValueError("truncated field")
    return out


def _read_duration(data: bytes) -> int:
    seconds = nanos = 0
    for num, v in _fields(data):
        if num == 1 and isinstance(v, int):
            seconds = v if v < 1 << 63 else v - (1 << 64)
        elif num == 2 and isinstance(v, int):
            nanos = v if v < 1 << 63 else v - (1 << 64)
    return seconds * 1000 + nanos // 1000000


def _read_pair(data: bytes) -> tuple[str, str]:
    name = value = ""
    for num, v in _fields(data):
        if num == 1 and isinstance(v, bytes):
            name = v.decode("utf-8")
        elif num == 2 and isinstance(v, bytes):
            value = v.decode("utf-8")
    return name, value


def decode_group_desc(data: bytes) -> tuple[str, str, RuleGroup]:
    """(tenant, namespace, group) from rulespb.RuleGroupDesc bytes; ValueError when malformed."""
    g = RuleGroup()
    tenant = namespace = ""
    for num, v in _fields(data):
        if isinstance(v, int):
            if num == 12:
                g.align_evaluation_time_on_interval = bool(v)
            continue
        if num == 1:
            g.name = v.decode("utf-8")
        elif num == 2:
            namespace = v.decode("utf-8")
        elif num == 3:
            g.interval_ms = _read_duration(v)
        elif num == 6:
            tenant = v.decode("utf-8")
        elif num == 10:
            g.source_tenants.append(v.decode("utf-8"))
        elif num == 11:
            g.evaluation_delay_ms = _read_duration(v) or None
        elif num == 13:
            g.query_offset_ms = _read_duration(v) or None
        elif num == 9:
            limit = _read_limit_option(v)
            if limit is not None:
                g.limit = limit
        elif num == 4:
            r = Rule()
            for rn, rv in _fields(v):
                if not isinstance(rv, bytes):
                    continue
                if rn == 1:
                    r.expr = rv.decode("utf-8")
                elif rn == 2:
                    r.record = rv.decode("utf-8")
                elif rn == 3:
                    r.alert = rv.decode("utf-8")
                elif rn == 4:
                    r.for_ms = _read_duration(rv)
                elif rn == 13:
                    r.keep_firing_for_ms = _read_duration(rv)
                elif rn == 5:
                    k, val = _read_pair(rv)
                    r.labels[k] = val
                elif rn == 6:
                    k, val = _read_pair(rv)
                    r.annotations[k] = val
            g.rules.append(r)
    return tenant, namespace, g
