"""Prometheus' template functions: outputs as Prometheus' own template tests state them."""
import math
import unittest

from urdar.gotemplate import ExecError, Template
from urdar.gotemplate.prometheus import (ALERT_TEMPLATE_PREFIX, Sample, alert_template_data,
                                         parse_duration, prometheus_funcs, strip_domain,
                                         strip_port)

URL = "http://testhost:9090/path/prefix"


def expand(text, data=None, samples=(), now_s=0.0):
    funcs = prometheus_funcs(query=lambda q: list(samples), external_url=URL, now_s=now_s)
    return Template("test", funcs, missing_key="zero").parse(text).execute(data)


class HumanizeTests(unittest.TestCase):
    def test_humanize(self):
        """humanize uses SI prefixes with 4 significant digits."""
        self.assertEqual(expand("{{ range . }}{{ humanize . }}:{{ end }}", [0.0, 1.0, 1234567.0, .12]),
                         "0:1:1.235M:120m:")

    def test_humanize_accepts_ints_and_strings(self):
        """humanize converts ints and numeric strings like Prometheus' convertToFloat."""
        self.assertEqual(expand('{{ humanize 1234567 }} {{ humanize "2048" }} {{ humanize "1e-3" }}'),
                         "1.235M 2.048k 1m")

    def test_humanize_rejects_non_numbers(self):
        """A non-numeric string is an execution error naming the function."""
        with self.assertRaisesRegex(ExecError, 'error calling humanize: strconv.ParseFloat: parsing "x": invalid syntax'):
            expand('{{ humanize "x" }}')

    def test_humanize1024(self):
        """humanize1024 uses binary prefixes and leaves |v| <= 1 alone."""
        self.assertEqual(expand("{{ range . }}{{ humanize1024 . }}:{{ end }}", [0.0, 1.0, 1048576.0, .12]),
                         "0:1:1Mi:0.12:")

    def test_humanize_duration(self):
        """humanizeDuration writes days, hours, minutes and seconds, or sub-second prefixes."""
        self.assertEqual(
            expand("{{ range . }}{{ humanizeDuration . }}:{{ end }}",
                   [0, 1, 60, 3600, 3601, 86400, 86400 + 3600, -(86400 * 2 + 3600 * 3 + 60 * 4 + 5), 899.99]),
            "0s:1s:1m 0s:1h 0m 0s:1h 0m 1s:1d 0h 0m 0s:1d 1h 0m 0s:-2d 3h 4m 5s:14m 59s:")
        self.assertEqual(
            expand("{{ range . }}{{ humanizeDuration . }}:{{ end }}", [.1, .0001, .12345, 60.1, 60.5, 1.2345, 12.345]),
            "100ms:100us:123.5ms:1m 0s:1m 0s:1.234s:12.35s:")

    def test_inf_and_nan(self):
        """Infinities and NaN print as Go prints them with %.4g."""
        t = "{{ range . }}{{ humanize . }}:{{ humanize1024 . }}:{{ humanizeDuration . }}:{{humanizeTimestamp .}}:{{ end }}"
        self.assertEqual(expand(t, [math.inf, -math.inf, math.nan]),
                         "+Inf:+Inf:+Inf:+Inf:-Inf:-Inf:-Inf:-Inf:NaN:NaN:NaN:NaN:")

    def test_humanize_percentage(self):
        """humanizePercentage multiplies by 100 with 4 significant digits."""
        self.assertEqual(expand("{{ -0.22222 | humanizePercentage }}:{{ 0.0 | humanizePercentage }}:"
                                "{{ 0.1234 | humanizePercentage }}:{{ 1.23456 | humanizePercentage }}"),
                         "-22.22%:0%:12.34%:123.5%")

    def test_humanize_timestamp(self):
        """humanizeTimestamp prints Go's time.Time String in UTC with millisecond precision."""
        self.assertEqual(expand("{{ 1435065584.128 | humanizeTimestamp }}"), "2015-06-23 13:19:44.128 +0000 UTC")
        self.assertEqual(expand("{{ humanizeTimestamp 0 }}"), "1970-01-01 00:00:00 +0000 UTC")

    def test_to_time_and_duration(self):
        """toTime gives a time with Go's methods; toDuration prints as Go's Duration."""
        self.assertEqual(expand('{{ (toTime 1435065584.128).Format "2006-01-02T15:04:05.000Z07:00" }} '
                                '{{ toDuration 3601 }} {{ toDuration 0.0015 }} {{ (toTime 60).Unix }}'),
                         "2015-06-23T13:19:44.128Z 1h0m1s 1.5ms 60")


class StringFunctionTests(unittest.TestCase):
    def test_case_and_title(self):
        """title upper-cases word starts only (strings.Title); toUpper and toLower map all letters."""
        self.assertEqual(expand('{{ "aa bb CC" | title }} {{ "aa bb CC" | toUpper }} {{ "aA bB CC" | toLower }}'),
                         "Aa Bb CC AA BB CC aa bb cc")

    def test_match_and_replace_use_go_regexp_semantics(self):
        """match searches anywhere; reReplaceAll expands $1 and ${name} and skips empty matches after a match."""
        self.assertEqual(expand('{{ match "a+" "baa" }} {{ match "^a+$" "b" }}'), "true false")
        self.assertEqual(expand('{{ reReplaceAll "(a)b" "x$1" "ab" }}|{{ reReplaceAll "a*" "-" "baaac" }}|'
                                '{{ reReplaceAll "(?P<h>[a-z]+):(\\\\d+)" "${h}=$2$$" "web:80" }}'),
                         "xa|-b-c-|web=80$")

    def test_bad_regexp_is_an_error(self):
        """An invalid pattern fails the template instead of the process."""
        with self.assertRaisesRegex(ExecError, "error calling match: error parsing regexp"):
            expand('{{ match "(" "x" }}')

    def test_string_arguments_are_typed(self):
        """Passing a number where Go wants a string fails as in Go."""
        with self.assertRaisesRegex(ExecError, "wrong type for value; expected string; got int"):
            expand("{{ 1 | toUpper }}")

    def test_strip_port_and_domain(self):
        """stripPort drops the port; stripDomain keeps the first host label, the port, and IPs."""
        self.assertEqual([strip_port(x) for x in ["h.example.com:9090", "[::1]:80", "noport", "a:b:c"]],
                         ["h.example.com", "::1", "noport", "a:b:c"])
        self.assertEqual([strip_domain(x) for x in ["h.example.com:9090", "h.example.com", "10.0.0.1:80", "[::1]:80"]],
                         ["h:9090", "h", "10.0.0.1:80", "[::1]:80"])

    def test_links_and_urls(self):
        """graphLink/tableLink escape the expression; pathPrefix/externalURL come from the caller."""
        self.assertEqual(expand('{{ graphLink "up" }} {{ tableLink "rate(x{a=\\"b c\\"}[5m])" }} {{ pathPrefix }} {{ externalURL }}'),
                         '/graph?g0.expr=up&g0.tab=0 /graph?g0.expr=rate%28x%7Ba%3D%22b+c%22%7D%5B5m%5D%29&g0.tab=1 '
                         '/path/prefix ' + URL)

    def test_parse_duration(self):
        """parseDuration reads Prometheus durations (negative too) as seconds and rejects anything else."""
        self.assertEqual([parse_duration(x) for x in ["1h30m", "5m", "1d", "0", "100ms", "1y", "-5m"]],
                         [5400.0, 300.0, 86400.0, 0.0, 0.1, 31536000.0, -300.0])
        with self.assertRaisesRegex(ExecError, 'not a valid duration string: "5x"'):
            expand('{{ parseDuration "5x" }}')
        with self.assertRaisesRegex(ExecError, 'not a valid duration string: "--5m"'):
            expand('{{ parseDuration "--5m" }}')

    def test_args_and_now(self):
        """args builds arg0, arg1... for {{template}} calls; now is the caller's evaluation time."""
        self.assertEqual(expand('{{ define "t" }}{{ .arg0 }}-{{ .arg1 }}{{ end }}{{ template "t" args 1 "x" }} {{ now }}',
                                now_s=1700000000.5), "1-x 1.7000000005e+09")


class QueryTests(unittest.TestCase):
    SAMPLES = [Sample({"__name__": "metric", "instance": "b"}, 21), Sample({"__name__": "metric", "instance": "a"}, 11)]

    def test_first_value_label(self):
        """query | first | value / label read the first sample; a missing label is empty."""
        self.assertEqual(expand('{{ query "m" | first | value }} {{ query "m" | first | label "instance" }}'
                                '[{{ query "m" | first | label "foo" }}]{{ $x := query "m" | first }}[{{ $x.Labels.foo }}]',
                                samples=self.SAMPLES), "21 b[][]")

    def test_sort_by_label(self):
        """sortByLabel orders the samples by one label's value."""
        self.assertEqual(expand('{{ range query "m" | sortByLabel "instance" }}{{.Labels.instance}}:{{.Value}}: {{end}}',
                                samples=self.SAMPLES), "a:11: b:21: ")

    def test_first_of_empty_result(self):
        """first on an empty result fails with Prometheus' message at the function's position."""
        with self.assertRaisesRegex(ExecError, r'^template: test:1:21: executing "test" at <first>: error calling first: '
                                    r'first\(\) called on vector with no elements$'):
            expand('{{ query "missing" | first }}')

    def test_query_without_callback(self):
        """Without a query callback the function says it is unavailable instead of crashing."""
        t = Template("t", prometheus_funcs()).parse('{{ query "up" }}')
        with self.assertRaisesRegex(ExecError, "query is not available"):
            t.execute()


class AlertTemplateTests(unittest.TestCase):
    def test_alert_variables(self):
        """Alert templates see $labels, $externalLabels, $externalURL and $value; missing labels are empty."""
        data = alert_template_data({"instance": "h:9090", "job": "api"}, {"cluster": "eu"}, "http://prom", 0.5)
        t = Template("annotation", prometheus_funcs(), missing_key="zero").parse(
            ALERT_TEMPLATE_PREFIX + "{{ $labels.job }}@{{ $labels.instance | stripPort }} in {{ $externalLabels.cluster }}"
            " is {{ $value | humanizePercentage }} ({{ $externalURL }})[{{ $labels.nope }}]")
        self.assertEqual(t.execute(data), "api@h in eu is 50% (http://prom)[]")
