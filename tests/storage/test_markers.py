"""Block and tenant markers: Mimir's paths and JSON, block mark before its global copy."""
import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from urdar.storage.faulty import FaultyBucket
from urdar.storage.bucket import BucketHTTPError
from urdar.storage.markers import (
    DeletionMark, MarkerError, NoCompactMark, TenantDeletionMark, delete_marks,
    finish_tenant_deletion, global_mark_path, list_global_marks, mark_for_deletion,
    mark_no_compact, parse_global_mark_name, read_deletion_mark, read_no_compact_mark,
    read_tenant_deletion_mark, write_tenant_deletion_mark)
from urdar.storage.memory import MemoryBucket
from urdar.storage.prefixed import for_tenant

U1 = "01HZZZZZZZZZZZZZZZZZZZZZZ1"
U2 = "01J00000000000000000000002"


class MarkerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_123.7)
        self.root = MemoryBucket()
        self.bucket = for_tenant(self.root, "team-a")

    def ok(self, d):
        return self.successResultOf(d)

    def test_deletion_mark_layout_and_json(self):
        """Marking writes <tenant>/<ULID>/deletion-mark.json and its markers/ copy, Go-style JSON."""
        self.assertTrue(self.ok(mark_for_deletion(self.bucket, U1, self.clock, "compacted")))
        want = ('{"id":"%s","version":1,"details":"compacted","deletion_time":1700000123}'
                % U1).encode()
        self.assertEqual(self.root.objects, {
            "team-a/%s/deletion-mark.json" % U1: want,
            "team-a/markers/%s-deletion-mark.json" % U1: want})
        mark = self.ok(read_deletion_mark(self.bucket, U1))
        self.assertEqual(mark, DeletionMark(U1, 1700000123, "compacted"))

    def test_marking_twice_keeps_the_first_time(self):
        """A second mark leaves the first one (its time counts for the deletion delay)."""
        self.ok(mark_for_deletion(self.bucket, U1, self.clock))
        self.clock.advance(3600)
        self.assertFalse(self.ok(mark_for_deletion(self.bucket, U1, self.clock)))
        self.assertEqual(self.ok(read_deletion_mark(self.bucket, U1)).deletion_time, 1700000123)

    def test_global_copy_only_after_block_mark(self):
        """If writing the block's own mark fails, no global copy appears."""
        faulty = FaultyBucket(self.root)
        faulty.fail_matching(r"/deletion-mark\.json$", times=1)
        self.failureResultOf(mark_for_deletion(for_tenant(faulty, "team-a"), U1, self.clock),
                             BucketHTTPError)
        self.assertEqual(self.root.objects, {})

    def test_no_compact_mark(self):
        """No-compact marks carry the reason; unknown reasons are refused."""
        self.ok(mark_no_compact(self.bucket, U2, self.clock, "index-size-exceeding"))
        raw = self.root.objects["team-a/markers/%s-no-compact-mark.json" % U2]
        self.assertEqual(json.loads(raw), {"id": U2, "version": 1, "no_compact_time": 1700000123,
                                           "reason": "index-size-exceeding"})
        self.assertEqual(self.ok(read_no_compact_mark(self.bucket, U2)),
                         NoCompactMark(U2, 1700000123, "index-size-exceeding"))
        with self.assertRaises(ValueError):
            mark_no_compact(self.bucket, U2, self.clock, "because")

    def test_list_and_delete_marks(self):
        """One listing of markers/ tells which blocks are marked; delete_marks clears a block."""
        self.ok(mark_for_deletion(self.bucket, U1, self.clock))
        self.ok(mark_for_deletion(self.bucket, U2, self.clock))
        self.ok(mark_no_compact(self.bucket, U2, self.clock))
        self.ok(write_tenant_deletion_mark(self.bucket, self.clock))
        self.assertEqual(self.ok(list_global_marks(self.bucket)),
                         {"deletion-mark.json": [U1, U2], "no-compact-mark.json": [U2]})
        self.ok(delete_marks(self.bucket, U2))
        self.assertEqual(self.ok(list_global_marks(self.bucket)),
                         {"deletion-mark.json": [U1], "no-compact-mark.json": []})
        self.assertIsNone(self.ok(read_deletion_mark(self.bucket, U2)))

    def test_tenant_deletion_mark(self):
        """The tenant mark records when deletion started and, later, when it finished."""
        self.assertIsNone(self.ok(read_tenant_deletion_mark(self.bucket)))
        self.ok(write_tenant_deletion_mark(self.bucket, self.clock))
        self.assertEqual(self.root.objects["team-a/markers/tenant-deletion-mark.json"],
                         b'{"deletion_time":1700000123}')
        self.clock.advance(100)
        self.ok(finish_tenant_deletion(self.bucket, self.clock))
        self.assertEqual(self.ok(read_tenant_deletion_mark(self.bucket)),
                         TenantDeletionMark(1700000123, 1700000223))

    def test_mark_names(self):
        """Global mark names parse back to (ULID, kind); other names do not."""
        self.assertEqual(global_mark_path(U1, "deletion-mark.json"),
                         "markers/%s-deletion-mark.json" % U1)
        self.assertEqual(parse_global_mark_name("markers/%s-no-compact-mark.json" % U1),
                         (U1, "no-compact-mark.json"))
        for name in ("markers/tenant-deletion-mark.json", "markers/xxx-deletion-mark.json",
                     "markers/%s-other.json" % U1, "markers/%s" % U1):
            self.assertIsNone(parse_global_mark_name(name))
        with self.assertRaises(ValueError):
            global_mark_path("../x", "deletion-mark.json")

    def test_bad_marks_are_reported(self):
        """Marks that are not JSON, have another version or a bad id raise MarkerError."""
        for raw in (b"{", b"[]", b'{"id":"%s","version":2,"deletion_time":1}' % U1.encode(),
                    b'{"id":"nope","version":1,"deletion_time":1}',
                    b'{"id":"%s","version":1,"deletion_time":"x"}' % U1.encode()):
            with self.assertRaises(MarkerError):
                DeletionMark.from_json(raw)
