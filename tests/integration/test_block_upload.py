"""A block made by promtool (`tsdb create-blocks-from openmetrics`) goes through the block upload
API of a running urdar (`python -m urdar`, filesystem bucket), validates to "complete", and its
samples read back from the bucket with the engine's BlockReader and through the querier (the
store-gateway serving the bucket, the query older than -querier.query-store-after)."""
import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest
import urllib.parse

from tests.support.services import Urdar, http, wait_for
from urdar.engine.block import BlockReader, is_ulid
from urdar.engine.labels import decode_labels

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
HAVE_PROMTOOL = os.access(PROMTOOL, os.X_OK)
H_MS = 3600 * 1000
STEP_S = 15


def openmetrics(start_s, n):
    """Two gauges and a counter, every 15 s from start_s; returns (text, {labels: [(t ms, v)]})."""
    lines, expect = [], {}
    lines.append("# TYPE temperature gauge")
    for room in ("hall", "lab"):
        key = (("__name__", "temperature"), ("room", room))
        for i in range(n):
            t = start_s + i * STEP_S
            v = 20.0 + (i % 7) * 0.5 + (room == "lab")
            lines.append('temperature{room="%s"} %s %d' % (room, repr(v), t))
            expect.setdefault(key, []).append((t * 1000, v))
    lines.append("# TYPE requests counter")
    key = (("__name__", "requests_total"), ("code", "200"))
    for i in range(n):
        t = start_s + i * STEP_S
        lines.append('requests_total{code="200"} %d %d' % (i * 3, t))
        expect.setdefault(key, []).append((t * 1000, float(i * 3)))
    lines.append("# EOF")
    return "\n".join(lines) + "\n", expect


@unittest.skipUnless(HAVE_PROMTOOL, "promtool (Debian package prometheus) is not installed")
class PromtoolBlockUploadTests(unittest.TestCase):
    def setUp(self):
        self.work = tempfile.mkdtemp(prefix="urdar-upload-")
        self.addCleanup(shutil.rmtree, self.work, True)
        self.bucket_dir = os.path.join(self.work, "bucket")
        self.urdar = Urdar(self.work, "-blocks-storage.backend=filesystem",
                           "-blocks-storage.filesystem.dir=" + self.bucket_dir,
                           "-compactor.data-dir=" + os.path.join(self.work, "compactor"),
                           "-compactor.block-upload-enabled=true",
                           "-blocks-storage.bucket-store.sync-dir=" + os.path.join(self.work, "sync"),
                           "-blocks-storage.bucket-store.sync-interval=1s")
        self.addCleanup(self.stop)
        self.urdar.wait_ready()

    def stop(self):
        code, killed = self.urdar.stop()
        self.assertFalse(killed, self.urdar.output())

    def make_block(self):
        # A 2h-aligned window ending more than 13h ago (the querier asks store-gateways there).
        now_s = int(time.time())
        start_s = ((now_s - 20 * 3600) // 7200) * 7200
        text, expect = openmetrics(start_s, 240)
        src = os.path.join(self.work, "input.om")
        with open(src, "w") as f:
            f.write(text)
        out = os.path.join(self.work, "promtool-blocks")
        res = subprocess.run([PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", src, out],
                             capture_output=True, text=True, timeout=120)
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        blocks = [d for d in os.listdir(out) if is_ulid(d)]
        self.assertEqual(len(blocks), 1, blocks)
        return os.path.join(out, blocks[0]), blocks[0], expect, start_s

    def request(self, method, path, data=None, tenant="team-a"):
        return http(method, self.urdar.base + path, data=data,
                    headers={"X-Scope-OrgID": tenant, "Content-Type": "application/octet-stream"},
                    timeout=30)

    def test_promtool_block_uploads_validates_and_reads_back(self):
        """Start, files, finish over real HTTP: /check reaches "complete", the bucket holds the
        block with meta.json, and every sample promtool wrote reads back unchanged."""
        bdir, ulid, expect, start_s = self.make_block()
        with open(os.path.join(bdir, "meta.json")) as f:
            meta = json.load(f)
        files = [("index", os.path.getsize(os.path.join(bdir, "index")))]
        for name in sorted(os.listdir(os.path.join(bdir, "chunks"))):
            files.append(("chunks/" + name, os.path.getsize(os.path.join(bdir, "chunks", name))))
        meta["thanos"] = {"labels": {}, "downsample": {"resolution": 0}, "source": "promtool",
                          "files": [{"rel_path": p, "size_bytes": s} for p, s in files]}
        base = "/api/v1/upload/block/%s" % ulid
        self.assertEqual(self.request("POST", base + "/start", json.dumps(meta).encode())[0], 200)
        # Before every file is there, /check says uploading; another tenant sees nothing.
        self.assertEqual(json.loads(self.request("GET", base + "/check")[1]), {"result": "uploading"})
        self.assertEqual(self.request("GET", base + "/check", tenant="team-b")[0], 404)
        for rel, _ in files:
            with open(os.path.join(bdir, *rel.split("/")), "rb") as f:
                status, body = self.request("POST", base + "/files?path=" + urllib.parse.quote(rel, safe=""),
                                            f.read())
            self.assertEqual(status, 200, body)
        self.assertEqual(self.request("POST", base + "/finish")[0], 200)

        def complete():
            status, body = self.request("GET", base + "/check")
            state = json.loads(body)
            if state["result"] == "failed":
                raise AssertionError("validation failed: %s" % (state,))
            return state["result"] == "complete"
        wait_for(complete, 60, "block upload validation", interval_s=0.2)
        self.assertEqual(self.request("POST", base + "/start", json.dumps(meta).encode())[0], 409)

        stored = os.path.join(self.bucket_dir, "team-a", ulid)
        self.assertEqual(sorted(os.listdir(stored)), ["chunks", "index", "meta.json"])
        with open(os.path.join(stored, "meta.json")) as f:
            self.assertEqual(json.load(f)["thanos"]["source"], "upload")
        got = {}
        with BlockReader(stored, verify=True) as r:
            for key, ts, vs in r.iter_series():
                got[tuple(decode_labels(key))] = list(zip(ts, vs))
        self.assertEqual(got, expect)
        self.queried = False
        self.query_back(expect, start_s)
        self.assertTrue(self.queried, "the store-gateway did not run: %s" % (
            http("GET", self.urdar.base + "/services")[1][:2000],))

    def query_back(self, expect, start_s):
        """The querier answers the uploaded samples from the store-gateway (which must run)."""
        status, body = http("GET", self.urdar.base + "/services")
        row = body.split(b"<td>store-gateway</td>", 1)
        if len(row) < 2 or b"Not implemented" in row[1][:80]:
            return                                  # no store-gateway in this build
        self.queried = True
        params = urllib.parse.urlencode({"query": "temperature", "start": start_s,
                                         "end": start_s + 239 * STEP_S, "step": STEP_S})

        def answered():
            status, body = self.request("GET", "/prometheus/api/v1/query_range?" + params)
            doc = json.loads(body)
            return status == 200 and len(doc["data"]["result"]) == 2 and doc

        doc = wait_for(answered, 120, "uploaded samples through the querier", interval_s=1)
        for series in doc["data"]["result"]:
            key = (("__name__", "temperature"), ("room", series["metric"]["room"]))
            want = [(t / 1000.0, v) for t, v in expect[key]]
            self.assertEqual([(float(t), float(v)) for t, v in series["values"]], want)
