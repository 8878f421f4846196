"""Reading chunks of a disk's view into a format-3 store, and writing them back out.

:func:`ingest` reads the chunks a backup must look at from a plain file that
presents the guest's view (qemu/view.py), names each by its id, stores the ones
the store lacks (zero chunks never: they leave the index) and returns the new
index.  :func:`write_out` writes an index's chunks into a file of the disk's size
(holes stay holes), each chunk checked against its id first.  Both run a small
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
from fibackup.store.v3.index import DiskIndex
from fibackup.store.v3.objects import ChunkStore

ProgressFn = Callable[[int], None]
_ZEROS: dict[int, bytes] = {}
"""Zero buffers by length (a chunk is compared with one, never a fresh copy)."""


def threads() -> int:
    """Workers per disk: one more than the cores (one is always waiting on I/O)."""
    return min(8, (os.cpu_count() or 1) + 1)


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


def ingest(chunks: ChunkStore, view: str, base: DiskIndex, numbers: Iterable[int],
           progress: Optional[ProgressFn] = None,
           throttle: Optional[Callable[[int], None]] = None,
           check: Optional[Callable[[], None]] = None) -> Ingested:
    """``base`` with chunks ``numbers`` re-read from ``view`` (a file of the disk's size).

    ``check`` runs before each chunk (it raises to stop: another disk failed).
    """
    known = base.ids()
    tally = _Tally(progress)
    fd = os.open(view, os.O_RDONLY | os.O_CLOEXEC)

    def one(number: int) -> tuple[int, Optional[bytes]]:
        if check is not None:
            check()
        length = base.length(number)
        if throttle is not None:
            throttle(length)
        data = _pread(fd, length, number * base.chunk_size)
        if is_zero(data):
            tally.add(length, 0)
            return number, None
        chunk_id = chunks.chunk_id(data)
        stored = 0 if chunk_id in known else chunks.put_chunk(chunk_id, data)
        tally.add(length, stored)
        return number, chunk_id

    try:
        with ThreadPoolExecutor(max_workers=threads(), thread_name_prefix="chunk") as pool:
            changes = dict(pool.map(one, sorted(set(numbers))))
    finally:
        os.close(fd)
    chunks.settle()
    return Ingested(base.replaced(changes), tally.read, tally.new, tally.stored)


def _pread(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    while len(data) < length:                    # FUSE may return short reads
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            raise OSError(f"the view ended at byte {offset + len(data)}, inside the disk")
        data += more
    return data


def write_out(chunks: ChunkStore, index: DiskIndex, destination: str,
              progress: Optional[ProgressFn] = None,
              throttle: Optional[Callable[[int], None]] = None,
              check: Optional[Callable[[], None]] = None, truncate: bool = True) -> int:
    """Write every chunk of ``index`` into ``destination`` at its offset (``truncate``:
    the file is first sized to the disk, so what is not written reads as zeros);
    bytes written.  Every chunk is checked against its id before it is written."""
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
            data = chunks.get_chunk(chunk_id, length)
            _pwrite(fd, data, number * index.chunk_size)
            tally.add(length, 0)

        with ThreadPoolExecutor(max_workers=threads(), thread_name_prefix="chunk") as pool:
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


def check_view(chunks: ChunkStore, index: DiskIndex, view: str,
               numbers: Iterable[int]) -> list[int]:
    """The chunks of ``numbers`` whose bytes in ``view`` differ from ``index`` (a
    chunk the index does not list must be zeros)."""
    fd = os.open(view, os.O_RDONLY | os.O_CLOEXEC)

    def one(number: int) -> Optional[int]:
        data = _pread(fd, index.length(number), number * index.chunk_size)
        expected = index.chunks.get(number)
        if expected is None:
            return None if is_zero(data) else number
        return None if chunks.chunk_id(data) == expected else number

    try:
        with ThreadPoolExecutor(max_workers=threads(), thread_name_prefix="check") as pool:
            return [number for number in pool.map(one, sorted(set(numbers))) if number is not None]
    finally:
        os.close(fd)


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

    with ThreadPoolExecutor(max_workers=threads(), thread_name_prefix="verify") as pool:
        return dict(found for found in pool.map(one, sorted(wanted.items())) if found)
