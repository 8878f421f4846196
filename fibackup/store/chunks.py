"""Sparse-aware copy that hashes in the same pass, and verification of copies.

A file is cut into fixed-size chunks at offsets ``k * chunk_size``.  A chunk
holding only zeros (holes included) is not listed and never written; every
other chunk is listed as ``(offset, length, xxh3-128 hex)``.  Holes found with
``SEEK_DATA``/``SEEK_HOLE`` are neither read nor written.  The file digest is
the xxh3-128 of the text lines ``"<offset> <length> <hex>\\n"`` of the listed
chunks in order, followed by ``"size <file size>\\n"`` (docs/FORMAT.md).
"""
from __future__ import annotations

import errno
import functools
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import xxhash

from fibackup.store.pagecache import SourceCache, WriteBehind, drop

CHUNK_SIZE = 4 * 1024 * 1024
ALGORITHM = "xxh3-128"

ProgressFn = Callable[[int], None]


class Throttle:
    """A bandwidth limit shared by every copy of a run (``--bwlimit``).

    ``consume(n)`` sleeps as long as needed for the bytes consumed so far, by
    all threads together, to stay at or below ``rate`` bytes per second.  Idle
    time earns at most ``BURST`` seconds of credit, and ``stop()`` wakes every
    sleeper at once (a failed disk or Ctrl-C must not wait out a slow limit).
    """

    BURST = 1.0

    def __init__(self, rate: int) -> None:
        if rate <= 0:
            raise ValueError("a bandwidth limit must be positive")
        self.rate = rate
        self.lock = threading.Lock()
        self.next_free: Optional[float] = None
        self.stopped = threading.Event()

    def consume(self, count: int) -> None:
        with self.lock:
            now = time.monotonic()
            start = now - self.BURST if self.next_free is None else \
                max(self.next_free, now - self.BURST)
            self.next_free = start + count / self.rate
            due = self.next_free
        if due > now:
            self.stopped.wait(due - now)

    def stop(self) -> None:
        self.stopped.set()


@dataclass(frozen=True)
class Chunk:
    offset: int
    length: int
    digest: str


@dataclass(frozen=True)
class ChunkList:
    """The content of a file as listed data chunks; everything else is zeros."""

    size: int
    chunk_size: int
    chunks: tuple[Chunk, ...]

    @property
    def digest(self) -> str:
        return file_digest(self.size, self.chunks)

    @property
    def data_bytes(self) -> int:
        return sum(chunk.length for chunk in self.chunks)


@dataclass
class ScanResult:
    """What a pass over a file found; ``mismatches`` only when checking."""

    chunks: ChunkList
    mismatches: list[int] = field(default_factory=list)
    size_mismatch: bool = False

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.size_mismatch


def file_digest(size: int, chunks: tuple[Chunk, ...]) -> str:
    hasher = xxhash.xxh3_128()
    for chunk in chunks:
        hasher.update(f"{chunk.offset} {chunk.length} {chunk.digest}\n".encode())
    hasher.update(f"size {size}\n".encode())
    return hasher.hexdigest()


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of each data extent of an open file (holes skipped)."""
    position = 0
    while position < size:
        try:
            start = os.lseek(fd, position, os.SEEK_DATA)
        except OSError as error:
            if error.errno == errno.ENXIO:
                return
            if error.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield position, size
                return
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if start >= size:
            return
        yield start, end
        position = end


def chunk_ranges(fd: int, size: int, chunk_size: int) -> Iterator[tuple[int, list[tuple[int, int]]]]:
    """For each chunk that holds data: its offset and its data ranges (absolute)."""
    current: Optional[int] = None
    ranges: list[tuple[int, int]] = []
    for start, end in data_extents(fd, size):
        while start < end:
            index = start // chunk_size
            chunk_end = min((index + 1) * chunk_size, size)
            piece_end = min(end, chunk_end)
            offset = index * chunk_size
            if current != offset:
                if current is not None:
                    yield current, ranges
                current, ranges = offset, []
            ranges.append((start, piece_end))
            start = piece_end
    if current is not None:
        yield current, ranges


def _read_exact(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        count = os.preadv(fd, [view[done:]], offset + done)
        if count == 0:
            raise OSError(errno.EIO, "file shrank while being read")
        done += count


def _write_exact(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


class Checker:
    """Compares the chunks a pass finds with an expected chunk list."""

    def __init__(self, expected: ChunkList) -> None:
        self.expected = {chunk.offset: chunk for chunk in expected.chunks}
        self.seen: set[int] = set()
        self.mismatches: list[int] = []
        self.stopped = False

    def check(self, chunk: Optional[Chunk], offset: int) -> bool:
        want = self.expected.get(offset)
        self.seen.add(offset)
        good = (want is None and chunk is None) or (
            want is not None and chunk is not None
            and (want.length, want.digest) == (chunk.length, chunk.digest))
        if not good:
            self.mismatches.append(offset)
        return good

    def finish(self) -> list[int]:
        if self.stopped:
            return sorted(self.mismatches)
        missing = [offset for offset in self.expected if offset not in self.seen]
        return sorted(self.mismatches + missing)


def scan_file(src_path: str, dst_path: Optional[str] = None, *,
              expected: Optional[ChunkList] = None,
              chunk_size: int = CHUNK_SIZE,
              progress: Optional[ProgressFn] = None,
              follow_symlinks: bool = True,
              opener: Optional[Callable[[str, int], int]] = None,
              throttle: Optional[Throttle] = None,
              clone: bool = False) -> ScanResult:
    """Read ``src_path`` once: hash it, and copy it to ``dst_path`` if given.

    With ``expected`` every chunk is compared with the list; the copy stops at
    the first mismatch (the caller must discard ``dst_path``), a plain check
    goes on and reports every damaged chunk.  Stored files are read with
    ``follow_symlinks=False``, or through ``opener`` (like ``open``'s: it gets
    the path and flags and returns a descriptor, which scan_file closes): the
    store opens its files relative to checked directories.  ``throttle`` limits
    the bytes read per second.  The copy leaves the page cache as it found it
    (pagecache.py): source pages it brought in and everything it wrote are dropped.

    With ``clone`` the copy is first tried as a reflink (``FICLONE``: same
    filesystem, btrfs or XFS): the filesystem shares the source's blocks, and
    the pass then reads the *copy* to hash and check it, so the checksums
    describe exactly what was written.  Where cloning is not possible the copy
    is made as usual.
    """
    chunk_size = expected.chunk_size if expected is not None else chunk_size
    flags = os.O_RDONLY | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    src = opener(src_path, flags) if opener is not None else os.open(src_path, flags)
    dst, cloned = -1, False
    try:
        size = os.fstat(src).st_size
        if dst_path is not None:
            dst, cloned = _open_copy(dst_path, src, size, clone)
        result = ScanResult(chunks=ChunkList(size, chunk_size, ()))
        if expected is not None and expected.size != size:
            result.size_mismatch = True
            if dst >= 0:
                return result
        source, target = (dst, -1) if cloned else (src, dst)    # a clone: hash the clone
        listed, result.mismatches = _scan(source, target, size, chunk_size, expected, progress,
                                          throttle)
        result.chunks = ChunkList(size, chunk_size, tuple(listed))
        if dst >= 0 and result.ok:
            os.fsync(dst)
            drop(dst, 0, 0)
        return result
    finally:
        os.close(src)
        if dst >= 0:
            os.close(dst)


def _open_copy(path: str, src: int, size: int, clone: bool) -> tuple[int, bool]:
    """A new file ``path`` for the copy of ``src`` (a descriptor) and whether it is
    already a reflink of it; otherwise it is ``size`` bytes of hole."""
    dst = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        cloned = clone and _reflink(src, dst, size)
        if not cloned:
            os.ftruncate(dst, 0)          # a failed clone may have left blocks behind
            os.ftruncate(dst, size)
    except BaseException:
        os.close(dst)
        raise
    return dst, cloned


FICLONE = 0x40049409


def _reflink(src: int, dst: int, size: int) -> bool:
    """Make ``dst`` share ``src``'s blocks; False where the filesystem cannot."""
    import fcntl
    try:
        fcntl.ioctl(dst, FICLONE, src)
    except OSError:
        return False
    return os.fstat(dst).st_size == size


class _Writer:
    """Writes chunks on one background thread while the next chunk is read and hashed.

    ``BUFFERS`` buffers rotate: a buffer is reused only after its write finished.
    Reads, hashing and writes release the GIL, so the copy costs about the time
    of the slower of reading and writing instead of their sum.
    """

    BUFFERS = 3

    def __init__(self, fd: int) -> None:
        # its own descriptor: should a second Ctrl-C cut short the wait in close(), a
        # late write can never land in another file that reuses the caller's number
        self.fd = os.dup(fd) if fd >= 0 else -1
        self.pool = ThreadPoolExecutor(max_workers=1) if fd >= 0 else None
        self.pending: deque[Future[None]] = deque()
        self.behind = WriteBehind(self.fd) if fd >= 0 else None
        self.taken: list[memoryview] = []

    def buffers(self, chunk_size: int) -> list[memoryview]:
        count = self.BUFFERS if self.pool is not None else 1
        self.taken = [_POOL.take(chunk_size) for _ in range(count)]
        return self.taken

    def reserve(self) -> None:
        """Wait until a buffer is free (at most BUFFERS - 1 writes in flight)."""
        while len(self.pending) >= self.BUFFERS - 1:
            self.pending.popleft().result()

    def submit(self, pieces: list[tuple[memoryview, int]]) -> None:
        assert self.pool is not None
        self.pending.append(self.pool.submit(self._write, pieces))

    def _write(self, pieces: list[tuple[memoryview, int]]) -> None:
        assert self.behind is not None
        for view, offset in pieces:
            _write_exact(self.fd, view, offset)
        start = pieces[0][1]
        self.behind.written(start, pieces[-1][1] + len(pieces[-1][0]) - start)

    def finish(self) -> None:
        while self.pending:
            self.pending.popleft().result()

    def close(self) -> None:
        if self.pool is not None:
            for future in self.pending:
                future.cancel()
            self.pool.shutdown(wait=True)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        for buffer in self.taken:                # only once no write can use them
            _POOL.give(buffer)
        self.taken = []


class _BufferPool:
    """Chunk buffers kept between files: a restore of many layers would otherwise
    allocate (and the kernel zero) 12 MiB per file."""

    KEEP = 8

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.free: dict[int, list[memoryview]] = {}

    def take(self, size: int) -> memoryview:
        with self.lock:
            spare = self.free.get(size)
            if spare:
                return spare.pop()
        return memoryview(bytearray(size))

    def give(self, buffer: memoryview) -> None:
        with self.lock:
            spare = self.free.setdefault(len(buffer), [])
            if len(spare) < self.KEEP:
                spare.append(buffer)


_POOL = _BufferPool()


def _scan(src: int, dst: int, size: int, chunk_size: int, expected: Optional[ChunkList],
          progress: Optional[ProgressFn],
          throttle: Optional[Throttle]) -> tuple[list[Chunk], list[int]]:
    """The listed chunks of ``src`` (copied to ``dst`` unless it is -1) and, against
    ``expected``, the offsets of the chunks that differ."""
    checker = Checker(expected) if expected is not None else None
    writer = _Writer(dst)
    cache = SourceCache(src)
    try:
        listed = _scan_with(writer, cache, src, size, chunk_size, checker, progress, throttle)
        writer.finish()
        return listed, checker.finish() if checker is not None else []
    finally:
        writer.close()
        cache.close()


def _scan_with(writer: _Writer, cache: SourceCache, src: int, size: int, chunk_size: int,
               checker: Optional[Checker], progress: Optional[ProgressFn],
               throttle: Optional[Throttle]) -> list[Chunk]:
    buffers = writer.buffers(chunk_size)
    zeros = bytes(chunk_size)
    listed: list[Chunk] = []
    for number, (offset, ranges, upcoming) in enumerate(
            _with_ahead(chunk_ranges(src, size, chunk_size), CLASSIFY_AHEAD)):
        if writer.pool is not None:
            writer.reserve()
        view = buffers[number % len(buffers)]
        length = min(chunk_size, size - offset)
        data = view[:length]
        covered = sum(end - start for start, end in ranges)
        if covered < length:
            data[:] = zeros[:length]
        cache.prepare(ranges[0][0], ranges[-1][1])
        for ahead in upcoming:
            cache.prepare(ahead[0][0], ahead[-1][1])
        _prefetch_after_holes(cache, ranges, upcoming)
        for start, end in ranges:
            _read_exact(src, view[start - offset:end - offset], start)
        cache.release(ranges[0][0])
        if throttle is not None:
            throttle.consume(covered)
        digest = xxhash.xxh3_128(data).hexdigest()
        chunk = None
        if not all_zero(data, digest, zeros):
            chunk = Chunk(offset, length, digest)
            listed.append(chunk)
        if checker is not None and not checker.check(chunk, offset) and writer.pool is not None:
            checker.stopped = True
            break
        if chunk is not None and writer.pool is not None:
            writer.submit([(view[start - offset:end - offset], start) for start, end in ranges])
        if progress is not None:
            progress(covered)
    return listed


CLASSIFY_AHEAD = 16
"""Chunks whose page cache residency is noted ahead of the read (64 MiB): beyond the
reach of the kernel's readahead, so what it brings in counts as the copy's own."""


def _prefetch_after_holes(cache: SourceCache, ranges: list[tuple[int, int]],
                          upcoming: list[list[tuple[int, int]]]) -> None:
    """Ask early (WILLNEED) for all the data in sight after the first hole: the
    kernel's readahead does not cross holes and restarts small after one, so its
    seek would otherwise stall the copy when reached."""
    previous_end = ranges[-1][1]
    for index, ahead in enumerate(upcoming):
        if ahead[0][0] != previous_end:
            for after_hole in upcoming[index:]:
                cache.prefetch(after_hole[0][0], after_hole[-1][1])
            return
        previous_end = ahead[-1][1]


def _with_ahead(items: Iterator[tuple[int, list[tuple[int, int]]]], depth: int
                ) -> Iterator[tuple[int, list[tuple[int, int]], list[list[tuple[int, int]]]]]:
    """Each chunk's offset and ranges, with the ranges of up to ``depth`` chunks after it."""
    window: deque[tuple[int, list[tuple[int, int]]]] = deque()
    for item in items:
        window.append(item)
        if len(window) > depth:
            offset, ranges = window.popleft()
            yield offset, ranges, [ahead for _, ahead in window]
    while window:
        offset, ranges = window.popleft()
        yield offset, ranges, [ahead for _, ahead in window]


@functools.lru_cache(maxsize=8)
def _zero_digest(length: int) -> str:
    return xxhash.xxh3_128(bytes(length)).hexdigest()


def all_zero(data: memoryview, digest: str, zeros: bytes) -> bool:
    """Whether a chunk holds only zeros: its digest says so (confirmed byte by byte,
    as a digest alone could collide).  Comparing a memoryview with bytes directly
    runs at about 1 GB/s; the digest is computed anyway."""
    length = len(data)
    return digest == _zero_digest(length) and bytes(data) == zeros[:length]
