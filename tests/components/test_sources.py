"""Every Source passes one contract: the in-process ingester, the store-gateway, the time-bounded
wrapper and a merge of several (tests/components/source_contract.py)."""
import os

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.components.source_contract import DATA, SourceContract, eq
from tests.components.test_ingester import batch
from tests.support.threads import inline_offload
from tests.support.tmp import mktemp
from urdar.components import ingester_client as IC
from urdar.components.ingester import Ingester
from urdar.components.limits import Overrides
from urdar.components.sources import NOTHING, MergedSource, TimeBoundedSource
from urdar.components.storegateway import StoreGatewayConfig, StoreGateway, StoreGatewayReader
from urdar.engine.block import new_ulid, write_block
from urdar.engine.labels import encode_labels
from urdar.engine.xorchunk import XORChunk
from urdar.app.config import Config
from urdar.promql.selectors import SelectHints
from urdar.storage.memory import MemoryBucket
from urdar.storage.prefixed import for_tenant
from urdar.storage.shipper import Shipper

POOLS = (("decode", 2, 10), ("append", 2, 10), ("compact", 1, 10), ("admin", 1, 10),
         ("query", 2, 10), ("storegateway", 2, 10))


def write_batch(series):
    """A WriteBatch of {labels tuple: [(t, v)]}."""
    return batch(*((dict(labels), samples) for labels, samples in series.items()))


class Builders:
    """Sources over real components, all on inline pools and a fake clock."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(20)
        self.offload = inline_offload(POOLS)
        super().setUp()

    def ingester_source(self, series):
        ing = Ingester(mktemp(self), Overrides(Config().limits_defaults()), self.offload, self.clock,
                       registry=CollectorRegistry())
        self.successResultOf(ing.start())
        self.addCleanup(lambda: self.successResultOf(ing.stop()))
        if series:
            r = self.successResultOf(ing.push("t", write_batch(series)))
            self.assertEqual(r.accepted, sum(len(s) for s in series.values()))
        return IC.LocalIngesterClient(ing, self.offload)

    def storegateway_source(self, series):
        tmp = mktemp(self)
        bucket = MemoryBucket(self.clock)
        local = os.path.join(tmp, "local")
        os.makedirs(local)
        blocks = []
        for labels in sorted(series, key=lambda ls: encode_labels(sorted(ls))):
            c = XORChunk()
            for t, v in series[labels]:
                c.append(t, v)
            blocks.append((encode_labels(sorted(labels)),
                           [(series[labels][0][0], series[labels][-1][0], 1, bytes(c.bytes()))]))
        mint = min(s[0][0] for s in series.values())
        maxt = max(s[-1][0] for s in series.values()) + 1
        write_block(local, mint, maxt, blocks, ulid=new_ulid(mint + 1))
        self.successResultOf(Shipper(local, for_tenant(bucket, "t"), self.clock).sync())
        sg = StoreGateway(bucket, os.path.join(tmp, "sync"), self.clock,
                          StoreGatewayConfig(sync_interval_ms=0), offload=self.offload,
                          pool="storegateway")
        self.successResultOf(sg.start())
        self.addCleanup(sg.stop)
        return StoreGatewayReader(sg)


class IngesterSourceTests(Builders, SourceContract, SynchronousTestCase):
    def make_source(self, series):
        return self.ingester_source(series)


class IngesterLocalSourceTests(IngesterSourceTests):
    """The in-process ingester's select_local answers as its select."""
    local = True


class StoreGatewaySourceTests(Builders, SourceContract, SynchronousTestCase):
    def make_source(self, series):
        return self.storegateway_source(series)


class TimeBoundedSourceTests(Builders, SourceContract, SynchronousTestCase):
    def make_source(self, series):
        return TimeBoundedSource(self.ingester_source(series), self.clock, within_ms=60_000)

    def test_clamps_to_its_window(self):
        """Outside -querier.query-ingesters-within the source reads nothing; inside it is clamped."""
        src = TimeBoundedSource(self.ingester_source(DATA), self.clock, within_ms=14_500)
        got = self.successResultOf(src.select("t", (eq("job", "b"),), SelectHints(0, 20_000)))
        self.assertEqual(list(got[0][1]), list(range(6000, 11000, 1000)))
        self.assertEqual(self.successResultOf(src.select("t", (eq("job", "b"),),
                                                         SelectHints(0, 5000))), [])


class TimeBoundedLocalSourceTests(TimeBoundedSourceTests):
    local = True

    def test_local_read_clamps_or_declines(self):
        """select_local clamps to the window like select, is NOTHING outside it (no source
        asked), and None (read through select) for a wrapped source without select_local."""
        src = TimeBoundedSource(self.ingester_source(DATA), self.clock, within_ms=14_500)
        call = src.select_local("t", (eq("job", "b"),), SelectHints(0, 20_000))
        self.assertEqual(list(call()[0][1]), list(range(6000, 11000, 1000)))
        self.assertIs(src.select_local("t", (eq("job", "b"),), SelectHints(0, 5000)), NOTHING)
        store = TimeBoundedSource(self.storegateway_source(DATA), self.clock, after_ms=14_500)
        self.assertIsNone(store.select_local("t", (eq("job", "b"),), SelectHints(0, 20_000)))
        self.assertIs(store.select_local("t", (eq("job", "b"),), SelectHints(6000, 20_000)),
                      NOTHING)


class MergedSourceTests(Builders, SourceContract, SynchronousTestCase):
    def make_source(self, series):
        """Older samples (t <= 5000) in the store-gateway, newer (t >= 5000) in an ingester."""
        old = {k: [s for s in v if s[0] <= 5000] for k, v in series.items()}
        new = {k: [s for s in v if s[0] >= 5000] for k, v in series.items()}
        return MergedSource([self.storegateway_source({k: v for k, v in old.items() if v}),
                             self.ingester_source({k: v for k, v in new.items() if v})],
                            self.offload)
