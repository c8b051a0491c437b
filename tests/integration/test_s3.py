"""The S3 backend against a signature-checking moto server on 127.0.0.1, on the real reactor.

Runs the shared Bucket contract (ListObjectsV2 pages of 4 keys, so paging is exercised), pages of
the default 1000 keys, a wrong secret (AccessDenied), a missing bucket, a dead endpoint
(BucketUnavailable) and the config factory. Skipped only when moto is not installed."""
import hashlib
import io
import socket
import unittest

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.storage.contract import BucketContract, contract
from tests.support.s3server import MotoS3Server, moto_available
from urdar.storage import bucket_from_config
from urdar.storage.bucket import AccessDenied, BucketHTTPError, BucketUnavailable, NotFound
from urdar.storage.retrying import RetryingBucket
from urdar.storage.s3 import S3Bucket, parse_list_page


def _reactor():
    from twisted.internet import reactor
    return reactor


@unittest.skipUnless(moto_available(), "moto[server] is not installed")
class S3Case(TestCase):
    server = None
    timeout = 120

    @classmethod
    def setUpClass(cls):
        cls.server = MotoS3Server().start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def s3(self, bucket=None, secret=None, **kw):
        b = S3Bucket(_reactor(), self.server.endpoint, bucket or self.server.new_bucket(),
                     access_key_id=self.server.access_key_id,
                     secret_access_key=secret or self.server.secret_access_key,
                     insecure=True, **kw)
        self.addCleanup(b.close)
        return b

    def finish(self, d):
        return d


class S3BucketContractTests(BucketContract, S3Case):
    def make_bucket(self, page_size):
        self.name = self.server.new_bucket()
        return self.s3(self.name, page_size=page_size)

    @contract
    def test_objects_are_visible_to_another_s3_client(self):
        """What we put is what boto3 reads (same keys, same bytes), so other tools see our blocks."""
        yield self.bucket.put("t/01A/meta.json", b"{}")
        yield self.bucket.put("odd key/\u00e9+%", b"x")
        client = self.server.s3_client()
        got = yield self.threaded(client.list_objects_v2, Bucket=self.name)
        self.assertEqual(sorted(o["Key"] for o in got["Contents"]),
                         ["odd key/\u00e9+%", "t/01A/meta.json"])
        obj = yield self.threaded(client.get_object, Bucket=self.name, Key="t/01A/meta.json")
        self.assertEqual(obj["Body"].read(), b"{}")

    def threaded(self, f, *args, **kwargs):
        from twisted.internet import threads
        return threads.deferToThread(f, *args, **kwargs)


class S3BucketTests(S3Case):
    @defer.inlineCallbacks
    def test_more_than_1000_keys_page_with_continuation_tokens(self):
        """A listing of 1005 keys takes two ListObjectsV2 pages at the default page size."""
        b = self.s3()
        names = ["t/%05d" % i for i in range(1005)]
        for i in range(0, len(names), 50):
            yield defer.gatherResults([b.put(n, b"") for n in names[i:i + 50]], consumeErrors=True)
        self.assertEqual((yield b.list("t/")), names)
        self.assertEqual((yield b.list("", "")), names)

    @defer.inlineCallbacks
    def test_wrong_secret_is_access_denied(self):
        """A request signed with a wrong secret fails with AccessDenied (not retried, not NotFound)."""
        good = self.s3()
        yield good.put("x", b"1")
        bad = self.s3(good.bucket, secret="not-the-secret")
        codes = []
        for d in (bad.get("x"), bad.put("y", b"1"), bad.list(""), bad.exists("x")):
            try:
                yield d
            except AccessDenied as e:
                self.assertFalse(e.retryable)
                # HEAD answers carry no body, so only the others can name the cause.
                codes.append(e.code)
            else:
                self.fail("a wrongly signed request succeeded")
        self.assertEqual(codes, ["SignatureDoesNotMatch"] * 3 + [""])

    @defer.inlineCallbacks
    def test_missing_bucket_is_an_http_error(self):
        """A bucket that does not exist is a NoSuchBucket error, not a missing object."""
        b = self.s3("no-such-bucket-here")
        try:
            yield b.get("x")
        except NotFound:
            self.fail("NoSuchBucket reported as a missing object")
        except BucketHTTPError as e:
            self.assertEqual((e.status, e.code), (404, "NoSuchBucket"))
        else:
            self.fail("get from a missing bucket succeeded")

    @defer.inlineCallbacks
    def test_dead_endpoint_is_unavailable_and_retryable(self):
        """Nothing listening on the endpoint gives BucketUnavailable, which retrying retries."""
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        b = S3Bucket(_reactor(), "127.0.0.1:%d" % port, "b", access_key_id="k",
                     secret_access_key="s", insecure=True)
        self.addCleanup(b.close)
        try:
            yield b.get("x")
        except BucketUnavailable as e:
            self.assertTrue(e.retryable)
            self.assertIn("127.0.0.1:%d" % port, str(e))
        else:
            self.fail("get from a dead endpoint succeeded")

    @defer.inlineCallbacks
    def test_large_put_hashes_off_the_reactor(self):
        """A body above the inline-hash size is hashed in the thread pool and signed correctly."""
        b = self.s3(inline_hash_max_bytes=1024)
        data = bytes(range(256)) * 4096          # 1 MiB
        yield b.put("big", data)
        yield b.put("big-stream", io.BytesIO(data))
        got = yield b.get("big")
        self.assertEqual(hashlib.sha256(got).digest(), hashlib.sha256(data).digest())
        self.assertEqual((yield b.get_range("big-stream", 1000, 24)), data[1000:1024])

    @defer.inlineCallbacks
    def test_factory_builds_a_retrying_s3_bucket_from_flags(self):
        """bucket_from_config with Mimir's -blocks-storage.s3.* flags reaches the same bucket."""
        name = self.server.new_bucket()
        b = bucket_from_config({
            "blocks-storage.backend": "s3",
            "blocks-storage.s3.endpoint": self.server.endpoint,
            "blocks-storage.s3.bucket-name": name,
            "blocks-storage.s3.access-key-id": self.server.access_key_id,
            "blocks-storage.s3.secret-access-key": self.server.secret_access_key,
            "blocks-storage.s3.insecure": "true",
        }, reactor=_reactor())
        self.assertIsInstance(b, RetryingBucket)
        self.addCleanup(b.inner.close)
        yield b.put("t/x", b"via flags")
        self.assertEqual((yield self.s3(name).get("t/x")), b"via flags")


class ListPageParsingTests(unittest.TestCase):
    def test_url_encoded_keys_and_tokens(self):
        """Keys and prefixes of an encoding-type=url page are decoded; the token is kept as sent."""
        page = (b'<?xml version="1.0"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                b"<EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>"
                b"<Contents><Key>a%20b%01</Key><Size>1</Size></Contents>"
                b"<CommonPrefixes><Prefix>d%2Fx/</Prefix></CommonPrefixes>"
                b"<NextContinuationToken>tok+/=</NextContinuationToken></ListBucketResult>")
        self.assertEqual(parse_list_page(page), (["a b\x01", "d/x/"], "tok+/="))

    def test_truncated_page_without_token_is_an_error(self):
        """A page that says it is truncated but gives no token fails instead of looping."""
        page = b"<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>"
        with self.assertRaises(BucketHTTPError):
            parse_list_page(page)


class S3TimeoutTests(TestCase):
    def test_silent_server_times_out_as_unavailable(self):
        """A server that accepts the connection but never answers fails the call after timeout_s
        with a retryable BucketUnavailable, and leaves no connection behind."""
        from twisted.internet import protocol
        reactor = _reactor()
        conns = []

        class Silent(protocol.Protocol):
            def connectionMade(self):
                conns.append(self.transport)

        factory = protocol.Factory.forProtocol(Silent)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        b = S3Bucket(reactor, "127.0.0.1:%d" % port.getHost().port, "b", access_key_id="k",
                     secret_access_key="s", insecure=True, timeout_s=0.3)
        self.addCleanup(b.close)

        def check(f):
            f.trap(BucketUnavailable)
            self.assertIn("timed out", str(f.value))
            self.assertTrue(f.value.retryable)
            for t in conns:
                t.loseConnection()
        d = b.get("x")
        d.addCallbacks(lambda r: self.fail("got %r from a silent server" % (r,)), check)
        return d
