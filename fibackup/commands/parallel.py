"""Copies of several disks at once, with a bounded worker count and a shared bandwidth limit.

Layers of one disk are copied in order (each rests on the previous one); the
disks themselves are independent, so ``run_each`` gives each disk a worker, at
most ``jobs`` at a time.  When one disk fails (or Ctrl-C arrives) the others stop
at their next chunk, every worker is waited for, and the first error is raised:
nothing keeps writing behind the caller's back.
"""
from __future__ import annotations

import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, TypeVar

from fibackup.store.chunks import ProgressFn, Throttle

Item = TypeVar("Item")
Result = TypeVar("Result")

DEFAULT_JOBS = 2
"""Disks copied at once: copies are I/O bound; two keep one disk busy while the other hashes."""


@dataclass(frozen=True)
class IOOptions:
    """How hard a run may push the disks: parallel copies and a bandwidth limit."""

    jobs: int = DEFAULT_JOBS
    bwlimit: Optional[int] = None
    """Bytes per second for all copies of the run together; None: unlimited."""
    reflink: bool = False
    """Copy by sharing blocks where the filesystem can (same btrfs/XFS filesystem)."""

    def throttle(self) -> Optional[Throttle]:
        return Throttle(self.bwlimit) if self.bwlimit else None


class Cancelled(Exception):
    """A copy stopped because another disk's copy failed (never shown to users)."""


class Guard:
    """What each copy of a ``run_each`` gets to notice that the run is being stopped."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def check(self) -> None:
        """Raise ``Cancelled`` once the run is being stopped."""
        if self.stop.is_set():
            raise Cancelled()

    def __call__(self, progress: Optional[ProgressFn]) -> ProgressFn:
        """``progress``, checking first at every chunk."""
        def advance(count: int) -> None:
            self.check()
            if progress is not None:
                progress(count)
        return advance


def run_each(items: Sequence[Item], action: Callable[[Item, Guard], Result],
             jobs: int, throttle: Optional[Throttle] = None) -> list[Result]:
    """``action(item, guard)`` for each item, ``jobs`` at a time; results in item order.

    ``guard(progress)`` returns a progress callback that raises ``Cancelled`` once
    the run is being stopped; pass it to every copy, and call ``guard.check()``
    before each layer so that a queued disk starts nothing.  Stopping also wakes
    the copies sleeping in ``throttle``.
    """
    stop = threading.Event()

    def stop_all() -> None:
        stop.set()
        if throttle is not None:
            throttle.stop()

    guard = Guard(stop)
    if jobs <= 1 or len(items) <= 1:
        return [action(item, guard) for item in items]
    pool = ThreadPoolExecutor(max_workers=min(jobs, len(items)), thread_name_prefix="copy")
    futures: list[Future[Result]] = []
    try:
        futures = [pool.submit(action, item, guard) for item in items]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        if any(future.exception() is not None for future in done):
            stop_all()
        wait(futures)
    except BaseException:
        stop_all()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    errors = [future.exception() for future in futures if future.exception() is not None]
    first = next((error for error in errors if not isinstance(error, Cancelled)), None)
    if first is not None:
        raise first
    return [future.result() for future in futures]
