"""One lock per domain, so two fibackup runs never interleave on it."""
from __future__ import annotations

import fcntl
import os
from types import TracebackType
from typing import Optional

from fibackup.errors import DomainLockedError, StateDirError
from fibackup.fsutil import make_private_dirs
from fibackup.host.state import state_dir


class DomainLock:
    """An exclusive, non-blocking ``flock`` on ``<state dir>/locks/<uuid>.lock``.

    The kernel releases it when the process dies, so a crash leaves no stale lock.
    """

    def __init__(self, domain_uuid: str, domain_name: str) -> None:
        self.path = os.path.join(state_dir(), "locks", f"{domain_uuid}.lock")
        self.domain_name = domain_name
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        try:
            make_private_dirs(os.path.dirname(self.path))
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise StateDirError(
                f"cannot create the lock file {self.path} ({error.strerror}); fibackup needs a "
                "writable state directory: run as root or set FIBACKUP_STATE_DIR") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DomainLockedError(
                f"domain '{self.domain_name}' is locked by another fibackup run "
                f"(lock {self.path}); wait for it to finish and try again") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DomainLock":
        self.acquire()
        return self

    def __exit__(self, kind: Optional[type], value: Optional[BaseException],
                 trace: Optional[TracebackType]) -> None:
        self.release()
