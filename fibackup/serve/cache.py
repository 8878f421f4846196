"""A bounded least-recently-used cache of decoded chunks (pure, no I/O).

Guests read in small requests (4 KiB to 2 MiB); a chunk is 1-4 MiB and costs a read,
a decryption, a decompression and a hash.  The cache keeps the newest few decoded
chunks so that a sequential reader pays that once per chunk.  It is safe to use from
several threads (nbdkit's parallel thread model)."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Optional


class ChunkCache:
    """Chunk number -> plaintext, at most ``capacity_bytes`` (and at least one chunk)."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._chunks: "OrderedDict[int, bytes]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, number: int) -> Optional[bytes]:
        with self._lock:
            data = self._chunks.get(number)
            if data is None:
                self.misses += 1
                return None
            self._chunks.move_to_end(number)
            self.hits += 1
            return data

    def put(self, number: int, data: bytes) -> None:
        with self._lock:
            old = self._chunks.pop(number, None)
            if old is not None:
                self._bytes -= len(old)
            self._chunks[number] = data
            self._bytes += len(data)
            while self._bytes > self.capacity_bytes and len(self._chunks) > 1:
                _number, dropped = self._chunks.popitem(last=False)
                self._bytes -= len(dropped)

    def fetch(self, number: int, load: Callable[[int], bytes]) -> bytes:
        """The chunk from the cache, else ``load(number)`` (outside the lock), kept."""
        data = self.get(number)
        if data is None:
            data = load(number)
            self.put(number, data)
        return data

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._chunks)
