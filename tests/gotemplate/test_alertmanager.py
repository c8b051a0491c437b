"""Alertmanager's template functions and data methods, on notification-shaped templates."""
import unittest

from urdar.gotemplate import ExecError, Template
from urdar.gotemplate.alertmanager import KV, Alert, Data, alertmanager_funcs
from urdar.gotemplate.gotime import GoDuration, GoTime

T0 = GoTime.from_unix(1435065584.128)


def data():
    return Data("team-x", "firing",
                [Alert("firing", {"alertname": "Up", "job": "a", "zone": "z"}, {"summary": "down"}, T0, T0),
                 Alert("resolved", {"alertname": "Up", "job": "b"}, {}, T0, T0)],
                {"alertname": "Up"}, {"alertname": "Up", "b": "2", "a": "1"}, {"summary": "s"}, "http://am")


def expand(text, dot=None, now=T0.unix_seconds() + 3661):
    t = Template("t", alertmanager_funcs(now=lambda: now), missing_key="zero")
    return t.parse(text).execute(data() if dot is None else dot)


class KVTests(unittest.TestCase):
    def test_sorted_pairs_put_alertname_first(self):
        """SortedPairs sorts by name with alertname first, and prints as "name=value, ..."."""
        kv = KV({"b": "2", "alertname": "X", "a": "1"})
        self.assertEqual([p.Name for p in kv.SortedPairs()], ["alertname", "a", "b"])
        self.assertEqual(expand("{{ .CommonLabels.SortedPairs }}"), "alertname=Up, a=1, b=2")

    def test_names_values_remove(self):
        """Names/Values follow SortedPairs; Remove drops the given names."""
        self.assertEqual(expand("{{ .CommonLabels.Names }} {{ .CommonLabels.Values }} "
                                "{{ (.CommonLabels.Remove .GroupLabels.Names).Names }}"),
                         "[alertname a b] [Up 1 2] [a b]")

    def test_missing_label_is_empty(self):
        """A missing label is an empty string, as with Alertmanager's missingkey=zero."""
        self.assertEqual(expand("[{{ .CommonLabels.nope }}]"), "[]")

    def test_dict_methods_are_not_fields(self):
        """Python's dict methods are not reachable: .keys is a label like any other."""
        self.assertEqual(expand("[{{ .CommonLabels.keys }}]"), "[]")


class DefaultTemplateShapeTests(unittest.TestCase):
    def test_subject_like_the_default_template(self):
        """The default __subject shape renders status, firing count, group and extra common labels."""
        text = ('{{ define "__subject" }}[{{ .Status | toUpper }}{{ if eq .Status "firing" }}:{{ .Alerts.Firing | len }}'
                '{{ end }}] {{ .GroupLabels.SortedPairs.Values | join " " }} {{ if gt (len .CommonLabels) (len .GroupLabels) }}'
                '({{ with .CommonLabels.Remove .GroupLabels.Names }}{{ .Values | join " " }}{{ end }}){{ end }}{{ end }}'
                '{{ template "__subject" . }}')
        self.assertEqual(expand(text), "[FIRING:1] Up (1 2)")

    def test_alert_list(self):
        """Ranging over .Alerts.Firing/.Resolved reaches each alert's labels and annotations."""
        self.assertEqual(expand("{{ range .Alerts.Firing }}{{ .Labels.job }}:{{ .Annotations.summary }}{{ end }}|"
                                "{{ range .Alerts.Resolved }}{{ range .Labels.SortedPairs }}{{ .Name }}={{ .Value }};{{ end }}{{ end }}"),
                         "a:down|alertname=Up;job=b;")


class FunctionTests(unittest.TestCase):
    def test_string_functions(self):
        """title lower-cases the rest of each word (cases.Title); trimSpace, join, stringSlice as in Go."""
        self.assertEqual(expand('{{ title "hello WORLD it\'s" }}|{{ trimSpace "  x \\n" }}|'
                                '{{ stringSlice "a" "b" | join "," }}|{{ toLower "AB" }}'),
                         "Hello World It's|x|a,b|ab")

    def test_url_functions(self):
        """urlUnescape decodes query escapes and rejects malformed ones; safeUrl passes text through."""
        self.assertEqual(expand('{{ urlUnescape "a%20b+c%2F" }}|{{ safeUrl "http://x/?a=b" }}'), "a b c/|http://x/?a=b")
        with self.assertRaisesRegex(ExecError, 'invalid URL escape "%zz"'):
            expand('{{ urlUnescape "%zz" }}')

    def test_date_and_tz(self):
        """date formats with Go layouts; tz moves a time into a named zone."""
        self.assertEqual(expand('{{ (index .Alerts 0).StartsAt | date "Mon Jan 2 15:04:05 MST 2006" }}|'
                                '{{ (index .Alerts 0).StartsAt | tz "Asia/Tokyo" }}|'
                                '{{ (index .Alerts 0).StartsAt | tz "Europe/Berlin" | date "15:04 -07:00" }}'),
                         "Tue Jun 23 13:19:44 UTC 2015|2015-06-23 22:19:44.128 +0900 JST|15:19 +02:00")
        with self.assertRaisesRegex(ExecError, "unknown time zone Mars/Base"):
            expand('{{ (index .Alerts 0).StartsAt | tz "Mars/Base" }}')

    def test_since_uses_the_callers_clock(self):
        """since measures from the injected clock and prints as Go's Duration."""
        self.assertEqual(expand("{{ since (index .Alerts 0).StartsAt }}"), "1h1m1s")

    def test_time_methods(self):
        """Templates can use Go's time methods: Format, Unix, IsZero, Sub (saturating), Before/After."""
        later = GoTime.from_unix(T0.unix_seconds() + 90.5)
        dot = Data("r", "firing", [Alert("firing", {}, {}, T0, GoTime.zero()), Alert("resolved", {}, {}, T0, later)],
                   {}, {}, {}, "")
        self.assertEqual(expand("{{ with index .Alerts 0 }}{{ .EndsAt }}|{{ .EndsAt.IsZero }} {{ .StartsAt.IsZero }}|"
                                "{{ .StartsAt.Unix }}|{{ .StartsAt.Sub .EndsAt }}|{{ .EndsAt.Before .StartsAt }} "
                                "{{ .EndsAt.After .StartsAt }}{{ end }}|{{ with index .Alerts 1 }}"
                                "{{ .EndsAt.Sub .StartsAt }} {{ .EndsAt.Sub .StartsAt | humanizeDuration }}{{ end }}", dot),
                         "0001-01-01 00:00:00 +0000 UTC|true false|1435065584|2562047h47m16.854775807s|true false|"
                         "1m30.5s 1m 30s")

    def test_humanize_duration(self):
        """humanizeDuration is the same as Prometheus', and takes durations too."""
        self.assertEqual(expand("{{ humanizeDuration 90 }} {{ humanizeDuration . }}", GoDuration(3601 * 10**9)),
                         "1m 30s 1h 0m 1s")
