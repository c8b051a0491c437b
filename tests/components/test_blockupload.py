"""Block upload (components/blockupload.py) against hostile input: paths, tenants and what error
texts reveal. Requests go through the compactor handlers (StubTreq) as clients send them."""
import json
from urllib.parse import quote

from tests.handlers.test_compactor import UploadTestCase


class HostileUploadTests(UploadTestCase):
    def test_paths_with_a_trailing_newline_are_refused(self):
        """A file path or thanos.files entry ending in a newline is 400 and writes nothing (no 'index\\n' object)."""
        self.assertEqual(self.start()[0], 200)
        before = self.tenant_objects("t1")
        code, _ = self.put_file("x", self.file_body("index"), raw_path=quote("index\n", safe=""))
        self.assertEqual(code, 400)
        code, _ = self.put_file("x", b"abc", raw_path=quote("chunks/000001\n", safe=""))
        self.assertEqual(code, 400)
        self.assertEqual(self.tenant_objects("t1"), before)
        meta = json.loads(json.dumps(self.meta))
        meta["thanos"]["files"] = [dict(f, rel_path=f["rel_path"] + "\n") if f["rel_path"] == "index" else f
                                   for f in meta["thanos"]["files"]]
        ulid2 = self.make_block()[0]
        code, body = self.start(ulid=ulid2, meta=meta)
        self.assertEqual(code, 400)
        self.assertTrue(body.startswith(b"file with invalid path: index"), body)
        self.assertNotIn("t1/%s/uploading-meta.json" % ulid2, self.bucket.objects)

    def test_reserved_tenant_is_refused(self):
        """The bucket's staging directory name is not a tenant: upload and deletion with it are 400, not 500."""
        code, body = self.start(tenant=".urdar-tmp")
        self.assertEqual(code, 400, body)
        code, _ = self.call("POST", "http://urdar/compactor/delete_tenant", b"", tenant=".urdar-tmp")
        self.assertEqual(code, 400)
        self.assertEqual(self.bucket.objects, {})

    def test_validation_errors_name_no_server_path(self):
        """A block failing validation is reported by /check without the compactor's local paths."""
        self.start()
        self.put_file("index")
        data = bytearray(self.file_body("chunks/000001"))
        data[30] ^= 0xFF
        self.put_file("chunks/000001", bytes(data))
        self.finish()
        code, state = self.check()
        self.assertEqual((code, state["result"]), (200, "failed"))
        self.assertIn("error validating block", state["error"])
        self.assertNotIn(self.compactor.data_dir, state["error"])
        self.assertNotIn("/upload/", state["error"])


class UploadAdmissionTests(UploadTestCase):
    def test_oversized_meta_refused_from_headers(self):
        """A start whose Content-Length exceeds the meta.json limit is 413 before the body is read; files take more."""
        from twisted.web.http_headers import Headers
        from urdar.components.blockupload import MAX_META_BYTES
        from urdar.handlers.compactor import CompactorHandlers
        from urdar.handlers.routes import RouteTable
        from urdar.net.server import Refusal, Ticket
        from urdar.net.tenant import Tenancy
        admission = RouteTable(Tenancy()).mount(CompactorHandlers(self.compactor)).app.admission
        headers = Headers({b"X-Scope-OrgID": [b"t1"]})
        base = b"/api/v1/upload/block/" + self.ulid.encode()
        refused = admission.admit(b"POST", base + b"/start", headers, MAX_META_BYTES + 1)
        self.assertIsInstance(refused, Refusal)
        self.assertEqual((refused.status, refused.body), (413, (
            "The block metadata was too large (maximum size allowed is %d bytes)\n" % MAX_META_BYTES).encode()))
        self.assertIsInstance(admission.admit(b"POST", base + b"/start", headers, MAX_META_BYTES), Ticket)
        self.assertIsInstance(admission.admit(b"POST", base + b"/files?path=index", headers,
                                              MAX_META_BYTES + 1), Ticket)
        self.assertEqual(admission.admit(b"POST", base + b"/files?path=index", Headers(), 10).status, 401)
