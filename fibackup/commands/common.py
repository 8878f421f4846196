"""Helpers several commands share: domain state, disk selection, chain checks, the
layer index."""
from __future__ import annotations

import os
from typing import Sequence

from fibackup.errors import DomainStateError, UnsupportedDiskError, UsageError
from fibackup.host import state as host_state
from fibackup.model.chain import LayerIndex, LiveDisk
from fibackup.store.repo import BackupStore
from fibackup.virt import domxml
from fibackup.virt.libvirt_api import Domain


def require_state(domain: Domain, what: str) -> bool:
    """Refuse unless the domain is running, paused or shut off (``what`` needs it so);
    whether it is live (running or paused)."""
    state = domain.state_name()
    if state in ("running", "paused"):
        return True
    if state == "shut off":
        return False
    raise DomainStateError(f"domain '{domain.name}' is {state}; {what} needs it running, "
                           "paused or shut off", domain=domain.name)


def layer_index(store: BackupStore, domain_uuid: str,
                state: host_state.HostState | None = None) -> LayerIndex:
    """Stored layers of the domain, plus what the host state proves about live files
    (restored copies of stored layers, bases a commit produced)."""
    state = state or host_state.load(domain_uuid)
    return LayerIndex(store.stored_layers(domain_uuid), state.aliases(store.store_id),
                      state.compositions())


def select_disks(name: str, specs: Sequence[domxml.DiskSpec], include: Sequence[str],
                 exclude: Sequence[str]) -> domxml.Selection:
    """The disks fibackup works on; unknown names and unsupported disks are refused."""
    known = {spec.target for spec in specs}
    unknown = [target for target in [*include, *exclude] if target not in known]
    if unknown:
        raise UsageError(f"domain '{name}' has no disk {', '.join(unknown)}; "
                         f"its disks are {', '.join(sorted(known)) or 'none'}")
    selection = domxml.select_disks(specs, include, exclude)
    if selection.refused:
        lines = "; ".join(f"disk {target} is {why}" for target, why in selection.refused)
        raise UnsupportedDiskError(
            f"domain '{name}': {lines}. Leave such disks out with --exclude-disk "
            f"{' --exclude-disk '.join(target for target, _ in selection.refused)}")
    if not selection.selected:
        raise UsageError(f"domain '{name}' has no disk that fibackup can back up "
                         "(all are skipped or excluded)")
    return selection


def check_chain(name: str, disk: LiveDisk) -> None:
    """Every layer must be a local qcow2 or raw file fibackup can read and rebuild."""
    for layer in disk.layers:
        if layer.format not in ("qcow2", "raw") or not os.path.isfile(layer.path):
            raise UnsupportedDiskError(
                f"domain '{name}': disk {disk.target} rests on {layer.path or '?'} "
                f"({layer.format}), which is not a local qcow2 or raw file fibackup can copy; "
                f"leave the disk out with --exclude-disk {disk.target}")
