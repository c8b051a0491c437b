"""PromQL conformance: Prometheus' promqltest scripts run against urdar's evaluator.

One test per top-level script of the pinned copy in tests/promql/testdata/ (its README names the
upstream commit; MANIFEST pins every file's bytes, checked here too). A case listed in
tests/promql/known_failures.txt may fail; any other failure is a regression, and a listed
case that now passes fails too, so the list only shrinks. Failures in the experimental files
(limit, info, ...) are reported as skips. Run `python -m tests.promql.conformance -v` for a
per-file table and every failure; with `pytest -s` each file prints its counts and skips.
"""

import hashlib
import os
import re
import unittest

from tests.promql import TESTDATA
from tests.promql import conformance as C

KNOWN_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "known_failures.txt")


def load_known():
    known = {}
    if not os.path.exists(KNOWN_PATH):
        return known
    with open(KNOWN_PATH) as f:
        for ln in f:
            ln = ln.split("#", 1)[0].strip()
            if not ln:
                continue
            name, line = ln.rsplit(":", 1)
            known.setdefault(name, set()).add(int(line))
    return known


KNOWN = load_known()
TOTALS = {"pass": 0, "fail": 0, "skip": 0}


class ConformanceTests(unittest.TestCase):
    """Every float case of Prometheus' PromQL test scripts evaluates as in Prometheus 3.x."""

    def check_file(self, path):
        name = os.path.basename(path)
        stem = name[:-len(".test")]
        outs = C.Runner().run_file(path)
        known = KNOWN.get(name, set())
        regressions, fixed = [], []
        counts = {"pass": 0, "fail": 0, "skip": 0}
        for o in outs:
            if o.status == "fail" and stem in C.EXPERIMENTAL_FILES:
                o.status, o.reason = "skip", "experimental (%s): %s" % (stem, o.reason[:120])
            counts[o.status] += 1
            if o.status == "fail" and o.line not in known:
                regressions.append(o)
            if o.status == "pass" and o.line in known:
                fixed.append(o)
        for k in counts:
            TOTALS[k] += counts[k]
        print("\n%s: pass %d fail %d (known) skip %d" % (name, counts["pass"], counts["fail"],
                                                          counts["skip"]))
        for o in outs:
            if o.status == "skip":
                print("  skip %s:%d %s -- %s" % (name, o.line, o.expr, o.reason))
        print("  running total: pass %(pass)d fail %(fail)d skip %(skip)d" % TOTALS)
        msgs = ["%s:%d %s\n    %s" % (name, o.line, o.expr, o.reason[:300]) for o in regressions]
        msgs += ["%s:%d now passes: remove it from known_failures.txt" % (name, o.line)
                 for o in fixed]
        if msgs:
            self.fail("\n".join(msgs))


def _make(path):
    def test(self):
        self.check_file(path)
    test.__doc__ = "%s evaluates as Prometheus does (known failures aside)." % os.path.basename(path)
    return test


def git_blob_sha1(path):
    """The hash `git hash-object` prints for the file (how MANIFEST names upstream's bytes)."""
    with open(path, "rb") as f:
        data = f.read()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class PinnedDataTests(unittest.TestCase):
    """The in-repo conformance data is complete and unedited, so no case is silently lost."""

    def test_folder_matches_manifest(self):
        """tests/promql/testdata holds exactly the files MANIFEST lists, byte for byte."""
        with open(os.path.join(TESTDATA, "MANIFEST")) as f:
            want = {name: sha for sha, name in (ln.split() for ln in f if ln.strip())}
        have = {n for n in os.listdir(TESTDATA) if n not in ("MANIFEST", "README.md")}
        self.assertEqual(have, set(want))
        got = {n: git_blob_sha1(os.path.join(TESTDATA, n)) for n in want}
        self.assertEqual(got, want)

    def test_one_conformance_test_per_script(self):
        """Every pinned script has its conformance test, and the runner reads only this copy."""
        scripts = [n for n in os.listdir(TESTDATA) if n.endswith(".test")]
        self.assertGreaterEqual(len(scripts), 21)
        self.assertEqual(sorted(C.test_files()), sorted(os.path.join(TESTDATA, n) for n in scripts))
        for n in scripts:
            self.assertTrue(hasattr(ConformanceTests, "test_" + re.sub(r"\W", "_", n[:-5])), n)


for _p in C.test_files():
    setattr(ConformanceTests, "test_" + re.sub(r"\W", "_", os.path.basename(_p)[:-5]), _make(_p))
