"""The per-tenant Alertmanager on a fake clock: routing, grouping timers, inhibition, silences,
the notification log, retries and persisted state."""
import pytest
from twisted.internet import defer, task

from urdar.components import amreceivers
from urdar.components.amcore import (AMError, Matcher, Route, Silence, fingerprint, fp_hex,
                                     parse_matchers, parse_time, format_time, TimeInterval)
from urdar.components.amdispatch import TenantAlertmanager

T0 = 1_700_000_000.0


class Recorder:
    """An integration that records what it is asked to send; `fail` makes it fail."""
    name = "webhook"

    def __init__(self, cfg, global_cfg, index, http, clock):
        self.index = index
        self.send_resolved = bool(cfg.get("send_resolved", True))
        self.tag = cfg.get("url")
        self.clock = clock
        self.fail = []

    def render(self, data, template):
        return data

    def send(self, data):
        SENT.append((self.clock.seconds(), self.tag, data))
        if self.fail:
            return defer.fail(amreceivers.NotifyError(self.fail.pop(0), "boom"))
        return defer.succeed(None)


SENT = []


def fired(d):
    """The result of a Deferred that has fired (small listings finish in one reactor turn)."""
    got = []
    d.addBoth(got.append)
    assert got, "not fired"
    return got[0]


@pytest.fixture
def am(tmp_path, monkeypatch):
    SENT.clear()
    monkeypatch.setitem(amreceivers.INTEGRATIONS, "webhook_configs", Recorder)
    clock = task.Clock()
    clock.advance(T0)
    inst = TenantAlertmanager("t1", clock, None, str(tmp_path / "t1"))
    inst.start()
    yield inst
    inst.stop()


CONFIG = """
route:
  receiver: default
  group_by: [alertname]
  group_wait: 10s
  group_interval: 60s
  repeat_interval: 1h
  routes:
    - matchers: ['team="a"']
      receiver: team-a
      group_by: [alertname, instance]
    - match_re: {team: "b|c"}
      receiver: team-bc
      continue: true
    - matchers: ['severity=~"crit.*"']
      receiver: pager
      group_by: ['...']
inhibit_rules:
  - source_matchers: ['severity="critical"']
    target_matchers: ['severity="warning"']
    equal: [cluster]
receivers:
  - name: default
    webhook_configs: [{url: "http://default"}]
  - name: team-a
    webhook_configs: [{url: "http://a", send_resolved: false}]
  - name: team-bc
    webhook_configs: [{url: "http://bc"}]
  - name: pager
    webhook_configs: [{url: "http://pager"}]
"""


def post(am, *alerts):
    errs = am.post_alerts(list(alerts))
    assert errs == []


def names(data):
    return sorted(a["labels"].get("instance", a["labels"]["alertname"]) for a in data.alerts)


def test_routing_tree_matches_continue_and_defaults(am):
    am.apply_config(CONFIG, {})
    route = am.config.route
    recv = lambda **ls: [r.opts.receiver for r in route.match(ls)]
    assert recv(alertname="x", team="a") == ["team-a"]
    assert recv(alertname="x", team="b", severity="critical") == ["team-bc", "pager"]
    assert recv(alertname="x", team="c") == ["team-bc"]
    assert recv(alertname="x") == ["default"]
    assert route.routes[0].key() == '{}/{team="a"}'
    assert route.routes[1].opts.group_wait == 10.0      # inherited
    assert route.routes[2].opts.group_by_all
    inherit = Route({"receiver": "x", "group_by": ["a"], "routes": [
        {"group_by": []}, {"group_by": ["..."]}, {"group_by": ["b"]}]}, None, {})
    assert [(r.opts.group_by, r.opts.group_by_all) for r in inherit.routes] == [
        ({"a"}, False), ({"a"}, True), ({"b"}, False)]
    same_value = Route({"receiver": "x", "routes": [{"matchers": ['a!="1"', 'a="1"', 'a=~"1"']}]},
                       None, {})
    assert same_value.routes[0].key() == '{}/{a="1",a!="1",a=~"1"}'


def test_group_wait_interval_and_repeat(am):
    am.apply_config(CONFIG, {})
    post(am, {"labels": {"alertname": "A", "instance": "1"}})
    am.clock.advance(5)
    post(am, {"labels": {"alertname": "A", "instance": "2"}})
    assert SENT == []
    am.clock.advance(5)                       # group_wait after the first alert
    assert len(SENT) == 1
    t, tag, data = SENT[0]
    assert tag == "http://default" and names(data) == ["1", "2"]
    assert data.groupKey == '{}:{alertname="A"}'
    assert data.groupLabels == {"alertname": "A"} and data.status == "firing"
    assert data.alerts[0]["endsAt"] == "0001-01-01T00:00:00Z"
    # Nothing new: no notification at the next group_interval.
    am.clock.advance(60)
    assert len(SENT) == 1
    # A new alert goes out at the next group_interval tick, not at once.
    post(am, {"labels": {"alertname": "A", "instance": "3"}})
    am.clock.advance(30)
    assert len(SENT) == 1
    am.clock.advance(30)
    assert len(SENT) == 2 and names(SENT[1][2]) == ["1", "2", "3"]
    # Keep the alerts alive; the same alerts repeat after repeat_interval (1h), on a tick.
    for _ in range(62):
        post(am, *[{"labels": {"alertname": "A", "instance": i}} for i in "123"])
        am.clock.advance(60)
    assert len(SENT) == 3
    assert SENT[2][0] - SENT[1][0] >= 3600


def test_resolved_is_sent_and_group_emptied(am):
    am.apply_config(CONFIG, {})
    post(am, {"labels": {"alertname": "R"}})
    am.clock.advance(10)
    assert len(SENT) == 1
    post(am, {"labels": {"alertname": "R"}, "endsAt": format_time(am.clock.seconds())})
    am.clock.advance(60)
    assert len(SENT) == 2
    data = SENT[1][2]
    assert data.status == "resolved" and data.alerts[0]["status"] == "resolved"
    assert fired(am.alert_groups([], None)) == []


def test_resolve_timeout(am):
    am.apply_config(CONFIG.replace("route:", "global: {resolve_timeout: 2m}\nroute:", 1), {})
    post(am, {"labels": {"alertname": "T"}})
    am.clock.advance(10)
    assert len(SENT) == 1
    am.clock.advance(180)                      # resolve_timeout passed without an update
    assert SENT[-1][2].status == "resolved"
    assert fired(am.list_alerts([], None)) == []


def test_send_resolved_false_and_group_by_instance(am):
    am.apply_config(CONFIG, {})
    post(am, {"labels": {"alertname": "A", "team": "a", "instance": "1"}},
         {"labels": {"alertname": "A", "team": "a", "instance": "2"}})
    am.clock.advance(10)
    assert sorted(names(d) for _, _, d in SENT) == [["1"], ["2"]]
    post(am, {"labels": {"alertname": "A", "team": "a", "instance": "1"},
              "endsAt": format_time(am.clock.seconds())})
    am.clock.advance(120)
    assert len(SENT) == 2                      # team-a does not send resolved notifications


def test_old_alert_skips_group_wait(am):
    am.apply_config(CONFIG, {})
    post(am, {"labels": {"alertname": "old"}, "startsAt": format_time(am.clock.seconds() - 600)})
    am.clock.advance(0)
    assert len(SENT) == 1


def test_inhibition(am):
    am.apply_config(CONFIG, {})
    post(am, {"labels": {"alertname": "W", "severity": "warning", "cluster": "x"}},
         {"labels": {"alertname": "W", "severity": "warning", "cluster": "y"}},
         {"labels": {"alertname": "C", "severity": "critical", "cluster": "x"}})
    am.clock.advance(10)
    sent = {a["labels"]["alertname"] + a["labels"]["cluster"] for _, _, d in SENT for a in d.alerts}
    assert sent == {"Wy", "Cx"}
    got = {a["labels"]["cluster"]: a["status"] for a in fired(am.list_alerts([], None))
           if a["labels"]["alertname"] == "W"}
    crit = fp_hex(fingerprint({"alertname": "C", "severity": "critical", "cluster": "x"}))
    assert got["x"] == {"state": "suppressed", "silencedBy": [], "inhibitedBy": [crit]}
    assert got["y"]["state"] == "active"
    assert len(fired(am.list_alerts([], None, inhibited=False))) == 2


def test_silences_mute_update_expire_and_gc(am):
    am.apply_config(CONFIG, {})
    now = am.clock.seconds()
    s = Silence("", parse_matchers('alertname=~"S.*", env!="dev"'), now, now + 3600, 0,
                "me", "maintenance")
    sid = am.silences.set(s)
    post(am, {"labels": {"alertname": "S1", "env": "prod"}},
         {"labels": {"alertname": "S2", "env": "dev"}})
    am.clock.advance(10)
    assert [a["labels"]["alertname"] for _, _, d in SENT for a in d.alerts] == ["S2"]
    # Same matchers, active: updated in place; other matchers: a new silence, the old expired.
    upd = Silence(sid, parse_matchers('alertname=~"S.*", env!="dev"'), now, now + 7200, 0)
    assert am.silences.set(upd) == sid
    other = Silence(sid, parse_matchers('alertname="S1"'), now, now + 7200, 0)
    sid2 = am.silences.set(other)
    assert sid2 != sid and am.silences.get(sid).state(am.clock.seconds()) == "active"
    am.clock.advance(1)
    assert am.silences.get(sid).state(am.clock.seconds()) == "expired"
    am.silences.expire(sid2)
    am.clock.advance(1)
    ended = am.silences.get(sid2).ends_at
    am.silences.expire(sid2)                     # already expired: unchanged, no error
    assert am.silences.get(sid2).ends_at == ended
    # An active silence updated through the API keeps its id: its start comes back in ms.
    keep = am.silences.set(Silence("", parse_matchers('k="v"'), now, am.clock.seconds() + 60, 0))
    start = am.silences.get(keep).starts_at
    assert am.silences.set(Silence(keep, parse_matchers('k="v"'), int(start) + 0.0004,
                                   am.clock.seconds() + 120, 0)) == keep
    with pytest.raises(AMError, match="must not match the empty string"):
        am.silences.set(Silence("", parse_matchers('a=~".*"'), now, now + 1, 0))
    am.clock.advance(120 * 3600 + 200)
    am.silences.gc()
    assert am.silences.by_id == {}


def test_retry_until_next_flush(am):
    am.apply_config(CONFIG, {})
    post(am, {"labels": {"alertname": "F"}})
    rec = am.config.receivers["default"][0]
    rec.fail = [True, True]
    am.clock.advance(10)
    assert len(SENT) == 1
    am.clock.advance(0.5)
    am.clock.advance(0.75)
    assert len(SENT) == 3                      # back-off 0.5s then 0.75s, third try succeeds
    am.clock.advance(60)
    assert len(SENT) == 3                      # logged: not sent again at the next flush
    rec.fail = [False]                          # unrecoverable: no retry
    post(am, {"labels": {"alertname": "F", "x": "1"}})
    am.clock.advance(60)
    assert len(SENT) == 4
    am.clock.advance(5)
    assert len(SENT) == 4
    am.clock.advance(55)                        # not logged, so the next flush sends again
    assert len(SENT) == 5


def test_time_intervals(am):
    cfg = CONFIG.replace("route:", "time_intervals:\n  - name: always\n    time_intervals: [{}]\nroute:", 1)
    cfg = cfg.replace("    - matchers: ['team=\"a\"']\n", "    - matchers: ['team=\"a\"']\n      mute_time_intervals: [always]\n")
    am.apply_config(cfg, {})
    post(am, {"labels": {"alertname": "A", "team": "a"}})
    am.clock.advance(10)
    assert SENT == []
    ti = TimeInterval.from_config({"weekdays": ["monday:friday"], "times": [{"start_time": "09:00", "end_time": "17:00"}]})
    assert ti.contains(parse_time("2023-11-14T10:00:00Z"))        # a Tuesday
    assert not ti.contains(parse_time("2023-11-14T18:00:00Z"))
    assert not ti.contains(parse_time("2023-11-12T10:00:00Z"))    # a Sunday
    neg = TimeInterval.from_config({"days_of_month": ["-1"]})
    assert neg.contains(parse_time("2023-11-30T10:00:00Z")) and not neg.contains(parse_time("2023-11-29T10:00:00Z"))


def test_state_survives_restart(am, tmp_path):
    am.apply_config(CONFIG, {})
    now = am.clock.seconds()
    sid = am.silences.set(Silence("", [Matcher("=", "alertname", "P")], now, now + 3600, 0, "me", "c"))
    post(am, {"labels": {"alertname": "Q"}})
    am.clock.advance(10)
    assert len(SENT) == 1
    am.stop()
    again = TenantAlertmanager("t1", am.clock, None, str(tmp_path / "t1"))
    again.start()
    again.apply_config(CONFIG, {})
    assert again.silences.get(sid).comment == "c"
    # The notification log came back: the same alert is not notified again before repeat_interval.
    again.post_alerts([{"labels": {"alertname": "Q"}, "startsAt": format_time(now)}])
    again.clock.advance(120)
    assert len(SENT) == 1
    again.stop()


def test_matcher_parsing_and_bad_input(am):
    ms = parse_matchers('{alertname="a\\"b", job=~"x|y", env!=dev}')
    assert [str(m) for m in ms] == ['alertname="a\\"b"', 'job=~"x|y"', 'env!="dev"']
    with pytest.raises(AMError):
        parse_matchers('foo')
    with pytest.raises(AMError):
        parse_matchers('a=~"("')
    am.apply_config(CONFIG, {})
    errs = am.post_alerts([{"labels": {}}, {"labels": {"a": "1"}, "startsAt": "2023-01-02T00:00:00Z",
                                            "endsAt": "2023-01-01T00:00:00Z"}])
    assert errs == ["at least one label pair required", "start time must be before end time"]
    with pytest.raises(AMError):
        Route({"receiver": "x", "group_by": ["...", "a"]}, None, {})


def test_inhibition_two_sided_and_lifted_when_the_source_resolves(am):
    cfg = CONFIG.replace("""  - source_matchers: ['severity="critical"']""", """  - source_matchers: ['alertname="Src"']
    target_matchers: ['alertname=~"Src|Tgt"']
  - source_matchers: ['severity="critical"']""")
    am.apply_config(cfg, {})
    post(am, {"labels": {"alertname": "Src"}}, {"labels": {"alertname": "Tgt"}})
    state = {a["labels"]["alertname"]: a["status"]["state"] for a in fired(am.list_alerts([], None))}
    # Src matches both sides: only another source could inhibit it.
    assert state == {"Src": "active", "Tgt": "suppressed"}
    post(am, {"labels": {"alertname": "Src"}, "endsAt": format_time(am.clock.seconds())})
    am.clock.advance(1)
    state = {a["labels"]["alertname"]: a["status"]["state"] for a in fired(am.list_alerts([], None))}
    assert state == {"Tgt": "active"}


def test_stop_cancels_pending_retries(am):
    am.apply_config(CONFIG, {})
    post(am, {"labels": {"alertname": "F"}})
    am.config.receivers["default"][0].fail = [True]
    am.clock.advance(10)
    assert len(SENT) == 1 and am.waits
    am.stop()
    am.clock.advance(5)
    assert len(SENT) == 1 and not am.clock.getDelayedCalls()


def test_slow_notification_delays_the_next_flush(am, monkeypatch):
    am.apply_config(CONFIG, {})
    rec = am.config.receivers["default"][0]
    slow = defer.Deferred()
    calls = []

    def send(data):
        calls.append((am.clock.seconds(), names(data)))
        return slow if len(calls) == 1 else defer.succeed(None)
    monkeypatch.setattr(rec, "send", send)
    post(am, {"labels": {"alertname": "A", "instance": "1"}})
    am.clock.advance(10)
    post(am, {"labels": {"alertname": "A", "instance": "2"}})
    am.clock.advance(59)
    assert len(calls) == 1
    # At group_interval the next tick finds the first send still hanging; the send's deadline
    # (the group's next flush) cancels it, and the missed flush runs at once.
    am.clock.advance(1)
    assert [c[1] for c in calls] == [["1"], ["1", "2"]]
    assert calls[1][0] == T0 + 70


def test_large_listings_leave_the_reactor_between_chunks(am):
    am.apply_config(CONFIG, {})
    post(am, *[{"labels": {"alertname": "Many", "i": "%04d" % i}} for i in range(2500)])
    d = am.list_alerts([], None)
    g = am.alert_groups([], None)
    assert not d.called and not g.called
    am.clock.advance(0)
    am.clock.advance(0)
    listed, groups = fired(d), fired(g)
    assert len(listed) == 2500 and listed == sorted(listed, key=lambda a: a["fingerprint"])
    assert [len(x["alerts"]) for x in groups] == [2500]
    assert [a["labels"]["i"] for a in groups[0]["alerts"]][:3] == ["0000", "0001", "0002"]
