"""A domain's non-disk files, saved with each restore point and restored with it.

Saved (docs/FORMAT.md, "Stored files"): the UEFI variable store (``<os><nvram>``),
the state directory of an emulated TPM (swtpm, ``/var/lib/libvirt/swtpm/<uuid>/``)
and the files of a direct kernel boot (``<os><kernel>``, ``<initrd>``, ``<dtb>``).
The read-only ``<loader>`` firmware is a system file and is not saved.

NVRAM and TPM state change while the domain runs, so they are copied right
after the snapshot, first; a copy during which the file changed (inode, size or
mtime) is made again.  The boot files are static and copied after them.
"""
from __future__ import annotations

import os
import stat
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

from fibackup.errors import DestinationError
from fibackup.fsutil import fsync_dir, remove_quietly, temp_name, write_file
from fibackup.model.chain import FileStamp
from fibackup.model.naming import safe_component
from fibackup.model.points import FILE_ROLES, PointFile, RestorePoint
from fibackup.report import Reporter
from fibackup.store.repo import BackupStore
from fibackup.store.v3 import files as v3files
from fibackup.virt import domxml

SWTPM_DIR = "/var/lib/libvirt/swtpm"
"""Where libvirt (qemu:///system) keeps each domain's swtpm state, by UUID."""
COPY_ATTEMPTS = 3


@dataclass(frozen=True)
class SourceFile:
    """A file of the domain on this host that a restore point saves."""

    role: str
    path: str
    name: str = ""
    """For ``tpm``: the path relative to the domain's swtpm state directory."""


class _Changed(Exception):
    """The source file was written while it was being copied."""


def tpm_state_dir(domain_uuid: str) -> str:
    return os.path.join(SWTPM_DIR, domain_uuid)


def source_files(root: ET.Element, domain_uuid: str) -> list[SourceFile]:
    """The domain's files to save, the ones a running guest writes first."""
    boot = domxml.boot_files(root)
    files = [SourceFile("nvram", boot["nvram"])] if "nvram" in boot else []
    if domxml.has_tpm_emulator(root):
        files += tpm_files(tpm_state_dir(domain_uuid))
    return files + [SourceFile(role, boot[role]) for role in ("kernel", "initrd", "dtb")
                    if role in boot]


def tpm_files(directory: str) -> list[SourceFile]:
    """The regular files of an swtpm state directory (lock files, swtpm's temporary
    ``TMP*`` files and links left out)."""
    found = []
    for current, subdirs, names in os.walk(directory):
        subdirs[:] = sorted(name for name in subdirs if not name.startswith("."))
        for name in sorted(names):
            path = os.path.join(current, name)
            if name.startswith((".", "TMP")) or not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            found.append(SourceFile("tpm", path, os.path.relpath(path, directory)))
    return found


def planned_bytes(files: Iterable[SourceFile]) -> int:
    """At most what saving ``files`` writes (for the free-space check)."""
    total = 0
    for item in files:
        try:
            total += os.stat(item.path).st_size
        except OSError:
            pass
    return total


def save_files(store: BackupStore, domain_uuid: str, name: str, files: Sequence[SourceFile],
               report: Reporter) -> list[PointFile]:
    """Store each file (content-addressed: unchanged files are stored once)."""
    saved = []
    for item in files:
        entry = _save_one(store, domain_uuid, name, item, report)
        if entry is not None:
            saved.append(entry)
    return saved


def _save_one(store: BackupStore, domain_uuid: str, name: str, item: SourceFile,
              report: Reporter) -> Optional[PointFile]:
    what = f"{item.role} file {item.path}"
    for attempt in range(1, COPY_ATTEMPTS + 1):
        try:
            before = os.stat(item.path)
        except FileNotFoundError:
            report.info(f"{name}: {what} does not exist (yet); not saved")
            return None
        last = attempt == COPY_ATTEMPTS
        check = None if last else _unchanged(item.path, before)
        try:
            if store.chunks is not None:
                ref, new = v3files.save_file(store.chunks, item.path, check, before.st_size)
                saved = PointFile(role=item.role, path=item.path, id=ref.id, digest=ref.id,
                                  size=before.st_size, mode=stat.S_IMODE(before.st_mode),
                                  name=item.name, new=new, index=ref)
            else:
                record, new = store.store_file(domain_uuid, item.path, check_source=check)
                saved = PointFile(role=item.role, path=item.path, id=record.id,
                                  digest=record.digest, size=record.size,
                                  mode=stat.S_IMODE(before.st_mode), name=item.name, new=new)
        except _Changed:
            continue
        if last and COPY_ATTEMPTS > 1:
            report.warn(f"{name}: {what} changed during each of {COPY_ATTEMPTS - 1} copies; "
                        "the last copy was kept and may mix two states")
        return saved
    return None


def _unchanged(path: str, before: os.stat_result) -> Callable[[], None]:
    def check() -> None:
        if FileStamp.of(os.stat(path)) != FileStamp.of(before):
            raise _Changed(path)
    return check


# -- restore -------------------------------------------------------------------------

def restorable(point: RestorePoint, report: Reporter) -> list[PointFile]:
    """The point's files this fibackup knows how to put back (others are named)."""
    unknown = sorted({item.role for item in point.files if item.role not in FILE_ROLES})
    if unknown:
        report.warn(f"restore point {point.id} holds file(s) of kind {', '.join(unknown)}, "
                    "which this fibackup does not know; they are not restored (upgrade fibackup)")
    return [item for item in point.files if item.role in FILE_ROLES]


def restored_name(point: RestorePoint, item: PointFile) -> str:
    """The file's name inside --to (TPM state: in a ``tpm-<point>/`` directory)."""
    if item.role == "tpm":
        return os.path.join(f"tpm-{point.id}", item.name)
    return f"{item.role}-{point.id}-{safe_component(os.path.basename(item.path)) or 'file'}"


def restored_place(point: RestorePoint, item: PointFile) -> str:
    """What a restore reports for the file: itself, or the TPM state directory."""
    return f"tpm-{point.id}" if item.role == "tpm" else restored_name(point, item)


def restored_tpm_dir(point: RestorePoint, destination: str) -> str:
    return os.path.join(destination, f"tpm-{point.id}")


def boot_paths(point: RestorePoint, files: Sequence[PointFile], destination: str) -> dict[str, str]:
    """Role -> restored path of the NVRAM and boot files, for the domain definition."""
    return {item.role: os.path.join(destination, restored_name(point, item))
            for item in files if item.role != "tpm"}


def install_tpm_state(store: BackupStore, point: RestorePoint, files: Sequence[PointFile],
                      domain_uuid: str, destination: str, report: Reporter) -> Optional[str]:
    """Put the point's TPM state into libvirt's swtpm directory of ``domain_uuid``.

    State found there is first copied into ``--to`` (``tpm-<point>-replaced/``) and
    then removed: nothing is lost silently.  Every file is checked against its
    stored checksum.  libvirt gives the files to the swtpm user at the next start.
    Returns the directory where the replaced state was kept, if any.
    """
    tpm = [item for item in files if item.role == "tpm"]
    if not tpm:
        return None
    target = tpm_state_dir(domain_uuid)
    kept = _keep_replaced(target, restored_tpm_dir(point, destination) + "-replaced")
    if kept:
        report.info(f"the TPM state that was in {target} is kept in {kept}")
    os.makedirs(target, mode=0o711, exist_ok=True)
    for item in tpm:
        final = os.path.join(target, item.name)
        os.makedirs(os.path.dirname(final), mode=0o700, exist_ok=True)
        temporary = temp_name(os.path.dirname(final), os.path.basename(final))
        try:
            store.restore_file(point.domain_uuid, item, temporary)
            os.chmod(temporary, item.mode & 0o700 or 0o600)
            os.replace(temporary, final)
        finally:
            remove_quietly(temporary)
        fsync_dir(os.path.dirname(final))
    wanted = {os.path.join(target, item.name) for item in tpm}
    for stale in tpm_files(target):
        if stale.path not in wanted:
            os.unlink(stale.path)
    report.info(f"TPM state of restore point {point.id} installed in {target}")
    return kept


def _keep_replaced(state_dir: str, keep: str) -> Optional[str]:
    """Copy the TPM state files in ``state_dir`` to ``keep``; where, or None if none."""
    present = tpm_files(state_dir) if os.path.isdir(state_dir) else []
    if not present:
        return None
    if os.path.lexists(keep):
        raise DestinationError(f"{keep} already exists; move it away so the TPM state it "
                               "would replace can be kept there")
    for item in present:
        copy = os.path.join(keep, item.name)
        os.makedirs(os.path.dirname(copy), mode=0o700, exist_ok=True)
        with open(item.path, "rb") as source:
            write_file(copy, source.read())
    return keep
