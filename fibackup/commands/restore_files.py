"""``fibackup restore-files``: copy files or trees out of a restore point without
restoring its disks: the point is mounted privately (as ``fibackup mount`` does,
under the runtime directory), each ``--path`` is copied into ``--to`` keeping what it
was (fibackup/host/treecopy.py), and the mount is ended whatever happens."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Sequence

from fibackup.commands.mount import open_point, start_keeper, unmount
from fibackup.errors import GuestPathError, UsageError
from fibackup.host import treecopy
from fibackup.host.mounts import MountRecord
from fibackup.host.state import runtime_dir
from fibackup.model.fslayout import guest_path
from fibackup.report import Reporter


@dataclass(frozen=True)
class RestoreFilesOptions:
    domain: str
    backup_dir: str
    paths: Sequence[str]
    to: str
    at: str | None = None


@dataclass
class RestoreFilesResult:
    point: str
    to: str
    copied: list[str] = field(default_factory=list)
    files: int = 0
    directories: int = 0
    links: int = 0
    bytes: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"point": self.point, "to": self.to, "copied": self.copied, "files": self.files,
                "directories": self.directories, "links": self.links, "bytes": self.bytes,
                "warnings": self.warnings}


def restore_files(options: RestoreFilesOptions, report: Reporter) -> RestoreFilesResult:
    wanted = _checked_paths(options.paths)
    to = treecopy.prepare(options.to, [parts[-1] for parts in wanted])
    _store, spec = open_point(options.backup_dir, options.domain, options.at)
    os.makedirs(runtime_dir(), mode=0o755, exist_ok=True)
    mountpoint = tempfile.mkdtemp(prefix="files-", dir=runtime_dir())
    try:
        record = start_keeper(type(spec)(**{**spec.__dict__, "mountpoint": mountpoint}))
        try:
            return _copy(record, wanted, to, report)
        finally:
            unmount(mountpoint, report)
    finally:
        os.rmdir(mountpoint)


def _checked_paths(paths: Sequence[str]) -> list[list[str]]:
    if not paths:
        raise UsageError("name at least one --path (as the guest sees it, or "
                         "<disk>/<partition>/path when the point holds no operating system)")
    wanted = []
    for path in paths:
        try:
            wanted.append(guest_path(path))
        except ValueError:
            raise UsageError(f"--path {path!r} names no file of the guest (no '..', not "
                             "empty)") from None
    names = [parts[-1] for parts in wanted]
    if len(set(names)) != len(names):
        raise UsageError("two --path options end in the same name; restore them one at a "
                         "time into different --to directories")
    return wanted


def _copy(record: MountRecord, wanted: list[list[str]], to: str,
          report: Reporter) -> RestoreFilesResult:
    result = RestoreFilesResult(point=record.point, to=to)
    copied = treecopy.Copied()
    for parts in wanted:
        source = os.path.join(record.mountpoint, *parts)
        if not os.path.lexists(source):
            raise GuestPathError(_no_such_path(record, "/".join(parts)), point=record.point)
        _refuse_linked_parents(record, parts)
        destination = os.path.join(to, parts[-1])
        with report.progress(f"restore {'/'.join(parts)}", treecopy.total_bytes(source)) as bar:
            treecopy.copy_entry(source, destination, copied, bar)
        result.copied.append(destination)
    result.files, result.directories, result.links = copied.files, copied.directories, copied.links
    result.bytes, result.warnings = copied.bytes, copied.warnings
    for warning in copied.warnings:
        report.warn(warning)
    return result


def _refuse_linked_parents(record: MountRecord, parts: list[str]) -> None:
    """A path whose parents pass through a guest symlink would be resolved by the host
    (against the mount): refused, naming the link."""
    current = record.mountpoint
    for part in parts[:-1]:
        current = os.path.join(current, part)
        if os.path.islink(current):
            raise GuestPathError(f"{'/'.join(parts)}: {part} is a symbolic link in the guest "
                                 f"(to {os.readlink(current)}); name the path it points to",
                                 point=record.point)


def _no_such_path(record: MountRecord, path: str) -> str:
    if record.system is not None:
        return f"restore point {record.point} ({record.system}) has no /{path}"
    shown = ", ".join(item["path"].lstrip("/") for item in record.shown) or "nothing"
    return (f"restore point {record.point} has no {path}; it holds no operating system, so "
            f"paths start with a filesystem's directory: {shown}")
