"""HTTP endpoints of the compactor: Mimir's block upload API and tenant deletion (the compactor
ring's page is handlers/ring.py).

`CompactorHandlers(compactor)` parses, calls components/compactor.py, renders. Upload
errors are plain text with Mimir's wording and status (400 bad block ID, path, meta or disabled
upload; 404 upload not started; 409 block exists; 413 meta too large; 422 outside retention; 429
validations busy); object store failures are 500 with a request id, as Mimir's handler does.
The block ID must be a ULID and the file path `index` or `chunks/NNNNNN`, and both are joined
under the tenant's bucket view, so no request can name an object outside its tenant."""
from typing import TYPE_CHECKING

from twisted.internet import defer

from urdar.components import errors as E
from urdar.components.blockupload import MAX_META_BYTES, UploadError
from urdar.handlers.errors import json_response
from urdar.handlers.routes import require_tenant, route
from urdar.net.server import Refusal

if TYPE_CHECKING:
    from urdar.components.compactor import Compactor


class CompactorHandlers:
    ROUTES = (
        route("/api/v1/upload/block/<block>/start", ("POST",), "start_block_upload", tenant=True),
        route("/api/v1/upload/block/<block>/files", ("POST",), "upload_block_file", tenant=True),
        route("/api/v1/upload/block/<block>/finish", ("POST",), "finish_block_upload", tenant=True),
        route("/api/v1/upload/block/<block>/check", ("GET",), "check_block_upload", tenant=True),
        route("/compactor/delete_tenant", ("POST",), "delete_tenant", tenant=True),
        route("/compactor/delete_tenant_status", ("GET",), "delete_tenant_status", tenant=True),
    )

    # Tenant-scoped routes with bodies: a missing tenant is refused before the body is read.
    ADMIT = dict(dict.fromkeys(("upload_block_file", "finish_block_upload", "delete_tenant"),
                               "admit_tenant"), start_block_upload="admit_block_meta")

    tenancy = None      # set by the route table when it mounts this handler

    def __init__(self, compactor: "Compactor") -> None:
        self.compactor = compactor
        self.uploads = compactor.uploads

    # ---- helpers ---------------------------------------------------------------------------

    def admit_tenant(self, headers, length):
        return require_tenant(self.tenancy, headers)

    def admit_block_meta(self, headers, length):
        """start's body is meta.json: over MAX_META_BYTES is 413 before it is read."""
        return require_tenant(self.tenancy, headers, MAX_META_BYTES, lambda size: Refusal(
            413, "The block metadata was too large (maximum size allowed is %d bytes)" % MAX_META_BYTES))

    @staticmethod
    def _run(request, fn, tenant, *args, render=None):
        """Call a compactor method that returns a Deferred (or raises) and render 200; the route
        table renders failures (an object store failure is a 500 with a request id)."""
        d = defer.maybeDeferred(fn, tenant, *args)

        def ok(result):
            if render is not None:
                return render(tenant, result)
            request.setResponseCode(200)
            request.setHeader(b"Content-Length", b"0")
            return b""
        return d.addCallback(ok)

    @staticmethod
    def _body(request):
        request.content.seek(0)
        return request.content.read()

    # ---- block upload ----------------------------------------------------------------------

    def start_block_upload(self, request, tenant, block):
        if getattr(request, "body_too_large", False):
            raise UploadError(E.TOO_LARGE, "The block metadata was too large")
        return self._run(request, self.uploads.start, tenant, block, self._body(request))

    def upload_block_file(self, request, tenant, block):
        if getattr(request, "body_too_large", False):
            raise UploadError(E.TOO_LARGE, "request body too large")
        raw = request.args.get(b"path", [b""])
        try:
            path = raw[0].decode("utf-8")
        except UnicodeDecodeError:
            path = "\ufffd"
        return self._run(request, self.uploads.upload_file, tenant, block, path, self._body(request))

    def finish_block_upload(self, request, tenant, block):
        return self._run(request, self.uploads.finish, tenant, block)

    def check_block_upload(self, request, tenant, block):
        return self._run(request, self.uploads.check, tenant, block,
                         render=lambda tenant, result: json_response(request, 200, result))

    # ---- tenant deletion -------------------------------------------------------------------

    def delete_tenant(self, request, tenant):
        return self._run(request, self.compactor.request_tenant_deletion, tenant)

    def delete_tenant_status(self, request, tenant):
        def render(tenant, deleted):
            return json_response(request, 200, {"tenant_id": tenant, "blocks_deleted": bool(deleted)})
        return self._run(request, self.compactor.tenant_blocks_deleted, tenant, render=render)

