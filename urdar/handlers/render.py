"""The Prometheus HTTP API's JSON, byte for byte: envelopes, sample values, timestamps, label sets.

Query handlers (handlers/querier.py) build their bodies here. Prometheus writes sample values as
JSON strings in Go's shortest round-trip form (`strconv.FormatFloat(v, 'f', -1, 64)`, switching
to the exponent form when |v| < 1e-6 or |v| >= 1e21, `+Inf`/`-Inf`/`NaN`, `-0`), timestamps as
JSON numbers in seconds with exactly three decimals when not whole (`1.5` s -> `1.500`), and
strings the way Go's encoder escapes them (HTML characters as \\u003c etc.). Python's json and
repr differ on all three, so results are written as text here rather than through json.dumps.
Large matrices are rendered in an offload pool by the caller; nothing here touches the reactor."""
import json
import math
import re

from urdar.promql import histograms as _H
from urdar.promql import kernels as _K

__all__ = ["format_value", "format_timestamp", "json_string", "labels_json", "labels_json_bytes",
           "memo_admits", "envelope",
           "error_body", "render_vector", "render_matrix", "render_scalar", "render_string",
           "render_result", "render_series", "render_strings"]


def _shortest(v):
    """(negative, digits, point) of the shortest round-trip decimal of finite v != 0: |v| is
    `digits` with the decimal point after `point` digits (point may be <= 0 or > len)."""
    r = repr(abs(v))
    if "e" in r:
        mant, exp = r.split("e")
        exp = int(exp)
    else:
        mant, exp = r, 0
    if "." in mant:
        ip, fp = mant.split(".")
    else:
        ip, fp = mant, ""
    digits = (ip + fp).lstrip("0")
    point = len(ip) + exp - (len(ip + fp) - len((ip + fp).lstrip("0")))
    digits = digits.rstrip("0") or "0"
    return v < 0, digits, point


def format_value(v):
    """A sample value as Prometheus writes it inside the JSON string (without the quotes)."""
    if v != v:
        return "NaN"
    if v == math.inf:
        return "+Inf"
    if v == -math.inf:
        return "-Inf"
    if v == 0:
        return "-0" if math.copysign(1.0, v) < 0 else "0"
    neg, digits, point = _shortest(v)
    sign = "-" if neg else ""
    a = abs(v)
    if a < 1e-6 or a >= 1e21:
        # Go's 'e' format with shortest precision: d[.ddd]e±XX, at least two exponent digits.
        exp = point - 1
        mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return "%s%se%s%02d" % (sign, mant, "-" if exp < 0 else "+", abs(exp))
    if point <= 0:
        return sign + "0." + "0" * (-point) + digits
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return sign + digits[:point] + "." + digits[point:]


def format_timestamp(t_ms):
    """int ms -> JSON number text in seconds: whole seconds bare, else three decimals."""
    t_ms = int(t_ms)
    sign = "-" if t_ms < 0 else ""
    a = -t_ms if t_ms < 0 else t_ms
    s, frac = divmod(a, 1000)
    if frac:
        return "%s%d.%03d" % (sign, s, frac)
    return "%s%d" % (sign, s)


_HTML_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                               "\u2028": "\\u2028", "\u2029": "\\u2029"})


# Characters that json_string cannot copy as they are: quotes, backslashes, controls, the HTML
# ones Go escapes, and anything outside ASCII (U+2028/9, lone surrogates).
_NEEDS_ESCAPE = re.compile(r'[\x00-\x1f"\\<>&\x7f-\U0010ffff]')


def json_string(s):
    """A JSON string literal as Go's encoder writes it (UTF-8 kept, HTML characters escaped)."""
    if isinstance(s, bytes):
        s = s.decode("utf-8", "replace")
    if _NEEDS_ESCAPE.search(s) is None:
        return '"' + s + '"'     # the common label name or value: nothing to escape
    out = json.dumps(s, ensure_ascii=False)
    # Lone surrogates (from surrogateescape'd bytes) become U+FFFD, as Go writes invalid UTF-8.
    if any("\ud800" <= ch <= "\udfff" for ch in s):
        out = json.dumps(s.encode("utf-8", "replace").decode("utf-8", "replace"), ensure_ascii=False)
    return out.translate(_HTML_ESCAPES)


# Label set tuple -> its JSON as UTF-8 bytes (one memo for the str renders here and the byte
# assembly of cached answers in handlers/querier.py). Query results repeat the same label sets
# query after query (a dashboard's refresh, the ruler's every evaluation), and writing one takes
# two Python calls per label. Bounded as two generations: hits land in the young one; when it
# is full the old one is dropped and the young one becomes old, so what any tenant used during
# the last generation survives. A result with more than _MEMO_ADMIT_MAX label sets reads the
# memo but adds nothing to it, so one tenant's high-cardinality answers cannot keep flushing
# everyone's entries. Dict operations are atomic under the GIL and a value depends on its key
# alone, so the offload pools' threads may share it (a race at a rotation only drops entries).
_MEMO_GEN_MAX = 100_000
_MEMO_ADMIT_MAX = 20_000
_memo_young: dict = {}
_memo_old: dict = {}


def memo_admits(items):
    """Whether the label sets of a result of `items` may be added to the memo."""
    try:
        return len(items) <= _MEMO_ADMIT_MAX
    except TypeError:
        return False


def labels_json_bytes(pairs, admit=True):
    """labels_json(pairs) as UTF-8 bytes, through the memo (added to it when `admit`)."""
    global _memo_young, _memo_old
    if type(pairs) is not tuple:
        return _labels_json(pairs).encode("utf-8", "surrogateescape")
    try:
        b = _memo_young.get(pairs)
    except TypeError:           # pairs that are not tuples of strings
        return _labels_json(pairs).encode("utf-8", "surrogateescape")
    if b is not None:
        return b
    b = _memo_old.get(pairs)
    if b is None:
        b = _labels_json(pairs).encode("utf-8", "surrogateescape")
        if not admit:
            return b
    young = _memo_young
    if len(young) >= _MEMO_GEN_MAX:
        _memo_old, _memo_young = young, {}
    _memo_young[pairs] = b
    return b


def labels_json(pairs, admit=True):
    """{"name":"value",...} for a label set given as (name, value) pairs, sorted by name."""
    if type(pairs) is not tuple:
        return _labels_json(pairs)
    return labels_json_bytes(pairs, admit).decode("utf-8", "surrogateescape")


def _labels_json(pairs):
    return "{" + ",".join("%s:%s" % (json_string(n), json_string(v)) for n, v in sorted(pairs)) + "}"


def _point(t_ms, v):
    return '[%s,"%s"]' % (format_timestamp(t_ms), format_value(v))


def histogram_json(h):
    """A native histogram as the Prometheus API writes it (promql/histograms.py api_json)."""
    return _H.api_json(h)


def render_vector(samples, t_ms):
    """Instant vector: samples = [(labels pairs, value)], all at t_ms; a native histogram
    value is written as the API's "histogram" field."""
    ts = format_timestamp(t_ms)
    fmt = _K.format_value  # same text as format_value, in C (benchmarks/query_bench.py)
    admit = memo_admits(samples)
    items = ['{"metric":%s,"value":[%s,"%s"]}' % (labels_json(lbl, admit), ts, fmt(v))
             if type(v) is float else _histogram_sample(lbl, ts, v) for lbl, v in samples]
    return '{"resultType":"vector","result":[' + ",".join(items) + "]}"


def _histogram_sample(lbl, ts, v):
    if isinstance(v, (int, float)):
        return '{"metric":%s,"value":[%s,"%s"]}' % (labels_json(lbl), ts, format_value(v))
    return '{"metric":%s,"histogram":[%s,%s]}' % (labels_json(lbl), ts, histogram_json(v))


def _points(ts, vs):
    try:
        return _K.format_points(ts, vs)  # arrays: the whole series in one C call
    except (TypeError, ValueError, BufferError):
        return ",".join('[%s,"%s"]' % (format_timestamp(t), format_value(v)) for t, v in zip(ts, vs))


def render_matrix(series):
    """Range vector / range query: series = [(labels pairs, ts ms seq, values seq)], with two
    more items (histogram times, histograms) for a series with native histograms, written as
    the API's "histograms" field ("values" left out when there are no floats)."""
    admit = memo_admits(series)
    items = ['{"metric":%s,"values":[%s]}' % (labels_json(s[0], admit), _points(s[1], s[2]))
             if len(s) == 3 else _histogram_series(*s) for s in series]
    return '{"resultType":"matrix","result":[' + ",".join(items) + "]}"


def _histogram_series(lbl, ts, vs, hts, hvs):
    out = '{"metric":%s' % labels_json(lbl)
    if len(ts):
        out += ',"values":[%s]' % _points(ts, vs)
    if len(hts):
        out += ',"histograms":[%s]' % ",".join(
            "[%s,%s]" % (format_timestamp(t), histogram_json(h)) for t, h in zip(hts, hvs))
    return out + "}"


def render_scalar(t_ms, v):
    return '{"resultType":"scalar","result":%s}' % _point(t_ms, v)


def render_string(t_ms, s):
    return '{"resultType":"string","result":[%s,%s]}' % (format_timestamp(t_ms), json_string(s))


def render_result(result):
    """The `data` JSON of a promql.engine.Result (type, value, t)."""
    if result.type == "vector":
        return render_vector(result.value, result.t)
    if result.type == "matrix":
        return render_matrix(result.value)
    if result.type == "scalar":
        return render_scalar(result.t, result.value)
    if result.type == "string":
        return render_string(result.t, result.value)
    raise ValueError("unknown result type %r" % (result.type,))


def render_series(label_sets):
    """/api/v1/series data: a list of label objects."""
    admit = memo_admits(label_sets)
    return "[" + ",".join(labels_json(lbl, admit) for lbl in label_sets) + "]"


def render_strings(values):
    """A JSON array of strings (label names or values)."""
    if not values:
        return "[]"
    if type(values) is list:
        try:
            plain = _NEEDS_ESCAPE.search("".join(values)) is None
        except TypeError:       # not all str (bytes take json_string's way)
            plain = False
        if plain:
            # the usual label values: one scan and one join, not a call per value
            return '["' + '","'.join(values) + '"]'
    return "[" + ",".join(json_string(v) for v in values) + "]"


def envelope(data_json, warnings=(), infos=()):
    """The success envelope as bytes; `data_json` is already JSON text (None -> null)."""
    out = '{"status":"success","data":' + ("null" if data_json is None else data_json)
    if warnings:
        out += ',"warnings":' + render_strings(warnings)
    if infos:
        out += ',"infos":' + render_strings(infos)
    return (out + "}").encode("utf-8", "surrogateescape")


def error_body(error_type, message, warnings=()):
    """The error envelope as bytes."""
    out = '{"status":"error","errorType":%s,"error":%s' % (json_string(error_type), json_string(message))
    if warnings:
        out += ',"warnings":' + render_strings(warnings)
    return (out + "}").encode("utf-8")


def json_object_body(request):
    """The request body as a JSON object ({} when empty); 400 bad_data otherwise (the internal
    peer endpoints: ingester and store-gateway clients)."""
    from urdar.components import errors as E
    try:
        doc = json.loads(request.content.read() or b"{}")
    except ValueError as exc:
        raise E.ComponentError(E.BAD_DATA, "bad request body: %s" % exc) from None
    if not isinstance(doc, dict):
        raise E.ComponentError(E.BAD_DATA, "bad request body: not an object")
    return doc
