"""The alertmanager's receivers: the seam between the notification pipeline (components/amnotify.py)
and the integrations that deliver a notification (this file: webhook; amintegrations.py: email,
Slack, PagerDuty).

An integration is built once per (receiver, config key, index) when a tenant's configuration is
loaded, by a factory from INTEGRATIONS keyed by the receiver's config key (`webhook_configs`,
`email_configs`, ...):

    integration = INTEGRATIONS["webhook_configs"](cfg, global_cfg, index, http_client, clock)
    rendered = integration.render(data, template)   # the message; may raise NotifyError
    d = integration.send(rendered)                  # Deferred[None]; fails with NotifyError
    d = integration.notify(data, template)          # both at once, for callers on no pool

render() runs the tenant's templates and encodes the message: CPU work a tenant controls, so the
pipeline runs it in an offload pool; it touches no reactor state. send() does the network part.

`cfg` is that one config mapping as the tenant wrote it (YAML-decoded), `global_cfg` the
configuration's `global:` mapping (possibly empty), `http_client` a treq HTTPClient, `clock` an
IReactorTime. `template` is the tenant's parsed urdar.gotemplate.Template (Alertmanager's
default templates plus the tenant's). The pipeline retries a NotifyError with retry=True, with
back-off, until the aggregation group's next flush; retry=False gives up at once. The pipeline
also cancels the Deferred when it runs out of time.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, cast

from twisted.internet import defer, protocol

if TYPE_CHECKING:
    from urdar.gotemplate import Template

# A notification's error bodies are read up to this size for the log and the error text.
MAX_ERROR_BODY_BYTES = 1024
# An answer's body is read to its end (for connection reuse) only up to this size.
MAX_DRAIN_BODY_BYTES = 64 * 1024
# How long one delivery may take end to end (connect, TLS, every SMTP exchange or the HTTP
# answer); the pipeline may cancel sooner.
SEND_TIMEOUT_S = 30.0
USER_AGENT = b"Alertmanager/0.25.0"
WEBHOOK_VERSION = "4"


class NotifyError(Exception):
    """A failed delivery: `retry` says whether sending the same notification again may succeed."""

    def __init__(self, retry: bool, reason: str) -> None:
        super().__init__(reason)
        self.retry = retry
        self.reason = reason


class ConfigError(ValueError):
    """A receiver configuration an integration cannot be built from."""


@dataclass
class NotificationData:
    """One notification of one aggregation group to one receiver: the fields of Alertmanager's
    webhook payload (version 4). Alerts are dicts {status, labels, annotations, startsAt, endsAt,
    generatorURL, fingerprint}; times are RFC 3339 strings as Go marshals time.Time."""
    receiver: str
    status: str                                   # "firing" or "resolved"
    alerts: list[dict[str, Any]]
    groupLabels: dict[str, str] = field(default_factory=dict)
    commonLabels: dict[str, str] = field(default_factory=dict)
    commonAnnotations: dict[str, str] = field(default_factory=dict)
    externalURL: str = ""
    groupKey: str = ""
    truncatedAlerts: int = 0


class Integration(Protocol):
    name: str                  # the config key without "_configs": "webhook", "email", ...
    index: int                 # position among the receiver's configs of that key
    send_resolved: bool

    def render(self, data: NotificationData, template: "Template | None") -> Any:
        ...

    def send(self, rendered: Any) -> "defer.Deferred[None]":
        ...

    def notify(self, data: NotificationData, template: "Template | None") -> "defer.Deferred[None]":
        ...


def render_and_send(integration: Any, data: NotificationData,
                    template: "Template | None" = None) -> "defer.Deferred[None]":
    """An integration's notify(): render on the calling thread, then send."""
    return defer.maybeDeferred(integration.render, data, template).addCallback(integration.send)


Factory = Callable[[dict, dict, int, Any, Any], Integration]


def retry_for_status(code: int) -> bool:
    """Alertmanager's default retrier: 5xx may succeed later, anything else will not."""
    return 500 <= code <= 599


def http_auth_headers(http_config: Any) -> dict[bytes, bytes]:
    """Authorization from an http_config: basic_auth, authorization or bearer_token."""
    if not http_config:
        return {}
    if not isinstance(http_config, dict):
        raise ConfigError("http_config must be a mapping")
    basic = http_config.get("basic_auth")
    if basic:
        user = str(basic.get("username") or "")
        pw = str(basic.get("password") or "")
        token = base64.b64encode(("%s:%s" % (user, pw)).encode("utf-8"))
        return {b"Authorization": b"Basic " + token}
    auth = http_config.get("authorization")
    if auth:
        kind = str(auth.get("type") or "Bearer")
        return {b"Authorization": ("%s %s" % (kind, auth.get("credentials") or "")).encode("utf-8")}
    bearer = http_config.get("bearer_token")
    if bearer:
        return {b"Authorization": ("Bearer %s" % bearer).encode("utf-8")}
    return {}


class BodyHead(protocol.Protocol):
    """Keeps the first `limit` bytes of an answer's body. Up to `drain` bytes are read to the end
    so the connection can be reused; a longer body closes the connection instead of being read
    (the receiver controls its size). Cancelling `done` closes the connection too."""

    def __init__(self, limit: int = MAX_ERROR_BODY_BYTES, drain: int = MAX_DRAIN_BODY_BYTES) -> None:
        self.limit = limit
        self.drain = drain
        self.kept: list[bytes] = []
        self.size = 0
        self.done: defer.Deferred[bytes] = defer.Deferred(canceller=self._abort)

    def _abort(self, _: Any) -> None:
        if self.transport is not None:
            cast(Any, self.transport).stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        if self.size < self.limit:
            self.kept.append(data[:self.limit - self.size])
        self.size += len(data)
        if self.size > self.drain:
            self._abort(None)
            self.done.callback(b"".join(self.kept))

    def connectionLost(self, reason: Any = None) -> None:
        # The status is what counts; a body cut short still explains it as far as it got.
        if not self.done.called:
            self.done.callback(b"".join(self.kept))


def post_json(http: Any, clock: Any, url: str, body: bytes, headers: dict[bytes, bytes],
              what: str, timeout: float = SEND_TIMEOUT_S) -> "defer.Deferred[tuple[int, bytes]]":
    """POST `body`; (status, the first MAX_ERROR_BODY_BYTES of the answer). One deadline,
    `timeout` seconds on `clock`, covers the request and reading the answer; when it passes the
    transfer is cancelled (the connection closed) and the result is a retryable NotifyError, as is
    a transport failure (Alertmanager retries when the request itself failed). Cancelling the
    returned Deferred closes the connection as well."""
    h = {b"Content-Type": b"application/json", b"User-Agent": USER_AGENT}
    h.update(headers)
    d = http.post(url, data=body, headers=h)
    timed_out = [False]

    def expire() -> None:
        timed_out[0] = True
        d.cancel()          # the request, or the body being read (cancelling reaches both)
    timer = clock.callLater(timeout, expire)

    def done(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        return result

    def failed(f: Any) -> Any:
        if f.check(NotifyError) or (f.check(defer.CancelledError) and not timed_out[0]):
            return f
        reason = "timeout after %gs" % timeout if timed_out[0] else f.getErrorMessage()
        raise NotifyError(True, "%s: %s" % (what, reason))

    def answered(resp: Any) -> Any:
        head = BodyHead()
        resp.deliverBody(head)
        return head.done.addCallback(lambda text: (resp.code, text))
    return d.addCallback(answered).addBoth(done).addErrback(failed)


def webhook_payload(data: NotificationData, max_alerts: int = 0) -> dict[str, Any]:
    """Alertmanager's webhook message (version 4), with its field order."""
    alerts = data.alerts
    truncated = data.truncatedAlerts
    if max_alerts > 0 and len(alerts) > max_alerts:
        truncated += len(alerts) - max_alerts
        alerts = alerts[:max_alerts]
    return {
        "receiver": data.receiver, "status": data.status, "alerts": alerts,
        "groupLabels": data.groupLabels, "commonLabels": data.commonLabels,
        "commonAnnotations": data.commonAnnotations, "externalURL": data.externalURL,
        "version": WEBHOOK_VERSION, "groupKey": data.groupKey, "truncatedAlerts": truncated,
    }


class Webhook:
    """webhook_configs: the JSON payload POSTed to `url`."""

    name = "webhook"

    def __init__(self, cfg: dict, global_cfg: dict, index: int, http_client: Any, clock: Any) -> None:
        url = cfg.get("url")
        if not url or not isinstance(url, str):
            raise ConfigError("one of url or url_file must be configured")
        if not url.startswith(("http://", "https://")):
            raise ConfigError("unsupported scheme %r for URL" % url.split(":", 1)[0])
        self.url = url
        self.index = index
        self.send_resolved = bool(cfg.get("send_resolved", True))
        self.max_alerts = int(cfg.get("max_alerts") or 0)
        if self.max_alerts < 0:
            raise ConfigError("max_alerts must not be negative")
        self.headers = http_auth_headers(cfg.get("http_config"))
        self.http = http_client
        self.clock = clock

    def render(self, data: NotificationData, template: "Template | None" = None) -> bytes:
        return json.dumps(webhook_payload(data, self.max_alerts), separators=(",", ":")).encode()

    def send(self, body: bytes) -> "defer.Deferred[None]":
        def check(answer: tuple[int, bytes]) -> None:
            code, text = answer
            if 200 <= code <= 299:
                return
            raise NotifyError(retry_for_status(code), "unexpected status code %d: %s: %s"
                              % (code, self.url, text.decode("utf-8", "replace")))
        return post_json(self.http, self.clock, self.url, body, self.headers, "webhook",
                         SEND_TIMEOUT_S).addCallback(check)

    notify = render_and_send


# Template texts parsed into every tenant's template set before the tenant's own files
# (Alertmanager's default.tmpl; amintegrations.py adds it).
DEFAULT_TEMPLATES: list[str] = []

INTEGRATIONS: dict[str, Factory] = {
    "webhook_configs": Webhook,
}
