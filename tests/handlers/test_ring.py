"""The ring pages (/ingester/ring, /distributor/ring, /store-gateway/ring, /compactor/ring) and the
ring wiring of the composition root: members with tokens and ownership, health on the clock,
Forget, JSON, the ingester's JOINING -> ACTIVE -> LEAVING life, and /memberlist over slow stores."""
import json

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support.fake_ingester import FakeTSDB
from tests.support.threads import InlineReactor, inline_offload
from tests.support.tmp import mktemp
from urdar.app import config as C
from urdar.app.modules import Modules
from urdar.components.options import ConfigError


def build(case, *argv, clock=None):
    d = mktemp(case)
    cfg, _ = C.load(["-blocks-storage.tsdb.dir=%s/tsdb" % d, "-blocks-storage.filesystem.dir=%s/b" % d,
                     "-blocks-storage.bucket-store.sync-dir=%s/s" % d, "-compactor.data-dir=%s/c" % d,
                     "-server.http-listen-address=127.0.0.1", "-server.http-listen-port=9009",
                     "-ingester.ring.instance-id=ing-1", *argv])
    clock = clock or Clock()
    if clock.seconds() == 0:
        clock.advance(1_700_000_000)
    return Modules(cfg, InlineReactor(), clock, offload=inline_offload(), tsdb_factory=FakeTSDB)


class RingPageTests(SynchronousTestCase):
    def setUp(self):
        self.m = build(self, "-target=all")
        self.clock = self.m.clock
        self.treq = StubTreq(self.m.resource())

    def get(self, path, **headers):
        resp = self.successResultOf(self.treq.get("http://urdar" + path, headers=headers))
        return resp.code, self.successResultOf(resp.text())

    def test_pages_list_this_instance_with_tokens(self):
        """Each ring page lists this instance ACTIVE with its tokens, owning the whole ring."""
        self.successResultOf(self.m.start())
        code, page = self.get("/ingester/ring")
        self.assertEqual(code, 200)
        self.assertIn("<h1>Ingester Ring</h1>", page)
        self.assertIn("<td>ing-1</td><td></td><td>ACTIVE</td><td>127.0.0.1:9009</td>", page)
        self.assertIn("<td>128</td><td>100.00%</td>", page)
        self.assertIn('<button name="forget" value="ing-1" type="submit">Forget</button>', page)
        for path, tokens in (("/distributor/ring", 1), ("/store-gateway/ring", 512),
                             ("/compactor/ring", 512)):
            code, page = self.get(path)
            self.assertEqual(code, 200, path)
            self.assertIn("<td>ACTIVE</td><td>127.0.0.1:9009</td>", page)
            self.assertIn("<td>%d</td><td>100.00%%</td>" % tokens, page)

    def test_json_when_asked(self):
        """Accept: application/json gives the members as {"shards": [...], "now": ...}."""
        self.successResultOf(self.m.start())
        code, body = self.get("/ingester/ring", Accept=["application/json"])
        doc = json.loads(body)
        self.assertEqual(doc["now"], "2023-11-14T22:13:20Z")
        (me,) = doc["shards"]
        self.assertEqual((me["id"], me["state"], me["address"], me["num_tokens"], me["ownership"]),
                         ("ing-1", "ACTIVE", "127.0.0.1:9009", 128, 100.0))
        self.assertEqual(me["tokens"], sorted(me["tokens"]))
        self.assertEqual(me["timestamp"], "2023-11-14T22:13:20Z")

    def test_dead_member_turns_unhealthy_and_forget_removes_it(self):
        """A member that stops heartbeating is UNHEALTHY after the timeout; Forget removes it
        from the ring while the live member stays."""
        self.successResultOf(self.m.start())
        kv = self.m.ring_kv("ingester")

        def add(desc):
            desc["ingesters"]["ing-2"] = {"addr": "10.0.0.2:9009", "state": "ACTIVE", "zone": "",
                                          "tokens": [1, 2, 3], "timestamp": int(self.clock.seconds()),
                                          "registered_timestamp": int(self.clock.seconds())}
            return desc
        kv.cas("collectors/ring", add)
        self.assertIn("<td>ing-2</td><td></td><td>ACTIVE</td>", self.get("/ingester/ring")[1])
        for _ in range(5):
            self.clock.advance(15)
        page = self.get("/ingester/ring")[1]
        self.assertIn("<td>ing-2</td><td></td><td>UNHEALTHY</td>", page)
        self.assertIn("(75s ago)", page)
        self.assertIn("<td>ing-1</td><td></td><td>ACTIVE</td>", page, "ing-1 kept heartbeating")
        resp = self.successResultOf(self.treq.post("http://urdar/ingester/ring", data={"forget": "ing-2"}, allow_redirects=False))
        self.assertEqual(resp.code, 302)
        self.assertNotIn("ing-2", self.get("/ingester/ring")[1])
        self.assertEqual(set(kv.get("collectors/ring")["ingesters"]), {"ing-1"})
        resp = self.successResultOf(self.treq.post("http://urdar/ingester/ring", data={}))
        self.assertEqual(resp.code, 400)

    def test_forget_failure_is_500(self):
        """When the KV store refuses the write, Forget answers 500 naming the instance."""
        self.successResultOf(self.m.start())
        kv = self.m.ring_kv("ingester")
        kv.cas = lambda key, fn: defer.fail(ConnectionRefusedError("etcd is down"))
        resp = self.successResultOf(self.treq.post("http://urdar/ingester/ring", data={"forget": "x"}))
        self.assertEqual(resp.code, 500)
        self.assertIn("error forgetting instance 'x'", self.successResultOf(resp.text()))


class IngesterLifecycleTests(SynchronousTestCase):
    def test_joining_until_started_then_active_then_leaving(self):
        """The ingester is JOINING while it starts, ACTIVE once started, and out of the ring after stop."""
        m = build(self, "-target=ingester")
        kv = m.ring_kv("ingester")
        started = defer.Deferred()
        m.ingester.start = lambda: started
        d = m.start()
        self.assertEqual(kv.get("collectors/ring")["ingesters"]["ing-1"]["state"], "JOINING")
        started.callback(None)
        self.successResultOf(d)
        self.assertEqual(kv.get("collectors/ring")["ingesters"]["ing-1"]["state"], "ACTIVE")
        seen = []
        kv.watch("collectors/ring", lambda k, v: seen.append(v["ingesters"].get("ing-1", {}).get("state")))
        self.successResultOf(m.stop())
        self.assertIn("LEAVING", seen)
        self.assertEqual(kv.get("collectors/ring")["ingesters"], {})

    def test_stays_leaving_without_unregister_and_keeps_tokens(self):
        """With -ingester.ring.unregister-on-shutdown=false the entry stays LEAVING, and a new
        process with the same id in the same store takes its tokens back."""
        m = build(self, "-target=ingester", "-ingester.ring.unregister-on-shutdown=false",
                  "-ingester.ring.num-tokens=16")
        self.successResultOf(m.start())
        tokens = m.kv.get("collectors/ring")["ingesters"]["ing-1"]["tokens"]
        self.assertEqual(len(tokens), 16)
        self.successResultOf(m.stop())
        self.assertEqual(m.kv.get("collectors/ring")["ingesters"]["ing-1"]["state"], "LEAVING")
        m2 = build(self, "-target=ingester", "-ingester.ring.num-tokens=16", clock=m.clock)
        m2.kv = m.kv
        m2._ring_kvs["ingester"] = m.kv
        m2._ring_of["ingester"].kv = m.kv
        self.successResultOf(m2.start())
        self.assertEqual(m.kv.get("collectors/ring")["ingesters"]["ing-1"]["tokens"], tokens)

    def test_prefix_and_store_flags(self):
        """-ingester.ring.prefix moves the ring's key; etcd without endpoints stops start-up."""
        m = build(self, "-target=ingester", "-ingester.ring.prefix=team/")
        self.successResultOf(m.start())
        self.assertIn("ing-1", m.kv.get("team/ring")["ingesters"])
        self.assertIsNone(m.kv.get("collectors/ring"))
        err = self.assertRaises(ConfigError, build, self, "-target=ingester", "-ingester.ring.store=etcd")
        self.assertIn("-ingester.ring.etcd.endpoints", str(err))
        self.assertRaises(ConfigError, build, self, "-ingester.ring.num-tokens=0")


    def test_instance_flags_shape_the_entry(self):
        """-ingester.ring.instance-addr/-port/-availability-zone name this instance in the ring and
        the replication and zone flags reach the ring reader."""
        m = build(self, "-target=ingester", "-ingester.ring.instance-addr=10.1.2.3",
                  "-ingester.ring.instance-port=7000", "-ingester.ring.instance-availability-zone=z1",
                  "-ingester.ring.replication-factor=5", "-ingester.ring.zone-awareness-enabled=true",
                  "-ingester.ring.heartbeat-timeout=30s")
        self.successResultOf(m.start())
        me = m.kv.get("collectors/ring")["ingesters"]["ing-1"]
        self.assertEqual((me["addr"], me["zone"]), ("10.1.2.3:7000", "z1"))
        r = m.rings.rings["ingester"]
        self.assertEqual((r.replication_factor, r.zone_awareness, r.heartbeat_timeout_s), (5, True, 30.0))

    def test_start_does_not_wait_for_an_unanswering_store(self):
        """With a KV store that never answers (etcd unreachable) the ingester still starts and
        serves; its ring entry is written when the store answers."""
        m = build(self, "-target=ingester")
        pending = []

        def cas(key, fn):
            d = defer.Deferred()
            pending.append(d)
            return d
        m._ring_of["ingester"].kv.cas = cas
        self.successResultOf(m.start())
        self.assertEqual(m.states["ingester"], "Running")
        self.assertEqual(len(pending), 2, "JOINING and ACTIVE writes in flight")

    def test_shutdown_endpoint_leaves_the_ring(self):
        """/ingester/shutdown marks the ingester LEAVING, stops it and removes it from the ring;
        the process's later stop does not bring it back."""
        m = build(self, "-target=ingester")
        self.successResultOf(m.start())
        seen = []
        m.kv.watch("collectors/ring", lambda k, v: seen.append(v["ingesters"].get("ing-1", {}).get("state")))
        treq = StubTreq(m.resource())
        resp = self.successResultOf(treq.post("http://urdar/ingester/shutdown"))
        self.assertEqual(resp.code, 204)
        self.assertIn("LEAVING", seen)
        self.assertEqual(m.kv.get("collectors/ring")["ingesters"], {})
        self.successResultOf(m.stop())
        m.clock.advance(60)
        self.assertEqual(m.kv.get("collectors/ring")["ingesters"], {})

class SlowKV:
    """A KV store whose reads answer only when the test says (an etcd that is slow or down)."""

    def __init__(self):
        self.pending = []
        self.prefixes = []

    def keys(self, prefix=""):
        self.prefixes.append(prefix)
        d = defer.Deferred()
        self.pending.append((d, ["collectors/ring"]))
        return d

    def entry(self, key):
        d = defer.Deferred()
        self.pending.append((d, ({"ingesters": {"far": {"addr": "10.9.9.9:1", "state": "ACTIVE",
                                                        "timestamp": 1, "tokens": [5]}}}, 7, 1)))
        return d

    def answer(self):
        while self.pending:
            d, value = self.pending.pop(0)
            d.callback(value)


class MemberlistOverSlowStoreTests(SynchronousTestCase):
    def test_page_waits_on_deferreds_not_the_reactor(self):
        """With a store that has not answered yet the page is pending (nothing blocks) and it
        renders the store's keys once they arrive."""
        m = build(self, "-target=ingester")
        slow = SlowKV()
        m.rings.add_store("etcd (ingester ring)", slow, "collectors/")
        treq = StubTreq(m.resource())
        d = treq.get("http://urdar/memberlist")
        self.assertNoResult(d)
        slow.answer()
        treq.flush()
        resp = self.successResultOf(d)
        page = self.successResultOf(resp.text())
        self.assertIn("<td>collectors/ring</td><td>etcd (ingester ring)</td><td>7</td>", page)
        self.assertIn("<td>far</td><td>10.9.9.9:1</td>", page)
        self.assertIn("gossip", page)
        self.assertEqual(slow.prefixes, ["collectors/"], "only the rings' keys are read")
