"""One suite for every IngesterClient (components/ingester_client.py): today the in-process client;
a remote client will mix in the same contract."""
from twisted.trial.unittest import SynchronousTestCase

from tests.components.source_contract import DATA, SourceContract, eq
from tests.components.test_sources import Builders, write_batch
from urdar.components import ingester_client as IC
from urdar.engine import outcomes as O
from urdar.engine.labels import encode_labels


class IngesterClientContract(SourceContract):
    """The write half and the ingester-only reads, on top of the Source contract."""

    def test_push_reports_outcome_per_sample(self):
        """A push answers one outcome per sample; an out-of-order sample is reported, not stored."""
        key = (("__name__", "fresh"),)
        r = self.successResultOf(self.source.push("t", write_batch({key: [(5000, 1.0), (4000, 2.0)]})))
        self.assertEqual(list(r.outcomes), [O.OK, O.OUT_OF_ORDER])
        self.assertEqual(r.accepted, 1)

    def test_user_stats_and_ready(self):
        """user_stats counts the tenant's in-memory series; ready() is true once started."""
        self.assertEqual(self.successResultOf(self.source.user_stats("t"))["numSeries"], len(DATA))
        self.assertEqual(self.successResultOf(self.source.user_stats("nobody"))["numSeries"], 0)
        self.assertTrue(self.source.ready())

    def test_metadata_and_head_series(self):
        """Metadata comes back per metric family; head_series lists in-memory keys and the total."""
        b = write_batch({(("__name__", "m"),): [(1000, 1.0)]})
        b.metadata = [("m", 1, "Help.", "")]
        self.successResultOf(self.source.push("t", b))
        self.assertEqual(self.successResultOf(self.source.metadata("t")), {"m": [(1, "Help.", "")]})
        keys, total = self.successResultOf(self.source.head_series("t", (eq("job", "b"),)))
        self.assertEqual(([bytes(k) for k in keys], total),
                         ([encode_labels(sorted(k for k in DATA if ("job", "b") in k)[0])],
                          len(DATA) + 1))
        self.assertEqual(self.successResultOf(self.source.exemplars("t", (eq("job", "b"),), 0, 1)), [])


def protocol_methods(proto):
    return sorted(n for n, v in vars(proto).items() if callable(v) and not n.startswith("_"))


class LocalIngesterClientTests(Builders, IngesterClientContract, SynchronousTestCase):
    def test_implements_the_whole_protocol(self):
        """The in-process client has every IngesterClient method (the remote one will too)."""
        self.assertEqual([n for n in protocol_methods(IC.IngesterClient)
                          if not callable(getattr(self.source, n, None))], [])
        self.assertIn("select", protocol_methods(IC.IngesterClient))

    def make_source(self, series):
        return self.ingester_source(series)
