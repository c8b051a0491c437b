"""Per-tenant limits, runtime-config overrides and their reload, and the ingestion token bucket."""
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from urdar.app.config import Config, ConfigError
from urdar.components.limits import Overrides, RateLimiter, RuntimeConfig, parse_runtime_config


class OverridesTests(SynchronousTestCase):
    def test_defaults_and_overrides(self):
        """A tenant without overrides gets the defaults; an override changes only its keys."""
        o = Overrides(Config().limits_defaults(), {"t1": {"ingestion_rate": 5.0}})
        self.assertEqual(o.for_tenant("t1").ingestion_rate, 5.0)
        self.assertEqual(o.for_tenant("t1").ingestion_burst_size, 200000)
        self.assertEqual(o.for_tenant("t2").ingestion_rate, 10000.0)

    def test_parse_runtime_config(self):
        """Runtime overrides use the limits keys and their value syntax."""
        got = parse_runtime_config("overrides:\n  t1:\n    creation_grace_period: 1h\n"
                                   "    max_global_series_per_user: 10\n", "rt.yaml")
        self.assertEqual(got, {"t1": {"creation_grace_period": 3600000, "max_global_series_per_user": 10}})
        self.assertEqual(parse_runtime_config("", "rt.yaml"), {})

    def test_parse_errors_name_the_key(self):
        """Unknown keys, bad values and bad tenant IDs are errors naming what is wrong."""
        for text, name in (("overrides:\n  t1:\n    nope: 1\n", "overrides.t1.nope"),
                           ("overrides:\n  t1:\n    ingestion_rate: fast\n", "overrides.t1.ingestion_rate"),
                           ("overrides:\n  a/b:\n    ingestion_rate: 1\n", "a/b"),
                           ("overide: {}\n", "overide")):
            with self.assertRaises(ConfigError) as e:
                parse_runtime_config(text, "rt.yaml")
            self.assertIn(name, str(e.exception))


class RuntimeReloadTests(SynchronousTestCase):
    def test_reload_on_period_and_keep_old_on_error(self):
        """The file is re-read every period; a broken file keeps the previous overrides."""
        files = {"rt.yaml": "overrides:\n  t1:\n    ingestion_rate: 1\n"}
        clock = Clock()
        o = Overrides(Config().limits_defaults())
        rc = RuntimeConfig(["rt.yaml"], 10000, o, clock, read_file=lambda p: files[p])
        rc.load_now()
        rc.start()
        self.addCleanup(rc.stop)
        self.assertEqual(o.for_tenant("t1").ingestion_rate, 1.0)
        files["rt.yaml"] = "overrides:\n  t1:\n    ingestion_rate: 2\n"
        clock.advance(9)
        self.assertEqual(o.for_tenant("t1").ingestion_rate, 1.0)
        clock.advance(1)
        self.assertEqual(o.for_tenant("t1").ingestion_rate, 2.0)
        files["rt.yaml"] = "overrides:\n  t1:\n    ingestion_rat: 3\n"
        clock.advance(10)
        self.assertEqual(o.for_tenant("t1").ingestion_rate, 2.0)
        self.assertIn("ingestion_rat", rc.last_error)

    def test_files_merge_left_to_right(self):
        """With several runtime files, later ones override earlier ones."""
        files = {"a": "overrides:\n  t:\n    ingestion_rate: 1\n    ingestion_burst_size: 5\n",
                 "b": "overrides:\n  t:\n    ingestion_rate: 2\n"}
        o = Overrides(Config().limits_defaults())
        RuntimeConfig(["a", "b"], 0, o, Clock(), read_file=lambda p: files[p]).load_now()
        lim = o.for_tenant("t")
        self.assertEqual((lim.ingestion_rate, lim.ingestion_burst_size), (2.0, 5))


class RateLimiterTests(SynchronousTestCase):
    def test_token_bucket(self):
        """Up to the burst passes at once, then tokens refill at the rate; refusals take nothing."""
        clock = Clock()
        rl = RateLimiter(clock)
        self.assertTrue(rl.allow("t", 20, 10.0, 20))
        self.assertFalse(rl.allow("t", 1, 10.0, 20))
        clock.advance(0.5)
        self.assertFalse(rl.allow("t", 6, 10.0, 20))
        self.assertTrue(rl.allow("t", 5, 10.0, 20))
        self.assertFalse(rl.allow("t", 21, 10.0, 20))   # more than the burst never passes
        clock.advance(100)
        self.assertTrue(rl.allow("t", 20, 10.0, 20))
        self.assertTrue(rl.allow("other", 20, 10.0, 20))
