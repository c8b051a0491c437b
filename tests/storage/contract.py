"""The Bucket contract: one suite run against every backend (memory, filesystem, S3 on moto).

A backend's test class mixes `BucketContract` into a trial test case and provides
`make_bucket(page_size)` and `finish(d)`: synchronous backends return `self.successResultOf(d)`
(their Deferreds fire inline), the S3 class returns `d` for trial to wait on the real reactor.
Tests are generators decorated with `@contract`, so both styles share one body."""
import functools
import io
import os
import tempfile

from twisted.internet import defer

from urdar.storage.bucket import MAX_NAME_BYTES, Attributes, InvalidName, NotFound

HOSTILE_NAMES = ("", "/abs", "../x", "a/../b", "..", ".", "a/./b", "a//b", "a/", "a\x00b",
                 "x" * (MAX_NAME_BYTES + 1), "\ud800")
HOSTILE_PREFIXES = ("/", "/a", "../", "a/../", "a/./", "a//", "\x00")
ODD_NAMES = ("sp ace/plus+sign", "pct%41/q?h#a&b=c", "uni/\u00e9\u6f22\u5b57\U0001F600",
             "sym/~!'()*,;:@$[]", "ctl/\x01\x1f\x7f", ".hidden/.x",
             # no '\n': moto's router 404s on keys with a newline (real S3 takes them)
             "dots/...", "tab\tcr\r")


def contract(gen):
    """Turn a generator test into a method whose Deferred goes through `self.finish`."""
    run = defer.inlineCallbacks(gen)

    @functools.wraps(gen)
    def test(self):
        return self.finish(run(self))
    return test


def longest_name(max_bytes):
    """A name of exactly `max_bytes` bytes, in segments a filesystem accepts (NAME_MAX 255)."""
    segs = []
    left = max_bytes
    while left > 201:
        segs.append("x" * 200)
        left -= 201
    return "/".join(segs + ["y" * left])


class BucketContract:
    """Mixed into a trial TestCase with make_bucket(page_size) and finish(d)."""
    # Longest usable name; a prefixed view has less room than the store below it.
    max_name_bytes = MAX_NAME_BYTES

    def setUp(self):
        super().setUp()
        self.bucket = self.make_bucket(page_size=4)

    def failure_of(self, d, *types):
        """Deferred firing with the exception `d` fails with (test failure if it succeeds or fails
        with another type)."""
        def ok(result):
            self.fail("expected %s, got result %r" % ([t.__name__ for t in types], result))

        def err(f):
            if not f.check(*types):
                return f
            return f.value
        return d.addCallbacks(ok, err)

    @defer.inlineCallbacks
    def put_all(self, names, data_of=lambda n: n.encode("utf-8")):
        pending = list(names)
        # A few requests in flight at once: fast on S3, harmless inline.
        while pending:
            batch, pending = pending[:16], pending[16:]
            yield defer.gatherResults([self.bucket.put(n, data_of(n)) for n in batch],
                                      consumeErrors=True)

    # -- get / put ---------------------------------------------------------------------------

    @contract
    def test_put_then_get_returns_the_bytes(self):
        """An object put is read back byte for byte, and a second put replaces it."""
        yield self.bucket.put("t/01ABC/meta.json", b'{"version": 1}')
        self.assertEqual((yield self.bucket.get("t/01ABC/meta.json")), b'{"version": 1}')
        yield self.bucket.put("t/01ABC/meta.json", b"second")
        self.assertEqual((yield self.bucket.get("t/01ABC/meta.json")), b"second")

    @contract
    def test_binary_and_empty_objects(self):
        """Every byte value survives a round trip, and an empty object is stored as empty."""
        data = bytes(range(256)) * 300
        yield self.bucket.put("bin", data)
        self.assertEqual((yield self.bucket.get("bin")), data)
        yield self.bucket.put("empty", b"")
        self.assertEqual((yield self.bucket.get("empty")), b"")
        self.assertEqual((yield self.bucket.attributes("empty")).size, 0)
        self.assertTrue((yield self.bucket.exists("empty")))

    @contract
    def test_put_accepts_bytes_like_path_and_stream(self):
        """put takes bytearray, memoryview, a file path and a stream (read from its position)."""
        yield self.bucket.put("ba", bytearray(b"bytearray"))
        yield self.bucket.put("mv", memoryview(b"xxmemoryview")[2:])
        fd, path = tempfile.mkstemp()
        self.addCleanup(os.unlink, path)
        with os.fdopen(fd, "wb") as f:
            f.write(b"from a file" * 10000)
        yield self.bucket.put("file", path)
        stream = io.BytesIO(b"skip:from a stream")
        stream.seek(5)
        yield self.bucket.put("stream", stream)
        self.assertEqual((yield self.bucket.get("ba")), b"bytearray")
        self.assertEqual((yield self.bucket.get("mv")), b"memoryview")
        self.assertEqual((yield self.bucket.get("file")), b"from a file" * 10000)
        self.assertEqual((yield self.bucket.get("stream")), b"from a stream")

    @contract
    def test_missing_objects_are_not_found(self):
        """get, get_range and attributes of an absent object fail with NotFound naming it."""
        yield self.bucket.put("present/x", b"1")
        for d in (self.bucket.get("absent"), self.bucket.get_range("absent", 0, 10),
                  self.bucket.get_range("absent", 0, 0), self.bucket.attributes("absent"),
                  self.bucket.get("present")):
            err = yield self.failure_of(d, NotFound)
            self.assertIn(err.name, ("absent", "present"))
        self.assertFalse((yield self.bucket.exists("absent")))
        self.assertFalse((yield self.bucket.exists("present")))  # a "directory" is no object

    @contract
    def test_get_range(self):
        """get_range returns the asked bytes, cut short at the end, and b'' past the end."""
        data = bytes(range(200))
        yield self.bucket.put("r", data)
        self.assertEqual((yield self.bucket.get_range("r", 10, 5)), data[10:15])
        self.assertEqual((yield self.bucket.get_range("r", 0, 200)), data)
        self.assertEqual((yield self.bucket.get_range("r", 190, 50)), data[190:])
        self.assertEqual((yield self.bucket.get_range("r", 199, 1)), data[199:])
        self.assertEqual((yield self.bucket.get_range("r", 200, 5)), b"")
        self.assertEqual((yield self.bucket.get_range("r", 1000, 5)), b"")
        self.assertEqual((yield self.bucket.get_range("r", 3, 0)), b"")
        yield self.failure_of(self.bucket.get_range("r", -1, 5), ValueError)
        yield self.failure_of(self.bucket.get_range("r", 0, -5), ValueError)

    @contract
    def test_attributes(self):
        """attributes gives the size in bytes and a plausible modification time in Unix seconds."""
        yield self.bucket.put("a/b", b"12345")
        attrs = yield self.bucket.attributes("a/b")
        self.assertIsInstance(attrs, Attributes)
        self.assertEqual(attrs.size, 5)
        self.assertIsInstance(attrs.last_modified, float)
        self.check_last_modified(attrs.last_modified)

    def check_last_modified(self, t):
        import time
        self.assertLess(abs(t - time.time()), 3600)

    # -- delete / exists ---------------------------------------------------------------------

    @contract
    def test_delete_is_idempotent(self):
        """delete removes an object, deleting it again (or a never-stored name) succeeds."""
        yield self.bucket.put("t/b1/index", b"i")
        yield self.bucket.put("t/b1/chunks/000001", b"c")
        self.assertTrue((yield self.bucket.exists("t/b1/index")))
        yield self.bucket.delete("t/b1/index")
        yield self.bucket.delete("t/b1/index")
        yield self.bucket.delete("never/stored")
        self.assertFalse((yield self.bucket.exists("t/b1/index")))
        yield self.failure_of(self.bucket.get("t/b1/index"), NotFound)
        self.assertEqual((yield self.bucket.list("t/b1/")), ["t/b1/chunks/"])
        yield self.bucket.delete("t/b1/chunks/000001")
        self.assertEqual((yield self.bucket.list("t/")), [])
        self.assertEqual((yield self.bucket.list("")), [])

    @contract
    def test_deleting_a_directory_name_is_a_no_op(self):
        """Deleting 'a' when only 'a/b' exists leaves 'a/b' alone, as on S3."""
        yield self.bucket.put("a/b", b"x")
        yield self.bucket.delete("a")
        self.assertEqual((yield self.bucket.get("a/b")), b"x")

    # -- list --------------------------------------------------------------------------------

    @contract
    def test_list_with_delimiter_collapses_directories(self):
        """Listing with '/' shows objects and 'dir/' entries one level below the prefix, sorted."""
        yield self.put_all(["t1/01A/meta.json", "t1/01A/index", "t1/01A/chunks/000001",
                            "t1/01B/meta.json", "t1/bucket-index.json.gz", "t1/markers/x",
                            "t2/01C/meta.json", "top"])
        self.assertEqual((yield self.bucket.list("")), ["t1/", "t2/", "top"])
        self.assertEqual((yield self.bucket.list("t1/")),
                         ["t1/01A/", "t1/01B/", "t1/bucket-index.json.gz", "t1/markers/"])
        self.assertEqual((yield self.bucket.list("t1/01A/")),
                         ["t1/01A/chunks/", "t1/01A/index", "t1/01A/meta.json"])
        self.assertEqual((yield self.bucket.list("t1/01A/chunks/")), ["t1/01A/chunks/000001"])
        self.assertEqual((yield self.bucket.list("nothing/")), [])
        self.assertEqual((yield self.bucket.list("t1/01A/index/")), [])

    @contract
    def test_list_prefix_is_a_raw_string_prefix(self):
        """A prefix without a trailing '/' matches partial names, exactly as S3's prefix does."""
        yield self.put_all(["t/01A/x", "t/01B/x", "t/02C/x", "t/0file", "tenant2/y", "t.txt"])
        self.assertEqual((yield self.bucket.list("t/01")), ["t/01A/", "t/01B/"])
        self.assertEqual((yield self.bucket.list("t/0")), ["t/01A/", "t/01B/", "t/02C/", "t/0file"])
        self.assertEqual((yield self.bucket.list("t")), ["t.txt", "t/", "tenant2/"])
        self.assertEqual((yield self.bucket.list("t", "")),
                         ["t.txt", "t/01A/x", "t/01B/x", "t/02C/x", "t/0file", "tenant2/y"])
        self.assertEqual((yield self.bucket.list("t/01A/x")), ["t/01A/x"])

    @contract
    def test_recursive_list(self):
        """With delimiter '' every object below the prefix is listed, in byte order."""
        names = ["a/b/c/d", "a/b/e", "a/f", "a-b", "a0", "b/x/y/z"]
        yield self.put_all(names)
        self.assertEqual((yield self.bucket.list("", "")), sorted(names))
        self.assertEqual((yield self.bucket.list("a/", "")), ["a/b/c/d", "a/b/e", "a/f"])
        self.assertEqual((yield self.bucket.list("a/b/c/d", "")), ["a/b/c/d"])

    @contract
    def test_list_order_is_utf8_byte_order(self):
        """Names sort by UTF-8 bytes: '-' before '/' before '0', ASCII before accented letters."""
        yield self.put_all(["a-b", "a/x", "a0", "\u00e9", "z", "A", "a\u00e9/q"])
        self.assertEqual((yield self.bucket.list("")),
                         ["A", "a-b", "a/", "a0", "a\u00e9/", "z", "\u00e9"])

    @contract
    def test_list_pages_through_many_keys(self):
        """Listings longer than one page (page size 4 here) come back whole, without repeats."""
        names = ["p/%03d" % i for i in range(23)] + ["p/d%02d/x" % i for i in range(9)]
        yield self.put_all(names)
        self.assertEqual((yield self.bucket.list("p/", "")), sorted(names))
        self.assertEqual((yield self.bucket.list("p/")),
                         sorted(["p/%03d" % i for i in range(23)] + ["p/d%02d/" % i for i in range(9)]))

    @contract
    def test_odd_but_valid_names_round_trip(self):
        """Names with spaces, '%', '?', '#', '+', Unicode and control characters work everywhere."""
        names = ODD_NAMES + (longest_name(self.max_name_bytes),)
        for name in names:
            yield self.bucket.put(name, name.encode("utf-8"))
        for name in names:
            self.assertEqual((yield self.bucket.get(name)), name.encode("utf-8"))
            self.assertTrue((yield self.bucket.exists(name)))
            self.assertEqual((yield self.bucket.attributes(name)).size, len(name.encode("utf-8")))
        self.assertEqual((yield self.bucket.list("", "")), sorted(names))
        self.assertEqual((yield self.bucket.list("pct%41/")), ["pct%41/q?h#a&b=c"])
        self.assertEqual((yield self.bucket.list(".")), [".hidden/"])
        self.assertEqual((yield self.bucket.list("dots/..")), ["dots/..."])
        for name in names:
            yield self.bucket.delete(name)
        self.assertEqual((yield self.bucket.list("", "")), [])

    @contract
    def test_hostile_names_are_refused(self):
        """'..', absolute names, empty segments, NUL and over-long names fail with InvalidName."""
        for name in HOSTILE_NAMES:
            for d in (self.bucket.put(name, b"x"), self.bucket.get(name),
                      self.bucket.get_range(name, 0, 1), self.bucket.delete(name),
                      self.bucket.exists(name), self.bucket.attributes(name)):
                err = yield self.failure_of(d, InvalidName)
                self.assertIn("invalid object name", str(err))
        for prefix in HOSTILE_PREFIXES:
            yield self.failure_of(self.bucket.list(prefix), InvalidName)
        self.assertEqual((yield self.bucket.list("", "")), [])

    @contract
    def test_bad_delimiter_is_refused(self):
        """Only '/' and '' (recursive) are delimiters."""
        yield self.failure_of(self.bucket.list("", ","), ValueError)
