"""The Go library behaviour urdar re-implements for template functions, compared with Go itself:
time layouts and Time.String, Duration.String, strings.Title, regexp replace/match (RE2 here),
url.QueryUnescape, net.SplitHostPort."""
import json
import unittest

from tests.support.gotemplate_oracle import run_go
from urdar.gotemplate import Template, TemplateError
from urdar.gotemplate.alertmanager import url_unescape
from urdar.gotemplate.common import match, re_replace_all, title_words
from urdar.gotemplate.gotime import GoDuration, GoTime, in_zone
from urdar.gotemplate.prometheus import split_host_port

LAYOUTS = ["", "2006-01-02 15:04:05", "Mon Jan 2 15:04:05 MST 2006", "Monday, 02-Jan-06 15:04:05 MST",
           "2006-01-02T15:04:05.000Z07:00", "2006-01-02T15:04:05.999999999Z07:00", "3:04PM", "03:04:05 pm",
           "Jan _2 15:04:05.000000", "January 2, 2006", "02/01/06 -0700 -07:00 -07", "Z0700 Z07:00",
           "002 .00 ,999 .9", "15h04", "Janet Monk", "06/1/2 3:4:5"]
TIMES_MS = [0, 1435065584128, 1700000000500, -86400000, 951782400000, 1719792000123]
ZONES = ["UTC", "Asia/Tokyo", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Adelaide"]
DURATIONS_NS = [0, 1, 999, 1000, 1500, 1_000_000, 1_500_000, 999_999_999, 1_000_000_000, 1_500_000_000,
                60_000_000_000, 61_000_000_000, 3_601_000_000_000, 90_061_000_000_000, -1_500_000,
                -3_601_500_000_000, 86_400_000_000_000 * 400]
TITLES = ["aa bb CC", "hello wOrld foo_bar a-b", "it's o'neil", "élan vital ñu", "x1y 2z", "", "  lead",
          "tab\tsep", "a.b,c;d"]
REPLACES = [("(a)b", "x$1", "ab"), ("a*", "-", "baaac"), ("", "-", "abc"), ("^", ">", "ab"),
            ("(?P<h>[a-z]+):(\\d+)", "${h}=$2$$", "web:80 db:5432"), ("(a)", "$1x", "aa"),
            ("(a)", "${1}x", "aa"), ("(a)", "$9", "aa"), ("b+", "", "abbbcb"), ("é", "e", "éé"),
            ("(\\w+)@(\\w+)", "$2 at $1", "me@host you@there"), ("x*", "-", "éa"), ("$", "!", "a\nb")]
MATCHES = [("a+", "baa"), ("^a+$", "b"), ("(?i)ABC", "xabcx"), ("^$", ""), ("\\d{3}", "12a345")]
UNESCAPES = ["a%20b+c%2F", "%zz", "%4", "plain", "%C3%A9", "a%2"]
HOSTPORTS = ["h.example.com:9090", "[::1]:80", "noport", "a:b:c", ":80", "[::1]", "host:", "[a]b:1"]


def q(s):
    return json.dumps(s)


class GoStdlibTests(unittest.TestCase):
    def compare(self, templates, ours):
        """Run each template in Go and compare with the Python result for the same inputs."""
        results = run_go([(t, None) for t in templates])
        for t, mine, (go_out, go_err) in zip(templates, ours, results):
            with self.subTest(template=t):
                self.assertEqual(go_err, "", t)
                self.assertEqual(mine, go_out)

    def test_time_format_and_string(self):
        """Time.Format with Go layouts and Time.String, across zones, match Go's time package."""
        templates, ours = [], []
        for layout in LAYOUTS:
            for ms in TIMES_MS:
                for zone in ZONES:
                    templates.append("{{goTime %s %d %s}}" % (q(layout), ms, q(zone)))
                    t = in_zone(zone, GoTime.from_unix(ms / 1000.0))
                    ours.append(str(t) if layout == "" else t.Format(layout))
        self.compare(templates, ours)

    def test_duration_string(self):
        """Duration.String matches Go for nanoseconds to years, both signs."""
        self.compare(["{{goDuration %d}}" % ns for ns in DURATIONS_NS], [str(GoDuration(ns)) for ns in DURATIONS_NS])

    def test_strings_title(self):
        """Prometheus' title is strings.Title: word starts upper-cased, the rest unchanged."""
        self.compare(["{{goTitle %s}}" % q(s) for s in TITLES], [title_words(s) for s in TITLES])

    def test_regexp_replace_and_match(self):
        """reReplaceAll and match on RE2 behave as Go's regexp, including $-expansion and empty matches."""
        self.compare(["{{goReplace %s %s %s}}" % (q(p), q(r), q(t)) for p, r, t in REPLACES],
                     [re_replace_all(p, r, t) for p, r, t in REPLACES])
        self.compare(["{{goMatch %s %s}}" % (q(p), q(s)) for p, s in MATCHES], [str(match(p, s)).lower() for p, s in MATCHES])

    def test_query_unescape(self):
        """urlUnescape decodes like url.QueryUnescape and fails on the same inputs with the same text."""
        templates = ["{{goUnescape %s}}" % q(s) for s in UNESCAPES]
        for t, s, (go_out, go_err) in zip(templates, UNESCAPES, run_go([(t, None) for t in templates])):
            with self.subTest(s=s):
                try:
                    mine, err = url_unescape(s), ""
                except Exception as e:
                    mine, err = "", str(e)
                if go_err:
                    self.assertTrue(err and go_err.endswith(err), (err, go_err))
                else:
                    self.assertEqual((mine, err), (go_out, ""))

    def test_split_host_port(self):
        """stripPort and stripDomain split host and port where net.SplitHostPort does."""
        self.compare(["{{goHostPort %s}}" % q(s) for s in HOSTPORTS],
                     ["error" if split_host_port(s) is None else " ".join(split_host_port(s)) for s in HOSTPORTS])

    def test_go_funcs_are_not_urdar_funcs(self):
        """The oracle's extra functions do not exist in urdar, so the table cannot use them by mistake."""
        with self.assertRaises(TemplateError):
            Template("t").parse("{{goTitle 1}}")
