"""Store-gateway pages: the tenants list and one tenant's blocks, as HTML."""
import os

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.components.test_storegateway import series_data
from tests.support.tmp import mktemp
from urdar.components.storegateway import StoreGateway, StoreGatewayConfig
from urdar.engine.block import new_ulid, write_block
from urdar.handlers.routes import RouteTable
from urdar.handlers.storegateway import StoreGatewayHandlers
from urdar.storage.memory import MemoryBucket
from urdar.storage.prefixed import for_tenant
from urdar.storage.shipper import Shipper

H = 3600 * 1000


class StoreGatewayPagesTests(SynchronousTestCase):
    def setUp(self):
        self.tmp = mktemp(self)
        self.clock = Clock()
        self.bucket = MemoryBucket(self.clock)
        local = os.path.join(self.tmp, "local")
        os.makedirs(local)
        self.ulid = write_block(local, 0, 2 * H, series_data(0, 2 * H, 1), ulid=new_ulid(7))
        self.successResultOf(Shipper(local, for_tenant(self.bucket, "team-a"), self.clock).sync())
        self.sg = StoreGateway(self.bucket, os.path.join(self.tmp, "sync"), self.clock,
                               StoreGatewayConfig(sync_interval_ms=0))
        self.successResultOf(self.sg.start())
        self.treq = StubTreq(RouteTable().mount(StoreGatewayHandlers(self.sg)).resource())

    def get(self, path):
        r = self.successResultOf(self.treq.get("http://urdar" + path))
        return r.code, self.successResultOf(r.text()), r.headers.getRawHeaders(b"content-type")

    def test_tenants_page_lists_tenants_with_blocks(self):
        """GET /store-gateway/tenants is an HTML page linking each tenant's blocks."""
        code, text, ctype = self.get("/store-gateway/tenants")
        self.assertEqual(code, 200)
        self.assertIn(b"text/html", ctype[0])
        self.assertIn('href="tenant/team-a/blocks"', text)

    def test_blocks_page_shows_block_details(self):
        """The blocks page shows ULID, time range, size, compaction level and sources."""
        code, text, _ = self.get("/store-gateway/tenant/team-a/blocks")
        self.assertEqual(code, 200)
        self.assertIn(self.ulid, text)
        self.assertIn("1970-01-01T00:00:00Z", text)
        self.assertIn("1970-01-01T02:00:00Z", text)
        self.assertIn("<td>%d</td>" % self.sg.blocks("team-a")[0].size_bytes, text)
        self.assertGreater(self.sg.blocks("team-a")[0].size_bytes, 0)
        self.assertIn("<td>1</td>", text)

    def test_unknown_tenant_has_no_blocks(self):
        """A tenant without blocks gets an empty table, not an error."""
        code, text, _ = self.get("/store-gateway/tenant/nobody/blocks")
        self.assertEqual(code, 200)
        self.assertIn("0 blocks", text)

    def test_hostile_tenant_is_refused(self):
        """Tenant IDs '.' and '..' are refused with 400."""
        for t in ("..", "."):
            code, _, _ = self.get("/store-gateway/tenant/%s/blocks" % t)
            self.assertIn(code, (400, 404))
