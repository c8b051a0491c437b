"""PromQL regexes (selectors and label_replace) run on RE2: linear time, GIL released."""

import sys
import threading
import unittest

from urdar.engine.matchers import Regex
from urdar.promql.engine import Engine
from tests.support.headstore import HeadStore

EVIL = "(a+)+b"  # exponential for a backtracking engine on a run of "a"s with no "b"


class PathologicalRegexTests(unittest.TestCase):
    """Patterns that make backtracking engines explode answer like any other query."""

    def setUp(self):
        self.st = HeadStore()
        self.addCleanup(self.st.close)
        self.st.append({"__name__": "a" * 40, "v": "a" * 40}, [(0, 1.0)])
        self.st.append({"__name__": "a" * 40 + "b", "v": "a" * 40 + "b"}, [(0, 2.0)])
        self.e = Engine(self.st)

    def test_selector_regex_is_linear(self):
        """`{__name__=~"(a+)+b"}` over a name of 40 `a`s selects only the series that ends in b."""
        r = self.e.instant('{__name__=~"%s"}' % EVIL, 1000)
        self.assertEqual([dict(labels)["v"] for labels, _ in r.value], ["a" * 40 + "b"])
        r = self.e.instant('{__name__!~"%s", v=~"a.*"}' % EVIL, 1000)
        self.assertEqual([dict(labels)["v"] for labels, _ in r.value], ["a" * 40])

    def test_label_replace_regex_is_linear(self):
        """label_replace with `(a+)+b` leaves 40 `a`s untouched and rewrites the match, with captures."""
        q = 'label_replace({__name__=~"a+b?"}, "dst", "$1-x", "v", "(a+)+b")'
        r = self.e.instant(q, 1000)
        got = sorted((dict(labels)["v"], dict(labels).get("dst")) for labels, _ in r.value)
        self.assertEqual(got, [("a" * 40, None), ("a" * 40 + "b", "a" * 40 + "-x")])


class GILTests(unittest.TestCase):
    """A long regex match does not stop the rest of the process."""

    def test_match_releases_the_gil(self):
        """Another Python thread runs while a thread is inside an RE2 match."""
        r = Regex("[xy]*z")
        self.assertEqual(r.kind, "regex")
        subject = "x" * 2_000_000
        in_match, started, seen, stop = [], threading.Event(), [], []

        def worker():
            in_match.append(True)
            started.set()
            for _ in range(50):  # bounded: other threads of the process may take some turns
                if stop:
                    break
                r.matches(subject)  # the only points where this thread lets go of the GIL
            in_match.pop()

        # With a huge switch interval the interpreter never preempts the worker: the main
        # thread gets the GIL back while in_match is set only if a match releases it.
        old = sys.getswitchinterval()
        sys.setswitchinterval(1000)
        try:
            t = threading.Thread(target=worker)
            t.start()
            started.wait()
            seen.append(bool(in_match))
            stop.append(True)
            t.join()
        finally:
            sys.setswitchinterval(old)
        self.assertEqual(seen, [True])
