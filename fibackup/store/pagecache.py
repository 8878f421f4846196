"""Keep large copies from flooding the host's page cache (Linux, through libc).

A nightly backup reads and writes gigabytes that nobody will read again soon;
left to the kernel, they would push the guests' and the host's hot pages out of
memory.  Two tools, both best effort (any failure leaves the cache alone):

* ``SourceCache``: before a range of the source is read, ``mincore`` tells which
  of its pages are already cached; after reading, only the pages this read
  brought in are dropped, so data the host was using stays cached.
* ``WriteBehind``: each written range is handed to writeback at once
  (``sync_file_range``), and a range written ``LAG`` bytes ago is waited for and
  dropped, so dirty pages stay bounded and the final ``fsync`` has little left.
"""
from __future__ import annotations

import errno
import mmap
import os
import re
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import ctypes

PAGE = mmap.PAGESIZE
SYNC_FILE_RANGE_WAIT_BEFORE = 1
SYNC_FILE_RANGE_WRITE = 2
SYNC_FILE_RANGE_WAIT_AFTER = 4
UNSUPPORTED = (errno.ENOSYS, errno.EINVAL, errno.ESPIPE, errno.EOPNOTSUPP)
PROT_READ = 1
MAP_SHARED = 1

_libc: Optional["ctypes.CDLL"] = None
_libc_tried = False
_libc_lock = threading.Lock()


def _load() -> Optional["ctypes.CDLL"]:
    """libc, loaded on the first copy (ctypes costs ~20 ms of start-up otherwise);
    by its soname, as ``ctypes.util.find_library`` runs ldconfig.  Tried once: it
    is asked for at every chunk."""
    global _libc, _libc_tried
    if _libc_tried:
        return _libc
    with _libc_lock:                              # disks are copied on several threads
        if not _libc_tried:
            _libc = _open_libc()
            _libc_tried = True
    return _libc


def _open_libc() -> Optional["ctypes.CDLL"]:
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_long, ctypes.c_long,
                                         ctypes.c_uint]
    except (OSError, AttributeError):
        return None
    return libc


def drop(fd: int, offset: int, length: int) -> None:
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    except (AttributeError, OSError):
        pass


def uncached_runs(fd: int, offset: int, end: int) -> Optional[list[tuple[int, int]]]:
    """Page-aligned ``(start, end)`` runs of ``[offset, end)`` not in the page cache,
    or None when that cannot be told."""
    libc = _load()
    if libc is None or end <= offset:
        return None
    import ctypes
    start = offset - offset % PAGE
    length = end - start
    address = libc.mmap(None, length, PROT_READ, MAP_SHARED, fd, start)
    if address in (None, ctypes.c_void_p(-1).value):             # MAP_FAILED
        return None
    try:
        pages = (length + PAGE - 1) // PAGE
        vector = (ctypes.c_ubyte * pages)()
        if libc.mincore(address, length, vector) != 0:
            return None
    finally:
        libc.munmap(address, length)
    # bit 0 of each byte says "resident"; runs of non-resident pages, found in C
    flags = bytes(vector).translate(_RESIDENT)
    return [(start + match.start() * PAGE, start + match.end() * PAGE)
            for match in _NOT_RESIDENT.finditer(flags)]


_RESIDENT = bytes(value & 1 for value in range(256))
_NOT_RESIDENT = re.compile(b"\x00+")


class SourceCache:
    """Drops, once a range has been read, exactly the pages its reading brought in.

    Which pages of a range the host already had cached is noted (``prepare``)
    well before the range is read: far enough ahead (``CLASSIFY_AHEAD`` of the
    caller) that the kernel's own readahead, which runs a few MiB ahead of the
    reads, has not touched it yet.  The kernel's sequential readahead is kept (it
    reads faster than explicit requests); after a hole the next data range is
    asked for (``prefetch``), as readahead does not cross holes.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.ours: dict[int, list[tuple[int, int]]] = {}
        self.asked: set[int] = set()
        self.dropper: Optional[ThreadPoolExecutor] = None
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except (AttributeError, OSError):
            pass

    def prepare(self, start: int, end: int) -> None:
        if start not in self.ours:
            self.ours[start] = uncached_runs(self.fd, start, end) or []

    def prefetch(self, start: int, end: int) -> None:
        """Ask for a range to be read (once; it must have been prepared first)."""
        if start in self.asked:
            return
        self.asked.add(start)
        try:
            os.posix_fadvise(self.fd, start, end - start, os.POSIX_FADV_WILLNEED)
        except (AttributeError, OSError):
            pass

    def release(self, start: int) -> None:
        """Drop the pages of a range that has been read, on a background thread:
        freeing pages costs time the next read should not wait for."""
        runs = self.ours.pop(start, ())
        if not runs:
            return
        if self.dropper is None:
            self.dropper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drop")
        for run_start, run_end in runs:
            self.dropper.submit(drop, self.fd, run_start, run_end - run_start)

    def close(self) -> None:
        """Drop what was noted but not read (a copy that stopped early), and wait for
        the pending drops (before the descriptor is closed)."""
        for start in list(self.ours):
            self.release(start)
        if self.dropper is not None:
            self.dropper.shutdown(wait=True)
            self.dropper = None


class WriteBehind:
    """Starts writeback of each written range and drops ranges written LAG bytes ago."""

    LAG = 32 * 1024 * 1024

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.libc = _load()
        self.flushing: deque[tuple[int, int]] = deque()
        self.in_flight = 0

    def written(self, offset: int, length: int) -> None:
        if self.libc is None or length <= 0:
            return
        self._sync(offset, length, SYNC_FILE_RANGE_WRITE)
        if not self._active():
            return
        self.flushing.append((offset, length))
        self.in_flight += length
        while self.in_flight > self.LAG:
            old_offset, old_length = self.flushing.popleft()
            self.in_flight -= old_length
            self._sync(old_offset, old_length, SYNC_FILE_RANGE_WAIT_BEFORE
                       | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER)
            if not self._active():
                return
            drop(self.fd, old_offset, old_length)          # written out: its pages can go

    def _active(self) -> bool:
        """False once _sync gave up on sync_file_range (libc dropped)."""
        return self.libc is not None

    def _sync(self, offset: int, length: int, flags: int) -> None:
        """Raises the write error the kernel reports: it reports it once per descriptor,
        so the final fsync would not see it again and a bad copy would look good."""
        import ctypes
        assert self.libc is not None
        if self.libc.sync_file_range(self.fd, offset, length, flags) == 0:
            return
        error = ctypes.get_errno()
        if error in UNSUPPORTED:
            self.libc = None                     # not on this filesystem: fsync does it all
            return
        raise OSError(error, os.strerror(error))
