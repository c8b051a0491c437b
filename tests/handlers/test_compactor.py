"""Compactor endpoints through Klein (StubTreq): the block upload API with every status code and
hostile block IDs and paths, background validation states, tenant deletion."""
import json
import os
from urllib.parse import quote

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.components.test_compactor import (
    BASE, H, NOW_S, SERIES_A, SERIES_B, read_bucket_block, samples, write_local_block)
from tests.support.threads import InlineReactor, ManualThreadPool, inline_offload
from tests.support.tmp import mktemp
from urdar.app.config import Config
from urdar.components.compactor import Compactor, CompactorConfig, _block_files, thanos_section
from urdar.components.limits import Overrides
from urdar.engine.block import read_meta
from urdar.handlers.compactor import CompactorHandlers
from urdar.handlers.routes import RouteTable
from urdar.net.offload import Offload
from urdar.net.tenant import Tenancy
from urdar.storage.faulty import FaultyBucket
from urdar.storage.memory import MemoryBucket

URL = "http://urdar/api/v1/upload/block/"


class UploadTestCase(SynchronousTestCase):
    manual = False

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW_S)
        self.bucket = MemoryBucket(self.clock)
        defaults = Config().limits_defaults()
        defaults["compactor_block_upload_enabled"] = True
        self.overrides = Overrides(defaults)
        if self.manual:
            self.pool = ManualThreadPool()
            offload = Offload(InlineReactor(), lambda w, n: self.pool)
            offload.add_pool("compactor", 1, 10)
            offload.start()
        else:
            offload = inline_offload((("compactor", 1, 10),))
        self.compactor = Compactor(self.bucket, self.overrides, self.clock, mktemp(self),
                                   CompactorConfig(first_level_wait_ms=0), offload=offload,
                                   instance_id="compactor-1", instance_addr="127.0.0.1:8080")
        self.treq = StubTreq(RouteTable(Tenancy()).mount(CompactorHandlers(self.compactor)).resource())
        self.local = mktemp(self)
        os.makedirs(self.local)
        self.ulid, self.dir, self.meta = self.make_block()

    def make_block(self, mint=BASE, maxt=BASE + 2 * H, series=None):
        series = series or {SERIES_A: samples(mint, maxt), SERIES_B: samples(mint, maxt, 60000)}
        ulid = write_local_block(self.local, mint, maxt, series)
        d = os.path.join(self.local, ulid)
        meta = read_meta(d)
        meta["thanos"] = thanos_section(_block_files(d), {}, source="promtool")
        return ulid, d, meta

    def call(self, method, url, data=None, tenant="t1", headers=None):
        h = dict(headers or {})
        if tenant is not None:
            h["X-Scope-OrgID"] = tenant
        resp = self.successResultOf(self.treq.request(method, url, data=data, headers=h,
                                                      allow_redirects=False))
        body = self.successResultOf(resp.content())
        return resp.code, body

    def start(self, ulid=None, meta=None, tenant="t1"):
        meta = self.meta if meta is None else meta
        data = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
        return self.call("POST", URL + (ulid or self.ulid) + "/start", data, tenant)

    def file_body(self, rel, d=None):
        with open(os.path.join(d or self.dir, *rel.split("/")), "rb") as f:
            return f.read()

    def put_file(self, rel, data=None, ulid=None, tenant="t1", raw_path=None):
        if data is None:
            data = self.file_body(rel)
        q = raw_path if raw_path is not None else quote(rel, safe="")
        return self.call("POST", URL + (ulid or self.ulid) + "/files?path=" + q, data, tenant)

    def finish(self, ulid=None, tenant="t1"):
        return self.call("POST", URL + (ulid or self.ulid) + "/finish", b"", tenant)

    def check(self, ulid=None, tenant="t1"):
        code, body = self.call("GET", URL + (ulid or self.ulid) + "/check", None, tenant)
        return code, (json.loads(body) if code == 200 else body)

    def upload_all(self):
        self.assertEqual(self.start()[0], 200)
        for f in self.meta["thanos"]["files"]:
            if f["rel_path"] != "meta.json":
                self.assertEqual(self.put_file(f["rel_path"]), (200, b""))

    def tenant_objects(self, tenant):
        return sorted(n for n in self.bucket.objects if n.startswith(tenant + "/"))


class BlockUploadTests(UploadTestCase):
    def test_full_upload_validates_and_completes(self):
        """start, every file, finish: /check says complete, meta.json is the sanitized meta and
        the block's samples read back from the bucket."""
        self.upload_all()
        self.assertEqual(self.check(), (200, {"result": "uploading"}))
        self.assertEqual(self.finish(), (200, b""))
        self.assertEqual(self.check(), (200, {"result": "complete"}))
        meta = json.loads(self.bucket.objects["t1/%s/meta.json" % self.ulid])
        self.assertEqual(meta["thanos"]["source"], "upload")
        self.assertEqual(meta["compaction"]["sources"], [self.ulid])
        names = {n.split("/", 2)[2] for n in self.tenant_objects("t1")}
        self.assertEqual(names, {"meta.json", "index", "chunks/000001"})
        got = read_bucket_block(self, self.bucket, "t1", self.ulid)
        self.assertEqual(got[SERIES_A], [(t, v) for t, v in samples(BASE, BASE + 2 * H)])

    def test_start_stores_uploading_meta_with_sanitized_fields(self):
        """start writes <ULID>/uploading-meta.json with the path's ULID, sources [ULID], no
        parents and thanos.source "upload"; deprecated external labels are dropped."""
        meta = dict(self.meta, ulid="01ARZ3NDEKTSV4RRFFQ69G5FAV")
        meta["compaction"] = {"level": 3, "sources": ["x"], "parents": [{"ulid": "y"}]}
        meta["thanos"] = dict(meta["thanos"], labels={"__org_id__": "t9"})
        self.assertEqual(self.start(meta=meta), (200, b""))
        stored = json.loads(self.bucket.objects["t1/%s/uploading-meta.json" % self.ulid])
        self.assertEqual(stored["ulid"], self.ulid)
        self.assertEqual(stored["compaction"], {"level": 3, "sources": [self.ulid]})
        self.assertEqual(stored["thanos"]["labels"], {})
        self.assertEqual(stored["thanos"]["source"], "upload")

    def test_start_refuses_a_complete_block_with_409(self):
        """A block whose meta.json exists cannot be started, given files or finished again (409)."""
        self.upload_all()
        self.finish()
        self.assertEqual(self.start()[0], 409)
        self.assertEqual(self.put_file("index"), (409, b"block already exists\n"))
        self.assertEqual(self.finish()[0], 409)

    def test_start_refuses_bad_meta_with_400(self):
        """Malformed JSON, a meta without thanos.files, invalid file entries, bad time ranges,
        future blocks, ranges across 24h, a wrong version and unknown external labels are 400."""
        cases = []
        cases.append((b"{not json", "malformed request body"))
        cases.append((b"[]", "malformed request body"))
        m = json.loads(json.dumps(self.meta))
        del m["thanos"]["files"]
        cases.append((m, "missing thanos.files"))
        m = json.loads(json.dumps(self.meta))
        m["thanos"]["files"].append({"rel_path": "../../t2/x", "size_bytes": 3})
        cases.append((m, "file with invalid path: ../../t2/x"))
        m = json.loads(json.dumps(self.meta))
        m["thanos"]["files"][0]["size_bytes"] = 0
        cases.append((m, "file with invalid size"))
        m = dict(self.meta, minTime=BASE + H, maxTime=BASE + H)
        cases.append((m, "invalid minTime/maxTime"))
        m = dict(self.meta, minTime=-5)
        cases.append((m, "invalid minTime/maxTime"))
        future = int(NOW_S * 1000) + 3600 * 1000
        m = dict(self.meta, minTime=future, maxTime=future + 1000)
        cases.append((m, "greater than the present"))
        m = dict(self.meta, minTime=BASE + 23 * H, maxTime=BASE + 25 * H)
        cases.append((m, "largest compaction range"))
        m = dict(self.meta, version=2)
        cases.append((m, "version must be 1"))
        m = json.loads(json.dumps(self.meta))
        m["thanos"]["labels"] = {"cluster": "eu"}
        cases.append((m, "unsupported external label: cluster"))
        m = json.loads(json.dumps(self.meta))
        m["thanos"]["downsample"] = {"resolution": 300000}
        cases.append((m, "downsampled"))
        for meta, text in cases:
            code, body = self.start(meta=meta)
            self.assertEqual(code, 400, (meta, body))
            self.assertIn(text, body.decode())
        self.assertEqual(self.tenant_objects("t1"), [])

    def test_start_refuses_blocks_outside_retention_with_422(self):
        """With compactor_blocks_retention_period 1d, a block that ended 2 days ago is 422."""
        self.overrides.set_overrides({"t1": {"compactor_blocks_retention_period": 24 * H}})
        code, body = self.start()
        self.assertEqual(code, 422)
        self.assertIn("older than retention period", body.decode())

    def test_start_refuses_oversized_meta_with_413(self):
        """A meta.json body over 1 MiB is 413."""
        meta = dict(self.meta, padding="x" * (1 << 20))
        self.assertEqual(self.start(meta=meta)[0], 413)

    def test_block_upload_disabled_for_the_tenant_is_400(self):
        """A tenant without compactor_block_upload_enabled gets 400 "block upload is disabled"
        on every upload endpoint."""
        self.overrides.set_overrides({"t2": {"compactor_block_upload_enabled": False}})
        for code, body in (self.start(tenant="t2"), self.put_file("index", tenant="t2"),
                           self.finish(tenant="t2"), self.check(tenant="t2")):
            self.assertEqual((code, body), (400, b"block upload is disabled\n"))
        self.assertEqual(self.tenant_objects("t2"), [])

    def test_missing_or_bad_tenant(self):
        """No X-Scope-OrgID is 401; a tenant ID with '/' or '..' is 400; nothing is written."""
        self.assertEqual(self.start(tenant=None)[0], 401)
        self.assertEqual(self.start(tenant="..")[0], 400)
        self.assertEqual(self.start(tenant="a/b")[0], 400)
        self.assertEqual(self.bucket.objects, {})

    def test_file_upload_needs_a_started_upload_404(self):
        """Files and finish for a block never started are 404; /check is 404 too."""
        self.assertEqual(self.put_file("index"), (404, b"block upload not started\n"))
        self.assertEqual(self.finish(), (404, b"block upload not started\n"))
        self.assertEqual(self.check(), (404, b"block doesn't exist\n"))

    def test_file_upload_checks_against_meta(self):
        """An empty body, a file not in thanos.files and a size differing from meta are 400."""
        self.start()
        self.assertEqual(self.put_file("index", b""), (400, b"file cannot be empty\n"))
        self.assertEqual(self.put_file("chunks/000002", b"abc"), (400, b"unexpected file\n"))
        self.assertEqual(self.put_file("index", b"abc"), (400, b"file size doesn't match meta.json\n"))
        self.assertNotIn("t1/%s/index" % self.ulid, self.bucket.objects)

    def test_hostile_file_paths_are_400_and_write_nothing(self):
        """Paths other than index or chunks/NNNNNN (traversal, absolute, encoded slashes, meta.json,
        non-ASCII digits, missing) are 400 and no object appears."""
        self.start()
        before = self.tenant_objects("t1")
        for raw in ("", "meta.json", "chunks%2F..%2Fmeta.json", "..%2F..%2Ft2%2Findex",
                    "%2Findex", "%2Fetc%2Fpasswd", "chunks%2F..%2F..%2Fx", "chunks%252F000001",
                    "index%2F..%2Findex", "chunks%2F00001", "chunks%2F0000001",
                    quote("chunks/٠٠٠٠٠١", safe=""), "index%00", "chunks%5C000001", "INDEX"):
            code, body = self.put_file("x", b"abc", raw_path=raw)
            self.assertEqual(code, 400, (raw, body))
        code, _ = self.call("POST", URL + self.ulid + "/files", b"abc")
        self.assertEqual(code, 400)
        self.assertEqual(self.tenant_objects("t1"), before)
        self.assertEqual([n for n in self.bucket.objects if not n.startswith("t1/")], [])

    def test_hostile_block_ids_are_refused(self):
        """Block IDs that are not ULIDs ('..', encoded slashes, another tenant's path, too long)
        never reach the bucket: 400 (404 when the router cannot match them, 308 when it merges an
        encoded slash into '//')."""
        for bad in ("..", "%2E%2E", "..%2F..%2Ft2%2F" + self.ulid, "not-a-ulid",
                    self.ulid + "0", "8" + self.ulid[1:], "%2F" + self.ulid):
            code, _ = self.call("POST", URL + bad + "/start", json.dumps(self.meta).encode())
            self.assertIn(code, (400, 404, 308), bad)
            code, _ = self.call("POST", URL + bad + "/files?path=index", b"abc")
            self.assertIn(code, (400, 404, 308), bad)
        self.assertEqual(self.bucket.objects, {})

    def test_lower_case_block_id_names_the_canonical_block(self):
        """A lower-case ULID addresses the same (upper-case) block directory, as Go's parser."""
        self.assertEqual(self.start(ulid=self.ulid.lower())[0], 200)
        self.assertIn("t1/%s/uploading-meta.json" % self.ulid, self.bucket.objects)

    def test_uploads_are_per_tenant(self):
        """An upload started by t1 does not exist for t2 (404) and t2 cannot add files to it."""
        self.start()
        self.assertEqual(self.put_file("index", tenant="t2")[0], 404)
        self.assertEqual(self.check(tenant="t2")[0], 404)

    def test_failed_validation_is_reported_by_check(self):
        """A block whose chunk file is damaged fails validation; /check answers failed with the
        error, finish again is 400 and no meta.json appears."""
        self.start()
        self.put_file("index")
        data = bytearray(self.file_body("chunks/000001"))
        data[30] ^= 0xFF
        self.put_file("chunks/000001", bytes(data))
        self.assertEqual(self.finish()[0], 200)
        code, state = self.check()
        self.assertEqual((code, state["result"]), (200, "failed"))
        self.assertIn("error validating block", state["error"])
        self.assertEqual(self.finish(), (400, b"block validation failed\n"))
        self.assertNotIn("t1/%s/meta.json" % self.ulid, self.bucket.objects)

    def test_missing_file_fails_validation(self):
        """Finishing without uploading a listed file fails with "missing <file> file"."""
        self.start()
        self.put_file("chunks/000001")
        self.finish()
        self.assertEqual(self.check(), (200, {"result": "failed", "error": "missing index file"}))

    def test_unsorted_series_fail_validation(self):
        """An index whose series are not in label order (symbols swapped, CRC fixed up) fails
        validation with an error naming the series."""
        from urdar.engine.encoding import crc32c
        from urdar.engine.index import IndexReader
        ulid, d, meta = self.make_block(series={(("__name__", "p"),): samples(BASE, BASE + H),
                                                (("__name__", "q"),): samples(BASE, BASE + H)})
        path = os.path.join(d, "index")
        with IndexReader(path) as r:
            sym_off = r.toc[0]
        data = bytearray(open(path, "rb").read())
        n = int.from_bytes(data[sym_off:sym_off + 4], "big")
        body = data[sym_off + 4:sym_off + 4 + n]
        i, j = body.index(b"\x01p"), body.index(b"\x01q")
        body[i + 1], body[j + 1] = body[j + 1], body[i + 1]
        data[sym_off + 4:sym_off + 4 + n] = body
        data[sym_off + 4 + n:sym_off + 8 + n] = crc32c(bytes(body)).to_bytes(4, "big")
        self.assertEqual(self.start(ulid, meta)[0], 200)
        self.assertEqual(self.put_file("index", bytes(data), ulid=ulid)[0], 200)
        self.assertEqual(self.put_file("chunks/000001", self.file_body("chunks/000001", d), ulid=ulid)[0], 200)
        self.finish(ulid)
        code, state = self.check(ulid)
        self.assertEqual(state["result"], "failed", state)
        self.assertIn("out of order", state["error"])

    def test_validation_can_be_switched_off(self):
        """With compactor_block_upload_validation_enabled false, finish completes at once."""
        self.overrides.set_overrides({"t1": {"compactor_block_upload_enabled": True,
                                             "compactor_block_upload_validation_enabled": False}})
        self.upload_all()
        self.finish()
        self.assertEqual(self.check(), (200, {"result": "complete"}))

    def test_max_block_size(self):
        """A block larger than compactor_block_upload_max_block_size_bytes is refused at start."""
        self.overrides.set_overrides({"t1": {"compactor_block_upload_enabled": True,
                                             "compactor_block_upload_max_block_size_bytes": 100}})
        code, body = self.start()
        self.assertEqual(code, 400)
        self.assertIn("maximum block size limit of 100 bytes", body.decode())


class BackgroundValidationTests(UploadTestCase):
    manual = True

    def test_states_uploading_validating_complete_and_429_when_busy(self):
        """While a validation runs /check says validating, more finish calls get 429, and the
        heartbeat keeps validation.json fresh; once done the block is complete."""
        self.upload_all()
        other, other_dir, other_meta = self.make_block(BASE + 2 * H, BASE + 4 * H)
        self.assertEqual(self.start(other, other_meta)[0], 200)
        self.assertEqual(self.finish(), (200, b""))
        self.assertEqual(self.check(), (200, {"result": "validating"}))
        self.assertEqual(self.start()[0], 400)
        code, body = self.finish(other)
        self.assertEqual(code, 429)
        self.assertIn(b"too many block upload validations in progress, limit is 1", body)
        self.clock.advance(4 * 60)
        self.clock.advance(4 * 60)
        self.assertEqual(self.check(), (200, {"result": "validating"}))
        while self.pool.pending:
            self.pool.run_all()
        self.assertEqual(self.check(), (200, {"result": "complete"}))
        self.assertNotIn("t1/%s/validation.json" % self.ulid, self.bucket.objects)
        self.assertNotIn("t1/%s/uploading-meta.json" % self.ulid, self.bucket.objects)

    def test_stale_validation_counts_as_uploading(self):
        """A validation.json without heartbeat for 5 minutes (a compactor died) reads as
        uploading, so the client may finish again."""
        self.upload_all()
        self.bucket.put("t1/%s/validation.json" % self.ulid,
                        json.dumps({"LastUpdate": int(NOW_S * 1000) - 6 * 60000, "Error": ""}).encode())
        self.assertEqual(self.check(), (200, {"result": "uploading"}))


class StoreFaultTests(UploadTestCase):
    def setUp(self):
        super().setUp()
        self.faulty = FaultyBucket(self.bucket)
        self.compactor.bucket = self.faulty

    def test_store_error_on_a_file_is_500_and_the_client_can_retry(self):
        """An object store failing a file put answers 500 "internal server error (id ...)"; the
        same request succeeds once the store is back and the upload completes."""
        self.assertEqual(self.start()[0], 200)
        self.faulty.fail_matching(r"/index$")
        code, body = self.put_file("index")
        self.assertEqual(code, 500)
        self.assertTrue(body.startswith(b"internal server error (id "), body)
        self.faulty.clear()
        for f in self.meta["thanos"]["files"]:
            if f["rel_path"] != "meta.json":
                self.assertEqual(self.put_file(f["rel_path"])[0], 200)
        self.finish()
        self.assertEqual(self.check(), (200, {"result": "complete"}))

    def test_store_error_while_completing_marks_the_upload_failed(self):
        """When meta.json cannot be written after a successful validation, /check says failed
        (with the reason) and no meta.json is visible."""
        self.upload_all()
        self.faulty.fail_matching(r"/meta\.json$")
        self.assertEqual(self.finish()[0], 200)
        code, state = self.check()
        self.assertEqual(state["result"], "failed")
        self.assertIn("completing the upload failed", state["error"])
        self.assertNotIn("t1/%s/meta.json" % self.ulid, self.bucket.objects)


class TenantDeletionHandlerTests(UploadTestCase):
    def test_delete_tenant_then_status(self):
        """POST /compactor/delete_tenant writes the mark (200); the status says blocks_deleted
        false until a compactor cycle has removed the blocks, then true."""
        self.upload_all()
        self.finish()
        code, body = self.call("POST", "http://urdar/compactor/delete_tenant")
        self.assertEqual(code, 200)
        self.assertIn("t1/markers/tenant-deletion-mark.json", self.bucket.objects)
        code, body = self.call("GET", "http://urdar/compactor/delete_tenant_status")
        self.assertEqual((code, json.loads(body)), (200, {"tenant_id": "t1", "blocks_deleted": False}))
        self.successResultOf(self.compactor.compact_all())
        code, body = self.call("GET", "http://urdar/compactor/delete_tenant_status")
        self.assertEqual(json.loads(body), {"tenant_id": "t1", "blocks_deleted": True})

    def test_delete_tenant_needs_a_tenant(self):
        """Without X-Scope-OrgID delete_tenant is 401 and writes nothing."""
        self.assertEqual(self.call("POST", "http://urdar/compactor/delete_tenant", tenant=None)[0], 401)
        self.assertEqual(self.bucket.objects, {})
