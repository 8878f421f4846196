"""``fibackup restore``: rebuild a disk chain from the store and point a domain at it.

The stored layers are copied into ``--to`` (every chunk checked against its
checksum on the way) inside a hidden staging directory; backing pointers are
rewritten to relative names; a new empty overlay goes on top so the restored
layers stay identical to the stored ones.  Only when every disk is complete are
the files moved to their final names, and only then is a domain (re)defined.
"""
from __future__ import annotations

import contextlib
import errno
import os
import pwd
import secrets
import shutil
import stat
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

from fibackup import faults

from fibackup.errors import (DestinationError, DomainStateError, FibackupError,
                             IntegrityError, NotEnoughSpaceError, RestorePointNotFoundError,
                             UsageError)
from fibackup.commands import domfiles
from fibackup.commands.parallel import Guard, IOOptions, run_each
from fibackup.fsutil import ensure_space, file_identity, fsync_dir, publish, remove_quietly
from fibackup.host import journal as journals
from fibackup.host import state as host_state
from fibackup.host.journal import Journal
from fibackup.host.lock import DomainLock
from fibackup.model.chain import chain_from_ids
from fibackup.model.naming import safe_component
from fibackup.model.points import PointDisk, PointFile, RestorePoint, select_point
from fibackup.qemu import img
from fibackup.report import Reporter
from fibackup.store.chunks import Throttle
from fibackup.store.repo import BackupStore
from fibackup.virt import domxml
from fibackup.virt.trust import untrusted_parts
from fibackup.virt.libvirt_api import Connection, Domain

QEMU_USERS = ("libvirt-qemu", "qemu")


@dataclass
class RestoreOptions:
    domain: str
    backup_dir: str
    to: str
    at: Optional[str] = None
    disks: Sequence[str] = ()
    flatten: bool = False
    define: bool = True
    as_name: Optional[str] = None
    force: bool = False
    space_check: bool = True
    io: IOOptions = field(default_factory=lambda: IOOptions(reflink=True))
    trust_xml: bool = False
    """Define a stored definition even when it reaches outside --to (virt/trust.py)."""
    show_xml: bool = False
    """Only work out the definition restore would define (``RestoreResult.definition``)."""

    @staticmethod
    def check_flags(*, domain: Optional[str], to: Optional[str],
                    no_verify: bool = False) -> None:
        """What a restore (neither --instant nor --finalize) refuses, as UsageError."""
        if no_verify:
            raise UsageError("--no-verify applies only to --instant (a restore always checks "
                             "every chunk it copies)")
        if domain is None or to is None:
            raise UsageError("restore needs -d DOMAIN and --to DIR (or --finalize NAME)")


@dataclass
class RestoreResult:
    point: RestorePoint
    disks: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    defined: Optional[str] = None
    domain_files: dict[str, str] = field(default_factory=dict)
    """Role -> restored NVRAM/kernel/initrd/dtb file, ``tpm`` -> the TPM state directory."""
    definition: Optional[str] = None
    """With ``show_xml``: the domain XML restore would define (nothing was restored)."""

    def to_json(self) -> dict[str, object]:
        return {"domain": self.point.domain_name, "point": self.point.id, "seq": self.point.seq,
                "disks": self.disks, "files": self.files, "defined": self.defined,
                "domain_files": self.domain_files,
                **({"definition": self.definition} if self.definition is not None else {})}


@dataclass
class _DiskFiles:
    """Final names of one disk's restored files inside --to."""

    disk: PointDisk
    layers: list[str]
    top: str

    @property
    def all(self) -> list[str]:
        return [*self.layers, self.top]


def find_points(store: BackupStore, domain: str, problems: Optional[list[str]] = None,
                defined_uuid: Optional[str] = None) -> list[RestorePoint]:
    """The restore points of the domain named (or with UUID) ``domain``.

    When the store holds several domains of that name (one deleted and
    recreated), the one defined now is meant; otherwise the user must choose.
    """
    points = [point for point in store.all_points(problems)
              if domain in (point.domain_name, point.domain_uuid)]
    uuids = sorted({point.domain_uuid for point in points})
    if len(uuids) <= 1:
        return points
    if defined_uuid in uuids:
        return [point for point in points if point.domain_uuid == defined_uuid]
    raise UsageError(f"the backup holds restore points of {len(uuids)} different domains named "
                     f"'{domain}' (UUIDs {', '.join(uuids)}); name one with -d UUID")


def restore(options: RestoreOptions, connect: Callable[[], Connection],
            report: Reporter) -> RestoreResult:
    _check_options(options)
    store = BackupStore.open(options.backup_dir)
    conn = connect() if options.define else None
    from fibackup.commands.repair import repair_restores
    repair_restores(conn, report)
    named = conn.find_domain(options.domain) if conn and options.as_name is None else None
    problems: list[str] = []
    points = find_points(store, options.domain, problems, named.uuid if named else None)
    for problem in problems:
        report.warn(f"{problem} (that restore point is not offered)")
    point = select_point(points, options.at, f"domain '{options.domain}'")
    with store.domain_lock(point.domain_uuid, shared=True,
                           waiting=lambda: report.info(waiting_message(store, point))):
        # read again under the lock: a prune may have just published a revision
        points = [item for item in store.points(point.domain_uuid, []) if item.seq == point.seq]
        if not points:
            raise RestorePointNotFoundError(f"restore point {point.id} was removed from "
                                            f"{store.root} meanwhile (a prune?)")
        point = points[0]
        disks = _chosen_disks(point, options.disks)
        target_domain = _target_domain(conn, point, options) if conn else None
        if target_domain is not None:
            with DomainLock(target_domain.uuid, target_domain.name):
                if journals.load(target_domain.uuid) is not None:
                    from fibackup.commands.repair import reconcile
                    reconcile(conn, target_domain, report, wait=False)
                _require_shut_off(target_domain)
                return _restore(store, point, disks, options, conn, target_domain, report)
        return _restore(store, point, disks, options, conn, None, report)


def waiting_message(store: BackupStore, point: RestorePoint) -> str:
    return (f"{point.domain_name}: waiting for another fibackup run on its part of "
            f"{store.root} (a backup or a prune, maybe on another host)")


def _check_options(options: RestoreOptions) -> None:
    if options.as_name is not None and not options.define:
        raise UsageError("--as and --no-define exclude each other: --as defines a new domain")
    if options.as_name is not None and not options.as_name.strip():
        raise UsageError("--as needs a domain name")
    if options.show_xml and not options.define:
        raise UsageError("--show-xml shows the definition restore would define; it does not "
                         "go with --no-define")


def _chosen_disks(point: RestorePoint, wanted: Sequence[str]) -> list[PointDisk]:
    missing = [target for target in wanted if target not in point.disks]
    if missing:
        raise UsageError(
            f"restore point {point.id} has no disk {', '.join(missing)}; it holds "
            f"{', '.join(sorted(point.disks))}")
    return [point.disks[target] for target in (wanted or sorted(point.disks))]


def _target_domain(conn: Connection, point: RestorePoint,
                   options: RestoreOptions) -> Optional[Domain]:
    if options.as_name is not None:
        if conn.find_domain(options.as_name) is not None:
            raise DestinationError(f"a domain named '{options.as_name}' already exists; "
                                   "choose another name for --as")
        return None
    domain = conn.domain_by_uuid(point.domain_uuid)
    if domain is not None:
        return domain
    other = conn.find_domain(point.domain_name)
    if other is not None:
        raise DestinationError(
            f"domain '{other.name}' (UUID {other.uuid}) is not the domain this backup was taken "
            f"from (UUID {point.domain_uuid}); restore a copy with --as NEWNAME, or undefine "
            f"'{other.name}' first")
    return None


def _require_shut_off(domain: Domain) -> None:
    if domain.is_active():
        stop = "destroy" if domain.state_name() == "paused" else "shutdown"
        raise DomainStateError(
            f"domain '{domain.name}' is {domain.state_name()}; restore repoints its disks and "
            f"needs it shut off: 'virsh {stop} {domain.name}' (or restore a copy with "
            "--as NEWNAME, or only the images with --no-define)")


def _restore(store: BackupStore, point: RestorePoint, disks: list[PointDisk],
             options: RestoreOptions, conn: Optional[Connection], domain: Optional[Domain],
             report: Reporter) -> RestoreResult:
    definition = _base_definition(point, domain, disks, options) if conn is not None else None
    destination = _prepare_destination(options.to, options.define, report)
    names = [_names(disk, point, options.flatten) for disk in disks]
    files = _chosen_files(point, options, report)
    if definition is not None:
        preview = _checked_definition(store, point, domain, definition, names, files,
                                      destination, options)
        if options.show_xml:
            return RestoreResult(point, definition=preview)
    _check_free_names(destination, names, options.force,
                      [domfiles.restored_name(point, item) for item in files])
    if options.space_check:
        ensure_space(destination, _needed_bytes(store, point, disks),
                     f"restore point {point.id}")
    staging = os.path.join(destination, f".fibackup-restore-{secrets.token_hex(4)}")
    with _journalled(point, options, staging, conn, report) as journal:
        os.mkdir(staging, 0o700)
        try:
            result = _stage_and_publish(store, point, names, files, staging, destination,
                                        options, report, journal)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        fsync_dir(destination)
        if not options.flatten and options.as_name is None:
            _remember_restored(store, point, names, destination)
        if definition is not None:
            assert conn is not None
            step = journal.start("restore.define")
            boot = domfiles.boot_paths(point, files, destination)
            defined = _define(conn, point, definition, result.disks, boot, options, report)
            result.defined = defined.name
            journal.done(step)
            _install_tpm(store, point, files, defined, destination, report, journal)
    return result


def _chosen_files(point: RestorePoint, options: RestoreOptions,
                  report: Reporter) -> list[PointFile]:
    """The NVRAM, TPM and boot files restored with the point (not with --disk)."""
    if not point.files:
        return []
    if options.disks:
        report.info(f"--disk: the NVRAM, TPM state and boot files of restore point {point.id} "
                    "are not restored (restore without --disk to get them)")
        return []
    return domfiles.restorable(point, report)


def _install_tpm(store: BackupStore, point: RestorePoint, files: Sequence[PointFile],
                 domain: Domain, destination: str, report: Reporter, journal: Journal) -> None:
    """The defined domain's TPM state: libvirt keeps it by UUID, outside --to."""
    if not any(item.role == "tpm" for item in files):
        return
    if not domxml.has_tpm_emulator(domxml.parse(domain.inactive_xml())):
        report.warn(f"domain '{domain.name}' has no emulated TPM now; the TPM state of restore "
                    f"point {point.id} is only in {domfiles.restored_tpm_dir(point, destination)}")
        return
    step = journal.start("restore.tpm", domain_uuid=domain.uuid)
    try:
        domfiles.install_tpm_state(store, point, files, domain.uuid, destination, report)
    except (OSError, FibackupError) as error:
        raise DestinationError(
            f"domain '{domain.name}' was defined with the restored files, but its TPM state "
            f"could not be put into {domfiles.tpm_state_dir(domain.uuid)} ({error}); copy "
            f"the files in {domfiles.restored_tpm_dir(point, destination)} there by hand before "
            "starting it") from None
    journal.done(step)


@contextlib.contextmanager
def _journalled(point: RestorePoint, options: RestoreOptions, staging: str,
                conn: Optional[Connection], report: Reporter) -> Iterator[Journal]:
    """Journal the restore; on any failure undo it at once (its staging directory, files
    it published without defining their domain); after a crash 'repair' does."""
    from fibackup.commands.repair import undo_restore
    key = journals.restore_key()
    with DomainLock(key, f"restore {key}") as lock:
        journal = Journal(key, "restore", point.domain_name, {
            "staging": staging, "domain_uuid": point.domain_uuid, "as_name": options.as_name,
            "point": point.id}).begin()
        try:
            yield journal
        except BaseException:
            undo_restore(conn, journal, report)
            raise
        finally:
            journal.end()
            remove_quietly(lock.path)


def file_key(path: str) -> tuple[int, int, int, int]:
    """Device, inode, size and mtime: which file a name holds (inodes are reused)."""
    status = os.lstat(path)
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


def _stage_and_publish(store: BackupStore, point: RestorePoint, names: Sequence[_DiskFiles],
                       saved: Sequence[PointFile], staging: str, destination: str,
                       options: RestoreOptions, report: Reporter,
                       journal: Journal) -> RestoreResult:
    """Build every disk (and restore every file) in ``staging``, then move the files into
    ``destination``."""
    step = journal.start("restore.stage")
    throttle = options.io.throttle()

    def build(files: _DiskFiles, guard: Guard) -> None:
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
    result = RestoreResult(point)
    finals = {os.path.join(destination, name): os.path.join(staging, name)
              for files in names for name in files.all}
    finals.update({os.path.join(destination, name): os.path.join(staging, name)
                   for name in extra})
    step = journal.start("restore.publish", files={
        final: file_key(staged) for final, staged in finals.items()},
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


def _prepare_destination(path: str, define: bool, report: Reporter) -> str:
    destination = os.path.abspath(path)
    try:
        os.makedirs(destination, mode=0o755, exist_ok=True)   # the images inside are 0600
    except OSError as error:
        raise DestinationError(f"cannot create {destination} ({error.strerror}); check the "
                               "path and its permissions, or choose another --to") from None
    if not os.access(destination, os.W_OK | os.X_OK):
        raise DestinationError(f"{destination} is not writable; fix its permissions or "
                               "choose another --to")
    blocked = _unreachable_by_qemu(destination)
    if blocked:
        message = (f"QEMU runs as user {blocked[1]} and cannot reach {blocked[0]} "
                   f"(mode {stat.filemode(os.stat(blocked[0]).st_mode)}); "
                   f"'chmod o+x {blocked[0]}' or restore elsewhere")
        if define:
            raise DestinationError(message)
        report.warn(message)
    return destination


def _unreachable_by_qemu(path: str) -> Optional[tuple[str, str]]:
    """The first directory above ``path`` the qemu user cannot traverse, if any."""
    for user in QEMU_USERS:
        try:
            account = pwd.getpwnam(user)
            break
        except KeyError:
            continue
    else:
        return None
    groups = {account.pw_gid} | {entry.gr_gid for entry in _groups_of(user)}
    current = path
    while True:
        info = os.stat(current)
        mode = info.st_mode
        allowed = (mode & stat.S_IXOTH or (info.st_uid == account.pw_uid and mode & stat.S_IXUSR)
                   or (info.st_gid in groups and mode & stat.S_IXGRP))
        if not allowed:
            return current, user
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def _groups_of(user: str) -> list:
    import grp
    return [entry for entry in grp.getgrall() if user in entry.gr_mem]


def _names(disk: PointDisk, point: RestorePoint, flatten: bool) -> _DiskFiles:
    stem = f"{safe_component(disk.target)}-{point.id}"
    if flatten:
        return _DiskFiles(disk, [], f"{stem}.qcow2")
    layers = [f"{stem}-{index:02d}.{layer.image_format}" for index, layer in enumerate(disk.layers)]
    return _DiskFiles(disk, layers, f"{stem}.qcow2")


def _check_free_names(destination: str, names: Sequence[_DiskFiles], force: bool,
                      extra: Sequence[str] = ()) -> None:
    if force:
        return
    taken = [name for name in [*(name for files in names for name in files.all), *extra]
             if os.path.lexists(os.path.join(destination, name))]
    if taken:
        raise DestinationError(
            f"{destination} already holds {', '.join(taken)}; restore into an empty "
            "directory or pass --force to overwrite")


def _needed_bytes(store: BackupStore, point: RestorePoint, disks: Sequence[PointDisk]) -> int:
    return sum(store.layer_record(point.domain_uuid, layer.id).chunks.data_bytes
               for disk in disks for layer in disk.layers)


def _build_disk(store: BackupStore, point: RestorePoint, files: _DiskFiles, staging: str,
                flatten: bool, report: Reporter, throttle: Optional[Throttle],
                guard: Guard, clone: bool) -> None:
    disk = files.disk
    _check_stacking(store, point, disk)
    layer_names = files.layers or [f"{files.top}.layer{index:02d}.{layer.image_format}"
                                   for index, layer in enumerate(disk.layers)]
    report.info(f"restoring {disk.target} from restore point {point.id} "
                f"({len(disk.layers)} layer(s))")
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
                                   "the restore point is inconsistent")
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


def _remember_restored(store: BackupStore, point: RestorePoint, names: Sequence[_DiskFiles],
                       destination: str) -> None:
    """Record which restored files equal which stored layers (next backup: incremental)."""
    state = host_state.load(point.domain_uuid)
    for files in names:
        for layer, name in zip(files.disk.layers, files.layers):
            identity = file_identity(os.path.join(destination, name))
            state.restored = [item for item in state.restored if item.identity.path != identity.path]
            state.restored.append(host_state.RestoredFile(store.store_id, layer.id, identity))
    state.save()


def _base_definition(point: RestorePoint, domain: Optional[Domain], disks: Sequence[PointDisk],
                     options: RestoreOptions) -> str:
    """The XML to repoint, with every restored disk present; refuse before copying if not."""
    targets = [disk.target for disk in disks]
    if options.as_name is not None:
        xml, _removed = domxml.as_copy(point.domain_xml, options.as_name, targets)
    else:
        xml = domain.inactive_xml() if domain is not None else point.domain_xml
    xml, unplaced = domxml.add_missing_disks(xml, point.domain_xml, targets)
    if unplaced:
        raise DestinationError(
            f"disk(s) {', '.join(unplaced)} of restore point {point.id} appear in no definition "
            "fibackup could repoint (hot-plugged and never in the persistent XML); restore "
            "them with --no-define and attach them by hand, or leave them out with --disk")
    return xml


def _checked_definition(store: BackupStore, point: RestorePoint, domain: Optional[Domain],
                        definition: str, names: Sequence["_DiskFiles"],
                        files: Sequence[PointFile], destination: str,
                        options: RestoreOptions) -> str:
    """The XML restore will define (disks and boot files in ``destination``); refused,
    before anything is copied, when it comes from an untrusted store and reaches
    outside ``destination`` (virt/trust.py) unless ``--trust-xml``."""
    from fibackup.errors import UntrustedDefinitionError
    from fibackup.fsutil import host_name
    sources = {files_.disk.target: (os.path.join(destination, files_.top), "qcow2")
               for files_ in names}
    boot = domfiles.boot_paths(point, files, destination)
    preview = domxml.repoint_disks(definition, sources)
    preview = domxml.repoint_boot_files(preview, boot) if boot else preview
    stored = domain is None or options.as_name is not None
    if not stored or options.trust_xml or options.show_xml:
        return preview                  # the domain's own definition, its disks repointed
    problems = definition_problems(point, preview, destination,
                                   same_domain=options.as_name is None)
    if problems:
        where = "read from object storage" if not store.backend.capabilities.local_files else \
            f"written on host {point.host}" if point.host != host_name() else \
            "not one this host recorded storing"
        raise UntrustedDefinitionError(
            f"the domain definition of restore point {point.domain_name}/{point.id} ({where}) "
            f"holds {'; '.join(problems)}; fibackup does not define it from a "
            "shared backup: look at it with --show-xml, then restore with --trust-xml, or "
            "with --no-define and define the domain yourself")
    return preview


def definition_problems(point: RestorePoint, xml: str, inside: str,
                        allowed: Sequence[str] = (), same_domain: bool = False) -> list[str]:
    """Why ``xml``, made from ``point``'s stored definition, is unsafe to define (see
    virt/trust.py): nothing when this host recorded storing exactly that definition.
    With ``same_domain`` (not a copy) the definition must also be of the point's domain."""
    if host_state.load(point.domain_uuid).stored_definition(point.domain_xml):
        return []
    problems = untrusted_parts(xml, inside, allowed)
    return problems + _identity_problems(point) if same_domain else problems


def _identity_problems(point: RestorePoint) -> list[str]:
    """A stored definition must be of the point's own domain (name and UUID), or it
    would redefine another domain of this host."""
    root = domxml.parse(point.domain_xml)
    name, uuid = root.findtext("name", ""), root.findtext("uuid", "")
    if name == point.domain_name and uuid in ("", point.domain_uuid):
        return []
    return [f"a definition of domain '{name}' ({uuid or 'no UUID'}), not of "
            f"'{point.domain_name}' ({point.domain_uuid})"]


def _define(conn: Connection, point: RestorePoint, xml: str, images: dict[str, str],
            boot: dict[str, str], options: RestoreOptions, report: Reporter) -> Domain:
    sources = {target: (path, "qcow2") for target, path in images.items()}
    if options.as_name is not None:
        removed = [target for target in domxml.disk_targets(point.domain_xml)
                   if target not in images and _is_writable_disk(point.domain_xml, target)]
        if removed:
            report.warn(f"the copy '{options.as_name}' leaves out disk(s) {', '.join(removed)}, "
                        "which were not restored")
    else:
        others = [target for target in domxml.disk_targets(xml)
                  if target not in images and _is_writable_disk(xml, target)]
        if others:
            report.warn(f"disk(s) {', '.join(others)} of '{point.domain_name}' were not "
                        "restored and still point at their current images")
    xml = domxml.repoint_disks(xml, sources)
    defined = conn.define(domxml.repoint_boot_files(xml, boot) if boot else xml)
    report.info(f"domain '{defined.name}' now uses the restored images"
                f"{' and ' + ', '.join(sorted(boot)) if boot else ''} in "
                f"{os.path.dirname(next(iter(images.values())))}")
    return defined


def _is_writable_disk(xml: str, target: str) -> bool:
    for spec in domxml.disks(domxml.parse(xml)):
        if spec.target == target:
            return spec.device not in ("cdrom", "floppy") and not spec.readonly
    return False
