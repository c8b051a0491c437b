"""Append outcome codes: one definition in the engine, imported by everything else."""
import os
import re
import unittest

from urdar.engine import outcomes as O

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CODES = ("OK", "OUT_OF_ORDER", "DUPLICATE", "TOO_OLD", "SERIES_LIMIT", "SKIPPED", "DUPLICATE_SAME",
         "OUT_OF_BOUNDS")


class OutcomeTests(unittest.TestCase):
    def test_codes_are_distinct_and_named(self):
        """Every outcome has its own code and a name for logs and counters."""
        values = [getattr(O, name) for name in CODES]
        self.assertEqual(sorted(values), list(range(len(CODES))))
        for name in CODES:
            self.assertEqual(O.NAMES[getattr(O, name)].replace("duplicate_timestamp", "duplicate"),
                             name.lower())

    def test_defined_once(self):
        """No module outside engine/outcomes.pxd assigns a number to an outcome code."""
        pattern = re.compile(r"^\s*(APPEND_)?(%s)\s*=\s*\d" % "|".join(CODES), re.M)
        found = []
        for d, _, files in os.walk(os.path.join(ROOT, "urdar")):
            for f in files:
                if f.endswith((".py", ".pyx", ".pxd", ".pyi")):
                    path = os.path.join(d, f)
                    with open(path, encoding="utf-8") as fh:
                        if pattern.search(fh.read()):
                            found.append(os.path.relpath(path, ROOT))
        self.assertEqual(found, [os.path.join("urdar", "engine", "outcomes.pxd")])
