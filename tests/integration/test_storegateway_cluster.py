"""Three `-target=store-gateway` processes sharding one filesystem bucket by the store-gateway
ring in a real etcd (RF 2), and a `-target=querier` reading them: each store-gateway loads only
its share of the blocks, the querier's answers cover every block, and after `kill -9` of one
store-gateway queries still answer in full from the replicas."""
import json
import os
import signal
import tempfile
import time
import unittest
import urllib.parse

from tests.components.test_storegateway import series_data
from tests.support.etcd import Etcd, have_etcd
from tests.support.services import Urdar, http, wait_for
from urdar.engine.block import new_ulid, write_block
from urdar.storage.filesystem import FilesystemBucket
from urdar.storage.prefixed import for_tenant
from urdar.storage.shipper import Shipper

H = 3600 * 1000
NBLOCKS = 8


class StoreGatewayClusterTests(unittest.TestCase):
    def setUp(self):
        if not have_etcd():
            raise unittest.SkipTest("etcd is not installed (Debian package etcd-server)")
        self.tmp = tempfile.TemporaryDirectory(prefix="urdar-sg-")
        self.addCleanup(self.tmp.cleanup)
        self.etcd = Etcd(self.tmp.name).start()
        self.addCleanup(self.etcd.stop)
        self.bucket_dir = os.path.join(self.tmp.name, "bucket")
        # Eight 2h blocks two days ago: older than -querier.query-ingesters-within.
        now_ms = int(time.time() * 1000)
        self.start_ms = (now_ms - 48 * H) // (2 * H) * (2 * H)
        local = os.path.join(self.tmp.name, "local")
        os.makedirs(local)
        self.ulids = []
        for k in range(NBLOCKS):
            mint = self.start_ms + k * 2 * H
            self.ulids.append(write_block(local, mint, mint + 2 * H, series_data(mint, mint + 2 * H, k),
                                          ulid=new_ulid(mint + 1)))
        d = Shipper(local, for_tenant(FilesystemBucket(self.bucket_dir), "t1"), None).sync()
        done = []
        d.addBoth(done.append)
        self.assertEqual(len(done), 1, "shipping is synchronous on the filesystem")

    def ring_flags(self, workdir, instance_id):
        return ["-store-gateway.sharding-ring.store=etcd",
                "-store-gateway.sharding-ring.etcd.endpoints=" + self.etcd.endpoint,
                "-store-gateway.sharding-ring.instance-id=" + instance_id,
                "-store-gateway.sharding-ring.replication-factor=2",
                "-store-gateway.sharding-ring.heartbeat-period=1s",
                "-store-gateway.sharding-ring.heartbeat-timeout=4s",
                "-blocks-storage.backend=filesystem", "-blocks-storage.bucket-store.sync-interval=1s",
                "-blocks-storage.filesystem.dir=" + self.bucket_dir]

    def start(self, target, instance_id, *extra):
        workdir = os.path.join(self.tmp.name, instance_id)
        os.makedirs(workdir)
        u = Urdar(workdir, "-target=" + target, "-querier.query-store-after=0s",
                  *self.ring_flags(workdir, instance_id), *extra)
        self.addCleanup(lambda: u.alive() and u.stop())
        return u.wait_ready()

    def query(self, q, querier):
        t = (self.start_ms + NBLOCKS * 2 * H) / 1000.0
        url = "%s/prometheus/api/v1/query_range?%s" % (querier.base, urllib.parse.urlencode(
            {"query": q, "start": self.start_ms / 1000.0 + 60, "end": t - 60, "step": "1h"}))
        return http("GET", url, headers={"X-Scope-OrgID": "t1"}, timeout=30)

    def loaded(self, sg):
        status, body = http("GET", sg.base + "/store-gateway/tenant/t1/blocks")
        return {u for u in self.ulids if u.encode() in body} if status == 200 else set()

    def test_blocks_sharded_and_queries_survive_a_dead_store_gateway(self):
        sgs = [self.start("store-gateway", "sg-%d" % k) for k in range(3)]
        querier = self.start("querier", "querier-1")

        def all_in_ring():
            status, body = http("GET", querier.base + "/store-gateway/ring",
                                headers={"Accept": "application/json"})
            return status == 200 and sum(s["state"] == "ACTIVE" for s in json.loads(body)["shards"]) == 3
        wait_for(all_in_ring, 30, "three ACTIVE store-gateways")
        status, body = self.query("count(up)", querier)
        self.assertEqual(status, 200, body)
        values = json.loads(body)["data"]["result"][0]["values"]
        self.assertEqual(len(values), NBLOCKS * 2)
        self.assertTrue(all(v == "24" for _, v in values), values)
        # RF 2 of 3: once each has re-synced with all three in the ring, every block is loaded
        # by exactly two store-gateways (the first ones started alone and loaded everything).
        def settled():
            held = [self.loaded(sg) for sg in sgs]
            return all(sum(u in h for h in held) == 2 for u in self.ulids)
        wait_for(settled, 30, "every block on exactly two store-gateways")

        os.kill(sgs[0].proc.pid, signal.SIGKILL)
        sgs[0].proc.wait()
        for q in ("count(up)", 'sum(rate(http_requests_total{job="api"}[5m]))'):
            status, body = self.query(q, querier)
            self.assertEqual(status, 200, body)
            self.assertEqual(len(json.loads(body)["data"]["result"][0]["values"]), NBLOCKS * 2)

    def test_shuffle_sharding_keeps_a_tenant_on_its_store_gateways(self):
        """-store-gateway.tenant-shard-size=2 of 3 store-gateways (RF 2): t1's blocks end up on
        the two of its shard, each holding all of them, the third none; the querier asks only
        those and answers in full, also with one of the two killed."""
        shard = ["-store-gateway.tenant-shard-size=2"]
        sgs = [self.start("store-gateway", "sg-%d" % k, *shard) for k in range(3)]
        querier = self.start("querier", "querier-1", *shard)

        def states():
            status, body = http("GET", querier.base + "/store-gateway/ring",
                                headers={"Accept": "application/json"})
            return {s["id"]: s["state"] for s in json.loads(body)["shards"]} if status == 200 else {}
        wait_for(lambda: list(states().values()) == ["ACTIVE"] * 3, 30,
                 lambda: "three ACTIVE store-gateways: %s" % states())

        def settled():
            held = [len(self.loaded(sg)) for sg in sgs]
            return sorted(held) == [0, NBLOCKS, NBLOCKS]
        wait_for(settled, 30, lambda: "t1 on two store-gateways only: %s"
                 % [len(self.loaded(sg)) for sg in sgs])
        status, body = self.query("count(up)", querier)
        self.assertEqual(status, 200, body)
        self.assertEqual(len(json.loads(body)["data"]["result"][0]["values"]), NBLOCKS * 2)
        holder = next(sg for sg in sgs if self.loaded(sg))
        os.kill(holder.proc.pid, signal.SIGKILL)
        holder.proc.wait()
        status, body = self.query("count(up)", querier)
        self.assertEqual(status, 200, body)
        values = json.loads(body)["data"]["result"][0]["values"]
        self.assertEqual(len(values), NBLOCKS * 2)
        self.assertTrue(all(v == "24" for _, v in values), values)
