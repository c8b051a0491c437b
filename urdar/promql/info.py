"""PromQL's experimental `info(v [, {label selectors}])`: enrich series with info metric labels.

Each series of `v` (except info series themselves) gets the data labels of the info series
(`target_info` by default, or those the `__name__` matchers of the second argument select)
that share its identifying labels (`instance`, `job`, where present), as of the step's
reference time; with data label matchers only those labels are added, and a series without a
matching info series is dropped unless every matcher accepts the empty value. Semantics follow
Prometheus' promql/info.go; the code is ours. The info series are read with one select that the
selector walk (promql/selectors.py `selections`) plans from `info_select_matchers`, and are
filtered here by the identifying label values of `v`.
"""

from __future__ import annotations

from array import array
from typing import List, Optional, Tuple

from urdar.engine.matchers import Matcher
from urdar.promql import ast as A
from urdar.promql import kernels as K
from urdar.promql.histcalls import instant_with_hists
from urdar.promql.value import NAME, QueryError, Series, get_label, labels_str, unwrap, zeros

TARGET_INFO = "target_info"
IDENTIFYING_LABELS = ("instance", "job")


def effective_name_matchers(matchers: List[Matcher]) -> List[Matcher]:
    """The `__name__` matchers that select info series: as given when one is positive, else a
    `.+_info` regex in front of the negative ones, and `target_info` when there are none."""
    if any(m.kind in ("=", "=~") for m in matchers):
        return list(matchers)
    if matchers:
        return [Matcher("=~", NAME, ".+_info")] + list(matchers)
    return [Matcher("=", NAME, TARGET_INFO)]


def _selector_matchers(node) -> List[Matcher]:
    if len(node.args) > 1:
        return list(unwrap(node.args[1]).matchers)
    return []


def info_select_matchers(node) -> List[Matcher]:
    """The matchers of the one select reading an info() call's candidate info series: its data
    label matchers plus the effective `__name__` matchers (identifying labels filter later)."""
    ms = _selector_matchers(node)
    names = [m for m in ms if m.name == NAME]
    return [m for m in ms if m.name != NAME] + effective_name_matchers(names)


def info_anchor(expr) -> Tuple[Optional[A.Node], list]:
    """Which node's @ (None: the step time) and which nodes' offsets fix the time at which the
    info series are matched: those of the first vector selector in `expr`, walking out through
    its enclosing subqueries until one carries an @ (Prometheus' infoSelectTimestampAndOffset)."""
    path: list = []

    def find(n):
        if isinstance(n, A.VectorSelector):
            return n
        path.append(n)
        for c in n.children():
            r = find(c)
            if r is not None:
                return r
        path.pop()
        return None

    vs = find(expr)
    if vs is None:
        return None, []
    offsets = [vs]
    if vs.timestamp_ms is not None or vs.start_or_end is not None:
        return vs, offsets
    for n in reversed(path):
        if isinstance(n, A.SubqueryExpr):
            offsets.append(n)
            if n.timestamp_ms is not None or n.start_or_end is not None:
                return n, offsets
    return None, offsets


def _info_refs(ev, node, times):
    at_node, off_nodes = info_anchor(node.args[0])
    off = sum(ev._offset(n) for n in off_nodes)
    if at_node is None:
        return array("q", [t - off for t in times])
    at = at_node.timestamp_ms
    if at_node.start_or_end == "start":
        at = ev.start
    elif at_node.start_or_end == "end":
        at = ev.end
    return array("q", [at - off]) * len(times)


def call_info(ev, node, times):
    n = len(times)
    base = ev.eval(node.args[0], times)
    ms = _selector_matchers(node)
    name_ms = effective_name_matchers([m for m in ms if m.name == NAME])
    # Data label matchers by label name; __name__ only picks the info metrics.
    data_ms = {}
    for m in ms:
        if m.name != NAME:
            data_ms.setdefault(m.name, []).append(m)

    # Info series are passed through, not enriched.
    ignored = [all(m.matches(get_label(s.labels, NAME)) for m in name_ms) for s in base]
    id_values = {}
    for s, ig in zip(base, ignored):
        if ig:
            continue
        for ln in IDENTIFYING_LABELS:
            v = get_label(s.labels, ln)
            if v:
                id_values.setdefault(ln, set()).add(v)

    # The info series as of each step's reference time; the value is the sample's timestamp,
    # so that of two info series with one signature the newer wins.
    infos = []  # (labels, name, sig, sample ts per step, mask)
    if id_values:
        refs = _info_refs(ev, node, times)
        hparts = []
        data, _ = ev._select(info_select_matchers(node), min(refs) - ev.lookback + 1, max(refs),
                             None, hparts)
        keep = [i for i, d in enumerate(data)
                if all(get_label(d[0], ln) in vals for ln, vals in id_values.items())]
        for i in keep:
            hp = hparts[i]
            if hp is not None and any(h is not None for h in instant_with_hists(
                    data[i][1], data[i][2], hp[0], hp[1], refs, ev.lookback)[3]):
                raise QueryError("info sample should be float")
        data = [data[i] for i in keep]
        res = K.instant_values_many([d[1] for d in data], [d[2] for d in data], refs,
                                    ev.lookback)
        for i, _vals, sts, mask, _cnt in res:
            labels = data[i][0]
            name = get_label(labels, NAME)
            infos.append((labels, name, _sig(name, labels), sts, mask))
    info_names = sorted({x[1] for x in infos})

    out = {}  # labels -> [vals, mask, drop_name]
    order = []

    def emit(labels, v, k, drop):
        ent = out.get(labels)
        if ent is None:
            ent = out[labels] = [zeros(n), bytearray(n), drop]
            order.append(labels)
        elif ent[1][k]:
            raise QueryError("vector cannot contain metrics with the same labelset")
        ent[0][k] = v
        ent[1][k] = 1

    must_match = any(not m.matches_empty() for lst in data_ms.values() for m in lst)
    base_sigs = [{nm: _sig(nm, s.labels) for nm in info_names} for s in base]
    for k in range(n):
        if k % 64 == 0:
            ev.check()
        by_sig = {}
        for labels, _name, sig, sts, mask in infos:
            if not mask[k]:
                continue
            prev = by_sig.get(sig)
            if prev is not None:
                if prev[1] == sts[k]:
                    raise QueryError("found duplicate series for info metric: existing %s @ %d, "
                                     "new %s @ %d" % (_metric_str(prev[0]), prev[1],
                                                      _metric_str(labels), sts[k]))
                if prev[1] > sts[k]:
                    continue
            by_sig[sig] = (labels, sts[k])
        for s, ig, sigs in zip(base, ignored, base_sigs):
            if not s.mask[k]:
                continue
            if ig:
                emit(s.labels, s.vals[k], k, s.drop_name)
                continue
            have = dict(s.labels)
            extra = {}
            seen = False
            for nm in info_names:
                hit = by_sig.get(sigs[nm])
                if hit is None:
                    continue
                seen = True
                for ln, lv in hit[0]:
                    if ln == NAME or (data_ms and ln not in data_ms):
                        continue
                    cur = extra.get(ln, "")
                    if cur and cur != lv:
                        raise QueryError("conflicting label: %s" % ln)
                    if ln not in have:
                        extra[ln] = lv
            if not seen and must_match:
                continue
            labels = s.labels
            if extra:
                have.update(extra)
                labels = tuple(sorted(have.items()))
            emit(labels, s.vals[k], k, s.drop_name)
    return [Series(lb, out[lb][0], out[lb][1], out[lb][2]) for lb in order]


def _sig(name, labels):
    return (name,) + tuple(p for p in labels if p[0] in IDENTIFYING_LABELS)


def _metric_str(labels):
    """Go's labels.String(): name{other labels}."""
    name = get_label(labels, NAME)
    rest = tuple(p for p in labels if p[0] != NAME)
    if name and A.is_legacy_metric_name(name):
        return name + labels_str(rest)
    return labels_str(labels)
