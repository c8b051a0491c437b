"""The process entry point (app/main.py): systemd notifications."""
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
