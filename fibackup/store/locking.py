"""The store's lock on a domain: ``flock`` on ``domains/<uuid>/.lock`` in the store.

Held in the store itself, so runs on other hosts that share the directory see
it too: a backup and a prune take it exclusively (a prune must not delete what a
backup is about to list), a restore shared.  A backend without a shared lock
(Capabilities.shared_lock: object storage) has none: one host per prefix writes
a domain, and prune refuses to run from another host.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from typing import Callable, Iterator, Optional

from fibackup.store import layout
from fibackup.store.backend import Backend, open_dir


@contextlib.contextmanager
def domain_lock(backend: Backend, domain_uuid: str, shared: bool = False,
                waiting: Optional[Callable[[], None]] = None) -> Iterator[None]:
    """Hold the domain's lock (shared or exclusive) for the block; waits for it,
    calling ``waiting`` first when it is busy.  A read-only store has no lock to take
    (nobody writes it)."""
    if not backend.capabilities.shared_lock:
        yield
        return
    fd = _open_lock(backend.root, domain_uuid, create=not shared)
    if fd < 0:
        yield
        return
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting()
            fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)


def _open_lock(root: str, domain_uuid: str, create: bool) -> int:
    """The lock file's descriptor (-1 on a read-only store), opened through a checked
    descriptor of the domain's directory (created with ``create``)."""
    directory = open_dir(root, ("domains", domain_uuid), create=create)
    try:
        return os.open(layout.LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                       0o600, dir_fd=directory)
    except OSError as error:
        if error.errno != errno.EROFS:
            raise
        return -1
    finally:
        os.close(directory)
