"""A real etcd (Debian's etcd-server, 3.4) for integration tests: one member on 127.0.0.1 free
client and peer ports, its data directory and log under a caller-given temporary directory.
`kill()` (SIGKILL), `pause()`/`resume()` (SIGSTOP/SIGCONT) and `start()` again on the same data
directory and ports let tests take etcd away and bring it back. `cluster(workdir, 3)` starts
members that know each other, for fail-over between endpoints."""
import os
import shutil
import signal
import subprocess

from tests.support.services import ROOT, free_port, http, wait_for

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def have_etcd():
    return os.access(ETCD, os.X_OK)


class Etcd:
    def __init__(self, workdir, name="urdar-test"):
        self.workdir = workdir
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.peer = "http://127.0.0.1:%d" % self.peer_port
        self.initial_cluster = "%s=%s" % (name, self.peer)
        self.cluster_token = "urdar-%d" % self.client_port
        self.endpoint = "127.0.0.1:%d" % self.client_port
        self.base = "http://" + self.endpoint
        self.log_path = os.path.join(workdir, "etcd-%d.log" % self.client_port)
        self.proc = None

    def start(self, timeout_s=30, wait=True):
        peer = self.peer
        env = dict(os.environ)
        if os.uname().machine not in ("x86_64", "aarch64"):
            env["ETCD_UNSUPPORTED_ARCH"] = os.uname().machine
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([
                ETCD, "--name", self.name, "--data-dir", os.path.join(self.workdir, "etcd-data"),
                "--listen-client-urls", self.base, "--advertise-client-urls", self.base,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", self.initial_cluster, "--initial-cluster-token", self.cluster_token,
                "--initial-cluster-state", "new", "--logger", "zap", "--log-outputs", "stderr"],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        if wait:
            self.wait_healthy(timeout_s)
        return self

    def wait_healthy(self, timeout_s=30):
        wait_for(self.healthy, timeout_s, lambda: "etcd on %s to be healthy:\n%s" % (
            self.endpoint, self.output()))

    def healthy(self):
        if self.proc.poll() is not None:
            raise AssertionError("etcd exited with %s:\n%s" % (self.proc.returncode, self.output()))
        status, body = http("GET", self.base + "/health", timeout=2)
        return status == 200 and b'"true"' in body

    def output(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")[-8000:]

    def kill(self):
        """SIGKILL, as a crash or a lost machine."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def compact(self):
        """Compact etcd's history up to its current revision (old watch revisions become invalid)."""
        import json
        status, body = http("POST", self.base + "/v3/kv/range", data=b'{"key":"AA=="}')
        rev = json.loads(body)["header"]["revision"]
        status, body = http("POST", self.base + "/v3/kv/compaction",
                            data=json.dumps({"revision": rev, "physical": True}).encode())
        assert status == 200, body
        return int(rev)

    def enable_auth(self, user="root", password="secret"):
        """Turn on etcd's authentication with `user` holding the root role."""
        import json
        for path, body in (("role/add", {"name": "root"}),
                           ("user/add", {"name": user, "password": password}),
                           ("user/grant", {"user": user, "role": "root"}), ("enable", {})):
            status, out = http("POST", self.base + "/v3/auth/" + path, data=json.dumps(body).encode())
            assert status == 200, (path, out)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def cluster(workdir, n=3):
    """n etcd members on 127.0.0.1 forming one cluster (each member's directory under workdir)."""
    members = []
    for i in range(n):
        d = os.path.join(workdir, "m%d" % i)
        os.makedirs(d, exist_ok=True)
        members.append(Etcd(d, name="m%d" % i))
    initial = ",".join("%s=%s" % (m.name, m.peer) for m in members)
    for m in members:
        m.initial_cluster, m.cluster_token = initial, members[0].cluster_token
        m.start(wait=False)     # a member is healthy only once a quorum runs
    for m in members:
        m.wait_healthy(60)
    return members
