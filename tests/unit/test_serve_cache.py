"""The chunk cache and the byte source of a served disk (pure: a dict for a store)."""
from __future__ import annotations

import pytest

from fibackup.errors import IntegrityError, UsageError
from fibackup.serve.cache import ChunkCache
from fibackup.serve.source import DiskSource
from fibackup.store.v3.index import DiskIndex


def test_the_cache_drops_the_least_recently_used_chunk_beyond_its_capacity():
    cache = ChunkCache(8)
    cache.put(1, b"aaaa")
    cache.put(2, b"bbbb")
    assert cache.get(1) == b"aaaa"          # 1 is now the newest
    cache.put(3, b"cccc")
    assert cache.get(2) is None and cache.get(1) == b"aaaa" and cache.get(3) == b"cccc"
    assert cache.size_bytes == 8 and len(cache) == 2


def test_the_cache_keeps_one_chunk_even_when_it_is_bigger_than_its_capacity():
    cache = ChunkCache(2)
    cache.put(1, b"abcdef")
    assert cache.get(1) == b"abcdef"
    loads = []
    assert cache.fetch(2, lambda n: loads.append(n) or b"xy") == b"xy"
    assert cache.fetch(2, lambda n: loads.append(n) or b"zz") == b"xy" and loads == [2]


class FakeChunks:
    """A stand-in for ChunkStore.get_chunk: plaintext by id, or the store's refusal."""

    def __init__(self, chunks):
        self.chunks = chunks
        self.reads = 0

    def get_chunk(self, chunk_id, length=None):
        self.reads += 1
        data = self.chunks.get(chunk_id)
        if data is None or len(data) != length:
            raise IntegrityError(f"chunk {chunk_id.hex()} is damaged")
        return data


def source(size=10, chunk=4, listed=None, cache=64):
    ids = {number: bytes([number]) * 32 for number in (listed or {})}
    chunks = FakeChunks({ids[n]: data for n, data in (listed or {}).items()})
    return DiskSource(chunks, DiskIndex(size, chunk, ids), cache), chunks


def test_reads_span_chunks_with_zeros_where_the_index_lists_none_and_a_short_last_chunk():
    disk, chunks = source(listed={0: b"abcd", 2: b"ij"})
    assert disk.read(0, 10) == b"abcd" + bytes(4) + b"ij"
    assert disk.read(3, 6) == b"d" + bytes(4) + b"i"
    assert disk.read(9, 1) == b"j" and disk.read(5, 0) == b""
    assert chunks.reads == 2                  # every later read came from the cache


def test_a_read_outside_the_disk_is_refused_and_a_damaged_chunk_is_never_served():
    disk, _chunks = source(listed={0: b"abcd", 1: b"ef"})      # chunk 1 is 2 bytes, not 4
    with pytest.raises(UsageError):
        disk.read(8, 4)
    assert disk.read(0, 4) == b"abcd"
    with pytest.raises(IntegrityError):
        disk.read(2, 4)
