"""An in-process tenant store for rule evaluation tests, and a runner for promtool's rule unit-test
files (`promtool test rules`) over urdar's rule manager.

`MemoryTSDB` holds samples per tenant and serves the real Querier (components/querier.py) as a
Source, so rules are evaluated by urdar's PromQL through the real query path; its `push` is the
manager's Pusher. `run_promtool_file(path)` expands a test file's input_series (promtool's
expanding notation), loads them into a tenant, evaluates the rule files' groups step by step on a
fake clock the way promtool does, and checks alert_rule_test and promql_expr_test expectations;
it returns a list of failure texts (empty: all passed)."""
import math
import os
import struct
from array import array

import yaml
from twisted.internet import defer
from twisted.internet.task import Clock

from tests.support.promqltest import expand_values, parse_labels
from tests.support.threads import inline_offload
from urdar.app.config import Config
from urdar.components.limits import Overrides
from urdar.components.querier import Querier
from urdar.components.rulefmt import decode_group, parse_duration
from urdar.components.rulemanager import (FIRING, AlertingRule, RuleManager, RuleManagerConfig,
                                          querier_funcs)
from urdar.engine.labels import encode_labels


def is_stale(v):
    return math.isnan(v) and struct.pack("<d", v) == struct.pack("<Q", 0x7FF0000000000002)


class MemoryTSDB:
    """Samples per tenant: {tenant: {labels tuple: {t: v}}}; a Source for the Querier and a
    Pusher for the rule manager."""

    def __init__(self):
        self.data = {}
        self.pushes = []        # (tenant, samples) in push order

    def add(self, tenant, labels, t, v):
        self.data.setdefault(tenant, {}).setdefault(tuple(sorted(labels.items())), {})[t] = v

    def push(self, tenant, samples):
        self.pushes.append((tenant, list(samples)))
        for labels, t, v in samples:
            self.data.setdefault(tenant, {}).setdefault(tuple(labels), {})[t] = v
        return defer.succeed(None)

    def samples(self, tenant, name):
        """{labels: [(t, v)]} of metric `name`, in time order."""
        return {k: sorted(pts.items()) for k, pts in self.data.get(tenant, {}).items()
                if dict(k).get("__name__") == name}

    # ---- Source ----
    def select(self, tenant, matchers, hints):
        out = []
        for labels in sorted(self.data.get(tenant, {}), key=lambda k: encode_labels(list(k))):
            d = dict(labels)
            if all(m.matches(d.get(m.name, "")) for m in matchers):
                pts = sorted((t, v) for t, v in self.data[tenant][labels].items()
                             if hints.mint <= t <= hints.maxt)
                if pts:
                    out.append((encode_labels(list(labels)), array("q", [t for t, _ in pts]),
                                array("d", [v for _, v in pts])))
        return defer.succeed(out)

    def label_names(self, tenant, matchers, hints):
        return defer.succeed(sorted({n for k in self.data.get(tenant, {}) for n, _ in k}))

    def label_values(self, tenant, name, matchers, hints):
        return defer.succeed(sorted({v for k in self.data.get(tenant, {}) for n, v in k if n == name}))

    def metadata(self, tenant):
        return defer.succeed({})

    def exemplars(self, tenant, matchers, mint, maxt):
        return defer.succeed([])


def make_manager(clock=None, tsdb=None, notify=None, config=None, store=None, pusher=None):
    """(manager, tsdb, clock, querier): a RuleManager over a MemoryTSDB through a real Querier,
    every pool inline."""
    clock = clock if clock is not None else Clock()
    tsdb = tsdb if tsdb is not None else MemoryTSDB()
    off = inline_offload((("query", 2, 100), ("ruler", 2, 100)))
    overrides = Overrides(Config().limits_defaults())
    querier = Querier([tsdb], off, clock, overrides)
    query, select = querier_funcs(querier)
    mgr = RuleManager(store, query, select, pusher if pusher is not None else tsdb, clock,
                      config or RuleManagerConfig(), offload=off, notify=notify,
                      overrides=overrides)
    return mgr, tsdb, clock, querier


# ---- promtool's rule unit tests ------------------------------------------------------------------

def _dur(text, default_ms):
    return parse_duration(str(text)) if text is not None else default_ms


def _load_groups(path):
    """[(file, RuleGroup)] of a Prometheus rule file, parsed by urdar's rule-group decoder."""
    with open(path) as f:
        doc = yaml.safe_load(f)
    return [(os.path.basename(path), decode_group(yaml.safe_dump(g).encode()))
            for g in doc.get("groups", [])]


def run_promtool_file(path, tenant="promtool"):
    """Run a promtool rule unit-test file through urdar; [failure text] (empty when it passes)."""
    with open(path) as f:
        doc = yaml.safe_load(f)
    base = os.path.dirname(path)
    eval_interval = _dur(doc.get("evaluation_interval"), 60_000)
    files = [os.path.join(base, p) for p in doc.get("rule_files", [])]
    failures = []
    for n, tg in enumerate(doc.get("tests", [])):
        failures += ["test %d: %s" % (n, f) for f in _run_test(
            tg, files, eval_interval, tenant, tg.get("external_labels") or {},
            tg.get("external_url") or "")]
    return failures


def _run_test(tg, files, eval_interval, tenant, external_labels, external_url):
    clock = Clock()
    config = RuleManagerConfig(evaluation_interval_ms=eval_interval, external_url=external_url,
                               external_labels=tuple(sorted(external_labels.items())))
    mgr, tsdb, clock, querier = make_manager(clock=clock, config=config)
    interval = _dur(tg.get("interval"), eval_interval)
    for s in tg.get("input_series", []) or []:
        labels = parse_labels(s["series"], 0)
        for i, v in enumerate(expand_values(str(s.get("values", "")), 0)):
            if v is not None:
                tsdb.add(tenant, labels, i * interval, v)
    loaded = []
    for path in files:
        loaded += _load_groups(path)
    mgr.set_groups(tenant, loaded, restore=False)
    order = {(ns, rg.name): i for i, (ns, rg) in enumerate(loaded)}
    groups = sorted(mgr.tenant_groups(tenant), key=lambda g: order[(g.namespace, g.name)])
    alert_tests = tg.get("alert_rule_test", []) or []
    expr_tests = tg.get("promql_expr_test", []) or []
    times = [_dur(t["eval_time"], 0) for t in alert_tests + expr_tests]
    maxt = max(times) if times else 0
    failures = []
    alert_at = {}
    checks = sorted({_dur(t["eval_time"], 0) for t in alert_tests})
    ts = 0
    while ts <= maxt:
        clock.advance(ts / 1000.0 - clock.seconds())
        # As promtool 2.42: every group at each evaluation_interval, whatever its own interval.
        for g in groups:
            if not g.iterate(ts).called:
                failures.append("evaluation at %d did not finish" % ts)
        # promtool checks alerts at the resolution of the evaluation interval.
        for c in checks:
            if ts <= c < ts + eval_interval:
                alert_at[c] = _firing(groups)
        ts += eval_interval
    for t in alert_tests:
        at = _dur(t["eval_time"], 0)
        got = sorted(alert_at.get(at, {}).get(t["alertname"], []))
        want = sorted((tuple(sorted(dict(e.get("exp_labels") or {},
                                         alertname=t["alertname"]).items())),
                       tuple(sorted((e.get("exp_annotations") or {}).items())))
                      for e in t.get("exp_alerts") or [])
        if got != want:
            failures.append("alertname %s at %s: want %r, got %r"
                            % (t["alertname"], t["eval_time"], want, got))
    for t in expr_tests:
        at = _dur(t["eval_time"], 0)
        res = []
        querier.instant_query(tenant, t["expr"], at).addBoth(res.append)
        r = res[0]
        if not hasattr(r, "type"):
            failures.append("expr %s at %s: %s" % (t["expr"], t["eval_time"], r.getErrorMessage()))
            continue
        vec = [(tuple(sorted(lbl)), v) for lbl, v in r.value] if r.type == "vector" else \
            [((), r.value)]
        got = sorted((lbl, round(v, 9)) for lbl, v in vec)
        want = sorted((tuple(sorted(parse_labels(e["labels"], 0).items())) if e.get("labels") else (),
                       round(float(e["value"]), 9)) for e in t.get("exp_samples") or [])
        if got != want:
            failures.append("expr %s at %s: want %r, got %r" % (t["expr"], t["eval_time"], want, got))
    return failures


def _firing(groups):
    out = {}
    for g in groups:
        for r in g.rules:
            if isinstance(r, AlertingRule):
                for a in r.active.values():
                    if a.state == FIRING:
                        out.setdefault(r.name, []).append((a.labels, a.annotations))
    return out
