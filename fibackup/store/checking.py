"""The store's consistency rules, as problems in words.

A manifest's entry must agree with its layer's record (``AGREED_FIELDS``); a
stored copy must match its chunk list; the disk size a copy presents must be its
record's virtual size (the one field the chunk digests do not cover); a stored
file must match its listing.  Nothing here reads the store: callers pass what
they read (documents.py, reading.py) and decide what a problem means.
"""
from __future__ import annotations

import os
import struct
from typing import Iterator, Union

from fibackup.errors import CorruptStoreError
from fibackup.model.chain import StoredLayer
from fibackup.model.points import PointFile, PointLayer, RestorePoint
from fibackup.store import format as fmt
from fibackup.store.chunks import ChunkList, ScanResult

AGREED_FIELDS = ("image_format", "size", "virtual_size", "digest", "data_bytes")
"""What a manifest's layer entry and the layer's record must agree on."""

QCOW2_MAGIC = b"QFI\xfb"


def layer_disagreement(listed: PointLayer, layer: Union[PointLayer, StoredLayer],
                       other: str = "its record") -> list[str]:
    """How a manifest's entry differs from a layer record (or another entry), in words."""
    return [f"{name.replace('_', ' ')} {getattr(listed, name)!r} ({other}: "
            f"{getattr(layer, name)!r})"
            for name in AGREED_FIELDS if getattr(listed, name) != getattr(layer, name)]


def agreed(layer: PointLayer) -> tuple[object, ...]:
    """The fields of an entry that every listing of the layer must share."""
    return tuple(getattr(layer, name) for name in AGREED_FIELDS)


def entries(point: RestorePoint) -> Iterator[tuple[str, PointLayer]]:
    """Each (disk target, layer entry) of a restore point, disks in name order."""
    for target, disk in sorted(point.disks.items()):
        for layer in disk.layers:
            yield target, layer


def describe_damage(path: str, expected: ChunkList, result: ScanResult) -> list[str]:
    """How a re-read copy differs from its chunk list, in words (empty when intact)."""
    problems = []
    if result.size_mismatch:
        problems.append(f"{path} has size {result.chunks.size}, expected {expected.size}")
    if result.mismatches:
        offsets = ", ".join(str(offset) for offset in result.mismatches[:8])
        more = f" and {len(result.mismatches) - 8} more" if len(result.mismatches) > 8 else ""
        problems.append(f"{path} is damaged: checksum mismatch in chunk(s) at offset "
                        f"{offsets}{more}")
    return problems


def require_file_agreement(record: fmt.FileRecord, item: PointFile) -> None:
    """CorruptStoreError unless a stored file's record agrees with its listing."""
    if (record.digest, record.size) != (item.digest, item.size):
        raise CorruptStoreError(
            f"the restore point lists {item.role} file {item.id} with digest {item.digest} "
            f"and size {item.size}, its record says {record.digest} and {record.size}; the "
            "backup directory was damaged or edited")


def presented_size_problems(image: str, layer: StoredLayer, path: str) -> list[str]:
    """The disk size a verified copy presents must be the record's virtual size.

    ``virtual_size`` is the one record field the chunk digests do not cover; it
    sizes the restored disk.  A qcow2 image states it in its header (bytes 24-31),
    a raw image is as large as its file (QEMU rounds up to 512 bytes).
    """
    if layer.image_format == "raw":
        if layer.size <= layer.virtual_size <= -(-layer.size // 512) * 512:
            return []
        return [f"{path} is a raw image of {layer.size} bytes but its record gives the disk "
                f"{layer.virtual_size} bytes"]
    fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    try:
        head = os.pread(fd, 32, 0)
    finally:
        os.close(fd)
    return qcow2_size_problems(head, layer, path)


def qcow2_size_problems(head: bytes, layer: StoredLayer, path: str) -> list[str]:
    """What a qcow2 header (its first 32 bytes) says against the record's virtual size."""
    if len(head) < 32 or head[:4] != QCOW2_MAGIC:
        return [f"{path} is not a qcow2 image although its record says it is"]
    presented = struct.unpack(">Q", head[24:32])[0]
    if presented != layer.virtual_size:
        return [f"{path} presents a disk of {presented} bytes but its record says "
                f"{layer.virtual_size}"]
    return []
