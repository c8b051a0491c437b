"""Thread-pool stand-ins for SynchronousTestCase: work runs inline, or when the test says so.

`inline_offload()` gives an Offload whose pools run jobs at once on the calling thread and whose
"callFromThread" delivers at once, so offloaded Deferreds have fired by the time run() returns.
`ManualThreadPool` keeps jobs until `run_next()`/`run_all()`, to test full pools and ordering."""
from urdar.net.offload import Offload


class InlineReactor:
    """Only what Offload needs from a reactor: callFromThread runs the call immediately."""

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


class InlineThreadPool:
    def __init__(self, workers=1, name="inline"):
        self.started = False

    def start(self):
        self.started = True

    def stop(self):
        self.started = False

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        try:
            result = f(*args, **kwargs)
        except BaseException as exc:  # delivered as a Failure, like Twisted's ThreadPool
            on_result(False, exc)
        else:
            on_result(True, result)


class ManualThreadPool(InlineThreadPool):
    """Queues jobs; the test runs them with run_next()/run_all()."""

    def __init__(self, workers=1, name="manual"):
        super().__init__(workers, name)
        self.pending = []

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        self.pending.append((on_result, f, args, kwargs))

    def run_next(self):
        on_result, f, args, kwargs = self.pending.pop(0)
        InlineThreadPool.callInThreadWithCallback(self, on_result, f, *args, **kwargs)

    def run_all(self):
        while self.pending:
            self.run_next()


def inline_offload(pools=(("decode", 2, 10), ("append", 2, 10), ("compact", 1, 10), ("admin", 1, 10))):
    """An Offload with the usual pool names whose jobs run inline."""
    off = Offload(InlineReactor(), lambda workers, name: InlineThreadPool(workers, name))
    for name, workers, queued in pools:
        off.add_pool(name, workers, queued)
    off.start()
    return off
