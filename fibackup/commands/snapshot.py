"""``fibackup snapshot``: freeze every selected disk at once, then back up what froze.

Order of work for one domain (the lock is held throughout):

1. read the domain's disks and their chains, select disks, refuse what cannot work;
2. with ``-b``: open the store, plan against the stored layers, check free space;
3. one atomic external disk-only snapshot (new overlays ``<stem>.bimg-<tag>``);
4. keep the persistent definition consistent (no stale explicit ``<backingStore>``);
5. with ``-b``: copy each layer the store lacks (hash in the same pass), its
   record after the data, and the restore point manifest last.
"""
from __future__ import annotations

import datetime as _dt
import os
import time
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

from fibackup.errors import (ConsolidationFailedError, DomainStateError, FibackupError,
                             ImageToolError, InconsistentChainError, NothingTakenError,
                             SnapshotError, StoreUnavailableError, UnsupportedDiskError,
                             UsageError)
from fibackup.fsutil import allocated_bytes, ensure_space, file_identity, host_name, human
from fibackup.commands import domfiles
from fibackup.commands.common import check_chain, layer_index, select_disks
from fibackup.commands.parallel import Guard, IOOptions, run_each
from fibackup.store.chunks import Throttle
from fibackup import faults
from fibackup.host import state as host_state
from fibackup.host.instant import refuse_instant
from fibackup.host.journal import Journal
from fibackup.model import naming
from fibackup.model.chain import (DiskPlan, FileIdentity, FrozenLayer, LayerIndex, LiveDisk,
                                  LiveLayer, StoredLayer, plan_disk)
from fibackup.model.points import PointDisk, PointFile, PointLayer, RestorePoint
from fibackup.qemu import img
from fibackup.report import Reporter
from fibackup.store.backend import location
from fibackup.store.repo import BackupStore
from fibackup.virt import domxml
from fibackup.virt.chains import live_chain
from fibackup.virt.libvirt_api import Connection, Domain


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


def snapshot_domain(conn: Connection, name: str, options: SnapshotOptions,
                    report: Reporter) -> SnapshotResult:
    _check_options(options)
    from fibackup.commands.repair import journalled
    domain = conn.domain(name)
    refuse_instant(domain.uuid, domain.name, "snapshot")
    with journalled(conn, domain, "snapshot", _journal_options(options), report) as journal:
        result = snapshot_locked(domain, options, report, journal)
        _consolidate_after(conn, domain, options, result, report, journal)
        return result


def _journal_options(options: SnapshotOptions) -> dict[str, object]:
    return {"backup_dir": location(options.backup_dir) if options.backup_dir else None,
            "consolidate": options.consolidate, "max_chain": options.max_chain}


def _check_options(options: SnapshotOptions) -> None:
    from fibackup.commands.consolidate import METHODS
    if options.consolidate is not None and options.consolidate not in METHODS:
        raise UsageError(f"unknown consolidation method '{options.consolidate}'; use one of "
                         f"{', '.join(METHODS)}")
    if options.max_chain is not None and options.max_chain < 2:
        raise UsageError("--max-chain must be at least 2 (the base and the active layer)")


def _consolidate_after(conn: Connection, domain: Domain, options: SnapshotOptions,
                       result: SnapshotResult, report: Reporter, journal: Journal) -> None:
    """fi-backup's -C, and the --max-chain bound; warn about long chains otherwise."""
    from fibackup.commands.consolidate import ConsolidateOptions, consolidate_locked
    longest = max(len(disk) for disk in result.chains.values()) if result.chains else 0
    method = options.consolidate
    if method is None and options.max_chain is not None and longest > options.max_chain:
        report.info(f"{domain.name}: a chain has {longest} layers, more than --max-chain "
                    f"{options.max_chain}: consolidating (commit)")
        method = "commit"
    if method is None:
        if longest > CHAIN_WARNING:
            report.warn(f"{domain.name}: a disk's backing chain has {longest} layers; long "
                        "chains slow the guest down and libvirt refuses more than 200: run "
                        f"'fibackup consolidate -d {domain.name}' or use --max-chain")
        return
    try:
        outcome = consolidate_locked(conn, domain, ConsolidateOptions(
            method=method, backup_dir=options.backup_dir, disks=options.disks,
            exclude=options.exclude, space_check=options.space_check), report, journal)
    except FibackupError as error:
        stored = f"restore point {result.point.id} is stored" if result.point else \
            f"snapshot {result.tag} was taken"
        raise ConsolidationFailedError(f"{stored}, but the consolidation failed: {error}") from None
    result.consolidation = outcome.to_json()


def snapshot_locked(domain: Domain, options: SnapshotOptions, report: Reporter,
                    journal: Journal) -> SnapshotResult:
    """The snapshot and, with a backup directory, the backup, holding the store's lock on
    the domain meanwhile (a prune, maybe on another host, waits for it)."""
    if options.backup_dir is None:
        return _snapshot_and_back_up(domain, options, report, journal, None)
    store = _open_store(options.backup_dir)
    waiting = (lambda: report.info(f"{domain.name}: waiting for another fibackup run on its "
                                   f"part of {store.root} (a prune or backup, maybe on "
                                   "another host)"))
    with store.domain_lock(domain.uuid, waiting=waiting):
        return _snapshot_and_back_up(domain, options, report, journal, store)


def _snapshot_and_back_up(domain: Domain, options: SnapshotOptions, report: Reporter,
                          journal: Journal, store: Optional[BackupStore]) -> SnapshotResult:
    _check_state(domain)
    if options.quiesce and not options.quiesce_fallback and not domain.is_active():
        raise UsageError(f"domain '{domain.name}' is shut off: there is nothing to quiesce; "
                         "run without --quiesce")
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
    extra_files = domfiles.source_files(current, domain.uuid) if store else []
    backup = _prepare_backup(store, domain, disks, extra_files, options) if store else None

    moment = _dt.datetime.now(_dt.timezone.utc)
    tag = _free_tag(naming.timestamp_tag(moment), disks, backup[0] if backup else None,
                    domain.uuid)
    overlays = naming.overlay_paths(_actives(disks), tag)
    step = journal.start("snapshot.take", tag=tag, overlays=overlays)
    started = time.perf_counter()
    quiesced = _snapshot_with_policy(domain, overlays, [spec.target for spec in specs],
                                     options, report)
    snapshot_seconds = time.perf_counter() - started
    remember_overlays(domain.uuid, overlays, tag)
    journal.done(step)
    try:
        saved = _save_files(backup[0], domain, extra_files, tag, report, journal) if backup else []
    except BaseException:
        tidy_persistent_xml(domain, overlays)        # the definition stays consistent anyway
        raise
    report.info(f"{domain.name}: snapshot {tag} taken "
                f"({', '.join(f'{t} -> {os.path.basename(p)}' for t, p in overlays.items())})")
    _check_new_chains(domain, disks, overlays)
    step = journal.start("snapshot.tidy-xml", overlays=overlays)
    tidy_persistent_xml(domain, overlays)
    journal.done(step)

    result = SnapshotResult(domain.name, tag, overlays, skipped=list(selection.skipped))
    result.timings["snapshot"] = snapshot_seconds
    result.quiesced = quiesced
    result.chains = {disk.target: [*(layer.path for layer in disk.layers), overlays[disk.target]]
                     for disk in disks}
    if backup is not None:
        point = RestorePoint(
            id=tag, seq=0, time=moment.strftime("%Y-%m-%dT%H:%M:%SZ"), domain_name=domain.name,
            domain_uuid=domain.uuid, host=host_name(), disks={}, domain_xml=config_xml,
            quiesced=quiesced,
            skipped_disks=tuple(target for target, _ in selection.skipped), files=tuple(saved))
        result.bytes_copied += sum(item.size for item in saved if item.new)
        started = time.perf_counter()
        try:
            _back_up(backup[0], backup[1], domain, disks, point, result, report, journal,
                     options)
        except OSError as error:
            _store_gone(backup[0], tag, error)
            raise
        result.timings["backup"] = time.perf_counter() - started
    return result


def _store_gone(store: BackupStore, tag: str, error: OSError) -> None:
    """Name a backup directory that vanished mid-run (unmounted, removed) as such."""
    if store.has_marker():
        return
    raise StoreUnavailableError(
        f"the backup directory {store.root} disappeared during the backup ({error.strerror}; "
        f"unmounted or removed?); no restore point was made. Snapshot {tag} was taken: the "
        "next 'fibackup snapshot -b' copies its frozen layers") from None


def _prepare_backup(store: BackupStore, domain: Domain, disks: Sequence[LiveDisk],
                    extra_files: Sequence[domfiles.SourceFile],
                    options: SnapshotOptions) -> tuple[BackupStore, LayerIndex]:
    """Check, before any snapshot, that the backup into ``store`` can be made."""
    index = layer_index(store, domain.uuid)
    needed = _preflight(domain.name, disks, index) + domfiles.planned_bytes(extra_files)
    if options.space_check and store.backend.capabilities.space_check:
        ensure_space(store.root, needed, f"the backup of domain '{domain.name}'")
    return store, index


def _back_up(store: BackupStore, index: LayerIndex, domain: Domain, disks: Sequence[LiveDisk],
             draft: RestorePoint, result: SnapshotResult, report: Reporter,
             journal: Journal, options: SnapshotOptions) -> None:
    """Copy what the store lacks of each now-frozen chain (disks in parallel), then
    publish the point."""
    plans = [plan_disk(disk.target, _frozen(domain, disk, index), index) for disk in disks]
    state = host_state.load(domain.uuid)
    for disk, plan in zip(disks, plans):
        if plan.new_generation and index.has_disk(disk.target):
            result.new_generation.append(disk.target)
            report.info(f"{domain.name}: disk {disk.target} starts a new full copy "
                        f"({_new_generation_reason(plan, state.last_consolidation(disk.target))})")
    throttle = options.io.throttle()

    def copy_disk(item: tuple[LiveDisk, DiskPlan], guard: Guard) -> tuple[PointDisk, int]:
        disk, plan = item
        return _back_up_disk(store, domain, disk, plan, draft.id, report, journal,
                             throttle, guard, options.io.reflink)

    copied = run_each(list(zip(disks, plans)), copy_disk, options.io.jobs, throttle)
    point_disks = {disk.target: point_disk for disk, (point_disk, _) in zip(disks, copied)}
    result.bytes_copied += sum(count for _, count in copied)
    point = replace(draft, seq=store.next_seq(domain.uuid), disks=point_disks)
    step = journal.start("backup.publish", store=store.root, point=point.id)
    host_state_before = host_state.load(domain.uuid)
    if host_state_before.remember_definition(point.domain_xml):
        host_state_before.save()                   # before the point exists that names it
    result.point = store.publish_point(point)
    journal.done(step, seq=result.point.seq)
    remember_store(domain.uuid, store)
    report.info(f"{domain.name}: restore point {point.id} (#{result.point.seq}) stored in "
                f"{store.root}: {human(result.bytes_copied)} copied")


def _save_files(store: BackupStore, domain: Domain, files: Sequence[domfiles.SourceFile],
                tag: str, report: Reporter, journal: Journal) -> list[PointFile]:
    """Store the domain's NVRAM, TPM state and boot files, right after the snapshot."""
    if not files:
        return []
    step = journal.start("backup.files", store=store.root)
    try:
        saved = domfiles.save_files(store, domain.uuid, domain.name, files, report)
    except OSError as error:
        _store_gone(store, tag, error)
        raise
    journal.done(step, files=len(saved))
    return saved


def _new_generation_reason(plan: DiskPlan,
                           last: Optional[host_state.Consolidation]) -> str:
    """Why a disk with stored layers gets a full copy, naming the last consolidation."""
    if last is None:
        return plan.reason
    if last.outcome == "merged" and last.method == "commit":
        return (f"{plan.reason}; its last consolidation, a commit on {last.time}, cannot be "
                "mapped onto this backup's layers (they were not all stored here)")
    what = {"active": "an active commit", "pull": "a pull", "commit": "a commit"}.get(
        last.method, last.method)
    outcome = "" if last.outcome == "merged" else f" ({last.outcome})"
    return f"{plan.reason}; the chain was consolidated by {what}{outcome} on {last.time}"


def _open_store(path: str) -> BackupStore:
    store = BackupStore.open(path, create=True)
    store.check_writable()
    return store


def _preflight(name: str, disks: Sequence[LiveDisk], index: LayerIndex) -> int:
    """Check the layers the backup will copy; return the bytes it will write at most.

    Of the active layer only the image header is inspected (qemu-img -U): its
    data is never read, and it cannot be in the store yet.
    """
    total = 0
    for disk in disks:
        covered = index.covered([file_identity(layer.path) for layer in disk.layers[:-1]])
        for layer in disk.layers[covered:]:
            info = img.info(layer.path, layer.format, force_share=True)
            _refuse_data_file(name, disk.target, info)
            if layer is disk.base and info.backing_file:
                raise UnsupportedDiskError(
                    f"domain '{name}': the definition of disk {disk.target} ends its chain at "
                    f"{layer.path}, but that image's header names the backing file "
                    f"{info.backing_file}; fibackup cannot be sure which data the guest sees. "
                    "Remove the explicit <backingStore/> from the disk, or leave it out with "
                    f"--exclude-disk {disk.target}")
            total += allocated_bytes(layer.path)
    return total


def _refuse_data_file(name: str, target: str, info: img.ImageInfo) -> None:
    if info.data_file:
        raise UnsupportedDiskError(
            f"domain '{name}': disk {target} layer {info.path} keeps its data in the external "
            f"file {info.data_file}, which fibackup does not back up; leave the disk out with "
            f"--exclude-disk {target}")


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
        moved = [target for target, path in current_tops(domain).items() if overlays.get(target) == path]
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


def remember_overlays(domain_uuid: str, overlays: dict[str, str], tag: str) -> None:
    state = host_state.load(domain_uuid)
    new = [{"disk": target, "path": path, "tag": tag} for target, path in overlays.items()
           if not state.created_overlay(path)]
    if new:
        state.overlays.extend(new)
        state.save()


def remember_store(domain_uuid: str, store: BackupStore, definition: str = "") -> None:
    """Consolidation checks every backup directory a domain was backed up to; restore
    defines without checking only the definitions this host stored."""
    state = host_state.load(domain_uuid)
    changed = bool(definition) and state.remember_definition(definition)
    if state.stores.get(store.store_id) != store.root:
        state.stores[store.store_id] = store.root
        changed = True
    if changed:
        state.save()


def current_tops(domain: Domain) -> dict[str, Optional[str]]:
    return {spec.target: spec.source for spec in domxml.disks(domxml.parse(domain.current_xml()))}


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


def tidy_persistent_xml(domain: Domain, overlays: dict[str, str]) -> None:
    """Drop the explicit chain libvirt writes into the persistent XML after a live snapshot.

    An explicit ``<backingStore>`` wins over the image headers, so a stale one
    (after any later offline change) would silently open the wrong files.
    """
    if not domain.is_persistent():
        return
    persistent = domain.inactive_xml()
    specs = {spec.target: spec for spec in domxml.disks(domxml.parse(persistent))}
    targets = [target for target, path in overlays.items()
               if specs.get(target) is not None and specs[target].source == path]
    xml, changed = domxml.strip_backing_stores(persistent, targets)
    if changed:
        domain.redefine(xml)


def _frozen(domain: Domain, disk: LiveDisk, index: LayerIndex) -> list[FrozenLayer]:
    """Facts about each now-frozen layer.

    A layer the store already holds (same identity) takes its virtual size from
    the store; any other is inspected with qemu-img without -U, whose lock check
    fails on an image QEMU still writes to, i.e. one that is not frozen.
    """
    frozen = []
    for layer in disk.layers:
        identity = file_identity(layer.path)
        stored = index.find_any(identity)
        if stored is None:
            info = _frozen_info(domain, disk.target, layer)
            _refuse_data_file(domain.name, disk.target, info)
            virtual_size = info.virtual_size
        else:
            virtual_size = stored.virtual_size
        frozen.append(FrozenLayer(layer, identity, virtual_size))
    return frozen


def _frozen_info(domain: Domain, target: str, layer: LiveLayer) -> img.ImageInfo:
    """qemu-img info of a backing layer, which QEMU must not be writing to.

    After a cancelled commit QEMU keeps the write lock on the base although
    nothing writes it any more: that base is still accepted when the host state
    says fibackup's last job on the disk was cancelled with this base, libvirt
    names it as a backing layer, and no block job runs on the disk (the copy
    itself checks that the file does not change).
    """
    try:
        return img.info(layer.path, layer.format)
    except ImageToolError as error:
        last = host_state.load(domain.uuid).last_consolidation(target)
        cancelled_here = (last is not None and last.outcome in ("aborted", "failed")
                          and os.path.realpath(last.base) == os.path.realpath(layer.path))
        if "another process" not in str(error) or not cancelled_here or not domain.is_active() \
                or domain.block_job_running(target):
            raise
    return img.info(layer.path, layer.format, force_share=True)


def _back_up_disk(store: BackupStore, domain: Domain, disk: LiveDisk, plan: DiskPlan, tag: str,
                  report: Reporter, journal: Journal, throttle: Optional[Throttle],
                  guard: Guard, clone: bool) -> tuple[PointDisk, int]:
    """Copy one disk's missing layers in order; its point entry and the bytes copied."""
    layers = [_point_layer(stored, new=False) for stored in plan.reuse]
    parent = plan.parent_of_first_copy
    start = len(plan.reuse)
    copied = 0
    for position, item in enumerate(plan.copy, start=start):
        guard.check()                                 # another disk failed: start nothing
        layer_id = naming.new_layer_id(tag, disk.target, position)
        report.info(f"{domain.name}: copying {disk.target} layer {item.layer.path}")
        step = journal.start("backup.copy", store=store.root, disk=disk.target, layer=layer_id,
                             source=item.layer.path)
        with report.progress(f"{disk.target} {os.path.basename(item.layer.path)}",
                             allocated_bytes(item.layer.path)) as bar:
            stored = store.store_layer(domain.uuid, layer_id, item.layer.path, item.layer.format,
                                       item.virtual_size, parent, disk.target, item.identity,
                                       progress=guard(faults.counting(bar)), throttle=throttle,
                                       clone=clone, check_source=lambda path=item.layer.path,
                                       want=item.identity: _unchanged(path, want))
        journal.done(step)
        layers.append(_point_layer(stored, new=True))
        copied += stored.data_bytes
        parent = stored.id
    point_disk = PointDisk(target=disk.target, virtual_size=layers[-1].virtual_size,
                           layers=tuple(layers), source_path=disk.active.path)
    return point_disk, copied


def _unchanged(path: str, identity: FileIdentity) -> None:
    if file_identity(path) != identity:
        raise InconsistentChainError(
            f"{path} changed while it was being copied although it should be frozen; the "
            "copy was discarded and no restore point was made")


def _point_layer(stored: StoredLayer, new: bool) -> PointLayer:
    return PointLayer(stored.id, stored.image_format, stored.size, stored.virtual_size,
                      stored.digest, new=new, data_bytes=stored.data_bytes)


def _check_state(domain: Domain) -> None:
    if domain.state_name() not in ("running", "paused", "shut off"):
        raise DomainStateError(f"domain '{domain.name}' is {domain.state_name()}; "
                               "snapshot needs it running, paused or shut off")
