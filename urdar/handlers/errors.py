"""Error rendering for every handler: one table from cause to HTTP status, two body styles.

Write endpoints answer with Mimir's plain-text message (what Prometheus logs); query-style endpoints
with the Prometheus JSON envelope {"status": "error", "errorType": ..., "error": ...}. Tenant
errors (net/tenant.py) and full offload pools map here too, so handlers only call `fail_*`."""
import json
import logging

from twisted.internet.defer import CancelledError

from urdar.components import errors as E
from urdar.engine.errors import public_message
from urdar.net.offload import PoolFull
from urdar.net.tenant import TenantError

log = logging.getLogger("urdar.handlers")

STATUS = {
    E.BAD_DATA: 400,
    E.TENANT_LIMIT: 400,
    E.RATE_LIMITED: 429,
    E.TOO_LARGE: 413,
    E.UNSUPPORTED: 415,
    E.UNAVAILABLE: 503,
    E.NOT_FOUND: 404,
    E.INTERNAL: 500,
}
# Prometheus API errorType per cause.
ERROR_TYPE = {
    E.BAD_DATA: "bad_data", E.TENANT_LIMIT: "bad_data", E.RATE_LIMITED: "too_many_requests",
    E.TOO_LARGE: "too_large_entry", E.UNSUPPORTED: "bad_data", E.UNAVAILABLE: "unavailable",
    E.NOT_FOUND: "not_found", E.INTERNAL: "internal",
}


def as_component_error(exc):
    """Map any exception to (status, ComponentError); unexpected ones become 500 and are logged."""
    if isinstance(exc, E.ComponentError):
        return STATUS[exc.cause], exc
    if isinstance(exc, TenantError):
        return exc.status, E.ComponentError(E.BAD_DATA, exc.message)
    if isinstance(exc, PoolFull):
        return 503, E.ComponentError(E.UNAVAILABLE, str(exc))
    if isinstance(exc, CancelledError):
        return 499, E.ComponentError(E.UNAVAILABLE, "the request has been canceled")
    log.error("internal error: %r", exc, exc_info=exc)
    return 500, E.ComponentError(E.INTERNAL, "internal error: %s" % (public_message(exc),))


def text_response(request, status, message):
    """Plain-text body, as Mimir's push handler writes errors."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    body = (message.rstrip("\n") + "\n").encode("utf-8", "replace")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def json_response(request, status, obj):
    body = json.dumps(obj, separators=(",", ":")).encode()
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def fail_text(request, exc):
    """Render any exception as a plain-text error response."""
    if hasattr(exc, "value"):   # a Failure
        exc = exc.value
    status, err = as_component_error(exc)
    return text_response(request, status, err.message)


def fail_json(request, exc):
    """Render any exception as a Prometheus-API JSON error response."""
    if hasattr(exc, "value"):
        exc = exc.value
    status, err = as_component_error(exc)
    return json_response(request, status, {
        "status": "error", "errorType": ERROR_TYPE.get(err.cause, "internal"), "error": err.message})
