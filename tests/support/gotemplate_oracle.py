"""Go's own text/template as a test oracle: tests/support/gotemplate_oracle.go, built once per
test session with Debian's golang-go (stdlib only: no network, no module proxy)."""
import atexit
import json
import os
import shutil
import subprocess
import tempfile
import unittest

GO = shutil.which("go")
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gotemplate_oracle.go")

_binary = None


def _build():
    global _binary
    if _binary is None:
        if GO is None:
            raise unittest.SkipTest("go (Debian golang-go) is not installed")
        d = tempfile.mkdtemp(prefix="urdar-gotemplate-oracle-")
        atexit.register(shutil.rmtree, d, True)
        env = dict(os.environ, GOCACHE=os.path.join(d, "cache"), GOPATH=os.path.join(d, "gopath"),
                   GOTOOLCHAIN="local", GOPROXY="off", GOFLAGS="", GO111MODULE="off")
        src = os.path.join(d, "main.go")
        shutil.copy(SOURCE, src)
        out = os.path.join(d, "oracle")
        subprocess.run([GO, "build", "-o", out, src], cwd=d, env=env, check=True,
                       capture_output=True, timeout=600)
        _binary = out
    return _binary


def run_go(cases, option=""):
    """[(template, data)] -> [(output, error text or "")] as Go's text/template gives them.

    option: a text/template Option such as "missingkey=zero", for every case.
    """
    payload = json.dumps([{"template": t, "data": d, "option": option} for t, d in cases]).encode()
    proc = subprocess.run([_build()], input=payload, capture_output=True, check=True, timeout=600)
    return [(r["out"], r["err"]) for r in json.loads(proc.stdout)]
