"""The remote IngesterClient passes the same contract as the in-process one, through the real
internal endpoints (handlers/ingester.IngesterClientHandlers) served by StubTreq; plus the wire
encodings on their own."""
from array import array

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from tests.components.source_contract import eq
from tests.components.test_ingester_client import IngesterClientContract, protocol_methods
from tests.components.test_sources import Builders, write_batch
from urdar.components import errors as E
from urdar.components import ingester_client as IC
from urdar.components import ingester_remote as R
from urdar.engine import outcomes as O
from urdar.engine.labels import decode_labels, encode_labels
from urdar.handlers.ingester import IngesterClientHandlers
from urdar.handlers.routes import RouteTable


class RemoteIngesterClientTests(Builders, IngesterClientContract, SynchronousTestCase):
    def make_source(self, series):
        local = self.ingester_source(series)
        self.ingester = local._ingester
        table = RouteTable().mount(IngesterClientHandlers(self.ingester, self.offload))
        self.stub = StubTreq(table.resource())
        return R.RemoteIngesterClient("127.0.0.1:9", self.stub, self.clock, self.offload)

    def test_implements_the_whole_protocol(self):
        """Every IngesterClient method is there."""
        self.assertEqual([n for n in protocol_methods(IC.IngesterClient)
                          if not callable(getattr(self.source, n, None))], [])

    def test_exemplars_travel(self):
        """Exemplars pushed with their series come back from the remote read."""
        self.ingester.overrides.set_overrides({"u": {"max_global_exemplars_per_user": 10}})
        key = (("__name__", "ex"), ("job", "b"))
        b = write_batch({key: [(5000, 1.0)]})
        b.exemplars = [(encode_labels(key), 5000, 1.0, encode_labels((("trace_id", "abc"),)))]
        self.successResultOf(self.source.push("u", b))
        got = self.successResultOf(self.source.exemplars("u", (eq("__name__", "ex"),), 0, 10000))
        self.assertEqual(got, [(encode_labels(key), [(5000, 1.0, encode_labels((("trace_id", "abc"),)))])])

    def test_ingester_errors_keep_their_cause(self):
        """A stopped ingester answers 503; the client fails with UNAVAILABLE (a 5xx for quorum)."""
        self.successResultOf(self.ingester.stop())
        f = self.failureResultOf(self.source.push("t", write_batch({(("__name__", "x"),): [(1, 1.0)]})),
                                 E.ComponentError)
        self.assertEqual(f.value.cause, E.UNAVAILABLE)
        self.assertIn("ingester is", f.value.message)
        self.assertFalse(R.is_client_error(f.value))

    def test_unreachable_ingester_is_unavailable(self):
        """A connection failure is UNAVAILABLE naming the ingester."""
        class Refused:
            def request(self, *a, **kw):
                from twisted.internet.error import ConnectionRefusedError
                raise ConnectionRefusedError()
        c = R.RemoteIngesterClient("10.0.0.1:80", Refused(), self.clock, self.offload)
        f = self.failureResultOf(c.user_stats("t"), E.ComponentError)
        self.assertEqual(f.value.cause, E.UNAVAILABLE)
        self.assertIn("10.0.0.1:80", f.value.message)


class PooledDecodeTests(RemoteIngesterClientTests):
    """The same contract with every answer decoded in the pool (as large answers are)."""

    def setUp(self):
        self.patch(R, "INLINE_DECODE_BYTES", -1)
        super().setUp()


class EncodingTests(SynchronousTestCase):
    def test_series_roundtrip(self):
        """Keys, timestamps and values survive; label-only series stay label-only."""
        series = [(b"\x01a", array("q", [1, 2**62]), array("d", [0.5, float("inf")])),
                  (b"\x02bb", None, None), (b"", array("q"), array("d"))]
        got = R.decode_series(R.encode_series(series))
        self.assertEqual([(k, None if t is None else list(t), None if v is None else list(v))
                          for k, t, v in got],
                         [(b"\x01a", [1, 2**62], [0.5, float("inf")]), (b"\x02bb", None, None),
                          (b"", [], [])])

    def test_truncated_answers_fail(self):
        """A cut answer is an INTERNAL error, never a shorter result."""
        body = R.encode_series([(b"k", array("q", [1]), array("d", [1.0]))])
        self.assertEqual(R.decode_series(body)[0][0], b"k")
        with self.assertRaises(E.ComponentError):
            R.decode_series(body[:-1])
        with self.assertRaises(E.ComponentError):
            R.decode_head_series(R.encode_head_series([b"abc"], 5)[:-1])
        self.assertEqual(R.decode_head_series(R.encode_head_series([b"abc", b""], 5)), ([b"abc", b""], 5))

    def test_push_body_is_a_remote_write_request(self):
        """The push body is a snappy WriteRequest any remote-write decoder reads."""
        from urdar.engine import remotewrite as rw
        import cramjam
        b = write_batch({(("__name__", "a"), ("x", "1")): [(1, 1.0), (2, 2.0)],
                         (("__name__", "b"),): [(3, 3.0)]})
        body, order = R.encode_push(b, [1])
        self.assertEqual(order, [1])
        dw = rw.decode(memoryview(cramjam.snappy.decompress_raw(body)))
        self.assertEqual((dw.labels(0), list(dw.ts), list(dw.vals)), ([("__name__", "b")], [3], [3.0]))
        back = R.decode_push(body, 1 << 20)
        self.assertEqual((back.key(0), list(back.ts)), (b.key(1), [3]))

    def test_columns_encoding_matches_the_python_encoder(self):
        """encode_columns writes the bytes encode_write_request writes for the same series."""
        from urdar.engine.remotewrite import encode_columns, encode_write_request
        series = {(("__name__", "a"), ("x", "1")): [(1, 1.0), (2, -0.0), (0, 2.5)],
                  (("__name__", "b"), ("long", "v" * 300)): [(3, 3.0)],
                  (("__name__", "c"),): []}
        b = write_batch(series)
        got = encode_columns(b.keys, b.key_offsets, b.sample_offsets, b.ts, b.vals,
                             array("Q", [2, 0, 1]))
        rows = [(decode_labels(b.key(i)), list(zip(b.ts[b.sample_offsets[i]:b.sample_offsets[i + 1]],
                                                    b.vals[b.sample_offsets[i]:b.sample_offsets[i + 1]])))
                for i in (2, 0, 1)]
        self.assertEqual(got, encode_write_request(rows))
        with self.assertRaises(ValueError):
            encode_columns(b.keys[:-2], b.key_offsets, b.sample_offsets, b.ts, b.vals, array("Q", [2]))
        with self.assertRaises(ValueError):
            encode_columns(b.keys, b.key_offsets, b.sample_offsets, b.ts, b.vals, array("Q", [3]))


class OutcomeOrderTests(Builders, SynchronousTestCase):
    def test_outcomes_follow_the_batch_when_exemplars_reorder_the_request(self):
        """Series with exemplars travel last; the outcomes still line up with the batch's samples
        (here an out-of-order sample in the first series, the exemplar on the second)."""
        local = self.ingester_source({(("__name__", "s1"),): [(5000, 1.0)]})
        ing = local._ingester
        ing.overrides.set_overrides({"t": {"max_global_exemplars_per_user": 10}})
        table = RouteTable().mount(IngesterClientHandlers(ing, self.offload))
        client = R.RemoteIngesterClient("i:1", StubTreq(table.resource()), self.clock, self.offload)
        s1, s2, s3 = ((("__name__", n),) for n in ("s1", "s2", "s3"))
        b = write_batch({s1: [(4000, 1.0), (6000, 2.0)], s2: [(1000, 1.0)], s3: [(1000, 3.0)]})
        b.exemplars = [(encode_labels(s2), 1000, 1.0, encode_labels((("trace_id", "x"),)))]
        b.skip = bytes([0, 0, 1])
        r = self.successResultOf(client.push("t", b))
        self.assertEqual(list(r.outcomes), [O.OUT_OF_ORDER, O.OK, O.OK, O.SKIPPED])
