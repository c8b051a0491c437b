"""X-Scope-OrgID handling of urdar.net.tenant."""
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from urdar.net.tenant import INVALID, MISSING, Tenancy, TenantError, validate_tenant


def request(org=None):
    r = DummyRequest([b""])
    if org is not None:
        r.requestHeaders.setRawHeaders(b"X-Scope-OrgID", [org])
    return r


class TenancyTests(SynchronousTestCase):
    def test_header_names_tenant(self):
        """With multitenancy on, the header is the tenant."""
        self.assertEqual(Tenancy().tenant_of(request(b"team-a")), "team-a")

    def test_missing_header_is_401(self):
        """A missing or empty header is a missing tenant, 'no org id' (401 over HTTP)."""
        for r in (request(), request(b"")):
            with self.assertRaises(TenantError) as e:
                Tenancy().tenant_of(r)
            self.assertEqual((e.exception.cause, e.exception.message), (MISSING, "no org id"))

    def test_multitenancy_off_uses_no_auth_tenant(self):
        """With multitenancy off every request is the no-auth tenant, header or not."""
        t = Tenancy(False, "anonymous")
        self.assertEqual(t.tenant_of(request()), "anonymous")
        self.assertEqual(t.tenant_of(request(b"other")), "anonymous")

    def test_hostile_ids(self):
        """Path-like, dot, reserved and over-long IDs are invalid (400 over HTTP) with dskit's wording."""
        cases = {
            b"../x": "tenant ID '../x' contains unsupported character '/'",
            b"a/b": "tenant ID 'a/b' contains unsupported character '/'",
            b".": "tenant ID is '.' or '..'",
            b"..": "tenant ID is '.' or '..'",
            b"x" * 151: "tenant ID is too long: max 150 characters",
            b"__mimir_cluster": "tenant ID '__mimir_cluster' is not allowed",
            b"a b": "tenant ID 'a b' contains unsupported character ' '",
            "é".encode(): "contains unsupported character",
        }
        for org, msg in cases.items():
            with self.assertRaises(TenantError) as e:
                Tenancy().tenant_of(request(org))
            self.assertEqual(e.exception.cause, INVALID)
            self.assertIn(msg, e.exception.message)

    def test_allowed_charset(self):
        """Every character of Mimir's charset is accepted, up to 150 bytes."""
        validate_tenant("azAZ09!-_.*'()")
        validate_tenant("x" * 150)


class ReservedTenantTests(SynchronousTestCase):
    def test_staging_dir_is_not_a_tenant(self):
        """The filesystem bucket's staging directory name is refused as a tenant ID (400), so no tenant shares it."""
        from urdar.storage.filesystem import STAGING_DIR
        with self.assertRaises(TenantError) as e:
            Tenancy().tenant_of(request(STAGING_DIR.encode()))
        self.assertEqual((e.exception.cause, e.exception.message),
                         (INVALID, "tenant ID '%s' is not allowed" % STAGING_DIR))
