"""The alertmanager's receivers: the seam between the notification pipeline (components/amnotify.py)
and the integrations that deliver a notification (this file: webhook; amintegrations.py: email,
Slack, PagerDuty).

An integration is built once per (receiver, config key, index) when a tenant's configuration is
loaded, by a factory from INTEGRATIONS keyed by the receiver's config key (`webhook_configs`,
`email_configs`, ...):

    integration = INTEGRATIONS["webhook_configs"](cfg, global_cfg, index, http_client, clock)
    d = integration.notify(data, template)      # Deferred[None]; fails with NotifyError

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
from typing import TYPE_CHECKING, Any, Callable, Protocol

from twisted.internet import defer

if TYPE_CHECKING:
    from urdar.gotemplate import Template

# A notification's error bodies are read up to this size for the log and the error text.
MAX_ERROR_BODY_BYTES = 1024
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

    def notify(self, data: NotificationData, template: "Template") -> "defer.Deferred[None]":
        ...


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


def read_body(resp: Any, limit: int = MAX_ERROR_BODY_BYTES) -> "defer.Deferred[bytes]":
    """The first `limit` bytes of a treq response; the rest is read and dropped so the
    connection can be reused."""
    import treq
    kept: list[bytes] = []
    size = [0]

    def keep(data: bytes) -> None:
        if size[0] < limit:
            kept.append(data[:limit - size[0]])
        size[0] += len(data)
    d: defer.Deferred[Any] = treq.collect(resp, keep)
    return d.addCallback(lambda _: b"".join(kept))


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
        self.headers = {b"Content-Type": b"application/json", b"User-Agent": b"Alertmanager/0.25.0"}
        self.headers.update(http_auth_headers(cfg.get("http_config")))
        self.http = http_client
        self.clock = clock

    def notify(self, data: NotificationData, template: "Template") -> "defer.Deferred[None]":
        body = json.dumps(webhook_payload(data, self.max_alerts), separators=(",", ":")).encode()
        d = self.http.post(self.url, data=body, headers=self.headers)

        def failed(f: Any) -> Any:
            if f.check(defer.CancelledError):
                return f
            raise NotifyError(True, "webhook: %s" % (f.getErrorMessage(),))

        def answered(resp: Any) -> Any:
            def check(text: bytes) -> None:
                if 200 <= resp.code <= 299:
                    return
                raise NotifyError(retry_for_status(resp.code),
                                  "unexpected status code %d: %s: %s"
                                  % (resp.code, self.url, text.decode("utf-8", "replace")))
            return read_body(resp).addCallback(check)
        return d.addCallbacks(answered, failed)


INTEGRATIONS: dict[str, Factory] = {
    "webhook_configs": Webhook,
}
