"""Tenants sharded over the alertmanager ring (components/amshard.py) on a fake clock: Mimir's
tenant token, each tenant owned by replication-factor alertmanagers with a position each, an
owner that stops heartbeating dropped from its tenants (its co-owner moves to position 0), the
merge rules of replicated state, and position-based dedup: of two replicas of a tenant that get
the same alert, only the first notifies; the second notifies when the first did not."""
import pytest
from twisted.internet import task

from tests.components.test_amcore import CONFIG, SENT, T0, Recorder, post
from urdar.components import amreceivers
from urdar.components.amcore import Matcher, NotificationLog, Silence, Silences
from urdar.components.amdispatch import TenantAlertmanager
from urdar.components.amshard import AlertmanagerSharding, tenant_token
from urdar.components.rulershard import group_token
from urdar.net.kv import MemoryKV
from urdar.net.ring import Ring, RingLifecycler

KEY = "alertmanagers/alertmanager"
TENANTS = ["tenant-%d" % i for i in range(30)]


def test_tenant_token_is_fnv1a_32():
    assert tenant_token("") == 0x811c9dc5          # FNV-1a 32 offset basis
    assert tenant_token("a") == 0xe40c292c         # the published FNV-1a 32 test vector
    assert tenant_token("a/b/c") == group_token("a", "b", "c")


class Node:
    def __init__(self, name, kv, clock, rf):
        self.lc = RingLifecycler(kv, clock, KEY, name, "%s:80" % name, heartbeat_s=2.0)
        self.ring = Ring(kv, KEY, clock, replication_factor=rf, heartbeat_timeout_s=10.0)
        self.ring.start()
        self.sharding = AlertmanagerSharding(self.ring, name, clock, peer_timeout_s=15.0,
                                             check_period_s=1.0)
        self.changes = 0

        def changed():
            self.changes += 1
        self.sharding.on_change = changed
        self.lc.join()
        self.lc.set_state("ACTIVE")
        self.sharding.start()


@pytest.fixture
def nodes():
    clock = task.Clock()
    clock.advance(T0)
    kv = MemoryKV(clock)
    ns = [Node("am-%d" % i, kv, clock, rf=2) for i in range(3)]
    clock.advance(1)
    yield clock, ns
    for n in ns:
        n.sharding.stop()
        n.ring.stop()
        if n.lc._loop is not None and n.lc._loop.running:
            n.lc._loop.stop()


def test_each_tenant_has_rf_owners_with_distinct_positions(nodes):
    clock, ns = nodes
    per_node = {n.sharding.instance_id: 0 for n in ns}
    for t in TENANTS:
        owners = [n for n in ns if n.sharding.owns(t)]
        assert len(owners) == 2, t
        assert sorted(n.sharding.position(t) for n in owners) == [0, 1]
        assert sorted(n.sharding.peer_wait(t) for n in owners) == [0.0, 15.0]
        # Every node agrees on who the owners are, and an owner's peers are the other owner.
        assert {i.id for i in ns[0].sharding.owners(t)} == {n.sharding.instance_id for n in owners}
        assert owners[0].sharding.peers(t) == [owners[1].lc.addr]
        for n in owners:
            per_node[n.sharding.instance_id] += 1
    assert all(c > 0 for c in per_node.values()), per_node     # 128 tokens spread the tenants


def test_an_owner_without_heartbeats_is_dropped_and_its_co_owner_goes_first(nodes):
    clock, ns = nodes
    dead = ns[0]
    theirs = [t for t in TENANTS if dead.sharding.owns(t)]
    assert theirs
    before = [n.changes for n in ns]
    dead.sharding.stop()
    dead.lc._loop.stop()                # kill -9: no more heartbeats, the entry stays
    for _ in range(12):
        clock.advance(1)
    for t in theirs:
        owners = [n for n in ns[1:] if n.sharding.owns(t)]
        assert len(owners) == 1, t      # Mimir does not hand the tenant to a third instance
        assert owners[0].sharding.position(t) == 0
    assert [n.changes - b for n, b in zip(ns[1:], before[1:])] == [1, 1]   # each re-syncs once


def test_silence_merge_keeps_the_later_update():
    clock = task.Clock()
    clock.advance(T0)
    a = Silences(clock, retention=3600)
    b = Silences(clock, retention=3600)
    sent = []
    a.on_change = lambda s: sent.append(s.to_json())
    sid = a.set(Silence("", [Matcher("=", "x", "1")], T0, T0 + 600, 0))
    assert b.merge(sent) == 1 and b.get(sid).ends_at == T0 + 600
    clock.advance(5)
    a.expire(sid)                                   # newer: replaces the copy
    assert b.merge(sent[-1:]) == 1 and b.get(sid).ends_at == T0 + 5
    assert b.merge(sent[:1]) == 0 and b.get(sid).ends_at == T0 + 5     # older: ignored
    clock.advance(4000)
    old = dict(sent[-1], id="gone")
    assert b.merge([old]) == 0                      # ended longer ago than the retention
    with pytest.raises(KeyError):
        b.get("gone")


def test_nflog_merge_keeps_the_later_entry():
    clock = task.Clock()
    clock.advance(T0)
    a, b = NotificationLog(clock, 3600), NotificationLog(clock, 3600)
    a.log("r", "g", ["f1"], [])
    first = a.snapshot_entry("g", "r")
    clock.advance(10)
    a.log("r", "g", ["f1", "f2"], [])
    second = a.snapshot_entry("g", "r")
    assert b.merge([second]) == 1 and b.merge([first]) == 0
    assert b.query("g", "r").firing == frozenset({"f1", "f2"})


@pytest.fixture
def replicas(tmp_path, monkeypatch):
    """Two replicas of one tenant at positions 0 and 1 whose new state reaches the other at once
    (what the HTTP replication does between processes)."""
    SENT.clear()
    monkeypatch.setitem(amreceivers.INTEGRATIONS, "webhook_configs", Recorder)
    clock = task.Clock()
    clock.advance(T0)
    ams = [TenantAlertmanager("t1", clock, None, str(tmp_path / ("r%d" % i))) for i in range(2)]
    for p, am in enumerate(ams):
        am.peer_wait = (lambda p=p: p * 15.0)
        am.start()
        am.apply_config(CONFIG, {})
    ams[0].on_state = lambda kind, items: ams[1].merge_state({kind: items})
    ams[1].on_state = lambda kind, items: ams[0].merge_state({kind: items})
    yield clock, ams
    for am in ams:
        am.stop()


def test_one_notification_per_group_from_two_replicas(replicas):
    clock, ams = replicas
    for am in ams:
        post(am, {"labels": {"alertname": "A", "instance": "1"}})
    clock.advance(10)                                   # group_wait: position 0 sends
    assert [(t, tag) for t, tag, _ in SENT] == [(T0 + 10, "http://default")]
    for _ in range(40):
        clock.advance(1)                                # position 1 waited 15s, then skipped
    assert len(SENT) == 1


def test_the_second_replica_notifies_when_the_first_did_not(replicas):
    clock, ams = replicas
    post(ams[1], {"labels": {"alertname": "A", "instance": "1"}})   # the first one is down
    clock.advance(10)
    assert SENT == []
    clock.advance(15)
    assert [(t, tag) for t, tag, _ in SENT] == [(T0 + 25, "http://default")]


def test_a_silence_on_one_replica_mutes_on_the_other(replicas):
    clock, ams = replicas
    ams[0].silences.set(Silence("", [Matcher("=", "alertname", "A")], T0, T0 + 3600, 0))
    post(ams[1], {"labels": {"alertname": "A", "instance": "1"}})
    for _ in range(60):
        clock.advance(1)
    assert SENT == []


class Replicas:
    """The replicas' HTTP side for StubTreq: per address an answer code, or None to never
    answer; records what each got."""

    def __init__(self):
        from twisted.web.resource import Resource
        self.codes = {}
        self.got = []
        outer = self

        class R(Resource):
            isLeaf = True

            def render(self, request):
                from twisted.web.server import NOT_DONE_YET
                host = request.getHeader(b"host").decode()
                host = host if ":" in host else host + ":80"      # the default port is left off
                outer.got.append((host, request.method, request.uri,
                                  request.getHeader(b"x-urdar-alertmanager-forwarded")))
                code = outer.codes[host]
                if code is None:
                    return NOT_DONE_YET
                request.setResponseCode(code)
                request.setHeader(b"Content-Type", b"application/json")
                return b'{"from": "%s"}' % host.encode()
        self.resource = R()


@pytest.fixture
def distributor(nodes):
    from treq.testing import StubTreq
    from urdar.components.amshard import AlertmanagerDistributor
    clock, ns = nodes
    for n in ns:
        n.ring.replication_factor = 3
    replicas = Replicas()
    owners = [i.addr for i in ns[0].sharding.owners("t1")]
    assert len(owners) == 3
    return clock, owners, replicas, AlertmanagerDistributor(
        ns[0].sharding, StubTreq(replicas.resource), clock, timeout_s=2.0)


def result(d):
    got = []
    d.addBoth(got.append)
    return got


def test_alert_writes_go_to_every_replica_and_answer_on_quorum(distributor):
    clock, owners, replicas, dist = distributor
    replicas.codes = dict(zip(owners, (200, 500, None)))
    got = result(dist.forward("t1", "POST", "/alertmanager/api/v2/alerts", b"[]",
                              b"application/json", to_all=True))
    assert got == []                   # the third has not answered yet
    clock.advance(2)                   # ... and times out: 1 success of 3 is no quorum
    assert got[0].code == 500
    assert sorted(h for h, *_ in replicas.got) == sorted(owners)
    assert all(fw == b"1" for *_, fw in replicas.got)
    replicas.codes = dict(zip(owners, (200, None, 200)))
    got = result(dist.forward("t1", "POST", "/alertmanager/api/v2/alerts", b"[]",
                              b"application/json", to_all=True))
    clock.advance(2)
    assert got[0].code == 200          # 2 of 3
    replicas.codes = dict(zip(owners, (200, None, None)))
    got = result(dist.forward("t1", "POST", "/alertmanager/api/v2/alerts", b"[]",
                              b"application/json", to_all=True))
    clock.advance(2)
    from twisted.internet.defer import TimeoutError
    got[0].trap(TimeoutError)          # 1 of 3 and two timeouts: the handler answers 503


def test_reads_and_silence_writes_go_to_the_first_replica_that_answers(distributor):
    clock, owners, replicas, dist = distributor
    replicas.codes = dict(zip(owners, (None, 503, 200)))
    got = result(dist.forward("t1", "GET", "/alertmanager/api/v2/silences", None, b"",
                              to_all=False))
    clock.advance(2)
    assert (got[0].code, got[0].body) == (200, b'{"from": "%s"}' % owners[2].encode())
    replicas.got.clear()
    replicas.codes = dict(zip(owners, (200, 200, 200)))
    got = result(dist.forward("t1", "POST", "/alertmanager/api/v2/silences", b"{}", b"", False))
    assert got[0].code == 200 and [h for h, *_ in replicas.got] == owners[:1]   # one silence
