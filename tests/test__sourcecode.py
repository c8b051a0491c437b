"""Lint is a test too: the Python sources have no unused imports, undefined names or dead locals."""
import os
import unittest

import pyflakes.api
import pyflakes.reporter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Collect(pyflakes.reporter.Reporter):
    def __init__(self):
        self.problems = []

    def unexpectedError(self, filename, msg):
        self.problems.append("%s: %s" % (filename, msg))

    def syntaxError(self, filename, msg, lineno, offset, text):
        self.problems.append("%s:%s: %s" % (filename, lineno, msg))

    def flake(self, message):
        self.problems.append(str(message))


class SourceCodeTests(unittest.TestCase):
    def test_pyflakes(self):
        """pyflakes reports nothing for urdar/, tests/ and benchmarks/."""
        report = _Collect()
        paths = [os.path.join(ROOT, d) for d in ("urdar", "tests", "benchmarks")]
        pyflakes.api.checkRecursive(paths, report)
        self.assertEqual(report.problems, [], "\n" + "\n".join(report.problems))
