"""The keeper of one ``fibackup mount``: the background process that serves a restore
point at a mountpoint until it is unmounted (docs/SERVING.md).

``python -m fibackup.commands.mount_keeper STATUS-FD`` reads its KeeperSpec as JSON on
stdin.  It records itself (fibackup/host/mounts.py), pins the point in the store
(prune on any host leaves it alone), serves each disk with nbdkit, starts
libguestfs's appliance over them, mounts the filesystems read-only inside it and
shows them at the mountpoint (FUSE).  One JSON line on STATUS-FD says ``{"ready":
record}`` or ``{"error": ...}``; then the keeper serves until ``fusermount3 -u`` and
undoes all of it on the way out, whatever happened.  With ``raw`` it shows each disk
as the read-only file MOUNTPOINT/<disk>.raw (qemu-storage-daemon's FUSE export of the
served disk) and serves until SIGTERM.  If it is killed, nbdkit, the appliance and
the exports die with it; ``umount`` and ``repair`` remove the record and the pin.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from fibackup.errors import FibackupError, RestorePointNotFoundError
from fibackup.fsutil import host_name
from fibackup.guest.appliance import Appliance
from fibackup.host import mounts
from fibackup.host.mounts import MountRecord
from fibackup.model.fslayout import Placement, Skipped, data_layout, mountpoint_dirs, os_layout
from fibackup.model.naming import safe_component, utc_time
from fibackup.model.points import RestorePoint
from fibackup.qemu.view import exported_nbd
from fibackup.serve import nbdkit
from fibackup.serve.source import ServedDisk
from fibackup.store.repo import BackupStore
from fibackup.store.v3.pins import add_pin, remove_pin

Status = Callable[[dict[str, object]], None]


@dataclass(frozen=True)
class KeeperSpec:
    id: str
    mountpoint: str
    store: str
    domain_uuid: str
    point: str
    password_file: Optional[str] = None
    raw: bool = False
    """Each disk as the read-only file MOUNTPOINT/<disk>.raw instead of filesystems."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def find_point(store: BackupStore, spec: KeeperSpec) -> RestorePoint:
    for point in store.points(spec.domain_uuid):
        if point.id == spec.point:
            return point
    raise RestorePointNotFoundError(f"restore point {spec.point} is no longer in {store.root}",
                                    point=spec.point)


def keep(spec: KeeperSpec, status: Status) -> None:
    """Serve until unmounted; ``status`` is called once, when the tree answers."""
    _use_passphrase(spec)
    store = BackupStore.open(spec.store)
    point = find_point(store, spec)
    record = MountRecord(id=spec.id, mountpoint=spec.mountpoint, store=store.root,
                         domain=point.domain_name, point=point.id, seq=point.seq,
                         raw=spec.raw, pid=os.getpid(), started=utc_time())
    mounts.save(record)
    try:
        with contextlib.ExitStack() as stack:
            record.pin = add_pin(store.backend, point,
                                 f"mounted at {spec.mountpoint} on {host_name()}")
            mounts.save(record)
            stack.callback(remove_pin, store.backend, record.pin)
            record.sockets = nbdkit.sockets_dir()
            mounts.save(record)                     # a dead keeper's are found there
            stack.callback(shutil.rmtree, record.sockets, True)
            if spec.raw:
                _show_raw(stack, _servers(stack, store, point, spec, record.sockets), record)
                record.state = "mounted"
                mounts.save(record)
                status({"ready": record.to_json()})
                _until_stopped()
                return
            appliance = _appliance(stack, store, point, spec, record.sockets)
            _show(appliance, record)
            appliance.expose(spec.mountpoint)
            record.state = "mounted"
            mounts.save(record)
            status({"ready": record.to_json()})
            appliance.run()
    finally:
        mounts.remove(record.id)


def _use_passphrase(spec: KeeperSpec) -> None:
    """Where the passphrase comes from: the mount's --password-file, else the
    environment's and the configuration file's (never a prompt: no terminal here)."""
    from fibackup.config import load_config
    from fibackup.store.v3 import passwords
    config = load_config()
    passwords.use(passwords.Sources(password_file=spec.password_file,
                                    config_file=config.value("store.password_file"),
                                    config_command=config.value("store.password_command")))


def _servers(stack: contextlib.ExitStack, store: BackupStore, point: RestorePoint,
             spec: KeeperSpec, sockets: str) -> dict[str, nbdkit.Server]:
    """Every disk of the point served by nbdkit on sockets in ``sockets`` (stopped when
    ``stack`` unwinds)."""
    servers = {}
    for target in sorted(point.disks):
        disk = point.disks[target]
        assert disk.index is not None
        servers[target] = stack.enter_context(nbdkit.served(
            ServedDisk(store.root, disk.index.id, disk.virtual_size), sockets, target,
            password_file=spec.password_file))
    return servers


def _show_raw(stack: contextlib.ExitStack, servers: dict[str, nbdkit.Server],
              record: MountRecord) -> None:
    """Each served disk as the read-only file MOUNTPOINT/<disk>.raw (FUSE)."""
    for target, server in servers.items():
        name = f"{safe_component(target)}.raw"
        pid = stack.enter_context(exported_nbd(
            server.socket, os.path.join(record.mountpoint, name), server.log + ".qsd"))
        record.shown.append({"path": f"/{name}", "device": target, "fstype": "raw",
                             "pid": str(pid)})


def _until_stopped() -> None:
    """Wait for SIGTERM or SIGINT (``umount`` of a raw mount sends SIGTERM)."""
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    signal.sigwait(stop)


def _appliance(stack: contextlib.ExitStack, store: BackupStore, point: RestorePoint,
               spec: KeeperSpec, sockets: str) -> Appliance:
    """Every disk served by nbdkit, and the appliance launched over them."""
    servers = _servers(stack, store, point, spec, sockets)
    appliance = Appliance()
    stack.callback(appliance.close)                 # before the servers stop
    for target, server in servers.items():
        appliance.add_nbd(target, server.socket)
    appliance.launch()
    return appliance


def _show(appliance: Appliance, record: MountRecord) -> None:
    """Mount the point's filesystems inside the appliance: the OS tree, else (no OS,
    several, or its root does not mount) one directory per filesystem."""
    filesystems = appliance.filesystems()
    found = appliance.operating_system()
    mounted: list[Placement] = []
    skipped: list[Skipped] = []
    if found is not None:
        types = {item.device: item.fstype for item in filesystems}
        mounted, skipped = appliance.mount(os_layout(found[0], types))
        if any(item.path == "/" for item in mounted):
            record.system = found[1]
        else:
            appliance.unmount_all()
            mounted, skipped = [], []
    if record.system is None:
        placements, unreadable = data_layout(filesystems)
        appliance.make_dirs(mountpoint_dirs(placements))
        mounted, failed = appliance.mount(placements)
        skipped = [*unreadable, *failed]
    record.shown = [{"path": item.path, "device": item.device, "fstype": item.fstype}
                    for item in mounted]
    record.skipped = [{"device": item.device, "fstype": item.fstype, "reason": item.reason}
                      for item in skipped]


def main() -> int:
    status_fd = int(sys.argv[1])
    reported = False

    def status(document: dict[str, object]) -> None:
        nonlocal reported
        os.write(status_fd, (json.dumps(document) + "\n").encode())
        os.close(status_fd)
        reported = True

    try:
        spec = KeeperSpec(**json.loads(sys.stdin.read()))
        keep(spec, status)
        return 0
    except FibackupError as error:
        if not reported:
            status({"error": error.to_json()})
        print(f"fibackup mount: {error}", file=sys.stderr, flush=True)
        return 1
    except BaseException as error:
        if not reported:
            status({"error": {"message": f"the mount's keeper failed: {error!r}",
                              "kind": "FibackupError", "exit_code": 1}})
        raise


if __name__ == "__main__":
    sys.exit(main())
