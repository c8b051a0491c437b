"""S3 bucket (-blocks-storage.backend=s3): SigV4-signed requests sent with treq over a persistent pool.

Requests are signed with botocore's S3SigV4Auth on an AWSRequest (only the signer is used, no boto
client) and sent by treq through one HTTPConnectionPool, so the reactor thread never blocks on the
network. The payload hash (x-amz-content-sha256) of a body above `inline_hash_max_bytes`, of a file
and of a stream is computed off the reactor (offload pool, else the reactor's thread pool), and
ListObjectsV2 pages above that size are parsed there too. Keys are listed with encoding-type=url so
any valid name survives XML. Error bodies (<Error><Code>) become NotFound, AccessDenied or
BucketHTTPError(status, code); connection failures and timeouts become BucketUnavailable, which
retrying.py retries. Addressing is path style (http://host/bucket/key) or virtual-hosted
(http://bucket.host/key); 'auto' picks virtual-hosted only for amazonaws.com endpoints."""
import email.utils
import hashlib
import io
import os
import xml.etree.ElementTree as ET
from urllib.parse import quote, unquote

import treq
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from twisted.internet import defer, error as neterror
from twisted.web import _newclient
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers

from urdar.storage.bucket import (
    AccessDenied, Attributes, BucketConfigError, BucketHTTPError, BucketUnavailable, NotFound,
    check_range, put_data_kind, run_off_reactor, validate_name, validate_prefix)

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_HASH_CHUNK = 1 << 20
_ACCESS_CODES = ("AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId",
                 "InvalidToken", "ExpiredToken", "AuthorizationHeaderMalformed")
# Failures of the connection itself (not an HTTP answer): retryable as BucketUnavailable.
_CONNECTION_ERRORS = (neterror.ConnectError, neterror.ConnectionLost, neterror.TimeoutError,
                      _newclient.ResponseFailed, _newclient.ResponseNeverReceived,
                      _newclient.RequestTransmissionFailed, ConnectionError, TimeoutError)


class _KnownPayloadAuth(S3SigV4Auth):
    """S3SigV4Auth that signs the payload hash we computed (off the reactor when large) instead
    of hashing request.body itself."""

    def payload(self, request):
        return request.context["urdar_payload_sha256"]


class S3Bucket:
    """A Bucket on an S3-compatible store.

    `endpoint` is host[:port] (no scheme); `insecure` selects http; `bucket_lookup_type` is 'auto',
    'path' or 'virtual-hosted'. `page_size` is ListObjectsV2's max-keys (1..1000). `timeout_s`
    bounds each request from connect to the last body byte. Call close() on shutdown."""

    def __init__(self, reactor, endpoint, bucket, region="us-east-1", access_key_id="",
                 secret_access_key="", insecure=False, bucket_lookup_type="auto", offload=None,
                 pool="bucket", page_size=1000, timeout_s=60.0, connect_timeout_s=10.0,
                 max_connections_per_host=16, inline_hash_max_bytes=64 * 1024):
        if not endpoint or "://" in endpoint or "/" in endpoint:
            raise BucketConfigError("-blocks-storage.s3.endpoint must be host[:port] without a "
                                    "scheme or path, got %r" % (endpoint,))
        if not bucket or "/" in bucket:
            raise BucketConfigError("-blocks-storage.s3.bucket-name must be set (got %r)" % (bucket,))
        if not 1 <= page_size <= 1000:
            raise BucketConfigError("S3 page_size must be within 1..1000, got %r" % (page_size,))
        if bucket_lookup_type == "auto":
            host = endpoint.rsplit(":", 1)[0]
            bucket_lookup_type = "virtual-hosted" if host.endswith("amazonaws.com") else "path"
        if bucket_lookup_type not in ("path", "virtual-hosted"):
            raise BucketConfigError("-blocks-storage.s3.bucket-lookup-type must be auto, path or "
                                    "virtual-hosted, got %r" % (bucket_lookup_type,))
        scheme = "http" if insecure else "https"
        if bucket_lookup_type == "path":
            self._base = "%s://%s/%s/" % (scheme, endpoint, quote(bucket, safe=""))
        else:
            self._base = "%s://%s.%s/" % (scheme, bucket, endpoint)
        self.bucket = bucket
        self.endpoint = endpoint
        self._reactor = reactor
        self._offload = offload
        self._pool_name = pool
        self._page_size = page_size
        self._timeout_s = timeout_s
        self._inline_hash_max = inline_hash_max_bytes
        self._auth = _KnownPayloadAuth(Credentials(access_key_id, secret_access_key), "s3", region)
        self._conn_pool = HTTPConnectionPool(reactor, persistent=True)
        self._conn_pool.maxPersistentPerHost = max_connections_per_host
        self._http = treq.client.HTTPClient(
            Agent(reactor, pool=self._conn_pool, connectTimeout=connect_timeout_s))

    def __repr__(self):
        return "S3Bucket(%r)" % (self._base,)

    def close(self):
        """Deferred fired when the persistent connections are closed."""
        return self._conn_pool.closeCachedConnections()

    # -- requests ---------------------------------------------------------------------------

    def _off(self, fn, *args):
        return run_off_reactor(self._offload, self._pool_name, self._reactor, fn, *args)

    def _url(self, name, query=()):
        url = self._base + quote(name, safe="/~")
        if query:
            url += "?" + "&".join("%s=%s" % (quote(k, safe="-_.~"), quote(v, safe="-_.~"))
                                  for k, v in query)
        return url

    def _signed_headers(self, method, url, headers, payload_sha256):
        req = AWSRequest(method=method, url=url, headers=dict(headers))
        req.context["urdar_payload_sha256"] = payload_sha256
        self._auth.add_auth(req)
        out = Headers()
        for k, v in req.headers.items():
            out.addRawHeader(k, v)
        return out

    @defer.inlineCallbacks
    def _request(self, method, name, query=(), headers=None, body=None,
                 payload_sha256=EMPTY_SHA256, read_body=True):
        """(status, headers, body bytes) of one signed request; transport failures raise
        BucketUnavailable. `body` is an IBodyProducer or None."""
        url = self._url(name, query)
        hdrs = self._signed_headers(method, url, headers or {}, payload_sha256)
        timed_out = []
        d = self._http.request(method, url, headers=hdrs, data=body, unbuffered=True)

        def on_timeout():
            timed_out.append(True)
            d.cancel()
        timer = self._reactor.callLater(self._timeout_s, on_timeout)
        try:
            try:
                resp = yield d
                content = (yield treq.content(resp)) if read_body else b""
            except defer.CancelledError:
                if timed_out:
                    raise BucketUnavailable("S3 %s %s timed out after %gs"
                                            % (method, url, self._timeout_s), name) from None
                raise
            except _CONNECTION_ERRORS as e:
                if timed_out:
                    raise BucketUnavailable("S3 %s %s timed out after %gs"
                                            % (method, url, self._timeout_s), name) from None
                raise BucketUnavailable("S3 %s %s failed: %s" % (method, url, _describe(e)),
                                        name, cause=e) from None
        finally:
            if timer.active():
                timer.cancel()
        return resp.code, resp.headers, content

    # -- Bucket ------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def get(self, name):
        validate_name(name)
        status, _h, content = yield self._request("GET", name)
        if status != 200:
            raise _error(status, content, name)
        return content

    @defer.inlineCallbacks
    def get_range(self, name, offset, length):
        validate_name(name)
        check_range(offset, length)
        if length == 0:
            yield self.attributes(name)     # NotFound still has to surface
            return b""
        status, _h, content = yield self._request(
            "GET", name, headers={"Range": "bytes=%d-%d" % (offset, offset + length - 1)})
        if status == 206:
            return content
        if status == 200:                   # a server that ignores Range sends everything
            return content[offset:offset + length]
        if status == 416:                   # offset at or past the end of an existing object
            return b""
        raise _error(status, content, name)

    @defer.inlineCallbacks
    def put(self, name, data):
        validate_name(name)
        kind = put_data_kind(data)
        if kind == "bytes" and len(data) <= self._inline_hash_max:
            data = bytes(data)
            digest = hashlib.sha256(data).hexdigest()
        elif kind == "bytes":
            data = bytes(data)
            digest = yield self._off(_sha256_bytes, data)
        elif kind == "stream" and not _seekable(data):
            data = yield self._off(data.read)
            kind = "bytes"
            digest = yield self._off(_sha256_bytes, data)
        else:
            digest = yield self._off(_sha256_file, data)
        fobj = None
        if kind == "bytes":
            # No producer for an empty body: Twisted then sends Content-Length: 0 for PUT.
            producer = FileBodyProducer(io.BytesIO(data)) if data else None
        elif kind == "path":
            fobj = open(data, "rb")
            producer = FileBodyProducer(fobj)
        else:
            # FileBodyProducer closes its file at EOF; the caller owns the stream (and retrying
            # seeks it back), so hand it a view whose close() does nothing.
            producer = FileBodyProducer(_Unclosable(data))
        try:
            status, _h, content = yield self._request(
                "PUT", name, headers={"Content-Type": "application/octet-stream"},
                body=producer, payload_sha256=digest)
        finally:
            if fobj is not None:
                fobj.close()
        if status != 200:
            raise _error(status, content, name)

    @defer.inlineCallbacks
    def delete(self, name):
        validate_name(name)
        status, _h, content = yield self._request("DELETE", name)
        if status in (200, 204):
            return None
        err = _error(status, content, name)
        if isinstance(err, NotFound):
            return None
        raise err

    @defer.inlineCallbacks
    def exists(self, name):
        try:
            yield self.attributes(name)
        except NotFound:
            return False
        return True

    @defer.inlineCallbacks
    def attributes(self, name):
        validate_name(name)
        status, headers, content = yield self._request("HEAD", name, read_body=False)
        if status != 200:
            raise _error(status, content, name)
        size = int(headers.getRawHeaders(b"content-length", [b"0"])[0])
        lm = headers.getRawHeaders(b"last-modified", [None])[0]
        mtime = email.utils.parsedate_to_datetime(lm.decode("latin-1")).timestamp() if lm else 0.0
        return Attributes(size, mtime)

    @defer.inlineCallbacks
    def list(self, prefix="", delimiter="/"):
        validate_prefix(prefix)
        if delimiter not in ("", "/"):
            raise ValueError("delimiter must be '/' or '' (recursive), not %r" % (delimiter,))
        out = []
        token = None
        while True:
            query = [("list-type", "2"), ("encoding-type", "url"),
                     ("max-keys", str(self._page_size)), ("prefix", prefix)]
            if delimiter:
                query.append(("delimiter", delimiter))
            if token is not None:
                query.append(("continuation-token", token))
            status, _h, content = yield self._request("GET", "", query=query)
            if status != 200:
                raise _error(status, content, "")
            if len(content) > self._inline_hash_max:
                names, token = yield self._off(parse_list_page, content)
            else:
                names, token = parse_list_page(content)
            out.extend(names)
            if token is None:
                break
        return sorted(set(out))


def parse_list_page(content):
    """(names, next continuation token or None) from one ListObjectsV2 XML page (encoding-type=url):
    keys and common prefixes, URL-decoded."""
    root = ET.fromstring(content)
    ns = _S3_NS if root.tag.startswith(_S3_NS) else ""
    url_encoded = (root.findtext(ns + "EncodingType") or "").lower() == "url"
    dec = unquote if url_encoded else (lambda s: s)
    names = [dec(el.findtext(ns + "Key") or "") for el in root.iter(ns + "Contents")]
    names.extend(dec(el.findtext(ns + "Prefix") or "") for el in root.iter(ns + "CommonPrefixes"))
    truncated = (root.findtext(ns + "IsTruncated") or "").lower() == "true"
    token = root.findtext(ns + "NextContinuationToken") if truncated else None
    if truncated and not token:
        raise BucketHTTPError(200, "MalformedListing",
                              "truncated ListObjectsV2 page without NextContinuationToken")
    return names, token


def _error(status, content, name):
    """The BucketError for an S3 error answer (XML <Error> body, or none for HEAD)."""
    code = message = ""
    if content:
        try:
            root = ET.fromstring(content)
            ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
            code = root.findtext(ns + "Code") or ""
            message = root.findtext(ns + "Message") or ""
        except ET.ParseError:
            message = content[:200].decode("utf-8", "replace")
    if code == "NoSuchKey" or (status == 404 and not code and name):
        return NotFound(name)
    if status == 403 or code in _ACCESS_CODES:
        return AccessDenied("S3 refused the request (%s %s): %s" % (status, code or "Forbidden",
                                                                  message or "check the access key "
                                                                  "and secret"), name, code)
    return BucketHTTPError(status, code, message, name)


def _describe(exc):
    reasons = getattr(exc, "reasons", None)
    if reasons:
        return "; ".join(str(r.value) for r in reasons)
    return str(exc) or type(exc).__name__


class _Unclosable:
    """A binary stream seen through read/seek/tell only; close() leaves the stream open."""

    def __init__(self, f):
        self._f = f

    def read(self, n=-1):
        return self._f.read(n)

    def seek(self, offset, whence=0):
        return self._f.seek(offset, whence)

    def tell(self):
        return self._f.tell()

    def close(self):
        pass


def _seekable(f):
    try:
        return f.seekable()
    except (AttributeError, OSError):
        return False


def _sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def _sha256_file(src):
    """Hex SHA-256 of a file path, or of a seekable stream from its position (restored after)."""
    h = hashlib.sha256()
    if isinstance(src, (str, os.PathLike)):
        with open(src, "rb") as f:
            for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
                h.update(chunk)
        return h.hexdigest()
    pos = src.tell()
    try:
        for chunk in iter(lambda: src.read(_HASH_CHUNK), b""):
            h.update(chunk)
    finally:
        src.seek(pos)
    return h.hexdigest()
