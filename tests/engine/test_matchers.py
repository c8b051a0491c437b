"""Label matchers with Prometheus/RE2 semantics and postings selection over an index."""
import re
import unittest
from unittest import mock

from hypothesis import given, settings, strategies as st

from tests.support.memindex import MemIndex
from urdar.engine import matchers, postings
from urdar.engine.errors import RegexError
from urdar.engine.matchers import (Matcher, Regex, label_names_for, label_values_for,
                                   postings_for_matchers)

T, F = True, False

# (pattern, input, expected) following RE2 as Prometheus uses it: ^(?s:re)$.
SEMANTICS = [
    # full anchoring
    ("foo", "foo", T), ("foo", "xfoo", F), ("foo", "foox", F), ("fo", "foo", F), ("", "", T), ("", "a", F),
    ("a|b", "ab", F), ("foo|foobar", "foobar", T),
    # `.` matches newline unless (?-s); `$` is end of text, never before a final newline
    (".*", "a\nb", T), ("a.b", "a\nb", T), (".+", "\n", T), ("foo.*", "foo\nbar", T),
    ("(?-s)a.b", "a\nb", F), ("(?-s).*", "a\nb", F), ("(?-s:.)", "\n", F),
    ("foo$", "foo\n", F), ("foo", "foo\n", F), ("foo\n?", "foo\n", T), ("^foo$", "foo", T),
    ("(?m)a$\n^b", "a\nb", T), ("a$\nb", "a\nb", F), ("foo\\z", "foo", T), ("\\Afoo", "foo", T),
    # empty-value cases
    ("x|", "", T), ("x|", "x", T), ("x|", "y", F), ("a*", "", T), (".*", "", T), (".+", "", F), ("a?", "", T),
    # case-insensitive, scoped flags, simple case folding
    ("(?i)foo", "FoO", T), ("(?i)foo", "fo", F), ("(?i)k", "\u212a", T), ("(?i)s", "\u017f", T),
    ("(?i)\u00df", "\u1e9e", T), ("(?i)stra\u00dfe", "STRASSE", F), ("(?i)i", "\u0131", F),
    ("(?i)foo|bar", "BAR", T), ("a(?i)b", "aB", T), ("a(?i)b", "AB", F), ("(?i:a)b", "Ab", T),
    ("(?i:a)b", "AB", F), ("(?i)a(?-i)b", "Ab", T), ("(?i)a(?-i)b", "AB", F), ("((?i)a)b", "AB", F),
    ("((?i)a)b", "Ab", T), ("(?i)a|b", "B", T), ("(?i)[a-c]+", "ABC", T), ("(?i)[^k]", "K", F),
    ("(?i)[^k]", "\u212a", F), ("(?i)[^k]", "j", T), ("(?i)\u03c3", "\u03c2", T), ("(?i)f.*", "FOO", T),
    # alternation and grouping
    ("foo|bar", "bar", T), ("foo|bar", "foobar", F), ("a|b|c", "b", T), ("(a|ab)(c|bcd)", "abcd", T),
    ("(?P<x>a)b", "ab", T), ("(?<x>a)b", "ab", T), ("(?:a|b)+", "abba", T), ("()", "", T),
    # POSIX classes (only inside brackets) and RE2's ASCII Perl classes
    ("[[:alpha:]]+", "abcXYZ", T), ("[[:alpha:]]", "1", F), ("[[:digit:][:upper:]]+", "A1", T),
    ("[[:^digit:]]", "a", T), ("[[:^digit:]]", "1", F), ("[[:space:]]", "\v", T), ("\\s", "\v", F),
    ("[[:word:]]+", "a_1", T), ("[:alpha:]", "a", T), ("[:alpha:]", "b", F), ("[[:xdigit:]]+", "09afAF", T),
    ("\\d+", "0123", T), ("\\d", "\u0663", F), ("\\w", "\u00e9", F), ("\\D", "a", T), ("\\S+", "a-b", T),
    ("[^\\d]", "5", F), ("[\\d\\s]+", "1 2", T), ("\\W", "_", F),
    # Unicode general categories
    ("\\pL", "\u00e9", T), ("\\p{L}", "\u00e9", T), ("\\PL", "\u00e9", F), ("\\PL", "1", T),
    ("\\p{Lu}", "\u00c9", T), ("\\p{Lu}", "\u00e9", F), ("\\pN+", "\u06633", T), ("\\p{^L}", "1", T),
    ("[\\p{Lu}\\d]+", "A1", T), ("\\p{Any}", "\n", T), ("[^\\pL]", "a", F),
    # ASCII word boundary
    ("a\\b", "a", T), (".*\\bfoo\\b.*", "a foo b", T), (".*\\bfoo\\b.*", "afoo", F),
    ("\u00e9\\b", "\u00e9", F), ("a\\Bb", "ab", T),
    # escapes and literal text
    ("\\x41", "A", T), ("\\x{1F600}", "\U0001F600", T), ("\\101", "A", T), ("\\0", "\0", T),
    ("\\Qa.b\\E", "a.b", T), ("\\Qa.b\\E", "axb", F), ("\\Qa.b", "a.b", T), ("a\\.b", "a.b", T),
    ("\\n", "\n", T), ("\\t", "\t", T), ("[\\]]", "]", T), ("[]a]+", "]a", T), ("[a-]+", "-a", T),
    ("\\_", "_", T), ("a\\-b", "a-b", T),
    # repetition
    ("a{2}", "aa", T), ("a{2}", "aaa", F), ("a{2,}", "aaaa", T), ("a{1,2}", "aaa", F), ("a{,2}", "a{,2}", T),
    ("a{", "a{", T), ("(?U)a+", "aaa", T), ("a+?", "aaa", T), ("(ab){2}", "abab", T), ("a{0}", "", T),
    # glob-like fast paths
    ("foo.*bar", "foobar", T), ("foo.*oob", "foob", F), ("foo.*bar.*baz", "foo-bar-baz", T),
    ("foo.*bar.*baz", "foobazbar", F), (".+foo.+", "xfoox", T), (".+foo.+", "foox", F), (".+foo.+", "xfoo", F),
    (".*foo", "foo", T), (".+foo", "foo", F), ("foo.+", "foo", F), (".*a.*|b", "b", T), (".*a.*|b", "c", F),
    (".+.+", "a", F), (".+.+", "ab", T),
]

# (pattern, error message) mirroring Go's regexp/syntax errors.
ERRORS = [
    ("a(", "error parsing regexp: missing closing ): `a(`"),
    ("a)", "error parsing regexp: unexpected ): `a)`"),
    ("*a", "error parsing regexp: missing argument to repetition operator: `*`"),
    ("a**", "error parsing regexp: invalid nested repetition operator: `**`"),
    ("a*{2}", "error parsing regexp: invalid nested repetition operator: `*{2}`"),
    ("[a", "error parsing regexp: missing closing ]: `[a`"),
    ("[z-a]", "error parsing regexp: invalid character class range: `z-a`"),
    ("[[:foo:]]", "error parsing regexp: invalid character class range: `[:foo:]`"),
    ("\\1", "error parsing regexp: invalid escape sequence: `\\1`"),
    ("\\Z", "error parsing regexp: invalid escape sequence: `\\Z`"),
    ("\\e", "error parsing regexp: invalid escape sequence: `\\e`"),
    ("a{1001}", "error parsing regexp: invalid repeat count: `{1001}`"),
    ("a{3,2}", "error parsing regexp: invalid repeat count: `{3,2}`"),
    ("(?=a)", "error parsing regexp: invalid or unsupported Perl syntax: `(?=`"),
    ("(?!a)", "error parsing regexp: invalid or unsupported Perl syntax: `(?!`"),
    ("a\\", "error parsing regexp: trailing backslash at end of expression: ``"),
    ("(?P<a-b>x)", "error parsing regexp: invalid named capture: `(?P<a-b>`"),
    ("(?P<n>a)(?P<n>b)", "error parsing regexp: duplicate capture group name: `(?P<n>`"),
]


class RegexSemanticsTests(unittest.TestCase):
    def test_semantics_table(self):
        """Each pattern accepts or rejects the input exactly as Prometheus' RE2 matcher does."""
        for pattern, s, want in SEMANTICS:
            with self.subTest(pattern=pattern, s=s):
                r = Regex(pattern)
                self.assertEqual(r.matches(s), want)
                # the general RE2 program must agree with whichever fast path ran
                self.assertEqual(r.compiled.fullmatch(s) is not None, want)

    def test_invalid_regex_errors(self):
        """Invalid patterns raise a ValueError whose text has Go's "error parsing regexp" shape."""
        for pattern, msg in ERRORS:
            with self.subTest(pattern=pattern):
                with self.assertRaises(RegexError) as cm:
                    Regex(pattern)
                self.assertIsInstance(cm.exception, ValueError)
                self.assertEqual(str(cm.exception), msg)

    def test_unicode_scripts_match(self):
        """Unicode script classes such as \\p{Greek} select what RE2 (and Go) select."""
        cases = [("\\p{Greek}+", "\u03b1\u03b2", T), ("\\p{Greek}", "a", F), ("\\P{Greek}", "a", T),
                 ("\\p{^Greek}", "\u03b1", F), ("[\\p{Han}a]+", "a\u4e2d", T), ("[^\\p{Han}]", "\u4e2d", F),
                 ("(?i)\\p{Latin}x", "AX", T)]
        for pattern, s, want in cases:
            with self.subTest(pattern=pattern, s=s):
                self.assertEqual(Regex(pattern).matches(s), want)

    def test_go_only_errors(self):
        """\\C, an unknown class name, nested counts over 1000 and invalid UTF-8 are refused with Go's text."""
        cases = [("a\\Cb", "invalid escape sequence: `\\C`"),
                 ("\\p{Foo}", "invalid character class range: `\\p{Foo}`"),
                 ("(a{100}){100}", "invalid repeat count: `{100}`"),
                 ("((a{10}){10}){11}", "invalid repeat count: `{11}`"),
                 ("a\udcff", "invalid UTF-8: `\udcff`")]
        for pattern, msg in cases:
            with self.subTest(pattern=pattern):
                with self.assertRaises(RegexError) as cm:
                    Regex(pattern)
                self.assertEqual(str(cm.exception), "error parsing regexp: " + msg)
        Regex("(a{10}){100}")  # a product of exactly 1000 is allowed
        Regex("(a*){1000}")

    def test_too_large_for_re2_is_a_regexp_error(self):
        """A pattern whose RE2 program exceeds its 8 MiB budget is refused as "expression too large"."""
        with self.assertRaises(RegexError) as cm:
            Regex("\\pL{1000}")
        self.assertEqual(str(cm.exception), "error parsing regexp: expression too large: `\\pL{1000}`")

    def test_backtracking_pattern_is_linear(self):
        """`(a+)+b` over 40 `a`s (hours for a backtracking engine) answers at once, on both
        the selector path and the capturing path label_replace uses."""
        r = Regex("(a+)+b")
        self.assertEqual(r.kind, "regex")
        self.assertFalse(r.matches("a" * 40))
        self.assertIsNone(r.compiled.fullmatch("a" * 40))
        self.assertTrue(r.matches("a" * 40 + "b"))
        self.assertFalse(Matcher("=~", "x", "(a|aa)*c").matches("a" * 5000))

    def test_invalid_utf8_values_match_as_replacement_characters(self):
        """A label value holding undecodable bytes (surrogate-escaped) is matched, not an error."""
        r = Regex("a.b")
        self.assertTrue(r.matches("a\udcffb"))
        self.assertFalse(r.matches("a\udcff\udcfeb"))
        self.assertEqual(r.compiled.fullmatch("a\udcffb").group(0), "a\ufffdb")
        self.assertFalse(r.matches("a\ud800b"))  # not a surrogate-escaped byte: three bad bytes

    def test_no_python_re_on_user_patterns(self):
        """The general path runs on the RE2 library, never on Python's backtracking re."""
        with mock.patch.object(re, "compile", side_effect=AssertionError("re used")), \
                mock.patch.object(re, "fullmatch", side_effect=AssertionError("re used")):
            r = Regex("x(a+)+b[[:alpha:]]\\d{2}")
            self.assertTrue(r.matches("xaabz12"))
            self.assertEqual(r.compiled.fullmatch("xaabz12").group(1), "aa")

    def test_captures_follow_go_numbering(self):
        """The RE2 program keeps Go's capture groups and names for label_replace."""
        m = Regex("(?P<host>[^:]+):(\\d+)").compiled.fullmatch("db1:9090")
        self.assertEqual(m.group("host"), "db1")
        self.assertEqual(m.group(2), "9090")

    def test_fast_path_kinds(self):
        """Common regex shapes take a fast path instead of the regex engine."""
        kinds = {"foo": "literal", "foo|bar|baz": "set", ".*": "any", ".+": "nonempty", "foo.*": "glob",
                 ".*foo": "glob", ".*foo.*": "glob", "(?i)foo|bar": "fold_set", "^(foo|bar)$": "set",
                 "foo.*|.*bar": "glob_alternation", "(?-s).*": "regex", "[0-9]": "set", "a\\d+": "regex",
                 "(a|b)(c|d)": "set", "x|": "set"}
        for pattern, kind in kinds.items():
            with self.subTest(pattern=pattern):
                self.assertEqual(Regex(pattern).kind, kind)

    def test_literal_values(self):
        """literal_values lists every string a finite regex matches and is None otherwise."""
        self.assertEqual(Regex("foo|bar").literal_values(), {"foo", "bar"})
        self.assertEqual(Regex("(a|b)(c|d)?").literal_values(), {"a", "b", "ac", "ad", "bc", "bd"})
        self.assertEqual(Regex("^api-(v1|v2)$").literal_values(), {"api-v1", "api-v2"})
        self.assertEqual(Regex("x|").literal_values(), {"x", ""})
        self.assertEqual(Regex("(?i)123").literal_values(), {"123"})
        for pattern in (".*", "a+", "(?i)abc", "[^a]", "a(^b)", "[0-9]{3}"):
            self.assertIsNone(Regex(pattern).literal_values(), pattern)


ALPHABET = "ab\nA-"
WORDS = st.text(alphabet=ALPHABET, max_size=5)


def gen_regex():
    """Random RE2 patterns over a small alphabet, in the subset where Python's re with
    DOTALL and fullmatch has the same meaning (no \\d/\\w/\\b, no anchors, no flags)."""
    atom = st.sampled_from(["a", "b", "A", "-", ".", "[ab]", "[^a]", "\\n", "(?:a|)", "x"])
    quant = st.sampled_from(["", "", "*", "+", "?", "{2}", "{0,2}", "*?"])
    piece = st.tuples(atom, quant).map("".join)
    concat = st.lists(piece, max_size=4).map("".join)
    return st.lists(concat, min_size=1, max_size=3).map("|".join)


class RegexPropertyTests(unittest.TestCase):
    @settings(max_examples=300)
    @given(gen_regex(), WORDS)
    def test_agrees_with_python_re_on_common_subset(self, pattern, s):
        """On syntax both engines share, Regex matches exactly what re.fullmatch(DOTALL) does."""
        want = re.fullmatch(pattern, s, re.S) is not None
        self.assertEqual(Regex(pattern).matches(s), want)

    @settings(max_examples=300)
    @given(st.lists(st.sampled_from(["foo", "bar", "a", ".*", ".+", "b", "(?i)ab", "x|y", "", "(?i)B"]),
                    min_size=1, max_size=4).map("".join) | st.sampled_from(["foo|.*bar", ".+|b", "(?i)a|b"]),
           st.text(alphabet="fobarxyAB\n", max_size=8))
    def test_fast_paths_agree_with_translation(self, pattern, s):
        """Whatever fast path a pattern takes, it matches exactly what the compiled translation does."""
        r = Regex(pattern)
        self.assertEqual(r.matches(s), r.compiled.fullmatch(s) is not None, (pattern, r.kind))
        vals = r.literal_values()
        if vals is not None:
            self.assertEqual(r.matches(s), s in vals)


class MatcherTests(unittest.TestCase):
    def test_missing_label_is_empty_value(self):
        """Matchers treat an absent label as "" (so a!="x" selects series without a)."""
        self.assertTrue(Matcher("!=", "a", "x").matches(""))
        self.assertTrue(Matcher("=", "a", "").matches_empty())
        self.assertFalse(Matcher("!=", "a", "").matches_empty())
        self.assertTrue(Matcher("=~", "a", "x|").matches_empty())
        self.assertFalse(Matcher("=~", "a", ".+").matches_empty())
        self.assertTrue(Matcher("!~", "a", ".+").matches_empty())
        self.assertFalse(Matcher("!~", "a", ".*").matches(""))

    def test_kinds(self):
        """The four operators behave as their names say, regexes fully anchored."""
        self.assertTrue(Matcher("=", "a", "x").matches("x"))
        self.assertFalse(Matcher("!=", "a", "x").matches("x"))
        self.assertTrue(Matcher("=~", "a", "x.*").matches("xyz"))
        self.assertFalse(Matcher("=~", "a", "y").matches("xyz"))
        self.assertTrue(Matcher("!~", "a", "y").matches("xyz"))
        with self.assertRaises(ValueError):
            Matcher("==", "a", "x")
        with self.assertRaises(RegexError):
            Matcher("=~", "a", "(")

    def test_equality_value_is_not_a_regex(self):
        """An = matcher compares the value literally, dots and all."""
        self.assertFalse(Matcher("=", "a", "x.*").matches("xyz"))
        self.assertTrue(Matcher("=", "a", "x.*").matches("x.*"))

    def test_string_form(self):
        """str() renders the matcher as PromQL writes it, value quoted."""
        self.assertEqual(str(Matcher("=", "job", 'a"b\\c\n')), 'job="a\\"b\\\\c\\n"')
        self.assertEqual(str(Matcher("!~", "job", "x.*")), 'job!~"x.*"')
        self.assertEqual(Matcher("=", "a", "b"), Matcher("=", "a", "b"))
        self.assertEqual(len({Matcher("=", "a", "b"), Matcher("=", "a", "b")}), 1)


SERIES = [
    {"__name__": "up", "job": "api", "instance": "a:1"},
    {"__name__": "up", "job": "api", "instance": "b:1", "env": "prod"},
    {"__name__": "up", "job": "db", "instance": "c:1", "env": "dev"},
    {"__name__": "http_requests_total", "job": "api", "code": "200", "env": "prod"},
    {"__name__": "http_requests_total", "job": "api", "code": "500"},
    {"__name__": "errors", "env": "prod\nmultiline"},
]


def M(text):
    """Matcher from 'name op "value"' shorthand: M('job=~a|b')."""
    for op in ("!~", "=~", "!=", "="):
        if op in text:
            name, value = text.split(op, 1)
            return Matcher(op, name, value)
    raise ValueError(text)


class PostingsForMatchersTests(unittest.TestCase):
    CASES = [
        ["job=api"], ["job!=api"], ["env="], ["env!="], ["env=~prod|"], ["env!~prod|"], ["env=~.*"],
        ["env=~.+"], ["env!~.*"], ["env!~.+"], ["nosuch="], ["nosuch=x"], ["nosuch!=x"], ["nosuch=~.*"],
        ["nosuch=~.+"], ["job=api", "env!=prod"], ["job=~a.*", "code!~5.."], ["__name__=up", "env=~p.*|"],
        ["job=api", "job!=api"], ["env=~prod.*"], ["env=~(?i)PROD"], ["=x"], ["="], ["!=x"],
        ["job=~api|db|none"], ["job!~api|db"], ["code=~2.."], ["instance=~.*:1"], [],
    ]

    def check(self, ix, ms):
        got = postings_for_matchers(ix, ms)
        self.assertEqual(got.typecode, ix.typecode)
        self.assertEqual(list(got), ix.select(ms), [str(m) for m in ms])
        return got

    def test_selector_table(self):
        """Every documented empty-value and negation rule selects the same series as a brute-force scan."""
        for tc in "IQ":
            for with_tc in (False, True):
                ix = MemIndex(SERIES, typecode=tc, with_typecode=with_tc)
                for case in self.CASES:
                    with self.subTest(tc=tc, case=case):
                        self.check(ix, [M(c) for c in case])

    def test_empty_value_rules(self):
        """{a=""} selects series without a, {a!=""} those with it, and ".*" selects everything."""
        ix = MemIndex(SERIES)
        with_env = [r for r in ix.select([]) if "env" in ix.series_labels(r)]
        self.assertEqual(list(postings_for_matchers(ix, [M("env!=")])), with_env)
        self.assertEqual(len(postings_for_matchers(ix, [M("env=")])), len(SERIES) - len(with_env))
        self.assertEqual(len(postings_for_matchers(ix, [M("env=~.*")])), len(SERIES))

    def test_literal_regexes_do_not_scan_values(self):
        """A regex with a finite literal set looks up those values directly, without listing label values."""
        ix = MemIndex(SERIES)
        postings_for_matchers(ix, [M("job=~api|db")])
        self.assertNotIn(("label_values", "job"), ix.calls)
        ix.calls.clear()
        postings_for_matchers(ix, [M("job=api"), M("env=~.*")])
        self.assertFalse([c for c in ix.calls if c[0] == "label_values"])

    def test_result_is_a_fresh_array(self):
        """Mutating a result never changes the index's own postings."""
        ix = MemIndex(SERIES)
        before = list(ix.all_postings())
        for ms in ([M("nosuch!=x")], [M("job=api")], [M("job=none")]):
            postings_for_matchers(ix, ms).append(12345)
        self.assertEqual(list(ix.all_postings()), before)
        self.assertEqual(list(ix.postings("job", "api")), ix.select([M("job=api")]))

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sampled_from(["", "x", "y", "xy", "X", "x\ny"]),
                                    max_size=3), max_size=12),
           st.lists(st.tuples(st.sampled_from(["=", "!=", "=~", "!~"]), st.sampled_from(["a", "b", "c", "d"]),
                              st.sampled_from(["", "x", "y", "x|", "x|y", ".*", ".+", "x.*", ".*y", "(?i)x",
                                               "[xy]+", "x\ny", ".*\n.*", "X|", "x+|", "(?i)x.*",
                                               # literal prefix, then a regex: tried on the prefix's run only
                                               "xy*", "x(y|\n)+y?", "x\n?y"])),
                    max_size=4),
           st.sampled_from("IQ"))
    def test_matches_brute_force_oracle(self, series, specs, tc):
        """postings_for_matchers, label_names_for and label_values_for agree with a per-series scan."""
        ix = MemIndex(series, typecode=tc)
        ms = [Matcher(*s) for s in specs]
        want = ix.select(ms)
        self.assertEqual(list(postings_for_matchers(ix, ms)), want)
        # regexes that need a value scan: via postings, and via series labels on the survivors
        for ratio in (0, 10**9):
            with mock.patch.object(matchers, "SERIES_FILTER_RATIO", ratio):
                self.assertEqual(list(postings_for_matchers(ix, ms)), want)
        for use_series in (True, False):
            ix2 = MemIndex(series, typecode=tc, with_series_labels=use_series)
            if ms:
                self.assertEqual(label_names_for(ix2, ms), ix.names_of(want))
                for name in ("a", "b", "d"):
                    self.assertEqual(label_values_for(ix2, name, ms), ix.values_of(want, name))

    def test_label_helpers_without_matchers(self):
        """With no matchers the label helpers list every name and value in the index."""
        ix = MemIndex(SERIES)
        self.assertEqual(label_names_for(ix), ["__name__", "code", "env", "instance", "job"])
        self.assertEqual(label_values_for(ix, "job"), ["api", "db"])
        self.assertEqual(label_values_for(ix, "job", [M("__name__=up"), M("env=prod")]), ["api"])
        self.assertEqual(label_names_for(ix, [M("job=db")]), ["__name__", "env", "instance", "job"])

    def test_postings_for_values_hook_is_used(self):
        """An index offering postings_for_values gets one call per multi-value matcher."""
        ix = MemIndex(SERIES)
        seen = []

        def pfv(name, values):
            seen.append((name, list(values)))
            return postings.union_many([ix.postings(name, v) for v in values])
        ix.postings_for_values = pfv
        got = postings_for_matchers(ix, [M("job=~api|db")])
        self.assertEqual(list(got), ix.select([M("job=~api|db")]))
        self.assertEqual(seen, [("job", ["api", "db"])])


if __name__ == "__main__":
    unittest.main()
