"""Fuzz targets: one class per decoder or endpoint, each with a hypothesis strategy of byte
inputs (structured generators and mutations of valid seeds), a list of valid seeds for
coverage-guided runs (tests/fuzz/run.py, atheris), and `check(data)`, which raises
AssertionError on a finding: an exception outside the documented error classes, a 5xx,
or a Deferred that never fires (a hang under inline pools)."""
import atexit
import json
import os
import random

import cramjam
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

# ---- byte-level mutation of valid seeds -------------------------------------------------


def mutate(seed, rnd):
    """A few random edits of seed: flips, inserts, deletes, truncation, splices of itself."""
    b = bytearray(seed)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(6)
        n = len(b)
        if op == 0 and n:
            b[rnd.randrange(n)] ^= 1 << rnd.randrange(8)
        elif op == 1:
            b[rnd.randint(0, n):rnd.randint(0, n)] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8)))
        elif op == 2 and n:
            i = rnd.randrange(n)
            del b[i:i + rnd.randint(1, 16)]
        elif op == 3 and n:
            del b[rnd.randrange(n):]
        elif op == 4 and n:
            b[rnd.randrange(n)] = rnd.choice((0x00, 0x7F, 0x80, 0xFF, 0x0A, 0x12, 0x1A, 0x22))
        elif op == 5 and n:
            i, j = sorted((rnd.randrange(n), rnd.randrange(n)))
            at = rnd.randint(0, n)
            b[at:at] = b[i:j + 1]
    return bytes(b)


def mutations_of(seeds):
    """Strategy: one of `seeds` (a strategy of bytes) with 0 to 4 random edits."""
    return st.tuples(seeds, st.randoms(use_true_random=False), st.booleans()).map(
        lambda t: mutate(t[0], t[1]) if t[2] else t[0])


def inputs(generated, seeds=None):
    """Raw bytes, generated valid inputs and mutations of them (and of fixed seeds)."""
    base = generated if seeds is None else st.one_of(generated, st.sampled_from(seeds))
    return st.one_of(st.binary(max_size=512), mutations_of(base), base)


LABEL_TEXT = st.text(alphabet=st.sampled_from(list("abc_:09") + ["\u00e9", "\n", "\x00", "\ufffd", "{", "\""]),
                     max_size=12)
LABEL_NAME = st.one_of(st.sampled_from(["__name__", "job", "instance", "le", "quantile", ""]), LABEL_TEXT)
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1.0]))
TIMES = st.one_of(st.integers(-2**63, 2**63 - 1), st.integers(1_699_999_000_000, 1_700_000_100_000))


def _samples():
    return st.lists(st.tuples(TIMES, FLOATS), max_size=6)


def _series():
    return st.tuples(st.lists(st.tuples(LABEL_NAME, LABEL_TEXT), max_size=6), _samples())


# ---- remote write (engine/remotewrite.pyx) ----------------------------------------------


class RemoteWriteDecode:
    """remotewrite.decode: malformed protobuf raises RemoteWriteDecodeError, nothing else."""
    name = "remotewrite"

    def __init__(self):
        from urdar.engine import remotewrite
        from urdar.engine.errors import RemoteWriteDecodeError
        self.rw, self.errors = remotewrite, (RemoteWriteDecodeError,)

    def generated(self):
        enc = self.rw.encode_write_request
        meta = st.lists(st.tuples(st.integers(0, 9), LABEL_TEXT, LABEL_TEXT, LABEL_TEXT), max_size=2)
        return st.builds(lambda s, m: enc(s, metadata=m), st.lists(_series(), max_size=4), meta)

    def seeds(self):
        enc = self.rw.encode_write_request
        return [enc([([("__name__", "up"), ("job", "a")], [(1, 1.0), (2, float("nan"))])],
                    metadata=[(1, "up", "help", "")]),
                enc([([("a", "b"), ("__name__", "x"), ("a", "c")], [])]), b""]

    def check(self, data):
        try:
            d = self.rw.decode(data)
        except self.errors:
            return
        for i in range(len(d)):  # the decoded columns are usable: labels decode, flags name
            d.labels(i)
            d.flag_names(i)
        for j in range(d.n_exemplars):
            d.exemplar_key(j)


# ---- OTLP (components/otlp.py) -----------------------------------------------------------


class OTLPDecode:
    """otlp.parse_request + translate: a bad body raises OTLPError; a parsed one translates."""
    name = "otlp"

    def __init__(self):
        from urdar.components import otlp
        self.otlp = otlp

    def _request(self, names, values, kinds):
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as ms
        req = ms.ExportMetricsServiceRequest()
        rm = req.resource_metrics.add()
        kv = rm.resource.attributes.add()
        kv.key, kv.value.string_value = "service.name", values[0] if values else "svc"
        sm = rm.scope_metrics.add()
        for i, name in enumerate(names):
            m = sm.metrics.add()
            m.name = name
            m.unit = values[i % len(values)] if values else ""
            v = values[i % len(values)] if values else 1.0
            kind = kinds[i % len(kinds)] if kinds else 0
            if kind == 0:
                p = m.gauge.data_points.add()
                p.as_double = float(len(str(v)))
                p.time_unix_nano = 1_700_000_000_000_000_000
            elif kind == 1:
                m.sum.is_monotonic = True
                m.sum.aggregation_temporality = 2
                p = m.sum.data_points.add()
                p.as_int = len(str(v))
            elif kind == 2:
                p = m.histogram.data_points.add()
                p.count, p.sum = 3, 1.5
                p.bucket_counts.extend([1, 2])
                p.explicit_bounds.append(0.5)
            else:
                p = m.summary.data_points.add()
                p.count, p.sum = 2, 1.0
                q = p.quantile_values.add()
                q.quantile, q.value = 0.5, 0.25
            a = p.attributes.add()
            a.key, a.value.string_value = "k" + str(i), str(v)
        return req

    def generated(self):
        return st.builds(lambda n, v, k, j: self._encode(self._request(n, v, k), j),
                         st.lists(LABEL_TEXT, max_size=3), st.lists(LABEL_TEXT, max_size=3),
                         st.lists(st.integers(0, 3), max_size=3), st.booleans())

    @staticmethod
    def _encode(req, as_json):
        if as_json:
            from google.protobuf import json_format
            return b"J" + json_format.MessageToJson(req).encode()
        return b"P" + req.SerializeToString()

    def seeds(self):
        return [self._encode(self._request(["http.requests", "mem"], ["1", "By"], [0, 1, 2, 3]), j)
                for j in (False, True)]

    def check(self, data):
        as_json = data[:1] == b"J"
        try:
            req = self.otlp.parse_request(data[1:], json_body=as_json)
        except self.otlp.OTLPError:
            return
        self.otlp.translate(req)


# ---- PromQL lexer/parser -------------------------------------------------------------------

PROMQL_TOKENS = [
    "up", "http_requests_total", "{", "}", "(", ")", "[", "]", ",", "job", "=", "!=", "=~", "!~",
    '"a"', '"a.*"', '"(a+)+b"', "'x'", "`y`", "5m", "1h", "30s", "1", "0.5", "-", "+", "*", "/", "%",
    "^", "==", "!=", ">", "<", ">=", "<=", "bool", "and", "or", "unless", "on", "ignoring",
    "group_left", "group_right", "by", "without", "sum", "avg", "count", "topk", "quantile",
    "count_values", "rate", "irate", "increase", "label_replace", "label_join", "histogram_quantile",
    "abs", "absent", "vector", "scalar", "time", "offset", "@", "start()", "end()", ":", "step()",
    "inf", "NaN", "0x1F", "1e3", " ", "\n", "#c\n", "__name__", '"\\u00e9"', '"\\xff"', "'\\'",
    "info", "sort_by_label", "predict_linear", "-1", "atan2", "limitk", "smoothed", "anchored",
]


def promql_text():
    return st.one_of(
        st.lists(st.sampled_from(PROMQL_TOKENS), max_size=14).map("".join),
        st.lists(st.sampled_from(PROMQL_TOKENS), max_size=10).map(" ".join),
        st.text(max_size=40))


class PromQLParse:
    """parse_expr raises ParseError for any text, and what it accepts prints and re-parses."""
    name = "promql"

    def __init__(self):
        from urdar.promql.parser import ParseError, parse_expr
        self.parse, self.errors = parse_expr, (ParseError,)

    def generated(self):
        return promql_text().map(lambda s: s.encode("utf-8", "surrogatepass"))

    def seeds(self):
        return [q.encode() for q in (
            'sum by (job) (rate(http_requests_total{job=~"a.*"}[5m] offset 1m))',
            'label_replace(up, "dst", "$1", "src", "(.*)")', "1 + 2 * 3 ^ -4",
            'histogram_quantile(0.9, sum(rate(x_bucket[5m])) by (le)) > bool 3',
            'max_over_time(up[1h:5m] @ start())', '{__name__=~"(a+)+b"} unless on(job) vector(1)')]

    def check(self, data):
        text = data.decode("utf-8", "replace")
        try:
            expr = self.parse(text)
        except self.errors:
            return
        printed = str(expr)
        try:
            self.parse(printed)
        except self.errors as exc:
            raise AssertionError("%r prints as %r, which does not parse: %s" % (text, printed, exc))


# ---- remote read request (components/remoteread.py) -------------------------------------


class RemoteReadDecode:
    """decode_read_request raises DecodeError (bad protobuf, bad matcher, bad regex) only."""
    name = "remoteread"

    def __init__(self):
        from urdar.components import remoteread as RR
        self.rr = RR

    def generated(self):
        matcher = st.tuples(st.integers(0, 5), LABEL_NAME,
                            st.one_of(LABEL_TEXT, st.sampled_from(["(a+)+b", "a(", "\\p{Greek}", ".*"])))
        query = st.tuples(TIMES, TIMES, st.lists(matcher, max_size=3))
        return st.builds(self._encode, st.lists(query, max_size=3), st.lists(st.integers(0, 3), max_size=2))

    def _encode(self, queries, accepted):
        # int64 times go on the wire as their two's complement uvarint
        return self.rr.encode_read_request([(a & (2**64 - 1), b & (2**64 - 1), ms) for a, b, ms in queries],
                                           accepted)

    def seeds(self):
        return [self.rr.encode_read_request([(0, 10, [(0, "__name__", "up"), (2, "job", "a|b")])], [1])]

    def check(self, data):
        try:
            self.rr.decode_read_request(data)
        except self.rr.DecodeError:
            return


# ---- runtime config YAML (components/limits.py) ------------------------------------------


class RuntimeConfigParse:
    """parse_runtime_config raises ConfigError for any YAML text, nothing else."""
    name = "runtimeconfig"

    def __init__(self):
        import yaml
        from urdar.components.limits import parse_runtime_config
        from urdar.components.limits import LIMITS_BY_KEY
        from urdar.components.options import ConfigError
        self.yaml, self.parse, self.errors = yaml, parse_runtime_config, (ConfigError,)
        self.keys = sorted(LIMITS_BY_KEY)

    def generated(self):
        scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), FLOATS,
                           st.text(max_size=8), st.sampled_from(["1h", "5m", "-1s", "1e9", "inf", "[]"]))
        value = st.recursive(scalar, lambda c: st.one_of(st.lists(c, max_size=3),
                                                         st.dictionaries(st.text(max_size=4), c, max_size=3)),
                             max_leaves=6)
        limits = st.one_of(value, st.dictionaries(st.sampled_from(self.keys + ["bogus"]), value, max_size=4))
        tenants = st.one_of(value, st.dictionaries(st.one_of(st.text(max_size=6), st.integers(), st.none(),
                                                             st.booleans(), st.sampled_from(["t1", "..", "a/b"])),
                                                   limits, max_size=3))
        doc = st.one_of(value, st.fixed_dictionaries({}, optional={"overrides": tenants, "multi_kv_config": value}))
        return st.builds(lambda d: self.yaml.safe_dump(d).encode(), doc)

    def seeds(self):
        return [b"overrides:\n  t1:\n    ingestion_rate: 10\n    max_global_series_per_user: 5\n",
                b"overrides:\n  t2: {compactor_blocks_retention_period: 1h}\n"]

    def check(self, data):
        try:
            self.parse(data.decode("utf-8", "replace"), "fuzz.yaml")
        except self.errors:
            return


# ---- hosts for HTTP-level targets ----------------------------------------------------------


class _Host(SynchronousTestCase):
    """A test case used only for its successResultOf and cleanups (fuzzing outside pytest)."""

    def runTest(self):  # pragma: no cover - never run
        pass


def _clean_at_exit(host):
    """Hosts outlive single tests: run their cleanups (temp dirs, stopped services) at exit."""
    def run():
        while host._cleanups:
            f, args, kwargs = host._cleanups.pop()
            try:
                f(*args, **kwargs)
            except Exception:  # best effort at interpreter exit
                pass
    atexit.register(run)
    return host


def _status(host, d):
    """The response code of a StubTreq request Deferred; a Deferred that has not fired is a hang."""
    results = []
    d.addBoth(results.append)
    assert results, "request did not complete (hang)"
    resp = results[0]
    if not hasattr(resp, "code"):
        resp.raiseException()
    body = host.successResultOf(resp.content())
    assert resp.code < 500, "HTTP %d: %r" % (resp.code, body[:300])
    return resp.code, body


class _ProcessHost:
    """A whole -target=all process (push, OTLP, remote read, query) over StubTreq."""

    _shared = None

    @classmethod
    def get(cls):
        if cls._shared is None:
            from tests.handlers.test_querier import QueryAPIFixture
            host = _clean_at_exit(_Host())
            QueryAPIFixture().setup(host)
            push = [([("__name__", "up"), ("job", "a" * 40)], [(1_699_999_990_000, 1.0)]),
                    ([("__name__", "up"), ("job", "b")], [(1_699_999_990_000, 2.0)])]
            from urdar.engine.remotewrite import encode_write_request
            body = bytes(cramjam.snappy.compress_raw(encode_write_request(push)))
            code, _ = _status(host, host.treq.post("http://urdar/api/v1/push", data=body,
                                                   headers={"X-Scope-OrgID": "t1"}))
            assert code == 200
            cls._shared = host
        return cls._shared


def _snappy(b):
    return bytes(cramjam.snappy.compress_raw(b))


class PushHTTP:
    """POST /api/v1/push: any body (raw, snappy of a mutated WriteRequest, mutated snappy)
    answers 2xx/4xx."""
    name = "http_push"
    inner = RemoteWriteDecode

    def __init__(self):
        self.host = _ProcessHost.get()
        self.rw = self.inner()

    def generated(self):
        # first byte picks the framing: 0 snappy(body), 1 body as is; the second branch
        # mutates valid snappy blocks (lengths, literal and copy tags) rather than the protobuf
        framed = st.builds(lambda f, b: bytes([f]) + b, st.integers(0, 1), mutations_of(self.rw.generated()))
        snappy_mutated = mutations_of(self.rw.generated().map(_snappy)).map(lambda b: b"\x01" + b)
        return st.one_of(framed, snappy_mutated)

    def seeds(self):
        return [b"\x00" + s for s in self.rw.seeds()] + [b"\x01" + _snappy(s) for s in self.rw.seeds()]

    def body(self, data):
        return _snappy(data[1:]) if data[:1] == b"\x00" else data[1:]

    def check(self, data):
        _status(self.host, self.host.treq.post(
            "http://urdar/api/v1/push", data=self.body(data),
            headers={"X-Scope-OrgID": "t1", "Content-Encoding": "snappy"}))


class OTLPHTTP(PushHTTP):
    """POST /otlp/v1/metrics with protobuf or JSON bodies answers 2xx/4xx."""
    name = "http_otlp"
    inner = OTLPDecode

    def body(self, data):
        return data[2:]

    def check(self, data):
        as_json = data[1:2] == b"J"
        _status(self.host, self.host.treq.post(
            "http://urdar/otlp/v1/metrics", data=self.body(data),
            headers={"X-Scope-OrgID": "t1",
                     "Content-Type": "application/json" if as_json else "application/x-protobuf"}))


class RemoteReadHTTP(PushHTTP):
    """POST /prometheus/api/v1/read with any (snappy) body answers 2xx/4xx."""
    name = "http_read"
    inner = RemoteReadDecode

    def check(self, data):
        _status(self.host, self.host.treq.post(
            "http://urdar/prometheus/api/v1/read", data=self.body(data),
            headers={"X-Scope-OrgID": "t1", "Content-Encoding": "snappy",
                     "Content-Type": "application/x-protobuf"}))


# Short ranges only: the cost of a huge subquery grid is the promql stream's evaluation bound.
QUERY_TOKENS = [t for t in PROMQL_TOKENS if t not in ("1h", "offset", "@", "start()", "end()", "step()")]


class QueryHTTP:
    """GET /prometheus/api/v1/query with PromQL token soup answers 2xx/4xx."""
    name = "http_query"

    def __init__(self):
        self.host = _ProcessHost.get()

    def generated(self):
        return st.lists(st.sampled_from(QUERY_TOKENS), max_size=12).map(lambda ts: "".join(ts).encode())

    def seeds(self):
        return [b'sum by (job) (rate(up{job=~"a.*"}[5m]))', b'label_replace(up, "d", "$1", "job", "(a+)+b")',
                b'{__name__=~"(a+)+b"}', b'count_values("v", up)']

    def check(self, data):
        from urllib.parse import urlencode
        q = urlencode({"query": data.decode("utf-8", "replace"), "time": "1700000000"})
        _status(self.host, self.host.treq.get("http://urdar/prometheus/api/v1/query?" + q,
                                              headers={"X-Scope-OrgID": "t1"}))


# ---- block upload (components/compactor.py) ----------------------------------------------


class _UploadHost:
    """The compactor's block upload API over StubTreq and an in-memory bucket, with one
    valid block written locally for its meta.json and index."""

    _shared = None

    @classmethod
    def get(cls):
        if cls._shared is None:
            from tests.handlers.test_compactor import UploadTestCase

            class Host(UploadTestCase):
                def runTest(self):  # pragma: no cover - never run
                    pass
            host = _clean_at_exit(Host())
            host.setUp()
            cls._shared = host
        return cls._shared


def _new_ulid(rnd):
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    return "0" + "".join(rnd.choice(alphabet) for _ in range(25))


class UploadMetaHTTP:
    """POST /api/v1/upload/block/{ulid}/start with any meta.json answers 2xx/4xx."""
    name = "http_upload_meta"

    def __init__(self):
        self.host = _UploadHost.get()
        self.rnd = random.Random(0)

    def _json_values(self):
        scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**64, 2**64), st.floats(),
                           st.text(max_size=6))
        return st.recursive(scalar, lambda c: st.one_of(st.lists(c, max_size=3),
                                                        st.dictionaries(st.text(max_size=6), c, max_size=3)),
                            max_leaves=8)

    def generated(self):
        meta = self.host.meta
        keys = st.sampled_from(["ulid", "minTime", "maxTime", "version", "compaction", "thanos", "stats"])
        sub = st.sampled_from(["labels", "downsample", "source", "files", "level", "sources", "resolution"])
        edits = st.lists(st.tuples(keys, st.one_of(st.none(), sub), self._json_values()), max_size=3)

        def apply(es):
            m = json.loads(json.dumps(meta))
            for k, s, v in es:
                if s is not None and isinstance(m.get(k), dict):
                    m[k][s] = v
                else:
                    m[k] = v
            return json.dumps(m).encode()
        return st.one_of(st.builds(apply, edits), self._json_values().map(lambda v: json.dumps(v).encode()))

    def seeds(self):
        return [json.dumps(self.host.meta).encode()]

    def check(self, data):
        ulid = _new_ulid(self.rnd)  # a fresh block each time: no state carries over
        _status(self.host, self.host.treq.post(
            "http://urdar/api/v1/upload/block/%s/start" % ulid, data=data,
            headers={"X-Scope-OrgID": "t1"}))


class UploadIndexHTTP:
    """A block upload whose index file is mutated: start, upload files, finish and check
    validation all answer 2xx/4xx, and validation ends failed or complete."""
    name = "http_upload_index"

    def __init__(self):
        self.host = _UploadHost.get()
        self.rnd = random.Random(1)
        with open(os.path.join(self.host.dir, "index"), "rb") as f:
            self.index = f.read()
        with open(os.path.join(self.host.dir, "chunks", "000001"), "rb") as f:
            self.chunks = f.read()

    def generated(self):
        return mutations_of(st.just(self.index))

    def seeds(self):
        return [self.index]

    def check(self, data):
        h = self.host
        ulid = _new_ulid(self.rnd)
        meta = json.loads(json.dumps(h.meta))
        meta["ulid"] = ulid
        files = [{"rel_path": "index", "size_bytes": len(data)},
                 {"rel_path": "chunks/000001", "size_bytes": len(self.chunks)},
                 {"rel_path": "meta.json"}]
        meta["thanos"]["files"] = files
        base = "http://urdar/api/v1/upload/block/" + ulid
        hdr = {"X-Scope-OrgID": "t1"}
        code, body = _status(h, h.treq.post(base + "/start", data=json.dumps(meta).encode(), headers=hdr))
        if code >= 300:
            return
        for rel, blob in (("index", data), ("chunks/000001", self.chunks)):
            _status(h, h.treq.post(base + "/files?path=" + rel, data=blob, headers=hdr))
        _status(h, h.treq.post(base + "/finish", data=b"", headers=hdr))
        code, body = _status(h, h.treq.get(base + "/check", headers=hdr))
        state = json.loads(body).get("result") if code == 200 else None
        assert state in (None, "complete", "failed"), body


FUNCTION_TARGETS = [RemoteWriteDecode, OTLPDecode, PromQLParse, RemoteReadDecode, RuntimeConfigParse]
HTTP_TARGETS = [PushHTTP, OTLPHTTP, RemoteReadHTTP, QueryHTTP, UploadMetaHTTP, UploadIndexHTTP]
ALL_TARGETS = FUNCTION_TARGETS + HTTP_TARGETS
