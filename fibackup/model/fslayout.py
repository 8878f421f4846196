"""Where each guest filesystem of a restore point appears under a mountpoint (pure, no
I/O): docs/SERVING.md, "File-level restore".

When the disks hold one operating system, its root tree as the guest mounts it (the
inspection's mountpoints, shortest first).  Otherwise every filesystem gets its own
directory: ``<disk>/<partition>/`` for a partition, ``<disk>/disk/`` for a filesystem
on a whole disk, ``lvm/<vg>/<lv>/`` for a logical volume (which may span disks).
What cannot be shown (swap, LUKS, an unknown type) is listed with the reason.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Collection, Mapping, Optional, Sequence

UNREADABLE = {"swap": "swap space", "crypto_LUKS": "encrypted (LUKS): not opened",
              "unknown": "no filesystem the appliance knows", "": "no filesystem"}


@dataclass(frozen=True)
class GuestFilesystem:
    """A filesystem the appliance found: its device there, type, and where it lies."""

    device: str
    fstype: str
    disk: Optional[str] = None
    """The disk's target (vda) for a partition or a whole disk."""
    partition: Optional[int] = None
    """The partition number; None for a whole disk or a logical volume."""
    volume: Optional[tuple[str, str]] = None
    """(volume group, logical volume) of an LV."""


_PARTITION = re.compile(r"^(/dev/sd[a-z]+)([0-9]+)$")


def place_device(device: str, fstype: str, devices: Sequence[str], targets: Sequence[str],
                 volumes: Collection[str]) -> Optional[GuestFilesystem]:
    """Where the appliance's ``device`` lies, from its name: a logical volume
    (``/dev/VG/LV`` in ``volumes``), a whole disk or a partition (``/dev/sdXN``) of
    the ``devices`` the appliance lists, which are the ``targets`` in the order they
    were added; None when the name does not say (ask the appliance)."""
    if device in volumes:
        parts = device.split("/")
        return GuestFilesystem(device, fstype, volume=(parts[2], parts[3])) \
            if len(parts) == 4 else None
    whole, partition = device, None
    match = _PARTITION.match(device)
    if device not in devices and match is not None:
        whole, partition = match.group(1), int(match.group(2))
    if whole not in devices or len(devices) != len(targets):
        return None
    return GuestFilesystem(device, fstype, disk=targets[list(devices).index(whole)],
                           partition=partition)


@dataclass(frozen=True)
class Placement:
    device: str
    fstype: str
    path: str
    """Under the mountpoint, "/"-separated, "/" for the root of an OS tree."""


@dataclass(frozen=True)
class Skipped:
    device: str
    fstype: str
    reason: str


_SAFE = re.compile(r"^[A-Za-z0-9._+-]{1,128}$")


def _component(name: str) -> str:
    """A directory name taken from the guest (a VG or LV name): kept when harmless,
    otherwise its bytes in hex (never a path of its own: no '/', no '..')."""
    return name if _SAFE.match(name) and name not in (".", "..") else "x" + name.encode().hex()


def data_layout(filesystems: Sequence[GuestFilesystem]) -> tuple[list[Placement], list[Skipped]]:
    """Every filesystem in its own directory (no operating system, or several)."""
    placed: list[Placement] = []
    skipped: list[Skipped] = []
    for item in sorted(filesystems, key=lambda f: (f.disk or "~", f.partition or 0, f.device)):
        reason = UNREADABLE.get(item.fstype)
        if reason is not None:
            skipped.append(Skipped(item.device, item.fstype, reason))
            continue
        if item.volume is not None:
            path = f"/lvm/{_component(item.volume[0])}/{_component(item.volume[1])}"
        elif item.disk is not None:
            path = f"/{item.disk}/{item.partition if item.partition is not None else 'disk'}"
        else:
            path = f"/other/{_component(item.device.rsplit('/', 1)[-1])}"
        placed.append(Placement(item.device, item.fstype, path))
    return placed, skipped


def os_layout(mountpoints: Mapping[str, str],
              types: Mapping[str, str]) -> list[Placement]:
    """An operating system's tree: its mountpoints (guest path -> device), parents first;
    only absolute, normal guest paths (a hostile fstab gets no '..')."""
    placed = []
    for path, device in sorted(mountpoints.items(), key=lambda item: (item[0].count("/"),
                                                                     len(item[0]), item[0])):
        parts = [part for part in path.split("/") if part]
        if not path.startswith("/") or any(part in (".", "..") for part in parts):
            continue
        placed.append(Placement(device, types.get(device, ""), "/" + "/".join(parts)))
    return placed


def mountpoint_dirs(placements: Sequence[Placement]) -> list[str]:
    """The directories to make in the appliance's empty root before anything is
    mounted, parents first (a data layout; an OS tree brings its own)."""
    needed: set[str] = set()
    for placement in placements:
        parts = [part for part in placement.path.split("/") if part]
        for depth in range(1, len(parts) + 1):
            needed.add("/" + "/".join(parts[:depth]))
    return sorted(needed, key=lambda path: (path.count("/"), path))


def guest_path(path: str) -> list[str]:
    """``restore-files --path``: the components below the mountpoint (ValueError for a
    path that climbs out or names nothing)."""
    parts = [part for part in path.split("/") if part and part != "."]
    if not parts or ".." in parts:
        raise ValueError(path)
    return parts
