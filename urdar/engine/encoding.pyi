"""Byte primitives shared by every on-disk format: CRC-32C and Go-style varints."""
from typing_extensions import Buffer

def crc32c(data: Buffer, crc: int = 0) -> int: ...  # continues from `crc`
def encode_uvarint(v: int) -> bytes: ...
def encode_varint(v: int) -> bytes: ...  # zig-zag
def decode_uvarint(data: Buffer) -> tuple[int, int]: ...  # (value, bytes consumed); ValueError
def decode_varint(data: Buffer) -> tuple[int, int]: ...  # (value, bytes consumed); ValueError
