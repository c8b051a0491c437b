"""Canonical label-set keys: the bytes the engine stores for a series' sorted label pairs."""
from typing import Iterable

from typing_extensions import Buffer

# names/values may be str or bytes; sorted by name, empty values dropped; ValueError on a duplicate
def encode_labels(pairs: Iterable[tuple[str | bytes, str | bytes]]) -> bytes: ...
def decode_labels(key: Buffer) -> list[tuple[str, str]]: ...  # ValueError if malformed
def labels_dict(key: Buffer) -> dict[str, str]: ...
def names_of_keys(keys: Iterable[Buffer]) -> list[str]: ...  # sorted distinct names
def values_of_keys(keys: Iterable[Buffer], name: str) -> list[str]: ...  # sorted distinct non-empty
def hash_key(key: Buffer) -> int: ...  # 64-bit, in-process only (never persisted)
def shard_hash(key: Buffer) -> int: ...  # 64-bit, frozen: query shards (engine/sharding.py)
