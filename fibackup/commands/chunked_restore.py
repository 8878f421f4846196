"""Restoring one disk of a format-3 point: its index written out as a standalone image
in the disk's format (raw, or qcow2 through a writable qemu-storage-daemon export),
then read back as QEMU presents it (qemu/reader.py: the offsets ``qemu-img map``
gives) and compared chunk by chunk with the index (a chunk the index does not list
must read as zeros).  Only then does staging go on.  The chunks are not hashed on the
way in: that proof hashes every one of them, and nothing names the image before it."""
from __future__ import annotations

import os
from typing import Callable, Optional

from fibackup.errors import IntegrityError
from fibackup.fsutil import fsync_file
from fibackup.model.points import PointDisk, RestorePoint
from fibackup.qemu import img, reader, view
from fibackup.store.repo import BackupStore
from fibackup.store.v3.index import DiskIndex, chunk_numbers
from fibackup.store.v3.ingest import check_view, write_out

ProgressFn = Callable[[int], None]


def base_format(disk: PointDisk) -> str:
    """The restored image's format: the live base's (a raw disk stays raw)."""
    return disk.layers[0].image_format if disk.layers else "qcow2"


def disk_index(store: BackupStore, point: RestorePoint, disk: PointDisk) -> DiskIndex:
    assert disk.index is not None
    index = store.chunked.get_index(disk.index.id)
    if index.virtual_size != disk.virtual_size or len(index.chunks) != disk.index.chunks \
            or index.data_bytes != disk.index.data_bytes:
        raise IntegrityError(f"restore point {point.id}, disk {disk.target}: its index does not "
                             "describe the disk the point lists; choose another point with --at",
                             point=point.id, disk=disk.target)
    return index


def write_disk(store: BackupStore, point: RestorePoint, disk: PointDisk, path: str,
               progress: Optional[ProgressFn] = None,
               throttle: Optional[Callable[[int], None]] = None,
               check: Optional[Callable[[], None]] = None) -> None:
    """Write the disk's view at ``point`` into the new image ``path``, then prove it."""
    index = disk_index(store, point, disk)
    image_format = base_format(disk)
    if image_format == "raw":
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.close(fd)
        write_out(store.chunked, index, path, progress, throttle, check, proven_after=True)
    else:
        img.create_image(path, "qcow2", index.virtual_size)
        with view.exported([(path, "qcow2")], writable=True) as presented:
            write_out(store.chunked, index, presented, progress, throttle, check,
                      truncate=False, proven_after=True)
        fsync_file(path)
    _prove(store, point, disk, index, path, image_format)


def _prove(store: BackupStore, point: RestorePoint, disk: PointDisk, index: DiskIndex,
           path: str, image_format: str) -> None:
    chain = [(path, image_format)]
    extents = view.allocation(chain)
    presents = sum(extent.length for extent in extents)
    if presents != index.virtual_size:
        raise IntegrityError(f"the restored {disk.target} presents {presents} bytes, not "
                             f"{index.virtual_size}", point=point.id, disk=disk.target)
    allocated = view.changed_ranges(extents, None)
    numbers = set(index.chunks) | chunk_numbers(allocated, index.chunk_size, index.virtual_size)
    with reader.reading(chain, extents) as presented:
        wrong = check_view(store.chunked, index, presented, numbers)
    if wrong:
        _name_damaged_chunks(store, index, wrong)
        raise IntegrityError(f"the restored {disk.target} does not read back as restore point "
                             f"{point.id} (chunks {', '.join(map(str, wrong[:8]))}); nothing "
                             "was published", point=point.id, disk=disk.target)


def _name_damaged_chunks(store: BackupStore, index: DiskIndex, wrong: list[int]) -> None:
    """The store's own error for the first of the ``wrong`` chunks that is damaged or
    swapped in the store (they were written unhashed: the proof found them)."""
    for number in wrong:
        chunk_id = index.chunks.get(number)
        if chunk_id is not None:
            store.chunked.get_chunk(chunk_id, index.length(number))
