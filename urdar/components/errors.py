"""Errors components raise: a cause (what kind of failure) and a Mimir-style message, no HTTP.

handlers/errors.py maps each cause to a status code in one table. `soft` marks partial failures:
some data was refused but the rest was stored (Mimir answers those with 400 too, and Prometheus
does not retry them). Messages follow Mimir's `<text> (err-mimir-<id>)` pattern, built by
`mimir_message`, with the flag to change when a limit is involved."""

BAD_DATA = "bad_data"                # malformed or invalid input -> 400
TENANT_LIMIT = "tenant_limit"        # a per-tenant limit (series) -> 400
RATE_LIMITED = "rate_limited"        # ingestion rate -> 429
TOO_LARGE = "too_large"              # body over -distributor.max-recv-msg-size -> 413
UNSUPPORTED = "unsupported"          # content type / protocol we do not speak -> 415
UNAVAILABLE = "unavailable"          # starting, stopping, pools full -> 503
NOT_FOUND = "not_found"              # -> 404
INTERNAL = "internal"                # anything unexpected -> 500


class ComponentError(Exception):
    """A failure with a cause (one of the constants above) and the message the client sees."""

    def __init__(self, cause, message, soft=False):
        super().__init__(message)
        self.cause = cause
        self.message = message
        self.soft = soft


def mimir_message(text, err_id, flags=(), instance=False):
    """`text (err-mimir-<id>)`, plus Mimir's hint naming the flag(s) that change the limit."""
    msg = "%s (err-mimir-%s)" % (text, err_id)
    if flags:
        names = ["-" + f for f in flags]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        msg += ". To adjust the related %slimit%s, configure %s, or contact your service administrator." % (
            "" if instance else "per-tenant ", "s" if len(names) > 1 else "", listed)
    return msg
