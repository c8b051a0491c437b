"""Per-ring KV store options (-<ring>.store, -<ring>.prefix, -<ring>.etcd.*) and the store built
from them."""
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from urdar.app import config as C
from urdar.net.etcd import EtcdKV
from urdar.net.kv import MemoryKV
from urdar.net.kvstore import kv_from_config, ring_key


def load(argv, files=None):
    files = files or {}
    return C.load(argv, read_file=lambda p: files[p])[0]


class KVStoreConfigTests(SynchronousTestCase):
    def test_default_is_one_shared_memory_store(self):
        """Without flags every ring uses the in-process store, one store shared by all rings,
        under Mimir's keys."""
        cfg = load([])
        clock = Clock()
        shared = MemoryKV(clock)
        for ring in ("ingester", "distributor", "store-gateway", "compactor"):
            self.assertIs(kv_from_config(cfg, ring, None, clock, memory=shared), shared)
        self.assertIsInstance(kv_from_config(cfg, "ingester", None, clock), MemoryKV)
        self.assertEqual([ring_key(cfg, r) for r in ("ingester", "distributor", "store-gateway",
                                                    "compactor")],
                         ["collectors/ring", "collectors/distributor", "collectors/store-gateway",
                          "collectors/compactor"])

    def test_etcd_from_flags(self):
        """-ingester.ring.store=etcd with its etcd flags gives an etcd client with those settings;
        the other rings stay in memory."""
        clock = Clock()
        cfg = load(["-ingester.ring.store=etcd", "-ingester.ring.etcd.endpoints=e1:2379,e2:2379",
                    "-ingester.ring.etcd.dial-timeout=3s", "-ingester.ring.etcd.max-retries=4",
                    "-ingester.ring.etcd.username=u", "-ingester.ring.etcd.password=s3cret",
                    "-ingester.ring.prefix=urdar/"])
        kv = kv_from_config(cfg, "ingester", clock, clock)
        self.assertIsInstance(kv, EtcdKV)
        self.assertEqual(kv.endpoints, ["http://e1:2379", "http://e2:2379"])
        self.assertEqual((kv.dial_timeout_s, kv.max_retries, kv.username), (3.0, 4, "u"))
        self.assertEqual(ring_key(cfg, "ingester"), "urdar/ring")
        self.assertIsInstance(kv_from_config(cfg, "distributor", clock, clock), MemoryKV)
        self.assertNotIn("s3cret", cfg.render(), "the password is masked on /config")

    def test_yaml_blocks_per_ring(self):
        """Each ring's kvstore block is read from YAML at Mimir's paths."""
        cfg = load(["-config.file=c.yaml"], {"c.yaml": """
store_gateway:
  sharding_ring:
    kvstore:
      store: etcd
      prefix: sg/
      etcd: {endpoints: [127.0.0.1:2379], dial_timeout: 2s, max_retries: 7}
compactor:
  sharding_ring:
    kvstore: {store: etcd, etcd: {endpoints: [h:1]}}
distributor:
  ring:
    kvstore: {store: inmemory}
"""})
        clock = Clock()
        sg = kv_from_config(cfg, "store-gateway", clock, clock)
        self.assertEqual((sg.endpoints, sg.dial_timeout_s, sg.max_retries),
                         (["http://127.0.0.1:2379"], 2.0, 7))
        self.assertEqual(ring_key(cfg, "store-gateway"), "sg/store-gateway")
        self.assertEqual(kv_from_config(cfg, "compactor", clock, clock).endpoints, ["http://h:1"])
        self.assertEqual(cfg["compactor.sharding_ring.kvstore.etcd.dial_timeout"], 10000)

    def test_bad_settings_are_refused(self):
        """An unsupported store is refused at start-up, and etcd without endpoints names the flag."""
        with self.assertRaises(C.ConfigError) as e:
            load(["-distributor.ring.store=consul"])
        self.assertIn("inmemory, etcd", str(e.exception))
        cfg = load(["-compactor.ring.store=etcd"])
        with self.assertRaises(ValueError) as e:
            kv_from_config(cfg, "compactor", None, Clock())
        self.assertIn("-compactor.ring.etcd.endpoints", str(e.exception))
        with self.assertRaises(ValueError):
            kv_from_config(cfg, "querier", None, Clock())
