"""Test-only fault injection: fibackup kills (or stops) itself at a named step.

``FIBACKUP_FAULT`` selects the fault; unset (always, outside the test suite)
every call here is a dictionary lookup and returns.  Forms::

    FIBACKUP_FAULT=<point>            SIGKILL when execution reaches <point>
    FIBACKUP_FAULT=<point>:stop       SIGSTOP there (the test resumes it with SIGCONT)
    FIBACKUP_FAULT=copy-bytes:<N>     SIGKILL once N bytes were copied (backup or restore)

The points are the journal's step names (fibackup/host/journal.py, ``STEPS``):
``<step>`` fires after the journal recorded the step as started and before the
step's work, ``<step>.after`` after the work and before the journal marks it
done.  ``POINTS`` adds the few points inside a step.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Callable, Optional

ENV = "FIBACKUP_FAULT"
POINTS = (
    "store.image-published",      # a layer image is published, its record not yet written
    "consolidate.job.running",    # a live block job runs (fibackup has not waited for it)
    "consolidate.job.ready",      # an active commit is READY, not yet pivoted
    "s3.part-uploaded",           # a multipart upload to S3 has its first part, not completed
)


def _spec() -> tuple[str, str]:
    value = os.environ.get(ENV, "")
    name, _sep, action = value.partition(":")
    return name, action


_fired = False
_lock = threading.Lock()


def point(name: str) -> None:
    """Fire the configured fault if it names ``name``: once per process, as disks
    copied in parallel reach the same step on several threads."""
    wanted, action = _spec()
    if not wanted or wanted != name:
        return
    global _fired
    with _lock:
        if _fired:
            return
        _fired = True
    os.kill(os.getpid(), signal.SIGSTOP if action == "stop" else signal.SIGKILL)


def counting(progress: Optional[Callable[[int], None]]) -> Optional[Callable[[int], None]]:
    """Wrap a byte-progress callback so ``copy-bytes:N`` can fire inside a copy."""
    wanted, action = _spec()
    if wanted != "copy-bytes":
        return progress
    limit = int(action)
    done = [0]

    def advance(count: int) -> None:
        done[0] += count
        if done[0] >= limit:
            os.kill(os.getpid(), signal.SIGKILL)
        if progress is not None:
            progress(count)

    return advance
