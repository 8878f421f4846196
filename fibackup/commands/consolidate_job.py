"""One disk's consolidation job (``fibackup consolidate``, step 3 and 4): run it as a
live block job or, shut off, with qemu-img; check the chain it left; record it in
the host state; then, completed, the steps repair would also finish
(fibackup/commands/recovery/consolidate.py: definition, merged files)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Literal, Optional, Protocol

from fibackup.commands.recovery.consolidate import finish_merge
from fibackup.errors import (FibackupError, ImageToolTimeoutError, InconsistentChainError,
                             JobNotStartedError)
from fibackup.fsutil import allocated_bytes, file_identity, human
from fibackup.host import state as host_state
from fibackup.host.journal import Journal, Step
from fibackup.model import naming
from fibackup.model.chain import FileIdentity, LiveDisk, LiveLayer, expected_chain, moved_layers
from fibackup.model.states import Method, Outcome
from fibackup.qemu import img
from fibackup.report import Reporter
from fibackup.virt import blockjobs
from fibackup.virt.disks import chain_now, redefine_offline
from fibackup.virt.libvirt_api import Domain
from fibackup.virt.sharing import Users

MIB = 1024 * 1024
NextBackup = Literal["incremental", "new generation", "unchanged"]
"""What the next backup of a consolidated disk is (``--json``'s ``next_backup``)."""


class JobOptions(Protocol):
    """What a job takes of ``ConsolidateOptions`` (fibackup/commands/consolidate.py)."""

    method: str
    bandwidth_mib: int
    timeout: Optional[float]
    keep_files: bool


@dataclass
class DiskOutcome:
    target: str
    before: list[str]
    after: list[str]
    outcome: Outcome
    """``merged``, ``aborted`` or ``nothing to do``."""
    bytes_merged: int = 0
    seconds: float = 0.0
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    next_backup: NextBackup = "incremental"
    reason: str = ""

    def to_json(self) -> dict[str, object]:
        return {"disk": self.target, "chain_before": self.before, "chain_after": self.after,
                "outcome": self.outcome, "bytes_merged": self.bytes_merged,
                "seconds": round(self.seconds, 3), "removed": self.removed, "kept": self.kept,
                "next_backup": self.next_backup, "reason": self.reason}


def paths(disk: LiveDisk) -> list[str]:
    return [layer.path for layer in disk.layers]


@dataclass
class _Job:
    """One disk's job as planned: what it moves, and what the host state records."""

    disk: LiveDisk
    method: Method
    moved: list[LiveLayer]
    merged_bytes: int
    parts: tuple[FileIdentity, ...]
    """For a commit, the identities of the files merged into the base, base first."""
    time: str

    def record(self, outcome: Outcome, completed: bool = False,
               consistent: bool = False) -> host_state.Consolidation:
        """The host state's record of the job (``result``/``parts`` only when completed,
        and ``parts`` only when it left the chain expected)."""
        return host_state.Consolidation(
            disk=self.disk.target, method=self.method, time=self.time, outcome=outcome,
            base=self.disk.base.path, merged=tuple(layer.path for layer in self.moved),
            result=file_identity(self.disk.base.path)
            if completed and self.method == Method.COMMIT else None,
            parts=self.parts if completed and consistent else ())


def consolidate_disk(domain: Domain, disk: LiveDisk, options: JobOptions, live: bool,
                     report: Reporter, users: Users, journal: Journal) -> DiskOutcome:
    method = Method(options.method)
    moved = moved_layers(disk, method)
    job = _Job(disk, method, moved, sum(allocated_bytes(layer.path) for layer in moved),
               tuple(file_identity(layer.path) for layer in disk.layers[:-1])
               if method == Method.COMMIT else (), naming.utc_time())
    report.info(f"{domain.name}: {method.job_name} of disk {disk.target}: merging "
                f"{len(moved)} layer(s), {human(job.merged_bytes)}")
    began = time.monotonic()
    step, ran = _run(domain, job, options, live, report, journal)
    before = paths(disk)
    after = chain_now(domain, disk.target)
    expected = expected_chain(disk, method) if ran.completed else before
    outcome = Outcome.MERGED if ran.completed else Outcome.ABORTED
    recorded = outcome if after == expected else Outcome.FAILED
    host_state.record_consolidation(domain.uuid, job.record(recorded, ran.completed,
                                                            after == expected))
    journal.done(step, outcome=recorded)
    if after != expected:
        raise InconsistentChainError(
            f"after the {method} of disk {disk.target} of '{domain.name}' its chain is "
            f"{' <- '.join(after)} instead of {' <- '.join(expected)}; nothing was deleted; check "
            f"'virsh domblklist {domain.name}' and 'qemu-img info --backing-chain' before going on",
            domain=domain.name, disk=disk.target)
    result = DiskOutcome(disk.target, before, after, outcome,
                         job.merged_bytes if ran.completed else 0, time.monotonic() - began,
                         reason=ran.reason)
    result.next_backup = ("incremental" if ran.completed and method == Method.COMMIT
                          else "new generation")
    if ran.completed:
        result.removed, result.kept = finish_merge(domain, disk, method, after,
                                                   options.keep_files, users, report, journal)
        _report_done(domain, result, method, report)
    return result


def _run(domain: Domain, job: _Job, options: JobOptions, live: bool, report: Reporter,
         journal: Journal) -> tuple[Step, blockjobs.JobResult]:
    """Journal the job and run it; a job that failed is recorded as such."""
    disk = job.disk
    if not live:
        _check_headers(domain, disk)
    step = journal.start("consolidate.job", disk=disk.target, method=job.method, live=live,
                         time=job.time, before=paths(disk),
                         expected=expected_chain(disk, job.method),
                         formats=[layer.format for layer in disk.layers],
                         moved=[layer.path for layer in job.moved],
                         parts=[part.__dict__ for part in job.parts])
    try:
        ran = (_run_live(domain, disk, options, report, job.merged_bytes) if live
               else _run_offline(domain, disk, options, journal))
    except JobNotStartedError:
        journal.done(step, outcome=Outcome.NOT_STARTED)       # nothing was written
        raise
    except FibackupError:
        host_state.record_consolidation(domain.uuid, job.record(Outcome.FAILED))
        raise
    return step, ran


def _report_done(domain: Domain, result: DiskOutcome, method: Method, report: Reporter) -> None:
    report.info(f"{domain.name}: disk {result.target} consolidated ({method}, "
                f"{result.seconds:.1f} s): {' <- '.join(os.path.basename(p) for p in result.after)}")
    if result.next_backup == "new generation":
        article = "an" if method == Method.ACTIVE else "a"
        report.info(f"{domain.name}: the next backup of disk {result.target} will be a new full "
                    f"copy (after {article} {method.job_name} no layer rests on a "
                    "backed-up state)")


def _run_live(domain: Domain, disk: LiveDisk, options: JobOptions, report: Reporter,
              total: int) -> blockjobs.JobResult:
    with report.progress(f"{disk.target} {options.method}", total) as progress:
        if options.method == Method.COMMIT:
            return blockjobs.commit(domain, disk.target, disk.base.path, disk.layers[-2].path,
                                    options.bandwidth_mib, options.timeout, progress)
        if options.method == Method.ACTIVE:
            return blockjobs.active_commit(domain, disk.target, disk.base.path,
                                           options.bandwidth_mib, options.timeout, progress)
        return blockjobs.pull(domain, disk.target, options.bandwidth_mib, options.timeout,
                              progress)


def _check_headers(domain: Domain, disk: LiveDisk) -> None:
    """Offline, the definition's chain must be the one the image headers give."""
    headers = [info.path for info in reversed(img.backing_chain(disk.active.path,
                                                                  disk.active.format))]
    if [os.path.realpath(path) for path in headers] != \
            [os.path.realpath(layer.path) for layer in disk.layers]:
        raise InconsistentChainError(
            f"the definition of disk {disk.target} of '{domain.name}' gives the chain "
            f"{' <- '.join(paths(disk))}, but the image headers give {' <- '.join(headers)}; "
            "nothing was changed. Remove the explicit <backingStore> from the definition "
            "('virsh edit') so both agree, then run again", domain=domain.name, disk=disk.target)


def _run_offline(domain: Domain, disk: LiveDisk, options: JobOptions,
                 journal: Journal) -> blockjobs.JobResult:
    """The same results with qemu-img; every step leaves a chain that shows the same data.

    The journal marks where the data work ends: once ``consolidate.rebase`` or
    ``consolidate.redefine`` has started, the commit (or pull) completed.
    """
    began = time.monotonic()
    rate = options.bandwidth_mib * MIB
    try:
        if options.method == Method.PULL:
            img.make_standalone(disk.active.path, options.timeout)
        else:
            top = disk.layers[-2] if options.method == Method.COMMIT else disk.active
            img.commit(top.path, top.format, disk.base.path, rate, options.timeout)
            if options.method == Method.COMMIT:
                step = journal.start("consolidate.rebase", disk=disk.target)
                img.rebase_unsafe(disk.active.path, disk.base.path, disk.base.format)
                journal.done(step)
    except ImageToolTimeoutError as error:
        return blockjobs.JobResult("aborted", time.monotonic() - began, 0, str(error))
    step = journal.start("consolidate.redefine", disk=disk.target)
    redefine_offline(domain, disk.target, options.method, disk.base)
    journal.done(step)
    return blockjobs.JobResult("completed", time.monotonic() - began, 0)

