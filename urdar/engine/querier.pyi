"""Merging sample streams of one series from several sources; reading a block's XOR chunks."""
from array import array
from typing import Iterable

from typing_extensions import Buffer

from urdar.engine.chunkfile import ChunkReader

# each part is (int64 timestamps, float64 values) sorted by time; the earlier part wins ties
def merge_samples(parts: Iterable[tuple[Buffer, Buffer]]) -> tuple[array, array]: ...
# samples in [mint, maxt] (ms, inclusive) of the XOR chunks refs[i] covering [mints[i], maxts[i]]
def read_chunks(cr: ChunkReader, mints: Buffer, maxts: Buffer, refs: Buffer,
                mint: int, maxt: int) -> tuple[array, array]: ...
# one series over blocks in time order: per block its chunks [(encoding, data)] in time order;
# None when a chunk is not XOR or the samples are not strictly ascending across chunks
def decode_chunk_parts(parts: Iterable[Iterable[tuple[int, bytes]]],
                       mint: int, maxt: int) -> tuple[array, array] | None: ...
# (k0, k1) of the chunks overlapping [mint, maxt] when mints and maxts ascend, else None
def chunk_slice(mints: Buffer, maxts: Buffer, mint: int, maxt: int) -> tuple[int, int] | None: ...
