"""The backup of one disk into a format-3 store: its index at the new point.

The plan is the same as for layer copies (model/chain.plan_disk): the frozen live
layers that the store's records prove are stored (``plan.reuse``), and the ones
frozen since (``plan.copy``).  The new point's index is then the index of the
newest point that ends on ``plan.reuse[-1]`` with every chunk that ``plan.copy``'s
layers hold re-read (``qemu-img map``: depth below their count); the identity
rules prove that the view below them is that point's view.  Anything unproven
(no such point, a resized disk, a new generation) reads every chunk holding data
(a new full index: dedup stores only what differs).  Chunks are read as the guest
sees them: from the layer files at the offsets ``qemu-img map`` gives, and what only
QEMU can decode (compressed clusters) through the chain exported by qemu-storage-daemon
(qemu/reader.py).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

from fibackup import faults
from fibackup.commands.parallel import Guard
from fibackup.errors import InconsistentChainError
from fibackup.fsutil import file_identity
from fibackup.host.journal import Journal
from fibackup.host.state import state_dir
from fibackup.model import naming
from fibackup.model.chain import DiskPlan, FileIdentity, LiveDisk, StoredLayer
from fibackup.model.points import IndexRef, PointDisk, PointLayer, RestorePoint
from fibackup.qemu import reader, view
from fibackup.report import Reporter
from fibackup.store.chunks import ChunkList, Throttle
from fibackup.store.repo import BackupStore
from fibackup.store.v3.index import DiskIndex, chunk_numbers
from fibackup.store.v3.ingest import ingest


def starting_index(store: BackupStore, points: Sequence[RestorePoint], target: str,
                   plan: DiskPlan) -> Optional[DiskIndex]:
    """The index the new one starts from: that of the newest of the domain's ``points``
    whose disk ``target`` ends on the last reused layer (None: read everything)."""
    if not plan.reuse or plan.new_generation:
        return None
    last = plan.reuse[-1].id
    for point in reversed(points):
        disk = point.disks.get(target)
        if disk is not None and disk.index is not None and disk.layers[-1].id == last:
            index = store.chunked.get_index(disk.index.id)
            return index if index.virtual_size == plan.reuse[-1].virtual_size else None
    return None


def back_up_disk(store: BackupStore, points: Sequence[RestorePoint], domain_uuid: str,
                 name: str, disk: LiveDisk, plan: DiskPlan, tag: str, report: Reporter,
                 journal: Journal, throttle: Optional[Throttle],
                 guard: Guard) -> tuple[PointDisk, int]:
    """Read what changed, store the new chunks and the index, then the records of the
    newly frozen layers; the point's entry for the disk and the bytes read.  ``points``:
    the domain's points in the store, oldest first (read once for all its disks)."""
    chunks = store.chunked
    chain = [(layer.path, layer.format) for layer in disk.layers]
    virtual_size = plan.copy[-1].virtual_size if plan.copy else plan.reuse[-1].virtual_size
    base = starting_index(store, points, disk.target, plan)
    if base is None and plan.reuse and plan.copy:
        report.info(f"{name}: disk {disk.target}: no restore point of this store ends on its "
                    "stored layers; every chunk holding data is read (only new ones are stored)")
    extents = view.allocation(chain)
    top_layers = len(plan.copy) if base is not None else None
    start = base or DiskIndex(virtual_size, chunks.settings.chunk_size)
    numbers = chunk_numbers(view.changed_ranges(extents, top_layers), start.chunk_size,
                            virtual_size)
    scratch = views_dir()
    step = journal.start("backup.chunks", store=store.root, disk=disk.target,
                         chunks=len(numbers), views=scratch)
    report.info(f"{name}: reading {len(numbers)} chunk(s) of {disk.target} "
                f"({os.path.basename(disk.active.path)})")
    with report.progress(f"{disk.target} {os.path.basename(disk.active.path)}",
                         sum(start.length(number) for number in numbers)) as bar:
        with reader.reading(chain, extents, scratch=scratch) as presented:
            done = ingest(chunks, presented, start, numbers, progress=guard(faults.counting(bar)),
                          throttle=throttle.consume if throttle else None, check=guard.check)
    for item in plan.copy:
        require_unchanged(item.layer.path, item.identity, "read")
    index_id, index_bytes = chunks.put_index(done.index)
    chunks.settle()
    journal.done(step, new_chunks=done.new_chunks)
    faults.point("store.image-published")
    layers = [PointLayer.of(layer, new=False) for layer in plan.reuse]
    parent = plan.parent_of_first_copy
    for position, item in enumerate(plan.copy, start=len(plan.reuse)):
        layer = StoredLayer(id=naming.new_layer_id(tag, disk.target, position), disk=disk.target,
                            parent=parent, image_format=item.layer.format,
                            size=item.identity.size, virtual_size=item.virtual_size, digest="",
                            source=item.identity)
        store.writer.write_layer_record(domain_uuid, layer, ChunkList(layer.size, 0, ()))
        layers.append(PointLayer.of(layer, new=True))
        parent = layer.id
    ref = IndexRef(id=index_id, data_bytes=done.index.data_bytes, chunks=len(done.index.chunks),
                   new_chunks=done.new_chunks, stored_bytes=done.stored_bytes + index_bytes)
    return PointDisk(target=disk.target, virtual_size=virtual_size, layers=tuple(layers),
                     source_path=disk.active.path, index=ref), done.read_bytes


def views_dir() -> str:
    """Where this host's exports of frozen chains are mounted (repair stops leftovers)."""
    path = os.path.join(state_dir(), "views")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def require_unchanged(path: str, identity: FileIdentity, doing: str) -> None:
    """InconsistentChainError when a frozen layer changed while it was being ``doing``
    (copied, read): nothing of it is published."""
    if file_identity(path) != identity:
        raise InconsistentChainError(
            f"{path} changed while it was being {doing} although it should be frozen; "
            "nothing of it was published and no restore point was made")
