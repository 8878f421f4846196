"""Copying files and trees out of a mounted restore point onto this host, keeping what
they were: content (holes stay holes), mode, owner, times, symlinks (copied as links,
never followed), hard links within the copy, device nodes, fifos and extended
attributes.  The source is untrusted (a guest's filesystem as libguestfs shows it):
names come from readdir and are single components, every source is opened with
O_NOFOLLOW, and every destination is created new (O_EXCL) inside a directory this
copy made, so nothing outside ``--to`` is ever written."""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from typing import Callable, Optional

from fibackup.errors import DestinationError

BLOCK = 1024 * 1024
ProgressFn = Callable[[int], None]


@dataclass
class Copied:
    files: int = 0
    directories: int = 0
    links: int = 0
    others: int = 0
    bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    _inodes: dict[tuple[int, int], str] = field(default_factory=dict)


def copy_entry(source: str, destination: str, copied: Copied,
               progress: Optional[ProgressFn] = None) -> None:
    """Copy ``source`` (any kind, not followed) to the new path ``destination``."""
    info = os.lstat(source)
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        os.mkdir(destination, 0o700)
        copied.directories += 1
        for entry in sorted(os.listdir(source)):
            copy_entry(os.path.join(source, entry), os.path.join(destination, entry), copied,
                       progress)
    elif stat.S_ISREG(mode):
        if info.st_nlink > 1 and (info.st_dev, info.st_ino) in copied._inodes:
            os.link(copied._inodes[(info.st_dev, info.st_ino)], destination)
            copied.files += 1
            return
        _copy_file(source, destination, info, copied, progress)
        if info.st_nlink > 1:
            copied._inodes[(info.st_dev, info.st_ino)] = destination
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(source), destination)
        copied.links += 1
    elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        os.mknod(destination, stat.S_IFMT(mode) | 0o600, info.st_rdev)
        copied.others += 1
    else:
        copied.warnings.append(f"{source}: a socket, not copied")
        return
    _keep_metadata(source, destination, info, copied)


def _copy_file(source: str, destination: str, info: os.stat_result, copied: Copied,
               progress: Optional[ProgressFn]) -> None:
    zeros = bytes(BLOCK)
    reader = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        writer = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        try:
            while True:
                block = os.read(reader, BLOCK)
                if not block:
                    break
                if block == zeros[:len(block)]:
                    os.lseek(writer, len(block), os.SEEK_CUR)      # a hole stays a hole
                else:
                    view = memoryview(block)
                    while view:
                        view = view[os.write(writer, view):]
                copied.bytes += len(block)
                if progress is not None:
                    progress(len(block))
            os.ftruncate(writer, os.lseek(writer, 0, os.SEEK_CUR))
        finally:
            os.close(writer)
    finally:
        os.close(reader)
    copied.files += 1


def _keep_metadata(source: str, destination: str, info: os.stat_result, copied: Copied) -> None:
    """Owner, then mode (chown clears set-id bits), xattrs, and times last."""
    link = stat.S_ISLNK(info.st_mode)
    try:
        os.lchown(destination, info.st_uid, info.st_gid)
    except PermissionError:
        copied.warnings.append(f"{destination}: owner {info.st_uid}:{info.st_gid} not kept "
                               "(run as root)")
    if not link:
        os.chmod(destination, stat.S_IMODE(info.st_mode))
    _keep_xattrs(source, destination, copied)
    os.utime(destination, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)


def _keep_xattrs(source: str, destination: str, copied: Copied) -> None:
    try:
        names = os.listxattr(source, follow_symlinks=False)
    except OSError as error:
        if error.errno not in (errno.ENOTSUP, errno.ENOSYS):
            copied.warnings.append(f"{source}: extended attributes unreadable ({error.strerror})")
        return
    for name in names:
        try:
            os.setxattr(destination, name, os.getxattr(source, name, follow_symlinks=False),
                        follow_symlinks=False)
        except OSError as error:
            copied.warnings.append(f"{destination}: extended attribute {name} not kept "
                                   f"({error.strerror})")


def total_bytes(source: str) -> int:
    """The bytes of the regular files at and below ``source`` (for a progress bar)."""
    info = os.lstat(source)
    if stat.S_ISREG(info.st_mode):
        return info.st_size
    if not stat.S_ISDIR(info.st_mode):
        return 0
    return sum(total_bytes(os.path.join(source, entry)) for entry in os.listdir(source))


def prepare(destination: str, names: list[str]) -> str:
    """``--to``: created if missing; none of ``names`` may exist in it."""
    target = os.path.abspath(destination)
    try:
        os.makedirs(target, mode=0o700, exist_ok=True)
    except OSError as error:
        raise DestinationError(f"cannot create {target} ({error.strerror}); choose another "
                               "--to", path=target) from None
    clashing = [name for name in names if os.path.lexists(os.path.join(target, name))]
    if clashing:
        raise DestinationError(f"{os.path.join(target, clashing[0])} exists; nothing is "
                               "overwritten: choose another --to or move it away", path=target)
    return target
