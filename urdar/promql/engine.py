"""PromQL engine facade: `Engine(queryable, ...)` parses a query and evaluates it.

The querier builds one Engine per query over a Queryable (`select(matchers, mint, maxt)`); the
work happens in promql/evaluator.py (nodes), promql/calls.py (functions), promql/quantile.py
(histogram quantiles), promql/kernels.pyx (per-sample loops) and promql/vecops.pyx (per-series
label work and vector matching). The value types and errors are re-exported from
promql/value.py so callers import everything from here.
"""

from __future__ import annotations

from typing import Callable, Optional

from urdar.promql.evaluator import Evaluator
from urdar.promql.parser import Options, ParseError, ParseErrorItem, parse_expr
from urdar.promql.value import (  # noqa: F401  (re-exported)
    DEFAULT_LOOKBACK_MS, Labels, MatrixValue, QueryCanceled, QueryError, QueryTimeout, Result,
    Scalar, Series, String, TooManySamples)

__all__ = ["DEFAULT_LOOKBACK_MS", "Engine", "Labels", "MatrixValue", "QueryCanceled",
           "QueryError", "QueryTimeout", "Result", "Scalar", "Series", "String",
           "TooManySamples"]


class Engine:
    """Evaluates PromQL over one Queryable (`select(matchers, mint, maxt)`).

    max_samples bounds the samples (and subquery grid points) one query may hold.
    deadline_s is a time in `clock` seconds (clock.seconds(), Twisted's IReactorTime shape)
    past which evaluation raises QueryTimeout; `cancelled()` returning true makes it raise
    QueryCanceled. Both are checked between batches of work inside the evaluation loops."""

    def __init__(self, queryable, lookback_ms: int = DEFAULT_LOOKBACK_MS,
                 max_samples: int = 50_000_000, subquery_step_ms: int = 60_000,
                 options: Optional[Options] = None, clock=None,
                 deadline_s: Optional[float] = None,
                 cancelled: Optional[Callable[[], bool]] = None):
        self.queryable = queryable
        self.lookback_ms = lookback_ms
        self.max_samples = max_samples
        self.subquery_step_ms = subquery_step_ms
        self.options = options or Options()
        if deadline_s is not None and clock is None:
            raise ValueError("a deadline needs the clock it is measured on")
        self.clock = clock
        self.deadline_s = deadline_s
        self.cancelled = cancelled

    def instant(self, query: str, t: int, lookback_ms: Optional[int] = None, expr=None) -> Result:
        """Evaluate `query` at time t (ms); `expr` is its tree when the caller parsed it already."""
        return self._run(query, t, t, 0, lookback_ms, expr)

    def range(self, query: str, start: int, end: int, step: int,
              lookback_ms: Optional[int] = None, expr=None) -> Result:
        """Evaluate `query` at start, start+step, ... <= end (ms)."""
        if step <= 0:
            raise QueryError("zero or negative query resolution step widths are not accepted")
        return self._run(query, start, end, step, lookback_ms, expr)

    def _run(self, query, start, end, step, lookback_ms, expr=None):
        if expr is None:
            expr = parse_expr(query, self.options)
        ev = Evaluator(self, query, start, end, step,
                       self.lookback_ms if lookback_ms is None else lookback_ms)
        try:
            return ev.run(expr)
        except RecursionError:
            # parse_expr bounds nesting to stay clear of this; a caller already deep in its
            # own stack still gets a client error, never a 500.
            raise ParseError(query, [ParseErrorItem((0, len(query)),
                                                    "expression nested too deeply")]) from None
