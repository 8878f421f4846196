"""Reading chunks of a disk's view into a format-3 store, and writing them back out.

:func:`ingest` reads the chunks a backup must look at from a reader of the
guest's view (fsutil.ViewReader: qemu/reader.py for a chain), names each by its id, stores the ones
the store lacks (zero chunks never: they leave the index) and returns the new
index.  :func:`write_out` writes an index's chunks into a file of the disk's size
(holes stay holes), each chunk checked against its id first (or, for a restore
that proves the whole image afterwards with :func:`check_view`, only there).  Both run a small
thread pool: hashing, zstd and AES-GCM release the GIL, so two cores compress two
chunks at once.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from fibackup.errors import FibackupError
from fibackup.fsutil import ViewReader
from fibackup.store.v3.index import DiskIndex
from fibackup.store.v3.objects import ChunkStore

ProgressFn = Callable[[int], None]
_ZEROS: dict[int, bytes] = {}
"""Zero buffers by length (a chunk is compared with one, never a fresh copy)."""


def threads(chunks: Optional[ChunkStore] = None) -> int:
    """Workers per disk: one more than the cores (one is always waiting on I/O), or
    as many requests as the store's backend wants in flight (object storage: the
    round trips overlap)."""
    cpus = min(8, (os.cpu_count() or 1) + 1)
    if chunks is None:
        return cpus
    return max(cpus, chunks.backend.capabilities.requests_in_flight)


def is_zero(data: bytes) -> bool:
    zero = _ZEROS.get(len(data))
    if zero is None:
        zero = _ZEROS.setdefault(len(data), bytes(len(data)))
    return data == zero


@dataclass(frozen=True)
class Ingested:
    index: DiskIndex
    read_bytes: int
    """Bytes of the view that were read."""
    new_chunks: int
    stored_bytes: int
    """Bytes of chunk objects written (after compression and sealing)."""


class _Tally:
    def __init__(self, progress: Optional[ProgressFn]) -> None:
        self.lock = threading.Lock()
        self.progress = progress
        self.read = 0
        self.new = 0
        self.stored = 0

    def add(self, read: int, stored: int) -> None:
        with self.lock:
            self.read += read
            if stored:
                self.new += 1
                self.stored += stored
            if self.progress is not None:
                self.progress(read)


def ingest(chunks: ChunkStore, view: ViewReader, base: DiskIndex, numbers: Iterable[int],
           progress: Optional[ProgressFn] = None,
           throttle: Optional[Callable[[int], None]] = None,
           check: Optional[Callable[[], None]] = None) -> Ingested:
    """``base`` with chunks ``numbers`` re-read from ``view`` (the disk's view).

    ``check`` runs before each chunk (it raises to stop: another disk failed).
    """
    known = base.ids()
    tally = _Tally(progress)

    def one(number: int) -> tuple[int, Optional[bytes]]:
        if check is not None:
            check()
        length = base.length(number)
        if throttle is not None:
            throttle(length)
        data = view.read(number * base.chunk_size, length)
        if is_zero(data):
            tally.add(length, 0)
            return number, None
        chunk_id = chunks.chunk_id(data)
        stored = 0 if chunk_id in known else chunks.put_chunk(chunk_id, data)
        tally.add(length, stored)
        return number, chunk_id

    with ThreadPoolExecutor(max_workers=threads(chunks), thread_name_prefix="chunk") as pool:
        changes = dict(pool.map(one, sorted(set(numbers))))
    chunks.settle()
    return Ingested(base.replaced(changes), tally.read, tally.new, tally.stored)


def write_out(chunks: ChunkStore, index: DiskIndex, destination: str,
              progress: Optional[ProgressFn] = None,
              throttle: Optional[Callable[[int], None]] = None,
              check: Optional[Callable[[], None]] = None, truncate: bool = True,
              proven_after: bool = False) -> int:
    """Write every chunk of ``index`` into ``destination`` at its offset (``truncate``:
    the file is first sized to the disk, so what is not written reads as zeros);
    bytes written.  Every chunk is checked against its id before it is written, unless
    ``proven_after``: the caller reads the whole file back with :func:`check_view`
    before anything names it (each chunk is then hashed once, not twice)."""
    fd = os.open(destination, os.O_WRONLY | os.O_CLOEXEC)
    tally = _Tally(progress)
    try:
        if truncate:
            os.ftruncate(fd, index.virtual_size)

        def one(item: tuple[int, bytes]) -> None:
            number, chunk_id = item
            if check is not None:
                check()
            length = index.length(number)
            if throttle is not None:
                throttle(length)
            data = chunks.get_chunk(chunk_id, length, check_id=not proven_after)
            _pwrite(fd, data, number * index.chunk_size)
            tally.add(length, 0)

        with ThreadPoolExecutor(max_workers=threads(chunks), thread_name_prefix="chunk") as pool:
            for _ in pool.map(one, index.items()):
                pass
        os.fsync(fd)
    finally:
        os.close(fd)
    return tally.read


def _pwrite(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def check_view(chunks: ChunkStore, index: DiskIndex, view: ViewReader,
               numbers: Iterable[int]) -> list[int]:
    """The chunks of ``numbers`` whose bytes in ``view`` differ from ``index`` (a
    chunk the index does not list must be zeros)."""
    def one(number: int) -> Optional[int]:
        data = view.read(number * index.chunk_size, index.length(number))
        expected = index.chunks.get(number)
        if expected is None:
            return None if is_zero(data) else number
        return None if chunks.chunk_id(data) == expected else number

    with ThreadPoolExecutor(max_workers=threads(), thread_name_prefix="check") as pool:
        return [number for number in pool.map(one, sorted(set(numbers))) if number is not None]


def check_chunks(chunks: ChunkStore, wanted: dict[bytes, int],
                 progress: Optional[ProgressFn] = None,
                 throttle: Optional[Callable[[int], None]] = None) -> dict[bytes, str]:
    """Read back, decrypt, decompress and check each chunk of ``wanted`` (id -> length);
    what is wrong with each damaged one."""
    tally = _Tally(progress)

    def one(item: tuple[bytes, int]) -> Optional[tuple[bytes, str]]:
        chunk_id, length = item
        if throttle is not None:
            throttle(length)
        try:
            chunks.get_chunk(chunk_id, length)
        except FibackupError as error:
            return chunk_id, str(error)
        finally:
            tally.add(length, 0)
        return None

    with ThreadPoolExecutor(max_workers=threads(chunks), thread_name_prefix="verify") as pool:
        return dict(found for found in pool.map(one, sorted(wanted.items())) if found)
