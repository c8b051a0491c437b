"""One tenant's Alertmanager put together: configuration, the dispatcher's aggregation groups and
their timers, the notification pipeline (inhibition, time intervals, silences, dedup through the
notification log, retries until the group's next flush) and persisted state.

State on disk, this project's own format: `<dir>/silences.json` and `<dir>/nflog.json`, JSON
lists (see Silences.snapshot and NotificationLog.snapshot), written atomically (temporary file,
fsync, rename) every maintenance interval and at stop, read back at start.
"""
from __future__ import annotations

import fnmatch
import importlib
import json
import logging
import os
import re
from typing import Any, Callable, Optional

import yaml
from twisted.internet import defer, task

from urdar.components import amreceivers
from urdar.components.amcore import (ALERT_ORDER, AMError, Alert, AlertStore, Inhibitor,
                                     InhibitRule, NotificationLog, Route, Silences, duration_s,
                                     format_time, fp_hex, hash_labels, labels_before,
                                     alert_size, labelset_string, needs_update,
                                     parse_time_intervals, _cmp_key)
from urdar.gotemplate import TemplateError
from urdar.gotemplate.amdefault import notification_template
from urdar.net.offload import run_or_inline

try:        # email, Slack and PagerDuty register themselves in amreceivers.INTEGRATIONS
    importlib.import_module("urdar.components.amintegrations")
except ModuleNotFoundError:
    pass

log = logging.getLogger(__name__)

DISPATCH_MAINTENANCE_S = 30.0          # empty aggregation groups are dropped this often
ALERTS_GC_S = 30 * 60.0                # resolved alerts leave the store this often
MIN_NOTIFY_TIMEOUT_S = 10.0            # notify.MinTimeout
DEFAULT_RESOLVE_TIMEOUT_S = 300.0
BACKOFF_INITIAL_S, BACKOFF_FACTOR, BACKOFF_MAX_S = 0.5, 1.5, 60.0
API_CHUNK = 1000                       # alerts an API listing handles per reactor turn
RENDER_POOL = "amrender"               # notification templates (app/modules.POOLS)


def nflog_receiver(receiver: str, integration: Any) -> str:
    return "%s/%s/%d" % (receiver, integration.name, integration.index)


class AggregationGroup:
    """Alerts of one route with the same group labels, flushed group_wait after the first one,
    then every group_interval."""

    def __init__(self, route: Route, labels: dict[str, str], clock: Any,
                 notify: Callable[["AggregationGroup", list[Alert], float], "defer.Deferred[bool]"]) -> None:
        self.route = route
        self.labels = labels
        self.clock = clock
        self.notify = notify
        self.alerts: dict[int, Alert] = {}
        self.has_flushed = False
        self.running = False
        self.pending = False
        self.stopped = False
        self.key = "%s:%s" % (route.key(), labelset_string(labels))
        self.timer = clock.callLater(route.opts.group_wait, self._fire)

    def insert(self, a: Alert) -> None:
        self.alerts[a.fp] = a
        now = self.clock.seconds()
        # An alert that started longer than group_wait ago is sent at once.
        if not self.has_flushed and a.starts_at is not None \
                and a.starts_at + self.route.opts.group_wait < now and self.timer.active():
            self.timer.reset(0)

    def empty(self) -> bool:
        return not self.alerts

    def stop(self) -> None:
        self.stopped = True
        if self.timer.active():
            self.timer.cancel()

    def _fire(self) -> None:
        if self.stopped:
            return
        if self.running:
            self.pending = True
            return
        self.has_flushed = True
        self.timer = self.clock.callLater(self.route.opts.group_interval, self._fire)
        self.flush()

    def flush(self) -> "defer.Deferred[None]":
        now = self.clock.seconds()
        batch = []
        for a in self.alerts.values():
            c = a.copy()
            if not c.resolved_at(now):
                c.ends_at = None         # alerts do not resolve as time moves on
            batch.append(c)
        batch.sort(key=ALERT_ORDER)
        self.running = True
        deadline = now + max(self.route.opts.group_interval, MIN_NOTIFY_TIMEOUT_S)

        def done(ok: bool) -> None:
            if ok:
                for c in batch:
                    got = self.alerts.get(c.fp)
                    if c.resolved_at(now) and got is not None and got.updated_at == c.updated_at:
                        del self.alerts[c.fp]

        def failed(f: Any) -> None:
            log.error("notify for %s failed: %s", self.key, f.getTraceback())

        def finish(_: Any) -> None:
            self.running = False
            if self.pending and not self.stopped:
                self.pending = False
                self._fire()
        d = defer.maybeDeferred(self.notify, self, batch, deadline)
        return d.addCallbacks(done, failed).addBoth(finish)


class Dispatcher:
    def __init__(self, route: Route, clock: Any, notify: Callable[..., "defer.Deferred[bool]"]) -> None:
        self.route = route
        self.clock = clock
        self.notify = notify
        self.groups: dict[Route, dict[tuple, AggregationGroup]] = {}
        self.loop = task.LoopingCall(self.maintenance)
        self.loop.clock = clock
        self.loop.start(DISPATCH_MAINTENANCE_S, now=False)

    def process(self, a: Alert) -> None:
        for r in self.route.match(a.labels):
            gl = r.group_labels(a.labels)
            key = tuple(sorted(gl.items()))
            groups = self.groups.setdefault(r, {})
            ag = groups.get(key)
            if ag is None:
                ag = groups[key] = AggregationGroup(r, gl, self.clock, self.notify)
            ag.insert(a)

    def maintenance(self) -> None:
        for r, groups in list(self.groups.items()):
            for key, ag in list(groups.items()):
                if ag.empty():
                    ag.stop()
                    del groups[key]

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stop()
        for groups in self.groups.values():
            for ag in groups.values():
                ag.stop()
        self.groups = {}

    def all_groups(self) -> list[AggregationGroup]:
        return [ag for groups in self.groups.values() for ag in groups.values()]


class Config:
    """A parsed tenant configuration: routes, inhibit rules, receivers' integrations, templates."""

    def __init__(self, raw: str, templates: dict[str, str], http_client: Any, clock: Any) -> None:
        try:
            self._load(raw, templates, http_client, clock)
        except AMError:
            raise
        except (TypeError, AttributeError, KeyError, ValueError) as exc:
            # A value of the wrong YAML type somewhere (a list where a mapping belongs...).
            raise AMError("invalid configuration: %s" % exc) from None
        except TemplateError as exc:
            raise AMError(str(exc)) from None

    def _load(self, raw: str, templates: dict[str, str], http_client: Any, clock: Any) -> None:
        try:
            doc = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise AMError(str(exc)) from None
        if not isinstance(doc, dict):
            raise AMError("the configuration is not a YAML mapping")
        self.raw = raw
        self.doc = doc
        g = doc.get("global") or {}
        if not isinstance(g, dict):
            raise AMError("global must be a mapping")
        self.global_cfg = g
        self.resolve_timeout = duration_s(g.get("resolve_timeout", "5m"), "resolve_timeout")
        self.intervals = parse_time_intervals(doc)
        if not isinstance(doc.get("route"), dict):
            raise AMError("no routes provided")
        self.route = Route(doc["route"], None, self.intervals)
        if not self.route.opts.receiver:
            raise AMError("root route must specify a default receiver")
        self.inhibit_rules = [InhibitRule(r) for r in doc.get("inhibit_rules") or []]
        self.receivers: dict[str, list[Any]] = {}
        for rcv in doc.get("receivers") or []:
            name = str(rcv.get("name") or "")
            if not name or name in self.receivers:
                raise AMError("missing or repeated receiver name %r" % name)
            integrations: list[Any] = []
            for key, items in rcv.items():
                if not key.endswith("_configs") or not items:
                    continue
                factory = amreceivers.INTEGRATIONS.get(key)
                if factory is None:
                    log.warning("receiver %s: %s is not supported here; not delivered", name, key)
                    continue
                for i, item in enumerate(items):
                    try:
                        integrations.append(factory(dict(item or {}), g, i, http_client, clock))
                    except amreceivers.ConfigError as exc:
                        raise AMError("receiver %s: %s[%d]: %s" % (name, key, i, exc)) from None
            self.receivers[name] = integrations
        for r in self.route.walk():
            if r.opts.receiver not in self.receivers:
                raise AMError('undefined receiver "%s" used in route' % r.opts.receiver)
        now = clock.seconds if clock is not None else None
        # Alertmanager's default templates, then the tenant's files its `templates:` globs select
        # (Mimir keeps a tenant's templates in one directory: globs match by base name).
        globs = [os.path.basename(str(x)) for x in doc.get("templates") or []]
        selected = {name: body for name, body in templates.items()
                    if any(fnmatch.fnmatchcase(name, pat) for pat in globs)}
        self.template = notification_template(selected, now=now)


class TenantAlertmanager:
    """One tenant's Alertmanager. `apply_config` (re)loads a configuration; the API methods below
    serve handlers/alertmanager.py."""

    def __init__(self, tenant: str, clock: Any, http_client: Any, state_dir: str,
                 retention: float = 120 * 3600.0, external_url: str = "",
                 maintenance_interval: float = 15 * 60.0, offload: Any = None,
                 limits: Optional[Callable[[], Any]] = None,
                 on_insert_limited: Optional[Callable[[int], Any]] = None) -> None:
        self.tenant = tenant
        # The tenant's limits (components/limits.Overrides.for_tenant), read when used.
        self.limits = limits
        # Told how many alerts a request had refused by those limits (Mimir's
        # cortex_alertmanager_alerts_insert_limited_total).
        self.on_insert_limited = on_insert_limited
        self.clock = clock
        self.http = http_client
        self.state_dir = state_dir
        self.external_url = external_url
        self.offload = offload
        self.alerts = AlertStore(clock, self._on_put)
        self.silences = Silences(clock, retention)
        self.nflog = NotificationLog(clock, retention)
        self.config: Optional[Config] = None
        self.inhibitor: Optional[Inhibitor] = None
        self.dispatcher: Optional[Dispatcher] = None
        self.started_at = clock.seconds()
        self.templates: dict[str, str] = {}
        self.waits: set[Any] = set()        # pending retries' delayed calls, cancelled at stop
        self.render_lock = defer.DeferredLock()
        # Sharded (components/amshard.py): seconds this replica waits before notifying (its
        # position x -alertmanager.peer-timeout) and where its new state goes to the other replicas.
        self.peer_wait: Callable[[], float] = lambda: 0.0
        self.on_state: Callable[[str, list[dict]], Any] | None = None
        self.silences.on_change = lambda sil: self._replicate("silences", [sil.to_json()])
        if limits is not None:
            self.silences.limits = lambda: (int(limits().alertmanager_max_silences_count),
                                            int(limits().alertmanager_max_silence_size_bytes))
        self.loops = []
        for fn, every in ((self.maintenance, maintenance_interval), (self.gc_alerts, ALERTS_GC_S)):
            lc = task.LoopingCall(fn)
            lc.clock = clock
            self.loops.append((lc, every))

    # ---- life cycle ----

    def start(self) -> "defer.Deferred[None]":
        """Restore the persisted state (read off the reactor), then start the maintenance."""
        def begin(state: list[Any]) -> None:
            self._restore(state)
            for lc, every in self.loops:
                lc.start(every, now=False)
        return run_or_inline(self.offload, "alertmanager", self._read_state).addCallback(begin)

    def stop(self) -> "defer.Deferred[None]":
        for lc, _ in self.loops:
            if lc.running:
                lc.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()
            self.dispatcher = None
        for call in list(self.waits):
            if call.active():
                call.cancel()
        self.waits.clear()
        return self.persist()

    def apply_config(self, raw: str, templates: dict[str, str]) -> None:
        self.install(Config(raw, templates, self.http, self.clock), templates)

    def install(self, cfg: Config, templates: dict[str, str]) -> None:
        """Use a loaded configuration: a new dispatcher regroups the alerts kept in the store
        (the notification log keeps what was sent from being sent again before its time)."""
        self.config = cfg
        self.templates = dict(templates)
        self.inhibitor = Inhibitor(cfg.inhibit_rules, self.alerts)
        if self.dispatcher is not None:
            self.dispatcher.stop()
        self.dispatcher = Dispatcher(cfg.route, self.clock, self._notify)
        for a in list(self.alerts.alerts.values()):
            self.dispatcher.process(a)

    def _on_put(self, a: Alert) -> None:
        if self.dispatcher is not None:
            self.dispatcher.process(a)

    def maintenance(self) -> "defer.Deferred[None]":
        self.silences.gc()
        self.nflog.gc()
        return self.persist()

    def gc_alerts(self) -> None:
        self.alerts.gc()

    # ---- persistence ----

    def _paths(self) -> tuple[str, str]:
        return (os.path.join(self.state_dir, "silences.json"),
                os.path.join(self.state_dir, "nflog.json"))

    def persist(self) -> "defer.Deferred[None]":
        sil, nfl = self._paths()
        data = [(sil, self.silences.snapshot()), (nfl, self.nflog.snapshot())]

        def write() -> None:
            os.makedirs(self.state_dir, exist_ok=True)
            for path, items in data:
                tmp = path + ".tmp"
                with open(tmp, "w") as f:
                    json.dump(items, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)

        def failed(f: Any) -> None:
            log.error("alertmanager state of %s not written: %s", self.tenant, f.value)
        return run_or_inline(self.offload, "alertmanager", write).addErrback(failed)

    def _read_state(self) -> list[Any]:
        out: list[Any] = []
        for path in self._paths():
            try:
                with open(path) as f:
                    out.append(json.load(f))
            except FileNotFoundError:
                out.append([])
            except (OSError, ValueError) as exc:
                log.error("alertmanager state %s of %s not restored: %s", path, self.tenant, exc)
                out.append([])
        return out

    def _restore(self, state: list[Any]) -> None:
        targets: tuple[Any, ...] = (self.silences, self.nflog)
        for items, target in zip(state, targets):
            try:
                target.restore(items)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("alertmanager state of %s not restored: %s", self.tenant, exc)

    # ---- status of an alert (the marker) ----

    def status_of(self, a: Alert) -> dict[str, Any]:
        inhibited = self.inhibitor.inhibited_by(a.labels) if self.inhibitor else []
        silenced = self.silences.active_for(a.labels)
        return {"state": "suppressed" if inhibited or silenced else "active",
                "silencedBy": silenced, "inhibitedBy": inhibited}

    # ---- the notification pipeline ----

    def _notify(self, ag: AggregationGroup, alerts: list[Alert], deadline: float) -> "defer.Deferred[bool]":
        now = self.clock.seconds()
        opts = ag.route.opts
        cfg = self.config
        assert cfg is not None
        # Inhibition, then time intervals, then silences (notify.go's receiver stages).
        alerts = [a for a in alerts if not (self.inhibitor and self.inhibitor.inhibited_by(a.labels))]
        if not alerts:
            return defer.succeed(True)
        if opts.active_time_intervals and not any(
                ti.contains(now) for n in opts.active_time_intervals for ti in cfg.intervals[n]):
            return defer.succeed(True)
        if any(ti.contains(now) for n in opts.mute_time_intervals for ti in cfg.intervals[n]):
            return defer.succeed(True)
        alerts = [a for a in alerts if not self.silences.active_for(a.labels)]
        if not alerts:
            return defer.succeed(True)
        integrations = cfg.receivers.get(opts.receiver, [])
        if not integrations:
            return defer.succeed(True)

        def send(_: Any = None) -> "defer.Deferred[bool]":
            ds = [self._notify_one(ag, i, alerts, deadline, now) for i in integrations]
            d = defer.DeferredList(ds, consumeErrors=True)
            return d.addCallback(lambda results: all(ok and res for ok, res in results))
        wait = self.peer_wait()
        if wait <= 0:
            return send()
        # notify.WaitStage: the replicas before this one notify first; the notification log
        # they replicate to us then makes the dedup below skip (a group's one notification).
        waited: defer.Deferred[None] = defer.Deferred()
        calls: list[Any] = []

        def fire() -> None:
            self.waits.discard(calls[0])
            waited.callback(None)
        calls.append(self.clock.callLater(wait, fire))
        self.waits.add(calls[0])
        return waited.addCallback(send)

    def _notify_one(self, ag: AggregationGroup, integ: Any, alerts: list[Alert], deadline: float,
                    now: float) -> "defer.Deferred[bool]":
        recv = nflog_receiver(ag.route.opts.receiver, integ)
        firing = {hash_labels(a.labels) for a in alerts if not a.resolved_at(now)}
        resolved = {hash_labels(a.labels) for a in alerts if a.resolved_at(now)}
        entry = self.nflog.query(ag.key, recv)
        if not needs_update(entry, firing, resolved, integ.send_resolved,
                            ag.route.opts.repeat_interval, now):
            return defer.succeed(True)
        if integ.send_resolved:
            sent = alerts
        else:
            if not firing:
                # Only resolved alerts: logged as sent so the log forgets the firing ones.
                self.nflog.log(recv, ag.key, firing, resolved)
                return defer.succeed(True)
            sent = [a for a in alerts if not a.resolved_at(now)]
        data = self.notification_data(ag, sent, now)
        d = self._retry(integ, data, deadline)

        def ok(_: Any) -> bool:
            self.nflog.log(recv, ag.key, firing, resolved)
            self._replicate("nflog", [self.nflog.snapshot_entry(ag.key, recv)])
            return True

        def failed(f: Any) -> bool:
            log.warning("tenant %s: notify %s for %s failed: %s", self.tenant, recv, ag.key,
                        f.getErrorMessage())
            return False
        return d.addCallbacks(ok, failed)

    def _replicate(self, kind: str, items: list[dict]) -> None:
        """Hand new state ("silences" or "nflog" items) to the replicator, if sharded."""
        if self.on_state is not None:
            try:
                self.on_state(kind, items)
            except Exception:
                log.exception("tenant %s: replicating %s", self.tenant, kind)

    def merge_state(self, state: dict) -> None:
        """Fold a peer's {"silences": [...], "nflog": [...]} in (Alertmanager's merge rules)."""
        self.silences.merge(state.get("silences") or [])
        self.nflog.merge(state.get("nflog") or [])

    def state(self) -> dict:
        return {"silences": self.silences.snapshot(), "nflog": self.nflog.snapshot()}

    def _retry(self, integ: Any, data: amreceivers.NotificationData, deadline: float) -> "defer.Deferred[None]":
        result: defer.Deferred[None] = defer.Deferred()
        state: dict[str, Any] = {"wait": BACKOFF_INITIAL_S, "attempts": 0,
                                 "last": "context deadline exceeded"}
        assert self.config is not None
        template = self.config.template

        def attempt() -> None:
            now = self.clock.seconds()
            if now >= deadline:
                result.errback(amreceivers.NotifyError(False, "%s/%d: notify retry canceled after "
                               "%d attempts: %s" % (integ.name, integ.index, state["attempts"],
                                                    state["last"])))
                return
            state["attempts"] += 1
            # The tenant's templates run in a pool, one render per tenant at a time, so a costly
            # template (bounded by its step and output limits) occupies at most one worker and
            # never the reactor. The render is not cancelled (its thread would run on anyway);
            # the send is, at the deadline.
            rendered = self.render_lock.run(run_or_inline, self.offload, RENDER_POOL,
                                            integ.render, data, template)

            def send(message: Any) -> "defer.Deferred[None]":
                left = deadline - self.clock.seconds()
                if left <= 0:
                    return defer.fail(defer.TimeoutError("rendering took past the deadline"))
                return integ.send(message).addTimeout(left, self.clock)
            rendered.addCallback(send).addCallbacks(lambda _: result.callback(None), failed)

        def failed(f: Any) -> None:
            err = f.value
            if isinstance(err, amreceivers.NotifyError) and not err.retry:
                result.errback(f)
                return
            state["last"] = f.getErrorMessage()
            wait = state["wait"]
            state["wait"] = min(wait * BACKOFF_FACTOR, BACKOFF_MAX_S)
            left = deadline - self.clock.seconds()
            if left <= 0:
                attempt()
                return
            calls: list[Any] = []

            def again() -> None:
                self.waits.discard(calls[0])
                attempt()
            calls.append(self.clock.callLater(min(wait, left), again))
            self.waits.add(calls[0])
        attempt()
        return result

    def notification_data(self, ag: AggregationGroup, alerts: list[Alert], now: float) -> amreceivers.NotificationData:
        items = []
        for a in alerts:
            items.append({
                "status": "resolved" if a.resolved_at(now) else "firing",
                "labels": dict(a.labels), "annotations": dict(a.annotations),
                "startsAt": format_time(a.starts_at, millis=False),
                "endsAt": format_time(a.ends_at, millis=False),
                "generatorURL": a.generator_url, "fingerprint": fp_hex(a.fp)})
        common_labels = _common([a.labels for a in alerts])
        common_ann = _common([a.annotations for a in alerts])
        status = "firing" if any(i["status"] == "firing" for i in items) else "resolved"
        return amreceivers.NotificationData(
            receiver=ag.route.opts.receiver, status=status, alerts=items,
            groupLabels=dict(ag.labels), commonLabels=common_labels,
            commonAnnotations=common_ann, externalURL=self.external_url, groupKey=ag.key)

    # ---- the API's operations ----

    def post_alerts(self, items: list[Any]) -> list[str]:
        """API v2 POST /alerts: every valid alert is stored; the invalid ones' errors returned."""
        from urdar.components.amcore import parse_time, validate_alert
        now = self.clock.seconds()
        resolve_timeout = self.config.resolve_timeout if self.config else DEFAULT_RESOLVE_TIMEOUT_S
        valid, errors = [], []
        for item in items:
            try:
                if not isinstance(item, dict):
                    raise AMError("an alert must be a JSON object")
                labels = _str_map(item.get("labels"), "labels")
                labels = {k: v for k, v in labels.items() if v != ""}
                a = Alert(labels, _str_map(item.get("annotations"), "annotations"),
                          parse_time(item.get("startsAt")), parse_time(item.get("endsAt")),
                          str(item.get("generatorURL") or ""), now)
                if a.starts_at is None:
                    a.starts_at = a.ends_at if a.ends_at is not None else now
                if a.ends_at is None:
                    a.timeout = True
                    a.ends_at = now + resolve_timeout
                validate_alert(a)
            except AMError as exc:
                errors.append(str(exc))
                continue
            valid.append(a)
        self.alerts.put(self._within_limits(valid))
        return errors

    def _within_limits(self, alerts: list[Alert]) -> list[Alert]:
        """The alerts -alertmanager.max-alerts-count and -max-alerts-size-bytes let in, in order.
        As Mimir (whose limiter refuses them in the provider's pre-store hook), the others are
        dropped with a log line and the request still succeeds."""
        limits = self.limits() if self.limits is not None else None
        max_count = int(limits.alertmanager_max_alerts_count) if limits is not None else 0
        max_size = int(limits.alertmanager_max_alerts_size_bytes) if limits is not None else 0
        if max_count <= 0 and max_size <= 0:
            return alerts
        count, total = len(self.alerts.alerts), self.alerts.total_size
        sizes: dict[int, int] = {}           # this request's alerts, as they will be stored
        kept, refused = [], []
        for a in alerts:
            old = sizes.get(a.fp, self.alerts.sizes.get(a.fp))
            size = alert_size(a)
            if old is None and max_count > 0 and count + 1 > max_count:
                refused.append("too many alerts, limit: %d" % max_count)
                continue
            if max_size > 0 and total + size - (old or 0) > max_size:
                refused.append("alerts too big, total size limit: %d bytes" % max_size)
                continue
            count += old is None
            total += size - (old or 0)
            sizes[a.fp] = size
            kept.append(a)
        if refused:
            log.warning("tenant %s: %d of %d alerts not stored: %s", self.tenant, len(refused),
                        len(alerts), refused[0])
            if self.on_insert_limited is not None:
                self.on_insert_limited(len(refused))
        return kept

    def receivers_of(self, a: Alert) -> list[str]:
        if self.config is None:
            return []
        return [r.opts.receiver for r in self.config.route.match(a.labels)]

    def gettable_alert(self, a: Alert, status: dict, receivers: list[str]) -> dict[str, Any]:
        return {"annotations": a.annotations, "endsAt": format_time(a.ends_at),
                "fingerprint": fp_hex(a.fp), "receivers": [{"name": r} for r in receivers],
                "startsAt": format_time(a.starts_at), "status": status,
                "updatedAt": format_time(a.updated_at), "generatorURL": a.generator_url,
                "labels": a.labels}

    def _alert_filter(self, filters: list, silenced: bool, inhibited: bool, active: bool,
                      unprocessed: bool) -> Callable[[Alert], Optional[dict]]:
        from urdar.components.amcore import filter_matches
        now = self.clock.seconds()

        def keep(a: Alert) -> Optional[dict]:
            if a.resolved_at(now) or not filter_matches(filters, a.labels):
                return None
            st = self.status_of(a)
            if not active and st["state"] == "active":
                return None
            if not silenced and st["silencedBy"]:
                return None
            if not inhibited and st["inhibitedBy"]:
                return None
            return st
        return keep

    def _chunks(self, items: list, fn: Callable[[Any], None]) -> "defer.Deferred[None]":
        """fn over items on the reactor, API_CHUNK at a time with the reactor free in between
        (listing a tenant's alerts costs about 0.1 ms each)."""
        d: defer.Deferred[None] = defer.Deferred()

        def step(i: int) -> None:
            try:
                for x in items[i:i + API_CHUNK]:
                    fn(x)
            except Exception:
                d.errback()
                return
            if i + API_CHUNK >= len(items):
                d.callback(None)
            else:
                self.clock.callLater(0, step, i + API_CHUNK)
        step(0)
        return d

    def list_alerts(self, filters: list, receiver: Optional[re.Pattern], silenced: bool = True,
                    inhibited: bool = True, active: bool = True,
                    unprocessed: bool = True) -> "defer.Deferred[list[dict]]":
        keep = self._alert_filter(filters, silenced, inhibited, active, unprocessed)
        out: list[dict] = []

        def one(a: Alert) -> None:
            receivers = self.receivers_of(a)
            if receiver is not None and not any(receiver.fullmatch(r) for r in receivers):
                return
            st = keep(a)
            if st is not None:
                out.append(self.gettable_alert(a, st, receivers))

        def done(_: Any) -> list[dict]:
            out.sort(key=lambda x: x["fingerprint"])
            return out
        return self._chunks(list(self.alerts.alerts.values()), one).addCallback(done)

    def alert_groups(self, filters: list, receiver: Optional[re.Pattern], silenced: bool = True,
                     inhibited: bool = True, active: bool = True) -> "defer.Deferred[list[dict]]":
        if self.dispatcher is None:
            return defer.succeed([])
        keep = self._alert_filter(filters, silenced, inhibited, active, True)
        receivers: dict[int, list[str]] = {}
        kept: dict[AggregationGroup, list] = {}
        pairs = [(ag, a) for ag in self.dispatcher.all_groups()
                 if receiver is None or receiver.fullmatch(ag.route.opts.receiver)
                 for a in ag.alerts.values()]

        def one(pair: tuple) -> None:
            ag, a = pair
            st = keep(a)
            if st is not None:
                receivers.setdefault(a.fp, []).append(ag.route.opts.receiver)
                kept.setdefault(ag, []).append((a, st))

        def done(_: Any) -> list[dict]:
            groups = [(ag.labels, ag.route.opts.receiver, alerts) for ag, alerts in kept.items()]
            groups.sort(key=_cmp_key(lambda x, y: (x[1] < y[1]) if x[0] == y[0]
                                     else labels_before(x[0], y[0])))
            out = []
            for labels, name, alerts in groups:
                alerts.sort(key=_cmp_key(lambda x, y: _alert_lt(x[0], y[0])))
                out.append({"alerts": [self.gettable_alert(a, st, receivers[a.fp])
                                       for a, st in alerts],
                            "labels": labels, "receiver": {"name": name}})
            return out
        return self._chunks(pairs, one).addCallback(done)


def _alert_lt(a: Alert, b: Alert) -> bool:
    from urdar.components.amcore import alert_before
    return alert_before(a.labels, b.labels)


def _common(sets: list[dict[str, str]]) -> dict[str, str]:
    if not sets:
        return {}
    out = dict(sets[0])
    for s in sets[1:]:
        for k in list(out):
            if s.get(k) != out[k]:
                del out[k]
    return out


def _str_map(v: Any, what: str) -> dict[str, str]:
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str)
                                          for k, x in v.items()):
        raise AMError("%s must map strings to strings" % what)
    return dict(v)
