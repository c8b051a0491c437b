"""GET /memberlist on the composition root: KV keys, each ring's single member, the cluster member."""
import json

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support.fake_ingester import FakeTSDB
from tests.support.threads import inline_offload
from tests.support.tmp import mktemp
from urdar.app import config as C
from urdar.app.modules import Modules


class MemberlistTests(SynchronousTestCase):
    def setUp(self):
        cfg, _ = C.load(["-blocks-storage.tsdb.dir=/nonexistent-urdar-test",
                         "-server.http-listen-address=127.0.0.1", "-server.http-listen-port=9009",
                         "-target=distributor,ingester,querier"])
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.m = Modules(cfg, None, self.clock, offload=inline_offload(), tsdb_factory=FakeTSDB)
        self.m.ingester.data_dir = mktemp(self)
        self.treq = StubTreq(self.m.resource())

    def get(self, path):
        resp = self.successResultOf(self.treq.get("http://urdar" + path))
        return resp.code, self.successResultOf(resp.text())

    def test_rings_registered_at_start_and_shown(self):
        """After start-up the page lists the ingester and distributor ring keys with this member ACTIVE."""
        self.successResultOf(self.m.start())
        code, page = self.get("/memberlist")
        self.assertEqual(code, 200)
        self.assertIn("<h1>Memberlist Status</h1>", page)
        self.assertIn("<td>collectors/ring</td>", page)
        self.assertIn("<td>collectors/distributor</td>", page)
        self.assertNotIn("collectors/compactor", page)
        self.assertIn("<td>127.0.0.1:9009</td><td>ACTIVE</td>", page)
        self.assertIn("<td>%s</td><td>127.0.0.1:9009</td><td>Alive</td>" % self.m.instance_id, page)
        self.assertIn("2023-11-14 22:13:20 UTC", page, "heartbeat time of the clock")

    def test_view_key_as_json_and_heartbeats_move(self):
        """?viewKey= gives a ring's value as JSON; its timestamp follows the heartbeats."""
        self.successResultOf(self.m.start())
        self.clock.advance(30)
        code, body = self.get("/memberlist?viewKey=collectors/ring&format=json")
        self.assertEqual(code, 200)
        me = json.loads(body)["ingesters"][self.m.instance_id]
        self.assertEqual((me["state"], me["timestamp"]), ("ACTIVE", 1_700_000_030))
        self.assertEqual(self.get("/memberlist?viewKey=nope")[0], 404)

    def test_before_start_and_after_stop(self):
        """Nothing is registered before start-up, and every entry is gone after stop."""
        self.assertIn("no keys", self.get("/memberlist")[1])
        self.successResultOf(self.m.start())
        self.successResultOf(self.m.stop())
        self.assertEqual(json.loads(self.get("/memberlist?viewKey=collectors/ring")[1]), {"ingesters": {}})

    def test_index_links_memberlist(self):
        """GET / links the memberlist page."""
        self.assertIn('href="/memberlist"', self.get("/")[1])
