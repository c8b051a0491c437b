"""Temporary paths for tests, outside the work tree (trial's mktemp is relative to the cwd)."""
import os
import shutil
import tempfile


def mktemp(case):
    """A path that does not exist yet, in a fresh temp dir removed when `case` ends."""
    d = tempfile.mkdtemp(prefix="urdar-test-")
    case.addCleanup(shutil.rmtree, d, True)
    return os.path.join(d, "t")
