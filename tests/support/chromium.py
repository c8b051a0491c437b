"""Headless Chromium driven over the DevTools protocol for UI tests, without a websocket client:
`--remote-debugging-pipe` makes Chromium read NUL-terminated JSON commands from fd 3 and write
its answers and events to fd 4. One page target, attached with a flat session; `evaluate` runs
JavaScript in the page and returns its value; every wait has a deadline."""
import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _high(fd):
    """fd moved to a number above 4 (fd 3 and 4 are where Chromium expects its pipe)."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class DevToolsError(AssertionError):
    pass


class Chromium:
    def __init__(self, timeout_s=20):
        if CHROMIUM is None:
            raise RuntimeError("chromium is not installed")
        self.timeout_s = timeout_s
        self.profile = tempfile.mkdtemp(prefix="urdar-chromium-")
        self.log = open(os.path.join(self.profile, "chromium.log"), "w+b")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # Above 4, so that putting one on fd 3 cannot overwrite the other before it is moved.
        to_child_r = _high(to_child_r)
        from_child_w = _high(from_child_w)

        def fds():  # in the child: the pipe ends on fds 3 and 4, where Chromium expects them
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             "--user-data-dir=" + self.profile, "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", "--disable-sync",
             "--disable-component-update", "--disable-dev-shm-usage", "--window-size=1280,1000",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            preexec_fn=fds, close_fds=True, pass_fds=(3, 4))
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._next_id = 0
        self.events = []
        self.session = None
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Network.enable")

    def output(self):
        self.log.flush()
        with open(self.log.name, "rb") as f:
            return f.read().decode("utf-8", "replace")[-5000:]

    def _read_message(self, deadline):
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DevToolsError("no answer from Chromium in %ss\n%s" % (self.timeout_s, self.output()))
            ready, _, _ = select.select([self._from_child], [], [], left)
            if ready:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise DevToolsError("Chromium closed its pipe:\n" + self.output())
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method, **params):
        """One command (on the page's session once attached); its result, or DevToolsError."""
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params}
        if self.session is not None:
            msg["sessionId"] = self.session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._to_child, data):]
        deadline = time.monotonic() + self.timeout_s
        while True:
            got = self._read_message(deadline)
            if got.get("id") == self._next_id:
                if "error" in got:
                    raise DevToolsError("%s: %s" % (method, got["error"]))
                return got.get("result", {})
            if "method" in got:
                self.events.append(got)

    def evaluate(self, expression):
        """The value of a JavaScript expression in the page (promises awaited)."""
        got = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                        awaitPromise=True)
        if "exceptionDetails" in got:
            raise DevToolsError("%s raised %s" % (expression, got["exceptionDetails"]))
        return got["result"].get("value")

    def wait_for(self, expression, what, timeout_s=None):
        """Poll a JavaScript expression until it is truthy (its value returned)."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        last = None
        while time.monotonic() < deadline:
            last = self.evaluate(expression)
            if last:
                return last
            time.sleep(0.1)
        raise DevToolsError("timed out waiting for %s (last: %r)" % (what, last))

    def navigate(self, url, headers=None):
        """Open url, with extra request headers on every request of the page (as a proxy in
        front of urdar adds X-Scope-OrgID), and wait for its load event."""
        if headers:
            self.send("Network.setExtraHTTPHeaders", headers=headers)
        self.events.clear()
        got = self.send("Page.navigate", url=url)
        if got.get("errorText"):
            raise DevToolsError("navigating to %s: %s" % (url, got["errorText"]))
        self.wait_for("document.readyState === 'complete'", "the page's load event")

    def screenshot(self, path):
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def close(self):
        try:
            if self.proc.poll() is None:
                try:
                    self.session = None
                    self.send("Browser.close")
                except (DevToolsError, OSError):
                    pass
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            for fd in (self._to_child, self._from_child):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.log.close()
            shutil.rmtree(self.profile, ignore_errors=True)
