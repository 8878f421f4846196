"""Records of this host's mounts of restore points (``fibackup mount``; docs/SERVING.md).

``<state dir>/mounts/<id>.json`` exists while a keeper process serves a point at a
mountpoint: which store, point and pin, the keeper's pid, what is shown where.  It
is written (atomically) by the keeper before it pins the point, and removed by the
keeper when it ends; a record whose keeper is gone is what ``umount`` and ``repair``
clean up (the FUSE mount, the pin).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from fibackup.errors import HostStateError
from fibackup.fsutil import make_private_dirs, remove_quietly, write_file
from fibackup.host.state import state_dir

RECORD_KIND = "fibackup-mount"


@dataclass
class MountRecord:
    id: str
    mountpoint: str
    store: str
    domain: str
    point: str
    seq: int
    raw: bool = False
    pid: int = 0
    pin: Optional[str] = None
    state: str = "starting"
    """``starting`` until the tree answers, then ``mounted``."""
    started: str = ""
    system: Optional[str] = None
    """The operating system shown (its product name), else None: one directory per
    filesystem."""
    shown: list[dict[str, str]] = field(default_factory=list)
    """{"path", "device", "fstype"} of each filesystem (or raw disk) shown."""
    skipped: list[dict[str, str]] = field(default_factory=list)
    """{"device", "fstype", "reason"} of each filesystem not shown."""
    sockets: Optional[str] = None
    """The directory of its NBD servers' sockets (removed with a dead keeper's mount)."""

    def to_json(self) -> dict[str, Any]:
        return {"kind": RECORD_KIND, **asdict(self)}


def mounts_dir() -> str:
    return os.path.join(state_dir(), "mounts")


def record_path(mount_id: str) -> str:
    return os.path.join(mounts_dir(), f"{mount_id}.json")


def log_path(mount_id: str) -> str:
    """What the keeper and its servers print (kept after a failed start)."""
    return os.path.join(mounts_dir(), f"{mount_id}.log")


def save(record: MountRecord) -> None:
    make_private_dirs(mounts_dir())
    write_file(record_path(record.id), json.dumps(record.to_json(), indent=1).encode(),
               replace=True)


def remove(mount_id: str) -> None:
    remove_quietly(record_path(mount_id))


def load(path: str) -> MountRecord:
    try:
        with open(path, "rb") as handle:
            document = json.load(handle)
        if document.pop("kind", None) != RECORD_KIND:
            raise ValueError("not a mount record")
        return MountRecord(**document)
    except (OSError, ValueError, TypeError) as error:
        raise HostStateError(f"the mount record {path} cannot be read ({error}); remove it "
                             "once nothing is mounted there", path=path) from None


def records() -> list[MountRecord]:
    try:
        names = sorted(os.listdir(mounts_dir()))
    except FileNotFoundError:
        return []
    return [load(os.path.join(mounts_dir(), name)) for name in names if name.endswith(".json")]


def find(mountpoint: str) -> Optional[MountRecord]:
    wanted = os.path.realpath(mountpoint)
    for record in records():
        if record.mountpoint == wanted:
            return record
    return None


def alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:                                  # a zombie of ours is not alive
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True
