"""Two `-target=compactor` processes over one filesystem bucket share its tenants through the
compactor ring in a real etcd: every tenant's overlapping blocks are compacted exactly once, by
the compactor the ring makes its owner (FNV-1a of the tenant, first ACTIVE compactor clockwise),
and after one compactor leaves (SIGTERM) the other takes over its tenants."""
import base64
import json
import os
import re
import tempfile
import time
import unittest

from twisted.internet.task import Clock

from tests.components.test_compactor import SERIES_A, SERIES_B, samples, write_local_block
from tests.support.etcd import Etcd, have_etcd
from tests.support.services import Urdar, http, wait_for
from urdar.components.compactor import _block_files, thanos_section
from urdar.components.compactorshard import TenantOwnership
from urdar.engine.block import meta_json, read_meta
from urdar.net.kv import MemoryKV
from urdar.net.ring import Ring

H = 3600 * 1000
TENANTS = ["team-%d" % k for k in range(8)]
COMPACTED = re.compile(r"tenant (\S+): compacted")


class CompactorRingTests(unittest.TestCase):
    def setUp(self):
        if not have_etcd():
            raise unittest.SkipTest("etcd is not installed (Debian package etcd-server)")
        self.tmp = tempfile.TemporaryDirectory(prefix="urdar-compactor-ring-")
        self.addCleanup(self.tmp.cleanup)
        self.etcd = Etcd(self.tmp.name).start()
        self.addCleanup(self.etcd.stop)
        self.bucket = os.path.join(self.tmp.name, "bucket")
        os.makedirs(self.bucket)
        self.local = os.path.join(self.tmp.name, "local")
        os.makedirs(self.local)

    def compactor(self, name):
        workdir = os.path.join(self.tmp.name, name)
        os.makedirs(workdir)
        u = Urdar(workdir, "-target=compactor", "-compactor.ring.store=etcd",
                  "-compactor.ring.etcd.endpoints=" + self.etcd.endpoint,
                  "-compactor.ring.instance-id=" + name, "-compactor.ring.heartbeat-period=1s",
                  "-compactor.ring.heartbeat-timeout=20s", "-compactor.compaction-interval=1s",
                  "-compactor.first-level-compaction-wait-period=0s",
                  "-blocks-storage.backend=filesystem", "-blocks-storage.filesystem.dir=" + self.bucket)
        self.addCleanup(lambda: u.alive() and u.stop())
        u.name_ = name
        return u

    def ship(self, tenant, mint):
        """Two overlapping level-1 2h blocks of `tenant` into the bucket, meta.json last."""
        for k, series in enumerate((SERIES_A, SERIES_B)):
            d = os.path.join(self.local, write_local_block(
                self.local, mint, mint + 2 * H, {series: samples(mint, mint + 2 * H, offset=k)}))
            meta = read_meta(d)
            files = _block_files(d)
            meta["thanos"] = thanos_section(files, {}, source="receive")
            dest = os.path.join(self.bucket, tenant, meta["ulid"])
            for rel, _ in files:
                if rel != "meta.json":
                    os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
                    with open(os.path.join(d, rel), "rb") as f, open(os.path.join(dest, rel), "wb") as g:
                        g.write(f.read())
            with open(os.path.join(dest, "meta.json"), "wb") as g:
                g.write(meta_json(meta))

    def compacted_blocks(self, tenant):
        """ULIDs of the tenant's blocks written by compaction (level 2 and up)."""
        out = []
        tdir = os.path.join(self.bucket, tenant)
        for ulid in os.listdir(tdir) if os.path.isdir(tdir) else ():
            path = os.path.join(tdir, ulid, "meta.json")
            if os.path.exists(path):
                with open(path) as f:
                    if json.load(f)["compaction"]["level"] >= 2:
                        out.append(ulid)
        return out

    def compacted_by(self, u):
        with open(u.log_path, "rb") as f:
            return [m.group(1) for m in COMPACTED.finditer(f.read().decode("utf-8", "replace"))]

    def ring_states(self, u):
        status, body = http("GET", u.base + "/compactor/ring", headers={"Accept": "application/json"})
        return {s["id"]: s["state"] for s in json.loads(body)["shards"]} if status == 200 else {}

    def owners_now(self):
        """{tenant: compactor} by the ring as etcd holds it."""
        status, body = http("POST", self.etcd.base + "/v3/kv/range", data=json.dumps(
            {"key": base64.b64encode(b"collectors/compactor").decode()}).encode())
        desc = json.loads(base64.b64decode(json.loads(body)["kvs"][0]["value"]))
        clock = Clock()
        clock.advance(time.time())
        ring = Ring(MemoryKV(clock), "k", clock, replication_factor=1, heartbeat_timeout_s=20)
        ring.set_desc(desc)
        view = TenantOwnership(ring, "")
        return {t: view.owner(t) for t in TENANTS}

    def test_each_tenant_compacted_by_its_owner_once(self):
        comps = [self.compactor("comp-a"), self.compactor("comp-b")]
        for u in comps:
            u.wait_ready(60)
        both = {"comp-a": "ACTIVE", "comp-b": "ACTIVE"}
        for u in comps:
            wait_for(lambda u=u: self.ring_states(u) == both, 30,
                     lambda u=u: "both ACTIVE on %s: %s" % (u.base, self.ring_states(u)))
        owners = self.owners_now()
        self.assertEqual(set(owners.values()), {"comp-a", "comp-b"},
                         "8 tenants over two compactors of 512 tokens each: both own some")
        mint = (int(time.time() * 1000) - 48 * H) // (2 * H) * (2 * H)
        for t in TENANTS:
            self.ship(t, mint)
        wait_for(lambda: all(self.compacted_blocks(t) for t in TENANTS), 60,
                 lambda: "every tenant compacted: %s" % {t: self.compacted_blocks(t) for t in TENANTS})
        time.sleep(2)      # a second cycle of each: nothing compacted twice
        logs = "\n".join(u.output()[-4000:] for u in comps)
        for t in TENANTS:
            self.assertEqual(len(self.compacted_blocks(t)), 1, "%s compacted once\n%s" % (t, logs))
        for u in comps:
            self.assertEqual(sorted(self.compacted_by(u)),
                             sorted(t for t in TENANTS if owners[t] == u.name_), logs)

        # comp-b leaves the ring: comp-a takes its tenants over at its next cycle.
        self.assertEqual(comps[1].stop()[1], False)
        wait_for(lambda: self.ring_states(comps[0]) == {"comp-a": "ACTIVE"}, 30,
                 lambda: "comp-b gone: %s" % self.ring_states(comps[0]))
        for t in TENANTS:
            self.ship(t, mint + 2 * H)
        wait_for(lambda: all(len(self.compacted_blocks(t)) == 2 for t in TENANTS), 60,
                 lambda: "second blocks compacted: %s" % {t: self.compacted_blocks(t) for t in TENANTS})
        self.assertEqual(sorted(self.compacted_by(comps[0])),
                         sorted([t for t in TENANTS if owners[t] == "comp-a"] + TENANTS))
