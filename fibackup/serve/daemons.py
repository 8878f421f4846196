"""Long-lived nbdkit servers: the served disks of an instant-recovery domain, which
outlive the ``fibackup restore --instant`` that starts them (docs/SERVING.md).

Each disk is served on ``<run dir>/instant/<domain uuid>/<target>.sock`` by an
nbdkit daemon (it forks into the background once it listens, in its own session),
supervised by its pid file beside the socket; its plugin logs to ``<target>.log``
there.  The directory is root's, mode 0710, its group the
QEMU user's primary group; the socket belongs to the QEMU user, mode 0600: only root
and QEMU reach it.  The paths are fixed by the domain's UUID, so after a reboot
(``/run`` is empty again) :func:`start` brings a server back at the very socket the
domain's definition and its overlays' headers name.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import signal
import shutil
import time
from dataclasses import dataclass
from typing import Optional

from fibackup.errors import ServeError
from fibackup.host.acl import Account
from fibackup.host.state import runtime_dir
from fibackup.serve import nbdkit
from fibackup.serve.source import DEFAULT_CACHE_BYTES, ServedDisk

STOP_WAIT = 10.0

@dataclass(frozen=True)
class Place:
    """Where the server of one disk of one domain lives."""

    directory: str
    name: str

    @property
    def socket(self) -> str:
        return os.path.join(self.directory, f"{self.name}.sock")

    @property
    def pidfile(self) -> str:
        return os.path.join(self.directory, f"{self.name}.pid")

    @property
    def log(self) -> str:
        return os.path.join(self.directory, f"{self.name}.log")


def domain_dir(domain_uuid: str) -> str:
    return os.path.join(runtime_dir(), "instant", domain_uuid)


def place(domain_uuid: str, target: str) -> Place:
    return Place(domain_dir(domain_uuid), target)


def start(disk: ServedDisk, where: Place, account: Optional[Account],
          password_file: Optional[str] = None,
          cache_bytes: int = DEFAULT_CACHE_BYTES) -> int:
    """Serve ``disk`` at ``where`` (a server already running there is kept); its pid."""
    running = pid_of(where)
    if running is not None:
        return running
    _make_dir(where.directory, account)
    for stale in (where.socket, where.pidfile):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)
    args = nbdkit.arguments(disk, where.socket, where.pidfile, cache_bytes, password_file,
                            daemon_log=where.log)
    pid = nbdkit.start_daemon(args, where.pidfile, where.log)
    try:
        os.chown(where.socket, account.uid if account else 0, 0)
        os.chmod(where.socket, 0o600)
    except OSError as error:
        stop(where)
        raise ServeError(f"cannot give QEMU the socket {where.socket} ({error.strerror})") \
            from None
    return pid


def _make_dir(directory: str, account: Optional[Account]) -> None:
    base = os.path.dirname(directory)
    os.makedirs(base, mode=0o755, exist_ok=True)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    group = pwd.getpwnam(account.name).pw_gid if account else 0
    os.chown(directory, 0, group)
    os.chmod(directory, 0o710 if account else 0o700)


def pid_of(where: Place) -> Optional[int]:
    """The pid of the nbdkit serving at ``where``, if one runs (and listens there)."""
    try:
        with open(where.pidfile, "rb") as handle:
            pid = int(handle.read().strip() or b"0")
    except (FileNotFoundError, ValueError):
        return None
    if pid <= 0 or not _alive(pid) or not os.path.exists(where.socket):
        return None
    return pid


def _alive(pid: int) -> bool:
    """A live process (not a zombie) whose command is nbdkit."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command = handle.read().split(b"\0")[0]
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False
    return state != b"Z" and os.path.basename(command) == b"nbdkit"


def stop(where: Place) -> None:
    """Stop the server at ``where`` (if any) and remove its socket and pid file."""
    pid = pid_of(where)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
    for leftover in (where.socket, where.pidfile):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(leftover)


def remove_dir(domain_uuid: str) -> None:
    """Remove the domain's socket directory (its servers stopped), logs included."""
    shutil.rmtree(domain_dir(domain_uuid), ignore_errors=True)
