"""A moto S3 server on 127.0.0.1 (free port, own thread) that checks SigV4 signatures.

moto checks signatures only after its first INITIAL_NO_AUTH_ACTION_COUNT actions, so start()
resets moto, sets that count to 3 through its /moto-api/reset-auth endpoint, and spends the three
unauthenticated actions on creating an IAM user with an allow-all policy and an access key. Every
later request, ours included, must be signed with that key. `new_bucket()` creates an empty bucket
per test. moto keeps its state in process-wide globals, so run one server at a time (tests start
it in setUpClass and stop it in tearDownClass, which joins the thread and frees the port)."""
import json
import logging
import urllib.request
import uuid

REGION = "us-east-1"
_ALLOW_ALL = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "*", "Resource": "*"}]})


def moto_available():
    """True when moto's server and boto3 can be imported (they come with requirements-test.txt)."""
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in ("moto", "boto3", "flask"))


class MotoS3Server:
    """start() -> self; `endpoint` ("127.0.0.1:PORT"), `access_key_id`, `secret_access_key`."""

    def __init__(self):
        self._server = None
        self.endpoint = None
        self.access_key_id = None
        self.secret_access_key = None

    def start(self):
        from moto.server import ThreadedMotoServer
        logging.getLogger("werkzeug").setLevel(logging.ERROR)   # no access log per request
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = "%s:%d" % (host, port)
        try:
            self._post("/moto-api/reset", b"")
            self._post("/moto-api/reset-auth", b"3")
            iam = self._client("iam", "unused", "unused")
            iam.create_user(UserName="urdar")
            iam.put_user_policy(UserName="urdar", PolicyName="all", PolicyDocument=_ALLOW_ALL)
            key = iam.create_access_key(UserName="urdar")["AccessKey"]
        except BaseException:
            self.stop()
            raise
        self.access_key_id = key["AccessKeyId"]
        self.secret_access_key = key["SecretAccessKey"]
        return self

    def stop(self):
        if self._server is not None:
            try:
                # Leave moto as we found it for whatever runs next in this process.
                self._post("/moto-api/reset-auth", b"inf")
                self._post("/moto-api/reset", b"")
            finally:
                self._server.stop()
                self._server = None

    def _post(self, path, body):
        req = urllib.request.Request("http://%s%s" % (self.endpoint, path), data=body,
                                     method="POST", headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()

    def _client(self, service, key_id, secret):
        import boto3
        return boto3.client(service, endpoint_url="http://" + self.endpoint, region_name=REGION,
                            aws_access_key_id=key_id, aws_secret_access_key=secret)

    def s3_client(self):
        """A signed boto3 S3 client (blocking; for test set-up and cross-checks only)."""
        return self._client("s3", self.access_key_id, self.secret_access_key)

    def new_bucket(self):
        """Create an empty bucket with a fresh name and return the name."""
        name = "urdar-%s" % (uuid.uuid4().hex[:16],)
        self.s3_client().create_bucket(Bucket=name)
        return name
