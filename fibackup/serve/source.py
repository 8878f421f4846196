"""One disk of a format-3 restore point as a byte source: ``read(offset, length)``
assembled from the chunks its index lists (zeros where it lists none), each chunk
decoded and checked against its id (ChunkStore.get_chunk) before any of its bytes
are returned.  A damaged, swapped or missing chunk raises IntegrityError: the reader
gets an I/O error, never wrong bytes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from fibackup.errors import IntegrityError, UsageError
from fibackup.serve.cache import ChunkCache
from fibackup.store.repo import BackupStore
from fibackup.store.v3.index import DiskIndex
from fibackup.store.v3.objects import ChunkStore

DEFAULT_CACHE_BYTES = 64 * 1024 * 1024


class DiskSource:
    """The guest's view of one disk at one point, read from the store."""

    def __init__(self, chunks: ChunkStore, index: DiskIndex,
                 cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.chunks = chunks
        self.index = index
        self.cache = ChunkCache(cache_bytes)
        self._zeros = bytes(index.chunk_size)

    @property
    def size(self) -> int:
        return self.index.virtual_size

    def _load(self, number: int) -> bytes:
        chunk_id = self.index.chunks[number]
        return self.chunks.get_chunk(chunk_id, self.index.length(number))

    def chunk(self, number: int) -> bytes:
        """Chunk ``number``'s plaintext (zeros when the index lists none)."""
        if number not in self.index.chunks:
            return self._zeros[:self.index.length(number)]
        return self.cache.fetch(number, self._load)

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise UsageError(f"a read of {length} bytes at {offset} lies outside a disk of "
                             f"{self.size} bytes")
        size = self.index.chunk_size
        parts = []
        position, end = offset, offset + length
        while position < end:
            number, within = divmod(position, size)
            take = min(end - position, self.index.length(number) - within)
            data = self.chunk(number)
            parts.append(data[within:within + take] if take != len(data) else data)
            position += take
        return b"".join(parts)


@dataclass(frozen=True)
class ServedDisk:
    """What a server is asked to serve: a store, an index, and the size the point lists
    (the index must agree, or nothing is served)."""

    location: str
    index_id: str
    virtual_size: int


def open_source(disk: ServedDisk, cache_bytes: int = DEFAULT_CACHE_BYTES,
                store: Optional[BackupStore] = None) -> DiskSource:
    """Open the store (unless given), unlock it (the configuration's password file or
    command: never a prompt) and load the index."""
    opened = store or BackupStore.open(disk.location)
    if opened.chunks is None:
        raise UsageError(f"{opened.root} is a format-{opened.version} store; only format-3 "
                         "points are served from their chunks")
    index = opened.chunks.get_index(disk.index_id)
    if index.virtual_size != disk.virtual_size:
        raise IntegrityError(f"index {disk.index_id} describes {index.virtual_size} bytes, not "
                             f"the {disk.virtual_size} its restore point lists")
    return DiskSource(opened.chunks, index, cache_bytes)
