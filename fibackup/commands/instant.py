"""``fibackup restore --instant`` and ``restore --finalize``: instant recovery.

``--instant`` starts a new domain that runs straight from a restore point's
stored layers, copying nothing: each disk gets an empty qcow2 overlay in
``--to``, and the definition gives libvirt the complete chain below it
explicitly (``<backingStore>`` elements naming the stored files, read-only,
ending in ``<backingStore/>``), so the stale backing names inside the stored
qcow2 headers are never read.  libvirt must not chown the stored files
(``<seclabel model='dac' relabel='no'/>`` on each); the QEMU user gets read
access to exactly those files, and search access to the directories leading to
them, through POSIX ACL entries (fibackup/host/acl.py).  Every stored byte of
the chain is checked against its checksums first (``--no-verify`` skips that,
unsafely).

``--finalize NAME`` later makes that domain independent of the backup
directory (fibackup/commands/finalize.py).  The record in
``<state dir>/instant/`` says what to undo if a run dies; the ACL entries are
shared between records (fibackup/commands/grants.py).
"""
from __future__ import annotations

import contextlib
import os
import uuid as _uuid
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from fibackup.commands.finalize import FinalizeResult, finalize
from fibackup.commands.grants import grants_lock, plan_grants, release, release_gone
from fibackup.commands.restore_common import (chosen_disks, find_points, prepare_destination,
                                              stored_bytes)
from fibackup.errors import (AccessGrantError, DestinationError, FibackupError, IntegrityError,
                             LibvirtError, UntrustedDefinitionError, UsageError)
from fibackup.fsutil import ensure_space, remove_quietly
from fibackup.host import acl
from fibackup.host import instant as records
from fibackup.host.instant import InstantDisk, InstantLayer, InstantRecord
from fibackup.host.lock import DomainLock
from fibackup.model import naming
from fibackup.model.chain import StoredLayer
from fibackup.model.naming import safe_component
from fibackup.model.points import PointDisk, RestorePoint, select_point
from fibackup.qemu import img
from fibackup.report import Reporter
from fibackup.store.location import require_local
from fibackup.store.chunks import Throttle
from fibackup.store.checking import layer_disagreement
from fibackup.store.repo import BackupStore
from fibackup.virt.libvirt_api import Connection, Domain, libvirt, libvirt_message
from fibackup.virt import domxml
from fibackup.virt.trust import definition_problems

__all__ = ["FinalizeResult", "InstantOptions", "InstantResult", "finalize", "instant_restore",
           "release_gone"]


@dataclass
class InstantOptions:
    domain: str
    backup_dir: str
    to: str
    as_name: str
    at: Optional[str] = None
    disks: Sequence[str] = ()
    verify: bool = True
    space_check: bool = True
    throttle: Optional[Throttle] = None
    trust_xml: bool = False

    @staticmethod
    def check_flags(*, domain: Optional[str], backup_dir: Optional[str], to: Optional[str],
                    as_name: Optional[str], flatten: bool = False, no_define: bool = False,
                    force: bool = False) -> None:
        """What ``restore --instant`` refuses (UsageError): the options of a copy, and a
        missing -d, -b (the flag or the configuration file's), --as or --to."""
        unsupported = [flag for flag, given in (("--flatten", flatten),
                                                ("--no-define", no_define),
                                                ("--force", force)) if given]
        if unsupported:
            raise UsageError(f"--instant runs the domain from the stored layers: "
                             f"{', '.join(unsupported)} does not apply")
        missing = [flag for flag, value in (("-d", domain), ("-b", backup_dir),
                                            ("--as", as_name), ("--to", to)) if not value]
        if missing:
            raise UsageError(f"--instant needs {', '.join(missing)}: -d DOMAIN -b DIR --as "
                             "NEWNAME (a new domain) --to DIR (for its overlays)")

    @staticmethod
    def check_finalize_flags(*, domain: Optional[str] = None,
                             backup_dir: Optional[str] = None, to: Optional[str] = None,
                             at: Optional[str] = None, disks: Sequence[str] = (),
                             flatten: bool = False, no_define: bool = False,
                             as_name: Optional[str] = None, force: bool = False,
                             trust_xml: bool = False, instant: bool = False,
                             no_verify: bool = False) -> None:
        """``restore --finalize NAME`` takes none of these (UsageError): its backup
        directory (the -b flag, not the configuration file's) and --to come from the
        instant-recovery record."""
        given = [flag for flag, value in (
            ("-d", domain), ("-b", backup_dir), ("--to", to), ("--at", at),
            ("--disk", disks), ("--flatten", flatten), ("--no-define", no_define),
            ("--as", as_name), ("--force", force), ("--trust-xml", trust_xml),
            ("--instant", instant), ("--no-verify", no_verify)) if value]
        if given:
            raise UsageError(f"--finalize NAME takes no {', '.join(given)}: the backup "
                             "directory and --to come from its instant-recovery record")


@dataclass
class InstantResult:
    point: RestorePoint
    record: InstantRecord
    verified: bool

    def to_json(self) -> dict[str, object]:
        record = self.record
        return {"domain": self.point.domain_name, "point": self.point.id,
                "seq": self.point.seq, "defined": record.domain_name,
                "uuid": record.domain_uuid, "instant": True, "verified": self.verified,
                "to": record.to, "record": record.path,
                "disks": {target: disk.overlay for target, disk in sorted(record.disks.items())},
                "chains": {target: [layer.path for layer in disk.layers]
                           for target, disk in sorted(record.disks.items())},
                "granted": sorted(record.grants),
                "served": record.served is not None}


def instant_restore(options: InstantOptions, connect: Callable[[], Connection],
                    report: Reporter) -> InstantResult:
    if not options.as_name.strip():
        raise UsageError("--instant needs a new domain name: --as NEWNAME")
    require_local(options.backup_dir, "instant recovery (QEMU runs from the stored files)")
    store = BackupStore.open(options.backup_dir)
    conn = connect()
    account = acl.qemu_account()
    require_new_name(conn, options.as_name)
    point, disks = chosen_point(store, options, report)
    # the source domain's lock: no backup run of it tidies or changes its stored layers
    # while they are checked and handed to the new domain
    with DomainLock(point.domain_uuid, point.domain_name):
        root = os.path.realpath(store.root)
        _check_reachable(root, account)
        destination = prepare_destination(options.to, True, report)
        chains = {disk.target: _checked_chain(store, root, point, disk, options, report)
                  for disk in disks}
        record = _new_record(store, root, point, disks, chains, destination, options, account)
        check_overlays_free(record)
        if options.space_check:
            ensure_space(destination, stored_bytes(store, point, disks),
                         f"'restore --finalize {options.as_name}' later (it copies the "
                         "stored data of the chain there)")
        xml = definition(point, disks, record)
        if not options.trust_xml:
            check_trust(point, xml, destination,
                        [layer.path for disk in record.disks.values() for layer in disk.layers])
        with DomainLock(record.domain_uuid, record.domain_name):
            _set_up(conn, record, xml, disks, account, report)
    report.info(f"domain '{record.domain_name}' runs from restore point {point.id} of "
                f"'{point.domain_name}' in {root}; make it independent of the backup with "
                f"'fibackup restore --finalize {record.domain_name}'")
    return InstantResult(point, record, options.verify)


def require_new_name(conn: Connection, name: str) -> None:
    if conn.find_domain(name) is not None:
        raise DestinationError(f"a domain named '{name}' already exists; choose another name "
                               "for --as")


def chosen_point(store: BackupStore, options: InstantOptions,
                 report: Reporter) -> tuple[RestorePoint, list[PointDisk]]:
    """The restore point ``--at`` names (a damaged one is not offered) and its disks."""
    problems: list[str] = []
    points = find_points(store, options.domain, problems)
    for problem in problems:
        report.warn(f"{problem} (that restore point is not offered)")
    point = select_point(points, options.at, f"domain '{options.domain}'")
    return point, chosen_disks(point, options.disks)


def _checked_chain(store: BackupStore, root: str, point: RestorePoint, disk: PointDisk,
                   options: InstantOptions, report: Reporter) -> tuple[InstantLayer, ...]:
    """The disk's stored layers, base first, each proven to give exactly its bytes."""
    layers: list[InstantLayer] = []
    below: Optional[StoredLayer] = None
    for entry in disk.layers:
        where = f"restore point {point.id}, disk {disk.target}, layer {entry.id}"
        record = store.layer_record(point.domain_uuid, entry.id)
        differences = layer_disagreement(entry, record.layer)
        if differences:
            raise IntegrityError(f"{where}: the manifest lists {'; '.join(differences)}; the "
                                 "backup directory was damaged or edited (run 'fibackup "
                                 "verify', choose another restore point with --at)")
        if not record.layer.rests_on(below) or (entry.image_format == "raw" and below):
            raise IntegrityError(f"{where}: the layers do not stack (it rests on "
                                 f"{record.layer.parent or 'nothing'}); choose another "
                                 "restore point with --at")
        path = os.path.join(root, os.path.relpath(
            store.layer_path(point.domain_uuid, entry.id, entry.image_format), store.root))
        if options.verify:
            with report.progress(f"checking {disk.target} {entry.id}", entry.data_bytes) as bar:
                problems = store.check_layer(point.domain_uuid, entry.id, progress=bar,
                                             throttle=options.throttle)
            if problems:
                raise IntegrityError("; ".join(problems) + "; nothing was started from this "
                                     "restore point (run 'fibackup verify', choose another "
                                     "with --at)")
        acl.require_real(path, "r")                     # a regular file, not a link
        if entry.image_format == "qcow2" and img.info(path, "qcow2").data_file:
            raise IntegrityError(f"{path} keeps its data in an external file, which is not in "
                                 "the backup; refusing to run from it")
        layers.append(InstantLayer(entry.id, path, entry.image_format))
        below = record.layer
    return tuple(layers)


def _check_reachable(root: str, account: Optional[acl.Account]) -> None:
    """QEMU must be able to search every directory above the backup directory."""
    if account is None:
        return
    blocked = acl.unreachable(os.path.dirname(root), account)
    if blocked:
        raise AccessGrantError(
            f"QEMU runs as user {account.name} and cannot search {blocked}, above the backup "
            f"directory; allow it ('setfacl -m u:{account.name}:x {blocked}' or 'chmod o+x "
            f"{blocked}') or restore with a full copy instead of --instant")


def _new_record(store: BackupStore, root: str, point: RestorePoint, disks: Sequence[PointDisk],
                chains: dict[str, tuple[InstantLayer, ...]], destination: str,
                options: InstantOptions, account: Optional[acl.Account]) -> InstantRecord:
    overlays = {disk.target: os.path.join(destination,
                                          f"{safe_component(disk.target)}-{point.id}.qcow2")
                for disk in disks}
    return InstantRecord(
        domain_uuid=str(_uuid.uuid4()), domain_name=options.as_name, store_root=root,
        store_id=store.store_id, source_uuid=point.domain_uuid, source_name=point.domain_name,
        point=point.id, to=destination, qemu_user=account.name if account else "root",
        disks={target: InstantDisk(target, overlays[target], chains[target])
               for target in chains},
        created=naming.utc_time())


def check_overlays_free(record: InstantRecord) -> None:
    taken = [disk.overlay for disk in record.disks.values() if os.path.lexists(disk.overlay)]
    if taken:
        raise DestinationError(f"{', '.join(taken)} already exist(s); choose an empty --to "
                               "directory (instant recovery never overwrites a file)")


def definition(point: RestorePoint, disks: Sequence[PointDisk], record: InstantRecord) -> str:
    """The new domain: a copy of the point's definition (new name, UUID, MACs, console
    files) whose disks run on overlays over their explicit chains (stored files, or a
    served disk)."""
    targets = [disk.target for disk in disks]
    xml, _removed = domxml.as_copy(point.domain_xml, record.domain_name, targets)
    xml, unplaced = domxml.add_missing_disks(xml, point.domain_xml, targets)
    if unplaced:
        raise DestinationError(
            f"disk(s) {', '.join(unplaced)} of restore point {point.id} are in no saved "
            "definition (hot-plugged); leave them out with --disk")
    xml = domxml.set_uuid(xml, record.domain_uuid)
    return domxml.set_explicit_chains(xml, {
        target: (disk.overlay, [(layer.path, layer.format) for layer in disk.layers])
        for target, disk in record.disks.items()})


def check_trust(point: RestorePoint, xml: str, destination: str, chain: Sequence[str]) -> None:
    """A definition this host did not store is untrusted input (virt/trust.py): refused
    when it reaches outside --to (the ``chain`` below the overlays aside) unless
    --trust-xml."""
    problems = definition_problems(point, xml, destination, allowed=chain)
    if problems:
        raise UntrustedDefinitionError(
            f"the domain definition of restore point {point.domain_name}/{point.id} is not one "
            f"this host stored, and it holds {'; '.join(problems)}; look at it with "
            "'fibackup restore --show-xml' and run again with --trust-xml if it is yours")


def _set_up(conn: Connection, record: InstantRecord, xml: str, disks: Sequence[PointDisk],
            account: Optional[acl.Account], report: Reporter) -> None:
    """Record, grant, create the overlays, define and start; on any failure undo it all."""
    sizes = {disk.target: disk.virtual_size for disk in disks}
    try:
        with grants_lock():
            release_gone(conn, report)
            plan = plan_grants(record, account)
            record.grants = [path for path, _perm in plan]
            record.save()                                   # before anything changes
            for path, perm in plan:
                assert account is not None
                acl.grant(path, account, perm)
        for disk in record.disks.values():
            top = disk.layers[-1]
            img.create_overlay(disk.overlay, top.path, top.format, sizes[disk.target])
            os.chmod(disk.overlay, 0o600)
        domain = conn.define(xml)
        start_domain(domain)
        record.status = records.READY
        record.save()
    except BaseException:
        _undo_set_up(conn, record, report)
        raise


def start_domain(domain: Domain) -> None:
    try:
        domain.handle.create()
    except libvirt.libvirtError as error:
        raise LibvirtError(f"libvirt could not start '{domain.name}': "
                           f"{libvirt_message(error)}; nothing was left behind") from None


def remove_domain_and_overlays(conn: Connection, record: InstantRecord) -> None:
    """The first undo steps of a failed start: its domain (if defined) and overlays."""
    domain = conn.domain_by_uuid(record.domain_uuid)
    if domain is not None:
        with contextlib.suppress(libvirt.libvirtError):
            if domain.is_active():
                domain.handle.destroy()
            domain.handle.undefine()
    for disk in record.disks.values():
        remove_quietly(disk.overlay)


def _undo_set_up(conn: Connection, record: InstantRecord, report: Reporter) -> None:
    """Remove what a failed ``--instant`` did: domain, overlays, ACL entries, record."""
    remove_domain_and_overlays(conn, record)
    try:
        with grants_lock():
            release(record)
    except FibackupError as error:
        report.warn(f"the access grants of the failed instant recovery stay: {error}; "
                    f"they are in {record.path}")
        return
    record.remove()

