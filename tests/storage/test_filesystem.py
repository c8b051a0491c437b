"""The filesystem bucket: the Bucket contract, atomic puts, S3-like directories, off-reactor I/O."""
import os

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.storage.contract import BucketContract
from tests.support.threads import ManualThreadPool, inline_offload
from tests.support.tmp import mktemp
from urdar.net.offload import Offload
from urdar.storage.bucket import InvalidName, NotFound, ObjectConflict
from urdar.storage.filesystem import STAGING_DIR, FilesystemBucket


class _Reactor:
    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


class FilesystemBucketContractTests(BucketContract, SynchronousTestCase):
    def make_bucket(self, page_size):
        self.root = mktemp(self)
        return FilesystemBucket(self.root, offload=inline_offload((("bucket", 1, 10),)))

    def finish(self, d):
        return self.successResultOf(d)


class FilesystemBucketTests(SynchronousTestCase):
    def setUp(self):
        self.root = mktemp(self)
        self.bucket = FilesystemBucket(self.root, offload=inline_offload((("bucket", 1, 10),)))

    def ok(self, d):
        return self.successResultOf(d)

    def test_objects_are_plain_files_under_the_root(self):
        """Object 't/01A/index' is the file <root>/t/01A/index, so tools can read the tree."""
        self.ok(self.bucket.put("t/01A/index", b"idx"))
        with open(os.path.join(self.root, "t", "01A", "index"), "rb") as f:
            self.assertEqual(f.read(), b"idx")

    def test_put_leaves_no_temporary_files_and_hides_staging(self):
        """After puts only the objects remain; the staging directory never shows in listings."""
        self.ok(self.bucket.put("a/b", b"1"))
        self.ok(self.bucket.put("a/b", b"2"))
        self.assertEqual(os.listdir(os.path.join(self.root, STAGING_DIR)), [])
        # what a crash mid-put leaves behind
        with open(os.path.join(self.root, STAGING_DIR, "put-leftover"), "wb") as f:
            f.write(b"partial")
        self.assertEqual(self.ok(self.bucket.list("")), ["a/"])
        self.assertEqual(self.ok(self.bucket.list("", "")), ["a/b"])
        self.assertEqual(self.ok(self.bucket.list("."), ), [])
        self.failureResultOf(self.bucket.put(STAGING_DIR + "/x", b"1"), InvalidName)

    def test_failed_put_keeps_the_old_object(self):
        """A put that fails while reading its input leaves the previous object whole."""
        self.ok(self.bucket.put("obj", b"old"))

        class Broken:
            def read(self, n=-1):
                raise OSError("disk gone")
        self.failureResultOf(self.bucket.put("obj", Broken()), OSError)
        self.assertEqual(self.ok(self.bucket.get("obj")), b"old")
        self.assertEqual(os.listdir(os.path.join(self.root, STAGING_DIR)), [])

    def test_delete_prunes_empty_directories_but_not_the_root(self):
        """Deleting the last object of a directory removes the directory tree, keeping the root."""
        self.ok(self.bucket.put("t/01A/chunks/000001", b"c"))
        self.ok(self.bucket.delete("t/01A/chunks/000001"))
        self.assertFalse(os.path.exists(os.path.join(self.root, "t")))
        self.assertTrue(os.path.isdir(self.root))

    def test_empty_directories_are_not_listed(self):
        """Directories with no files inside (left by other tools) are invisible, as on S3."""
        os.makedirs(os.path.join(self.root, "empty", "deeper"))
        self.ok(self.bucket.put("full/x", b"1"))
        self.assertEqual(self.ok(self.bucket.list("")), ["full/"])
        self.assertEqual(self.ok(self.bucket.list("", "")), ["full/x"])
        self.failureResultOf(self.bucket.get("empty"), NotFound)
        self.failureResultOf(self.bucket.attributes("empty"), NotFound)

    def test_object_and_directory_of_the_same_name_conflict(self):
        """A file cannot also be a directory: putting 'a/b' over object 'a' (or back) fails."""
        self.ok(self.bucket.put("a", b"1"))
        self.failureResultOf(self.bucket.put("a/b", b"2"), ObjectConflict)
        self.ok(self.bucket.put("c/d", b"3"))
        self.failureResultOf(self.bucket.put("c", b"4"), ObjectConflict)
        self.assertEqual(self.ok(self.bucket.list("", "")), ["a", "c/d"])

    def test_non_utf8_file_names_are_skipped(self):
        """Files whose names are not UTF-8 cannot be object names, so listings leave them out."""
        os.makedirs(self.root)
        with open(os.path.join(os.fsencode(self.root), b"bad\xff"), "wb"):
            pass
        self.ok(self.bucket.put("good", b"1"))
        self.assertEqual(self.ok(self.bucket.list("")), ["good"])
        self.assertEqual(self.ok(self.bucket.list("", "")), ["good"])

    def test_missing_root_lists_nothing(self):
        """A bucket whose root does not exist yet is empty, not an error."""
        self.assertEqual(self.ok(self.bucket.list("")), [])
        self.assertFalse(self.ok(self.bucket.exists("x")))

    def test_work_runs_in_the_offload_pool(self):
        """File I/O waits in the bucket pool until a worker runs it (nothing on the caller)."""
        pool = ManualThreadPool()
        off = Offload(_Reactor(), lambda workers, name: pool)
        off.add_pool("bucket", 1, 10)
        off.start()
        b = FilesystemBucket(self.root, offload=off)
        d = b.put("x", b"1")
        self.assertNoResult(d)
        self.assertFalse(os.path.exists(os.path.join(self.root, "x")))
        pool.run_all()
        self.ok(d)
        self.assertEqual(self.ok(self.bucket.get("x")), b"1")


class FilesystemBucketThreadTests(TestCase):
    def test_runs_in_the_reactor_thread_pool(self):
        """Without an Offload, work goes to the reactor's thread pool and results come back."""
        from twisted.internet import reactor
        b = FilesystemBucket(mktemp(self), reactor=reactor)

        @defer.inlineCallbacks
        def go():
            yield b.put("a/b", b"threaded")
            self.assertEqual((yield b.get("a/b")), b"threaded")
            self.assertEqual((yield b.list("a/")), ["a/b"])
        return go()
