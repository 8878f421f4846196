"""``fibackup consolidate``: shorten each disk's backing chain without breaking a backup.

Methods (README, "Consolidation"):

* ``commit`` (default): merge every frozen layer into the base; the chain
  becomes base <- active.  The host state records that the new base *is* the
  stacking of the merged files, so the next backup stays incremental.
* ``active``: merge everything, the active layer too, into the base and pivot
  to it (one image).  The next backup is a new full generation.
* ``pull``: copy the backing data into the active layer, which then stands
  alone.  The base file is never deleted.  The next backup is a new generation.

Order of work for one domain (the lock is held throughout):

1. read the chains, refuse images another domain also uses;
2. prove that every frozen layer about to be merged is in each backup
   directory of the domain -- with ``-b`` take a ``snapshot -b`` first to copy
   what is missing, otherwise refuse (``--force`` goes on);
3. run the job per disk (live block job, or qemu-img when shut off), re-read
   the chain and check it is exactly the one expected;
4. record the consolidation in the host state, keep the persistent
   definition consistent, delete the merged files fibackup created.
"""
from __future__ import annotations

import datetime as _dt
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Collection, Iterable, Optional, Sequence

from fibackup.commands.common import check_chain, layer_index, select_disks
from fibackup.errors import (DomainStateError, FibackupError, ImageInUseError,
                             InconsistentChainError, StoreError, UnbackedLayerError, UsageError)
from fibackup.fsutil import allocated_bytes, file_identity, human, remove_quietly
from fibackup.host import state as host_state
from fibackup.host.instant import refuse_instant
from fibackup.host.journal import Journal
from fibackup.model.chain import LiveDisk, LiveLayer
from fibackup.qemu import img
from fibackup.report import Reporter
from fibackup.store.backend import location
from fibackup.store.repo import BackupStore
from fibackup.virt import blockjobs, domxml
from fibackup.virt.chains import live_chain
from fibackup.virt.libvirt_api import Connection, Domain, libvirt

METHODS = ("commit", "active", "pull")
JOB_NAMES = {"commit": "commit", "active": "active commit", "pull": "pull"}
MIB = 1024 * 1024


@dataclass
class ConsolidateOptions:
    method: str = "commit"
    backup_dir: Optional[str] = None
    bandwidth_mib: int = 0
    timeout: Optional[float] = None
    keep_files: bool = False
    force: bool = False
    disks: Sequence[str] = ()
    exclude: Sequence[str] = ()
    space_check: bool = True


@dataclass
class DiskOutcome:
    target: str
    before: list[str]
    after: list[str]
    outcome: str
    """``merged``, ``aborted`` or ``nothing to do``."""
    bytes_merged: int = 0
    seconds: float = 0.0
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    next_backup: str = "incremental"
    reason: str = ""

    def to_json(self) -> dict[str, object]:
        return {"disk": self.target, "chain_before": self.before, "chain_after": self.after,
                "outcome": self.outcome, "bytes_merged": self.bytes_merged,
                "seconds": round(self.seconds, 3), "removed": self.removed, "kept": self.kept,
                "next_backup": self.next_backup, "reason": self.reason}


@dataclass
class ConsolidateResult:
    domain: str
    method: str
    live: bool
    disks: list[DiskOutcome] = field(default_factory=list)
    snapshot: Optional[dict[str, object]] = None

    @property
    def aborted(self) -> list[DiskOutcome]:
        return [disk for disk in self.disks if disk.outcome == "aborted"]

    def to_json(self) -> dict[str, object]:
        return {"domain": self.domain, "method": self.method, "live": self.live,
                "disks": [disk.to_json() for disk in self.disks], "snapshot": self.snapshot}


def check_options(options: ConsolidateOptions) -> None:
    if options.method not in METHODS:
        raise UsageError(f"unknown method '{options.method}'; use one of {', '.join(METHODS)}")
    if options.bandwidth_mib < 0:
        raise UsageError("--bandwidth must be a positive number of MiB/s (0: unlimited)")
    if options.timeout is not None and options.timeout <= 0:
        raise UsageError("--timeout must be a positive number of seconds")


def consolidate_domain(conn: Connection, name: str, options: ConsolidateOptions,
                       report: Reporter) -> ConsolidateResult:
    from fibackup.commands.repair import journalled
    check_options(options)
    domain = conn.domain(name)
    refuse_instant(domain.uuid, domain.name, "consolidate")
    with journalled(conn, domain, "consolidate", journal_options(options), report) as journal:
        return consolidate_locked(conn, domain, options, report, journal)


def journal_options(options: ConsolidateOptions) -> dict[str, object]:
    """What repair needs to finish an interrupted run the way it was asked for."""
    return {"method": options.method, "keep_files": options.keep_files,
            "backup_dir": location(options.backup_dir) if options.backup_dir else None}


def consolidate_locked(conn: Connection, domain: Domain, options: ConsolidateOptions,
                       report: Reporter, journal: Journal) -> ConsolidateResult:
    """Consolidate a domain whose lock the caller holds."""
    live = _check_state(domain)
    result = ConsolidateResult(domain.name, options.method, live)
    disks = _disks(domain, options)
    users = images_of_other_domains(conn, domain.uuid)
    users.update(_own_other_disks(domain, disks))
    work = _work(disks, options.method)
    _refuse_shared(domain, work, options.method, users)
    missing = _unbacked(domain, work, options, report)
    if missing and options.backup_dir:
        report.info(f"{domain.name}: {_describe(missing)}; taking a snapshot with backup first")
        result.snapshot = _catch_up(domain, options, report, journal)
        disks = _disks(domain, options)
        work = _work(disks, options.method)
        _refuse_shared(domain, work, options.method, users)
        still = _unbacked(domain, work, options, report)
        if still:
            raise UnbackedLayerError(f"domain '{domain.name}': after the catch-up backup, "
                                     f"{_describe(still)}; nothing was merged")
    elif missing and not options.force:
        raise UnbackedLayerError(_refusal(domain.name, missing, options.method))
    elif missing:
        report.warn(f"{domain.name}: {_describe(missing)}; going on because of --force: that "
                    "restore point is lost and the next backup to that directory starts a new "
                    "full generation")
    for disk in disks:
        if disk not in work:
            result.disks.append(DiskOutcome(disk.target, _paths(disk), _paths(disk),
                                            "nothing to do", next_backup="unchanged"))
    if not work:
        report.info(f"{domain.name}: nothing to consolidate (every chain is already short)")
        return result
    for disk in work:
        outcome = _consolidate_disk(domain, disk, options, live, report, users, journal)
        result.disks.append(outcome)
        if outcome.outcome == "aborted":
            report.warn(f"{domain.name}: the {JOB_NAMES[options.method]} of disk {disk.target} "
                        f"was aborted: {outcome.reason}; the domain keeps its previous chain"
                        + (" and the next backup of that disk starts a new full generation"
                           if options.method == "commit" else ""))
    result.disks.sort(key=lambda disk: disk.target)
    return result


def _check_state(domain: Domain) -> bool:
    state = domain.state_name()
    if state in ("running", "paused"):
        return True
    if state == "shut off":
        return False
    raise DomainStateError(f"domain '{domain.name}' is {state}; consolidation needs it running, "
                           "paused or shut off")


def _disks(domain: Domain, options: ConsolidateOptions) -> list[LiveDisk]:
    specs = domxml.disks(domxml.parse(domain.current_xml()))
    selection = select_disks(domain.name, specs, options.disks, options.exclude)
    disks = [LiveDisk(spec.target, live_chain(spec, domain.is_active()))
             for spec in selection.selected]
    for disk in disks:
        check_chain(domain.name, disk)
    return disks


def _work(disks: Sequence[LiveDisk], method: str) -> list[LiveDisk]:
    """Disks with something to merge: commit needs a frozen layer above the base,
    active and pull any backing layer."""
    least = 3 if method == "commit" else 2
    return [disk for disk in disks if len(disk.layers) >= least]


def _paths(disk: LiveDisk) -> list[str]:
    return [layer.path for layer in disk.layers]


# -- the integrity rule: never merge away a layer a backup lacks -----------------------------

@dataclass(frozen=True)
class _Missing:
    store: str
    target: str
    path: str


def _stores(domain: Domain, options: ConsolidateOptions,
            state: host_state.HostState, report: Reporter) -> list[BackupStore]:
    if options.backup_dir:
        return [BackupStore.open(options.backup_dir, create=True)]
    stores = []
    for store_id, path in sorted(state.stores.items()):
        try:
            store = BackupStore.open(path)
        except StoreError:
            report.warn(f"{domain.name}: backup directory {path} (used before) is not reachable; "
                        "its next backup of this domain may have to start a new full copy")
            continue
        if store.store_id == store_id:
            stores.append(store)
    return stores


def _unbacked(domain: Domain, disks: Sequence[LiveDisk], options: ConsolidateOptions,
              report: Reporter) -> list[_Missing]:
    """Frozen layers some backup directory of the domain does not hold (by identity)."""
    if not disks:
        return []
    state = host_state.load(domain.uuid)
    missing = []
    for store in _stores(domain, options, state, report):
        index = layer_index(store, domain.uuid, state)
        for disk in disks:
            frozen = disk.layers[:-1]
            covered = len(index.match_prefix([file_identity(layer.path) for layer in frozen]))
            if covered < len(frozen):
                missing.append(_Missing(store.root, disk.target, frozen[covered].path))
    return missing


def _describe(missing: Sequence[_Missing]) -> str:
    first = missing[0]
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    return (f"disk {first.target} layer {first.path} and the layers above it are not in backup "
            f"directory {first.store}{more}")


def _refusal(name: str, missing: Sequence[_Missing], method: str) -> str:
    store = missing[0].store
    return (f"domain '{name}': {_describe(missing)}; consolidating now would merge them away and "
            f"lose that restore point. Run 'fibackup snapshot -d {name} -b {store}' first, or "
            f"'fibackup consolidate -d {name} --method {method} -b {store}' to copy them as part "
            "of this run, or add --force (the next backup to that directory then starts a new "
            "full generation)")


def _catch_up(domain: Domain, options: ConsolidateOptions, report: Reporter,
              journal: Journal) -> dict[str, object]:
    from fibackup.commands.snapshot import SnapshotOptions, snapshot_locked
    step = journal.start("consolidate.catch-up", backup_dir=options.backup_dir)
    snapshot = snapshot_locked(domain, SnapshotOptions(
        backup_dir=options.backup_dir, disks=options.disks, exclude=options.exclude,
        space_check=options.space_check), report, journal)
    journal.done(step)
    return snapshot.to_json()


# -- images shared with other domains -------------------------------------------------------

def _refuse_shared(domain: Domain, work: Sequence[LiveDisk], method: str,
                   users: dict[tuple[int, int], str]) -> None:
    """Never write into an image another defined domain also uses."""
    if method == "pull":
        return
    for disk in work:
        key = _file_key(disk.base.path)
        if key in users:
            raise ImageInUseError(
                f"domain '{domain.name}': the base image {disk.base.path} of disk {disk.target} "
                f"is also used by {users[key]}; a {method} would write into it and change "
                "that disk's data. Use --method pull (which never writes the base), or "
                "give the domain a base of its own")


def images_of_other_domains(conn: Connection, uuid: str) -> dict[tuple[int, int], str]:
    """(device, inode) of every image in the chains of every other domain -> who uses it."""
    users: dict[tuple[int, int], str] = {}
    for other in conn.other_domains(uuid):
        try:
            xmls = [other.live_xml()]
            if other.is_active() and other.is_persistent():
                xmls.append(other.inactive_xml())
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                continue                # undefined while we looked: it uses nothing now
            raise
        for key, who in _files_in(xmls, lambda _spec, name=other.name: f"domain '{name}'").items():
            users.setdefault(key, who)
    return users


def _own_other_disks(domain: Domain, disks: Sequence[LiveDisk]) -> dict[tuple[int, int], str]:
    """Images of this domain's disks that are not consolidated (excluded, skipped, or
    only in the persistent definition): writing them would change those disks."""
    worked = {_file_key(layer.path) for disk in disks for layer in disk.layers}
    targets = {disk.target for disk in disks}
    current = domain.current_xml()
    return _files_in({current, domain.inactive_xml()}, _same_domain,
                     skip=lambda spec, xml: spec.target in targets and xml == current,
                     worked=worked)


def own_chain_files(domain: Domain) -> dict[tuple[int, int], str]:
    """Every image in the chains of this domain's disks now (live and persistent)."""
    return _files_in({domain.current_xml(), domain.inactive_xml()}, _same_domain)


def _same_domain(spec: domxml.DiskSpec) -> str:
    return f"disk {spec.target} of the same domain"


def _files_in(xmls: Iterable[str], describe: Callable[[domxml.DiskSpec], str],
              skip: Callable[[domxml.DiskSpec, str], bool] = lambda _spec, _xml: False,
              worked: Collection[Optional[tuple[int, int]]] = ()) -> dict[tuple[int, int], str]:
    """(device, inode) of every image in the disks' chains of ``xmls`` -> who uses it."""
    users: dict[tuple[int, int], str] = {}
    for xml in xmls:
        for spec in domxml.disks(domxml.parse(xml)):
            if skip(spec, xml):
                continue
            for path in _chain_files(spec):
                key = _file_key(path)
                if key is not None and key not in worked:
                    users.setdefault(key, describe(spec))
    return users


def _chain_files(spec: domxml.DiskSpec) -> list[str]:
    if not spec.source or not os.path.isfile(spec.source):
        return []
    files = [spec.source, *(layer.path for layer in spec.backing)]
    try:
        probed = img.backing_chain(files[-1], None, force_share=True)
    except FibackupError:
        return files
    return [*files, *(info.path for info in probed[1:])]


def _file_key(path: str) -> Optional[tuple[int, int]]:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


# -- one disk ---------------------------------------------------------------------------------

def _consolidate_disk(domain: Domain, disk: LiveDisk, options: ConsolidateOptions, live: bool,
                      report: Reporter, users: dict[tuple[int, int], str],
                      journal: Journal) -> DiskOutcome:
    method = options.method
    before = _paths(disk)
    moved = _moved_layers(disk, method)
    merged_bytes = sum(allocated_bytes(layer.path) for layer in moved)
    parts = (tuple(file_identity(layer.path) for layer in disk.layers[:-1])
             if method == "commit" else ())
    report.info(f"{domain.name}: {JOB_NAMES[method]} of disk {disk.target}: merging "
                f"{len(moved)} layer(s), {human(merged_bytes)}")
    moment = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    began = time.monotonic()
    if not live:
        _check_headers(domain, disk)
    step = journal.start("consolidate.job", disk=disk.target, method=method, live=live,
                         time=moment, before=before, expected=_expected_chain(disk, method),
                         formats=[layer.format for layer in disk.layers],
                         moved=[layer.path for layer in moved],
                         parts=[part.__dict__ for part in parts])
    try:
        job = (_run_live(domain, disk, options, report, merged_bytes) if live
               else _run_offline(domain, disk, options, journal))
    except blockjobs.JobNotStartedError:
        journal.done(step, outcome="not started")       # nothing was written
        raise
    except FibackupError:
        record_once(domain.uuid, host_state.Consolidation(
            disk=disk.target, method=method, time=moment, outcome="failed",
            base=disk.base.path, merged=tuple(layer.path for layer in moved)))
        raise
    after = chain_now(domain, disk.target)
    expected = _expected_chain(disk, method) if job.completed else before
    outcome = "merged" if job.completed else "aborted"
    recorded = outcome if after == expected else "failed"
    record_once(domain.uuid, host_state.Consolidation(
        disk=disk.target, method=method, time=moment, outcome=recorded, base=disk.base.path,
        merged=tuple(layer.path for layer in moved),
        result=file_identity(disk.base.path) if job.completed and method == "commit" else None,
        parts=parts if job.completed and after == expected else ()))
    journal.done(step, outcome=recorded)
    if after != expected:
        raise InconsistentChainError(
            f"after the {method} of disk {disk.target} of '{domain.name}' its chain is "
            f"{' <- '.join(after)} instead of {' <- '.join(expected)}; nothing was deleted; check "
            f"'virsh domblklist {domain.name}' and 'qemu-img info --backing-chain' before going on")
    result = DiskOutcome(disk.target, before, after, outcome, merged_bytes if job.completed else 0,
                         time.monotonic() - began, reason=job.reason)
    result.next_backup = ("incremental" if job.completed and method == "commit"
                          else "new generation")
    if job.completed:
        finish_merge(domain, disk, method, after, options.keep_files, users, report, journal,
                     result)
        report.info(f"{domain.name}: disk {disk.target} consolidated ({method}, "
                    f"{result.seconds:.1f} s): {' <- '.join(os.path.basename(p) for p in after)}")
        if result.next_backup == "new generation":
            article = "an" if method == "active" else "a"
            report.info(f"{domain.name}: the next backup of disk {disk.target} will be a new full "
                        f"copy (after {article} {JOB_NAMES[method]} no layer rests on a "
                        "backed-up state)")
    return result


def finish_merge(domain: Domain, disk: LiveDisk, method: str, after: Sequence[str],
                 keep_files: bool, users: dict[tuple[int, int], str], report: Reporter,
                 journal: Journal, result: DiskOutcome) -> None:
    """After a completed job: the persistent definition, then the merged files."""
    step = journal.start("consolidate.sync-xml", disk=disk.target)
    consistent = sync_definition(domain, disk, after, report)
    journal.done(step, consistent=consistent)
    if keep_files or not consistent:
        return
    step = journal.start("consolidate.delete", disk=disk.target,
                         files=[layer.path for layer in _moved_layers(disk, method)
                                if layer is not disk.base])
    delete_merged(domain, disk, method, report, result, users)
    journal.done(step)


def record_once(domain_uuid: str, consolidation: host_state.Consolidation) -> None:
    """Record a consolidation; the same run's record for the disk is replaced, not doubled
    (repair may record what an interrupted run already had)."""
    state = host_state.load(domain_uuid)
    last = state.last_consolidation(consolidation.disk)
    if last is not None and (last.time, last.method) == (consolidation.time,
                                                         consolidation.method):
        state.consolidations.remove(last)
    state.record(consolidation)
    state.save()


def _moved_layers(disk: LiveDisk, method: str) -> list[LiveLayer]:
    """The layers whose data the job moves."""
    if method == "commit":
        return list(disk.layers[1:-1])
    if method == "active":
        return list(disk.layers[1:])
    return list(disk.layers[:-1])


def _expected_chain(disk: LiveDisk, method: str) -> list[str]:
    if method == "commit":
        return [disk.base.path, disk.active.path]
    if method == "active":
        return [disk.base.path]
    return [disk.active.path]


def chain_now(domain: Domain, target: str) -> list[str]:
    for spec in domxml.disks(domxml.parse(domain.current_xml())):
        if spec.target == target and spec.source:
            return [layer.path for layer in live_chain(spec, domain.is_active())]
    return []


def _run_live(domain: Domain, disk: LiveDisk, options: ConsolidateOptions, report: Reporter,
              total: int) -> blockjobs.JobResult:
    with report.progress(f"{disk.target} {options.method}", total) as progress:
        if options.method == "commit":
            return blockjobs.commit(domain, disk.target, disk.base.path, disk.layers[-2].path,
                                    options.bandwidth_mib, options.timeout, progress)
        if options.method == "active":
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
            f"{' <- '.join(_paths(disk))}, but the image headers give {' <- '.join(headers)}; "
            "nothing was changed. Remove the explicit <backingStore> from the definition "
            "('virsh edit') so both agree, then run again")


def _run_offline(domain: Domain, disk: LiveDisk, options: ConsolidateOptions,
                 journal: Journal) -> blockjobs.JobResult:
    """The same results with qemu-img; every step leaves a chain that shows the same data.

    The journal marks where the data work ends: once ``consolidate.rebase`` or
    ``consolidate.redefine`` has started, the commit (or pull) completed.
    """
    began = time.monotonic()
    rate = options.bandwidth_mib * MIB
    try:
        if options.method == "pull":
            img.make_standalone(disk.active.path, options.timeout)
        else:
            top = disk.layers[-2] if options.method == "commit" else disk.active
            img.commit(top.path, top.format, disk.base.path, rate, options.timeout)
            if options.method == "commit":
                step = journal.start("consolidate.rebase", disk=disk.target)
                img.rebase_unsafe(disk.active.path, disk.base.path, disk.base.format)
                journal.done(step)
    except img.Timeout as error:
        return blockjobs.JobResult("aborted", time.monotonic() - began, 0, str(error))
    step = journal.start("consolidate.redefine", disk=disk.target)
    redefine_offline(domain, disk.target, options.method, disk.base)
    journal.done(step)
    return blockjobs.JobResult("completed", time.monotonic() - began, 0)


def redefine_offline(domain: Domain, target: str, method: str, base: LiveLayer) -> None:
    """The definition after an offline job: the base for an active commit, otherwise the
    same top without a stale explicit chain."""
    if method == "active":
        xml = domxml.repoint_disks(domain.inactive_xml(), {target: (base.path, base.format)})
    else:
        xml, _changed = domxml.strip_backing_stores(domain.inactive_xml(), [target])
    if xml != domain.inactive_xml():
        domain.redefine(xml)


def sync_definition(domain: Domain, disk: LiveDisk, after: Sequence[str],
                     report: Reporter) -> bool:
    """After a live job, the persistent definition must name the new top and no stale
    chain; False when it names something else (then no merged file may be deleted)."""
    if not domain.is_active() or not domain.is_persistent() or not after:
        return True
    persistent = domain.inactive_xml()
    spec = next((item for item in domxml.disks(domxml.parse(persistent))
                 if item.target == disk.target), None)
    if spec is None:
        return True
    if spec.source not in (disk.active.path, after[-1]):
        report.warn(f"{domain.name}: the persistent definition of disk {disk.target} names "
                    f"{spec.source}, not the running chain's top; left as it is, and the "
                    "merged files are kept (that definition may still need them)")
        return False
    top = disk.base if after[-1] == disk.base.path else disk.active
    xml = domxml.repoint_disks(persistent, {disk.target: (top.path, top.format)})
    if xml != persistent:
        domain.redefine(xml)
    return True


def delete_merged(domain: Domain, disk: LiveDisk, method: str, report: Reporter,
                   result: DiskOutcome, users: dict[tuple[int, int], str]) -> None:
    """Delete the files the job made useless: only overlays fibackup created, never the
    base, never a file another domain uses."""
    candidates = [layer for layer in _moved_layers(disk, method) if layer is not disk.base]
    state = host_state.load(domain.uuid)
    removed = set()
    for layer in candidates:
        if not state.created_overlay(layer.path) or _file_key(layer.path) in users:
            result.kept.append(layer.path)
            continue
        remove_quietly(layer.path)
        removed.add(layer.path)
        result.removed.append(layer.path)
    if result.kept:
        report.info(f"{domain.name}: kept {len(result.kept)} merged file(s) that fibackup did "
                    f"not create or another domain uses: {', '.join(result.kept)}")
    if removed:
        state.forget_overlays(removed)
        state.save()
