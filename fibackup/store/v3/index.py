"""A disk's index in a format-3 restore point: virtual chunk number -> chunk id
(pure, no I/O).

The guest's view of a disk is cut at fixed virtual offsets ``k * chunk_size``
(the last chunk shorter when the size is not a multiple).  The index lists every
chunk that holds a non-zero byte; a chunk it does not list reads as zeros.

Plaintext bytes (docs/FORMAT.md, "Index objects")::

    "FBI3" | virtual_size (u64 LE) | chunk_size (u32 LE) | count (u64 LE)
    count x ( chunk number (u64 LE) | chunk id (32 bytes) ), numbers strictly rising
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

from fibackup.errors import CorruptStoreError

MAGIC = b"FBI3"
_HEADER = struct.Struct("<4sQIQ")
_ENTRY = struct.Struct("<Q32s")
ID_BYTES = 32


@dataclass(frozen=True)
class DiskIndex:
    """The complete view of one disk (or one stored file) at one restore point."""

    virtual_size: int
    chunk_size: int
    chunks: Mapping[int, bytes] = field(default_factory=dict)
    """Chunk number -> 32-byte chunk id; numbers not listed are zeros."""

    @property
    def chunk_count(self) -> int:
        """How many chunks the whole virtual size spans (listed or not)."""
        return -(-self.virtual_size // self.chunk_size)

    def length(self, number: int) -> int:
        """The byte length of chunk ``number`` (the last one may be shorter)."""
        return min(self.chunk_size, self.virtual_size - number * self.chunk_size)

    @property
    def data_bytes(self) -> int:
        """Bytes of the view that are not known zeros (the logical size stored)."""
        return sum(self.length(number) for number in self.chunks)

    def ids(self) -> set[bytes]:
        return set(self.chunks.values())

    def replaced(self, changes: Mapping[int, bytes | None]) -> "DiskIndex":
        """This index with ``changes`` applied (None: the chunk is now zeros)."""
        chunks = dict(self.chunks)
        for number, chunk_id in changes.items():
            if not 0 <= number < self.chunk_count:
                raise ValueError(f"chunk {number} lies outside a disk of {self.virtual_size} bytes")
            if chunk_id is None:
                chunks.pop(number, None)
            else:
                chunks[number] = chunk_id
        return DiskIndex(self.virtual_size, self.chunk_size, chunks)

    def items(self) -> Iterator[tuple[int, bytes]]:
        """(number, id) in rising order of number."""
        for number in sorted(self.chunks):
            yield number, self.chunks[number]

    def encode(self) -> bytes:
        parts = [_HEADER.pack(MAGIC, self.virtual_size, self.chunk_size, len(self.chunks))]
        parts.extend(_ENTRY.pack(number, chunk_id) for number, chunk_id in self.items())
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes, what: str) -> "DiskIndex":
        if len(data) < _HEADER.size:
            raise CorruptStoreError(f"{what} is too short to be an index")
        magic, virtual_size, chunk_size, count = _HEADER.unpack_from(data)
        if magic != MAGIC or chunk_size == 0:
            raise CorruptStoreError(f"{what} is not a fibackup index")
        if len(data) != _HEADER.size + count * _ENTRY.size:
            raise CorruptStoreError(f"{what} has {len(data)} bytes, not what its "
                                    f"{count} entries need")
        limit = -(-virtual_size // chunk_size)
        chunks: dict[int, bytes] = {}
        previous = -1
        for number, chunk_id in _ENTRY.iter_unpack(memoryview(data)[_HEADER.size:]):
            if number <= previous or number >= limit:
                raise CorruptStoreError(f"{what}: chunk number {number} is out of order or "
                                        "beyond the disk")
            chunks[number] = chunk_id
            previous = number
        return cls(virtual_size, chunk_size, chunks)


def chunk_numbers(extents: Iterable[tuple[int, int]], chunk_size: int, virtual_size: int) -> set[int]:
    """The chunk numbers that byte ranges ``(start, length)`` touch."""
    numbers: set[int] = set()
    limit = -(-virtual_size // chunk_size)
    for start, length in extents:
        if length <= 0:
            continue
        first = start // chunk_size
        last = min((start + length - 1) // chunk_size, limit - 1)
        numbers.update(range(first, last + 1))
    return numbers
