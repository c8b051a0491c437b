"""Appends to one head from several threads at once (striped series locks): every outcome
agrees with what reaches memory and what the WAL replays, with series disjoint between the
threads, shared by them, and created by both at the same time."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import unittest

from urdar.engine import outcomes as O
from urdar.engine.labels import encode_labels, labels_dict
from urdar.engine.matchers import Matcher

from tests.engine.test_head import HOUR, HeadTestCase, batch

ROUNDS = 60
OWN = 40         # series only one thread pushes
SHARED = 40      # series both threads push, with clashing timestamps and values
NEW = 4          # series created per round by each thread alone, and by both


def _labels(kind, i):
    return {"__name__": "m_" + kind, "i": str(i)}


def _round(thread, r):
    """[(labels, [(t, v)])] that `thread` (0 or 1) pushes in round r."""
    series = []
    base = 1_000_000 + r * 1000
    for i in range(OWN):
        series.append((_labels("own%d" % thread, i), [(base + i, float(r))]))
    # shared: the same timestamp in some rounds (duplicate, equal or not), the other thread's
    # newer sample first in others (out of order for the later one), several per batch
    for i in range(SHARED):
        off = (r + thread * (i % 3)) % 3
        v = float(r * 10 + (thread if i % 2 else 0))
        series.append((_labels("shared", i), [(base + off, v), (base + 500 + off, v)]))
    for i in range(NEW):
        series.append((_labels("new%d" % thread, r * NEW + i), [(base, 1.0)]))
        series.append((_labels("newshared", r * NEW + i), [(base + thread, float(thread))]))
    return series


class ConcurrentAppendTests(HeadTestCase):
    def _run(self, head, readers=1):
        results = {0: [], 1: []}
        errors = []
        start = threading.Barrier(2 + readers)

        def writer(k):
            try:
                start.wait()
                for r in range(ROUNDS):
                    series = _round(k, r)
                    cols = batch(series)
                    head.append_batch(*cols)
                    outs = iter(cols[6])
                    for labels, samples in series:
                        for t, v in samples:
                            results[k].append((tuple(sorted(labels.items())), t, v, next(outs)))
            except BaseException as e:    # reported by the main thread
                errors.append(e)

        def reader():
            try:
                start.wait()
                for _ in range(ROUNDS):
                    for key, ts, vs in head.select([Matcher("=~", "__name__", "m_.*")]):
                        if list(ts) != sorted(set(ts)):
                            errors.append(AssertionError("unsorted read of %r: %r" % (key, list(ts))))
                    head.label_values_for("i")
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=writer, args=(k,)) for k in (0, 1)]
        threads += [threading.Thread(target=reader) for _ in range(readers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        return results[0] + results[1]

    def _expected(self, results):
        """series -> sorted [(t, v)] of every sample some thread got OK for."""
        want = {}
        for labels, t, v, out in results:
            self.assertIn(out, (O.OK, O.OUT_OF_ORDER, O.DUPLICATE, O.DUPLICATE_SAME), (labels, t, v))
            if out == O.OK:
                want.setdefault(labels, []).append((t, v))
        for samples in want.values():
            samples.sort()
        return want

    def _assert_stored(self, head, want, ooo):
        got = self._stored(head)
        if not ooo:
            self.assertEqual(got, want)
            return got
        # As Prometheus: an out-of-order sample at the timestamp of an in-order one is
        # accepted too, and reads keep the in-order one; which of the two threads' samples
        # was in order is the race's to decide.
        self.assertEqual(set(got), set(want))
        for labels, samples in got.items():
            self.assertEqual([t for t, _ in samples], sorted({t for t, _ in want[labels]}), labels)
            for s in samples:
                self.assertIn(s, want[labels], labels)
        return got

    def _stored(self, head):
        got = {}
        for key, ts, vs in head.select([Matcher("=~", "__name__", "m_.*")]):
            got[tuple(sorted(labels_dict(key).items()))] = list(zip(ts, vs))
        return got

    def _check(self, **kw):
        head = self.open(samples_per_chunk=8, **kw)      # small chunks: many concurrent cuts
        results = self._run(head)
        want = self._expected(results)
        # disjoint series: everything accepted
        for labels, t, v, out in results:
            if labels[0][1].startswith(("m_own", "m_new0", "m_new1")):
                self.assertEqual(out, O.OK, (labels, t))
        # a series both create at once exists once, with one of the two first samples (the
        # other is a duplicate) or both (out-of-order window)
        self.assertEqual(len([k for k in want if k[0][1] == "m_newshared"]), ROUNDS * NEW)
        ooo = bool(kw.get("ooo_window"))
        if not ooo:
            for samples in want.values():
                ts = [t for t, _ in samples]
                self.assertEqual(len(ts), len(set(ts)), "timestamp accepted twice")
        self.assertEqual(head.num_series, 2 * OWN + SHARED + 3 * ROUNDS * NEW)
        before = self._assert_stored(head, want, ooo)
        head = self.reopen(head, samples_per_chunk=8, **kw)
        self.assertEqual(head.num_series, 2 * OWN + SHARED + 3 * ROUNDS * NEW)
        self.assertEqual(self._stored(head), before)
        return results

    def test_disjoint_shared_and_new_series(self):
        results = self._check()
        outs = {out for _, _, _, out in results}
        self.assertIn(O.OK, outs)

    def test_with_out_of_order_window(self):
        self._check(ooo_window=3600 * 1000)

    def test_series_limit_stays_exact(self):
        head = self.open(max_series=150)
        errors = []
        outs = {0: [], 1: []}
        start = threading.Barrier(2)

        def writer(k):
            try:
                start.wait()
                for r in range(10):
                    # 20 series each round: 10 only this thread pushes, 10 both push
                    series = [(_labels("lim%d" % k, r * 10 + i), [(1000 + r, 1.0)]) for i in range(10)]
                    series += [(_labels("limshared", r * 10 + i), [(1000 + r, 1.0)]) for i in range(10)]
                    cols = batch(series)
                    head.append_batch(*cols)
                    outs[k] += [(tuple(sorted(lb.items())), o) for (lb, _), o in zip(series, cols[6])]
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=writer, args=(k,)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertEqual(head.num_series, 150)
        stored = set(self._stored(head))
        self.assertEqual(len(stored), 150)
        for k in (0, 1):
            for labels, out in outs[k]:
                if labels in stored:
                    self.assertIn(out, (O.OK, O.DUPLICATE_SAME), labels)
                else:
                    self.assertEqual(out, O.SERIES_LIMIT, labels)

    def test_series_created_while_another_batch_frees_their_strings(self):
        """A batch finds its new series' label strings before taking the commit section; while
        it waits, another thread's refused batch (interned, then forgotten) frees the same
        strings, and its next batch reuses their ids for others. Every series keeps the
        labels it was pushed with, in the index, in reads and after replay."""
        head = self.open()
        head.append_batch(*batch([({"__name__": "anchor"}, [(3 * HOUR, 1.0)])]))
        head.truncate(2 * HOUR)     # older samples are out of bounds: refused, series forgotten
        rounds, width = 60, 200
        errors = []
        pushed = set()
        cur = [0, False]            # the refused thread's round, and whether it is done
        start = threading.Barrier(2)

        def refused():
            try:
                start.wait()
                for r in range(rounds):
                    cur[0] = r
                    # many samples per series: a long outcome check between creating and
                    # forgetting them, when the other thread's lookups find their strings
                    cols = batch([({"__name__": "m_gone", "v": "s-%d-%d" % (r, j)},
                                   [(1000 + k, 1.0) for k in range(50)]) for j in range(width)])
                    self.assertEqual(head.append_batch(*cols), (0, 0))
            except BaseException as e:
                errors.append(e)
            finally:
                cur[1] = True

        def created():
            try:
                start.wait()
                n = 0
                while not cur[1]:
                    r = cur[0]
                    series = [({"__name__": "m_kept", "v": "s-%d-%d" % (r, (n + j) % width),
                                "n": str(n + j)}, [(3 * HOUR, 1.0)]) for j in range(10)]
                    n += 10
                    self.assertEqual(head.append_batch(*batch(series)), (10, 10))
                    pushed.update(tuple(sorted(lb.items())) for lb, _ in series)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=refused), threading.Thread(target=created)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        want_values = sorted({dict(lb)["v"] for lb in pushed})
        for h in (head, self.reopen(head, min_valid_time=2 * HOUR)):
            self.assertEqual(set(self._stored(h)), pushed)
            self.assertEqual(h.label_values("v"), want_values)
            self.assertEqual(h.num_series, len(pushed) + 1)
            for lb in sorted(pushed)[::7]:
                ref = h._ref_of(encode_labels(lb))
                self.assertEqual(list(h.postings("n", dict(lb)["n"])), [ref], lb)
                self.assertIn(ref, list(h.postings("v", dict(lb)["v"])), lb)

    def test_kill_9_during_concurrent_appends_loses_nothing_acknowledged(self):
        """Two threads of a child append (own series, and shared series they take turns on,
        new series each batch); SIGKILL; every acknowledged sample is there after replay."""
        code = textwrap.dedent("""
            import sys, threading
            from urdar.engine.head import Head
            from urdar.engine import outcomes as O
            from tests.engine.test_head import batch
            h = Head(sys.argv[1], samples_per_chunk=16)
            out_lock = threading.Lock()
            def work(k):
                for n in range(100000):
                    series = [({'__name__': 'own%d' % k, 'i': str(i)}, [(n * 10, float(n))]) for i in range(50)]
                    series += [({'__name__': 'shared', 'i': str(i)}, [(n * 10 + k, float(k))]) for i in range(50)]
                    series.append(({'__name__': 'new%d' % k, 'n': str(n)}, [(n * 10, 1.0)]))
                    cols = batch(series)
                    h.append_batch(*cols)
                    acked = [s[0] for s, o in zip(series, cols[6]) if o == O.OK]
                    with out_lock:
                        for labels in acked:
                            print(k, n, labels['__name__'], labels.get('i', labels.get('n')), flush=False)
                        print('end', flush=True)
            for k in (0, 1):
                threading.Thread(target=work, args=(k,)).start()
        """)
        env = dict(os.environ, PYTHONPATH=os.getcwd())
        p = subprocess.Popen([sys.executable, "-c", code, self.dir], stdout=subprocess.PIPE, env=env,
                             text=True)
        acked = []
        pending = []
        ends = 0
        for line in p.stdout:
            if line.startswith("end"):
                acked += pending
                pending = []
                ends += 1
                if ends >= 400:
                    break
            else:
                pending.append(line.split())
        p.send_signal(signal.SIGKILL)
        for line in p.stdout:       # what it printed in full before dying was acknowledged too
            if line.startswith("end"):
                acked += pending
                pending = []
            else:
                pending.append(line.split())
        p.wait()
        self.assertGreaterEqual(ends, 400)
        head = self.open(samples_per_chunk=16)
        got = {}
        for key, ts, vs in head.select([Matcher("=~", "__name__", ".+")]):
            lb = labels_dict(key)
            got[(lb["__name__"], lb.get("i", lb.get("n")))] = dict(zip(ts, vs))
        for k, n, name, i in acked:
            k, n = int(k), int(n)
            samples = got.get((name, i), {})
            t = n * 10 + (k if name == "shared" else 0)
            want = float(k) if name == "shared" else (float(n) if name.startswith("own") else 1.0)
            self.assertEqual(samples.get(t), want, (k, n, name, i))


if __name__ == "__main__":
    unittest.main()
