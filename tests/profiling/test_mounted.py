"""The profilers as the service mounts them: routes on the composition root, the offload pools'
in-flight work on the goroutine page, and the engine's locks in the block/mutex profiles."""
import shutil
import tempfile
import threading
import time
import unittest

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.profiling.support import decode, stacks
from tests.support.fake_ingester import FakeTSDB
from tests.support.threads import InlineReactor, InlineThreadPool, ManualThreadPool
from urdar.app import config as C
from urdar.app.modules import Modules
from urdar.engine.tsdb import TSDB
from urdar.net.offload import Offload
from urdar.profiling import contention


def pending_decode_marker():
    """A named function the goroutine page must list while it waits in the decode pool."""


def modules(argv=()):
    """Modules whose "decode" pool keeps jobs queued and whose other pools run them inline."""
    pools = {}

    def factory(workers, name):
        pools[name] = (ManualThreadPool if name == "decode" else InlineThreadPool)(workers, name)
        return pools[name]
    off = Offload(InlineReactor(), factory)
    for name in ("decode", "append", "compact", "admin"):
        off.add_pool(name, 1, 10)
    off.start()
    cfg, _ = C.load(list(argv) + ["-blocks-storage.tsdb.dir=/nonexistent-urdar-test"])
    return Modules(cfg, None, Clock(), offload=off, tsdb_factory=FakeTSDB), pools


class MountTests(SynchronousTestCase):
    def get(self, m, path):
        treq = StubTreq(m.resource())
        resp = self.successResultOf(treq.get("http://urdar" + path))
        return resp.code, self.successResultOf(resp.content())

    def test_index_pages_link_the_profiles(self):
        """GET /debug/pprof/ lists the profiles and GET / links to it."""
        m, _ = modules()
        code, body = self.get(m, "/debug/pprof/")
        self.assertEqual(code, 200)
        self.assertIn(b'href="/debug/pprof/goroutine?debug=1"', body)
        self.assertIn(b'href="/debug/fgprof"', body)
        self.assertIn(b'href="/debug/pprof/"', self.get(m, "/")[1])

    def test_goroutine_page_lists_offloaded_work_in_flight(self):
        """Work waiting in an offload pool shows on /debug/pprof/goroutine?debug=1 with its pool."""
        m, pools = modules()
        d = m.offload.run("decode", pending_decode_marker)
        code, body = self.get(m, "/debug/pprof/goroutine?debug=1")
        self.assertEqual(code, 200)
        self.assertIn(b"offload pool decode: %s.pending_decode_marker" % __name__.encode(), body)
        pools["decode"].run_all()
        self.successResultOf(d)
        code, body = self.get(m, "/debug/pprof/goroutine?debug=1")
        self.assertNotIn(b"pending_decode_marker", body)

    def test_instrumentation_can_be_switched_off(self):
        """With -server.register-instrumentation=false the profiling endpoints answer 404."""
        m, _ = modules(["-server.register-instrumentation=false"])
        self.assertEqual(self.get(m, "/debug/pprof/")[0], 404)
        self.assertEqual(self.get(m, "/debug/fgprof")[0], 404)
        self.assertEqual(self.get(m, "/ready")[0], 503)


def contended_appender(db, stop, i):
    """Appends to the shared head until told to stop (the waiting stack of the block profile)."""
    t = 1000
    while not stop.is_set():
        db.head.append({"__name__": "m", "w": str(i), "j": str(t % 50)}, [(t, 1.0)])
        t += 1


class EngineLockTests(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="urdar-locks-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        contention.reset()
        self.addCleanup(contention.reset)
        self.addCleanup(contention.disable)

    def test_head_lock_waits_show_in_the_block_profile(self):
        """Threads appending to one tenant's head at once show up in the block and mutex profiles."""
        db = TSDB(self.dir)
        self.addCleanup(db.close)
        contention.enable()
        stop = threading.Event()
        ts = [threading.Thread(target=contended_appender, args=(db, stop, i), daemon=True)
              for i in range(4)]
        for t in ts:
            t.start()
        deadline = time.monotonic() + 20
        try:
            while time.monotonic() < deadline and not contention.snapshot("block"):
                time.sleep(0.05)
        finally:
            stop.set()
            for t in ts:
                t.join()
        prof = decode(contention.profile("block").gzipped())
        names = [n for ns, _v, _l in stacks(prof) for n in ns]
        self.assertTrue(any(n.endswith("contended_appender") for n in names), names[:20])
