"""Tenancy: who a request is for, taken from the X-Scope-OrgID header as Mimir does.

With multitenancy on (the default) every tenant-scoped request must carry X-Scope-OrgID; a
missing header is 401 "no org id", a malformed ID 400 with Mimir's (dskit's) wording. With it
off, every request belongs to -auth.no-auth-tenant ("anonymous"). The tenant ID also names a
directory under -blocks-storage.tsdb.dir, which is why the path-safety rules matter."""
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import SupportsGetItem

ORG_ID_HEADER = b"X-Scope-OrgID"
MAX_TENANT_ID_LENGTH = 150
# dskit's allowed characters: alphanumerics and ! - _ . * ' ( )
_ALLOWED = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!-_.*'()")


# Causes, spelled as components/errors.py spells them (handlers/errors.py maps them to statuses).
MISSING = "unauthorized"
INVALID = "bad_data"

# IDs that name something else where tenants are directories or bucket prefixes: Mimir's cluster
# validation object, and the filesystem bucket's staging directory (storage/filesystem.py
# STAGING_DIR) at the bucket root, which a tenant of that name would share (500 on upload/delete).
RESERVED_TENANT_IDS = ("__mimir_cluster", ".urdar-tmp")


class TenantError(Exception):
    """A request without a usable tenant: `cause` is MISSING (no tenant at all) or INVALID,
    `message` the text the client sees."""

    def __init__(self, cause, message):
        super().__init__(message)
        self.cause = cause
        self.message = message


# Tenant IDs found valid, so a push does not re-check its ID character by character twice
# (at admission and in the route); bounded, emptied when full.
_VALID: dict[str, None] = {}
_VALID_MAX = 4096


def validate_tenant(tenant: str) -> None:
    """Raise TenantError unless `tenant` (str) is a valid Mimir tenant ID."""
    if tenant in _VALID:
        return
    _check_tenant(tenant)
    if len(_VALID) >= _VALID_MAX:
        _VALID.clear()
    _VALID[tenant] = None


def _check_tenant(tenant: str) -> None:
    if not tenant:
        raise TenantError(MISSING, "no org id")
    raw = tenant.encode("utf-8", "surrogateescape")
    if len(raw) > MAX_TENANT_ID_LENGTH:
        raise TenantError(INVALID, "tenant ID is too long: max %d characters" % MAX_TENANT_ID_LENGTH)
    if tenant in (".", ".."):
        raise TenantError(INVALID, "tenant ID is '.' or '..'")
    if tenant in RESERVED_TENANT_IDS:
        raise TenantError(INVALID, "tenant ID '%s' is not allowed" % tenant)
    for ch in tenant:
        if len(ch.encode("utf-8", "surrogateescape")) != 1 or ord(ch) not in _ALLOWED:
            raise TenantError(INVALID, "tenant ID '%s' contains unsupported character '%s'" % (tenant, ch))


class Tenancy:
    """Resolves the tenant of a Twisted request according to the multitenancy settings."""

    def __init__(self, multitenancy_enabled=True, no_auth_tenant="anonymous"):
        self.multitenancy_enabled = multitenancy_enabled
        self.no_auth_tenant = no_auth_tenant

    @classmethod
    def from_config(cls, cfg: "SupportsGetItem[str, Any]") -> "Tenancy":
        return cls(cfg["multitenancy_enabled"], cfg["no_auth_tenant"])

    def tenant_of(self, request):
        """The request's tenant ID (str); raises TenantError (MISSING or INVALID).

        Federated IDs (a|b) are refused for now: urdar has no tenant federation yet."""
        return self.tenant_of_headers(request.requestHeaders)

    def tenant_of_headers(self, headers):
        """tenant_of() from the request headers alone (a twisted Headers), before any body."""
        if not self.multitenancy_enabled:
            return self.no_auth_tenant
        values = headers.getRawHeaders(ORG_ID_HEADER)
        if not values or not values[0]:
            raise TenantError(MISSING, "no org id")
        if len(values) > 1:
            raise TenantError(INVALID, "multiple org IDs present")
        tenant = values[0]
        if isinstance(tenant, bytes):
            tenant = tenant.decode("utf-8", "surrogateescape")
        validate_tenant(tenant)
        return tenant
