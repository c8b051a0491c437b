"""The remote store-gateway client passes the Source contract through the real internal endpoints
(handlers/storegateway.StoreGatewayClientHandlers) served by StubTreq, and limits each call to the
blocks it names: a block not loaded there is a 503 (UNAVAILABLE), for the querier to retry."""
from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from tests.components.source_contract import DATA, SourceContract, eq
from tests.components.test_sources import Builders
from urdar.components import errors as E
from urdar.components.storegateway_remote import RemoteStoreGatewayClient
from urdar.engine.block import new_ulid
from urdar.handlers.routes import RouteTable
from urdar.handlers.storegateway import StoreGatewayClientHandlers
from urdar.promql.selectors import SelectHints


class RemoteStoreGatewaySourceTests(Builders, SourceContract, SynchronousTestCase):
    def make_source(self, series):
        reader = self.storegateway_source(series)
        self.sg = reader._sg
        table = RouteTable().mount(StoreGatewayClientHandlers(self.sg, self.offload))
        self.stub = StubTreq(table.resource())
        return RemoteStoreGatewayClient("127.0.0.1:9", self.stub, self.clock, self.offload)

    def client(self):
        src = self.make_source(DATA)
        return src, [b.ulid for b in self.sg.blocks("t")]

    def test_named_blocks_are_read(self):
        src, ulids = self.client()
        h = SelectHints(0, 20_000)
        whole = self.successResultOf(src.select("t", (eq("job", "b"),), h))
        self.assertTrue(whole)
        self.assertEqual(self.successResultOf(src.select("t", (eq("job", "b"),), h, ulids)), whole)
        self.assertEqual(self.successResultOf(src.select("t", (eq("job", "b"),), h, [])), [])
        names = self.successResultOf(src.label_names("t", (), h, ulids))
        self.assertIn("job", names)
        self.assertEqual(self.successResultOf(src.label_names("t", (), h, [])), [])
        self.assertIn("b", self.successResultOf(src.label_values("t", "job", (), h, ulids)))

    def test_block_not_loaded_is_unavailable(self):
        src, ulids = self.client()
        other = new_ulid(123)
        for d in (src.select("t", (eq("job", "b"),), SelectHints(0, 20_000), ulids + [other]),
                  src.label_names("t", (), SelectHints(0, 20_000), [other])):
            f = self.failureResultOf(d, E.ComponentError)
            self.assertEqual(f.value.cause, E.UNAVAILABLE)
            self.assertIn(other, f.value.message)

    def test_other_tenant_sees_nothing(self):
        src, _ = self.client()
        self.assertEqual(self.successResultOf(src.select("u", (eq("job", "b"),),
                                                         SelectHints(0, 20_000))), [])

    def test_bad_block_list_is_bad_data(self):
        src, _ = self.client()
        d = src._json("select", "t", {"matchers": [], "mint": 0, "maxt": 1, "blocks": "x"})
        self.assertEqual(self.failureResultOf(d, E.ComponentError).value.cause, E.BAD_DATA)
