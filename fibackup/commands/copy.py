"""``fibackup copy``: restore points from one store into a format-3 store.

Any source (format 1/2: the upgrade path; format 3, plain or encrypted with another
key; a directory or S3) into a format-3 target.  Per point, oldest first:

1. a point the target holds already (same domain UUID and point id) is skipped, so a
   copy run again (after a kill, or nightly) only adds what is missing;
2. each disk's view is read from the source, every chunk checked on the way (a
   format-1/2 point's layers are restored into a scratch directory, checked, and read
   through QEMU as the stacked chain); chunks the target lacks are stored, under the
   target's own ids when the two stores name chunks differently;
3. the index, then the layer records of the point (they identify the live files its
   view was read from, so that the next ``snapshot -b`` into the target stays
   incremental), then the manifest, last: a killed copy leaves no point behind.

The target's shared store lock is held meanwhile (its garbage collection waits).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

from fibackup.errors import CorruptStoreError, UsageError
from fibackup.host import state as host_state
from fibackup.model.chain import StoredLayer, chain_from_ids
from fibackup.model.points import IndexRef, PointDisk, PointFile, PointLayer, RestorePoint
from fibackup.qemu import reader, view
from fibackup.report import Reporter
from fibackup.store.chunks import ChunkList
from fibackup.store.opening import NewStore
from fibackup.store.repo import BackupStore
from fibackup.store.v3 import files as v3files
from fibackup.store.v3.index import DiskIndex, chunk_numbers
from fibackup.store.v3.ingest import ingest, threads
from fibackup.store.v3.locks import store_lock
from fibackup.store.v3.objects import ChunkStore


@dataclass
class CopyOptions:
    source: str
    target: str
    domains: Sequence[str] = ()
    """Names or UUIDs; empty: every domain of the source."""
    at: Optional[str] = None
    latest: bool = False
    scratch: Optional[str] = None
    """Where format-1/2 layers are staged (default: /var/tmp)."""


@dataclass
class CopyResult:
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    new_chunks: int = 0
    stored_bytes: int = 0

    def to_json(self) -> dict[str, object]:
        return {"copied": self.copied, "skipped": self.skipped, "new_chunks": self.new_chunks,
                "stored_bytes": self.stored_bytes}


def copy_points(options: CopyOptions, new: NewStore, report: Reporter,
                source_passphrase: Optional[bytes] = None) -> CopyResult:
    source = BackupStore.open(options.source)
    if source_passphrase is not None and source.chunks is not None and source.chunks.encrypted:
        source.chunks.unlock_with(source_passphrase)
    target = BackupStore.open(options.target, create=True, new=new)
    if target.chunks is None:
        raise UsageError(f"{target.root} is a format-1 store; copy writes format-3 stores only "
                         "(make the target with 'fibackup init')", path=target.root)
    if target.store_id == source.store_id:
        raise UsageError("--from and --to are the same store")
    if source.chunks is not None:
        source.chunks.keys()
    target.chunks.keys()
    result = CopyResult()
    with store_lock(target.backend, exclusive=False, command="copy",
                    waiting=lambda holder: report.info(f"copy waits for {holder}")):
        for uuid in _domains(source, options.domains):
            points = _chosen(source, uuid, options, report)
            with target.domain_lock(uuid):
                have = {point.id for point in target.points(uuid, problems=[])}
                for point in points:
                    label = f"{point.domain_name}/{point.id}"
                    if point.id in have:
                        result.skipped.append(label)
                        continue
                    _copy_point(source, target, point, options, result, report)
                    result.copied.append(label)
    return result


def _domains(store: BackupStore, wanted: Sequence[str]) -> list[str]:
    uuids = store.domain_uuids()
    if not wanted:
        return sorted(uuids)
    chosen = []
    for name in wanted:
        matches = [uuid for uuid in uuids if name == uuid or any(
            point.domain_name == name for point in store.points(uuid, problems=[]))]
        if not matches:
            raise UsageError(f"{store.root} holds no domain '{name}' ('fibackup list' shows "
                             "what it holds)")
        chosen.extend(matches)
    return list(dict.fromkeys(chosen))


def _chosen(store: BackupStore, uuid: str, options: CopyOptions,
            report: Reporter) -> list[RestorePoint]:
    from fibackup.model.points import select_point
    problems: list[str] = []
    points = store.points(uuid, problems)
    for problem in problems:
        report.warn(f"{problem} (not copied)")
    if options.at is not None:
        return [select_point(points, options.at)]
    if options.latest:
        return points[-1:]
    return points


def _copy_point(source: BackupStore, target: BackupStore, point: RestorePoint,
                options: CopyOptions, result: CopyResult, report: Reporter) -> None:
    report.info(f"copying restore point {point.domain_name}/{point.id} into {target.root}")
    scratch = tempfile.mkdtemp(prefix="fibackup-copy-", dir=options.scratch or "/var/tmp")
    try:
        disks = {target_name: _copy_disk(source, target, point, disk, scratch, result)
                 for target_name, disk in sorted(point.disks.items())}
        files = tuple(_copy_file(source, target, point, item, scratch, result)
                      for item in point.files)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    target.chunked.settle()
    disks = _copy_records(source, target, point, disks)
    copied = replace(point, disks=disks, files=files, format=3, revision=0,
                     seq=target.next_seq(point.domain_uuid))
    target.publish_point(copied)
    host_state.remember_restored(point.domain_uuid, [
        host_state.RestoredFile(target.store_id, layer_id, identity)
        for identity, layer_id in host_state.load(point.domain_uuid).aliases(source.store_id)])


def _copy_disk(source: BackupStore, target: BackupStore, point: RestorePoint, disk: PointDisk,
               scratch: str, result: CopyResult) -> PointDisk:
    chunks = target.chunked
    if disk.index is not None:
        index, new, stored = _transfer(source.chunked, chunks,
                                       source.chunked.get_index(disk.index.id))
    else:
        index, new, stored = _from_layers(source, chunks, point, disk, scratch)
    index_id, index_bytes = chunks.put_index(index)
    result.new_chunks += new
    result.stored_bytes += stored + index_bytes
    return replace(disk, index=IndexRef(id=index_id, data_bytes=index.data_bytes,
                                        chunks=len(index.chunks), new_chunks=new,
                                        stored_bytes=stored + index_bytes))


def _transfer(source: ChunkStore, target: ChunkStore,
              index: DiskIndex) -> tuple[DiskIndex, int, int]:
    """The index in the target's ids, each chunk the target lacks copied (and checked:
    a source chunk is decoded against its id before it is stored)."""
    same_ids = not source.encrypted and not target.encrypted
    if target.settings.chunk_size != index.chunk_size:
        raise UsageError(f"the stores' chunk sizes differ ({index.chunk_size} and "
                         f"{target.settings.chunk_size} bytes); copy between stores of one "
                         "chunk size")

    def one(item: tuple[int, bytes]) -> tuple[int, bytes, int]:
        number, chunk_id = item
        if same_ids and target.has("chunks", chunk_id):
            return number, chunk_id, 0
        data = source.get_chunk(chunk_id, index.length(number))
        new_id = chunk_id if same_ids else target.chunk_id(data)
        return number, new_id, target.put_chunk(new_id, data)

    workers = max(threads(source), threads(target))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="copy") as pool:
        done = list(pool.map(one, index.items()))
    copied = DiskIndex(index.virtual_size, index.chunk_size,
                       {number: chunk_id for number, chunk_id, _ in done})
    return copied, sum(1 for *_, stored in done if stored), sum(stored for *_, stored in done)


def _from_layers(source: BackupStore, chunks: ChunkStore, point: RestorePoint,
                 disk: PointDisk, scratch: str) -> tuple[DiskIndex, int, int]:
    """A format-1/2 disk: its layers restored into ``scratch`` (every chunk checked),
    then read as the guest saw them through the stacked chain."""
    chain = []
    for position, layer in enumerate(disk.layers):
        path = os.path.join(scratch, f"{disk.target}-{position:02d}.{layer.image_format}")
        source.restore_layer(point.domain_uuid, layer.id, path, expected=layer)
        chain.append((path, layer.image_format))
    empty = DiskIndex(disk.virtual_size, chunks.settings.chunk_size)
    extents = view.allocation(chain)
    numbers = chunk_numbers(view.changed_ranges(extents, None), empty.chunk_size,
                            empty.virtual_size)
    with reader.reading(chain, extents, scratch=scratch) as presented:
        done = ingest(chunks, presented, empty, numbers)
    for path, _format in chain:
        os.unlink(path)
    return done.index, done.new_chunks, done.stored_bytes


def _copy_file(source: BackupStore, target: BackupStore, point: RestorePoint, item: PointFile,
               scratch: str, result: CopyResult) -> PointFile:
    path = os.path.join(scratch, f"file-{item.id}")
    source.restore_file(point.domain_uuid, item, path)
    ref, _new = v3files.save_file(target.chunked, path)
    os.unlink(path)
    result.stored_bytes += ref.stored_bytes
    return replace(item, id=ref.id, digest=ref.id, index=ref)


def _copy_records(source: BackupStore, target: BackupStore, point: RestorePoint,
                  disks: dict[str, PointDisk]) -> dict[str, PointDisk]:
    """Write the point's layer records into the target as format-3 identity records (the
    missing ones), and return the disks listing them.  A layer prune merged (format 2)
    is listed as the layers it covers, whose records keep the live files' identities:
    the next backup into the target then matches the live chain as the source would."""
    uuid = point.domain_uuid
    present = target.layer_ids(uuid)
    listed: dict[str, PointDisk] = {}
    for name, disk in disks.items():
        layers: list[StoredLayer] = []
        for entry in disk.layers:
            layer = source.layer_record(uuid, entry.id).layer
            layers.extend([covered for covered in layer.covers if not covered.stands_for]
                          if layer.stands_for else [layer])
        try:
            chain_from_ids([layer.id for layer in layers], {layer.id: layer for layer in layers})
        except (KeyError, ValueError) as error:
            raise CorruptStoreError(f"restore point {point.id}, disk {name}: its layers do not "
                                    f"stack once prune's merges are expanded ({error}); it "
                                    "was not copied", point=point.id, disk=name) from None
        records = [StoredLayer(id=layer.id, disk=layer.disk, parent=layer.parent,
                               image_format=layer.image_format, size=layer.size,
                               virtual_size=layer.virtual_size, digest="", source=layer.source)
                   for layer in layers]
        for record in records:
            if record.id in present:
                continue
            try:
                target.writer.write_layer_record(uuid, record, ChunkList(record.size, 0, ()))
            except FileExistsError:
                pass
            present.add(record.id)
        listed[name] = replace(disk, layers=tuple(PointLayer.of(record, new=False)
                                                  for record in records))
    return listed
