"""Error bodies (handlers/errors.py): unexpected failures are 500s that never show server paths."""
import errno

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from urdar.engine.errors import CorruptionError, public_message
from urdar.handlers.errors import fail_json, fail_text


class PathLeakTests(SynchronousTestCase):
    def test_os_error_body_names_no_server_path(self):
        """A disk error surfacing as a 500 names the file by its last parts, not its absolute path."""
        exc = OSError(errno.ENOSPC, "No space left on device", "/var/lib/urdar/tsdb/team-a/wal/00000042")
        request = DummyRequest([b""])
        body = fail_text(request, exc)
        self.assertEqual(request.responseCode, 500)
        self.assertTrue(body.startswith(b"internal server error (id "), body)
        self.assertTrue(body.endswith(b": [Errno 28] No space left on device: 'wal/00000042'\n"), body)

    def test_corrupt_block_body_names_block_and_file_only(self):
        """A corrupt block file is reported as <ULID>/<file> in JSON error bodies."""
        exc = CorruptionError("/srv/urdar/sync/team-a/01HZZZZZZZZZZZZZZZZZZZZZZZ/index", 12, "bad CRC32C")
        body = fail_json(DummyRequest([b""]), exc)
        self.assertNotIn(b"/srv/urdar", body)
        self.assertIn(b"corrupt 01HZZZZZZZZZZZZZZZZZZZZZZZ/index at offset 12: bad CRC32C", body)

    def test_relative_and_pathless_errors_unchanged(self):
        """Errors without an absolute path keep their text."""
        self.assertEqual(public_message(ValueError("x /y")), "x /y")
        self.assertEqual(public_message(CorruptionError("<record type 2>", 3, "short")),
                         "corrupt <record type 2> at offset 3: short")
