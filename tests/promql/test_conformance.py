"""PromQL conformance: Prometheus' promqltest scripts run against urdar's evaluator.

One test per top-level `shared/conformance/promql/*.test` file (URDAR_PROMQL_TESTDATA
overrides the folder; the tests skip when it is absent). A case listed in
tests/promql/known_failures.txt may fail; any other failure is a regression, and a listed
case that now passes fails too, so the list only shrinks. Failures in the experimental files
(limit, info, ...) are reported as skips. Run `python -m tests.promql.conformance -v` for a
per-file table and every failure; with `pytest -s` each file prints its counts and skips.
"""

import os
import re
import unittest

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


if not C.test_files():
    class ConformanceDataMissing(unittest.TestCase):
        """The conformance data is optional in a checkout."""

        @unittest.skip("no promqltest data at %s" % C.TESTDATA)
        def test_data_present(self):
            """Skipped: the shared conformance folder is absent."""
else:
    for _p in C.test_files():
        setattr(ConformanceTests, "test_" + re.sub(r"\W", "_", os.path.basename(_p)[:-5]),
                _make(_p))
