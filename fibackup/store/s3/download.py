"""Reads of an S3 store's objects: ranged GETs, every chunk checked.

A check (``verify``) reads every byte in ranges, ``READERS`` at a time, and
compares each chunk with the record; a restore fetches only the ranges holding
listed chunks (the rest is zeros by the record), checks each chunk before
writing it and leaves the rest a hole.  A body cut while being read is retried
with backoff.
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterator, Optional

import xxhash

from fibackup.errors import CorruptStoreError, StoreUnavailableError
from fibackup.store.backend import Parts
from fibackup.store.chunks import (CHUNK_SIZE, Chunk, ChunkList, ProgressFn, Throttle,
                                   all_zero, Checker)
from fibackup.store.s3.errors import translate
from fibackup.store.s3.objects import Bucket

READERS = 6
"""Ranges downloaded at once per copy."""
SEGMENT = 4 * CHUNK_SIZE
"""Bytes per ranged GET."""
READ_ATTEMPTS = 4


class Download:
    """Ranged GETs of one object, ``READERS`` at a time, every chunk hashed and
    compared with the record; with a destination, listed chunks are written there."""

    def __init__(self, backend: Bucket, parts: Parts, name: str, size: int,
                 expected: ChunkList, dst: int) -> None:
        self.backend = backend
        self.parts = parts
        self.name = name
        self.size = size
        self.chunk_size = expected.chunk_size
        self.expected = {chunk.offset: chunk for chunk in expected.chunks}
        self.checker = Checker(expected)
        self.dst = dst
        self.stop = threading.Event()

    def segments(self) -> Iterator[tuple[int, int]]:
        """``[start, end)`` ranges; a restore skips those without listed chunks."""
        step = max(SEGMENT // self.chunk_size, 1) * self.chunk_size
        for start in range(0, self.size, step):
            end = min(start + step, self.size)
            if self.dst >= 0 and not any(offset in self.expected
                                         for offset in range(start, end, self.chunk_size)):
                continue
            yield start, end

    def run(self, progress: Optional[ProgressFn],
            throttle: Optional[Throttle]) -> tuple[list[Chunk], Checker]:
        listed: list[Chunk] = []
        pending: deque[Future[list[tuple[int, Optional[Chunk]]]]] = deque()
        with ThreadPoolExecutor(max_workers=READERS) as pool:
            try:
                for start, end in self.segments():
                    while len(pending) >= 2 * READERS:
                        self._collect(pending.popleft().result(), listed)
                    if self.checker.stopped:
                        break
                    pending.append(pool.submit(self._segment, start, end, progress, throttle))
                while pending and not self.checker.stopped:
                    self._collect(pending.popleft().result(), listed)
            finally:
                if self.checker.stopped:
                    self.stop.set()
                for future in pending:
                    future.cancel()
        return sorted(listed, key=lambda chunk: chunk.offset), self.checker

    def _collect(self, found: list[tuple[int, Optional[Chunk]]], listed: list[Chunk]) -> None:
        for offset, chunk in found:
            if chunk is not None:
                listed.append(chunk)
            if not self.checker.check(chunk, offset) and self.dst >= 0:
                self.checker.stopped = True
                self.stop.set()
                return

    def _segment(self, start: int, end: int, progress: Optional[ProgressFn],
                 throttle: Optional[Throttle]) -> list[tuple[int, Optional[Chunk]]]:
        for attempt in range(READ_ATTEMPTS):
            try:
                return self._read_segment(start, end, progress, throttle)
            except (StoreUnavailableError, CorruptStoreError):
                if attempt == READ_ATTEMPTS - 1:
                    raise
            except Exception as error:          # a body cut while being read
                if attempt == READ_ATTEMPTS - 1:
                    raise translate(error, self.backend.bucket, self.backend.endpoint(),
                                    f"reading {self.backend.path(self.parts, self.name)}")
            time.sleep(0.5 * 2 ** attempt)
        raise AssertionError("unreachable")

    def _read_segment(self, start: int, end: int, progress: Optional[ProgressFn],
                      throttle: Optional[Throttle]) -> list[tuple[int, Optional[Chunk]]]:
        body = self.backend.read_range_stream(self.parts, self.name, start, end)
        zeros = bytes(self.chunk_size)
        found: list[tuple[int, Optional[Chunk]]] = []
        try:
            for offset in range(start, end, self.chunk_size):
                if self.stop.is_set():
                    break
                length = min(self.chunk_size, end - offset)
                data = _read_body(body, length)
                if throttle is not None:
                    throttle.consume(length)
                digest = xxhash.xxh3_128(data).hexdigest()
                chunk = None if all_zero(memoryview(data), digest, zeros) else \
                    Chunk(offset, length, digest)
                found.append((offset, chunk))
                if chunk is not None and self.dst >= 0:
                    want = self.expected.get(offset)
                    if want is None or want.digest != digest or want.length != length:
                        break                   # never write a chunk the record disowns
                    _write_at(self.dst, data, offset)
                if progress is not None and chunk is not None:
                    progress(length)
        finally:
            body.close()
        return found


def _read_body(body: Any, length: int) -> bytes:
    pieces = []
    wanted = length
    while wanted > 0:
        piece = body.read(wanted)
        if not piece:
            raise CorruptStoreError("the object ended before its recorded size")
        pieces.append(piece)
        wanted -= len(piece)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _write_at(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
