"""Recovery of ``consolidate`` steps, and the steps after a completed job that both
the command and repair perform (:func:`finish_merge`).

``consolidate.job``: a job still copying is waited for, a mirror in READY is
pivoted (``--method active``) or aborted, an offline commit whose data work had
finished gets its rebase and definition; then the chain decides: the expected
chain means the job completed (recorded as such, so a commit keeps the next
backup incremental), the old chain means it did not (recorded as failed: the
next backup starts a new generation), anything else is refused.  A completed job
then gets what the run still owed it: the persistent definition synced and the
merged files deleted (not with ``--keep-files``).  ``consolidate.rebase`` and
``consolidate.redefine`` mark where an offline job's data work ended;
``consolidate.sync-xml`` and ``consolidate.delete`` what :func:`finish_merge` did.
"""
from __future__ import annotations

from typing import Sequence

from fibackup.commands.recovery.context import Handler, Replay
from fibackup.errors import ImageToolError, InconsistentChainError, RepairNeededError
from fibackup.fsutil import file_identity, remove_quietly
from fibackup.host import state as host_state
from fibackup.host.journal import Journal, Step
from fibackup.model.chain import FileIdentity, LiveDisk, LiveLayer, moved_layers
from fibackup.model.states import Method, Outcome, StepStatus
from fibackup.qemu import img
from fibackup.report import Reporter
from fibackup.virt.disks import chain_now, redefine_offline, sync_definition
from fibackup.virt.libvirt_api import Domain
from fibackup.virt.sharing import Users, images_of_other_domains, inode_of, own_chain_files


# -- after a completed job: shared with the command ------------------------------------------

def finish_merge(domain: Domain, disk: LiveDisk, method: str, after: Sequence[str],
                 keep_files: bool, users: Users, report: Reporter,
                 journal: Journal) -> tuple[list[str], list[str]]:
    """After a completed job: the persistent definition, then the merged files.
    Returns the files removed and the merged files kept."""
    step = journal.start("consolidate.sync-xml", disk=disk.target)
    consistent = sync_definition(domain, disk, after, report)
    journal.done(step, consistent=consistent)
    if keep_files or not consistent:
        return [], []
    step = journal.start("consolidate.delete", disk=disk.target,
                         files=[layer.path for layer in moved_layers(disk, method)
                                if layer is not disk.base])
    removed, kept = delete_merged(domain, disk, method, report, users)
    journal.done(step)
    return removed, kept


def delete_merged(domain: Domain, disk: LiveDisk, method: str, report: Reporter,
                  users: Users) -> tuple[list[str], list[str]]:
    """Delete the files the job made useless: only overlays fibackup created, never the
    base, never a file another domain uses.  Returns the files removed and kept."""
    candidates = [layer for layer in moved_layers(disk, method) if layer is not disk.base]
    state = host_state.load(domain.uuid)
    removed: list[str] = []
    kept: list[str] = []
    for layer in candidates:
        if not state.created_overlay(layer.path) or inode_of(layer.path) in users:
            kept.append(layer.path)
            continue
        remove_quietly(layer.path)
        removed.append(layer.path)
    if kept:
        report.info(f"{domain.name}: kept {len(kept)} merged file(s) that fibackup did "
                    f"not create or another domain uses: {', '.join(kept)}")
    if removed:
        state.forget_overlays(set(removed))
        state.save()
    return removed, kept


# -- consolidate.job ---------------------------------------------------------------------------

def job(replay: Replay, step: Step) -> None:
    data = step.data
    disk = LiveDisk(str(data["disk"]), tuple(
        LiveLayer(path, fmt) for path, fmt in zip(data["before"], data["formats"])))
    outcome = _settle(replay, step, disk) if step.status == StepStatus.STARTED \
        else data.get("outcome")
    if outcome != Outcome.MERGED or _finished(replay.journal, disk.target):
        return
    domain = replay.domain
    after = chain_now(domain, disk.target)
    if after != list(data["expected"]):
        replay.report.warn(f"{domain.name}: disk {disk.target} no longer has the chain "
                           "its consolidation produced; its merged files are kept")
        return
    users = images_of_other_domains(replay.conn, domain.uuid)
    users.update(own_chain_files(domain))
    method = Method(str(data["method"]))
    removed, _kept = finish_merge(domain, disk, method, after,
                                  bool(replay.journal.options.get("keep_files")), users,
                                  replay.report, replay.journal)
    replay.act(f"disk {disk.target}: finished the {method.job_name} (definition synced"
               + (f", removed {', '.join(removed)}" if removed else "") + ")")


def _finished(journal: Journal, target: str) -> bool:
    """The run had already synced the definition and deleted (or kept) the files."""
    for step in journal.steps:
        if step.data.get("disk") != target or step.status != StepStatus.DONE:
            continue
        if step.name == "consolidate.delete":
            return True
        if step.name == "consolidate.sync-xml" and (
                not step.data.get("consistent") or journal.options.get("keep_files")):
            return True
    return False


def _settle(replay: Replay, step: Step, disk: LiveDisk) -> Outcome:
    """End the job the dead run started, then judge it by the chain it left."""
    data = step.data
    method = Method(str(data["method"]))
    domain = replay.domain
    if domain.is_active():
        replay.settle_live_job(disk.target, method)
    elif not data.get("live"):
        _finish_offline(replay, step, disk, method)
    after = chain_now(domain, disk.target)
    before, expected = list(data["before"]), list(data["expected"])
    if after == expected:
        outcome = Outcome.MERGED
    elif after == before:
        outcome = Outcome.FAILED
    else:
        raise InconsistentChainError(
            f"an interrupted {method} left disk {disk.target} of '{domain.name}' with "
            f"the chain {' <- '.join(after) or 'none'}, which is neither the one before "
            f"({' <- '.join(before)}) nor the one expected ({' <- '.join(expected)}); "
            f"check 'virsh domblklist {domain.name}' and 'qemu-img info "
            "--backing-chain' by hand", domain=domain.name, disk=disk.target)
    parts = tuple(FileIdentity(**part) for part in data.get("parts") or [])
    merged = outcome == Outcome.MERGED
    host_state.record_consolidation(domain.uuid, host_state.Consolidation(
        disk=disk.target, method=method, time=str(data["time"]), outcome=outcome,
        base=disk.base.path, merged=tuple(data.get("moved") or []),
        result=file_identity(disk.base.path) if merged and method == Method.COMMIT else None,
        parts=parts if merged else ()))
    replay.journal.done(step, outcome=outcome)
    replay.act(f"disk {disk.target}: the interrupted {method.job_name} "
               + ("completed" if merged else
                  "did not complete; the disk keeps its previous chain (if the job wrote into "
                  "the base, the next backup of the disk starts a new full generation)"))
    return outcome


def _finish_offline(replay: Replay, job_step: Step, disk: LiveDisk, method: Method) -> None:
    """An offline job: finish what the journal shows had completed its data work."""
    steps = replay.journal.steps
    later = steps[steps.index(job_step) + 1:]
    names = {step.name for step in later if step.data.get("disk") == disk.target}
    if "consolidate.rebase" in names:
        img.rebase_unsafe(disk.active.path, disk.base.path, disk.base.format)
    if names & {"consolidate.rebase", "consolidate.redefine"}:
        redefine_offline(replay.domain, disk.target, method, disk.base)
        return
    for layer in (disk.base, disk.active):      # commit writes the base, pull the top
        try:
            img.info(layer.path, layer.format)
        except ImageToolError as error:
            if "another process" in str(error):
                raise RepairNeededError(
                    f"{layer.path} is still locked by another process (the qemu-img of the "
                    f"interrupted {method}?); wait until it exits, then run 'fibackup "
                    f"repair -d {replay.domain.name}'", path=layer.path,
                    domain=replay.domain.name, disk=disk.target) from None
            raise


HANDLERS: dict[str, Handler] = {"consolidate.job": job}
