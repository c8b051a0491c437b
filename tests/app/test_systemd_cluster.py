"""systemd/urdar@.service and systemd/examples/cluster/: one component per unit, each example
config valid for its component, all of them sharing the rings in etcd and one bucket."""
import os

from twisted.trial.unittest import SynchronousTestCase

from urdar.app import config as C

SYSTEMD = os.path.join(os.path.dirname(__file__), "..", "..", "systemd")
EXAMPLES = os.path.join(SYSTEMD, "examples", "cluster")
COMPONENTS = ("distributor", "ingester", "querier", "store-gateway", "compactor")


class ClusterUnitTests(SynchronousTestCase):
    def test_template_runs_one_component(self):
        """urdar@<component> runs -target=<component> with /etc/urdar/<component>.yaml, keeps
        its data in /var/lib/urdar/<component> and is as hardened as the single unit."""
        lines = open(os.path.join(SYSTEMD, "urdar@.service")).read().splitlines()
        for line in ("Type=notify", "ExecStart=/usr/local/bin/urdar -target=%i "
                     "-config.file=/etc/urdar/%i.yaml", "StateDirectory=urdar/%i",
                     "WorkingDirectory=/var/lib/urdar/%i", "NoNewPrivileges=yes",
                     "ProtectSystem=strict", "KillSignal=SIGTERM"):
            self.assertIn(line, lines)

    def test_examples_load_for_their_component(self):
        """Each example config loads with -target=<its name>, uses the ingester ring in etcd and
        the one S3 bucket, and keeps its directories under /var/lib/urdar/<component>."""
        self.assertEqual(sorted(f[:-5] for f in os.listdir(EXAMPLES) if f.endswith(".yaml")),
                         sorted(COMPONENTS))
        ports = {}
        for c in COMPONENTS:
            cfg, _ = C.load(["-config.file=" + os.path.join(EXAMPLES, c + ".yaml"), "-target=" + c])
            self.assertEqual(cfg.targets, (c,))
            self.assertEqual(cfg["ingester.ring.kvstore.store"], "etcd", c)
            self.assertEqual(len(cfg["ingester.ring.kvstore.etcd.endpoints"]), 3, c)
            self.assertEqual((cfg["blocks_storage.backend"], cfg["blocks_storage.s3.bucket_name"]),
                             ("s3", "urdar-blocks"), c)
            self.assertTrue(cfg["blocks_storage.tsdb.dir"].startswith("/var/lib/urdar/%s/" % c))
            ports[c] = cfg["server.http_listen_port"]
        # The front host runs every component but the ingesters: one port each.
        front = [ports[c] for c in COMPONENTS if c != "ingester"]
        self.assertEqual(len(set(front)), len(front))

    def test_distributor_example_dedupes_and_divides(self):
        """The distributor example turns the HA tracker on (in etcd) and the global rate strategy."""
        cfg, _ = C.load(["-config.file=" + os.path.join(EXAMPLES, "distributor.yaml"),
                         "-target=distributor"])
        self.assertTrue(cfg["distributor.ha_tracker.enable_ha_tracker"])
        self.assertEqual(cfg["distributor.ha_tracker.kvstore.store"], "etcd")
        self.assertEqual(cfg["distributor.ring.kvstore.store"], "etcd")
        self.assertEqual(cfg["limits.ingestion_rate_strategy"], "global")
        self.assertTrue(cfg.limits_defaults()["accept_ha_samples"])
