"""``fibackup repair``: finish or undo what an interrupted run left behind.

A run that changes anything writes an intent journal (fibackup/host/journal.py)
and removes it when it ends.  A journal found later means that run died.
Repair replays it step by step against what libvirt, the image headers and the
backup directory say now:

* ``snapshot.take``: if the overlays are the disks' tops, the snapshot happened:
  record them as fibackup's own and drop the stale explicit chain from the
  persistent definition (both idempotent);
* ``backup.copy`` / ``backup.publish``: nothing to undo (a manifest is
  published atomically or not at all); partial files are removed below;
* ``consolidate.job``: a job still copying is waited for, a mirror in READY is
  pivoted (``--method active``) or aborted, an offline commit whose data work
  had finished gets its rebase and definition; then the chain decides: the
  expected chain means the job completed (recorded as such, so a commit keeps
  the next backup incremental), the old chain means it did not (recorded as
  failed: the next backup starts a new generation), anything else is refused.
  A completed job then gets what the run still owed it: the persistent
  definition synced and the merged files deleted (not with ``--keep-files``);
* ``prune.*``: nothing to undo (every listed point is complete at every
  step); the next prune finishes the work;
* ``restore.*``: the staging directory is removed; files a restore published
  without defining the domain that was to use them are removed again.

Every backup directory of the domain is then tidied: hidden ``.partial-``
files, images without a record and records without an image are removed (only
in the domain's own directories, under the domain's lock).

Every other command runs the same reconciliation first (``journalled``), but
never waits: a job still running makes it refuse and name ``fibackup repair``.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from fibackup.commands import consolidate as cons
from fibackup.errors import (FibackupError, ImageToolError, InconsistentChainError,
                             RepairNeededError, StoreError)
from fibackup.fsutil import file_identity, remove_quietly
from fibackup.host import journal as journals
from fibackup.host import state as host_state
from fibackup.host.journal import Journal, Step
from fibackup.host.lock import DomainLock
from fibackup.model.chain import FileIdentity, LiveDisk, LiveLayer
from fibackup.qemu import img
from fibackup.report import Reporter
from fibackup.store.backend import location
from fibackup.store.repo import BackupStore
from fibackup.store.tidy import tidy_domain
from fibackup.virt import blockjobs, domxml
from fibackup.virt.libvirt_api import Connection, Domain


@dataclass
class RepairResult:
    domain: str
    interrupted: Optional[str] = None
    """The interrupted run, e.g. ``consolidate started 2026-11-23T10:00:00Z (pid 42)``."""
    actions: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"domain": self.domain, "interrupted": self.interrupted, "actions": self.actions}


@contextlib.contextmanager
def journalled(conn: Connection, domain: Domain, command: str, options: dict[str, Any],
               report: Reporter) -> Iterator[Journal]:
    """Lock the domain, reconcile what a dead run left, and journal this run.

    The journal is removed when the run ends, also on a clean error; it stays
    when a step was left open (an error the step could not clean up after).
    """
    with DomainLock(domain.uuid, domain.name):
        if journals.load(domain.uuid) is not None:
            reconcile(conn, domain, report, wait=False)
        with Journal(domain.uuid, command, domain.name, options).running() as journal:
            yield journal


def repair_domain(conn: Connection, name: str, backup_dir: Optional[str], report: Reporter,
                  timeout: Optional[float] = None) -> RepairResult:
    domain = conn.domain(name)
    with DomainLock(domain.uuid, domain.name):
        result = reconcile(conn, domain, report, wait=True, backup_dir=backup_dir,
                           timeout=timeout)
    result.actions.extend(repair_restores(conn, report, {domain.name, domain.uuid}))
    if not result.actions:
        report.info(f"{domain.name}: nothing to repair")
    return result


def reconcile(conn: Connection, domain: Domain, report: Reporter, wait: bool,
              backup_dir: Optional[str] = None, timeout: Optional[float] = None) -> RepairResult:
    """Replay a dead run's journal (if any) and tidy the domain's backup directories."""
    result = RepairResult(domain.name)
    journal = journals.load(domain.uuid)
    stores: set[str] = {location(backup_dir)} if backup_dir else set()
    if journal is not None:
        result.interrupted = journal.describe()
        report.info(f"{domain.name}: {journal.describe()}; reconciling")
        replay = _Replay(conn, domain, journal, report, result, wait, timeout)
        replay.run()
        stores.update(replay.stores)
    if wait or journal is not None:
        stores.update(host_state.load(domain.uuid).stores.values())
        for root in sorted(stores):
            _tidy(root, domain, report, result)
    if journal is not None:
        journal.end()
    return result


def _tidy(root: str, domain: Domain, report: Reporter, result: RepairResult) -> None:
    try:
        store = BackupStore.open(root)
    except StoreError as error:
        report.warn(f"{domain.name}: backup directory {root} not checked: {error}")
        return
    for removed in tidy_domain(store, domain.uuid):
        _act(report, result, domain.name, f"removed the incomplete file {removed}")


def _act(report: Reporter, result: RepairResult, name: str, action: str) -> None:
    result.actions.append(action)
    report.info(f"{name}: {action}")


class _Replay:
    """One dead run's journal, replayed in order."""

    def __init__(self, conn: Connection, domain: Domain, journal: Journal, report: Reporter,
                 result: RepairResult, wait: bool, timeout: Optional[float]) -> None:
        self.conn = conn
        self.domain = domain
        self.journal = journal
        self.report = report
        self.result = result
        self.wait = wait
        self.deadline = time.monotonic() + timeout if wait and timeout else None
        self.stores: set[str] = set()

    def act(self, action: str) -> None:
        _act(self.report, self.result, self.domain.name, action)

    def run(self) -> None:
        handlers = {"snapshot.take": self.snapshot_taken, "backup.copy": self.copy,
                    "backup.files": self.files,
                    "backup.publish": self.publish, "consolidate.job": self.job,
                    "prune.merge": self.prune, "prune.switch": self.prune,
                    "prune.drop": self.prune, "prune.delete": self.prune,
                    "finalize.job": self.finalize_job}
        for step in list(self.journal.steps):
            handler = handlers.get(step.name)
            if handler is not None:
                handler(step)

    # -- snapshot and backup ------------------------------------------------------------------

    def snapshot_taken(self, step: Step) -> None:
        from fibackup.commands.snapshot import current_tops, remember_overlays, tidy_persistent_xml
        overlays: dict[str, str] = dict(step.data.get("overlays") or {})
        tops = current_tops(self.domain)
        taken = {target: path for target, path in overlays.items() if tops.get(target) == path}
        if not taken:
            if step.status == "started":
                self.act(f"snapshot {step.data.get('tag')} was not taken; nothing to undo")
            return
        if step.status == "started":
            self.act(f"snapshot {step.data.get('tag')} was taken: its overlays "
                     f"{', '.join(sorted(taken.values()))} are recorded as fibackup's")
        remember_overlays(self.domain.uuid, taken, str(step.data.get("tag")))
        tidy_persistent_xml(self.domain, taken)

    def prune(self, step: Step) -> None:
        """Every point listed is complete at any moment of a prune; what it still had to
        remove is found by the next prune, which plans from the store as it is."""
        self.stores.add(str(step.data.get("store")))
        if step.status == "started":
            self.act(f"the prune of {step.data.get('store')} was interrupted in step "
                     f"{step.name}; every listed restore point is complete: run the same "
                     "'fibackup prune' again to finish it")

    def copy(self, step: Step) -> None:
        self.stores.add(str(step.data.get("store")))
        if step.status == "started":
            self.act(f"the copy of disk {step.data.get('disk')} layer {step.data.get('source')} "
                     "was interrupted; no restore point was published for it, and the next "
                     "'snapshot -b' copies the frozen layers")

    def files(self, step: Step) -> None:
        self.stores.add(str(step.data.get("store")))
        if step.status == "started":
            self.act("saving the domain's NVRAM, TPM state and boot files was interrupted; no "
                     "restore point was published for that snapshot")

    def publish(self, step: Step) -> None:
        from fibackup.commands.snapshot import remember_store
        root = str(step.data.get("store"))
        self.stores.add(root)
        try:
            store = BackupStore.open(root)
            published = any(point.id == step.data.get("point")
                            for point in store.points(self.domain.uuid, problems=[]))
        except StoreError:
            return
        if published:
            remember_store(self.domain.uuid, store)
            if step.status == "started":
                self.act(f"restore point {step.data.get('point')} had been published in {root}")
        elif step.status == "started":
            self.act(f"restore point {step.data.get('point')} was not published in {root}")

    # -- restore --finalize (instant recovery) ------------------------------------------------

    def finalize_job(self, step: Step) -> None:
        """A pull is always safe to let finish: wait for it; --finalize does the rest."""
        if step.status != "started":
            return
        target = str(step.data.get("disk"))
        if step.data.get("live") and self.domain.is_active():
            self.settle_live_job(target, "pull")
        self.act(f"disk {target}: the interrupted 'restore --finalize' left the disk on a valid "
                 f"chain; run 'fibackup restore --finalize {self.domain.name}' to finish it")

    # -- consolidation ------------------------------------------------------------------------

    def job(self, step: Step) -> None:
        data = step.data
        disk = LiveDisk(str(data["disk"]), tuple(
            LiveLayer(path, fmt) for path, fmt in zip(data["before"], data["formats"])))
        outcome = self.settle(step, disk) if step.status == "started" else data.get("outcome")
        if outcome != "merged" or self.finished(disk.target):
            return
        after = cons.chain_now(self.domain, disk.target)
        if after != list(data["expected"]):
            self.report.warn(f"{self.domain.name}: disk {disk.target} no longer has the chain "
                             "its consolidation produced; its merged files are kept")
            return
        users = cons.images_of_other_domains(self.conn, self.domain.uuid)
        users.update(cons.own_chain_files(self.domain))
        outcome_record = cons.DiskOutcome(disk.target, list(data["before"]), after, "merged")
        cons.finish_merge(self.domain, disk, str(data["method"]), after,
                          bool(self.journal.options.get("keep_files")), users, self.report,
                          self.journal, outcome_record)
        self.act(f"disk {disk.target}: finished the {cons.JOB_NAMES[str(data['method'])]} "
                 "(definition synced"
                 + (f", removed {', '.join(outcome_record.removed)}"
                    if outcome_record.removed else "") + ")")

    def finished(self, target: str) -> bool:
        """The run had already synced the definition and deleted (or kept) the files."""
        for step in self.journal.steps:
            if step.data.get("disk") != target or step.status != "done":
                continue
            if step.name == "consolidate.delete":
                return True
            if step.name == "consolidate.sync-xml" and (
                    not step.data.get("consistent") or self.journal.options.get("keep_files")):
                return True
        return False

    def settle(self, step: Step, disk: LiveDisk) -> str:
        """End the job the dead run started, then judge it by the chain it left."""
        data = step.data
        method = str(data["method"])
        if self.domain.is_active():
            self.settle_live_job(disk.target, method)
        elif not data.get("live"):
            self.finish_offline(step, disk, method)
        after = cons.chain_now(self.domain, disk.target)
        before, expected = list(data["before"]), list(data["expected"])
        if after == expected:
            outcome = "merged"
        elif after == before:
            outcome = "failed"
        else:
            raise InconsistentChainError(
                f"an interrupted {method} left disk {disk.target} of '{self.domain.name}' with "
                f"the chain {' <- '.join(after) or 'none'}, which is neither the one before "
                f"({' <- '.join(before)}) nor the one expected ({' <- '.join(expected)}); "
                f"check 'virsh domblklist {self.domain.name}' and 'qemu-img info "
                "--backing-chain' by hand")
        parts = tuple(FileIdentity(**part) for part in data.get("parts") or [])
        cons.record_once(self.domain.uuid, host_state.Consolidation(
            disk=disk.target, method=method, time=str(data["time"]), outcome=outcome,
            base=disk.base.path, merged=tuple(data.get("moved") or []),
            result=file_identity(disk.base.path) if outcome == "merged" and method == "commit"
            else None,
            parts=parts if outcome == "merged" else ()))
        self.journal.done(step, outcome=outcome)
        self.act(f"disk {disk.target}: the interrupted {cons.JOB_NAMES[method]} "
                 + ("completed" if outcome == "merged" else
                    "did not complete; the disk keeps its previous chain (if the job wrote into "
                    "the base, the next backup of the disk starts a new full generation)"))
        return outcome

    def settle_live_job(self, target: str, method: str) -> None:
        deadline = self.deadline if self.wait else time.monotonic()
        status = blockjobs.settle(self.domain, target, pivot=method == "active",
                                  deadline=deadline)
        if status == "running":
            raise RepairNeededError(
                f"the {method} an interrupted run started on disk {target} of "
                f"'{self.domain.name}' is still running; "
                + ("wait for it with 'fibackup repair -d " + self.domain.name + "'"
                   if not self.wait else "it did not end within --timeout; run repair again")
                + f" (or cancel it: 'virsh blockjob {self.domain.name} {target} --abort')")
        if status in ("pivoted", "aborted"):
            self.act(f"disk {target}: the job left in READY was "
                     + ("pivoted, as the active commit intended" if status == "pivoted"
                        else "aborted"))

    def finish_offline(self, job: Step, disk: LiveDisk, method: str) -> None:
        """An offline job: finish what the journal shows had completed its data work."""
        later = self.journal.steps[self.journal.steps.index(job) + 1:]
        names = {step.name for step in later if step.data.get("disk") == disk.target}
        if "consolidate.rebase" in names:
            img.rebase_unsafe(disk.active.path, disk.base.path, disk.base.format)
        if names & {"consolidate.rebase", "consolidate.redefine"}:
            cons.redefine_offline(self.domain, disk.target, method, disk.base)
            return
        for layer in (disk.base, disk.active):      # commit writes the base, pull the top
            try:
                img.info(layer.path, layer.format)
            except ImageToolError as error:
                if "another process" in str(error):
                    raise RepairNeededError(
                        f"{layer.path} is still locked by another process (the qemu-img of the "
                        f"interrupted {method}?); wait until it exits, then run 'fibackup "
                        f"repair -d {self.domain.name}'") from None
                raise


# -- restores ---------------------------------------------------------------------------------

def repair_restores(conn: Optional[Connection], report: Reporter,
                    names: Optional[set[str]] = None) -> list[str]:
    """Undo restores that died before they defined their domain (``names``: only those of
    these domains; None: all)."""
    actions = []
    for journal in journals.restore_journals():
        wanted = {journal.domain_name, str(journal.options.get("domain_uuid")),
                  str(journal.options.get("as_name"))}
        if names is not None and not wanted & names:
            continue
        lock = DomainLock(journal.key, f"restore {journal.key}")
        try:
            lock.acquire()
        except FibackupError:
            report.info(f"the restore {journal.key} (pid {journal.pid}) is still running; "
                        "left alone")
            continue
        try:
            journal = journals.load(journal.key)    # it may have ended before we got the lock
            if journal is None:
                continue
            undone = undo_restore(conn, journal, report)
            if undone is not None:
                actions.extend(undone)
                journal.end()
        finally:
            lock.release()
            remove_quietly(lock.path)
    return actions


def undo_restore(conn: Optional[Connection], journal: Journal,
                 report: Reporter) -> Optional[list[str]]:
    """Remove what an unfinished restore left; None when that needs libvirt (``conn``)
    to tell whether the domain was already defined with the files."""
    actions = []
    staging = journal.options.get("staging")
    define = journal.last("restore.define")
    publish = journal.last("restore.publish")
    if publish is not None and (define is None or define.status != "done"):
        files: dict[str, list[int]] = dict(publish.data.get("files") or {})   # file_key
        existed = set(publish.data.get("existed") or [])
        if define is not None and conn is None:
            return None
        if define is None or conn is None or not _defined_with(conn, journal, list(files)):
            for path, key in files.items():
                # moved there by this restore, and not a name it overwrote (--force)
                if path not in existed and _file_key(path) == tuple(key):
                    remove_quietly(path)
                    actions.append(f"removed {path}, published by a restore that was "
                                   "interrupted before it defined the domain (run the restore "
                                   "again)")
    if staging and os.path.isdir(staging):
        shutil.rmtree(staging, ignore_errors=True)
        actions.append(f"removed the staging directory {staging} of an interrupted restore")
    return _report(report, actions)


def _file_key(path: str) -> Optional[tuple[int, ...]]:
    from fibackup.commands.restore import file_key
    try:
        return file_key(path)
    except OSError:
        return None


def _defined_with(conn: Connection, journal: Journal, files: list[str]) -> bool:
    name = journal.options.get("as_name")
    domain = (conn.find_domain(str(name)) if name
              else conn.domain_by_uuid(str(journal.options.get("domain_uuid"))))
    if domain is None:
        return False
    sources = {spec.source for spec in domxml.disks(domxml.parse(domain.inactive_xml()))}
    return any(path in sources for path in files)


def _report(report: Reporter, actions: list[str]) -> list[str]:
    for action in actions:
        report.info(action)
    return actions
