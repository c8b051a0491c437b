"""Query API bodies judged from their headers (handlers/querier.py ADMIT checks via net/server.Admission)."""
import json

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from urdar.handlers.querier import MAX_FORM_BODY_BYTES, MAX_READ_BODY_BYTES, QuerierHandlers
from urdar.handlers.routes import RouteTable
from urdar.net.server import Refusal, Ticket
from urdar.net.tenant import Tenancy

TENANT = Headers({b"X-Scope-OrgID": [b"t1"]})


class QueryAdmissionTests(SynchronousTestCase):
    def setUp(self):
        self.admission = RouteTable(Tenancy()).mount(QuerierHandlers(None, offload=object())).app.admission

    def admit(self, path, length, headers=TENANT):
        return self.admission.admit(b"POST", path, headers, length)

    def test_query_without_tenant_is_401(self):
        """A query POST without X-Scope-OrgID is refused 401 before its body is read."""
        verdict = self.admit(b"/prometheus/api/v1/query", 10 ** 9, Headers())
        self.assertEqual((verdict.status, verdict.body), (401, b"no org id\n"))

    def test_form_body_over_go_limit(self):
        """A form body over 10 MiB is 400 bad_data with Prometheus' form-parsing error."""
        self.assertIsInstance(self.admit(b"/prometheus/api/v1/query_range", MAX_FORM_BODY_BYTES), Ticket)
        verdict = self.admit(b"/prometheus/api/v1/query_range", MAX_FORM_BODY_BYTES + 1)
        self.assertIsInstance(verdict, Refusal)
        self.assertEqual(verdict.status, 400)
        self.assertEqual(json.loads(verdict.body), {"status": "error", "errorType": "bad_data",
                                                    "error": "error parsing form values: http: POST too large"})
        # Chunked form bodies are cut at the same size as they arrive.
        self.assertEqual(self.admit(b"/prometheus/api/v1/series", None).max_body_bytes, MAX_FORM_BODY_BYTES)

    def test_remote_read_limit(self):
        """Remote read bodies may be up to 32 MiB (Prometheus' decode limit) and no more."""
        self.assertIsInstance(self.admit(b"/prometheus/api/v1/read", MAX_READ_BODY_BYTES), Ticket)
        self.assertEqual(self.admit(b"/prometheus/api/v1/read", MAX_READ_BODY_BYTES + 1).status, 413)
