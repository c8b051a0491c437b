"""The ingester's life in its ring with a real TSDB and a filesystem bucket: JOINING while the
WAL replays, ACTIVE once it serves, and /ingester/shutdown: LEAVING, pushes refused, every head
flushed to a block that lands in the bucket, then out of the ring even with
-ingester.ring.unregister-on-shutdown=false; a restart with the same id keeps its tokens."""
import json
import os

import cramjam
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support.threads import InlineReactor, inline_offload
from tests.support.tmp import mktemp
from urdar.app import config as C
from urdar.app.modules import Modules
from urdar.engine.remotewrite import encode_write_request

NOW_S = 1_700_000_000


def build(d, *argv, clock=None):
    os.makedirs(d, exist_ok=True)
    cfg, _ = C.load(["-target=all", "-blocks-storage.tsdb.dir=%s/tsdb" % d,
                     "-blocks-storage.filesystem.dir=%s/bucket" % d,
                     "-blocks-storage.bucket-store.sync-dir=%s/s" % d, "-compactor.data-dir=%s/c" % d,
                     "-server.http-listen-address=127.0.0.1", "-server.http-listen-port=9009",
                     "-ingester.ring.instance-id=ing-1",
                     "-ingester.ring.tokens-file-path=%s/tokens.json" % d, *argv])
    if clock is None:
        clock = Clock()
        clock.advance(NOW_S)
    return Modules(cfg, InlineReactor(), clock, offload=inline_offload())


class ShutdownTests(SynchronousTestCase):
    def setUp(self):
        self.dir = mktemp(self)
        self.m = build(self.dir, "-ingester.ring.unregister-on-shutdown=false")
        self.treq = StubTreq(self.m.resource())
        self.states = []
        self.m.kv.watch("collectors/ring", lambda k, v: self.states.append(
            (v or {}).get("ingesters", {}).get("ing-1", {}).get("state")))

    def push(self, t_ms, value):
        data = bytes(cramjam.snappy.compress_raw(encode_write_request(
            [([("__name__", "up"), ("job", "j")], [(t_ms, value)])])))
        resp = self.successResultOf(self.treq.post(
            "http://urdar/api/v1/push", data=data, headers={
                "X-Scope-OrgID": "t1", "Content-Encoding": "snappy",
                "Content-Type": "application/x-protobuf"}))
        return resp.code, self.successResultOf(resp.text())

    def test_joining_then_active(self):
        """The ingester registers JOINING while it replays its WAL and turns ACTIVE once ready."""
        self.successResultOf(self.m.start())
        self.assertEqual(self.states[:1], ["JOINING"])
        self.assertEqual(self.m.kv.get("collectors/ring")["ingesters"]["ing-1"]["state"], "ACTIVE")

    def test_shutdown_flushes_ships_and_leaves(self):
        """/ingester/shutdown: the ring shows LEAVING, then the entry is gone (the flag to keep
        it does not apply here); the head is cut to a block found in the bucket with the pushed
        sample's time range; pushes after it are refused with 503."""
        self.successResultOf(self.m.start())
        now_ms = NOW_S * 1000
        self.assertEqual(self.push(now_ms, 1.0), (200, ""))
        resp = self.successResultOf(self.treq.post("http://urdar/ingester/shutdown"))
        self.assertEqual(resp.code, 204)
        self.assertIn("LEAVING", self.states)
        self.assertEqual(self.states[-1], None, "removed from the ring")
        self.assertEqual(self.m.kv.get("collectors/ring")["ingesters"], {})
        tenant_dir = os.path.join(self.dir, "bucket", "t1")
        ulids = [n for n in os.listdir(tenant_dir) if len(n) == 26]
        self.assertEqual(len(ulids), 1, os.listdir(tenant_dir))
        with open(os.path.join(tenant_dir, ulids[0], "meta.json")) as f:
            meta = json.load(f)
        self.assertLessEqual(meta["minTime"], now_ms)
        self.assertEqual((meta["maxTime"], meta["stats"]["numSamples"]), (now_ms + 1, 1))
        code, text = self.push(now_ms + 1000, 2.0)
        self.assertEqual(code, 503)
        self.assertIn("not accepting writes", text)
        self.successResultOf(self.m.stop())
        self.assertEqual(self.m.kv.get("collectors/ring")["ingesters"], {})


class RestartTests(SynchronousTestCase):
    def test_restart_keeps_tokens(self):
        """An ingester stopped (SIGTERM path) and started again with the same id owns the same
        128 tokens: they are kept in -ingester.ring.tokens-file-path."""
        d = mktemp(self)
        first = build(d)
        self.successResultOf(first.start())
        tokens = first.kv.get("collectors/ring")["ingesters"]["ing-1"]["tokens"]
        self.assertEqual(len(tokens), 128)
        self.successResultOf(first.stop())
        self.assertEqual(first.kv.get("collectors/ring")["ingesters"], {})
        second = build(d)
        self.successResultOf(second.start())
        self.addCleanup(second.stop)
        self.assertEqual(second.kv.get("collectors/ring")["ingesters"]["ing-1"]["tokens"], tokens)


class SigtermTests(SynchronousTestCase):
    def test_stop_with_flush_on_shutdown_ships_and_leaves(self):
        """The SIGTERM path (Modules.stop) with -blocks-storage.tsdb.flush-blocks-on-shutdown:
        LEAVING, then the head is cut and shipped to the bucket, then out of the ring."""
        d = mktemp(self)
        m = build(d, "-blocks-storage.tsdb.flush-blocks-on-shutdown=true")
        states = []
        m.kv.watch("collectors/ring", lambda k, v: states.append(
            (v or {}).get("ingesters", {}).get("ing-1", {}).get("state")))
        self.successResultOf(m.start())
        now_ms = NOW_S * 1000
        data = bytes(cramjam.snappy.compress_raw(encode_write_request(
            [([("__name__", "up")], [(now_ms, 1.0)])])))
        resp = self.successResultOf(StubTreq(m.resource()).post(
            "http://urdar/api/v1/push", data=data, headers={
                "X-Scope-OrgID": "t1", "Content-Encoding": "snappy",
                "Content-Type": "application/x-protobuf"}))
        self.assertEqual(resp.code, 200)
        self.successResultOf(m.stop())
        self.assertEqual(states[-2:], ["LEAVING", None])
        tenant_dir = os.path.join(d, "bucket", "t1")
        self.assertEqual(len([n for n in os.listdir(tenant_dir) if len(n) == 26]), 1)
