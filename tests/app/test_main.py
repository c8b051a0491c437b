"""The process entry point (app/main.py): how it is started, and its systemd notifications."""
import os
import socket

from twisted.trial.unittest import SynchronousTestCase

from tests.support.tmp import mktemp
from urdar.app.main import sd_notify


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
