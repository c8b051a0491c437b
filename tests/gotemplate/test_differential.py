"""urdar.gotemplate against Go's text/template itself (Debian's golang-go builds the oracle)."""
import unittest

from tests.gotemplate.cases import CASES, DATA, MISSINGKEY_CASES
from tests.support.gotemplate_oracle import run_go
from urdar.gotemplate import Template, TemplateError


def run_py(template, data, missing_key="default"):
    """(output, error text) as urdar's Template gives them; output is empty on error, like the table's."""
    try:
        return Template("t", missing_key=missing_key).parse(template).execute(data), ""
    except TemplateError as e:
        return "", str(e)


class DifferentialTests(unittest.TestCase):
    def test_table_matches_go(self):
        """Every template of the table prints what Go prints, or fails with Go's error text."""
        cases = [(t, DATA if d is None else d) for t, d in CASES]
        cases += [(t, None) for t, d in CASES[:60]]      # and with nil data
        self.assertGreaterEqual(len(cases), 150)
        for (template, data), (go_out, go_err) in zip(cases, run_go(cases)):
            with self.subTest(template=template):
                self.assertEqual(run_py(template, data), ("" if go_err else go_out, go_err))

    def test_missingkey_options_match_go(self):
        """Option missingkey=zero and missingkey=error behave as Go's for maps of strings and of values."""
        for option in ("zero", "error"):
            cases = [(t, DATA if d is None else d) for t, d in MISSINGKEY_CASES]
            for (template, data), (go_out, go_err) in zip(cases, run_go(cases, "missingkey=" + option)):
                with self.subTest(template=template, option=option):
                    self.assertEqual(run_py(template, data, option), ("" if go_err else go_out, go_err))
