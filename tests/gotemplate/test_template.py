"""urdar.gotemplate's own behaviour: newer Go features than the oracle's Go, Python data, limits."""
import ast
import os
import unittest

import urdar.gotemplate

from urdar.gotemplate import ExecError, LimitError, ParseError, StringMap, Template


def run(text, data=None, **kw):
    return Template("t", **kw).parse(text).execute(data)


class Labels(dict):
    """A dict subclass with a method, as Go's named map types have."""

    def Names(self):
        return sorted(self)


class Alert:
    def __init__(self, name):
        self.Name = name
        self._secret = "hidden"

    def Greet(self, who):
        return "%s greets %s" % (self.Name, who)


class NewerGoTests(unittest.TestCase):
    def test_range_over_int(self):
        """{{range 3}} counts 0, 1, 2 as Go 1.22+ does, and an else runs for 0."""
        self.assertEqual(run("{{range 3}}{{.}}{{end}}|{{range $i := 2}}{{$i}}{{end}}|{{range 0}}x{{else}}none{{end}}"),
                         "012|01|none")

    def test_range_over_int_two_variables(self):
        """Ranging over an integer with two variables is an error, as in Go."""
        with self.assertRaisesRegex(ExecError, "can't use 3 to iterate over more than one variable"):
            run("{{range $i, $e := 3}}{{end}}")

    def test_else_with(self):
        """{{else with}} chains like {{else if}} (Go 1.23), setting dot to its own value."""
        t = "{{with .a}}A{{.}}{{else with .b}}B{{.}}{{else}}none{{end}}"
        self.assertEqual(run(t, {"a": 1, "b": 2}), "A1")
        self.assertEqual(run(t, {"a": 0, "b": 2}), "B2")
        self.assertEqual(run(t, {}), "none")


class PythonDataTests(unittest.TestCase):
    def test_object_fields_and_methods(self):
        """Attributes are fields and callable attributes are methods taking the arguments."""
        self.assertEqual(run('{{.Name}}: {{.Greet "bob"}}', Alert("al")), "al: al greets bob")

    def test_private_attributes_are_not_reachable(self):
        """Names starting with an underscore are not fields, so templates cannot reach internals."""
        with self.assertRaisesRegex(ExecError, "can't evaluate field _secret in type Alert"):
            run("{{._secret}}", Alert("al"))

    def test_method_on_dict_subclass_wins_over_key(self):
        """A map type's methods are found before its keys, as Go looks up methods first."""
        self.assertEqual(run("{{.Names}} {{.b}}", Labels(b="2", a="1")), "[a b] 2")

    def test_parse_once_execute_many(self):
        """One parsed template executes again and again with different data."""
        t = Template("t").parse("{{.}}!")
        self.assertEqual([t.execute(i) for i in range(3)], ["0!", "1!", "2!"])

    def test_definitions_across_parses(self):
        """A later parse replaces a definition, but an empty one does not erase it (as in Go)."""
        t = Template("t").parse('{{define "x"}}one{{end}}{{template "x"}}')
        t.parse('{{define "x"}}two{{end}}', name="other")
        self.assertEqual(t.execute(), "two")
        t.parse('{{define "x"}}{{end}}', name="third")
        self.assertEqual(t.execute(), "two")
        self.assertEqual(t.execute(name="x"), "two")

    def test_custom_function_arity(self):
        """A plain Python function gets Go's argument count check from its signature."""
        t = Template("t", {"twice": lambda s: s + s})
        self.assertEqual(t.parse('{{twice "ab"}}').execute(), "abab")
        with self.assertRaisesRegex(ExecError, "wrong number of args for twice: want 1 got 2"):
            Template("t", {"twice": lambda s: s + s}).parse('{{twice "a" "b"}}').execute()

    def test_function_error_is_wrapped(self):
        """An exception in a function becomes Go's "error calling NAME: ..." execution error."""
        def boom():
            raise ValueError("no luck")
        with self.assertRaisesRegex(ExecError, r'^template: t:1:2: executing "t" at <boom>: error calling boom: no luck$'):
            Template("t", {"boom": boom}).parse("{{boom}}").execute()

    def test_missingkey_zero_on_string_maps(self):
        """Under missingkey=zero a StringMap's missing key is "" and a plain dict's is <no value>."""
        data = {"labels": StringMap(job="api"), "other": {"job": "api"}}
        self.assertEqual(run("[{{.labels.nope}}][{{.other.nope}}]", data, missing_key="zero"), "[][<no value>]")

    def test_unknown_option(self):
        """An unknown missingkey option is refused when the template is made."""
        with self.assertRaisesRegex(ValueError, "unrecognized option: missingkey=maybe"):
            Template("t", missing_key="maybe")

    def test_unknown_template_name(self):
        """Executing a name that was never defined says so as Go does."""
        with self.assertRaisesRegex(ExecError, 'no template "nope" associated with template "t"'):
            Template("t").parse("x").execute(name="nope")


class LimitTests(unittest.TestCase):
    def test_step_limit_stops_long_loops(self):
        """A template that runs too long stops with a LimitError naming the limit."""
        with self.assertRaisesRegex(LimitError, "execution exceeded the limit of 1000 steps"):
            run("{{range 100000}}{{.}}{{end}}", max_steps=1000)

    def test_output_limit(self):
        """Output beyond max_output_bytes stops execution with a LimitError."""
        with self.assertRaisesRegex(LimitError, "output exceeded the limit of 100 bytes"):
            run("{{range .}}0123456789{{end}}", list(range(20)), max_output_bytes=100)

    def test_value_doubling_is_bounded(self):
        """A string doubling in a loop is stopped by the size limit before it exhausts memory."""
        t = '{{$x := "ab"}}{{range 100}}{{$x = printf "%s%s" $x $x}}{{end}}{{len $x}}'
        with self.assertRaisesRegex(LimitError, "value exceeded the limit of 4096 bytes"):
            run(t, max_output_bytes=4096)

    def test_recursive_template_depth(self):
        """Unbounded {{template}} recursion stops at max_depth instead of exhausting the stack."""
        with self.assertRaisesRegex(LimitError, r"exceeded maximum template depth \(10\)"):
            run('{{define "r"}}x{{template "r" .}}{{end}}{{template "r"}}', max_depth=10)

    def test_huge_printf_width_is_ignored(self):
        """A printf width beyond 10^6 is refused as Go's fmt refuses it, so it cannot allocate gigabytes."""
        self.assertEqual(run('{{printf "%999999999d|x" 7}}|{{printf "%*d" 99999999 7}}'),
                         "%!(NOVERB)%!(EXTRA int=7)|%!(BADWIDTH)7")

    def test_deep_nesting_is_a_parse_error(self):
        """Deeply nested parentheses are refused at parse time, not with a Python crash."""
        with self.assertRaises(ParseError):
            run("{{" + "(" * 5000 + "1" + ")" * 5000 + "}}")


class LayeringTests(unittest.TestCase):
    def test_imports_nothing_else_from_urdar(self):
        """urdar/gotemplate is a low-level utility: its modules import only each other, the leaf
        urdar.gostrconv (Go's string quoting) and outside packages."""
        root = os.path.dirname(urdar.gotemplate.__file__)
        for name in sorted(os.listdir(root)):
            if not name.endswith(".py"):
                continue
            with open(os.path.join(root, name)) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level == 0:
                    self.assertFalse((node.module or "").startswith("urdar")
                                     and node.module != "urdar.gostrconv", (name, node.module))
                elif isinstance(node, ast.ImportFrom):
                    self.assertEqual(node.level, 1, (name, node.module))
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        self.assertFalse(alias.name.startswith("urdar"), (name, alias.name))
