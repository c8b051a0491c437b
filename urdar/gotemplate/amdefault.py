"""Alertmanager's default notification templates (the names of its template/default.tmpl) and
the tenant's notification template built on them.

    t = notification_template({"my.tmpl": text}, now=clock.seconds)
    t.execute(data, name="slack.default.title")

The text templates render what Alertmanager 0.25 renders (checked against it in
tests/integration/test_amintegrations_alertmanager.py); email.default.html is urdar's own simple page with
the same content, label values HTML-escaped. Written here from the behaviour, not copied.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Mapping, Optional

from .alertmanager import alertmanager_funcs
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
{{ range .Labels.SortedPairs }}{{ html .Name }} = {{ html .Value }}<br>
{{ end -}}
{{ if gt (len .Annotations) 0 }}<strong>Annotations</strong><br>
{{ range .Annotations.SortedPairs }}{{ html .Name }} = {{ html .Value }}<br>
{{ end }}{{ end -}}
<a href="{{ html .GeneratorURL }}">Source</a>
</td></tr>
{{- end }}
{{- end }}
{{- define "email.default.html" -}}
<!DOCTYPE html>
<html>
<head>
<meta charset="UTF-8">
<title>[{{ toUpper .Status }}] {{ html (join " " .GroupLabels.SortedPairs.Values) }}</title>
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
{{- range .GroupLabels.SortedPairs }} {{ html .Name }}={{ html .Value }}{{ end }}</td></tr>
<tr><td class="alert"><a href="{{ html .ExternalURL }}/#/alerts?receiver={{ urlquery .Receiver }}">View in {{ template "__alertmanager" . }}</a></td></tr>
{{- if gt (len .Alerts.Firing) 0 }}
<tr><td class="alert"><strong>[{{ len .Alerts.Firing }}] Firing</strong></td></tr>
{{- template "__email_alert_rows" .Alerts.Firing }}
{{- end }}
{{- if gt (len .Alerts.Resolved) 0 }}
<tr><td class="alert"><strong>[{{ len .Alerts.Resolved }}] Resolved</strong></td></tr>
{{- template "__email_alert_rows" .Alerts.Resolved }}
{{- end }}
<tr><td class="alert"><a href="{{ html .ExternalURL }}">Sent by {{ template "__alertmanager" . }}</a></td></tr>
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


def execute_text(t: Template, text: str, data: Any) -> str:
    """Alertmanager's ExecuteTextString: `text` parsed as a fresh template beside t's defines
    (t itself is not changed), run with missingkey=zero; "" stays ""."""
    if not text:
        return ""
    clone = copy.copy(t)
    clone.trees = dict(t.trees)
    clone.missing_key = "zero"
    # Its own name: "" would mean the set's name, which may also be one of its defines.
    clone.parse(text, name=TEXT_NAME)
    return clone.execute(data, name=TEXT_NAME)
