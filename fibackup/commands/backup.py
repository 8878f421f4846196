"""The backup half of ``fibackup snapshot -b``: plan against the store, copy, publish.

Before the snapshot, :func:`prepare_backup` checks the layers the backup will
copy and the free space; after it, :func:`back_up` copies each now-frozen layer
the store lacks (disks in parallel, each layer hashed in the same pass, its
record after its data) and publishes the restore point manifest last.  Called
by fibackup/commands/snapshot.py, which holds the domain's and the store's lock.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

from fibackup import faults
from fibackup.commands import chunked, domfiles
from fibackup.commands.common import layer_index
from fibackup.commands.parallel import Guard, IOOptions, run_each
from fibackup.errors import ImageToolError, StoreUnavailableError, UnsupportedDiskError
from fibackup.fsutil import allocated_bytes, ensure_space, file_identity
from fibackup.host import state as host_state
from fibackup.host.journal import Journal
from fibackup.model import naming
from fibackup.model.chain import DiskPlan, FrozenLayer, LayerIndex, LiveDisk, LiveLayer, plan_disk
from fibackup.model.points import PointDisk, PointFile, PointLayer, RestorePoint
from fibackup.model.states import Method, Outcome
from fibackup.qemu import img
from fibackup.report import Reporter
from fibackup.store.chunks import Throttle
from fibackup.store.opening import FORMAT_3, NewStore
from fibackup.store.repo import BackupStore
from fibackup.virt.libvirt_api import Domain


def store_gone(store: BackupStore, tag: str, error: OSError) -> None:
    """Name a backup directory that vanished mid-run (unmounted, removed) as such."""
    if store.has_marker():
        return
    raise StoreUnavailableError(
        f"the backup directory {store.root} disappeared during the backup ({error.strerror}; "
        f"unmounted or removed?); no restore point was made. Snapshot {tag} was taken: the "
        "next 'fibackup snapshot -b' copies its frozen layers") from None


@dataclass
class Backup:
    """What :func:`back_up` made."""

    point: RestorePoint
    """As published (its ``seq`` set)."""
    bytes_copied: int
    """Bytes of the layers copied (the domain's files not counted)."""
    new_generation: list[str] = field(default_factory=list)
    """Disks with stored layers that got a new full copy."""


def prepare_backup(store: BackupStore, domain: Domain, disks: Sequence[LiveDisk],
                   extra_files: Sequence[domfiles.SourceFile], space_check: bool,
                   report: Reporter) -> tuple[BackupStore, LayerIndex]:
    """Check, before any snapshot, that the backup into ``store`` can be made."""
    state = host_state.load(domain.uuid)
    index = layer_index(store, domain.uuid, state)
    problem = host_state.rollback(state, store.store_id, store.root, [
        (point.id, point.seq) for point in store.points(domain.uuid, problems=[])])
    if problem is not None:
        report.warn(f"{domain.name}: {problem}")
    needed = _preflight(domain.name, disks, index) + domfiles.planned_bytes(extra_files)
    if space_check and store.backend.capabilities.space_check:
        ensure_space(store.root, needed, f"the backup of domain '{domain.name}'")
    return store, index


def back_up(store: BackupStore, index: LayerIndex, domain: Domain, disks: Sequence[LiveDisk],
            draft: RestorePoint, report: Reporter, journal: Journal, io: IOOptions) -> Backup:
    """Copy what the store lacks of each now-frozen chain (disks in parallel), then
    publish the point."""
    plans = [plan_disk(disk.target, _frozen(domain, disk, index), index) for disk in disks]
    state = host_state.load(domain.uuid)
    new_generation = []
    for disk, plan in zip(disks, plans):
        if plan.new_generation and index.has_disk(disk.target):
            new_generation.append(disk.target)
            report.info(f"{domain.name}: disk {disk.target} starts a new full copy "
                        f"({_new_generation_reason(plan, state.last_consolidation(disk.target))})")
    throttle = io.throttle()

    earlier = store.points(domain.uuid, problems=[]) if store.chunks is not None else []

    def copy_disk(item: tuple[LiveDisk, DiskPlan], guard: Guard) -> tuple[PointDisk, int]:
        disk, plan = item
        if store.chunks is not None:
            return chunked.back_up_disk(store, earlier, domain.uuid, domain.name, disk, plan,
                                        draft.id, report, journal, throttle, guard)
        return _back_up_disk(store, domain, disk, plan, draft.id, report, journal,
                             throttle, guard, io.reflink)

    copied = run_each(list(zip(disks, plans)), copy_disk, io.jobs, throttle)
    point_disks = {disk.target: point_disk for disk, (point_disk, _) in zip(disks, copied)}
    point = replace(draft, seq=store.next_seq(domain.uuid), disks=point_disks,
                    format=store.version)
    step = journal.start("backup.publish", store=store.root, point=point.id)
    host_state_before = host_state.load(domain.uuid)
    if host_state_before.remember_definition(point.domain_xml):
        host_state_before.save()                   # before the point exists that names it
    published = store.publish_point(point)
    journal.done(step, seq=published.seq)
    host_state.remember_store(domain.uuid, store.store_id, store.root,
                              (published.id, published.seq, published.time))
    return Backup(published, sum(count for _, count in copied), new_generation)


def save_files(store: BackupStore, domain: Domain, files: Sequence[domfiles.SourceFile],
                tag: str, report: Reporter, journal: Journal) -> list[PointFile]:
    """Store the domain's NVRAM, TPM state and boot files, right after the snapshot."""
    if not files:
        return []
    step = journal.start("backup.files", store=store.root)
    try:
        saved = domfiles.save_files(store, domain.uuid, domain.name, files, report)
    except OSError as error:
        store_gone(store, tag, error)
        raise
    journal.done(step, files=len(saved))
    return saved


def _new_generation_reason(plan: DiskPlan,
                           last: Optional[host_state.Consolidation]) -> str:
    """Why a disk with stored layers gets a full copy, naming the last consolidation."""
    if last is None:
        return plan.reason
    if last.outcome == Outcome.MERGED and last.method == Method.COMMIT:
        return (f"{plan.reason}; its last consolidation, a commit on {last.time}, cannot be "
                "mapped onto this backup's layers (they were not all stored here)")
    names: dict[str, str] = {Method.ACTIVE: "an active commit", Method.PULL: "a pull",
                             Method.COMMIT: "a commit"}
    what = names.get(last.method, last.method)
    outcome = "" if last.outcome == Outcome.MERGED else f" ({last.outcome})"
    return f"{plan.reason}; the chain was consolidated by {what}{outcome} on {last.time}"


def open_store(path: str, new: NewStore = FORMAT_3) -> BackupStore:
    """The store at ``path``; an empty location is made a store as ``new`` says."""
    store = BackupStore.open(path, create=True, new=new)
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
            refuse_data_file(name, disk.target, info)
            if layer is disk.base and info.backing_file:
                raise UnsupportedDiskError(
                    f"domain '{name}': the definition of disk {disk.target} ends its chain at "
                    f"{layer.path}, but that image's header names the backing file "
                    f"{info.backing_file}; fibackup cannot be sure which data the guest sees. "
                    "Remove the explicit <backingStore/> from the disk, or leave it out with "
                    f"--exclude-disk {disk.target}")
            total += allocated_bytes(layer.path)
    return total


def refuse_data_file(name: str, target: str, info: img.ImageInfo) -> None:
    if info.data_file:
        raise UnsupportedDiskError(
            f"domain '{name}': disk {target} layer {info.path} keeps its data in the external "
            f"file {info.data_file}, which fibackup does not back up; leave the disk out with "
            f"--exclude-disk {target}")


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
            refuse_data_file(domain.name, disk.target, info)
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
        cancelled_here = (last is not None and last.outcome in (Outcome.ABORTED, Outcome.FAILED)
                          and os.path.realpath(last.base) == os.path.realpath(layer.path))
        if "another process" not in str(error) or not cancelled_here or not domain.is_active() \
                or domain.block_job_running(target):
            raise
    return img.info(layer.path, layer.format, force_share=True)


def _back_up_disk(store: BackupStore, domain: Domain, disk: LiveDisk, plan: DiskPlan, tag: str,
                  report: Reporter, journal: Journal, throttle: Optional[Throttle],
                  guard: Guard, clone: bool) -> tuple[PointDisk, int]:
    """Copy one disk's missing layers in order; its point entry and the bytes copied."""
    layers = [PointLayer.of(stored, new=False) for stored in plan.reuse]
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
                                       clone=clone, check_source=functools.partial(
                                           chunked.require_unchanged, item.layer.path,
                                           item.identity, "copied"))
        journal.done(step)
        layers.append(PointLayer.of(stored, new=True))
        copied += stored.data_bytes
        parent = stored.id
    point_disk = PointDisk(target=disk.target, virtual_size=layers[-1].virtual_size,
                           layers=tuple(layers), source_path=disk.active.path)
    return point_disk, copied


