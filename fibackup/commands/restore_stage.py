"""How ``restore`` builds the files: every disk's chain (and the domain's other files)
in a hidden staging directory inside ``--to``, each stored chunk checked on the
way; then every file moved to its final name (journal step ``restore.publish``,
which records each file's :class:`~fibackup.model.chain.FileStamp` so that an
interrupted restore removes exactly what it published)."""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from typing import Optional, Protocol, Sequence

from fibackup import faults
from fibackup.commands import chunked_restore, domfiles
from fibackup.commands.parallel import Guard, IOOptions, run_each
from fibackup.errors import DestinationError, IntegrityError, NotEnoughSpaceError
from fibackup.fsutil import file_identity, publish
from fibackup.host import state as host_state
from fibackup.host.journal import Journal
from fibackup.model.chain import FileStamp, chain_from_ids
from fibackup.model.naming import safe_component
from fibackup.model.points import PointDisk, PointFile, RestorePoint
from fibackup.qemu import img
from fibackup.report import Reporter
from fibackup.store.chunks import Throttle
from fibackup.store.repo import BackupStore


class StageOptions(Protocol):
    """What staging takes of ``RestoreOptions`` (fibackup/commands/restore.py)."""

    io: IOOptions
    flatten: bool
    force: bool


@dataclass
class Published:
    """The files a restore published in ``--to``."""

    disks: dict[str, str] = field(default_factory=dict)
    """Target -> its new top image."""
    files: list[str] = field(default_factory=list)
    domain_files: dict[str, str] = field(default_factory=dict)
    """Role -> restored NVRAM/kernel/initrd/dtb file, ``tpm`` -> the TPM state directory."""


@dataclass
class DiskFiles:
    """Final names of one disk's restored files inside --to."""

    disk: PointDisk
    layers: list[str]
    top: str

    @property
    def all(self) -> list[str]:
        return [*self.layers, self.top]


def disk_files(disk: PointDisk, point: RestorePoint, flatten: bool) -> DiskFiles:
    stem = f"{safe_component(disk.target)}-{point.id}"
    if flatten:
        return DiskFiles(disk, [], f"{stem}.qcow2")
    if disk.index is not None:                       # format 3: one base, the whole view
        return DiskFiles(disk, [f"{stem}-00.{chunked_restore.base_format(disk)}"],
                         f"{stem}.qcow2")
    layers = [f"{stem}-{index:02d}.{layer.image_format}" for index, layer in enumerate(disk.layers)]
    return DiskFiles(disk, layers, f"{stem}.qcow2")


def check_free_names(destination: str, names: Sequence[DiskFiles], force: bool,
                      extra: Sequence[str] = ()) -> None:
    if force:
        return
    taken = [name for name in [*(name for files in names for name in files.all), *extra]
             if os.path.lexists(os.path.join(destination, name))]
    if taken:
        raise DestinationError(
            f"{destination} already holds {', '.join(taken)}; restore into an empty "
            "directory or pass --force to overwrite")


def stage_and_publish(store: BackupStore, point: RestorePoint, names: Sequence[DiskFiles],
                      saved: Sequence[PointFile], staging: str, destination: str,
                      options: StageOptions, report: Reporter, journal: Journal) -> Published:
    """Build every disk (and restore every file) in ``staging``, then move the files into
    ``destination``."""
    step = journal.start("restore.stage")
    throttle = options.io.throttle()

    def build(files: DiskFiles, guard: Guard) -> None:
        _build_disk(store, point, files, staging, options.flatten, report, throttle, guard,
                    options.io.reflink)

    try:
        run_each(list(names), build, options.io.jobs, throttle)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        raise NotEnoughSpaceError(
            f"{destination} filled up during the restore; nothing was left there: free up "
            "space or restore elsewhere") from None
    extra = _stage_files(store, point, saved, staging)
    journal.done(step)
    result = Published()
    finals = {os.path.join(destination, name): os.path.join(staging, name)
              for files in names for name in files.all}
    finals.update({os.path.join(destination, name): os.path.join(staging, name)
                   for name in extra})
    step = journal.start("restore.publish", files={
        final: FileStamp.of(os.lstat(staged)) for final, staged in finals.items()},
        existed=[final for final in finals if os.path.lexists(final)])
    for files in names:
        for name in files.all:
            final = os.path.join(destination, name)
            publish(os.path.join(staging, name), final, replace=options.force)
            result.files.append(final)
        result.disks[files.disk.target] = os.path.join(destination, files.top)
    for name in extra:
        final = os.path.join(destination, name)
        os.makedirs(os.path.dirname(final), mode=0o700, exist_ok=True)
        publish(os.path.join(staging, name), final, replace=options.force)
        result.files.append(final)
    for item in saved:
        result.domain_files[item.role] = os.path.join(destination,
                                                      domfiles.restored_place(point, item))
    journal.done(step)
    return result


def _stage_files(store: BackupStore, point: RestorePoint, files: Sequence[PointFile],
                 staging: str) -> list[str]:
    """Restore the point's non-disk files into ``staging``, each checked; their names."""
    names = []
    for item in files:
        name = domfiles.restored_name(point, item)
        path = os.path.join(staging, name)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        store.restore_file(point.domain_uuid, item, path)
        os.chmod(path, item.mode & 0o755)
        names.append(name)
    return names


def _build_disk(store: BackupStore, point: RestorePoint, files: DiskFiles, staging: str,
                flatten: bool, report: Reporter, throttle: Optional[Throttle],
                guard: Guard, clone: bool) -> None:
    disk = files.disk
    _check_stacking(store, point, disk)
    if disk.index is not None:
        _build_chunked_disk(store, point, files, staging, flatten, report, throttle, guard)
        return
    layer_names = files.layers or [f"{files.top}.layer{index:02d}.{layer.image_format}"
                                   for index, layer in enumerate(disk.layers)]
    previous: Optional[tuple[str, str]] = None
    for layer, name in zip(disk.layers, layer_names):
        guard.check()                                 # another disk failed: start nothing
        path = os.path.join(staging, name)
        with report.progress(f"{disk.target} {name}", layer.data_bytes) as bar:
            store.restore_layer(point.domain_uuid, layer.id, path,
                                progress=guard(faults.counting(bar)), expected=layer,
                                throttle=throttle, clone=clone)
        if layer.image_format == "qcow2":
            _check_standalone(path, is_base=previous is None)
            if previous is not None:
                img.rebase_unsafe(path, previous[0], previous[1])
        elif previous is not None:
            raise DestinationError(f"stored layer {layer.id} is raw but rests on another layer; "
                                   "the restore point is inconsistent", point=point.id,
                                   disk=disk.target)
        previous = (name, layer.image_format)
    assert previous is not None
    top = os.path.join(staging, files.top)
    if flatten:
        img.convert(os.path.join(staging, previous[0]), previous[1], top, "qcow2")
        for name in layer_names:
            os.unlink(os.path.join(staging, name))
    else:
        img.create_overlay(top, previous[0], previous[1], disk.virtual_size)
    os.chmod(top, 0o600)


def _build_chunked_disk(store: BackupStore, point: RestorePoint, files: DiskFiles,
                        staging: str, flatten: bool, report: Reporter,
                        throttle: Optional[Throttle], guard: Guard) -> None:
    """Format 3: the base written from the index (and proven), then the overlay."""
    disk = files.disk
    assert disk.index is not None
    image_format = chunked_restore.base_format(disk)
    name = files.layers[0] if files.layers else f"{files.top}.base.{image_format}"
    path = os.path.join(staging, name)
    with report.progress(f"{disk.target} {name}", disk.index.data_bytes) as bar:
        chunked_restore.write_disk(store, point, disk, path, progress=guard(faults.counting(bar)),
                                   throttle=throttle.consume if throttle else None,
                                   check=guard.check)
    top = os.path.join(staging, files.top)
    if flatten:
        img.convert(path, image_format, top, "qcow2")
        os.unlink(path)
    else:
        img.create_overlay(top, name, image_format, disk.virtual_size)
    os.chmod(top, 0o600)


def _check_stacking(store: BackupStore, point: RestorePoint, disk: PointDisk) -> None:
    """Each stored layer must name the one below it as its parent (layer records)."""
    records = {layer.id: store.layer_record(point.domain_uuid, layer.id).layer
               for layer in disk.layers}
    try:
        chain_from_ids([layer.id for layer in disk.layers], records)
    except (KeyError, ValueError) as error:
        raise IntegrityError(f"restore point {point.id}, disk {disk.target}: the layers do not "
                             f"stack ({error}); choose another restore point with --at") from None


def _check_standalone(path: str, is_base: bool) -> None:
    """A restored qcow2 layer must hold its own data, and the base no backing pointer
    (either would reach outside --to for data the backup does not have)."""
    info = img.info(path, "qcow2")
    if info.data_file:
        raise DestinationError(
            f"the stored layer restored to {path} keeps its data in the external file "
            f"{info.data_file}, which is not in the backup; refusing an incomplete restore")
    if is_base and info.backing_file:
        raise DestinationError(
            f"the base layer restored to {path} names a backing file ({info.backing_file}) "
            "that is not part of the backup; refusing to restore an incomplete chain")


def remember_restored(store: BackupStore, point: RestorePoint, names: Sequence[DiskFiles],
                       destination: str) -> None:
    """Record which restored files equal which stored layers (next backup: incremental).
    A format-3 base holds a whole view, which is no stored layer: nothing to record."""
    if point.format == 3:
        return
    host_state.remember_restored(point.domain_uuid, [
        host_state.RestoredFile(store.store_id, layer.id,
                                file_identity(os.path.join(destination, name)))
        for files in names for layer, name in zip(files.disk.layers, files.layers)])

