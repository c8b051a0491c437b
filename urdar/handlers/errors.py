"""The error table: every failure a handler sees becomes (HTTP status, Prometheus errorType,
message) here, by its cause, and is rendered in one of two body styles.

Components raise ComponentError with a cause (components/errors.py); tenant errors
(net/tenant.py), full offload pools, cancelled requests and PromQL parse/evaluation errors are
classified here too, so no handler or error class knows an HTTP status. Write and Mimir endpoints
answer with plain text (what Prometheus logs); Prometheus-API endpoints with the JSON envelope
{"status": "error", "errorType": ..., "error": ...}. Anything unclassified is a 500 whose body
carries only a request id; the log line has the traceback."""
import json
import logging
import uuid

from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure

from urdar.components import errors as E
from urdar.engine.errors import CorruptionError, public_message
from urdar.handlers.render import error_body
from urdar.net.offload import PoolFull
from urdar.net.tenant import TenantError
from urdar.promql.engine import QueryError as EvaluationError
from urdar.promql.parser import ParseError

log = logging.getLogger("urdar.handlers")

# cause -> (HTTP status, Prometheus API errorType)
TABLE = {
    E.BAD_DATA: (400, "bad_data"),
    E.UNAUTHORIZED: (401, "bad_data"),
    E.TENANT_LIMIT: (400, "bad_data"),
    E.RATE_LIMITED: (429, "too_many_requests"),
    E.TOO_LARGE: (413, "too_large_entry"),
    E.UNSUPPORTED: (415, "bad_data"),
    E.CONFLICT: (409, "bad_data"),
    E.UNPROCESSABLE: (422, "execution"),
    E.EXECUTION: (422, "execution"),
    E.TIMEOUT: (503, "timeout"),
    E.CANCELED: (499, "canceled"),
    E.UNAVAILABLE: (503, "unavailable"),
    E.NOT_FOUND: (404, "not_found"),
    E.INTERNAL: (500, "internal"),
    E.DEDUPED: (202, "bad_data"),       # Mimir: accepted (so Prometheus does not retry), dropped
}
STATUS = {cause: status for cause, (status, _type) in TABLE.items()}
ERROR_TYPE = {cause: etype for cause, (_status, etype) in TABLE.items()}


def classify(exc):
    """Any exception (or Failure) -> a ComponentError with a cause from TABLE; unexpected ones
    become INTERNAL with a request id, and are logged with their traceback under that id."""
    failure = None
    if isinstance(exc, Failure):
        failure, exc = exc, exc.value
    if isinstance(exc, E.ComponentError):
        return exc
    if isinstance(exc, TenantError):
        return E.ComponentError(exc.cause, exc.message)
    if isinstance(exc, PoolFull):
        return E.ComponentError(E.UNAVAILABLE, str(exc))
    if isinstance(exc, CancelledError):
        return E.ComponentError(E.CANCELED, "the request has been canceled")
    if isinstance(exc, ParseError):
        return E.ComponentError(E.BAD_DATA, 'invalid parameter "query": %s' % (exc,))
    if isinstance(exc, EvaluationError):
        return E.ComponentError(E.EXECUTION, str(exc))
    request_id = uuid.uuid4().hex[:16]
    log.error("internal error (id %s): %s", request_id,
              failure.getTraceback() if failure is not None else repr(exc),
              exc_info=exc if failure is None else None)
    message = "internal server error (id %s)" % (request_id,)
    if isinstance(exc, (CorruptionError, OSError)):
        # Storage failures say what broke (which block file, which errno) with server paths cut
        # to their last two parts; anything else stays opaque beyond its id.
        message += ": " + public_message(exc)
    return E.ComponentError(E.INTERNAL, message)


def as_component_error(exc):
    """(status, ComponentError) for any exception, by the table."""
    err = classify(exc)
    return STATUS[err.cause], err


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


# ---- body styles: style(request, status, ComponentError) -> body bytes --------------------------

def text_style(request, status, err):
    return text_response(request, status, err.message)


def json_style(request, status, err):
    body = error_body(ERROR_TYPE[err.cause], err.message)
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def fail(request, exc, style=text_style):
    """Render any exception (or Failure) with its status from the table, in `style`."""
    status, err = as_component_error(exc)
    return style(request, status, err)


def fail_text(request, exc):
    """Render any exception as a plain-text error response."""
    return fail(request, exc, text_style)


def fail_json(request, exc):
    """Render any exception as a Prometheus-API JSON error response."""
    return fail(request, exc, json_style)
