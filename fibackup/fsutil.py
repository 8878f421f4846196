"""Small file-system helpers: atomic write-once publishing, fsync, space."""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import socket

import xxhash
from typing import Iterator, Optional, Protocol

from fibackup.errors import NotEnoughSpaceError
from fibackup.model.chain import FileIdentity, FileStamp


def fsync_file(path: str) -> None:
    """Flush a file's data to disk (by name)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(directory: str, final_name: str) -> str:
    """A hidden temporary name beside ``final_name`` in ``directory``."""
    return os.path.join(directory, f".{final_name}.partial-{secrets.token_hex(4)}")


def publish(temporary: str, final: str, replace: bool = False) -> None:
    """Move a complete, fsynced file to its final name; never clobber unless asked.

    Raises FileExistsError when ``final`` exists and ``replace`` is False.
    """
    if replace:
        os.replace(temporary, final)
    else:
        try:
            os.link(temporary, final)
        except OSError as error:
            if error.errno == errno.EEXIST:
                raise FileExistsError(errno.EEXIST, "file exists", final) from None
            if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            if os.path.lexists(final):
                raise FileExistsError(errno.EEXIST, "file exists", final) from None
            os.rename(temporary, final)
        else:
            os.unlink(temporary)
    fsync_dir(os.path.dirname(final) or ".")


def write_file(path: str, data: bytes, replace: bool = False, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, publish)."""
    directory = os.path.dirname(path) or "."
    temporary = temp_name(directory, os.path.basename(path))
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        remove_quietly(temporary)
        raise
    os.close(fd)
    try:
        publish(temporary, path, replace=replace)
    except BaseException:
        remove_quietly(temporary)
        raise


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def make_private_dirs(path: str) -> None:
    """Create ``path`` and its missing parents, each mode 0700 (guest data is secret)."""
    missing = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        current = os.path.dirname(current)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass


def allocated_bytes(path: str) -> int:
    """Bytes a file occupies on disk (holes excluded)."""
    return os.stat(path).st_blocks * 512


def free_bytes(path: str) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def human(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"


def ensure_space(directory: str, needed: int, what: str, margin: Optional[int] = None) -> None:
    """Refuse early, with the numbers, when ``directory`` cannot hold ``needed`` bytes."""
    reserve = margin if margin is not None else 64 * 1024 * 1024
    available = free_bytes(directory)
    if needed + reserve > available:
        raise NotEnoughSpaceError(
            f"not enough space in {directory} for {what}: {human(needed)} needed "
            f"(+{human(reserve)} reserve), {human(available)} free; free up space or "
            "choose another directory (or pass --no-space-check if the filesystem "
            "reports free space wrongly)")


def host_name() -> str:
    return socket.gethostname()


HEAD_BYTES = 64 * 1024


def file_stamp(path: str, follow_symlinks: bool = True) -> Optional[FileStamp]:
    """Which file ``path`` names now (model/chain.py, FileStamp); None if there is none."""
    try:
        return FileStamp.of(os.stat(path, follow_symlinks=follow_symlinks))
    except OSError:
        return None


def file_identity(path: str) -> FileIdentity:
    """The identity fibackup records for a frozen image file (reads its first 64 KiB)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        stats = os.fstat(fd)
        head = os.pread(fd, HEAD_BYTES, 0)
    finally:
        os.close(fd)
    stamp = FileStamp.of(stats)
    return FileIdentity(host=host_name(), path=os.path.abspath(path), dev=stamp.dev,
                        ino=stamp.ino, size=stamp.size, mtime_ns=stamp.mtime_ns,
                        head_digest=xxhash.xxh3_128(head).hexdigest())


class ViewReader(Protocol):
    """A reader of the bytes of a view (a disk as the guest sees it)."""

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (OSError past the end of the view)."""


def pread_exactly(fd: int, length: int, offset: int) -> bytes:
    """``length`` bytes of ``fd`` at ``offset`` (FUSE and network file systems may
    return short reads; OSError if the file ends first)."""
    data = os.pread(fd, length, offset)
    if len(data) == length:
        return data
    parts = [data]
    done = len(data)
    while done < length:
        more = os.pread(fd, length - done, offset + done)
        if not more:
            raise OSError(f"the view ended at byte {offset + done}, inside the disk")
        parts.append(more)
        done += len(more)
    return b"".join(parts)


class FileReader:
    """The view as one plain file (a raw image, or an export of the chain)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def read(self, offset: int, length: int) -> bytes:
        return pread_exactly(self.fd, length, offset)


@contextlib.contextmanager
def reading_file(path: str) -> Iterator[FileReader]:
    """A reader of the file ``path`` for the duration of the ``with``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield FileReader(fd)
    finally:
        os.close(fd)
