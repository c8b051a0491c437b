"""Errors components raise: a cause (what kind of failure) and a Mimir-style message, no HTTP.

handlers/errors.py maps each cause to a status code and a Prometheus errorType in one table.
`soft` marks partial failures: some data was refused but the rest was stored (Mimir answers those
with 400 too, and Prometheus does not retry them). Messages follow Mimir's `<text> (err-mimir-<id>)`
pattern, built by `mimir_message`, with the flag to change when a limit is involved."""

BAD_DATA = "bad_data"                # malformed or invalid input, PromQL parse errors -> 400
UNAUTHORIZED = "unauthorized"        # no tenant (net/tenant.py uses the same string) -> 401
TENANT_LIMIT = "tenant_limit"        # a per-tenant limit (series) -> 400
RATE_LIMITED = "rate_limited"        # ingestion rate, too many concurrent validations -> 429
TOO_LARGE = "too_large"              # body over -distributor.max-recv-msg-size -> 413
UNSUPPORTED = "unsupported"          # content type / protocol we do not speak -> 415
CONFLICT = "conflict"                # the thing to create exists already -> 409
UNPROCESSABLE = "unprocessable"      # well-formed but refused (block outside retention) -> 422
EXECUTION = "execution"              # a query failed while evaluating -> 422
TIMEOUT = "timeout"                  # a query ran past its deadline -> 503
CANCELED = "canceled"                # the client went away -> 499
UNAVAILABLE = "unavailable"          # starting, stopping, pools full -> 503
NOT_FOUND = "not_found"              # -> 404
INTERNAL = "internal"                # anything unexpected -> 500
DEDUPED = "replicas_did_not_match"   # HA tracker: a non-elected replica's push, dropped -> 202

CAUSES = (BAD_DATA, UNAUTHORIZED, TENANT_LIMIT, RATE_LIMITED, TOO_LARGE, UNSUPPORTED, CONFLICT,
          UNPROCESSABLE, EXECUTION, TIMEOUT, CANCELED, UNAVAILABLE, NOT_FOUND, INTERNAL, DEDUPED)


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


def go_duration(ms):
    """Go's time.Duration.String() of whole milliseconds ("1h0m0s", "1m30.5s", "250ms"), the way
    Mimir's limit messages print durations."""
    if ms == 0:
        return "0s"
    sign = "-" if ms < 0 else ""
    ms = abs(ms)
    if ms < 1000:
        return "%s%dms" % (sign, ms)
    h, rest = divmod(ms, 3600_000)
    m, rest = divmod(rest, 60_000)
    sec, frac = divmod(rest, 1000)
    out = sign + ("%dh" % h if h else "") + ("%dm" % m if h or m else "")
    return out + ("%d.%s" % (sec, ("%03d" % frac).rstrip("0")) if frac else "%d" % sec) + "s"
