"""``fibackup consolidate``: shorten each disk's backing chain without breaking a backup.

Methods (docs/CONSOLIDATION.md):

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

Steps 3 and 4 are fibackup/commands/consolidate_job.py.  The entry point, which
journals the run and passes the catch-up snapshot, is ``consolidate_domain`` in
fibackup/commands/compose.py; this module is the consolidation run code below it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from fibackup.commands.common import check_chain, layer_index, require_state, select_disks
from fibackup.commands.consolidate_job import DiskOutcome, consolidate_disk, paths
from fibackup.errors import ImageInUseError, StoreError, UnbackedLayerError, UsageError
from fibackup.fsutil import file_identity
from fibackup.host import state as host_state
from fibackup.host.journal import Journal
from fibackup.model.chain import LiveDisk
from fibackup.model.states import METHODS, Method, Outcome
from fibackup.report import Reporter
from fibackup.store.location import location
from fibackup.store.repo import BackupStore
from fibackup.virt import domxml
from fibackup.virt.chains import live_chain
from fibackup.virt.libvirt_api import Connection, Domain
from fibackup.virt.sharing import Users, images_of_other_domains, inode_of, own_other_disks

__all__ = ["METHODS", "CatchUp", "ConsolidateOptions", "ConsolidateResult", "DiskOutcome",
           "check_options", "consolidate_locked", "journal_options"]


@dataclass
class ConsolidateOptions:
    method: str = "commit"
    """A :class:`~fibackup.model.states.Method` (``commit``, ``active`` or ``pull``)."""
    backup_dir: Optional[str] = None
    bandwidth_mib: int = 0
    timeout: Optional[float] = None
    keep_files: bool = False
    force: bool = False
    disks: Sequence[str] = ()
    exclude: Sequence[str] = ()
    space_check: bool = True


@dataclass
class ConsolidateResult:
    domain: str
    method: str
    live: bool
    disks: list[DiskOutcome] = field(default_factory=list)
    snapshot: Optional[dict[str, object]] = None

    @property
    def aborted(self) -> list[DiskOutcome]:
        return [disk for disk in self.disks if disk.outcome == Outcome.ABORTED]

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


def journal_options(options: ConsolidateOptions) -> dict[str, object]:
    """What repair needs to finish an interrupted run the way it was asked for."""
    return {"method": options.method, "keep_files": options.keep_files,
            "backup_dir": location(options.backup_dir) if options.backup_dir else None}


CatchUp = Callable[[Domain, "ConsolidateOptions", Reporter, Journal], dict[str, object]]
"""Takes a ``snapshot -b`` into ``options.backup_dir`` first (under the same journal), so
that every layer about to be merged is stored; returns its ``--json`` document."""


def consolidate_locked(conn: Connection, domain: Domain, options: ConsolidateOptions,
                       report: Reporter, journal: Journal,
                       catch_up: CatchUp) -> ConsolidateResult:
    """Consolidate a domain whose lock and journal the caller holds
    (fibackup/commands/compose.py, which also passes the ``catch_up`` snapshot)."""
    live = require_state(domain, "consolidation")
    result = ConsolidateResult(domain.name, options.method, live)
    disks = _disks(domain, options)
    users = images_of_other_domains(conn, domain.uuid)
    users.update(own_other_disks(domain, disks))
    disks, work = _backed_up(domain, disks, options, users, report, journal, catch_up, result)
    for disk in disks:
        if disk not in work:
            result.disks.append(DiskOutcome(disk.target, paths(disk), paths(disk),
                                            Outcome.NOTHING, next_backup="unchanged"))
    if not work:
        report.info(f"{domain.name}: nothing to consolidate (every chain is already short)")
        return result
    for disk in work:
        outcome = consolidate_disk(domain, disk, options, live, report, users, journal)
        result.disks.append(outcome)
        if outcome.outcome == Outcome.ABORTED:
            report.warn(f"{domain.name}: the {Method(options.method).job_name} of disk {disk.target} "
                        f"was aborted: {outcome.reason}; the domain keeps its previous chain"
                        + (" and the next backup of that disk starts a new full generation"
                           if options.method == Method.COMMIT else ""))
    result.disks.sort(key=lambda disk: disk.target)
    return result


def _backed_up(domain: Domain, disks: list[LiveDisk], options: ConsolidateOptions,
               users: Users, report: Reporter, journal: Journal, catch_up: CatchUp,
               result: ConsolidateResult) -> tuple[list[LiveDisk], list[LiveDisk]]:
    """The disks and those with work to do, once every layer about to be merged is in
    every backup directory of the domain (after a catch-up snapshot with ``-b``); refused
    otherwise, unless ``--force``."""
    work = _work(disks, options.method)
    _refuse_shared(domain, work, options.method, users)
    missing = _unbacked(domain, work, options, report)
    if missing and options.backup_dir:
        report.info(f"{domain.name}: {_describe(missing)}; taking a snapshot with backup first")
        result.snapshot = catch_up(domain, options, report, journal)
        disks = _disks(domain, options)
        work = _work(disks, options.method)
        _refuse_shared(domain, work, options.method, users)
        still = _unbacked(domain, work, options, report)
        if still:
            raise UnbackedLayerError(f"domain '{domain.name}': after the catch-up backup, "
                                     f"{_describe(still)}; nothing was merged",
                                     domain=domain.name, disk=still[0].target,
                                     path=still[0].path)
    elif missing and not options.force:
        raise UnbackedLayerError(_refusal(domain.name, missing, options.method),
                                 domain=domain.name, disk=missing[0].target,
                                 path=missing[0].path)
    elif missing:
        report.warn(f"{domain.name}: {_describe(missing)}; going on because of --force: that "
                    "restore point is lost and the next backup to that directory starts a new "
                    "full generation")
    return disks, work


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
    least = 3 if method == Method.COMMIT else 2
    return [disk for disk in disks if len(disk.layers) >= least]


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


def _refuse_shared(domain: Domain, work: Sequence[LiveDisk], method: str,
                   users: Users) -> None:
    """Never write into an image another defined domain also uses."""
    if method == Method.PULL:
        return
    for disk in work:
        key = inode_of(disk.base.path)
        if key in users:
            raise ImageInUseError(
                f"domain '{domain.name}': the base image {disk.base.path} of disk {disk.target} "
                f"is also used by {users[key]}; a {method} would write into it and change "
                "that disk's data. Use --method pull (which never writes the base), or "
                "give the domain a base of its own", domain=domain.name, disk=disk.target,
                path=disk.base.path)

