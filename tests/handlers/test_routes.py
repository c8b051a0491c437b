"""The route table (handlers/routes.py) and the error table (handlers/errors.py), over StubTreq."""
import json

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from urdar.components import errors as E
from urdar.components.blockupload import UploadError
from urdar.components.querier import QueryCanceled, QueryTimeout
from urdar.handlers.errors import TABLE, as_component_error
from urdar.handlers.routes import RouteTable, route
from urdar.net.offload import PoolFull
from urdar.net.tenant import Tenancy, TenantError
from urdar.promql.engine import QueryError as EvaluationError
from urdar.promql.parser import ParseError, parse_expr


class Toy:
    """A handler whose methods do what the test's `behaviour` says."""
    ROUTES = (
        route("/text/<thing>", ("GET",), "text", tenant=True),
        route("/json", ("GET",), "json", tenant=True, errors="json"),
        route("/custom", ("GET",), "custom", tenant=True, errors="custom_error"),
        route("/open", ("GET",), "open"),
    )

    def __init__(self):
        self.behaviour = None
        self.calls = []

    def _answer(self, request, *args):
        self.calls.append(args)
        if isinstance(self.behaviour, BaseException):
            raise self.behaviour
        return self.behaviour

    def text(self, request, tenant, thing):
        return self._answer(request, tenant, thing)

    def json(self, request, tenant):
        return self._answer(request, tenant)

    def custom(self, request, tenant):
        return self._answer(request, tenant)

    def open(self, request):
        return self._answer(request)

    def custom_error(self, request, status, err):
        request.setResponseCode(status)
        return ("custom %s %s" % (err.cause, err.message)).encode()


class RouteTableTests(SynchronousTestCase):
    def setUp(self):
        self.toy = Toy()
        self.treq = StubTreq(RouteTable(Tenancy()).mount(self.toy).resource())

    def get(self, path, tenant="team-a"):
        headers = {"X-Scope-OrgID": tenant} if tenant is not None else {}
        resp = self.successResultOf(self.treq.get("http://urdar" + path, headers=headers))
        return resp.code, self.successResultOf(resp.content()), resp.headers

    def test_tenant_and_path_arguments_reach_the_handler(self):
        """A tenant route's handler gets the X-Scope-OrgID tenant and the path arguments."""
        self.toy.behaviour = b"ok"
        self.assertEqual(self.get("/text/x1")[:2], (200, b"ok"))
        self.assertEqual(self.toy.calls, [("team-a", "x1")])

    def test_missing_tenant_is_401_text_on_every_tenant_route(self):
        """Without X-Scope-OrgID a tenant route answers 401 "no org id" in plain text (JSON routes
        too, as Mimir's auth middleware does) and the handler never runs."""
        for path in ("/text/x", "/json"):
            code, body, headers = self.get(path, tenant=None)
            self.assertEqual((code, body), (401, b"no org id\n"))
            self.assertTrue(headers.getRawHeaders("Content-Type")[0].startswith("text/plain"))
        self.assertEqual(self.toy.calls, [])

    def test_invalid_tenant_is_400(self):
        """A malformed tenant ID is 400 with dskit's wording."""
        code, body, _ = self.get("/json", tenant="a/b")
        self.assertEqual((code, body), (400, b"tenant ID 'a/b' contains unsupported character '/'\n"))

    def test_open_routes_need_no_tenant(self):
        """A route registered without tenant=True answers without X-Scope-OrgID."""
        self.toy.behaviour = b"hello"
        self.assertEqual(self.get("/open", tenant=None)[:2], (200, b"hello"))

    def test_json_route_renders_the_prometheus_envelope(self):
        """A failure on a JSON route is the Prometheus error envelope with the table's status."""
        self.toy.behaviour = E.ComponentError(E.EXECUTION, "boom")
        code, body, _ = self.get("/json")
        self.assertEqual((code, json.loads(body)),
                         (422, {"status": "error", "errorType": "execution", "error": "boom"}))

    def test_deferred_failures_are_rendered(self):
        """A handler's Deferred failing (a full pool) is rendered like a raised error: 503 text."""
        self.toy.behaviour = defer.fail(PoolFull("query", 20))
        code, body, _ = self.get("/text/x")
        self.assertEqual(code, 503)
        self.assertIn(b"query", body)

    def test_custom_style_renders_tenant_errors_and_failures(self):
        """A route with its own error style uses it for tenant errors and for failures."""
        self.assertEqual(self.get("/custom", tenant=None)[:2], (401, b"custom unauthorized no org id"))
        self.toy.behaviour = E.ComponentError(E.RATE_LIMITED, "slow down")
        self.assertEqual(self.get("/custom")[:2], (429, b"custom rate_limited slow down"))

    def test_unexpected_errors_are_500_without_details(self):
        """An unexpected exception is a 500 naming a request id, not the exception's text."""
        self.toy.behaviour = RuntimeError("/secret/path exploded")
        code, body, _ = self.get("/open")
        self.assertEqual(code, 500)
        self.assertTrue(body.startswith(b"internal server error (id "), body)
        self.assertNotIn(b"secret", body)
        self.flushLoggedErrors(RuntimeError)

    def test_duplicate_routes_refused(self):
        """Registering the same path and methods twice is an error at start-up."""
        table = RouteTable(Tenancy()).mount(Toy())
        self.assertRaises(ValueError, table.mount, Toy())

    def test_routes_are_listed(self):
        """The table lists every route with its methods and whether it needs a tenant."""
        table = RouteTable(Tenancy()).mount(Toy())
        self.assertEqual([(r.path, r.tenant) for r in table.routes],
                         [("/text/<thing>", True), ("/json", True), ("/custom", True), ("/open", False)])


class ErrorTableTests(SynchronousTestCase):
    def status_type(self, exc):
        status, err = as_component_error(exc)
        return status, TABLE[err.cause][1]

    def test_every_cause_has_a_row(self):
        """Each cause a component can raise has a status and an errorType."""
        self.assertEqual(sorted(TABLE), sorted(E.CAUSES))

    def test_statuses(self):
        """Parse 400 bad_data, execution 422, timeout 503, canceled 499, too large 413, pools 503,
        missing tenant 401, malformed tenant 400."""
        try:
            parse_expr("sum(")
        except ParseError as exc:
            parse_error = exc
        cases = [
            (parse_error, (400, "bad_data")),
            (EvaluationError("vector cannot contain metrics with the same labelset"), (422, "execution")),
            (QueryTimeout(), (503, "timeout")),
            (QueryCanceled(), (499, "canceled")),
            (defer.CancelledError(), (499, "canceled")),
            (E.ComponentError(E.TOO_LARGE, "big"), (413, "too_large_entry")),
            (PoolFull("decode", 10), (503, "unavailable")),
            (TenantError("unauthorized", "no org id"), (401, "bad_data")),
            (TenantError("bad_data", "bad"), (400, "bad_data")),
            (UploadError(E.CONFLICT, "block already exists"), (409, "bad_data")),
        ]
        for exc, want in cases:
            self.assertEqual(self.status_type(exc), want, repr(exc))

    def test_errors_carry_no_http_status(self):
        """Error classes carry a cause, never an HTTP status."""
        for exc in (TenantError("unauthorized", "no org id"), UploadError(E.NOT_FOUND, "x"), QueryTimeout()):
            self.assertFalse(hasattr(exc, "status"), exc)
            self.assertIn(exc.cause, E.CAUSES)
