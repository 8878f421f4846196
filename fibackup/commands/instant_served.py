"""``restore --instant`` from a format-3 store (a directory or S3, compressed,
encrypted or not): the new domain runs from the point's disks served over NBD,
copying nothing first (docs/SERVING.md, "Instant recovery").

Each disk of the point is served read-only by a long-lived nbdkit
(fibackup/serve/daemons.py) that checks every chunk before it serves it; the domain
gets a qcow2 overlay per disk in ``--to`` whose backing is that served raw disk,
named explicitly in the definition (``<backingStore type='network'>``), with
``error_policy`` and ``rerror_policy`` ``stop``: an I/O error of the store (a
damaged chunk, S3 unreachable) pauses the guest instead of reaching it, and
``virsh resume`` retries once the store answers again.  The point is pinned in the
store while the domain runs from it; ``--finalize`` pulls the data into the overlays
live, then stops the servers and removes the pin.  The record in
``<state dir>/instant/`` says what to undo and what to bring back after a reboot
(``repair``).
"""
from __future__ import annotations

import os
import uuid as _uuid
from typing import Callable, Optional, Sequence

from fibackup.commands.instant import (InstantOptions, InstantResult, check_overlays_free,
                                       check_trust, chosen_point, definition,
                                       remove_domain_and_overlays, require_new_name,
                                       start_domain)
from fibackup.commands.restore_common import prepare_destination, stored_bytes
from fibackup.commands.grants import grants_lock, release_gone
from fibackup.commands.served_disks import bring_up, take_down
from fibackup.errors import FibackupError, StoreKeyError, StoreUnavailableError, UsageError
from fibackup.fsutil import ensure_space, host_name
from fibackup.host import acl
from fibackup.host import instant as records
from fibackup.host.instant import (SERVED_FORMAT, InstantDisk, InstantLayer, InstantRecord,
                                   ServedFrom)
from fibackup.host.lock import DomainLock
from fibackup.model import naming
from fibackup.model.naming import safe_component
from fibackup.model.points import PointDisk, RestorePoint
from fibackup.qemu import img
from fibackup.report import Reporter
from fibackup.serve import daemons
from fibackup.store.repo import BackupStore
from fibackup.store.v3 import passwords
from fibackup.store.v3.pins import add_pin
from fibackup.virt import domxml
from fibackup.virt.libvirt_api import Connection

ERROR_POLICY = "stop"
"""What QEMU does on an I/O error of a served disk: pause the guest (never pass the
error or wrong data on); ``virsh resume`` retries the request."""


def runs_in_place(backup_dir: str) -> bool:
    """Whether QEMU runs a point of this store straight from its files (format 1/2; a
    location that holds no store is left to that path's checks and messages), rather
    than from served disks (format 3)."""
    try:
        return BackupStore.open(backup_dir).chunks is None
    except StoreUnavailableError:
        return True


def served_instant(options: InstantOptions, connect: Callable[[], Connection],
                   report: Reporter) -> InstantResult:
    if not options.as_name.strip():
        raise UsageError("--instant needs a new domain name: --as NEWNAME")
    store = BackupStore.open(options.backup_dir)
    assert store.chunks is not None
    if store.chunks.encrypted and not passwords.unattended():
        raise StoreKeyError(f"{store.root} is encrypted and the servers of an instant "
                            "recovery run in the background (and again after a reboot), never "
                            "prompting: pass --password-file or set [store] password_file in "
                            "the configuration file", path=store.root)
    store.chunks.keys()                              # the passphrase is right: fail now
    conn = connect()
    account = acl.qemu_account()
    require_new_name(conn, options.as_name)
    point, disks = chosen_point(store, options, report)
    destination = prepare_destination(options.to, True, report)
    record = _new_record(store, point, disks, destination, options, account)
    check_overlays_free(record)
    if options.space_check:
        ensure_space(destination, stored_bytes(store, point, disks),
                     f"'restore --finalize {options.as_name}' later (it copies the point's "
                     "data there)")
    xml = domxml.set_error_policy(definition(point, disks, record), sorted(record.disks),
                                  ERROR_POLICY)
    if not options.trust_xml:
        check_trust(point, xml, destination,
                    [layer.path for disk in record.disks.values() for layer in disk.layers])
    with DomainLock(record.domain_uuid, record.domain_name):
        _set_up(conn, store, point, record, xml, account, report)
    report.info(f"domain '{record.domain_name}' runs from restore point {point.id} of "
                f"'{point.domain_name}', served from {store.root}; make it independent of "
                f"the store with 'fibackup restore --finalize {record.domain_name}'")
    return InstantResult(point, record, verified=False)


def _new_record(store: BackupStore, point: RestorePoint, disks: Sequence[PointDisk],
                destination: str, options: InstantOptions,
                account: Optional[acl.Account]) -> InstantRecord:
    domain_uuid = str(_uuid.uuid4())
    served: dict[str, InstantDisk] = {}
    for disk in disks:
        assert disk.index is not None, "a format-3 point has an index per disk"
        overlay = os.path.join(destination, f"{safe_component(disk.target)}-{point.id}.qcow2")
        socket = daemons.place(domain_uuid, disk.target).socket
        served[disk.target] = InstantDisk(disk.target, overlay, (
            InstantLayer(disk.index.id, socket, SERVED_FORMAT),))
    password_file = passwords.given_file() or os.environ.get(passwords.PASSWORD_FILE_ENV)
    return InstantRecord(
        domain_uuid=domain_uuid, domain_name=options.as_name, store_root=store.root,
        store_id=store.store_id, source_uuid=point.domain_uuid, source_name=point.domain_name,
        point=point.id, to=destination, qemu_user=account.name if account else "root",
        disks=served, created=naming.utc_time(),
        served=ServedFrom(store.root, {disk.target: disk.virtual_size for disk in disks},
                          os.path.abspath(password_file) if password_file else None))


def _set_up(conn: Connection, store: BackupStore, point: RestorePoint, record: InstantRecord,
            xml: str, account: Optional[acl.Account], report: Reporter) -> None:
    """Record, pin, serve, create the overlays, define and start; on failure undo it all."""
    assert record.served is not None
    with grants_lock():
        release_gone(conn, report)                          # domains undefined by hand
    try:
        record.save()                                       # before anything changes
        record.served.pin = add_pin(store.backend, point,
                                    f"instant recovery '{record.domain_name}' on {host_name()}")
        record.save()
        bring_up(record, account)
        for disk in record.disks.values():
            socket = disk.layers[0].path
            img.create_overlay(disk.overlay, img.nbd_uri(socket), "raw",
                               record.served.sizes[disk.target])
            os.chmod(disk.overlay, 0o600)
        start_domain(conn.define(xml))
        record.status = records.READY
        record.save()
    except BaseException:
        _undo(conn, record, report)
        raise


def _undo(conn: Connection, record: InstantRecord, report: Reporter) -> None:
    """Remove what a failed start did: domain, overlays, servers, pin, record."""
    remove_domain_and_overlays(conn, record)
    try:
        take_down(record, report)
    except FibackupError as error:
        report.warn(f"the servers of the failed instant recovery stay: {error}; they are in "
                    f"{record.path}")
        return
    if record.served is not None and record.served.pin is not None:
        record.save()                                       # the pin still to remove
        return
    record.remove()
