"""The store-wide lock of a format-3 store, one protocol for a directory (shared by
hosts over NFS) and for S3: lock *objects*, as restic keeps them.

A run that writes points (``snapshot -b``) holds a **shared** lock from before it
decides which chunks it reuses until its manifest is published; garbage
collection holds the **exclusive** lock while it marks and sweeps.  So a chunk a
backup has decided to reuse is never swept: the sweep cannot start while the
backup runs, and a backup starting during a sweep waits for it.

- Taking a lock writes ``locks/<random>.json`` (host, pid, command, time,
  exclusive or not; sealed in an encrypted store), then lists ``locks/``: if
  another live lock conflicts (an exclusive one, or any one when this one is
  exclusive), it removes its own object and tries again later.  Two runs that
  race both back off and retry after a random delay.
- A holder writes a fresh object every REFRESH seconds (then removes its
  previous one), so that it never looks stale while it lives; a lock object
  older than STALE (the holder died, or its host) is ignored, and one of this host
  whose process is gone is removed at once (a killed run's).  Each refresh is a
  new object: on a versioned (Object Lock) bucket it is a new retained version,
  never an overwrite.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import random
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from fibackup.errors import CorruptStoreError, StoreLockedError
from fibackup.fsutil import host_name
from fibackup.model.naming import parse_utc_time, utc_time
from fibackup.store.backend import Backend, json_names

LOCKS = "locks"
LOCK_KIND = "fibackup-lock"
STALE = 30 * 60.0
REFRESH = 5 * 60.0
DEFAULT_WAIT = 6 * 3600.0
"""How long a run waits for a conflicting lock before it gives up."""


@dataclass(frozen=True)
class Holder:
    name: str
    exclusive: bool
    host: str
    pid: int
    command: str
    time: str

    def age(self, now: _dt.datetime) -> float:
        try:
            return (now - parse_utc_time(self.time).replace(tzinfo=_dt.timezone.utc)
                    ).total_seconds()
        except ValueError:
            return STALE + 1

    def describe(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        return f"{self.command} on {self.host} (pid {self.pid}, {kind} lock since {self.time})"


def _document(exclusive: bool, command: str) -> dict[str, Any]:
    return {"kind": LOCK_KIND, "version": 3, "exclusive": exclusive, "host": host_name(),
            "pid": os.getpid(), "command": command, "time": utc_time()}


def _write(backend: Backend, exclusive: bool, command: str) -> str:
    name = f"{secrets.token_hex(8)}.json"
    backend.ensure_dir((LOCKS,))
    data = json.dumps(_document(exclusive, command), sort_keys=True).encode()
    backend.write_new((LOCKS,), name, data)
    return name


def holders(backend: Backend) -> list[Holder]:
    """Every lock object in the store (an unreadable one is reported, never ignored)."""
    found = []
    for name in json_names(backend, (LOCKS,)):
        try:
            document = json.loads(backend.read((LOCKS,), name))
        except FileNotFoundError:
            continue                                   # released meanwhile
        except (ValueError, CorruptStoreError) as error:
            raise CorruptStoreError(
                f"the lock object {backend.path((LOCKS,), name)} cannot be read ({error}); "
                "if no fibackup run uses the store, remove it") from None
        if not isinstance(document, dict) or document.get("kind") != LOCK_KIND:
            raise CorruptStoreError(f"{backend.path((LOCKS,), name)} is not a lock object")
        found.append(Holder(name, document.get("exclusive") is True, str(document.get("host")),
                            int(document.get("pid") or 0), str(document.get("command")),
                            str(document.get("time"))))
    return found


def _conflicts(backend: Backend, own: str, exclusive: bool) -> list[Holder]:
    now = _dt.datetime.now(_dt.timezone.utc)
    found = []
    for holder in holders(backend):
        if holder.name == own or holder.age(now) >= STALE:
            continue
        if _dead_here(holder):
            _remove(backend, holder.name)          # a killed run of this host left it
            continue
        if exclusive or holder.exclusive:
            found.append(holder)
    return found


def _dead_here(holder: Holder) -> bool:
    """A lock of this host whose process is gone (or is no fibackup any more)."""
    if holder.host != host_name() or holder.pid <= 0:
        return False
    if holder.pid == os.getpid():
        return False
    try:
        with open(f"/proc/{holder.pid}/cmdline", "rb") as handle:
            return b"fibackup" not in handle.read()
    except OSError:
        return True


@contextlib.contextmanager
def store_lock(backend: Backend, exclusive: bool, command: str,
               waiting: Optional[Callable[[str], None]] = None,
               wait: float = DEFAULT_WAIT) -> Iterator[None]:
    """Hold the store's lock (shared or exclusive) for the ``with``; ``waiting`` is told
    once who holds it when the run has to wait."""
    deadline = time.monotonic() + wait
    told = False
    while True:
        own = _write(backend, exclusive, command)
        conflicts = _conflicts(backend, own, exclusive)
        if not conflicts:
            break
        _remove(backend, own)
        if time.monotonic() >= deadline:
            raise StoreLockedError(
                f"{backend.root} is locked by {conflicts[0].describe()}; try again later (a "
                f"lock left by a dead run is ignored after {STALE / 60:.0f} minutes)",
                path=backend.path((LOCKS,), conflicts[0].name))
        if waiting is not None and not told:
            waiting(conflicts[0].describe())
            told = True
        time.sleep(random.uniform(0.2, 1.5))
    refresher = _Refresher(backend, own, exclusive, command)
    refresher.start()
    try:
        yield
    finally:
        refresher.stop()


class _Refresher(threading.Thread):
    def __init__(self, backend: Backend, name: str, exclusive: bool, command: str) -> None:
        super().__init__(name="store-lock", daemon=True)
        self.backend = backend
        self.current = name
        self.exclusive = exclusive
        self.command = command
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(REFRESH):
            try:
                fresh = _write(self.backend, self.exclusive, self.command)
            except Exception:  # noqa: BLE001 - the next refresh tries again
                continue
            previous, self.current = self.current, fresh
            _remove(self.backend, previous)

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        _remove(self.backend, self.current)


def _remove(backend: Backend, name: str) -> None:
    with contextlib.suppress(Exception):
        backend.remove((LOCKS,), name)
