"""Native histogram values as the storage layer hands them over (Prometheus' model/histogram).

Two kinds, as Prometheus has them:

- `Histogram`: integer counts, buckets stored as deltas (each bucket relative to the one before
  it, across spans), as remote write 1.0/2.0 and chunk encoding 2 carry them.
- `FloatHistogram`: float counts, buckets stored as absolute values; what PromQL computes on and
  what chunk encoding 3 carries.

Spans are (offset, length) pairs: the first offset is the index of the first bucket, every later
offset the gap after the previous span. Bucket index i of schema s has upper bound 2**(2**-s * i)
(exponential schemas -4..8), or for schema -53 (custom buckets) the upper bound is
custom_values[i] (index 0 .. len(custom_values), the last bucket being +Inf).

This module is the contract between the engine (chunks, head, WAL, blocks, remote write) and
PromQL: the engine builds these objects, PromQL computes on them. Arithmetic lives in PromQL.
"""
from __future__ import annotations

from typing import Generic, List, Sequence, Tuple, TypeVar

Span = Tuple[int, int]

# Counter reset hints, numbered as in Prometheus' histogram.CounterResetHint and the chunk header.
UNKNOWN_COUNTER_RESET = 0
COUNTER_RESET = 1
NOT_COUNTER_RESET = 2
GAUGE_TYPE = 3

CUSTOM_BUCKETS_SCHEMA = -53
EXPONENTIAL_SCHEMA_MIN = -4
EXPONENTIAL_SCHEMA_MAX = 8


N = TypeVar("N", int, float)


# The constructor's keywords, every field of both kinds (their own __slots__ are empty).
FIELDS = ("counter_reset_hint", "schema", "zero_threshold", "zero_count", "count", "sum",
          "positive_spans", "negative_spans", "positive_buckets", "negative_buckets",
          "custom_values")


class _NativeHistogram(Generic[N]):
    """What both kinds share: the fields, the constructor, equality of values and repr. `_ZERO`
    is the kind's count type's zero, for counts not given."""

    __slots__ = FIELDS
    _ZERO: N

    def __init__(self, *, schema: int = 0, zero_threshold: float = 0.0,
                 zero_count: N | None = None, count: N | None = None, sum: float = 0.0,
                 positive_spans: Sequence[Span] = (), negative_spans: Sequence[Span] = (),
                 positive_buckets: Sequence[N] = (), negative_buckets: Sequence[N] = (),
                 custom_values: Sequence[float] = (),
                 counter_reset_hint: int = UNKNOWN_COUNTER_RESET) -> None:
        self.counter_reset_hint = counter_reset_hint
        self.schema = schema
        self.zero_threshold = zero_threshold
        self.zero_count: N = self._ZERO if zero_count is None else zero_count
        self.count: N = self._ZERO if count is None else count
        self.sum = sum
        self.positive_spans: List[Span] = [tuple(s) for s in positive_spans]  # type: ignore[misc]
        self.negative_spans: List[Span] = [tuple(s) for s in negative_spans]  # type: ignore[misc]
        self.positive_buckets: List[N] = list(positive_buckets)
        self.negative_buckets: List[N] = list(negative_buckets)
        self.custom_values: List[float] = list(custom_values)

    def _key(self) -> tuple:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "%s(%s)" % (type(self).__name__, ", ".join(
            "%s=%r" % (k, getattr(self, k)) for k in FIELDS))


class Histogram(_NativeHistogram[int]):
    """An integer native histogram; bucket counts are deltas, as on the wire."""

    __slots__ = ()
    _ZERO = 0

    def to_float(self) -> "FloatHistogram":
        """The same histogram with absolute float bucket counts."""
        return FloatHistogram(
            schema=self.schema, zero_threshold=self.zero_threshold,
            zero_count=float(self.zero_count), count=float(self.count), sum=self.sum,
            positive_spans=self.positive_spans, negative_spans=self.negative_spans,
            positive_buckets=_absolute(self.positive_buckets),
            negative_buckets=_absolute(self.negative_buckets),
            custom_values=self.custom_values, counter_reset_hint=self.counter_reset_hint)

    def _key(self) -> tuple:
        return (self.counter_reset_hint, self.schema, self.zero_threshold, self.zero_count,
                self.count, _sum_key(self.sum), self.positive_spans, self.negative_spans,
                self.positive_buckets, self.negative_buckets, self.custom_values)


class FloatHistogram(_NativeHistogram[float]):
    """A float native histogram; bucket counts are absolute."""

    __slots__ = ()
    _ZERO = 0.0

    def to_float(self) -> "FloatHistogram":
        return self

    def _key(self) -> tuple:
        return (self.counter_reset_hint, self.schema, self.zero_threshold,
                _sum_key(self.zero_count), _sum_key(self.count), _sum_key(self.sum),
                self.positive_spans, self.negative_spans,
                [_sum_key(v) for v in self.positive_buckets],
                [_sum_key(v) for v in self.negative_buckets], self.custom_values)


def _absolute(deltas: Sequence[int]) -> List[float]:
    out: List[float] = []
    cur = 0
    for d in deltas:
        cur += d
        out.append(float(cur))
    return out


def _sum_key(v: float) -> object:
    # NaN == NaN for equality of stored values (a stale marker's sum is a NaN bit pattern).
    return "NaN" if v != v else v
