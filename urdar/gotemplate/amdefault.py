"""Alertmanager's default notification templates (the names of its template/default.tmpl) and
the tenant's notification template built on them.

    t = notification_template({"my.tmpl": text}, now=clock.seconds)
    t.execute(data, name="slack.default.title")

The text templates render what Alertmanager 0.25 renders (checked against it in
tests/integration/test_amintegrations_alertmanager.py); email.default.html is urdar's own simple page with
the same content. It is meant for html mode (execute_text(..., html=True)), where the data's
strings arrive HTML-escaped. Written here from the behaviour, not copied.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Mapping, Optional

from .alertmanager import alertmanager_funcs
from .execute import Func
from .template import Template

# Shared pieces first, then one block per integration. Trim markers keep the source readable
# without putting its line breaks into the output.
DEFAULT_TEMPLATES = r"""
{{- define "__alertmanager" -}} Alertmanager {{- end }}
{{- define "__alertmanagerURL" -}}
  {{ .ExternalURL }}/#/alerts?receiver={{ urlquery .Receiver }}
{{- end }}

{{- define "__subject" -}}
  [{{ toUpper .Status }}
  {{- if eq .Status "firing" }}:{{ len .Alerts.Firing }}{{ end -}}
  ] {{ join " " .GroupLabels.SortedPairs.Values }} {{/* one space even without group labels */ -}}
  {{ if gt (len .CommonLabels) (len .GroupLabels) -}}
    ({{ with .CommonLabels.Remove .GroupLabels.Names }}{{ join " " .Values }}{{ end }})
  {{- end }}
{{- end }}
{{- define "__description" }}{{ end }}

{{- define "__text_alert_list" -}}
{{ range . -}}
Labels:
{{ range .Labels.SortedPairs }} - {{ .Name }} = {{ .Value }}
{{ end -}}
Annotations:
{{ range .Annotations.SortedPairs }} - {{ .Name }} = {{ .Value }}
{{ end -}}
Source: {{ .GeneratorURL }}
{{ end -}}
{{ end }}

{{- define "slack.default.title" }}{{ template "__subject" . }}{{ end }}
{{- define "slack.default.username" }}{{ template "__alertmanager" . }}{{ end }}
{{- define "slack.default.fallback" -}}
  {{ template "slack.default.title" . }} | {{ template "slack.default.titlelink" . }}
{{- end }}
{{- define "slack.default.callbackid" }}{{ end }}
{{- define "slack.default.pretext" }}{{ end }}
{{- define "slack.default.titlelink" }}{{ template "__alertmanagerURL" . }}{{ end }}
{{- define "slack.default.iconemoji" }}{{ end }}
{{- define "slack.default.iconurl" }}{{ end }}
{{- define "slack.default.text" }}{{ end }}
{{- define "slack.default.footer" }}{{ end }}

{{- define "pagerduty.default.description" }}{{ template "__subject" . }}{{ end }}
{{- define "pagerduty.default.client" }}{{ template "__alertmanager" . }}{{ end }}
{{- define "pagerduty.default.clientURL" }}{{ template "__alertmanagerURL" . }}{{ end }}
{{- define "pagerduty.default.instances" }}{{ template "__text_alert_list" . }}{{ end }}

{{- define "email.default.subject" }}{{ template "__subject" . }}{{ end }}
{{- define "__email_alert_rows" -}}
{{ range . }}
<tr><td class="alert">
<strong>Labels</strong><br>
{{ range .Labels.SortedPairs }}{{ .Name }} = {{ .Value }}<br>
{{ end -}}
{{ if gt (len .Annotations) 0 }}<strong>Annotations</strong><br>
{{ range .Annotations.SortedPairs }}{{ .Name }} = {{ .Value }}<br>
{{ end }}{{ end -}}
<a href="{{ .GeneratorURL }}">Source</a>
</td></tr>
{{- end }}
{{- end }}
{{- define "email.default.html" -}}
<!DOCTYPE html>
<html>
<head>
<meta charset="UTF-8">
<title>{{ template "__subject" . }}</title>
<style>
body { font-family: Helvetica, Arial, sans-serif; font-size: 14px; background: #f6f6f6; }
table.main { max-width: 600px; margin: 0 auto; background: #fff; border: 1px solid #e9e9e9; }
td.head { background: #e6522c; color: #fff; font-size: 16px; padding: 20px; text-align: center; }
td.alert { padding: 10px 20px; border-top: 1px solid #eee; }
</style>
</head>
<body>
<table class="main" width="100%" cellpadding="0" cellspacing="0">
<tr><td class="head">{{ len .Alerts }} alert{{ if gt (len .Alerts) 1 }}s{{ end }} for
{{- range .GroupLabels.SortedPairs }} {{ .Name }}={{ .Value }}{{ end }}</td></tr>
<tr><td class="alert"><a href="{{ .ExternalURL }}/#/alerts?receiver={{ urlquery .Receiver }}">View in {{ template "__alertmanager" . }}</a></td></tr>
{{- if gt (len .Alerts.Firing) 0 }}
<tr><td class="alert"><strong>[{{ len .Alerts.Firing }}] Firing</strong></td></tr>
{{- template "__email_alert_rows" .Alerts.Firing }}
{{- end }}
{{- if gt (len .Alerts.Resolved) 0 }}
<tr><td class="alert"><strong>[{{ len .Alerts.Resolved }}] Resolved</strong></td></tr>
{{- template "__email_alert_rows" .Alerts.Resolved }}
{{- end }}
<tr><td class="alert"><a href="{{ .ExternalURL }}">Sent by {{ template "__alertmanager" . }}</a></td></tr>
</table>
</body>
</html>
{{ end }}
"""


def notification_template(user_templates: Optional[Mapping[str, str]] = None, *,
                          now: Optional[Callable[[], float]] = None, **limits: Any) -> Template:
    """The defaults, then each user template file (sorted by name) parsed on top, so a user's
    {{define}} replaces a default of the same name. ParseError names the bad file."""
    t = Template("notification", alertmanager_funcs(now=now), missing_key="zero", **limits)
    t.parse(DEFAULT_TEMPLATES, name="__default")
    for name in sorted(user_templates or {}):
        t.parse((user_templates or {})[name], name=name)
    return t


TEXT_NAME = "__text"


class EscapedString(str):
    """A data string HTML-escaped for html mode; `raw` is the original, which safeHtml returns."""
    raw: str = ""


def escape_html(s: str) -> EscapedString:
    """html/template's escaping of text in HTML: & < > " ' + and NUL, with Go's entities."""
    e = EscapedString(s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
                      .replace('"', "&#34;").replace("'", "&#39;").replace("+", "&#43;")
                      .replace("\0", "\ufffd"))
    e.raw = s
    return e


def _safe_html(s: str) -> str:
    return s.raw if isinstance(s, EscapedString) else s


def execute_text(t: Template, text: str, data: Any, html: bool = False) -> str:
    """Alertmanager's ExecuteTextString (ExecuteHTMLString when `html`): `text` parsed as a
    fresh template beside t's defines (t itself is not changed), run with missingkey=zero; ""
    stays "". In html mode the caller passes data whose strings are EscapedStrings (Go's
    html/template escapes values by context; this escapes them all as HTML text, which also
    suits attributes) and safeHtml gives a value back unescaped."""
    if not text:
        return ""
    clone = copy.copy(t)
    clone.trees = dict(t.trees)
    clone.missing_key = "zero"
    if html:
        clone.funcs = dict(t.funcs)
        clone.funcs["safeHtml"] = Func(_safe_html, 1, 1, types=("string",))
    # Its own name: "" would mean the set's name, which may also be one of its defines.
    clone.parse(text, name=TEXT_NAME)
    return clone.execute(data, name=TEXT_NAME)
