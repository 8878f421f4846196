"""``fibackup restore``: rebuild a disk chain from the store and point a domain at it.

The stored layers are copied into ``--to`` (every chunk checked against its
checksum on the way) inside a hidden staging directory; backing pointers are
rewritten to relative names; a new empty overlay goes on top so the restored
layers stay identical to the stored ones.  Only when every disk is complete are
the files moved to their final names, and only then is a domain (re)defined.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

from fibackup.commands import domfiles
from fibackup.commands.journalled import reconcile
from fibackup.commands.parallel import IOOptions
from fibackup.commands.recovery.restore import repair_restores, undo_restore
from fibackup.commands.restore_common import (chosen_disks, find_points, prepare_destination,
                                              stored_bytes)
from fibackup.commands.restore_stage import (DiskFiles, check_free_names, disk_files,
                                             remember_restored, stage_and_publish)
from fibackup.errors import (DestinationError, DomainStateError, FibackupError,
                             RestorePointNotFoundError, UntrustedDefinitionError, UsageError)
from fibackup.fsutil import ensure_space, fsync_dir, host_name, remove_quietly
from fibackup.host import journal as journals
from fibackup.host.journal import Journal
from fibackup.host.lock import DomainLock
from fibackup.model.points import PointDisk, PointFile, RestorePoint, select_point
from fibackup.report import Reporter
from fibackup.store.repo import BackupStore
from fibackup.virt import domxml
from fibackup.virt.disks import is_writable_disk
from fibackup.virt.libvirt_api import Connection, Domain
from fibackup.virt.trust import definition_problems

__all__ = ["RestoreOptions", "RestoreResult", "find_points", "restore", "waiting_message"]


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


def restore(options: RestoreOptions, connect: Callable[[], Connection],
            report: Reporter) -> RestoreResult:
    _check_options(options)
    store = BackupStore.open(options.backup_dir)
    conn = connect() if options.define else None
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
                                            f"{store.root} meanwhile (a prune?)",
                                            point=point.id, domain=point.domain_name)
        point = points[0]
        disks = chosen_disks(point, options.disks)
        target_domain = _target_domain(conn, point, options) if conn else None
        if target_domain is not None:
            assert conn is not None
            with DomainLock(target_domain.uuid, target_domain.name):
                if journals.load(target_domain.uuid) is not None:
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
            "--as NEWNAME, or only the images with --no-define)", domain=domain.name)


def _restore(store: BackupStore, point: RestorePoint, disks: list[PointDisk],
             options: RestoreOptions, conn: Optional[Connection], domain: Optional[Domain],
             report: Reporter) -> RestoreResult:
    definition = _base_definition(point, domain, disks, options) if conn is not None else None
    destination = prepare_destination(options.to, options.define, report)
    names = [disk_files(disk, point, options.flatten) for disk in disks]
    files = _chosen_files(point, options, report)
    if definition is not None:
        preview = _checked_definition(store, point, domain, definition, names, files,
                                      destination, options)
        if options.show_xml:
            return RestoreResult(point, definition=preview)
    check_free_names(destination, names, options.force,
                      [domfiles.restored_name(point, item) for item in files])
    if options.space_check:
        ensure_space(destination, stored_bytes(store, point, disks),
                     f"restore point {point.id}")
    _announce(point, names, destination, report)
    staging = os.path.join(destination, f".fibackup-restore-{secrets.token_hex(4)}")
    with _journalled(point, options, staging, conn, report) as journal:
        os.mkdir(staging, 0o700)
        try:
            published = stage_and_publish(store, point, names, files, staging, destination,
                                          options, report, journal)
            result = RestoreResult(point, disks=published.disks, files=published.files,
                                   domain_files=published.domain_files)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        fsync_dir(destination)
        if not options.flatten and options.as_name is None:
            remember_restored(store, point, names, destination)
        if definition is not None:
            assert conn is not None
            step = journal.start("restore.define")
            boot = domfiles.boot_paths(point, files, destination)
            defined = _define(conn, point, definition, result.disks, boot, options, report)
            result.defined = defined.name
            journal.done(step)
            _install_tpm(store, point, files, defined, destination, report, journal)
    return result


def _announce(point: RestorePoint, names: Sequence[DiskFiles], destination: str,
              report: Reporter) -> None:
    """Say what is restored where, before any of it is: the point, then each disk."""
    report.info(f"restoring restore point {point.id} (#{point.seq}) of '{point.domain_name}' "
                f"into {destination}")
    for files in names:
        what = f"{len(files.disk.layers)} layer(s)" if files.disk.index is None else \
            f"{files.disk.index.chunks} chunk(s)"
        report.info(f"restoring {files.disk.target} ({what}) to "
                    f"{os.path.join(destination, files.top)}")


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
                        definition: str, names: Sequence[DiskFiles],
                        files: Sequence[PointFile], destination: str,
                        options: RestoreOptions) -> str:
    """The XML restore will define (disks and boot files in ``destination``); refused,
    before anything is copied, when it comes from an untrusted store and reaches
    outside ``destination`` (virt/trust.py) unless ``--trust-xml``."""
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
            "with --no-define and define the domain yourself", domain=point.domain_name,
            point=point.id)
    return preview


def _define(conn: Connection, point: RestorePoint, xml: str, images: dict[str, str],
            boot: dict[str, str], options: RestoreOptions, report: Reporter) -> Domain:
    sources = {target: (path, "qcow2") for target, path in images.items()}
    if options.as_name is not None:
        removed = [target for target in domxml.disk_targets(point.domain_xml)
                   if target not in images and is_writable_disk(point.domain_xml, target)]
        if removed:
            report.warn(f"the copy '{options.as_name}' leaves out disk(s) {', '.join(removed)}, "
                        "which were not restored")
    else:
        others = [target for target in domxml.disk_targets(xml)
                  if target not in images and is_writable_disk(xml, target)]
        if others:
            report.warn(f"disk(s) {', '.join(others)} of '{point.domain_name}' were not "
                        "restored and still point at their current images")
    xml = domxml.repoint_disks(xml, sources)
    defined = conn.define(domxml.repoint_boot_files(xml, boot) if boot else xml)
    report.info(f"domain '{defined.name}' now uses the restored images"
                f"{' and ' + ', '.join(sorted(boot)) if boot else ''} in "
                f"{os.path.dirname(next(iter(images.values())))}")
    return defined

