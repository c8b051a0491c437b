"""The engine is compiled: every .pyx is an extension module and releases the GIL in its heavy loops."""
import glob
import importlib
import os
import tempfile
import shutil
import sys
import threading
import time
import unittest
from array import array

import urdar.engine

ENGINE_DIR = os.path.dirname(urdar.engine.__file__)


class ExtensionTests(unittest.TestCase):
    def test_every_pyx_is_an_extension(self):
        """Each .pyx of every urdar package imports as a compiled extension, never as a Python fallback."""
        paths = glob.glob(os.path.join(os.path.dirname(ENGINE_DIR), "*", "*.pyx"))
        names = sorted("%s.%s" % (os.path.basename(os.path.dirname(p)), os.path.splitext(os.path.basename(p))[0])
                       for p in paths)
        self.assertIn("engine.head", names)
        self.assertIn("promql.kernels", names)
        for name in names:
            mod = importlib.import_module("urdar." + name)
            self.assertTrue(mod.__file__.endswith(".so"), "%s is not compiled: %s" % (name, mod.__file__))


def progress_during(fn, *args):
    """How many times another Python thread ran while fn(*args) ran in this thread.

    The switch interval is made huge, so the interpreter never takes the GIL away from a
    running thread: the other thread can only run while fn releases the GIL itself."""
    count = [0]
    stop = threading.Event()
    running = threading.Event()

    def spin():
        running.set()
        while not stop.is_set():
            count[0] += 1
            time.sleep(0)  # hands the GIL back at once when the caller wants it

    old = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        t = threading.Thread(target=spin)
        t.start()
        running.wait()
        before = count[0]
        fn(*args)
        during = count[0] - before
        stop.set()
        t.join()
    finally:
        sys.setswitchinterval(old)
    return during


class GILTests(unittest.TestCase):
    """A loop holding the GIL lets no other Python thread run; these loops must not hold it."""

    def assertReleases(self, fn, *args):
        # several tries: on a loaded machine the OS may not run the other thread during one call
        for _ in range(30):
            if progress_during(fn, *args) > 0:
                return
        self.fail("no other thread ran during %s" % getattr(fn, "__name__", fn))

    def test_postings_intersect(self):
        """Postings intersection of large lists lets other threads run."""
        from urdar.engine.postings import intersect
        a = array("Q", range(0, 12_000_000, 2))
        b = array("Q", range(0, 12_000_000, 3))
        self.assertReleases(intersect, a, b)

    def test_xor_encode_decode(self):
        """XOR chunk encoding and decoding let other threads run."""
        from urdar.engine.xorchunk import decode_xor, encode_xor
        ts = array("q", range(0, 65535 * 15000, 15000))
        vs = array("d", (i * 0.37 for i in range(65535)))
        data = encode_xor(ts, vs)
        self.assertReleases(decode_xor, data)
        self.assertReleases(encode_xor, ts, vs)

    def test_sample_merge(self):
        """Merging sample streams of head and blocks lets other threads run."""
        from urdar.engine.querier import merge_samples
        a = (array("q", range(0, 8_000_000, 2)), array("d", bytes(8 * 4_000_000)))
        b = (array("q", range(1, 8_000_000, 2)), array("d", bytes(8 * 4_000_000)))
        self.assertReleases(merge_samples, [a, b])

    def test_head_append(self):
        """Appending a large batch to existing series (WAL on) lets other threads run."""
        from urdar.engine.head import Head
        from urdar.engine.labels import encode_labels, hash_key
        d = tempfile.mkdtemp(prefix="urdar-gil-")
        self.addCleanup(shutil.rmtree, d, True)
        h = Head(d)
        self.addCleanup(h.close)
        keys = [encode_labels([("__name__", "m"), ("i", str(i))]) for i in range(20000)]
        blob = b"".join(keys)
        koff = array("Q", [0])
        for k in keys:
            koff.append(koff[-1] + len(k))
        hashes = array("Q", [hash_key(k) for k in keys])
        soff = array("Q", range(0, 20000 * 20 + 1, 20))
        vs = array("d", (float(i) for i in range(20000 * 20)))

        batches = [array("q", [r * 20 * 1000 + j * 1000 for _ in range(20000) for j in range(20)])
                   for r in range(2)]
        out = bytearray(20000 * 20)
        h.append_batch(blob, koff, hashes, soff, batches[0], vs, out)
        self.assertReleases(h.append_batch, blob, koff, hashes, soff, batches[1], vs, out)
        self.assertEqual(set(out), {0})

    def test_holding_the_gil_is_detected(self):
        """The probe itself sees a loop that keeps the GIL (so the tests above can fail)."""
        self.assertEqual(progress_during(lambda: sum(range(3_000_000))), 0)
