"""Query shards: the `__query_shard__` matcher and which series belong to which shard.

A selector carrying `{__query_shard__="i_of_n"}` (1 <= i <= n, Mimir's syntax) selects only the
series whose label key hashes to shard i of n: `shard_hash(key) % n == i - 1`, with the frozen
hash of shardhash.pxd, so that every series is in exactly one shard and the head, the
ingester's blocks and the store-gateway agree on it. The matcher is not a label: readers take it
out with `split_shard_matchers` before looking up postings and filter the series they select
before reading samples or chunks. Only `=` is special (as in Mimir); `!=`, `=~` and `!~` on
`__query_shard__` are ordinary matchers on a label no series has."""
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from urdar.engine.labels import shard_hash

__all__ = ["SHARD_LABEL", "ShardError", "ShardSelector", "parse_shard", "split_shard_matchers",
           "shard_of"]

SHARD_LABEL = "__query_shard__"


class ShardError(ValueError):
    """A malformed `__query_shard__` matcher (the query is refused, never run unsharded)."""


@dataclass(frozen=True)
class ShardSelector:
    """Shard `index` (0-based) of `count`."""
    index: int
    count: int

    @property
    def label_value(self) -> str:
        return "%d_of_%d" % (self.index + 1, self.count)

    def matches(self, key: Any) -> bool:
        """Whether the series with canonical label key `key` is in this shard."""
        return shard_hash(key) % self.count == self.index


def shard_of(key: Any, count: int) -> int:
    """0-based shard of the series with label key `key` among `count` shards."""
    return int(shard_hash(key) % count)


def parse_shard(value: str) -> ShardSelector:
    """`"i_of_n"` (1-based i) -> ShardSelector; ShardError unless 1 <= i <= n."""
    parts = value.split("_")
    if (len(parts) == 3 and parts[1] == "of" and parts[0].isdigit() and parts[2].isdigit()
            and parts[0].isascii() and parts[2].isascii()):
        i, n = int(parts[0]), int(parts[2])
        if 1 <= i <= n:
            return ShardSelector(i - 1, n)
    raise ShardError('invalid shard ID: "%s" (the %s matcher takes "<index>_of_<count>" with '
                     '1 <= index <= count)' % (value, SHARD_LABEL))


def split_shard_matchers(matchers: Sequence[Any]) -> "tuple[Optional[ShardSelector], tuple]":
    """(shard or None, the other matchers): the `__query_shard__="i_of_n"` matcher taken out.
    ShardError for a malformed value or more than one such matcher."""
    shard = None
    rest = []
    for m in matchers:
        if m.name == SHARD_LABEL and m.kind == "=":
            if shard is not None:
                raise ShardError("more than one %s matcher in a selector" % SHARD_LABEL)
            shard = parse_shard(m.value)
        else:
            rest.append(m)
    if shard is None:
        return None, tuple(matchers)
    return shard, tuple(rest)
