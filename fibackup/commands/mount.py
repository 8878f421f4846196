"""``fibackup mount``, ``umount`` and ``mount --list``: a restore point's filesystems,
read-only, without copying it (docs/SERVING.md).

``mount`` checks what it can at once (the mountpoint, the store, the point, the
passphrase's source), then starts a keeper (fibackup/commands/mount_keeper.py) in a
session of its own and waits for its one status line.  ``umount`` asks FUSE to
unmount, waits for the keeper to undo its work, and undoes it itself when the
keeper is gone (the FUSE mount, the pin, the record), as ``repair`` does for every
record whose keeper died.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Optional

from fibackup import errors
from fibackup.commands.mount_keeper import KeeperSpec
from fibackup.commands.restore_common import find_points
from fibackup.errors import (FibackupError, MountpointError, StoreKeyError, UsageError)
from fibackup.fsutil import make_private_dirs, remove_quietly
from fibackup.host import mounts
from fibackup.host.mounts import MountRecord, alive
from fibackup.model.points import select_point
from fibackup.qemu.view import is_daemon_pid
from fibackup.report import Reporter
from fibackup.store.repo import BackupStore
from fibackup.store.v3 import passwords
from fibackup.store.v3.pins import remove_pin

START_TIMEOUT = 600.0
"""The appliance takes ~20 s under TCG; a guest filesystem that hangs it is cut off."""
STOP_TIMEOUT = 60.0


@dataclass(frozen=True)
class MountOptions:
    domain: str
    backup_dir: str
    mountpoint: str
    at: Optional[str] = None
    raw: bool = False


def check_mountpoint(path: str) -> str:
    """The mountpoint's real path: an existing empty directory that nothing is mounted on."""
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        raise MountpointError(f"{path} is not a directory; create an empty one first "
                              "(mkdir -p)", path=path)
    if os.path.ismount(real) or mounts.find(real) is not None:
        raise MountpointError(f"something is already mounted on {path}; 'fibackup umount "
                              f"{path}' or choose another directory", path=path)
    if os.listdir(real):
        raise MountpointError(f"{path} is not empty; choose an empty directory", path=path)
    return real


def open_point(backup_dir: str, domain: str, at: Optional[str]) -> tuple[BackupStore, KeeperSpec]:
    store = BackupStore.open(backup_dir)
    if store.chunks is None:
        raise UsageError(f"{store.root} is a format-{store.version} store: mount serves format-3 "
                         "points; restore the point ('fibackup restore') or copy the store to "
                         "format 3 ('fibackup copy')", path=store.root)
    if store.chunks.encrypted and not passwords.unattended():
        raise StoreKeyError(f"{store.root} is encrypted and a mount is served by a background "
                            "process, which never prompts: pass --password-file or set "
                            "[store] password_file in the configuration file", path=store.root)
    store.chunks.keys()
    point = select_point(find_points(store, domain), at, f"domain '{domain}'")
    return store, KeeperSpec(id=secrets.token_hex(6), mountpoint="", store=store.root,
                             domain_uuid=point.domain_uuid, point=point.id,
                             password_file=passwords.given_file())


def mount_point(options: MountOptions) -> MountRecord:
    mountpoint = check_mountpoint(options.mountpoint)
    _store, spec = open_point(options.backup_dir, options.domain, options.at)
    return start_keeper(KeeperSpec(**{**spec.__dict__, "mountpoint": mountpoint,
                                      "raw": options.raw}))


def start_keeper(spec: KeeperSpec) -> MountRecord:
    """Start the keeper and wait until its tree answers (or it failed: its error)."""
    make_private_dirs(mounts.mounts_dir())
    log = mounts.log_path(spec.id)
    read_end, write_end = os.pipe()
    with open(log, "ab") as output:
        keeper = subprocess.Popen([sys.executable, "-m", "fibackup.commands.mount_keeper",
                                   str(write_end)], stdin=subprocess.PIPE, stdout=output,
                                  stderr=output, pass_fds=(write_end,), start_new_session=True)
    os.close(write_end)
    assert keeper.stdin is not None
    keeper.stdin.write(spec.to_json().encode())
    keeper.stdin.close()
    line = _status_line(read_end, keeper, spec)
    document = json.loads(line) if line else {}
    if "ready" in document:
        return MountRecord(**{key: value for key, value in document["ready"].items()
                              if key != "kind"})
    keeper.wait()
    if "error" in document:
        remove_quietly(log)                   # its error says it all
    failure = document.get("error") or {"message": f"the mount's keeper ended without a word "
                                                   f"(its log: {log})"}
    raise _as_error(failure)


def _status_line(read_end: int, keeper: "subprocess.Popen[bytes]", spec: KeeperSpec) -> str:
    import select
    deadline = time.monotonic() + START_TIMEOUT
    with os.fdopen(read_end, "rb") as status:
        while True:
            ready, _, _ = select.select([status], [], [], 1.0)
            if ready:
                return status.readline().decode()
            if time.monotonic() > deadline:
                os.killpg(keeper.pid, signal.SIGKILL)
                keeper.wait()
                cleanup(mounts.find(spec.mountpoint))
                raise errors.ApplianceError(
                    f"the filesystems of restore point {spec.point} did not come up within "
                    f"{START_TIMEOUT:.0f} s (a damaged filesystem, or an appliance that "
                    "hangs: set LIBGUESTFS_BACKEND_SETTINGS=force_tcg where nested KVM does)",
                    point=spec.point)


def _as_error(document: dict[str, object]) -> FibackupError:
    kind = getattr(errors, str(document.get("kind", "")), FibackupError)
    if not (isinstance(kind, type) and issubclass(kind, FibackupError)):
        kind = FibackupError
    fields = {name: str(document[name]) for name in errors.FIELD_NAMES if name in document}
    return kind(str(document.get("message", "the mount failed")), **fields)


def unmount(mountpoint: str, report: Reporter) -> MountRecord:
    record = mounts.find(mountpoint)
    if record is None:
        raise MountpointError(f"{mountpoint} is not a fibackup mount ('fibackup mount --list' "
                              "shows them)", path=mountpoint)
    if alive(record.pid) and record.raw:
        os.kill(record.pid, signal.SIGTERM)         # the keeper ends its exports
    elif alive(record.pid) and os.path.ismount(record.mountpoint):
        done = subprocess.run(["fusermount3", "-u", record.mountpoint], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            detail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
            raise MountpointError(f"{mountpoint} is busy ({detail}); close what uses it "
                                  f"('fuser -vm {mountpoint}' names it) and run again",
                                  path=mountpoint)
    _wait_gone(record)
    cleanup(mounts.find(record.mountpoint), report)
    remove_quietly(mounts.log_path(record.id))
    return record


def _wait_gone(record: MountRecord) -> None:
    deadline = time.monotonic() + STOP_TIMEOUT
    while alive(record.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(record.pid):
        os.kill(record.pid, signal.SIGKILL)


def cleanup(record: Optional[MountRecord], report: Optional[Reporter] = None) -> bool:
    """Undo what a dead keeper left (its FUSE mount, its pin, its record); False when
    its keeper still runs."""
    if record is None:
        return True
    if alive(record.pid):
        return False
    if record.raw:
        _end_raw_exports(record)
    elif os.path.ismount(record.mountpoint) or _stale_mount(record.mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", record.mountpoint], capture_output=True,
                       check=False)
    if record.pin:
        try:
            remove_pin(BackupStore.open(record.store).backend, record.pin)
        except FibackupError as error:
            if report is not None:
                report.warn(f"the pin {record.pin} of the mount at {record.mountpoint} could not "
                            f"be removed ({error}); 'fibackup pin remove -b {record.store} "
                            f"{record.pin}' once the store is reachable")
            return False
    if record.sockets:
        shutil.rmtree(record.sockets, ignore_errors=True)
    mounts.remove(record.id)
    remove_quietly(mounts.log_path(record.id))
    return True


def _end_raw_exports(record: MountRecord) -> None:
    """The raw files a dead keeper left: their exports' daemons (if still there)
    stopped, the FUSE mounts removed, the files deleted."""
    for item in record.shown:
        path = os.path.join(record.mountpoint, item["path"].lstrip("/"))
        pid = int(item.get("pid", "0") or 0)
        if pid > 0 and alive(pid) and is_daemon_pid(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["fusermount3", "-u", "-z", path], capture_output=True, check=False)
        remove_quietly(path)


def _stale_mount(path: str) -> bool:
    try:
        os.stat(path)
        return False
    except OSError as error:
        return error.errno == 107               # ENOTCONN: the FUSE server is gone


def list_mounts() -> list[MountRecord]:
    """This host's mounts; one whose keeper is gone shows as ``stale`` (``umount`` or
    ``repair`` cleans it up)."""
    found = mounts.records()
    for record in found:
        if not alive(record.pid):
            record.state = "stale"
    return found


def repair_mounts(report: Reporter, domain: set[str]) -> list[str]:
    """Clean up the mounts of ``domain`` (its name or UUID) whose keeper is gone
    (``repair``); what was done."""
    done = []
    for record in mounts.records():
        if record.domain in domain and not alive(record.pid) and cleanup(record, report):
            done.append(f"removed the mount of {record.domain} point {record.point} at "
                        f"{record.mountpoint} (its server had stopped)")
    return done
