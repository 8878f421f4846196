"""Live block jobs through libvirt: commit, active commit with pivot, pull.

Each job is watched through libvirt's ``BLOCK_JOB_2`` events (registered
before the job starts, so no event is missed) and polled with
``blockJobInfo`` for progress and as a fallback should an event be lost.
A job that outlives its timeout is aborted; the caller always re-reads the
live chain afterwards instead of trusting what the job reported.
"""
from __future__ import annotations

import queue
import re
import time
from dataclasses import dataclass
from typing import Callable, Literal, Optional

from fibackup import faults
from fibackup.errors import BlockJobError, JobNotStartedError
from fibackup.progress import JobProgress
from fibackup.virt.libvirt_api import Domain, libvirt, libvirt_message

POLL_SECONDS = 0.25
ABORT_WAIT_SECONDS = 60.0
PIVOT_RETRY = 600.0
"""Without --timeout, how long a READY job may keep refusing the pivot as "not ready"."""
COMPLETED, FAILED, CANCELED, READY = 0, 1, 2, 3
Progress = Optional[JobProgress]
"""Gets libvirt's cur/end of the job at every poll (a progress bar, or None)."""


JobOutcome = Literal["completed", "aborted"]
"""How a job ended: ``completed`` (pivoted, for an active commit) or ``aborted``."""
Settled = Literal["none", "ended", "pivoted", "aborted", "running"]
"""What :func:`settle` found and did."""


@dataclass
class JobResult:
    """How a job ended: ``completed`` (pivoted, for an active commit) or ``aborted``."""

    outcome: JobOutcome
    seconds: float
    bytes_done: int
    reason: str = ""

    @property
    def completed(self) -> bool:
        return self.outcome == "completed"


class _Watch:
    """Block job events of one disk of one domain, queued for the waiting thread."""

    def __init__(self, domain: Domain, target: str) -> None:
        self.domain = domain
        self.target = target
        self.events: "queue.Queue[int]" = queue.Queue()
        self.callback_id: Optional[int] = None
        self.bytes_done = 0

    def __enter__(self) -> "_Watch":
        conn = self.domain.handle.connect()
        self.callback_id = conn.domainEventRegisterAny(
            self.domain.handle, libvirt.VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2, self._on_event, None)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.callback_id is not None:
            try:
                self.domain.handle.connect().domainEventDeregisterAny(self.callback_id)
            except libvirt.libvirtError:
                pass

    def _on_event(self, _conn: object, _dom: object, disk: str, _type: int, status: int,
                  _opaque: object) -> None:
        if disk == self.target:
            self.events.put(status)

    def info(self) -> Optional[dict[str, int]]:
        """The job's progress; {} when libvirt says no job runs, None when it did not answer."""
        try:
            return dict(self.domain.handle.blockJobInfo(self.target, 0) or {})
        except libvirt.libvirtError:
            return None

    def check_alive(self) -> None:
        """Raise when libvirtd went away or the domain stopped under the job."""
        name, target = self.domain.name, self.target
        try:
            alive = bool(self.domain.handle.connect().isAlive())
            stopped = alive and not self.domain.is_active()
        except libvirt.libvirtError:
            alive, stopped = False, False
        if stopped:
            raise BlockJobError(
                f"domain '{name}' stopped during the block job on disk {target} (QEMU exited); "
                "its images keep a valid chain: start it again and run "
                f"'fibackup repair -d {name}'")
        if not alive:
            raise BlockJobError(
                f"the connection to libvirtd was lost during the block job on disk {target} of "
                f"'{name}'; the job may go on inside QEMU and the domain keeps running: once "
                f"libvirtd is back, run 'fibackup repair -d {name}'")

    def wait(self, wanted: set[int], deadline: Optional[float], progress: Progress) -> Optional[int]:
        """The first event in ``wanted``; None on timeout; COMPLETED if the job vanished."""
        vanished = 0
        while True:
            try:
                status = self.events.get(timeout=POLL_SECONDS)
                if status in wanted:
                    return status
                continue
            except queue.Empty:
                pass
            info = self.info()
            if info is None:
                self.check_alive()          # libvirt did not answer: neither running nor gone
            elif info:
                vanished = 0
                self.bytes_done = max(self.bytes_done, int(info.get("cur", 0)))
                if progress is not None:
                    progress.update(self.bytes_done, int(info.get("end", 0)))
                if READY in wanted and _ready(self.domain, self.target, info):
                    return READY            # its event was lost; the pivot re-checks
            else:
                vanished += 1
                if vanished >= 8 and self.events.empty():
                    return COMPLETED        # no job and no event: the caller checks the chain
            if deadline is not None and time.monotonic() >= deadline:
                return None


def commit(domain: Domain, target: str, base: str, top: str, bandwidth_mib: int,
           timeout: Optional[float], progress: Progress = None) -> JobResult:
    """Merge the frozen layers above ``base`` up to ``top`` into ``base`` (top stays below the active layer)."""
    return _run(domain, target, bandwidth_mib, timeout, progress, what=f"commit into {base}",
                start=lambda: domain.handle.blockCommit(target, base, top, bandwidth_mib, 0),
                base=base)


def pull(domain: Domain, target: str, bandwidth_mib: int, timeout: Optional[float],
         progress: Progress = None) -> JobResult:
    """Copy every backing layer's data into the active layer, which then stands alone."""
    return _run(domain, target, bandwidth_mib, timeout, progress, what="pull into the active layer",
                start=lambda: domain.handle.blockRebase(target, None, bandwidth_mib, 0), base=None)


def _run(domain: Domain, target: str, bandwidth_mib: int, timeout: Optional[float],
         progress: Progress, what: str, start: Callable[[], object],
         base: Optional[str]) -> JobResult:
    began = time.monotonic()
    deadline = began + timeout if timeout else None
    with _Watch(domain, target) as watch:
        _start(domain, target, what, start, base)
        faults.point("consolidate.job.running")
        try:
            status = watch.wait({COMPLETED, FAILED, CANCELED}, deadline, progress)
        except BaseException:
            _abort_quietly(watch)
            raise
        if status is None:
            status = _abort(watch)
            if status == COMPLETED:     # it finished while we aborted
                return JobResult("completed", time.monotonic() - began, watch.bytes_done)
            return JobResult("aborted", time.monotonic() - began, watch.bytes_done,
                             f"it did not finish within {timeout:g} s")
        return _ended(domain, target, what, status, began, watch)


def active_commit(domain: Domain, target: str, base: str, bandwidth_mib: int,
                  timeout: Optional[float], progress: Progress = None) -> JobResult:
    """Merge every layer, the active one included, into ``base`` and make it active.

    Waits for READY (every write is then mirrored into the base), then pivots;
    a pivot refused as "not ready" is retried until the timeout, which aborts
    the job and leaves the active layer in place.
    """
    began = time.monotonic()
    deadline = began + timeout if timeout else None
    what = f"active commit into {base}"
    flags = libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE
    with _Watch(domain, target) as watch:
        _start(domain, target, what,
               lambda: domain.handle.blockCommit(target, base, None, bandwidth_mib, flags), base)
        faults.point("consolidate.job.running")
        try:
            status = watch.wait({READY, FAILED, CANCELED, COMPLETED}, deadline, progress)
            if status == READY:
                faults.point("consolidate.job.ready")
                status = _pivot(domain, target, watch, deadline or time.monotonic() + PIVOT_RETRY)
        except BaseException:
            _abort_quietly(watch)           # never leave the domain mirrored in READY
            raise
        if status is None:
            _abort(watch)
            limit = f"within {timeout:g} s " if timeout else ""
            reason = (f"it was not ready to pivot {limit}(the guest may write faster than the "
                      "base can take it; try a longer --timeout or a quieter moment)")
            return JobResult("aborted", time.monotonic() - began, watch.bytes_done, reason)
        return _ended(domain, target, what, status, began, watch)


def _pivot(domain: Domain, target: str, watch: _Watch, deadline: float) -> Optional[int]:
    """Pivot once READY; "not ready" is retried until ``deadline`` (None: give up)."""
    while True:
        try:
            domain.handle.blockJobAbort(target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
        except libvirt.libvirtError as error:
            if "not ready" not in libvirt_message(error).lower():
                raise BlockJobError(f"libvirt refused to pivot disk {target} of "
                                    f"'{domain.name}': {libvirt_message(error)}; the job was "
                                    "aborted and the domain keeps its chain") from None
            if time.monotonic() >= deadline:
                return None
            time.sleep(POLL_SECONDS)
            continue
        status = watch.wait({COMPLETED, FAILED, CANCELED}, time.monotonic() + ABORT_WAIT_SECONDS,
                            None)
        if status is None:
            raise BlockJobError(f"the pivot of disk {target} of '{domain.name}' did not complete "
                                f"within {ABORT_WAIT_SECONDS:g} s; check 'virsh blockjob "
                                f"{domain.name} {target}' and 'virsh domblklist {domain.name}'")
        return status


def _abort(watch: _Watch) -> Optional[int]:
    """Cancel the job (an active commit keeps its active layer) and wait for its end."""
    try:
        watch.domain.handle.blockJobAbort(watch.target, 0)
    except libvirt.libvirtError as error:
        if watch.info() != {}:
            raise BlockJobError(f"cannot abort the block job on disk {watch.target} of "
                                f"'{watch.domain.name}': {libvirt_message(error)}; see "
                                f"'virsh blockjob {watch.domain.name} {watch.target}'") from None
    status = watch.wait({COMPLETED, FAILED, CANCELED}, time.monotonic() + ABORT_WAIT_SECONDS, None)
    if status is None and watch.info() != {}:
        raise BlockJobError(f"the block job on disk {watch.target} of '{watch.domain.name}' "
                            f"still runs {ABORT_WAIT_SECONDS:g} s after it was aborted; check "
                            f"'virsh blockjob {watch.domain.name} {watch.target}'")
    return status


def _abort_quietly(watch: _Watch) -> None:
    try:
        if watch.info():
            watch.domain.handle.blockJobAbort(watch.target, 0)
    except libvirt.libvirtError:
        pass


def _ended(domain: Domain, target: str, what: str, status: Optional[int], began: float,
           watch: _Watch) -> JobResult:
    seconds = time.monotonic() - began
    if status == COMPLETED:
        return JobResult("completed", seconds, watch.bytes_done)
    if status == CANCELED:
        return JobResult("aborted", seconds, watch.bytes_done, "it was cancelled from outside")
    raise BlockJobError(f"the {what} of disk {target} of '{domain.name}' failed in QEMU; "
                        "the domain keeps running on its previous chain (libvirtd's log and "
                        f"/var/log/libvirt/qemu/{domain.name}.log say why)")


def _start(domain: Domain, target: str, what: str, start: Callable[[], object],
           base: Optional[str]) -> None:
    try:
        start()
    except libvirt.libvirtError as error:
        raise JobNotStartedError(_start_message(domain.name, target, what,
                                                libvirt_message(error), base)) from None


def _start_message(name: str, target: str, what: str, text: str, base: Optional[str]) -> str:
    if "Permission denied" in text or "Operation not permitted" in text:
        quoted = [name for name in re.findall(r"'([^']+)'", text) if name.startswith("/")]
        path = quoted[-1] if quoted else (base or "an image")
        return (f"QEMU may not write {path} for the {what} of disk {target} of '{name}' "
                f"({'permission denied' if 'Permission' in text else 'operation not permitted'}): "
                "check the file's permissions and attributes ('lsattr'), and on Debian/Ubuntu "
                "hosts AppArmor, which often denies writing a base image that was read-only when "
                "the domain started (see docs/CONSOLIDATION.md). Nothing was changed")
    if "already in active block job" in text or "block copy still active" in text:
        return (f"disk {target} of '{name}' already runs a block job ('virsh blockjob {name} "
                f"{target}' shows it); wait for it or abort it, then run again. Nothing was changed")
    return f"libvirt refused the {what} of disk {target} of '{name}': {text}. Nothing was changed"


# -- jobs an interrupted run left behind (fibackup repair) ---------------------------------------

def settle(domain: Domain, target: str, pivot: bool, deadline: Optional[float]) -> Settled:
    """Bring a block job a dead run left on ``target`` to an end.

    A job still copying is waited for (until ``deadline``: then ``running``);
    a mirror in READY is pivoted (``pivot``, what an active commit intended)
    or aborted.  Returns ``none`` (no job), ``ended``, ``pivoted``, ``aborted``
    or ``running``; the caller re-reads the chain to learn what it now is.
    """
    with _Watch(domain, target) as watch:
        info = watch.info()
        if info == {}:
            return "none"
        while True:
            if info == {}:
                return "ended"
            if info is None:
                watch.check_alive()
            elif _ready(domain, target, info):
                if pivot:
                    status = _pivot(domain, target, watch, deadline or time.monotonic() + PIVOT_RETRY)
                    if status is None:          # "not ready" until the deadline: still mirroring
                        return "running"
                    return "pivoted" if status == COMPLETED else "aborted"
                _abort(watch)
                return "aborted"
            if deadline is not None and time.monotonic() >= deadline:
                return "running"
            try:
                if watch.events.get(timeout=POLL_SECONDS) in (COMPLETED, FAILED, CANCELED):
                    return "ended"
            except queue.Empty:
                pass
            info = watch.info()


def _ready(domain: Domain, target: str, info: dict[str, int]) -> bool:
    """A mirror (active commit) that waits for its pivot."""
    if info.get("type") != libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT:
        return False
    return domain.mirror_ready(target)    # cur trails end while the guest writes
