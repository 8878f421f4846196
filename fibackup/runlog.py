"""The log of one run, kept in the backup directory it worked on.

``DIR/logs/<UTC YYYYmmdd-HHMMSS>-<command>-<pid>.log`` (docs/FORMAT.md, "logs/"):
a start line (version, command line, host, pid), every info, warning and error
line of the run with its UTC time, and the outcome with the exit code.  The
directory is created 0700 and the file 0600, both through a descriptor of the
backup directory and without following links.

The file is created only once the directory is a fibackup backup directory
(its marker exists): lines written before that (a first ``snapshot -b`` into a
new directory) wait in memory, and a run on a path that never becomes one
(a typo, an unmounted disk) leaves nothing there.  A log that cannot be
written never fails the run: ``write`` returns the reason once and the log
stops.  Each new log removes the oldest ones of the same command beyond
``KEEP_LOGS``.
"""
from __future__ import annotations

import datetime as _dt
import errno
import os
import re
import shlex
import threading
from typing import Optional, Sequence

from fibackup import __version__
from fibackup.fsutil import host_name, write_all
from fibackup.model.naming import utc_time
from fibackup.store.layout import MARKER

LOG_DIR = "logs"
KEEP_LOGS = 100
"""Logs kept per command: 100 nights of a nightly snapshot, 100 weeks of a weekly verify."""

OUTCOMES = {0: "success", 1: "failure", 2: "usage error", 3: "partial success: some domains "
            "failed", 4: "domain locked by another run", 130: "interrupted"}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC


class RunLog:
    """Appends one run's lines to its log file in a backup directory."""

    def __init__(self, backup_dir: str, command: str, argv: Sequence[str],
                 keep: int = KEEP_LOGS) -> None:
        self.root = os.path.abspath(backup_dir)
        self.command = command
        self.keep = keep
        started = _dt.datetime.now(_dt.timezone.utc)
        self.name = f"{started:%Y%m%d-%H%M%S}-{command}-{os.getpid()}.log"
        self._pattern = re.compile(rf"\d{{8}}-\d{{6}}-{re.escape(command)}-\d+\.log")
        self._pending: list[bytes] = []
        self._fd: Optional[int] = None
        self._ended = False
        self._lock = threading.Lock()
        self.problem: Optional[str] = self.write(
            "info", f"fibackup {__version__} started on host {host_name()} "
                    f"(pid {os.getpid()}, uid {os.getuid()}): {shlex.join(argv)}")

    @property
    def path(self) -> str:
        return os.path.join(self.root, LOG_DIR, self.name)

    def write(self, level: str, text: str) -> Optional[str]:
        """Append ``<UTC time> <LEVEL> <text>``; the reason, once, when the log failed."""
        line = f"{utc_time()} {level.upper():<7} {text}\n".encode("utf-8", "backslashreplace")
        with self._lock:
            if self._ended:
                return None
            self._pending.append(line)
            try:
                if self._fd is None:
                    self._fd = self._open()
                if self._fd is not None:
                    write_all(self._fd, b"".join(self._pending))
                    self._pending.clear()
            except OSError as error:
                self._end()
                return (f"cannot write the run log {self.path} ({error.strerror or error}); "
                        "the run goes on without it")
        return None

    def close(self, code: int) -> Optional[str]:
        """The outcome line, then the file is synced and closed; the reason if that failed."""
        level = "info" if code == 0 else "warning" if code == 3 else "error"
        problem = self.write(level, f"finished: exit {code} "
                                    f"({OUTCOMES.get(code, 'failure')})")
        with self._lock:
            try:
                if self._fd is not None:
                    os.fsync(self._fd)
            except OSError as error:
                problem = problem or (f"cannot write the run log {self.path} "
                                      f"({error.strerror}); the run goes on without it")
            self._end()
        return problem

    def _end(self) -> None:
        self._ended = True
        self._pending.clear()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> Optional[int]:
        """The new log file, or None while the directory is no backup directory (yet)."""
        try:
            root = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as error:
            if error.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise
        try:
            try:
                os.stat(MARKER, dir_fd=root, follow_symlinks=False)
            except FileNotFoundError:
                return None
            try:
                os.mkdir(LOG_DIR, 0o700, dir_fd=root)
            except FileExistsError:
                pass
            logs = os.open(LOG_DIR, _DIR_FLAGS, dir_fd=root)
        finally:
            os.close(root)
        try:
            fd = os.open(self.name, _FILE_FLAGS, 0o600, dir_fd=logs)
            self._remove_old(logs)
        finally:
            os.close(logs)
        return fd

    def _remove_old(self, logs: int) -> None:
        """Keep the newest ``keep`` logs of this command (names sort by time)."""
        mine = sorted(name for name in os.listdir(logs) if self._pattern.fullmatch(name))
        for name in mine[:max(0, len(mine) - self.keep)]:
            try:
                os.unlink(name, dir_fd=logs)
            except FileNotFoundError:
                pass
