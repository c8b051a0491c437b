"""Parity with Prometheus: promtool rule unit-test files that Debian's `promtool test rules`
passes give the same recorded samples and firing alerts through urdar's rule manager (rules
evaluated by urdar's PromQL on a fake clock, results written back through the Pusher seam and
read by instant queries through the real Querier)."""
import glob
import os
import shutil
import subprocess
import unittest

from tests.support.rules import run_promtool_file

HERE = os.path.join(os.path.dirname(__file__), "testdata", "rules")
FILES = sorted(glob.glob(os.path.join(HERE, "*_test.yml")))


class PromtoolParityTests(unittest.TestCase):
    def test_files_exist(self):
        self.assertGreaterEqual(len(FILES), 2)

    @unittest.skipIf(shutil.which("promtool") is None, "promtool not installed")
    def test_promtool_passes(self):
        """The expectations are Prometheus' own: promtool passes every file."""
        for path in FILES:
            out = subprocess.run(["promtool", "test", "rules", os.path.basename(path)], cwd=HERE,
                                 capture_output=True, text=True, timeout=120)
            self.assertEqual(out.returncode, 0, "%s: %s%s" % (path, out.stdout, out.stderr))
            self.assertIn("SUCCESS", out.stdout)

    def test_urdar_matches(self):
        for path in FILES:
            self.assertEqual(run_promtool_file(path), [], path)

    def test_harness_can_fail(self):
        """A wrong expectation is reported (the harness compares, it does not just run)."""
        import tempfile
        with open(os.path.join(HERE, "basic_test.yml")) as f:
            text = f.read().replace("ratio 90%", "ratio 91%").replace("value: 300", "value: 301")
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copy(os.path.join(HERE, "basic_rules.yml"), tmp)
            bad = os.path.join(tmp, "bad_test.yml")
            with open(bad, "w") as f:
                f.write(text)
            failures = run_promtool_file(bad)
        self.assertEqual(len(failures), 4, failures)
        self.assertIn("ratio 91%", failures[0])
