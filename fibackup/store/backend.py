"""Where a backup store keeps its objects: the primitive operations the format needs.

A store (docs/FORMAT.md) is a tree of write-once objects named by "directory"
components and a name: ``domains/<uuid>/layers/<id>.qcow2``.  ``BackupStore``
(repo.py) does every read and write through a :class:`Backend`; there are two:

- :class:`DirectoryBackend`: a local directory, every file opened relative to a
  descriptor of its checked directory and never through a link (below);
- ``S3Backend`` (s3/backend.py): a bucket and prefix on S3-compatible object storage.

Both write each object once, only when it is complete (a directory through a
hidden temporary name published with ``link()``, S3 through a multipart upload
that completes atomically), and refuse to replace one (``FileExistsError``).
A missing object raises ``FileNotFoundError`` whose ``filename`` is its
``path()``.
"""
from __future__ import annotations

import errno
import os
import stat
import threading
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence

from fibackup.errors import CorruptStoreError, NotEnoughSpaceError, StoreUnavailableError
from fibackup.fsutil import publish, remove_quietly, temp_name, write_file
from fibackup.store.batched import Batch
from fibackup.store.chunks import ChunkList, ProgressFn, ScanResult, Throttle, scan_file

Parts = Sequence[str]
CheckFn = Optional[Callable[[], None]]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do beyond the primitive operations; commands and the store
    ask these instead of which kind of backend it is."""

    local_files: bool
    """Objects are files on this host: QEMU can run from them (instant recovery, what
    libvirt domains pin), prune merges them in place after checking them, and a copy
    may share their blocks (reflinks).  Otherwise every read goes through the backend
    and is checked on the way (prune stages a merge in a local scratch directory)."""
    space_check: bool
    """The free space left can be measured before a backup (``statvfs``)."""
    shared_lock: bool
    """The store holds each domain's lock itself (``flock`` on ``domains/<uuid>/.lock``),
    so runs on every host sharing it see it.  Otherwise only one host may write a
    domain there (its host lock keeps its own runs apart)."""
    requests_in_flight: int = 0
    """How many objects to move at once for its round trips to overlap (0: as many as
    the CPUs keep busy: a local write costs no round trip)."""


DIRECTORY = Capabilities(local_files=True, space_check=True, shared_lock=True)
OBJECT_STORAGE = Capabilities(local_files=False, space_check=False, shared_lock=False,
                              requests_in_flight=8)


class Backend(Protocol):
    """The operations a store needs from where it keeps its objects."""

    root: str
    """The location as users name it: an absolute path or ``s3://BUCKET/PREFIX``."""
    capabilities: Capabilities

    def path(self, parts: Parts, name: str = "") -> str:
        """How an object (or a "directory") is named in messages."""

    def read(self, parts: Parts, name: str) -> bytes:
        """A small object's bytes (a JSON document)."""

    def write_new(self, parts: Parts, name: str, data: bytes) -> None:
        """Publish a small object; FileExistsError when the name is taken."""

    def write_once(self, parts: Parts, name: str, data: bytes) -> bool:
        """Publish an object named after its content unless it exists (False then); it
        is durable (and visible to other processes) once :meth:`settle` returned.
        Safe to call from several threads."""

    def settle(self) -> None:
        """Make every object :meth:`write_once` published durable (one fsync of each
        directory they went to, instead of one per object), and every one
        :meth:`note_reused` named."""

    def note_reused(self, parts: Parts) -> None:
        """An object below ``parts`` that another run published is reused: the next
        :meth:`settle` makes sure its name is durable too (that run may not have)."""

    def names(self, parts: Parts) -> list[str]:
        """The names directly below ``parts`` (objects and "directories")."""

    def size(self, parts: Parts, name: str) -> int:
        """An object's length."""

    def freed(self, parts: Parts, name: str) -> int:
        """The bytes removing the object would free (0 when it is missing)."""

    def remove(self, parts: Parts, name: str) -> None:
        """Delete an object (missing is fine)."""

    def head(self, parts: Parts, name: str, length: int) -> bytes:
        """The first ``length`` bytes of an object (fewer if it is shorter)."""

    def ensure_dir(self, parts: Parts) -> None:
        """Make ``parts`` ready to take objects."""

    def check_writable(self) -> None:
        """StoreUnavailableError unless objects can be written."""

    def copy_in(self, parts: Parts, name: str, source: str, *,
                progress: Optional[ProgressFn] = None, throttle: Optional[Throttle] = None,
                clone: bool = False, check_source: CheckFn = None) -> ChunkList:
        """Copy a local file into a new object, hashing it in the same pass.

        ``check_source`` runs once everything is copied and before the object is
        published; when it raises, nothing is published."""

    def copy_in_addressed(self, parts: Parts, name_of: Callable[[ChunkList], str], source: str,
                          check_source: CheckFn = None) -> tuple[ChunkList, bool]:
        """Copy a small local file into an object named after its content
        (``name_of(chunks)``); False when that object existed already."""

    def scan(self, parts: Parts, name: str, expected: ChunkList,
             destination: Optional[str] = None, progress: Optional[ProgressFn] = None,
             throttle: Optional[Throttle] = None, clone: bool = False) -> ScanResult:
        """Re-read an object against its chunk list; with ``destination``, also copy it
        there (a new local file, holes kept) and stop at the first mismatch."""

    def abort_uploads(self, parts: Parts) -> list[str]:
        """Abort the unfinished uploads an interrupted run left below ``parts`` (only
        called under the domain's lock); their paths."""


class DirectoryBackend:
    """A backup directory on this host, confined: every file is opened relative to a
    descriptor of its directory, each directory below the root must be a real directory
    (never a symbolic link) and each file a regular file opened with ``O_NOFOLLOW``, so
    a link planted in a backup directory never makes fibackup read or write outside it."""

    capabilities = DIRECTORY

    def __init__(self, root: str) -> None:
        self.root = root
        self._unsettled: set[tuple[str, ...]] = set()
        self._settle_lock = threading.Lock()
        self._batch = Batch(lambda parts: open_dir(self.root, parts, create=True), self.path)

    def path(self, parts: Parts, name: str = "") -> str:
        return os.path.join(self.root, *parts, name) if name else os.path.join(self.root, *parts)

    def read(self, parts: Parts, name: str) -> bytes:
        path = self.path(parts, name)
        self._publish_if_pending(parts, name)
        try:
            fd = open_file(self.root, parts, name)
            with os.fdopen(fd, "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            raise
        except OSError as error:
            raise CorruptStoreError(f"cannot read {path} ({error.strerror})") from None

    def write_new(self, parts: Parts, name: str, data: bytes) -> None:
        write_new_file(self.path(parts, name), data)

    def write_once(self, parts: Parts, name: str, data: bytes) -> bool:
        """Written now, published with its batch (store/batched.py): by :meth:`settle`
        at the latest."""
        added, published = self._batch.add(parts, name, data)
        self._to_settle(published)
        return added

    def _publish_if_pending(self, parts: Parts, name: Optional[str] = None) -> None:
        """An object this process wrote and has not published yet (any, with no
        ``name``) is published first: the writer sees what it wrote as soon as
        :meth:`write_once` returned; other processes once :meth:`settle` returned."""
        if self._batch.pending(parts, name):
            self._to_settle(self._batch.flush())

    def _to_settle(self, directories: set[tuple[str, ...]]) -> None:
        """Directories that names were published to: :meth:`settle` fsyncs them."""
        if directories:
            with self._settle_lock:
                self._unsettled.update(directories)

    def note_reused(self, parts: Parts) -> None:
        self._to_settle({tuple(parts)})

    def settle(self) -> None:
        self._to_settle(self._batch.flush())
        with self._settle_lock:
            pending, self._unsettled = self._unsettled, set()
        for parts in sorted(pending):
            directory = open_dir(self.root, parts)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)

    def names(self, parts: Parts) -> list[str]:
        self._publish_if_pending(parts)
        directory = open_dir(self.root, parts)
        try:
            return os.listdir(directory)
        finally:
            os.close(directory)

    def size(self, parts: Parts, name: str) -> int:
        self._publish_if_pending(parts, name)
        return self._stat(parts, name).st_size

    def freed(self, parts: Parts, name: str) -> int:
        try:
            return self._stat(parts, name).st_blocks * 512
        except (FileNotFoundError, CorruptStoreError):
            return 0

    def _stat(self, parts: Parts, name: str) -> os.stat_result:
        """``lstat`` of a regular file (CorruptStoreError otherwise)."""
        directory = open_dir(self.root, parts)
        try:
            return regular(directory, name, self.path(parts, name))
        finally:
            os.close(directory)

    def remove(self, parts: Parts, name: str) -> None:
        """Unlink the file (never through a link on the way) and sync the directory."""
        directory = open_dir(self.root, parts)
        try:
            try:
                os.unlink(name, dir_fd=directory)
            except FileNotFoundError:
                return
            os.fsync(directory)
        finally:
            os.close(directory)

    def head(self, parts: Parts, name: str, length: int) -> bytes:
        self._publish_if_pending(parts, name)
        fd = open_file(self.root, parts, name)
        try:
            return os.pread(fd, length, 0)
        finally:
            os.close(fd)

    def ensure_dir(self, parts: Parts) -> None:
        """Missing directories are created 0700; a link on the way is refused, so
        nothing is ever written outside the backup directory."""
        os.close(open_dir(self.root, parts, create=True))

    def check_writable(self) -> None:
        probe = temp_name(self.root, "write-probe")
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            os.unlink(probe)
        except OSError as error:
            raise StoreUnavailableError(
                f"backup directory {self.root} is not writable ({error.strerror}); "
                "fix its permissions or mount it read-write") from None

    def copy_in(self, parts: Parts, name: str, source: str, *,
                progress: Optional[ProgressFn] = None, throttle: Optional[Throttle] = None,
                clone: bool = False, check_source: CheckFn = None) -> ChunkList:
        self.ensure_dir(parts)
        temporary = temp_name(self.path(parts), name)
        try:
            chunks = scan_file(source, temporary, progress=progress, throttle=throttle,
                               clone=clone).chunks
            if check_source is not None:
                check_source()
            publish(temporary, self.path(parts, name))
        except BaseException:
            remove_quietly(temporary)
            raise
        return chunks

    def copy_in_addressed(self, parts: Parts, name_of: Callable[[ChunkList], str], source: str,
                          check_source: CheckFn = None) -> tuple[ChunkList, bool]:
        self.ensure_dir(parts)
        temporary = temp_name(self.path(parts), "file.data")
        try:
            chunks = scan_file(source, temporary).chunks
            if check_source is not None:
                check_source()
            try:
                publish(temporary, self.path(parts, name_of(chunks)))
            except FileExistsError:
                return chunks, False
            return chunks, True
        finally:
            remove_quietly(temporary)

    def scan(self, parts: Parts, name: str, expected: ChunkList,
             destination: Optional[str] = None, progress: Optional[ProgressFn] = None,
             throttle: Optional[Throttle] = None, clone: bool = False) -> ScanResult:
        return scan_file(self.path(parts, name), destination, expected=expected,
                         progress=progress, throttle=throttle, clone=clone,
                         opener=lambda _path, _flags: open_file(self.root, parts, name))

    def abort_uploads(self, parts: Parts) -> list[str]:
        """A directory has no uploads: an interrupted copy is a hidden partial file,
        which tidy_domain removes."""
        return []


def json_names(backend: Backend, parts: Parts) -> list[str]:
    """The published ``*.json`` documents below ``parts``, sorted (none when it does not
    exist; hidden temporary names are skipped)."""
    try:
        names = backend.names(parts)
    except FileNotFoundError:
        return []
    return sorted(name for name in names if name.endswith(".json") and not name.startswith("."))


def write_new_file(path: str, data: bytes) -> None:
    """Write a small file once (FileExistsError when it exists), errors in words."""
    try:
        write_file(path, data)
    except FileExistsError:
        raise
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise NotEnoughSpaceError(f"the backup disk is full while writing {path}; "
                                      "free up space and run again") from None
        raise StoreUnavailableError(f"cannot write {path} ({error.strerror}); the backup "
                                    "directory is not writable: fix its permissions or mount "
                                    "it read-write") from None


# -- confined access: every path below the root, never through a link ------------

def not_real(directory_fd: int, name: str, path: str, what: str) -> CorruptStoreError:
    try:
        mode = os.stat(name, dir_fd=directory_fd, follow_symlinks=False).st_mode
    except OSError:
        mode = 0
    found = "a symbolic link" if stat.S_ISLNK(mode) else f"not a {what}"
    return CorruptStoreError(
        f"{path} is {found}; fibackup never follows links or reads special files inside "
        f"a backup directory (one could lead outside it): put the real {what} there or "
        "move it away")


def open_dir(root: str, parts: Parts, create: bool = False) -> int:
    """A descriptor of ``root/parts``, each part a real directory (created 0700 with
    ``create``); FileNotFoundError when one is missing."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for depth, part in enumerate(parts):
            path = os.path.join(root, *parts[:depth + 1])
            if create:
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                    os.fsync(fd)                     # the new directory's name is durable
                except FileExistsError:
                    pass
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from None
            except OSError as error:
                if error.errno in (errno.ENOTDIR, errno.ELOOP):
                    raise not_real(fd, part, path, "directory") from None
                raise
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def regular(directory: int, name: str, path: str) -> os.stat_result:
    try:
        info = os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from None
    if not stat.S_ISREG(info.st_mode):
        raise not_real(directory, name, path, "regular file")
    return info


def open_file(root: str, parts: Parts, name: str) -> int:
    """A read-only descriptor of the regular file ``root/parts/name``.

    A link, device, FIFO or socket is refused before it is opened (opening a
    device can have effects); FileNotFoundError when it is missing.
    """
    path = os.path.join(root, *parts, name)
    directory = open_dir(root, parts)
    try:
        regular(directory, name, path)
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=directory)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from None
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENXIO):    # swapped for a link or socket
                raise not_real(directory, name, path, "regular file") from None
            raise
    finally:
        os.close(directory)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CorruptStoreError(f"{path} is not a regular file; fibackup never reads special "
                                "files inside a backup directory")
    return fd
