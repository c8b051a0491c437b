"""Configuration checks agree with `amtool check-config` (Alertmanager 0.25): the same good
configurations load, the same broken ones are refused (by the config API, with Mimir's prefix)."""
import os
import shutil
import subprocess
import tempfile

import pytest
import yaml

from urdar.app.config import Config
from urdar.components.alertmanager import AlertmanagerConfigs, AlertmanagerError, AlertStore
from urdar.components.limits import Overrides
from urdar.storage.memory import MemoryBucket

AMTOOL = shutil.which("amtool") or "/usr/bin/amtool"
BASE = "receivers:\n  - name: r\n    webhook_configs: [{url: 'http://127.0.0.1:1/'}]\n  - name: s\n"
CASES = {
    "plain": (True, "route: {receiver: r}\n"),
    "nested": (True, "route:\n  receiver: r\n  group_by: ['...']\n  routes:\n"
                     "    - {receiver: s, matchers: ['a=~\"x|y\"', 'b!=c'], continue: true}\n"
                     "    - {receiver: r, match: {a: b}, match_re: {c: 'd.*'}, group_wait: 1m}\n"),
    "intervals": (True, "time_intervals:\n  - name: biz\n    time_intervals:\n"
                        "      - {weekdays: ['monday:friday'], times: [{start_time: '09:00', end_time: '17:00'}],"
                        " days_of_month: ['1:5', '-1'], months: ['january:march'], location: Europe/Berlin}\n"
                        "route: {receiver: r, routes: [{receiver: s, mute_time_intervals: [biz],"
                        " active_time_intervals: [biz]}]}\n"),
    "inhibit": (True, "route: {receiver: r}\ninhibit_rules:\n  - source_matchers: ['a=\"1\"']\n"
                      "    target_match: {b: '2'}\n    equal: [c]\n"),
    "wildcard_and_label": (False, "route: {receiver: r, group_by: ['...', a]}\n"),
    "undefined_receiver": (False, "route: {receiver: r, routes: [{receiver: nope}]}\n"),
    "undefined_interval": (False, "route: {receiver: r, routes: [{receiver: s, mute_time_intervals: [x]}]}\n"),
    "bad_regex": (False, "route: {receiver: r, routes: [{receiver: s, matchers: ['a=~\"(\"']}]}\n"),
    "bad_matcher": (False, "route: {receiver: r, routes: [{receiver: s, matchers: ['a']}]}\n"),
    "zero_group_interval": (False, "route: {receiver: r, group_interval: 0s}\n"),
    "bad_duration": (False, "route: {receiver: r, group_wait: 5x}\n"),
    "root_continue": (False, "route: {receiver: r, continue: true}\n"),
    "bad_weekday": (False, "time_intervals:\n  - name: t\n    time_intervals: [{weekdays: [funday]}]\n"
                           "route: {receiver: r}\n"),
    "bad_time": (False, "time_intervals:\n  - name: t\n    time_intervals: [{times: [{start_time: '10:00',"
                        " end_time: '09:00'}]}]\nroute: {receiver: r}\n"),
    "webhook_no_url": (False, "route: {receiver: x}\nreceivers:\n  - name: x\n    webhook_configs: [{}]\n"),
    "webhook_bad_max_alerts": (False, "route: {receiver: x}\nreceivers:\n  - name: x\n"
                                      "    webhook_configs: [{url: 'http://a/', max_alerts: many}]\n"),
    "receivers_not_mappings": (False, "route: {receiver: r}\nreceivers: [r]\n"),
    "duplicate_group_by": (False, "route: {receiver: r, group_by: [a, a]}\n"),
    "bad_group_by_label": (False, "route: {receiver: r, group_by: ['a-b']}\n"),
}


def amtool_accepts(text):
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        f.write(text)
    try:
        return subprocess.run([AMTOOL, "check-config", f.name], capture_output=True,
                              timeout=60).returncode == 0
    finally:
        os.unlink(f.name)


def urdar_accepts(text):
    configs = AlertmanagerConfigs(AlertStore(MemoryBucket()), Overrides(Config().limits_defaults()))
    body = yaml.safe_dump({"alertmanager_config": text}).encode()
    d = configs.set_user_config("t", body)
    failures = []
    d.addErrback(failures.append)
    if failures:
        assert failures[0].check(AlertmanagerError), failures[0]
        assert failures[0].value.message.startswith("error validating Alertmanager config: ")
    return not failures


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_verdict_as_amtool(name):
    good, text = CASES[name]
    if "receivers:" not in text:
        text += BASE
    assert urdar_accepts(text) == good
    if os.path.exists(AMTOOL):
        assert amtool_accepts(text) == good, "amtool disagrees with the case's expectation"
