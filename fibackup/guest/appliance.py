"""libguestfs's appliance over a restore point's served disks (a thin adapter over the
Python binding, Debian's python3-guestfs).

The appliance's QEMU runs as root under the ``direct`` backend (the sockets are
root's); ``LIBGUESTFS_BACKEND_SETTINGS=force_tcg`` is needed where nested KVM hangs
(libguestfs reads it, as every libguestfs tool does).
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Optional, Sequence

from fibackup.errors import ApplianceError
from fibackup.model.fslayout import GuestFilesystem, Placement, Skipped, place_device

DEBIAN_BINDINGS = "/usr/lib/python3/dist-packages"
INSTALL_HINT = ("apt-get install libguestfs-tools python3-guestfs, and a kernel in /boot "
                "(scripts/setup-host.sh does both)")
TCG_HINT = ("run 'libguestfs-test-tool' to see why; where nested KVM hangs or aborts the "
            "appliance, set LIBGUESTFS_BACKEND_SETTINGS=force_tcg")


def binding() -> Any:
    """The ``guestfs`` module: the interpreter's own, else Debian's (it is built for the
    same Python 3 ABI as the venv's)."""
    try:
        return importlib.import_module("guestfs")
    except ImportError:
        pass
    if not os.path.exists(os.path.join(DEBIAN_BINDINGS, "guestfs.py")):
        raise ApplianceError(f"libguestfs's Python binding is not installed: {INSTALL_HINT}")
    sys.path.insert(0, DEBIAN_BINDINGS)
    try:
        return importlib.import_module("guestfs")
    except ImportError as error:
        raise ApplianceError(f"libguestfs's Python binding does not load here ({error}): "
                             f"{INSTALL_HINT}") from None
    finally:
        sys.path.remove(DEBIAN_BINDINGS)


class Appliance:
    """One appliance over some read-only disks (NBD sockets or local raw files)."""

    def __init__(self) -> None:
        module = binding()
        os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")
        self.g = module.GuestFS(python_return_dict=True, close_on_exit=False)
        self.g.set_autosync(False)             # read-only: closing needs no sync
        self.targets: list[str] = []

    def add_nbd(self, target: str, socket: str) -> None:
        self.g.add_drive_opts("", format="raw", readonly=True, protocol="nbd",
                              server=[f"unix:{socket}"], name=target)
        self.targets.append(target)

    def add_file(self, target: str, path: str) -> None:
        self.g.add_drive_opts(path, format="raw", readonly=True, name=target)
        self.targets.append(target)

    def launch(self) -> None:
        try:
            self.g.launch()
        except RuntimeError as error:
            raise ApplianceError(f"libguestfs's appliance did not start ({_first_line(error)}); "
                                 f"{TCG_HINT}") from None

    def filesystems(self) -> list[GuestFilesystem]:
        """Every filesystem, with where it lies.  Each appliance call costs ~0.3 s under
        TCG: the places come from one list of the disks and one of the LVs, by name
        (fslayout.place_device), and only a name that does not parse asks per device."""
        listed = sorted(self.g.list_filesystems().items())
        devices = self.g.list_devices()
        volumes = set(self.g.lvs()) if any(not name.startswith("/dev/sd")
                                           for name, _type in listed) else set()
        found = []
        for device, fstype in listed:
            placed = place_device(device, fstype, devices, self.targets, volumes)
            found.append(placed if placed is not None else self._describe(device, fstype))
        return found

    def _describe(self, device: str, fstype: str) -> GuestFilesystem:
        g = self.g
        if g.is_lv(device):
            canonical = g.lvm_canonical_lv_name(device)          # /dev/VG/LV
            parts = canonical.split("/")
            return GuestFilesystem(device, fstype, volume=(parts[2], parts[3]))
        try:
            whole = g.part_to_dev(device)
            partition: Optional[int] = g.part_to_partnum(device)
        except RuntimeError:
            whole, partition = device, None
        try:
            disk = self.targets[g.device_index(whole)]
        except (RuntimeError, IndexError):
            return GuestFilesystem(device, fstype)
        return GuestFilesystem(device, fstype, disk=disk, partition=partition)

    def operating_system(self) -> Optional[tuple[dict[str, str], str]]:
        """The only OS's mountpoints (guest path -> device) and its product name; None
        when the disks hold none or several."""
        try:
            roots = self.g.inspect_os()
        except RuntimeError:
            return None
        if len(roots) != 1:
            return None
        root = roots[0]
        return dict(self.g.inspect_get_mountpoints(root)), self.g.inspect_get_product_name(root)

    def make_dirs(self, paths: Sequence[str]) -> None:
        for path in paths:
            self.g.mkmountpoint(path)

    def mount(self, placements: Sequence[Placement]) -> tuple[list[Placement], list[Skipped]]:
        """Mount each read-only; one that does not mount (damaged, an unknown feature) is
        skipped with libguestfs's reason, the rest stay usable."""
        mounted, skipped = [], []
        for placement in placements:
            try:
                self.g.mount_ro(placement.device, placement.path)
                mounted.append(placement)
            except RuntimeError as error:
                skipped.append(Skipped(placement.device, placement.fstype,
                                       f"does not mount ({_first_line(error)})"))
        return mounted, skipped

    def unmount_all(self) -> None:
        self.g.umount_all()

    def expose(self, mountpoint: str) -> None:
        """Show the mounted tree at ``mountpoint`` (FUSE, read-only, root only); it answers
        once :meth:`run` runs."""
        try:
            self.g.mount_local(mountpoint, readonly=True)
        except RuntimeError as error:
            raise ApplianceError(f"cannot show the filesystems at {mountpoint} "
                                 f"({_first_line(error)})", path=mountpoint) from None

    def run(self) -> None:
        """Serve the exposed tree until it is unmounted (``fusermount3 -u``)."""
        self.g.mount_local_run()

    def close(self) -> None:
        """Stop the appliance at once: every disk is read-only, there is nothing to flush
        (an orderly shutdown costs ~10 s under TCG)."""
        self.g.close()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
