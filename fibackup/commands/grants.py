"""The ACL entries instant recovery grants the QEMU user on a backup directory's
stored layers (and search access to the directories above them), shared between
instant-recovery domains: each record (fibackup/host/instant.py) names what it
granted; an entry goes only when no other record needs it.  Granting and
revoking happen under one host-wide lock (:func:`grants_lock`)."""
from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator, Optional

from fibackup.commands.served_disks import take_down
from fibackup.errors import DomainLockedError, FibackupError
from fibackup.fsutil import remove_quietly
from fibackup.host import acl
from fibackup.host import instant as records
from fibackup.host.instant import InstantRecord
from fibackup.host.lock import DomainLock
from fibackup.report import Reporter
from fibackup.virt.libvirt_api import Connection

GRANTS_LOCK = "instant-recovery-grants"
"""Lock name (``locks/<name>.lock``) held while ACL entries are granted or revoked."""


GRANTS_LOCK_WAIT = 30.0


@contextlib.contextmanager
def grants_lock() -> Iterator[None]:
    """Granting and revoking take milliseconds: wait for another run's turn."""
    lock = DomainLock(GRANTS_LOCK, "instant recovery grants")
    deadline = time.monotonic() + GRANTS_LOCK_WAIT
    while True:
        try:
            lock.acquire()
            break
        except DomainLockedError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)
    try:
        yield
    finally:
        lock.release()


def _store_dirs(root: str, domain_uuid: str) -> list[str]:
    return [root, os.path.join(root, "domains"), os.path.join(root, "domains", domain_uuid),
            os.path.join(root, "domains", domain_uuid, "layers")]


def _access_paths(record: InstantRecord) -> list[tuple[str, str]]:
    """Every path QEMU needs, with the permission: the store's directories, the layers
    (none for served disks: their sockets are made for QEMU, fibackup/serve/daemons.py)."""
    if record.served is not None:
        return []
    dirs = _store_dirs(record.store_root, record.source_uuid)
    return [*((path, "x") for path in dirs), *((path, "r") for path in sorted(record.store_files()))]


def plan_grants(record: InstantRecord,
                 account: Optional[acl.Account]) -> list[tuple[str, str]]:
    """The ACL entries this domain needs: not given by the modes, nor set by hand (those
    are never touched); entries other records granted are shared."""
    if account is None:
        return []
    others = _others_grants(record)
    plan = []
    for path, perm in _access_paths(record):
        if not acl.needs_grant(path, account, perm):
            continue
        if acl.entry_allows(path, account, perm) and path not in others:
            continue                                        # set by someone else: not ours
        plan.append((path, perm))
    return plan


def _others_grants(record: InstantRecord) -> set[str]:
    return {path for other in records.all_records()
            if other.domain_uuid != record.domain_uuid for path in other.grants}


def release(record: InstantRecord) -> tuple[list[str], list[str]]:
    """Remove this record's ACL entries that no other record needs (grants lock held)."""
    if not record.grants:
        return [], []
    account = acl.account_named(record.qemu_user)
    others = _others_grants(record)
    revoked, kept = [], []
    for path in sorted(record.grants, key=len, reverse=True):     # files before directories
        if path in others:
            kept.append(path)
            continue
        acl.revoke(path, account)
        revoked.append(path)
    return revoked, kept


def release_gone(conn: Connection, report: Reporter,
                 name: Optional[str] = None) -> list[str]:
    """Release what instant-recovery domains that no longer exist held (grants lock held):
    their ACL entries and records; the overlays of a set-up that never completed."""
    revoked: list[str] = []
    for record in list(records.all_records()):
        if name is not None and record.domain_name != name:
            continue
        if conn.domain_by_uuid(record.domain_uuid) is not None:
            continue
        try:
            lock = DomainLock(record.domain_uuid, record.domain_name)
            lock.acquire()
        except FibackupError:
            continue                        # being set up right now
        try:
            if records.load(record.domain_uuid) is None:
                continue
            if record.status == records.STARTING:
                for disk in record.disks.values():
                    remove_quietly(disk.overlay)
            else:
                overlays = ", ".join(disk.overlay for disk in record.disks.values())
                below = "served disks (stopped now)" if record.served else "stored layers"
                report.warn(f"instant-recovery domain '{record.domain_name}' no longer exists; "
                            f"its overlays ({overlays}) rest on {below} of "
                            f"{record.store_root} and are kept")
            revoked.extend(release(record)[0])
            if record.served is not None:
                take_down(record, report)           # its servers and the point's pin
            record.remove()
            report.info(f"released the backup files instant-recovery domain "
                        f"'{record.domain_name}' used (it no longer exists)")
        finally:
            lock.release()
    return revoked

