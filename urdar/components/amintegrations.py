"""The alertmanager's email, Slack and PagerDuty integrations (Alertmanager 0.25's notify/email,
notify/slack and notify/pagerduty), behind the receiver seam of components/amreceivers.py:

    integration = FACTORIES["slack_configs"](cfg, global_cfg, index, http_client, clock)
    d = integration.notify(data, template)       # Deferred[None]; fails with NotifyError

`cfg` is one config mapping as the tenant wrote it; defaults (Alertmanager's DefaultSlackConfig,
...) and the `global:` settings (smtp_*, slack_api_url, pagerduty_url) are applied here. Every
text field is a Go template run against the notification (urdar.gotemplate.amdefault), as
Alertmanager's ExecuteTextString. validate_receivers() holds the load-time checks `amtool
check-config` makes for these three kinds, plus Mimir's refusal of file-reading fields.

Differences from Alertmanager, on purpose: a PagerDuty v1 (service_key) event goes to `url` when
the config or `global.pagerduty_url` sets one (Alertmanager always uses PagerDuty's v1 address;
urdar's tests need a local one); the email's html part is a text template over data whose
strings are HTML-escaped (Go's html/template escapes each value by its context); on port 465
(TLS from the start) require_tls does not also ask for STARTTLS (0.25 does, and so fails).

Templates run on the calling thread (the reactor), bounded by the Template's step and output
limits; every delivery has a deadline (SEND_TIMEOUT_S) and can be cancelled.
"""
from __future__ import annotations

import base64
import binascii
import datetime
import email.utils
import hashlib
import hmac
import json
import os
import random
import socket
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from twisted.internet import defer
from twisted.protocols.basic import LineReceiver

from urdar.components import amreceivers
from urdar.components.amreceivers import (SEND_TIMEOUT_S, ConfigError,
                                          NotificationData, NotifyError, http_auth_headers,
                                          post_json)
from urdar.gotemplate import TemplateError
from urdar.gotemplate.alertmanager import Alert, Data
from urdar.gotemplate.amdefault import (DEFAULT_TEMPLATES, escape_html, execute_text,
                                       notification_template)
from urdar.gotemplate.gotime import GoTime

if TYPE_CHECKING:
    from urdar.gotemplate import Template

PAGERDUTY_V1_URL = "https://events.pagerduty.com/generic/2010-04-15/create_event.json"
PAGERDUTY_MAX_EVENT_BYTES = 512000
MAX_TITLE_RUNES = 1024          # Slack title, PagerDuty summary / v1 description
TRUNCATION_MARKER = "…"

_default_template: Optional["Template"] = None


def _template(t: Optional["Template"]) -> "Template":
    global _default_template
    if t is not None:
        return t
    if _default_template is None:
        _default_template = notification_template()
    return _default_template


# ---- the notification as template data ---------------------------------------------------------

def _time(v: Any) -> GoTime:
    if isinstance(v, GoTime):
        return v
    if isinstance(v, datetime.datetime):
        return GoTime(v)
    if isinstance(v, (int, float)):
        return GoTime.from_unix(float(v))
    if not v:
        return GoTime.zero()
    try:
        return GoTime(datetime.datetime.fromisoformat(str(v)))
    except ValueError:          # the pipeline's times are RFC 3339; anything else is unset
        return GoTime.zero()


def template_data(data: NotificationData, html: bool = False) -> Data:
    """Alertmanager's template.Data for a notification; with `html`, every string in it
    HTML-escaped (EscapedString) for the email's html part."""
    e: Callable[[Any], str] = (lambda v: escape_html(str(v))) if html else str

    def kv(m: Any) -> dict[str, str]:
        return {str(k): e(v) for k, v in (m or {}).items()}
    alerts = [Alert(e(a.get("status", "")), kv(a.get("labels")), kv(a.get("annotations")),
                    _time(a.get("startsAt")), _time(a.get("endsAt")),
                    e(a.get("generatorURL") or ""), e(a.get("fingerprint") or ""))
              for a in data.alerts]
    return Data(e(data.receiver), e(data.status), alerts, kv(data.groupLabels),
                kv(data.commonLabels), kv(data.commonAnnotations), e(data.externalURL))


class _Texts:
    """notify.TmplText: runs text templates, keeping the first error (later ones give "")."""

    def __init__(self, template: Optional["Template"], data: NotificationData) -> None:
        self.template = _template(template)
        self.notification = data
        self.data = template_data(data)
        self._html_data: Optional[Data] = None
        self.error: Optional[str] = None

    def __call__(self, text: Any, html: bool = False) -> str:
        if self.error is not None or not text:
            return ""
        data = self.data
        if html:
            if self._html_data is None:
                self._html_data = template_data(self.notification, html=True)
            data = self._html_data
        try:
            return execute_text(self.template, str(text), data, html=html)
        except TemplateError as exc:
            self.error = str(exc)
            return ""


def truncate_runes(s: str, n: int) -> str:
    return s if len(s) <= n else (s[:n] if n <= 3 else s[:n - 1] + TRUNCATION_MARKER)


def group_key_hash(group_key: str) -> str:
    """notify.Key.Hash: PagerDuty's dedup/incident key."""
    return hashlib.sha256(group_key.encode("utf-8")).hexdigest()


def go_json(obj: Any) -> bytes:
    """json.NewEncoder(w).Encode(obj): compact, <>& and U+2028/9 escaped, a trailing newline.
    Map-valued fields must already be in sorted key order (Go sorts map keys)."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    for c, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                   ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(c, esc)
    return (text + "\n").encode("utf-8")


def _sorted_map(m: dict) -> dict:
    return {k: m[k] for k in sorted(m)}


def _read_secret_file(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise NotifyError(False, "failed to read %s from file: %s" % (what, exc)) from None


# ---- HTTP ---------------------------------------------------------------------------------------

def check_status(code: int, body: bytes, retry_codes: Iterable[int] = (),
                 details: Optional[Callable[[int, bytes], str]] = None) -> None:
    """notify.Retrier.Check: 2xx passes; 5xx (and `retry_codes`) retry; the rest do not."""
    if code // 100 == 2:
        return
    retry = code // 100 == 5 or code in retry_codes
    text = details(code, body) if details else body.decode("utf-8", "replace")
    msg = "unexpected status code %d" % code
    raise NotifyError(retry, "%s: %s" % (msg, text) if text else msg)


def _send_resolved(cfg: dict, default: bool) -> bool:
    v = cfg.get("send_resolved")
    return default if v is None else bool(v)


# ---- Slack --------------------------------------------------------------------------------------

SLACK_DEFAULTS = {
    "color": '{{ if eq .Status "firing" }}danger{{ else }}good{{ end }}',
    "username": '{{ template "slack.default.username" . }}',
    "title": '{{ template "slack.default.title" . }}',
    "title_link": '{{ template "slack.default.titlelink" . }}',
    "icon_emoji": '{{ template "slack.default.iconemoji" . }}',
    "icon_url": '{{ template "slack.default.iconurl" . }}',
    "pretext": '{{ template "slack.default.pretext" . }}',
    "text": '{{ template "slack.default.text" . }}',
    "fallback": '{{ template "slack.default.fallback" . }}',
    "callback_id": '{{ template "slack.default.callbackid" . }}',
    "footer": '{{ template "slack.default.footer" . }}',
}


class Slack:
    """slack_configs: one attachment POSTed to an incoming webhook (`api_url` or `api_url_file`,
    else the global slack_api_url(_file)). Only 5xx answers are retried, as Alertmanager 0.25."""

    name = "slack"

    def __init__(self, cfg: dict, global_cfg: dict, index: int, http_client: Any, clock: Any) -> None:
        self.cfg = {**SLACK_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
        self.index = index
        self.send_resolved = _send_resolved(cfg, False)
        self.api_url = str(cfg.get("api_url") or "")
        self.api_url_file = str(cfg.get("api_url_file") or "")
        if not self.api_url and not self.api_url_file:
            self.api_url = str(global_cfg.get("slack_api_url") or "")
            self.api_url_file = str(global_cfg.get("slack_api_url_file") or "")
        if not self.api_url and not self.api_url_file:
            raise ConfigError("no global Slack API URL set either inline or in a file")
        self.headers = http_auth_headers(cfg.get("http_config") or global_cfg.get("http_config"))
        self.http = http_client
        self.clock = clock

    def payload(self, data: NotificationData, template: Optional["Template"]) -> dict:
        """Alertmanager's request body (field order and omitempty as its JSON tags)."""
        c = self.cfg
        t = _Texts(template, data)
        att: dict[str, Any] = {}

        def opt(obj: dict, key: str, value: Any) -> None:
            if value:
                obj[key] = value
        opt(att, "title", truncate_runes(t(c.get("title")), MAX_TITLE_RUNES))
        opt(att, "title_link", t(c.get("title_link")))
        opt(att, "pretext", t(c.get("pretext")))
        att["text"] = t(c.get("text"))
        att["fallback"] = t(c.get("fallback"))
        att["callback_id"] = t(c.get("callback_id"))
        fields = []
        for f in c.get("fields") or []:
            short = f.get("short")
            field: dict[str, Any] = {}
            opt(field, "title", t(f.get("title")))
            opt(field, "value", t(f.get("value")))
            field["short"] = bool(c.get("short_fields")) if short is None else bool(short)
            fields.append(field)
        opt(att, "fields", fields)
        actions = []
        for a in c.get("actions") or []:
            act: dict[str, Any] = {}
            for key in ("type", "text", "url", "style", "name", "value"):
                # A URL button carries no message-action fields (SlackAction.UnmarshalYAML).
                if a.get("url") and key in ("name", "value"):
                    continue
                opt(act, key, t(a.get(key)))
            confirm = a.get("confirm")
            if confirm and not a.get("url"):
                conf: dict[str, Any] = {}
                for key in ("text", "title", "ok_text", "dismiss_text"):
                    opt(conf, key, t(confirm.get(key)))
                act["confirm"] = conf
            actions.append(act)
        opt(att, "actions", actions)
        opt(att, "image_url", t(c.get("image_url")))
        opt(att, "thumb_url", t(c.get("thumb_url")))
        att["footer"] = t(c.get("footer"))
        opt(att, "color", t(c.get("color")))
        att["mrkdwn_in"] = list(c.get("mrkdwn_in") or ["fallback", "pretext", "text"])
        req: dict[str, Any] = {}
        opt(req, "channel", t(c.get("channel")))
        opt(req, "username", t(c.get("username")))
        opt(req, "icon_emoji", t(c.get("icon_emoji")))
        opt(req, "icon_url", t(c.get("icon_url")))
        opt(req, "link_names", bool(c.get("link_names")))
        req["attachments"] = [att]
        if t.error is not None:
            raise NotifyError(False, t.error)
        return req

    def render(self, data: NotificationData, template: Optional["Template"] = None) -> tuple[str, str, bytes]:
        """(URL, channel, body): the templates run here, off the reactor in the pipeline."""
        req = self.payload(data, template)
        url = self.api_url or _read_secret_file(self.api_url_file, "Slack API URL").strip()
        return url, req.get("channel", ""), go_json(req)

    def send(self, rendered: tuple[str, str, bytes]) -> "defer.Deferred[None]":
        url, channel, body = rendered

        def check(answer: tuple[int, bytes]) -> None:
            try:
                check_status(*answer)
            except NotifyError as exc:
                raise NotifyError(exc.retry, 'channel "%s": %s' % (channel, exc.reason)) from None
        # The URL carries the webhook's secret: errors name the channel, never the URL.
        return post_json(self.http, self.clock, url, body, self.headers,
                         "slack", SEND_TIMEOUT_S).addCallback(check)

    notify = amreceivers.render_and_send


# ---- PagerDuty ----------------------------------------------------------------------------------

PAGERDUTY_DEFAULT_DETAILS = {
    "firing": '{{ template "pagerduty.default.instances" .Alerts.Firing }}',
    "resolved": '{{ template "pagerduty.default.instances" .Alerts.Resolved }}',
    "num_firing": "{{ .Alerts.Firing | len }}",
    "num_resolved": "{{ .Alerts.Resolved | len }}",
}
PAGERDUTY_DEFAULTS = {
    "description": '{{ template "pagerduty.default.description" .}}',
    "client": '{{ template "pagerduty.default.client" . }}',
    "client_url": '{{ template "pagerduty.default.clientURL" . }}',
}
DEFAULT_PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"


def _pagerduty_error_details(code: int, body: bytes) -> str:
    # PagerDuty explains a 400 as {"status", "message", "errors": [...]}; nothing else is shown.
    if code != 400:
        return ""
    try:
        doc = json.loads(body)
        return "%s: %s" % (doc.get("message", ""), ",".join(str(e) for e in doc.get("errors") or []))
    except (ValueError, AttributeError):
        return ""


class PagerDuty:
    """pagerduty_configs: Events API v2 with `routing_key`, v1 with `service_key`. The dedup
    (incident) key is the SHA-256 of the group key; all-resolved groups send a resolve."""

    name = "pagerduty"

    def __init__(self, cfg: dict, global_cfg: dict, index: int, http_client: Any, clock: Any) -> None:
        c = {**PAGERDUTY_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
        if not c.get("source"):
            c["source"] = c["client"]
        details = dict(c.get("details") or {})
        for k, v in PAGERDUTY_DEFAULT_DETAILS.items():
            details.setdefault(k, v)
        c["details"] = details
        self.cfg = c
        self.index = index
        self.send_resolved = _send_resolved(cfg, True)
        self.v1 = bool(c.get("service_key") or c.get("service_key_file"))
        if not self.v1 and not (c.get("routing_key") or c.get("routing_key_file")):
            raise ConfigError("missing service or routing key in PagerDuty config")
        url = str(cfg.get("url") or global_cfg.get("pagerduty_url") or "")
        if self.v1:
            self.url = url or PAGERDUTY_V1_URL
            self.retry_codes: tuple[int, ...] = (403,)
        else:
            self.url = url or DEFAULT_PAGERDUTY_URL
            self.retry_codes = (429,)
        self.headers = http_auth_headers(cfg.get("http_config") or global_cfg.get("http_config"))
        self.http = http_client
        self.clock = clock

    def _key(self, t: _Texts, name: str, what: str) -> str:
        key = self.cfg.get(name) or ""
        if not key and self.cfg.get(name + "_file"):
            key = _read_secret_file(self.cfg[name + "_file"], what).strip()
        return t(key)

    def payload(self, data: NotificationData, template: Optional["Template"]) -> dict:
        c = self.cfg
        t = _Texts(template, data)
        event = "resolve" if data.alerts and all(
            a.get("status") == "resolved" for a in data.alerts) else "trigger"
        details = {}
        for k in sorted(c["details"]):
            details[k] = t(c["details"][k])
            if t.error is not None:
                raise NotifyError(False, '"%s": failed to template "%s": %s'
                                  % (k, c["details"][k], t.error))
        key = group_key_hash(data.groupKey)
        msg: dict[str, Any] = {}
        if self.v1:
            msg["service_key"] = self._key(t, "service_key", "service key")
            msg["incident_key"] = key
            msg["event_type"] = event
            desc = truncate_runes(t(c.get("description")), MAX_TITLE_RUNES)
            if desc:
                msg["description"] = desc
            msg["event_action"] = ""
            msg["payload"] = None
            if event == "trigger":
                for name, field in (("client", "client"), ("client_url", "client_url")):
                    v = t(c.get(field))
                    if v:
                        msg[name] = v
            if details:
                msg["details"] = details
            if t.error is not None:
                raise NotifyError(False, "failed to template PagerDuty v1 message: %s" % t.error)
            if not msg["service_key"]:
                raise NotifyError(False, "service key cannot be empty")
            return msg
        routing = self._key(t, "routing_key", "routing key")
        if routing:
            msg["routing_key"] = routing
        msg["dedup_key"] = key
        msg["event_action"] = event
        payload: dict[str, Any] = {
            "summary": truncate_runes(t(c.get("description")), MAX_TITLE_RUNES),
            "source": t(c.get("source")),
            "severity": t(c.get("severity") or "error"),
        }
        for name in ("class", "component", "group"):
            v = t(c.get(name))
            if v:
                payload[name] = v
        if details:
            payload["custom_details"] = details
        msg["payload"] = payload
        for name in ("client", "client_url"):
            v = t(c.get(name))
            if v:
                msg[name] = v
        images = []
        for im in c.get("images") or []:
            image = {"src": t(im.get("src")), "alt": t(im.get("alt")), "href": t(im.get("href"))}
            if image["src"]:
                images.append(image)
        if images:
            msg["images"] = images
        links = []
        for ln in c.get("links") or []:
            link = {"href": t(ln.get("href")), "text": t(ln.get("text"))}
            if link["href"]:
                links.append(link)
        if links:
            msg["links"] = links
        if t.error is not None:
            raise NotifyError(False, "failed to template PagerDuty v2 message: %s" % t.error)
        if not routing:
            raise NotifyError(False, "routing key cannot be empty")
        return msg

    def encode(self, msg: dict) -> bytes:
        body = go_json(msg)
        if len(body) > PAGERDUTY_MAX_EVENT_BYTES:
            # Too big for PagerDuty: the details go, the event stays.
            note = {"error": "Custom details have been removed because the original event "
                             "exceeds the maximum size of 512KB"}
            if self.v1:
                msg["details"] = note
            else:
                msg["payload"]["custom_details"] = note
            body = go_json(msg)
        return body

    def render(self, data: NotificationData, template: Optional["Template"] = None) -> bytes:
        return self.encode(self.payload(data, template))

    def send(self, body: bytes) -> "defer.Deferred[None]":
        return post_json(self.http, self.clock, self.url, body, self.headers,
                         "failed to post message to PagerDuty", SEND_TIMEOUT_S).addCallback(
            lambda answer: check_status(answer[0], answer[1], retry_codes=self.retry_codes,
                                        details=_pagerduty_error_details))

    notify = amreceivers.render_and_send


# ---- Email --------------------------------------------------------------------------------------

def canonical_header(name: str) -> str:
    """textproto.CanonicalMIMEHeaderKey: each dash-separated word capitalised."""
    if not name or any(c == " " or ord(c) > 127 for c in name):
        return name
    return "-".join(w[:1].upper() + w[1:].lower() for w in name.split("-"))


_Q_MAX = 75 - len("=?utf-8?q?") - len("?=")


def q_encode(value: str) -> str:
    """mime.QEncoding.Encode("utf-8", value): unchanged when printable ASCII, else encoded words
    of at most 75 characters, split between characters."""
    if all(" " <= c <= "~" or c == "\t" for c in value):
        return value
    words: list[str] = []
    cur = ""
    for ch in value:
        enc = ""
        for b in ch.encode("utf-8"):
            if b == 0x20:
                enc += "_"
            elif 0x21 <= b <= 0x7e and chr(b) not in "=?_":
                enc += chr(b)
            else:
                enc += "=%02X" % b
        if len(cur) + len(enc) > _Q_MAX:
            words.append(cur)
            cur = ""
        cur += enc
    words.append(cur)
    return " ".join("=?utf-8?q?%s?=" % w for w in words)


def quoted_printable(text: str) -> bytes:
    body = text.replace("\r\n", "\n").encode("utf-8")
    qp = binascii.b2a_qp(body, quotetabs=False, istext=True, header=False)
    return qp.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def multipart(parts: list[tuple[str, bytes]], boundary: str) -> bytes:
    """mime/multipart.Writer output: each part with its sorted headers, then the closing line."""
    out = b""
    for i, (ctype, body) in enumerate(parts):
        out += (b"\r\n" if i else b"") + b"--" + boundary.encode() + b"\r\n"
        out += b"Content-Transfer-Encoding: quoted-printable\r\n"
        out += b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body
    out += b"\r\n--" + boundary.encode() + b"--\r\n"
    return out


def parse_addresses(text: str, what: str) -> list[str]:
    addrs = [a for _, a in email.utils.getaddresses([text])]
    if not addrs or any("@" not in a or any(c.isspace() for c in a) for a in addrs):
        raise NotifyError(False, "parse '%s' addresses: mail: invalid address list %r" % (what, text))
    return addrs


def split_hostport(s: str) -> tuple[str, int]:
    """net.SplitHostPort for a smarthost; ValueError with Go's texts."""
    s = str(s)
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise ValueError("address %s: missing ']' in address" % s)
        host, rest = s[1:end], s[end + 1:]
        if not rest.startswith(":"):
            raise ValueError("address %s: missing port in address" % s)
        port = rest[1:]
    else:
        if ":" not in s:
            raise ValueError("address %s: missing port in address" % s)
        host, port = s.rsplit(":", 1)
        if ":" in host:
            raise ValueError("address %s: too many colons in address" % s)
    if port == "":
        raise ValueError('address "%s": port cannot be empty' % s)
    if not port.isdigit() or int(port) > 65535:
        raise ValueError("address %s: invalid port" % s)
    return host, int(port)


class SMTPFailure(Exception):
    def __init__(self, code: int, lines: list[bytes]) -> None:
        text = b" ".join(lines).decode("utf-8", "replace")
        super().__init__("%d %s" % (code, text))
        self.code = code


class _SMTPClient(LineReceiver):
    """Reads SMTP replies (multi-line ones joined) for a driver that sends commands in turn."""

    delimiter = b"\n"
    MAX_LENGTH = 4096
    MAX_REPLY_LINES = 100

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.replies: list[tuple[int, list[bytes]]] = []
        self.waiting: Optional[defer.Deferred[tuple[int, list[bytes]]]] = None
        self.lost: Optional[Exception] = None
        self.connected_d: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.connected_d.callback(None)

    def lineReceived(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
            self._fail(ValueError("malformed SMTP reply %r" % line[:100]))
            return
        self.lines.append(line[4:])
        if len(self.lines) > self.MAX_REPLY_LINES:
            self._fail(ValueError("SMTP reply of more than %d lines" % self.MAX_REPLY_LINES))
            return
        if line[3:4] == b"-":
            return
        reply = (int(line[:3]), self.lines)
        self.lines = []
        if self.waiting is not None:
            d, self.waiting = self.waiting, None
            d.callback(reply)
        else:
            self.replies.append(reply)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._fail(ValueError("SMTP reply line longer than %d bytes" % self.MAX_LENGTH))

    def _fail(self, exc: Exception) -> None:
        self.lost = exc
        if self.waiting is not None:
            d, self.waiting = self.waiting, None
            d.errback(exc)
        self.tr.abortConnection()

    @property
    def tr(self) -> Any:
        return self.transport

    def connectionLost(self, reason: Any = None) -> None:
        if self.lost is None:
            self.lost = ConnectionError("connection closed: %s" % (
                reason.getErrorMessage() if reason is not None else "done"))
        if self.waiting is not None:
            d, self.waiting = self.waiting, None
            d.errback(self.lost)

    def reply(self) -> "defer.Deferred[tuple[int, list[bytes]]]":
        if self.replies:
            return defer.succeed(self.replies.pop(0))
        if self.lost is not None:
            return defer.fail(self.lost)
        self.waiting = defer.Deferred()
        return self.waiting

    def command(self, line: bytes) -> "defer.Deferred[tuple[int, list[bytes]]]":
        self.tr.write(line + b"\r\n")
        return self.reply()


def _is_localhost(host: str) -> bool:
    return host in ("localhost", "127.0.0.1", "::1")


class Email:
    """email_configs: one message over SMTP to `to`, from `from`, through `smarthost` (global
    smtp_* settings fill what the config leaves out). STARTTLS is required unless `require_tls`
    is false; port 465 speaks TLS from the start. AUTH when the server offers it and a username
    is set: the first of the server's mechanisms (CRAM-MD5, PLAIN, LOGIN) the config can do."""

    name = "email"

    def __init__(self, cfg: dict, global_cfg: dict, index: int, http_client: Any, clock: Any) -> None:
        g = global_cfg
        smarthost = cfg.get("smarthost") or g.get("smtp_smarthost")
        if not smarthost:
            raise ConfigError("no global SMTP smarthost set")
        try:
            self.host, self.port = split_hostport(smarthost)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.smarthost = str(smarthost)
        self.from_ = cfg.get("from") or g.get("smtp_from") or ""
        if not self.from_:
            raise ConfigError("no global SMTP from set")
        self.to = cfg.get("to") or ""
        if not self.to:
            raise ConfigError("missing to address in email config")
        self.hello = str(cfg.get("hello") or g.get("smtp_hello") or "localhost")
        if "\r" in self.hello or "\n" in self.hello:
            raise ConfigError("smtp: A line must not contain CR or LF")     # Go's validateLine
        self.username = str(cfg.get("auth_username") or g.get("smtp_auth_username") or "")
        if cfg.get("auth_password") or cfg.get("auth_password_file"):
            self.password = str(cfg.get("auth_password") or "")
            self.password_file = str(cfg.get("auth_password_file") or "")
        else:
            self.password = str(g.get("smtp_auth_password") or "")
            self.password_file = str(g.get("smtp_auth_password_file") or "")
        self.secret = str(cfg.get("auth_secret") or g.get("smtp_auth_secret") or "")
        self.identity = str(cfg.get("auth_identity") or g.get("smtp_auth_identity") or "")
        rt = cfg.get("require_tls")
        self.require_tls = bool(g.get("smtp_require_tls", True) if rt is None else rt)
        tls = cfg.get("tls_config") or {}
        self.insecure_skip_verify = bool(tls.get("insecure_skip_verify"))
        self.server_name = str(tls.get("server_name") or self.host)
        self.html = cfg.get("html", '{{ template "email.default.html" . }}')
        self.text = cfg.get("text") or ""
        headers = {canonical_header(str(k)): str(v) for k, v in (cfg.get("headers") or {}).items()}
        headers.setdefault("Subject", '{{ template "email.default.subject" . }}')
        headers.setdefault("To", self.to)
        headers.setdefault("From", self.from_)
        self.headers = headers
        self.index = index
        self.send_resolved = _send_resolved(cfg, False)
        self.clock = clock
        self.hostname = socket.gethostname() or "localhost.localdomain"

    # -- the message --

    def message(self, data: NotificationData, template: Optional["Template"]) -> tuple[str, list[str], bytes]:
        """(from address, to addresses, message bytes with CRLF line ends)."""
        t = _Texts(template, data)
        from_ = t(self.from_)
        if t.error:
            raise NotifyError(False, "execute 'from' template: %s" % t.error)
        to = t(self.to)
        if t.error:
            raise NotifyError(False, "execute 'to' template: %s" % t.error)
        froms = parse_addresses(from_, "from")
        if len(froms) != 1:
            raise NotifyError(False, "must be exactly one 'from' address (got: %d)" % len(froms))
        tos = parse_addresses(to, "to")
        head = ""
        for name in sorted(self.headers):
            value = t(self.headers[name])
            if t.error:
                raise NotifyError(False, 'execute "%s" header template: %s' % (name, t.error))
            head += "%s: %s\r\n" % (name, q_encode(value))
        if "Message-Id" not in self.headers:
            head += "Message-Id: <%d.%d@%s>\r\n" % (time.time_ns(), random.getrandbits(64),
                                                   self.hostname)
        boundary = os.urandom(30).hex()
        now = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)
        head += "Date: %s\r\n" % email.utils.format_datetime(now)
        head += "Content-Type: multipart/alternative;  boundary=%s\r\n" % boundary
        head += "MIME-Version: 1.0\r\n\r\n"
        parts = []
        if self.text:
            body = t(self.text)
            if t.error:
                raise NotifyError(False, "execute text template: %s" % t.error)
            parts.append(("text/plain; charset=UTF-8", quoted_printable(body)))
        if self.html:
            body = t(self.html, html=True)
            if t.error:
                raise NotifyError(False, "execute html template: %s" % t.error)
            parts.append(("text/html; charset=UTF-8", quoted_printable(body)))
        return froms[0], tos, head.encode("utf-8") + multipart(parts, boundary)

    # -- the conversation --

    def _tls_options(self) -> Any:
        from twisted.internet import ssl
        if self.insecure_skip_verify:
            return ssl.CertificateOptions(verify=False)
        return ssl.optionsForClientTLS(self.server_name)

    def _reactor(self) -> Any:
        if hasattr(self.clock, "connectTCP"):
            return self.clock
        from twisted.internet import reactor
        return reactor

    def render(self, data: NotificationData,
               template: Optional["Template"] = None) -> tuple[str, list[str], bytes]:
        return self.message(data, template)

    notify = amreceivers.render_and_send

    def send(self, message: tuple[str, list[str], bytes]) -> "defer.Deferred[None]":
        from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
        reactor = self._reactor()
        endpoint: Any = HostnameEndpoint(reactor, self.host, self.port, timeout=SEND_TIMEOUT_S)
        if self.port == 465:
            endpoint = wrapClientTLS(self._tls_options(), endpoint)
        proto = _SMTPClient()
        state = {"timed_out": False, "cancelled": False}
        connecting = connectProtocol(endpoint, proto)

        def abort() -> None:
            if not connecting.called:
                connecting.cancel()
            elif proto.transport is not None:
                proto.tr.abortConnection()

        def cancel(_: Any) -> None:
            state["cancelled"] = True
            abort()
        result: defer.Deferred[None] = defer.Deferred(canceller=cancel)

        def expire() -> None:
            state["timed_out"] = True
            abort()
        timer = self.clock.callLater(SEND_TIMEOUT_S, expire)

        def finish(outcome: Any) -> None:
            if timer.active():
                timer.cancel()
            if result.called:
                return
            if isinstance(outcome, NotifyError):
                result.errback(outcome)
            elif state["timed_out"]:
                result.errback(NotifyError(True, "timeout after %gs talking to %s"
                                           % (SEND_TIMEOUT_S, self.smarthost)))
            elif hasattr(outcome, "value"):             # a Failure
                if isinstance(outcome.value, NotifyError):
                    result.errback(outcome)
                else:
                    result.errback(NotifyError(True, "%s: %s" % (self.smarthost, outcome.getErrorMessage())))
            else:
                result.callback(None)

        def connect_failed(f: Any) -> None:
            finish(NotifyError(True, "establish connection to server: %s" % f.getErrorMessage())
                   if not state["timed_out"] else f)
        connecting.addCallbacks(lambda _: self._converse(proto, *message).addBoth(finish),
                                connect_failed)
        return result

    @defer.inlineCallbacks
    def _converse(self, p: _SMTPClient, from_: str, to: list[str], message: bytes) -> Any:
        tls = self.port == 465

        def expect(reply: tuple[int, list[bytes]], ok: tuple[int, ...], what: str) -> None:
            if reply[0] not in ok:
                raise NotifyError(True, "%s: %s" % (what, SMTPFailure(*reply)))

        expect((yield p.reply()), (220,), "create SMTP client")
        ext = yield self._hello(p)
        if self.require_tls and not tls:
            if "STARTTLS" not in ext:
                raise NotifyError(True, "'require_tls' is true (default) but \"%s\" does not "
                                  "advertise the STARTTLS extension" % self.smarthost)
            expect((yield p.command(b"STARTTLS")), (220,), "send STARTTLS command")
            p.tr.startTLS(self._tls_options())
            tls = True
            ext = yield self._hello(p)
        if "AUTH" in ext and self.username:
            yield self._auth(p, ext["AUTH"], tls)
        params = ""
        if "8BITMIME" in ext:
            params += " BODY=8BITMIME"
        if "SMTPUTF8" in ext:
            params += " SMTPUTF8"
        expect((yield p.command(("MAIL FROM:<%s>%s" % (from_, params)).encode("utf-8"))),
               (250,), "send MAIL command")
        for addr in to:
            expect((yield p.command(("RCPT TO:<%s>" % addr).encode("utf-8"))), (250, 251),
                   "send RCPT command")
        expect((yield p.command(b"DATA")), (354,), "send DATA command")
        lines = message.split(b"\r\n")
        if lines and lines[-1] == b"":
            lines.pop()
        # Dot-stuffing: a line starting with "." gets one more.
        body = b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)
        p.tr.write(body + b".\r\n")
        expect((yield p.reply()), (250,), "send message")
        p.tr.write(b"QUIT\r\n")
        p.tr.loseConnection()
        return None

    @defer.inlineCallbacks
    def _hello(self, p: _SMTPClient) -> Any:
        """EHLO (HELO when refused); the extensions the server announced."""
        code, lines = yield p.command(b"EHLO " + self.hello.encode("utf-8"))
        if code != 250:
            code, lines = yield p.command(b"HELO " + self.hello.encode("utf-8"))
            if code != 250:
                raise NotifyError(True, "send EHLO command: %s" % SMTPFailure(code, lines))
            return {}
        ext = {}
        for ln in lines[1:]:
            word, _, param = ln.decode("utf-8", "replace").partition(" ")
            ext[word.upper()] = param
        return ext

    def _get_password(self) -> str:
        if self.password_file:
            return _read_secret_file(self.password_file, "SMTP password")
        return self.password

    @defer.inlineCallbacks
    def _auth(self, p: _SMTPClient, mechs: str, tls: bool) -> Any:
        errors = []
        chosen = None
        for mech in mechs.split(" "):
            if mech == "CRAM-MD5":
                if not self.secret:
                    errors.append("missing secret for CRAM-MD5 auth mechanism")
                    continue
                chosen = mech
                break
            if mech in ("PLAIN", "LOGIN"):
                if not self._get_password():
                    errors.append("missing password for %s auth mechanism" % mech)
                    continue
                chosen = mech
                break
        if chosen is None:
            raise NotifyError(True, "find auth mechanism: %s" % (
                "; ".join(errors) if errors else "unknown auth mechanism: " + mechs))
        user = self.username.encode("utf-8")
        if chosen == "PLAIN":
            # As Go's smtp.PlainAuth: no password in clear text except to this host.
            if not tls and not _is_localhost(self.host):
                raise NotifyError(True, "*smtp.plainAuth auth: unencrypted connection")
            token = b"%s\0%s\0%s" % (self.identity.encode("utf-8"), user,
                                     self._get_password().encode("utf-8"))
            code, lines = yield p.command(b"AUTH PLAIN " + base64.b64encode(token))
            kind = "*smtp.plainAuth"
        elif chosen == "LOGIN":
            kind = "*email.loginAuth"
            code, lines = yield p.command(b"AUTH LOGIN")
            while code == 334:
                challenge = base64.b64decode(b"".join(lines)).decode("utf-8", "replace").lower()
                if challenge == "username:":
                    answer = user
                elif challenge == "password:":
                    answer = self._get_password().encode("utf-8")
                else:
                    p.tr.write(b"*\r\n")
                    raise NotifyError(True, "%s auth: unexpected server challenge" % kind)
                code, lines = yield p.command(base64.b64encode(answer))
        else:
            kind = "*smtp.cramMD5Auth"
            code, lines = yield p.command(b"AUTH CRAM-MD5")
            if code == 334:
                nonce = base64.b64decode(b"".join(lines))
                digest = hmac.new(self.secret.encode("utf-8"), nonce, hashlib.md5).hexdigest()
                code, lines = yield p.command(base64.b64encode(user + b" " + digest.encode()))
        if code != 235:
            raise NotifyError(True, "%s auth: %s" % (kind, SMTPFailure(code, lines)))
        return None


FACTORIES: dict[str, Callable[[dict, dict, int, Any, Any], Any]] = {
    "email_configs": Email,
    "slack_configs": Slack,
    "pagerduty_configs": PagerDuty,
}

# Importing this module registers the integrations and the default templates with the receiver
# seam (the pipeline imports it; amreceivers cannot import it back).
amreceivers.INTEGRATIONS.update(FACTORIES)
_seam_templates = getattr(amreceivers, "DEFAULT_TEMPLATES", None)
if isinstance(_seam_templates, list) and DEFAULT_TEMPLATES not in _seam_templates:
    _seam_templates.append(DEFAULT_TEMPLATES)


# ---- load-time checks (amtool check-config, then Mimir's file refusals) -------------------------

_S, _B, _MAP, _URL, _LIST = "string", "bool", "map[string]string", "url", "list"
_TLS = {"ca": _S, "cert": _S, "key": _S, "ca_file": _S, "cert_file": _S, "key_file": _S,
        "server_name": _S, "insecure_skip_verify": _B, "min_version": _S, "max_version": _S}
_HTTP = None        # http_config: checked for Mimir's refusals only (its fields are common's)
EMAIL_FIELDS = {"send_resolved": _B, "to": _S, "from": _S, "hello": _S, "smarthost": _S,
                "auth_username": _S, "auth_password": _S, "auth_password_file": _S,
                "auth_secret": _S, "auth_identity": _S, "headers": _MAP, "html": _S, "text": _S,
                "require_tls": _B, "tls_config": _TLS}
SLACK_FIELD_FIELDS = {"title": _S, "value": _S, "short": _B}
SLACK_CONFIRM_FIELDS = {"text": _S, "title": _S, "ok_text": _S, "dismiss_text": _S}
SLACK_ACTION_FIELDS = {"type": _S, "text": _S, "url": _S, "style": _S, "name": _S, "value": _S,
                       "confirm": SLACK_CONFIRM_FIELDS}
SLACK_FIELDS = {"send_resolved": _B, "http_config": _HTTP, "api_url": _URL, "api_url_file": _S,
                "channel": _S, "username": _S, "color": _S, "title": _S, "title_link": _S,
                "pretext": _S, "text": _S, "fields": [SLACK_FIELD_FIELDS], "short_fields": _B,
                "footer": _S, "fallback": _S, "callback_id": _S, "icon_emoji": _S,
                "icon_url": _S, "image_url": _S, "thumb_url": _S, "link_names": _B,
                "mrkdwn_in": [_S], "actions": [SLACK_ACTION_FIELDS]}
PAGERDUTY_IMAGE_FIELDS = {"src": _S, "alt": _S, "href": _S}
PAGERDUTY_LINK_FIELDS = {"href": _S, "text": _S}
PAGERDUTY_FIELDS = {"send_resolved": _B, "http_config": _HTTP, "service_key": _S,
                    "service_key_file": _S, "routing_key": _S, "routing_key_file": _S,
                    "url": _URL, "client": _S, "client_url": _S, "description": _S,
                    "details": _MAP, "images": [PAGERDUTY_IMAGE_FIELDS],
                    "links": [PAGERDUTY_LINK_FIELDS], "source": _S, "severity": _S,
                    "class": _S, "component": _S, "group": _S}
GLOBAL_FIELDS = {"resolve_timeout": _S, "http_config": _HTTP, "smtp_from": _S, "smtp_hello": _S,
                 "smtp_smarthost": _S, "smtp_auth_username": _S, "smtp_auth_password": _S,
                 "smtp_auth_password_file": _S, "smtp_auth_secret": _S,
                 "smtp_auth_identity": _S, "smtp_require_tls": _B, "slack_api_url": _URL,
                 "slack_api_url_file": _S, "pagerduty_url": _URL, "opsgenie_api_url": _URL,
                 "opsgenie_api_key": _S, "opsgenie_api_key_file": _S, "wechat_api_url": _URL,
                 "wechat_api_secret": _S, "wechat_api_corp_id": _S, "victorops_api_url": _URL,
                 "victorops_api_key": _S, "victorops_api_key_file": _S,
                 "telegram_api_url": _URL, "webex_api_url": _URL}
# Go type names in yaml's "field X not found in type T" (types with their own UnmarshalYAML
# decode through a local type named plain).
_TYPE_NAMES = {id(PAGERDUTY_IMAGE_FIELDS): "config.PagerdutyImage",
               id(PAGERDUTY_LINK_FIELDS): "config.PagerdutyLink",
               id(_TLS): "config.plain"}


def _yaml_kind(v: Any) -> str:
    if isinstance(v, dict):
        return "!!map"
    if isinstance(v, list):
        return "!!seq"
    if isinstance(v, bool):
        return "!!bool `%s`" % ("true" if v else "false")
    if isinstance(v, (int, float)):
        return "!!%s `%s`" % ("int" if isinstance(v, int) else "float", v)
    return "!!str `%s`" % v


def _type_error(v: Any, into: str) -> ConfigError:
    return ConfigError("yaml: unmarshal errors:\n  cannot unmarshal %s into %s" % (_yaml_kind(v), into))


def parse_url(s: Any) -> None:
    """config.parseURL: http or https with a host."""
    import urllib.parse
    try:
        u = urllib.parse.urlsplit(str(s))
    except ValueError as exc:
        raise ConfigError("parse %s: %s" % (s, exc)) from None
    if u.scheme not in ("http", "https"):
        raise ConfigError('unsupported scheme "%s" for URL' % u.scheme)
    if not u.netloc:
        raise ConfigError("missing host for URL")


def _check_fields(obj: Any, spec: dict, type_name: str = "config.plain") -> None:
    if obj is None:
        return
    if not isinstance(obj, dict):
        raise _type_error(obj, type_name)
    for key, v in obj.items():
        if key not in spec:
            raise ConfigError("yaml: unmarshal errors:\n  field %s not found in type %s"
                              % (key, type_name))
        kind = spec[key]
        if v is None or kind is None:
            continue
        if kind in (_S, _URL):
            if isinstance(v, (dict, list)):
                raise _type_error(v, "string")
            if kind == _URL:
                parse_url(v)
        elif kind == _B:
            if not isinstance(v, bool):
                raise _type_error(v, "bool")
        elif kind == _MAP:
            if not isinstance(v, dict):
                raise _type_error(v, "map[string]string")
            for mv in v.values():
                if isinstance(mv, (dict, list)):
                    raise _type_error(mv, "string")
        elif isinstance(kind, list):
            if not isinstance(v, list):
                raise _type_error(v, "[]" + ("string" if kind[0] == _S else "config.plain"))
            for item in v:
                if kind[0] == _S:
                    if isinstance(item, (dict, list)):
                        raise _type_error(item, "string")
                else:
                    _check_fields(item, kind[0], _TYPE_NAMES.get(id(kind[0]), "config.plain"))
        elif isinstance(kind, dict):
            _check_fields(v, kind, _TYPE_NAMES.get(id(kind), "config.plain"))


def _check_http_config(h: Any) -> None:
    """Mimir: a tenant's config may not read the server's files or pick its proxy."""
    if not h:
        return
    if not isinstance(h, dict):
        raise _type_error(h, "config.plain")
    if (h.get("bearer_token_file") or (h.get("basic_auth") or {}).get("password_file")
            or (h.get("authorization") or {}).get("credentials_file")):
        raise ConfigError("setting password_file, bearer_token_file and credentials_file is not allowed")
    if (h.get("oauth2") or {}).get("client_secret_file"):
        raise ConfigError("setting OAuth2 client_secret_file is not allowed")
    if h.get("proxy_url"):
        raise ConfigError("setting proxy_url is not allowed")
    _check_tls_files(h.get("tls_config"))


def _check_tls_files(tls: Any) -> None:
    if isinstance(tls, dict) and (tls.get("ca_file") or tls.get("cert_file") or tls.get("key_file")):
        raise ConfigError("setting TLS ca_file, cert_file and key_file is not allowed")


def _check_email(c: dict) -> None:
    if not c.get("to"):
        raise ConfigError("missing to address in email config")
    seen = set()
    for h in c.get("headers") or {}:
        n = canonical_header(str(h))
        if n in seen:
            raise ConfigError('duplicate header "%s" in email config' % n)
        seen.add(n)


def _check_slack(c: dict) -> None:
    for f in c.get("fields") or []:
        if not (f or {}).get("title"):
            raise ConfigError("missing title in Slack field configuration")
        if not f.get("value"):
            raise ConfigError("missing value in Slack field configuration")
    for a in c.get("actions") or []:
        a = a or {}
        if not a.get("type"):
            raise ConfigError("missing type in Slack action configuration")
        if not a.get("text"):
            raise ConfigError("missing text in Slack action configuration")
        if not a.get("url") and not a.get("name"):
            raise ConfigError("missing name or url in Slack action configuration")
        if a.get("confirm") is not None and not (a.get("confirm") or {}).get("text"):
            raise ConfigError("missing text in Slack confirmation configuration")
    if c.get("api_url") and c.get("api_url_file"):
        raise ConfigError("at most one of api_url & api_url_file must be configured")


def _check_pagerduty(c: dict) -> None:
    if not (c.get("routing_key") or c.get("service_key") or c.get("routing_key_file")
            or c.get("service_key_file")):
        raise ConfigError("missing service or routing key in PagerDuty config")
    if c.get("routing_key") and c.get("routing_key_file"):
        raise ConfigError("at most one of routing_key & routing_key_file must be configured")
    if c.get("service_key") and c.get("service_key_file"):
        raise ConfigError("at most one of service_key & service_key_file must be configured")


_KINDS = (("email_configs", EMAIL_FIELDS, _check_email),
          ("pagerduty_configs", PAGERDUTY_FIELDS, _check_pagerduty),
          ("slack_configs", SLACK_FIELDS, _check_slack))


def validate_receivers(am: dict, tenant_config: bool = True) -> None:
    """The checks Alertmanager makes when loading the email, Slack and PagerDuty configs of `am`
    (a YAML-decoded alertmanager configuration), with its error texts: first each config as it
    is decoded (unknown fields, types, required fields), then the globals each one falls back
    on. `tenant_config` adds Mimir's refusals of fields that read the server's files. Raises
    ConfigError."""
    g = am.get("global") or {}
    _check_fields(g, GLOBAL_FIELDS)
    receivers = [r for r in am.get("receivers") or [] if isinstance(r, dict)]
    for r in receivers:
        for key, spec, check in _KINDS:
            configs = r.get(key)
            if configs is None:
                continue
            if not isinstance(configs, list):
                raise _type_error(configs, "[]*config.%s" % key)
            for c in configs:
                if not isinstance(c, dict):
                    raise _type_error(c, "config.plain")
                _check_fields(c, spec)
                check(c)
    for r in receivers:
        for c in r.get("email_configs") or []:
            if not c.get("smarthost"):
                if not g.get("smtp_smarthost"):
                    raise ConfigError("no global SMTP smarthost set")
            try:
                split_hostport(str(c.get("smarthost") or g.get("smtp_smarthost")))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            if not c.get("from") and not g.get("smtp_from"):
                raise ConfigError("no global SMTP from set")
        for c in r.get("slack_configs") or []:
            if not c.get("api_url") and not c.get("api_url_file") and not (
                    g.get("slack_api_url") or g.get("slack_api_url_file")):
                raise ConfigError("no global Slack API URL set either inline or in a file")
    if not tenant_config:
        return
    _check_http_config(g.get("http_config"))
    if g.get("slack_api_url_file"):
        raise ConfigError("setting Slack api_url_file and global slack_api_url_file is not allowed")
    if g.get("smtp_auth_password_file"):
        raise ConfigError("setting Email auth_password_file and global smtp_auth_password_file "
                          "is not allowed")
    for r in receivers:
        for c in r.get("email_configs") or []:
            if c.get("auth_password_file"):
                raise ConfigError("setting Email auth_password_file and global "
                                  "smtp_auth_password_file is not allowed")
            _check_tls_files(c.get("tls_config"))
        for c in r.get("slack_configs") or []:
            _check_http_config(c.get("http_config"))
            if c.get("api_url_file"):
                raise ConfigError("setting Slack api_url_file and global slack_api_url_file "
                                  "is not allowed")
        for c in r.get("pagerduty_configs") or []:
            _check_http_config(c.get("http_config"))
            if c.get("routing_key_file"):
                raise ConfigError("setting PagerDuty routing_key_file is not allowed")
            if c.get("service_key_file"):
                raise ConfigError("setting PagerDuty service_key_file is not allowed")
