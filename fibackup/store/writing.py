"""Publishing into a store: layer copies, stored files, records, manifests.

Every object is written once, complete: a layer's image before its record, a
restore point's manifest last (docs/FORMAT.md).  A name already taken is never
replaced (``FileExistsError``): a manifest then takes the next sequence number,
a content-addressed file is kept as it is.  Removal is prune's: an image before
its record, so an interrupted prune leaves an incomplete layer that tidy.py
recognises.
"""
from __future__ import annotations

import contextlib
import errno
from dataclasses import replace
from typing import Any, Callable, Iterator, Optional

from fibackup import faults
from fibackup.errors import CorruptStoreError, NotEnoughSpaceError
from fibackup.model.chain import FileIdentity, StoredLayer
from fibackup.model.naming import utc_time
from fibackup.model.points import RestorePoint
from fibackup.store import format as fmt
from fibackup.store import layout
from fibackup.store.backend import Backend, Parts
from fibackup.store.chunks import ChunkList, ProgressFn, Throttle
from fibackup.store.documents import Documents


@contextlib.contextmanager
def disk_full(message: str) -> Iterator[None]:
    """A full disk (ENOSPC) inside the block is NotEnoughSpaceError(``message``)."""
    try:
        yield
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise NotEnoughSpaceError(message) from None
        raise


def _copy_full_message(source: str, root: str) -> str:
    return (f"the backup disk filled up while copying {source} into {root}; nothing "
            "incomplete was kept: free up space and run again")


class Writer:
    """Writes and removes the objects of one store, keeping its record cache right."""

    def __init__(self, backend: Backend, documents: Documents) -> None:
        self.backend = backend
        self.documents = documents

    def write_document(self, parts: Parts, name: str, data: bytes) -> None:
        """Publish a document once (FileExistsError when the name is taken)."""
        self.backend.ensure_dir(parts)
        self.backend.write_new(parts, name, data)

    def write_layer_record(self, domain_uuid: str, layer: StoredLayer,
                           chunks: ChunkList) -> fmt.LayerRecord:
        """Publish a layer's record (its image is already published)."""
        record = fmt.LayerRecord(layer=layer, chunks=chunks, stored_at=utc_time())
        self.write_document(layout.layers_parts(domain_uuid), layout.record_name(layer.id),
                            fmt.dumps(fmt.layer_record_to_dict(record)))
        return record

    def store_layer(self, domain_uuid: str, layer_id: str, source: str, image_format: str,
                    virtual_size: int, parent: Optional[str], disk: str,
                    identity: FileIdentity, progress: Optional[ProgressFn] = None,
                    check_source: Optional[Callable[[], None]] = None,
                    throttle: Optional[Throttle] = None, clone: bool = False) -> StoredLayer:
        """Copy ``source`` into the store (hashing in the same pass), then its record;
        ``check_source`` runs after the copy, before anything is published."""
        with disk_full(_copy_full_message(source, self.backend.root)):
            chunks = self.backend.copy_in(layout.layers_parts(domain_uuid),
                                          layout.image_name(layer_id, image_format), source,
                                          progress=progress, throttle=throttle, clone=clone,
                                          check_source=check_source)
        faults.point("store.image-published")
        layer = StoredLayer(id=layer_id, disk=disk, parent=parent, image_format=image_format,
                            size=chunks.size, virtual_size=virtual_size, digest=chunks.digest,
                            source=identity, data_bytes=chunks.data_bytes)
        self.write_layer_record(domain_uuid, layer, chunks)
        return layer

    def store_file(self, domain_uuid: str, source: str,
                   check_source: Optional[Callable[[], None]] = None
                   ) -> tuple[fmt.FileRecord, bool]:
        """Copy ``source`` into ``files/`` under its digest, then its record (see
        ``BackupStore.store_file``)."""
        parts = layout.files_parts(domain_uuid)
        with disk_full(_copy_full_message(source, self.backend.root)):
            chunks, new = self.backend.copy_in_addressed(
                parts, lambda listed: layout.data_name(listed.digest), source, check_source)
        record = fmt.FileRecord(id=chunks.digest, chunks=chunks, stored_at=utc_time())
        try:
            self.write_document(parts, layout.record_name(record.id),
                                fmt.dumps(fmt.file_record_to_dict(record)))
        except FileExistsError:
            pass                                # stored before: same id, same content
        return record, new

    def publish_point(self, point: RestorePoint) -> RestorePoint:
        """Write a restore point manifest under the next free sequence number."""
        parts = layout.points_parts(point.domain_uuid)
        seq = point.seq
        while True:
            candidate = replace(point, seq=seq)
            try:
                self.write_document(parts, layout.point_name(seq),
                                    fmt.dumps(fmt.point_to_dict(candidate)))
                return candidate
            except FileExistsError:
                seq += 1

    def publish_revision(self, domain_uuid: str, document: dict[str, Any]) -> RestorePoint:
        """Publish a new revision of a restore point (a manifest prune rewrote); it is
        read back through the same checks as any manifest before it is written."""
        parts = layout.points_parts(domain_uuid)
        point = fmt.point_from_dict(document, "the revised manifest")
        if point.domain_uuid != domain_uuid or point.revision < 1:
            raise ValueError("a revision of another domain, or revision 0")
        self.write_document(parts, layout.point_name(point.seq, point.revision),
                            fmt.dumps(document))
        return point

    def remove_manifest(self, domain_uuid: str, name: str) -> None:
        """Delete one manifest file (prune only)."""
        seq, _revision = layout.parse_point_name(name)
        if seq is None:
            raise ValueError(f"not a manifest name: {name!r}")
        self.backend.remove(layout.points_parts(domain_uuid), name)

    def remove_layer(self, domain_uuid: str, layer_id: str) -> int:
        """Delete a layer's image, then its record (prune only); the bytes freed."""
        parts = layout.layers_parts(domain_uuid)
        freed = 0
        for image_format in fmt.IMAGE_FORMATS:
            name = layout.image_name(layer_id, image_format)
            try:
                self.backend.size(parts, name)
            except (FileNotFoundError, CorruptStoreError):
                continue
            freed += self.backend.freed(parts, name)
            self.backend.remove(parts, name)
        self.backend.remove(parts, layout.record_name(layer_id))
        self.documents.forget_layer(domain_uuid, layer_id)
        return freed

    def remove_file(self, domain_uuid: str, file_id: str) -> int:
        """Delete a stored file's data, then its record (prune only); the bytes freed."""
        parts = layout.files_parts(domain_uuid)
        freed = self.backend.freed(parts, layout.data_name(file_id))
        self.backend.remove(parts, layout.data_name(file_id))
        self.backend.remove(parts, layout.record_name(file_id))
        self.documents.forget_file(domain_uuid, file_id)
        return freed
