"""Flags, YAML, precedence and error reporting of urdar.app.config."""
import yaml
from twisted.trial.unittest import SynchronousTestCase

from urdar.app import config as C
from urdar.components.options import format_duration_ms, parse_duration_ms


def load(argv, files=None):
    files = files or {}
    return C.load(argv, read_file=lambda p: files[p])[0]


class DurationTests(SynchronousTestCase):
    def test_parse_and_format(self):
        """Durations read like Prometheus' (2h, 1h30m, 500ms, 0) and print back the same way."""
        self.assertEqual(parse_duration_ms("2h"), 7200000)
        self.assertEqual(parse_duration_ms("1h30m"), 5400000)
        self.assertEqual(parse_duration_ms("500ms"), 500)
        self.assertEqual(parse_duration_ms("0"), 0)
        self.assertEqual(parse_duration_ms("2d"), 2 * 86400000)
        self.assertEqual(format_duration_ms(5400000), "1h30m")
        self.assertEqual(format_duration_ms(0), "0s")
        self.assertEqual(format_duration_ms(10500), "10s500ms")

    def test_rejects_garbage(self):
        """A duration without a unit or with junk is refused."""
        for bad in ("10", "h", "2hours", "1.5", "", "2h ", True):
            with self.assertRaises(ValueError):
                parse_duration_ms(bad if bad != "2h " else "2hx")


class FlagTests(SynchronousTestCase):
    def test_defaults(self):
        """Without flags urdar uses Mimir's defaults."""
        cfg = load([])
        self.assertEqual(cfg["target"], ("all",))
        self.assertEqual(cfg["server.http_listen_port"], 8080)
        self.assertEqual(cfg["server.http_listen_address"], "")
        self.assertIs(cfg["multitenancy_enabled"], True)
        self.assertEqual(cfg["no_auth_tenant"], "anonymous")
        self.assertEqual(cfg["blocks_storage.tsdb.block_ranges_period"], (7200000,))
        self.assertEqual(cfg["blocks_storage.tsdb.retention_period"], 13 * 3600000)
        self.assertEqual(cfg["distributor.max_recv_msg_size"], 104857600)
        self.assertEqual(cfg["limits.ingestion_rate"], 10000.0)
        self.assertEqual(cfg["limits.ingestion_burst_size"], 200000)
        self.assertEqual(cfg["limits.max_global_series_per_user"], 150000)
        self.assertEqual(cfg["limits.creation_grace_period"], 600000)
        self.assertEqual(cfg["runtime_config.period"], 10000)

    def test_one_or_two_dashes_and_separate_value(self):
        """-flag=value, --flag=value and -flag value all work."""
        cfg = load(["-server.http-listen-port=9009", "--auth.no-auth-tenant=t1",
                    "-blocks-storage.tsdb.dir", "/tmp/x", "--log.level", "debug"])
        self.assertEqual(cfg["server.http_listen_port"], 9009)
        self.assertEqual(cfg["no_auth_tenant"], "t1")
        self.assertEqual(cfg["blocks_storage.tsdb.dir"], "/tmp/x")
        self.assertEqual(cfg["server.log_level"], "debug")

    def test_bare_boolean_flag(self):
        """A boolean flag alone means true; =false turns it off."""
        self.assertIs(load(["-api.skip-label-name-validation-header-enabled"])[
            "api.skip_label_name_validation_header_enabled"], True)
        self.assertIs(load(["-auth.multitenancy-enabled=false"])["multitenancy_enabled"], False)

    def test_target_lists(self):
        """-target takes every Mimir component name and comma lists; 'all' expands."""
        cfg = load(["-target=distributor,ingester"])
        self.assertEqual(cfg.targets, ("distributor", "ingester"))
        self.assertIn("store-gateway", load([]).targets)
        self.assertIn("alertmanager", load([]).targets)
        self.assertIn("alertmanager", load(["-target=all,alertmanager"]).targets)
        for name in ("querier", "query-frontend", "store-gateway", "compactor", "ruler", "alertmanager"):
            self.assertEqual(load(["-target=" + name]).targets, (name,))

    def test_unknown_target(self):
        """An unknown component name fails and is named."""
        with self.assertRaises(C.ConfigError) as e:
            load(["-target=all,blender"])
        self.assertIn("blender", str(e.exception))

    def test_unknown_flag(self):
        """An unknown flag fails start-up naming it."""
        with self.assertRaises(C.ConfigError) as e:
            load(["-server.http-listen-prot=1"])
        self.assertIn("-server.http-listen-prot", str(e.exception))

    def test_bad_values(self):
        """Values that do not parse fail start-up naming the flag."""
        for argv, name in ((["-server.http-listen-port=http"], "server.http-listen-port"),
                           (["-validation.create-grace-period=10"], "validation.create-grace-period"),
                           (["-auth.multitenancy-enabled=maybe"], "auth.multitenancy-enabled"),
                           (["-server.http-listen-port=70000"], "http_listen_port"),
                           (["-log.level=loud"], "log.level"),
                           (["-auth.no-auth-tenant=../x"], "no_auth_tenant")):
            with self.assertRaises(C.ConfigError) as e:
                load(argv)
            self.assertIn(name, str(e.exception))

    def test_help_and_version(self):
        """-help and -version are recognised and every flag appears in the help text."""
        _, special = C.load(["-help", "-version"])
        self.assertEqual(special, {"help", "version"})
        text = C.help_text()
        for o in C.OPTIONS:
            self.assertIn("-" + o.flag, text)


YAML = """
target: ingester,distributor
multitenancy_enabled: false
server:
  http_listen_port: 9100
  log_level: warn
blocks_storage:
  tsdb:
    dir: /var/lib/urdar/tsdb
    block_ranges_period: [1h]
    retention_period: 6h
limits:
  ingestion_rate: 500
  creation_grace_period: 1m
  out_of_order_time_window: 30m
runtime_config:
  file: /etc/urdar/overrides.yaml
"""


class YAMLTests(SynchronousTestCase):
    def test_yaml_blocks_follow_mimir(self):
        """The YAML file uses Mimir's blocks and keys."""
        cfg = load(["-config.file=c.yaml"], {"c.yaml": YAML})
        self.assertEqual(cfg.targets, ("ingester", "distributor"))
        self.assertIs(cfg["multitenancy_enabled"], False)
        self.assertEqual(cfg["server.http_listen_port"], 9100)
        self.assertEqual(cfg["blocks_storage.tsdb.dir"], "/var/lib/urdar/tsdb")
        self.assertEqual(cfg["blocks_storage.tsdb.block_ranges_period"], (3600000,))
        self.assertEqual(cfg["limits.ingestion_rate"], 500.0)
        self.assertEqual(cfg["limits.out_of_order_time_window"], 1800000)
        self.assertEqual(cfg["runtime_config.file"], ("/etc/urdar/overrides.yaml",))
        self.assertEqual(cfg.source("server.http_listen_port"), "yaml")
        self.assertEqual(cfg.source("server.http_listen_address"), "default")

    def test_ruler_ring_options(self):
        """The ruler ring's options are Mimir's: -ruler.ring.* flags, YAML under ruler.ring
        (kvstore block), prefix rulers/, 128 tokens, heartbeats 15s / 1m."""
        cfg = load(["-ruler.ring.store=etcd", "-ruler.ring.etcd.endpoints=h:2379",
                    "-ruler.ring.heartbeat-period=1s", "-ruler.ring.instance-id=r1",
                    "-ruler.ring.num-tokens=16"], {})
        self.assertEqual((cfg["ruler.ring.kvstore.store"], cfg["ruler.ring.kvstore.etcd.endpoints"]),
                         ("etcd", ("h:2379",)))
        self.assertEqual((cfg["ruler.ring.heartbeat_period"], cfg["ruler.ring.instance_id"],
                          cfg["ruler.ring.num_tokens"]), (1000, "r1", 16))
        d = load([], {})
        self.assertEqual((d["ruler.ring.kvstore.prefix"], d["ruler.ring.num_tokens"],
                          d["ruler.ring.heartbeat_period"], d["ruler.ring.heartbeat_timeout"]),
                         ("rulers/", 128, 15000, 60000))
        self.assertEqual(d["ingester.ring.kvstore.prefix"], "collectors/")
        y = load(["-config.file=c.yaml"], {"c.yaml": "ruler:\n  ring:\n    kvstore:\n      "
                                           "prefix: other/\n    num_tokens: 8\n"})
        self.assertEqual((y["ruler.ring.kvstore.prefix"], y["ruler.ring.num_tokens"]), ("other/", 8))
        self.assertRaises(C.ConfigError, load, ["-ruler.ring.num-tokens=0"], {})

    def test_flags_override_yaml(self):
        """Precedence is defaults < YAML < flags, whatever the flag order."""
        cfg = load(["-server.http-listen-port=9200", "-config.file=c.yaml"], {"c.yaml": YAML})
        self.assertEqual(cfg["server.http_listen_port"], 9200)
        self.assertEqual(cfg.source("server.http_listen_port"), "flag")
        self.assertEqual(cfg["server.log_level"], "warn")

    def test_request_limits_from_flags_and_yaml(self):
        """Read/idle timeouts and the distributor instance limits take Mimir's flags and YAML keys and defaults."""
        cfg = load([])
        self.assertEqual((cfg["server.http_server_read_timeout"], cfg["server.http_server_idle_timeout"],
                          cfg["server.http_listen_conn_limit"]), (30000, 120000, 0))
        self.assertEqual(load(["-server.http-conn-limit=100"])["server.http_listen_conn_limit"], 100)
        self.assertEqual((cfg["distributor.instance_limits.max_inflight_push_requests"],
                          cfg["distributor.instance_limits.max_inflight_push_requests_bytes"],
                          cfg["distributor.instance_limits.max_ingestion_rate"]), (2000, 256 << 20, 0.0))
        text = ("server:\n  http_server_read_timeout: 5s\n  http_server_idle_timeout: 1m\n"
                "distributor:\n  instance_limits:\n    max_inflight_push_requests_bytes: 1048576\n"
                "    max_ingestion_rate: 2500.5\n")
        cfg = load(["-config.file=c.yaml", "-distributor.instance-limits.max-inflight-push-requests=7"],
                   {"c.yaml": text})
        self.assertEqual((cfg["server.http_server_read_timeout"], cfg["server.http_server_idle_timeout"]),
                         (5000, 60000))
        self.assertEqual((cfg["distributor.instance_limits.max_inflight_push_requests"],
                          cfg["distributor.instance_limits.max_inflight_push_requests_bytes"],
                          cfg["distributor.instance_limits.max_ingestion_rate"]), (7, 1048576, 2500.5))

    def test_unknown_yaml_key(self):
        """An unknown key fails start-up with its full dotted name."""
        with self.assertRaises(C.ConfigError) as e:
            load(["-config.file=c.yaml"], {"c.yaml": "server:\n  http_listen_prot: 1\n"})
        self.assertIn("server.http_listen_prot", str(e.exception))
        with self.assertRaises(C.ConfigError) as e:
            load(["-config.file=c.yaml"], {"c.yaml": "ingestor: {}\n"})
        self.assertIn("ingestor", str(e.exception))

    def test_bad_yaml_value(self):
        """A bad YAML value names its key and file."""
        with self.assertRaises(C.ConfigError) as e:
            load(["-config.file=c.yaml"], {"c.yaml": "limits:\n  creation_grace_period: soon\n"})
        self.assertIn("limits.creation_grace_period", str(e.exception))
        self.assertIn("c.yaml", str(e.exception))

    def test_block_must_be_mapping(self):
        """A block given as a scalar is an error naming it."""
        with self.assertRaises(C.ConfigError) as e:
            load(["-config.file=c.yaml"], {"c.yaml": "server: 8080\n"})
        self.assertIn("server", str(e.exception))

    def test_unreadable_file(self):
        """A missing config file is reported with its path."""
        with self.assertRaises(C.ConfigError) as e:
            C.load(["-config.file=/nonexistent/urdar.yaml"])
        self.assertIn("/nonexistent/urdar.yaml", str(e.exception))


class RenderTests(SynchronousTestCase):
    def test_render_round_trips(self):
        """GET /config's YAML loads back into the same configuration."""
        cfg = load(["-config.file=c.yaml", "-server.http-listen-port=9300"], {"c.yaml": YAML})
        text = cfg.render()
        again = load(["-config.file=r.yaml"], {"r.yaml": text})
        for o in C.OPTIONS:
            if o.path != "config_file":
                self.assertEqual(again[o.path], cfg[o.path], o.path)

    def test_diff_and_defaults(self):
        """mode=diff shows only changed values; mode=defaults only defaults."""
        cfg = load(["-server.http-listen-port=9300"])
        diff = yaml.safe_load(cfg.render("diff"))
        self.assertEqual(diff, {"server": {"http_listen_port": 9300}})
        defaults = yaml.safe_load(cfg.render("defaults"))
        self.assertEqual(defaults["server"]["http_listen_port"], 8080)
        self.assertEqual(defaults["blocks_storage"]["tsdb"]["block_ranges_period"], ["2h"])
        self.assertEqual(yaml.safe_load(load([]).render("diff")), {})

    def test_secrets_masked(self):
        """Options marked secret are masked on /config."""
        opts = C.OPTIONS + (C.Option("s3.secret-access-key", "blocks_storage.s3.secret_access_key",
                                     "str", "", "secret", secret=True),)
        cfg, _ = C.load(["-s3.secret-access-key=hunter2"], options=opts)
        text = cfg.render()
        self.assertNotIn("hunter2", text)
        self.assertIn("********", text)


class ExampleConfigTests(SynchronousTestCase):
    def test_systemd_example_config_loads(self):
        """systemd/urdar.example.yaml is a valid configuration pointing the TSDBs at /var/lib/urdar."""
        import os
        path = os.path.join(os.path.dirname(__file__), "..", "..", "systemd", "urdar.example.yaml")
        cfg, _ = C.load(["-config.file=" + path])
        self.assertEqual(cfg["blocks_storage.tsdb.dir"], "/var/lib/urdar/tsdb")
        self.assertEqual(cfg.targets[:2], ("distributor", "ingester"))

    def test_systemd_unit_is_notify(self):
        """The unit waits for READY=1 and runs hardened."""
        import os
        path = os.path.join(os.path.dirname(__file__), "..", "..", "systemd", "urdar.service")
        text = open(path).read()
        for line in ("Type=notify", "NoNewPrivileges=yes", "ProtectSystem=strict", "StateDirectory=urdar",
                     "ExecStart=/usr/local/bin/urdar -config.file=/etc/urdar/urdar.yaml"):
            self.assertIn(line, text.splitlines())
        self.assertNotIn("ExecReload", text)   # SIGHUP is not handled and would kill urdar
