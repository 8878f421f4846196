"""``fibackup snapshot``: freeze every selected disk at once, then back up what froze.

Order of work for one domain (the lock is held throughout):

1. read the domain's disks and their chains, select disks, refuse what cannot work;
2. with ``-b``: open the store, plan against the stored layers, check free space;
3. one atomic external disk-only snapshot (new overlays ``<stem>.bimg-<tag>``);
4. keep the persistent definition consistent (no stale explicit ``<backingStore>``);
5. with ``-b``: copy each layer the store lacks (hash in the same pass), its
   record after the data, and the restore point manifest last
   (fibackup/commands/backup.py).

The entry point, which journals the run and consolidates after it with
``--consolidate``/``--max-chain``, is ``snapshot_domain`` in
fibackup/commands/compose.py; this module is the snapshot run code below it.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import ContextManager, Optional, Sequence

from fibackup.commands import backup as backups
from fibackup.commands import domfiles
from fibackup.commands.common import check_chain, require_state, select_disks
from fibackup.commands.parallel import IOOptions
from fibackup.errors import (InconsistentChainError, NothingTakenError, SnapshotError,
                             UsageError)
from fibackup.fsutil import host_name, human
from fibackup.host import state as host_state
from fibackup.host.journal import Journal
from fibackup.model import naming
from fibackup.model.chain import LayerIndex, LiveDisk
from fibackup.model.points import PointFile, RestorePoint
from fibackup.model.states import METHODS
from fibackup.report import Reporter
from fibackup.store.location import location
from fibackup.store.opening import FORMAT_3, NewStore
from fibackup.store.repo import BackupStore
from fibackup.store.v3.locks import store_lock
from fibackup.virt import domxml
from fibackup.virt.chains import live_chain
from fibackup.virt.disks import current_tops, tidy_persistent_xml
from fibackup.virt.libvirt_api import Domain


@dataclass
class SnapshotOptions:
    backup_dir: Optional[str] = None
    disks: Sequence[str] = ()
    exclude: Sequence[str] = ()
    quiesce: bool = False
    quiesce_fallback: bool = False
    """Try to quiesce; without a guest agent take a crash-consistent snapshot, warning."""
    space_check: bool = True
    consolidate: Optional[str] = None
    """Consolidate with this method right after the snapshot (and backup)."""
    max_chain: Optional[int] = None
    """Consolidate (commit) when a disk's chain has more layers than this."""
    io: IOOptions = field(default_factory=IOOptions)
    new_store: NewStore = FORMAT_3
    """What an empty backup location becomes (the configuration file's [store])."""

    @staticmethod
    def check_flags(*, backup_dir: Optional[str] = None, no_backup: bool = False,
                    quiesce: bool = False, quiesce_fallback: bool = False,
                    no_quiesce: bool = False) -> None:
        """The command line's contradictions (UsageError), checked before the
        configuration file fills in what the flags leave open."""
        if no_quiesce and (quiesce or quiesce_fallback):
            raise UsageError("--no-quiesce contradicts --quiesce and --quiesce-fallback; "
                             "pass one")
        if no_backup and backup_dir is not None:
            raise UsageError("--no-backup contradicts -b; pass one")


@dataclass
class SnapshotResult:
    domain: str
    tag: str
    overlays: dict[str, str]
    point: Optional[RestorePoint] = None
    bytes_copied: int = 0
    new_generation: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    consolidation: Optional[dict[str, object]] = None
    chains: dict[str, list[str]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent in each phase: ``snapshot`` (the libvirt call alone), ``backup``."""
    quiesced: bool = False
    """Whether the guest's filesystems were frozen (application-consistent)."""

    def to_json(self) -> dict[str, object]:
        return {"domain": self.domain, "tag": self.tag, "overlays": self.overlays,
                "point": self.point.id if self.point else None,
                "seq": self.point.seq if self.point else None,
                "bytes_copied": self.bytes_copied, "new_generation": self.new_generation,
                "skipped": [{"disk": disk, "reason": why} for disk, why in self.skipped],
                "consolidation": self.consolidation, "quiesced": self.quiesced,
                "timings": {phase: round(seconds, 4) for phase, seconds in self.timings.items()}}


CHAIN_WARNING = 32
"""Warn when a disk's chain has more layers than this (libvirt refuses beyond 200)."""


def journal_options(options: SnapshotOptions) -> dict[str, object]:
    """What repair needs to know of the run (its journal's options)."""
    return {"backup_dir": location(options.backup_dir) if options.backup_dir else None,
            "consolidate": options.consolidate, "max_chain": options.max_chain}


def check_options(options: SnapshotOptions) -> None:
    if options.consolidate is not None and options.consolidate not in METHODS:
        raise UsageError(f"unknown consolidation method '{options.consolidate}'; use one of "
                         f"{', '.join(METHODS)}")
    if options.max_chain is not None and options.max_chain < 2:
        raise UsageError("--max-chain must be at least 2 (the base and the active layer)")


def snapshot_locked(domain: Domain, options: SnapshotOptions, report: Reporter,
                    journal: Journal) -> SnapshotResult:
    """The snapshot and, with a backup directory, the backup, holding the store's lock on
    the domain meanwhile (a prune, maybe on another host, waits for it).  The caller
    holds the domain's lock and journal (fibackup/commands/compose.py)."""
    if options.backup_dir is None:
        return _snapshot_and_back_up(domain, options, report, journal, None)
    store = backups.open_store(options.backup_dir, options.new_store)
    if store.chunks is not None:
        store.chunks.unlock_soon()                 # while the snapshot is taken
    waiting = (lambda: report.info(f"{domain.name}: waiting for another fibackup run on its "
                                   f"part of {store.root} (a prune or backup, maybe on "
                                   "another host)"))
    with store.domain_lock(domain.uuid, waiting=waiting), _reuse_lock(store, domain, report):
        return _snapshot_and_back_up(domain, options, report, journal, store)


def _reuse_lock(store: BackupStore, domain: Domain, report: Reporter) -> ContextManager[None]:
    """Format 3: the store's shared lock, from before the backup decides which chunks it
    reuses until its point is published (garbage collection takes it exclusively)."""
    if store.chunks is None:
        return contextlib.nullcontext()
    return store_lock(store.backend, exclusive=False, command=f"snapshot -b of {domain.name}",
                      waiting=lambda holder: report.info(
                          f"{domain.name}: the backup waits for {holder} in {store.root}"))


@dataclass
class _Selected:
    """What a snapshot works on, read before anything changes."""

    config_xml: str
    """The persistent definition, stored with the restore point."""
    targets: list[str]
    """Every disk of the domain (the snapshot names the others as not taken)."""
    selection: domxml.Selection
    disks: list[LiveDisk]
    extra_files: list[domfiles.SourceFile]
    """NVRAM, TPM state and boot files (only with a backup)."""


def _select(domain: Domain, options: SnapshotOptions, report: Reporter,
            backing_up: bool) -> _Selected:
    """Read the domain's disks and their chains, select disks, refuse what cannot work."""
    require_state(domain, "snapshot")
    if options.quiesce and not options.quiesce_fallback and not domain.is_active():
        raise UsageError(f"domain '{domain.name}' is shut off: there is nothing to quiesce; "
                         "run without --quiesce", domain=domain.name)
    config_xml = domain.inactive_xml()
    current = domxml.parse(domain.current_xml())
    specs = domxml.disks(current)
    selection = select_disks(domain.name, specs, options.disks, options.exclude)
    for target, why in selection.skipped:
        report.info(f"{domain.name}: skipping disk {target} ({why})")
    disks = [LiveDisk(spec.target, live_chain(spec, domain.is_active()))
             for spec in selection.selected]
    for disk in disks:
        check_chain(domain.name, disk)
    extra_files = domfiles.source_files(current, domain.uuid) if backing_up else []
    return _Selected(config_xml, [spec.target for spec in specs], selection, disks, extra_files)


def _snapshot_and_back_up(domain: Domain, options: SnapshotOptions, report: Reporter,
                          journal: Journal, store: Optional[BackupStore]) -> SnapshotResult:
    chosen = _select(domain, options, report, store is not None)
    backup = backups.prepare_backup(store, domain, chosen.disks, chosen.extra_files,
                                    options.space_check, report) if store else None
    moment = naming.utc_moment()
    tag = _free_tag(naming.timestamp_tag(moment), chosen.disks, store, domain.uuid)
    result = SnapshotResult(domain.name, tag, naming.overlay_paths(_actives(chosen.disks), tag),
                            skipped=list(chosen.selection.skipped))
    saved = _take(domain, chosen, result, options, report, journal, store)
    if backup is not None:
        point = RestorePoint(
            id=tag, seq=0, time=naming.utc_time(moment), domain_name=domain.name,
            domain_uuid=domain.uuid, host=host_name(), disks={}, domain_xml=chosen.config_xml,
            quiesced=result.quiesced,
            skipped_disks=tuple(target for target, _ in chosen.selection.skipped),
            files=tuple(saved))
        result.bytes_copied += sum(item.size for item in saved if item.new)
        _back_up(backup, domain, chosen.disks, point, result, report, journal, options)
    return result


def _take(domain: Domain, chosen: _Selected, result: SnapshotResult, options: SnapshotOptions,
          report: Reporter, journal: Journal, store: Optional[BackupStore]) -> list[PointFile]:
    """The snapshot itself, the domain's files right after it (with a backup), and the
    persistent definition made consistent; the files saved."""
    tag, overlays = result.tag, result.overlays
    step = journal.start("snapshot.take", tag=tag, overlays=overlays)
    started = time.perf_counter()
    result.quiesced = _snapshot_with_policy(domain, overlays, chosen.targets, options, report)
    result.timings["snapshot"] = time.perf_counter() - started
    host_state.remember_overlays(domain.uuid, overlays, tag)
    journal.done(step)
    try:
        saved = backups.save_files(store, domain, chosen.extra_files, tag, report,
                                   journal) if store else []
    except BaseException:
        tidy_persistent_xml(domain, overlays)        # the definition stays consistent anyway
        raise
    report.info(f"{domain.name}: snapshot {tag} taken "
                f"({', '.join(f'{t} -> {os.path.basename(p)}' for t, p in overlays.items())})")
    _check_new_chains(domain, chosen.disks, overlays)
    step = journal.start("snapshot.tidy-xml", overlays=overlays)
    tidy_persistent_xml(domain, overlays)
    journal.done(step)
    result.chains = {disk.target: [*(layer.path for layer in disk.layers), overlays[disk.target]]
                     for disk in chosen.disks}
    return saved


def _back_up(backup: tuple[BackupStore, LayerIndex], domain: Domain, disks: Sequence[LiveDisk],
             point: RestorePoint, result: SnapshotResult, report: Reporter, journal: Journal,
             options: SnapshotOptions) -> None:
    store, index = backup
    started = time.perf_counter()
    try:
        made = backups.back_up(store, index, domain, disks, point, report, journal, options.io)
    except OSError as error:
        backups.store_gone(store, result.tag, error)
        raise
    result.point = made.point
    result.new_generation.extend(made.new_generation)
    result.bytes_copied += made.bytes_copied
    moved = f"{human(result.bytes_copied)} copied" if store.chunks is None else \
        f"{human(result.bytes_copied)} read, {human(made.point.bytes_new)} stored"
    report.info(f"{domain.name}: restore point {made.point.id} (#{made.point.seq}) stored in "
                f"{store.root}: {moved}")
    result.timings["backup"] = time.perf_counter() - started


def _snapshot_with_policy(domain: Domain, overlays: dict[str, str], targets: Sequence[str],
                          options: SnapshotOptions, report: Reporter) -> bool:
    """Take the snapshot as the quiesce policy says; whether it was quiesced.

    ``--quiesce`` fails without a guest agent; ``--quiesce-fallback`` then takes a
    crash-consistent snapshot instead, with a warning, but only when the quiesced
    attempt took nothing (a partly taken snapshot is never retried).
    """
    if not options.quiesce_fallback:
        _take_snapshot(domain, overlays, targets, options.quiesce)
        return options.quiesce
    if not domain.is_active():
        _take_snapshot(domain, overlays, targets, False)   # shut off: consistent as it is
        return False
    try:
        _take_snapshot(domain, overlays, targets, True)
        return True
    except NothingTakenError as error:
        report.warn(f"{domain.name}: {error.cause}; taking a crash-consistent snapshot instead "
                    "(restore point not application-consistent)")
    _take_snapshot(domain, overlays, targets, False)
    return False


def _take_snapshot(domain: Domain, overlays: dict[str, str], targets: Sequence[str],
                   quiesce: bool) -> None:
    try:
        domain.snapshot(domxml.snapshot_xml(overlays, targets), quiesce)
    except SnapshotError as error:
        moved = [target for target, path in current_tops(domain).items()
                 if overlays.get(target) == path]
        if not moved:
            raise NothingTakenError(f"{error}. No snapshot was taken", str(error)) from None
        raise SnapshotError(
            f"{error}. The snapshot was nevertheless taken: disk(s) {', '.join(moved)} now "
            "write to new overlays; no backup was made, and the next 'fibackup snapshot -b' "
            "will copy the frozen layers") from None


def _free_tag(base: str, disks: Sequence[LiveDisk], store: Optional[BackupStore],
              domain_uuid: str) -> str:
    point_ids = {point.id for point in store.points(domain_uuid, problems=[])} if store else set()

    def taken(tag: str) -> bool:
        return tag in point_ids or any(
            os.path.lexists(path) for path in naming.overlay_paths(_actives(disks), tag).values())

    return naming.unique_tag(base, taken)


def _actives(disks: Sequence[LiveDisk]) -> dict[str, str]:
    return {disk.target: disk.active.path for disk in disks}


def _check_new_chains(domain: Domain, disks: Sequence[LiveDisk], overlays: dict[str, str]) -> None:
    """After the snapshot each disk must be exactly its old chain plus the new overlay."""
    running = domain.is_active()
    specs = {spec.target: spec for spec in domxml.disks(domxml.parse(domain.current_xml()))}
    for disk in disks:
        spec = specs.get(disk.target)
        chain = [layer.path for layer in live_chain(spec, running)] if spec and spec.source else []
        expected = [layer.path for layer in disk.layers] + [overlays[disk.target]]
        if chain != expected:
            raise InconsistentChainError(
                f"after the snapshot, disk {disk.target} of '{domain.name}' has the chain "
                f"{' <- '.join(chain) or 'none'} instead of {' <- '.join(expected)}; no backup "
                f"was made: check 'virsh domblklist {domain.name}' before going on")

