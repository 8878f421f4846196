"""What ``restore`` and ``restore --instant`` share: which restore point and disks,
the destination directory QEMU must reach, and how much stored data a chain holds."""
from __future__ import annotations

import grp
import os
import pwd
import stat
from typing import Optional, Sequence

from fibackup.errors import DestinationError, UsageError
from fibackup.model.points import PointDisk, RestorePoint
from fibackup.report import Reporter
from fibackup.store.repo import BackupStore

QEMU_USERS = ("libvirt-qemu", "qemu")


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


def chosen_disks(point: RestorePoint, wanted: Sequence[str]) -> list[PointDisk]:
    missing = [target for target in wanted if target not in point.disks]
    if missing:
        raise UsageError(
            f"restore point {point.id} has no disk {', '.join(missing)}; it holds "
            f"{', '.join(sorted(point.disks))}")
    return [point.disks[target] for target in (wanted or sorted(point.disks))]


def prepare_destination(path: str, define: bool, report: Reporter) -> str:
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


def _groups_of(user: str) -> list[grp.struct_group]:
    return [entry for entry in grp.getgrall() if user in entry.gr_mem]


def stored_bytes(store: BackupStore, point: RestorePoint, disks: Sequence[PointDisk]) -> int:
    """The data bytes of the disks' stored layers: what a restore (or a later
    ``--finalize``) writes at most."""
    if point.format == 3:
        return sum(disk.index.data_bytes for disk in disks if disk.index is not None)
    return sum(store.layer_record(point.domain_uuid, layer.id).chunks.data_bytes
               for disk in disks for layer in disk.layers)

