"""Generated templates (hypothesis, from a small grammar of text/template) run by urdar and by Go.

urdar never raises anything but TemplateError, fails exactly when Go fails, and prints what Go
prints. Ranging over integers is left out of the grammar: Debian's Go (1.19) predates it.
Printf gets its own generator: every flag, width, precision and verb against every kind of value.
"""
import json
import unittest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gotemplate.cases import DATA
from tests.support.gotemplate_oracle import run_go
from urdar.gotemplate import Template, TemplateError

FIELDS = [".a", ".b", ".s", ".e", ".z", ".t", ".n", ".l", ".ls", ".m", ".m.k1", ".missing",
          ".nested.inner.deep", ".mixed", ".neg", ".fl", "$", "$.s", ".", ".name", ".x.y",
          "$.nested.list", "$.labels"]
LITERALS = ["1", "0", "-3", "2.5", "1e3", "0x10", "'a'", '"x"', '""', "`r`", "true", "false",
            '"a b"', '"%d"', '"%v-%s"', '"%5.1f"', '"%q"']
FUNCS = ["print", "println", "len", "index", "slice", "eq", "ne", "lt", "le", "gt", "ge", "and",
         "or", "not", "html", "js", "urlquery", "printf"]
JUNK = ["{{", "}}", "{{-", "-}}", "(", ")", '"', "$x", ".", "|", ":=", "/*", "*/", "@", "else", "end",
        "if", "range", "{{end}}", "{{else}}", "{{break}}"]


def operand(depth):
    base = st.sampled_from(FIELDS + LITERALS)
    if depth <= 0:
        return base
    paren = pipeline(depth - 1).map(lambda p: "(" + p + ")")
    chained = st.tuples(paren, st.sampled_from([".a", ".name", ".inner.deep", ".k1"])).map("".join)
    return st.one_of(base, base, paren, chained)


def command(depth):
    call = st.tuples(st.sampled_from(FUNCS), st.lists(operand(depth), max_size=3)).map(
        lambda fa: " ".join([fa[0]] + fa[1]))
    return st.one_of(operand(depth), call)


def pipeline(depth):
    return st.lists(command(depth), min_size=1, max_size=3).map(" | ".join)


def action(depth):
    trim = st.sampled_from(["", "- "])
    rtrim = st.sampled_from(["", " -"])
    return st.tuples(trim, pipeline(depth), rtrim).map(lambda t: "{{" + t[0] + t[1] + t[2] + "}}")


def body(depth):
    text = st.sampled_from(["a", " ", "\n", "x y", ",", ""])
    parts = [text, action(depth)]
    if depth > 0:
        parts.append(control(depth - 1))
        parts.append(st.sampled_from(['{{$x := 1}}{{$x = 2}}{{$x}}', "{{/* c */}}", "{{- /* c */ -}}",
                                      '{{$v := .l}}{{index $v 1}}', '{{ $u := .nested }}{{ $u.inner.deep }}']))
    return st.lists(st.one_of(*parts), max_size=4).map("".join)


def control(depth):
    cond = pipeline(depth)
    rng = st.sampled_from([".l", ".ls", ".m", ".le", ".missing", ".nested.list", "$i, $e := .l",
                           "$k, $v := .m", "$e := .nested.list", "$i, $e := .mixed", "$.ls"])
    return st.one_of(
        st.tuples(cond, body(depth), st.one_of(st.none(), body(depth))).map(
            lambda t: "{{if %s}}%s%s{{end}}" % (t[0], t[1], "" if t[2] is None else "{{else}}" + t[2])),
        st.tuples(cond, body(depth)).map(lambda t: "{{with %s}}%s{{end}}" % t),
        st.tuples(cond, cond, body(depth), body(depth)).map(
            lambda t: "{{if %s}}%s{{else if %s}}%s{{end}}" % (t[0], t[2], t[1], t[3])),
        st.tuples(cond, body(depth)).map(lambda t: "{{with $w := %s}}%s{{else}}none{{end}}" % t),
        st.tuples(st.sampled_from(["B", "C"]), cond, body(depth)).map(
            lambda t: '{{block "%s" %s}}%s{{end}}' % t),
        st.tuples(rng, body(depth), st.sampled_from(["", "{{break}}", "{{continue}}", "{{if $}}{{break}}{{end}}"]),
                  st.one_of(st.none(), body(depth))).map(
            lambda t: "{{range %s}}%s%s%s{{end}}" % (t[0], t[2], t[1], "" if t[3] is None else "{{else}}" + t[3])),
        st.tuples(st.sampled_from(["T", "U"]), body(depth)).map(
            lambda t: '{{define "%s"}}%s{{end}}{{template "%s" .}}' % (t[0], t[1], t[0])),
    )


def with_junk(template):
    """Templates with a token inserted at a random place: mostly malformed, to compare errors."""
    return st.tuples(template, st.sampled_from(JUNK), st.integers(0, 1000)).map(
        lambda t: t[0][:t[2] % (len(t[0]) + 1)] + t[1] + t[0][t[2] % (len(t[0]) + 1):])


TEMPLATES = st.one_of(body(2), body(2), with_junk(body(2)))


def run_py(text):
    try:
        return Template("t", max_steps=100_000).parse(text).execute(DATA), ""
    except TemplateError as e:
        return "", str(e)


class GeneratedTemplateTests(unittest.TestCase):
    @settings(max_examples=40, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(TEMPLATES, min_size=10, max_size=25))
    def test_generated_templates_agree_with_go(self, templates):
        """Each generated template gives Go's output, or fails where Go fails (never another exception)."""
        for text, (go_out, go_err) in zip(templates, run_go([(t, DATA) for t in templates])):
            out, err = run_py(text)
            self.assertEqual(bool(err), bool(go_err), "template %r: urdar %r, Go %r" % (text, err, go_err))
            if not go_err:
                self.assertEqual(out, go_out, "template %r" % text)
            else:
                self.assertEqual(err, go_err, "template %r" % text)


PRINTF_FLAGS = ["", "-", "+", "#", " ", "0", "-0", "+0", "# ", "+ "]
PRINTF_VERBS = list("vdsfeEgGxXoqtcbUT%FO")
PRINTF_ARGS = ["1", "-1", "0", "255", "65", "1234567", "3.14159", "-2.5", "0.0", "1e21", "1e-7",
               "100000.0", '"str"', '""', '"h\u00e9llo"', '"a\\tb"', "true", "false", "nil", ".l",
               ".ls", ".m", ".n", ".missing", "'x'", "-0.0", "0x7fffffff"]
PRINTF_DATA = {"l": [1, 2], "ls": ["a", "b"], "m": {"k": 1.5}, "n": None}

spec = st.tuples(st.sampled_from(["", "x", " "]), st.sampled_from(PRINTF_FLAGS),
                 st.sampled_from(["", "1", "5", "12", "*"]),
                 st.sampled_from(["", ".", ".0", ".2", ".5", ".*"]),
                 st.sampled_from(PRINTF_VERBS)).map(lambda t: t[0] + "%" + "".join(t[1:]))
PRINTF = st.tuples(st.lists(spec, min_size=1, max_size=3).map("".join),
                   st.lists(st.sampled_from(PRINTF_ARGS), max_size=4)).map(
    lambda t: "{{printf %s %s}}" % (json.dumps(t[0]), " ".join(t[1])))


class GeneratedPrintfTests(unittest.TestCase):
    @settings(max_examples=30, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(PRINTF, min_size=30, max_size=60))
    def test_printf_agrees_with_go(self, templates):
        """printf with generated verbs, flags, widths, precisions and arguments prints what Go's fmt prints."""
        for text, (go_out, go_err) in zip(templates, run_go([(t, PRINTF_DATA) for t in templates])):
            try:
                out, err = Template("t").parse(text).execute(PRINTF_DATA), ""
            except TemplateError as e:
                out, err = "", str(e)
            self.assertEqual((out, err), ("" if go_err else go_out, go_err), "template %r" % text)
