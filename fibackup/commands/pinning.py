"""``fibackup pin add|list|remove``: restore points of a format-3 store that prune and
garbage collection keep (fibackup/store/v3/pins.py)."""
from __future__ import annotations

from typing import Optional

from fibackup.commands.restore_common import find_points
from fibackup.errors import UsageError
from fibackup.model.points import select_point
from fibackup.store.repo import BackupStore
from fibackup.store.v3.pins import Pin, add_pin, pins, remove_pin


def _chunked(backup_dir: str) -> BackupStore:
    store = BackupStore.open(backup_dir)
    if store.chunks is None:
        raise UsageError(f"{store.root} is a format-1 store: pins are a format-3 feature",
                         path=store.root)
    store.chunks.keys()
    return store


def pin_point(backup_dir: str, domain: str, at: Optional[str], reason: str) -> tuple[str, str]:
    """Pin a point; (pin id, point id)."""
    store = _chunked(backup_dir)
    point = select_point(find_points(store, domain), at, f"domain '{domain}'")
    return add_pin(store.backend, point, reason), point.id


def list_pins(backup_dir: str) -> list[Pin]:
    return pins(_chunked(backup_dir).backend)


def unpin(backup_dir: str, pin_id: str) -> None:
    store = _chunked(backup_dir)
    if not remove_pin(store.backend, pin_id):
        raise UsageError(f"{store.root} has no pin {pin_id} ('fibackup pin list' shows them)")
