"""Prune's second half on a format-3 store: which points pins hold, and garbage
collection under the store's exclusive lock (fibackup/store/v3/gc.py)."""
from __future__ import annotations

from fibackup.fsutil import human
from fibackup.report import Reporter
from fibackup.store.repo import BackupStore
from fibackup.store.v3.gc import collect
from fibackup.store.v3.locks import store_lock
from fibackup.store.v3.pins import pins


def pinned_points(store: BackupStore, uuid: str, report: Reporter) -> set[int]:
    if store.chunks is None:
        return set()
    held = {pin.seq: pin for pin in pins(store.backend) if pin.domain_uuid == uuid}
    for pin in held.values():
        report.info(f"{pin.domain_name}: restore point {pin.point} is pinned by {pin.host} "
                    f"since {pin.time} ({pin.reason or 'no reason given'}); it is kept")
    return set(held)


def collect_garbage(store: BackupStore, report: Reporter) -> int:
    """Format 3: delete the indexes and chunks no point needs (v3/gc.py), under the store's
    exclusive lock; the bytes freed."""
    chunks = store.chunked
    with store_lock(store.backend, exclusive=True, command="prune (garbage collection)",
                    waiting=lambda holder: report.info(
                        f"garbage collection of {store.root} waits for {holder}")):
        problems: list[str] = []
        points = store.all_points(problems)
        index_ids = {ref.id for point in points for ref in point.indexes()}
        index_ids.update(index for pin in pins(store.backend) for index in pin.indexes)
        collected = collect(chunks, index_ids, problems)
    for problem in collected.problems:
        report.warn(f"{problem}; garbage collection deleted nothing")
    if not collected.problems:
        report.info(f"garbage collection of {store.root}: removed {collected.chunks} chunk(s) "
                    f"and {collected.indexes} index(es) no restore point needs, freed "
                    f"{human(collected.freed_bytes)}; {collected.kept_chunks} chunk(s) kept")
    return collected.freed_bytes
