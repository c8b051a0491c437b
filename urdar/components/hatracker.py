"""The HA tracker (Mimir's distributor HA tracker): of a Prometheus HA pair (or more) sending the
same series with a `cluster` label and distinct `__replica__` labels, only one replica's samples
are stored per (tenant, cluster); the others' pushes are answered 202 and dropped.

The elected replica of each (tenant, cluster) lives in a KV store (-distributor.ha-tracker.store:
inmemory, or etcd shared by every distributor) under `<prefix><tenant>/<cluster>` as
{"replica", "received_at", "elected_at", "elected_changes", "deleted_at"} (Unix ms), changed only
by compare-and-swap; a watch keeps a local copy, so the push path answers from memory. The KV is
written when a cluster is first seen (an election, waited for), when another replica takes over
because the elected one was not heard from for -distributor.ha-tracker.failover-timeout (an
election, waited for), and when the elected replica's timestamp is older than
-distributor.ha-tracker.update-timeout plus this process' jitter (a refresh, done in the
background while the push goes on). A refresh or election that fails leaves the copy as it was;
an election the KV cannot answer fails the push with 503 so the client retries. Entries not
refreshed for 30 minutes are marked deleted, and removed 30 minutes later, as Mimir does.
Everything here runs on the reactor thread with the injected clock."""
import logging
import random
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from urdar.components import errors as E
from urdar.components.options import ConfigError, format_duration_ms

log = logging.getLogger("urdar.hatracker")

# Mimir's cleanup: entries whose elected replica was last heard from this long ago are marked
# deleted, and marked entries this old are removed from the KV store.
CLEANUP_PERIOD_S = 30 * 60.0
DELETION_TIMEOUT_S = 30 * 60.0
MAX_CLUSTERS_FLAG = "distributor.ha-tracker.max-clusters"


@dataclass(frozen=True)
class HATrackerConfig:
    """-distributor.ha-tracker.*: durations in ms; `prefix` is the KV key prefix."""
    enabled: bool = False
    update_timeout_ms: int = 15000
    update_timeout_jitter_max_ms: int = 5000
    failover_timeout_ms: int = 30000
    prefix: str = "ha-tracker/"

    def validate(self) -> None:
        """ConfigError unless failover > update timeout + max jitter (by 1 s), as Mimir checks."""
        if self.update_timeout_jitter_max_ms < 0:
            raise ConfigError("HA tracker max update timeout jitter shouldn't be negative")
        least = self.update_timeout_ms + self.update_timeout_jitter_max_ms + 1000
        if self.failover_timeout_ms < least:
            raise ConfigError(
                "HA Tracker failover timeout (%s) must be at least 1s greater than update timeout "
                "- max jitter (%s)" % (format_duration_ms(self.failover_timeout_ms),
                                        format_duration_ms(least)))

    @classmethod
    def from_config(cls, cfg: Any) -> "HATrackerConfig":
        c = cls(enabled=bool(cfg["distributor.ha_tracker.enable_ha_tracker"]),
                update_timeout_ms=cfg["distributor.ha_tracker.ha_tracker_update_timeout"],
                update_timeout_jitter_max_ms=cfg[
                    "distributor.ha_tracker.ha_tracker_update_timeout_jitter_max"],
                failover_timeout_ms=cfg["distributor.ha_tracker.ha_tracker_failover_timeout"],
                prefix=cfg["distributor.ha_tracker.kvstore.prefix"])
        if c.enabled:
            c.validate()
        return c


@dataclass(frozen=True)
class Elected:
    """One (tenant, cluster)'s entry: the elected replica and its times in Unix ms."""
    replica: str
    received_at: int            # when a distributor last refreshed it (the replica's last seen)
    elected_at: int = 0         # when this replica won the election
    elected_changes: int = 0
    deleted_at: int = 0

    def value(self) -> dict[str, Any]:
        return {"replica": self.replica, "received_at": self.received_at,
                "elected_at": self.elected_at, "elected_changes": self.elected_changes,
                "deleted_at": self.deleted_at}

    @classmethod
    def parse(cls, value: Any) -> "Elected | None":
        if not isinstance(value, dict) or not isinstance(value.get("replica"), str):
            return None
        try:
            return cls(value["replica"], int(value.get("received_at", 0)),
                       int(value.get("elected_at", 0)), int(value.get("elected_changes", 0)),
                       int(value.get("deleted_at", 0)))
        except (TypeError, ValueError):
            return None


def replicas_did_not_match(replica: str, elected: str) -> E.ComponentError:
    """Mimir's answer to a non-elected replica's push (HTTP 202: accepted and dropped)."""
    return E.ComponentError(E.DEDUPED, "replicas did not match, rejecting sample: replica=%s, "
                                       "elected=%s" % (replica, elected))


def too_many_clusters(limit: int) -> E.ComponentError:
    return E.ComponentError(E.TENANT_LIMIT, E.mimir_message(
        "the write request has been rejected because the maximum number of high-availability "
        "(HA) clusters has been reached for this tenant (limit: %d)" % limit,
        "too-many-ha-clusters", (MAX_CLUSTERS_FLAG,)))


class HATracker:
    """The elected replica per (tenant, cluster): `check()` on the push path, `start()`/`stop()`
    for the watch and the cleanup loop, `elected()` for the status page."""

    def __init__(self, kv: Any, clock: IReactorTime, overrides: Any, config: HATrackerConfig,
                 registry: Any = None, rng: random.Random | None = None) -> None:
        self.kv = kv
        self.clock = clock
        self.overrides = overrides
        self.config = config
        rng = rng if rng is not None else random.Random()
        jitter = config.update_timeout_jitter_max_ms
        # One jitter per process in [-max, +max), spreading the refreshes of many distributors.
        self.jitter_ms = rng.randrange(-jitter, jitter) if jitter > 0 else 0
        self._elected: dict[tuple[str, str], Elected] = {}
        self._clusters: dict[str, set[str]] = {}
        self._refreshing: set[tuple[str, str]] = set()
        self._watch: Any = None
        self._cleanup: task.LoopingCall | None = None
        kw = {"registry": registry}
        self.m_changes = Counter("cortex_ha_tracker_elected_replica_changes",
                                 "The total number of times the elected replica has changed for a "
                                 "user ID/cluster.", ["user", "cluster"], **kw)
        self.m_timestamp = Gauge("cortex_ha_tracker_elected_replica_timestamp_seconds",
                                 "The timestamp stored for the currently elected replica, from the "
                                 "KVStore.", ["user", "cluster"], **kw)
        self.m_cas = Counter("cortex_ha_tracker_kv_store_cas",
                             "The total number of CAS calls to the KV store for a user ID/cluster.",
                             ["user", "cluster"], **kw)
        self.m_marked = Counter("cortex_ha_tracker_replicas_cleanup_marked_for_deletion",
                                "Number of elected replicas marked for deletion.", **kw)
        self.m_deleted = Counter("cortex_ha_tracker_replicas_cleanup_deleted",
                                 "Number of elected replicas deleted from KV store.", **kw)

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> "defer.Deferred[None]":
        """Watch the prefix and load what is there; fires at once (a KV that is down leaves the
        copy empty and the watch fills it in later)."""
        prefix = self.config.prefix
        self._watch = self.kv.watch_prefix(prefix, self._received)

        @defer.inlineCallbacks
        def load() -> Any:
            for key in (yield defer.maybeDeferred(self.kv.keys, prefix)):
                self._received(key, (yield defer.maybeDeferred(self.kv.get, key)))
        load().addErrback(lambda f: log.warning("HA tracker: loading %s failed (the watch will "
                                                "catch up): %s", prefix, f.getErrorMessage()))
        self._cleanup = task.LoopingCall(self.cleanup)
        self._cleanup.clock = self.clock
        self._cleanup.start(CLEANUP_PERIOD_S, now=False).addErrback(
            lambda f: log.error("HA tracker cleanup loop stopped: %s", f.getErrorMessage()))
        return defer.succeed(None)

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        if self._cleanup is not None and self._cleanup.running:
            self._cleanup.stop()

    def _split(self, key: str) -> tuple[str, str] | None:
        rest = key[len(self.config.prefix):] if key.startswith(self.config.prefix) else None
        if rest is None or "/" not in rest:
            return None
        tenant, cluster = rest.split("/", 1)
        return tenant, cluster

    def _received(self, key: str, value: Any) -> None:
        """A change of one KV entry (from the watch, the load or our own CAS)."""
        tc = self._split(key)
        if tc is None:
            return
        desc = Elected.parse(value)
        if desc is None or desc.deleted_at:
            if self._elected.pop(tc, None) is not None:
                self.m_changes.remove(*tc)
                self.m_timestamp.remove(*tc)
                clusters = self._clusters.get(tc[0])
                if clusters is not None:
                    clusters.discard(tc[1])
                    if not clusters:
                        del self._clusters[tc[0]]
            return
        old = self._elected.get(tc)
        if old is not None and old.received_at > desc.received_at and old.replica == desc.replica:
            return      # an older notification overtaken by our own CAS result
        if old is None or old.replica != desc.replica:
            self.m_changes.labels(*tc).inc()
        self._elected[tc] = desc
        self._clusters.setdefault(tc[0], set()).add(tc[1])
        self.m_timestamp.labels(*tc).set(desc.received_at // 1000)

    # ---- the push path ---------------------------------------------------------------------------

    def check(self, tenant: str, cluster: str, replica: str) -> "defer.Deferred[None]":
        """Fires (None) if samples of `replica` of `cluster` are to be stored; fails with DEDUPED
        (another replica is elected), TENANT_LIMIT (too many clusters) or UNAVAILABLE (an election
        the KV store could not answer). Answers from the local copy unless an election is due."""
        now_ms = int(self.clock.seconds() * 1000)
        tc = (tenant, cluster)
        entry = self._elected.get(tc)
        update_ms = self.config.update_timeout_ms + self.jitter_ms
        if entry is not None:
            age = now_ms - entry.received_at
            if entry.replica == replica:
                if age >= update_ms:
                    self._refresh(tc, replica, now_ms)
                return defer.succeed(None)
            if age < self.config.failover_timeout_ms:
                return defer.fail(replicas_did_not_match(replica, entry.replica))
        else:
            limit = self.overrides.for_tenant(tenant).ha_max_clusters
            if limit > 0 and len(self._clusters.get(tenant, ())) + 1 > limit:
                return defer.fail(too_many_clusters(limit))
        return self._cas(tc, replica, now_ms)

    def _key(self, tc: tuple[str, str]) -> str:
        return "%s%s/%s" % (self.config.prefix, tc[0], tc[1])

    def _cas(self, tc: tuple[str, str], replica: str, now_ms: int) -> "defer.Deferred[None]":
        """Elect (or refresh) `replica` in the KV store unless the stored entry says otherwise."""
        outcome: list[Any] = [None]
        update_ms = self.config.update_timeout_ms + self.jitter_ms

        def change(value: Any) -> Any:
            outcome[0] = None
            desc = Elected.parse(value)
            if desc is not None and not desc.deleted_at:
                age = now_ms - desc.received_at
                if desc.replica == replica and age < update_ms:
                    outcome[0] = desc           # fresh already: nothing to write
                    return None
                if desc.replica != replica and age < self.config.failover_timeout_ms:
                    outcome[0] = replicas_did_not_match(replica, desc.replica)
                    return None
                if desc.replica == replica:
                    new = Elected(replica, now_ms, desc.elected_at, desc.elected_changes)
                else:
                    new = Elected(replica, now_ms, now_ms, desc.elected_changes + 1)
            else:
                new = Elected(replica, now_ms, now_ms, 0)
            outcome[0] = new
            return new.value()

        def done(_: object) -> None:
            got = outcome[0]
            if isinstance(got, E.ComponentError):
                # The store knows better than our copy: take its entry, then refuse.
                raise got
            if isinstance(got, Elected):
                self._received(self._key(tc), got.value())

        def failed(f: Failure) -> Failure:
            if f.check(E.ComponentError):
                return f
            log.error("HA tracker: electing a replica of %s/%s failed: %s", tc[0], tc[1],
                      f.getErrorMessage())
            raise E.ComponentError(E.UNAVAILABLE, "HA tracker: cannot reach the KV store to "
                                                  "elect a replica: %s" % f.getErrorMessage())
        self.m_cas.labels(*tc).inc()
        return defer.maybeDeferred(self.kv.cas, self._key(tc), change).addCallback(done).addErrback(failed)

    def _refresh(self, tc: tuple[str, str], replica: str, now_ms: int) -> None:
        """Move the elected replica's timestamp forward in the background (one at a time)."""
        if tc in self._refreshing:
            return
        self._refreshing.add(tc)

        def finished(result: Any) -> None:
            self._refreshing.discard(tc)
            if isinstance(result, Failure) and not result.check(E.ComponentError):
                log.warning("HA tracker: refreshing %s/%s failed: %s", tc[0], tc[1],
                            result.getErrorMessage())
        self._cas(tc, replica, now_ms).addBoth(finished)

    # ---- cleanup and status ------------------------------------------------------------------------

    @defer.inlineCallbacks
    def cleanup(self) -> Any:
        """Mark entries not refreshed for DELETION_TIMEOUT_S deleted; remove marked ones as old."""
        deadline_ms = int((self.clock.seconds() - DELETION_TIMEOUT_S) * 1000)
        now_ms = int(self.clock.seconds() * 1000)
        try:
            keys = yield defer.maybeDeferred(self.kv.keys, self.config.prefix)
        except Exception as exc:
            log.warning("HA tracker cleanup: listing keys failed: %s", exc)
            return
        for key in keys:
            try:
                desc = Elected.parse((yield defer.maybeDeferred(self.kv.get, key)))
                if desc is None:
                    continue
                if desc.deleted_at:
                    if desc.deleted_at < deadline_ms:
                        yield defer.maybeDeferred(self.kv.delete, key)
                        self.m_deleted.inc()
                elif desc.received_at < deadline_ms:
                    def mark(value: Any) -> Any:
                        d = Elected.parse(value)
                        if d is None or d.deleted_at or d.received_at >= deadline_ms:
                            return None
                        return Elected(d.replica, d.received_at, d.elected_at, d.elected_changes,
                                       now_ms).value()
                    yield defer.maybeDeferred(self.kv.cas, key, mark)
                    self.m_marked.inc()
            except Exception as exc:
                log.warning("HA tracker cleanup of %s failed: %s", key, exc)

    def elected(self) -> list[tuple[str, str, Elected]]:
        """[(tenant, cluster, entry)] by tenant then cluster, from the local copy."""
        return [(t, c, e) for (t, c), e in sorted(self._elected.items())]
