"""How late the reactor runs timed calls: the `urdar_reactor_lag_seconds` histogram.

A timer asks to run every `interval_s` on the reactor's clock and observes, at each run, how much
later than asked it ran. Anything that holds the reactor thread (work that should have gone to
net/offload.py) shows up here as lag, and /ready, /metrics and every request wait as long.
Each tick schedules the next one itself (rather than a LoopingCall, which skips missed
intervals), so one long stall is observed as one large lag."""
from prometheus_client import CollectorRegistry, Histogram
from twisted.internet.interfaces import IReactorTime

BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ReactorLag:
    def __init__(self, clock: IReactorTime, registry: CollectorRegistry | None,
                 interval_s: float = 0.1) -> None:
        self.clock = clock
        self.interval_s = interval_s
        self.histogram = Histogram(
            "urdar_reactor_lag_seconds", "Seconds by which a timed call on the reactor thread ran "
            "later than scheduled (sampled every %gs)." % interval_s, buckets=BUCKETS,
            registry=registry)
        self._call = None
        self._due = None
        self.max_lag_s = 0.0

    def start(self):
        if self._call is None:
            self._schedule()

    def stop(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self):
        self._due = self.clock.seconds() + self.interval_s
        self._call = self.clock.callLater(self.interval_s, self._tick)

    def _tick(self):
        lag = max(0.0, self.clock.seconds() - self._due)
        self.histogram.observe(lag)
        self.max_lag_s = max(self.max_lag_s, lag)
        self._schedule()
