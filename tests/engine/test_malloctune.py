"""engine/malloctune: freed heap memory is kept for reuse (resident) after retain_freed_heap,
and given back at once without it or when the operator's GLIBC_TUNABLES set malloc tunables. Each case runs in a fresh interpreter (mallopt is process-wide)."""
import os
import subprocess
import sys
import unittest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")

# With glibc's trim threshold pinned (it moves with the process' history), allocate and touch
# 8 MB in 64 KB pieces, free them all, and print the resident KB before and after the frees.
# Main thread: its heap is trimmed right at the free that passes the threshold (a pool thread's
# heap follows the same M_TOP_PAD rule, but there other allocations of the thread decide when).
PROBE = r"""
import ctypes, os, sys
sys.path.insert(0, %r)
from urdar.engine.malloctune import retain_freed_heap
libc = ctypes.CDLL(None)
libc.mallopt(-1, 128 << 10)                     # M_TRIM_THRESHOLD
print(int(retain_freed_heap(32 << 20)) if %r else -1)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
fd = os.open("/proc/self/statm", os.O_RDONLY)
def rss_kb():
    return int(os.pread(fd, 100, 0).split()[1]) * 4
ptrs = (ctypes.c_void_p * 128)()
for i in range(128):
    ptrs[i] = libc.malloc(64 << 10)
    ctypes.memset(ptrs[i], 1, 64 << 10)
before = rss_kb()
for i in range(127, -1, -1):
    libc.free(ptrs[i])
print(before, rss_kb())
"""


def probe(apply, env=None):
    out = subprocess.run([sys.executable, "-c", PROBE % (ROOT, apply)], capture_output=True,
                         text=True, check=True, env=env).stdout.split()
    return int(out[0]), int(out[1]), int(out[2])


@unittest.skipUnless(sys.platform.startswith("linux") and os.path.exists("/proc/self/statm"),
                     "glibc on Linux")
class RetainFreedHeapTests(unittest.TestCase):

    def test_freed_memory_stays_resident_for_reuse(self):
        applied, before, after = probe(True)
        self.assertEqual(applied, 1)
        self.assertGreater(after, before - 2048)        # under 2 MB of the 8 MB given back

    def test_default_gives_freed_memory_back(self):
        applied, before, after = probe(False)
        self.assertLess(after, before - 6 * 1024)       # most of the 8 MB returned at once

    def test_operator_tunables_win(self):
        env = dict(os.environ, GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072")
        applied, before, after = probe(True, env)
        self.assertEqual(applied, 0)
        self.assertLess(after, before - 6 * 1024)


if __name__ == "__main__":
    unittest.main()
