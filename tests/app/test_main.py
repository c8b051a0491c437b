"""The process entry point (app/main.py): how it is started, and its systemd notifications."""
import os
import socket
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.support.tmp import mktemp
from urdar.app.main import sd_notify, start_profile


class SdNotifyTests(SynchronousTestCase):
    def test_sends_datagram(self):
        """sd_notify writes the message to $NOTIFY_SOCKET; without it, nothing happens."""
        path = os.path.join(mktemp(self) + "-n.sock")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(path)
        self.addCleanup(s.close)
        self.assertTrue(sd_notify("READY=1", {"NOTIFY_SOCKET": path}))
        self.assertEqual(s.recv(100), b"READY=1")
        self.assertFalse(sd_notify("READY=1", {}))

    def test_abstract_socket(self):
        """An '@' address means the abstract namespace, as systemd uses."""
        name = "urdar-test-%d" % os.getpid()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind("\0" + name)
        self.addCleanup(s.close)
        self.assertTrue(sd_notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name}))
        self.assertEqual(s.recv(100), b"STOPPING=1")


class EntryPointTests(SynchronousTestCase):
    def test_console_script_and_module_run_app_main(self):
        """The `urdar` console script (setup.py) and `python -m urdar` both run urdar.app.main:main."""
        import ast
        import importlib
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        with open(os.path.join(root, "setup.py"), encoding="utf-8") as f:
            scripts = [node.value for node in ast.walk(ast.parse(f.read()))
                       if isinstance(node, ast.Constant) and isinstance(node.value, str)
                       and node.value.startswith("urdar = ")]
        self.assertEqual(scripts, ["urdar = urdar.app.main:main"])
        module, _, name = scripts[0].split(" = ")[1].partition(":")
        self.assertTrue(callable(getattr(importlib.import_module(module), name)))
        with open(os.path.join(root, "urdar", "__main__.py"), encoding="utf-8") as f:
            self.assertIn("from urdar.app.main import main", f.read())


def _busy_marker(deadline):
    n = 0
    while time.thread_time() < deadline:
        n += 1
    return n


class BenchProfileTests(SynchronousTestCase):
    def test_profile_writes_pprof_and_text(self):
        """$URDAR_CPU_PROFILE's writer leaves a gzipped pprof and a text table naming the
        functions and threads that used the CPU."""
        path = mktemp(self) + "-cpu.pprof"
        write = start_profile(path)
        _busy_marker(time.thread_time() + 0.3)
        write()
        with open(path, "rb") as f:
            self.assertEqual(f.read(2), b"\x1f\x8b")
        with open(path + ".txt") as f:
            text = f.read()
        self.assertIn("per thread group:", text)
        self.assertIn("MainThread", text)
        self.assertIn("_busy_marker test_main.py", text)
