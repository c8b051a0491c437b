"""The reactor lag histogram: how late timed calls on the reactor run."""
from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from urdar.net.reactorlag import ReactorLag


class ReactorLagTests(SynchronousTestCase):
    def test_stall_is_observed_as_lag(self):
        """A reactor held for 2.5 s shows as one 2.5 s observation in urdar_reactor_lag_seconds."""
        clock, registry = Clock(), CollectorRegistry()
        lag = ReactorLag(clock, registry, interval_s=0.1)
        lag.start()
        clock.advance(0.1)
        clock.advance(0.1)
        self.assertEqual(registry.get_sample_value("urdar_reactor_lag_seconds_count"), 2)
        self.assertEqual(registry.get_sample_value("urdar_reactor_lag_seconds_sum"), 0)
        clock.advance(2.6)          # the next tick was due 0.1 s in: it ran 2.5 s late
        self.assertAlmostEqual(registry.get_sample_value("urdar_reactor_lag_seconds_sum"), 2.5)
        self.assertEqual(registry.get_sample_value("urdar_reactor_lag_seconds_bucket", {"le": "1.0"}), 2)
        lag.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
