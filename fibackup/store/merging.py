"""Prune's merges: several stored layers of a chain written as one new layer.

``qemu-img convert`` writes the stacking of the chain into a new image, which
``qemu-img compare`` must find identical to the chain before it is published
with its record (checked_merge); the chain's files are only read.  In a
directory the merge reads the stored files in place (prune checked them first);
on object storage they are downloaded into a local scratch directory, every
chunk checked on the way, and the result uploaded.
"""
from __future__ import annotations

import os
import tempfile
from typing import Optional, Sequence

from fibackup import faults
from fibackup.errors import IntegrityError
from fibackup.fsutil import fsync_file, publish, remove_quietly, temp_name
from fibackup.model.chain import NO_SOURCE, StoredLayer
from fibackup.qemu import img
from fibackup.store import layout
from fibackup.store.backend import Backend
from fibackup.store.chunks import ChunkList, ProgressFn, scan_file
from fibackup.store.reading import Reader
from fibackup.store.writing import Writer, disk_full


class Merger:
    """Merges of one store's layers."""

    def __init__(self, backend: Backend, reader: Reader, writer: Writer) -> None:
        self.backend = backend
        self.reader = reader
        self.writer = writer
        self.scratch: Optional[str] = None
        """Where a merge for object storage is staged (default: /var/tmp)."""

    def store_merged_layer(self, domain_uuid: str, layer_id: str,
                           chain: Sequence[StoredLayer], covers: Sequence[StoredLayer],
                           progress: Optional[ProgressFn] = None) -> StoredLayer:
        """Write the stacking of ``chain`` (stored layers, base first) as one new layer."""
        if not self.backend.capabilities.local_files:
            return self._merge_staged(domain_uuid, layer_id, chain, covers, progress)
        parts = layout.layers_parts(domain_uuid)
        final = self.backend.path(parts, layout.image_name(layer_id, chain[0].image_format))
        self.backend.ensure_dir(parts)
        temporary = temp_name(self.backend.path(parts), os.path.basename(final))
        inputs = [(self.backend.path(parts, layout.image_name(layer.id, layer.image_format)),
                   layer.image_format) for layer in chain]
        try:
            with disk_full(f"the backup disk filled up while merging layers into {final}; "
                           "nothing was changed: free up space and run prune again"):
                checked_merge(inputs, temporary, chain, final)
                fsync_file(temporary)
                chunks = scan_file(temporary, progress=progress).chunks
                publish(temporary, final)
            faults.point("store.image-published")
        finally:
            remove_quietly(temporary)
        return self._merged_record(domain_uuid, layer_id, chain, covers, chunks)

    def _merge_staged(self, domain_uuid: str, layer_id: str, chain: Sequence[StoredLayer],
                      covers: Sequence[StoredLayer],
                      progress: Optional[ProgressFn] = None) -> StoredLayer:
        """The merge for object storage: the chain is downloaded into a local scratch
        directory (every chunk checked on the way), merged and compared there, and the
        result uploaded as a new object (hashed in the same pass); the scratch copy is
        removed whatever happens."""
        name = layout.image_name(layer_id, chain[0].image_format)
        root = self.backend.root
        parent = self.scratch or ("/var/tmp" if os.path.isdir("/var/tmp") else None)
        with disk_full(f"the scratch directory {parent or tempfile.gettempdir()} filled up "
                       f"while prune staged a merge of {root}; nothing was changed: free "
                       "up space there or give another one with --scratch"), \
                tempfile.TemporaryDirectory(prefix=".fibackup-prune-", dir=parent) as work:
            inputs = []
            for layer in chain:
                local = os.path.join(work, layout.image_name(layer.id, layer.image_format))
                self.reader.restore_layer(domain_uuid, layer.id, local)
                inputs.append((local, layer.image_format))
            merged = os.path.join(work, name)
            checked_merge(inputs, merged, chain, f"{root} ({name})")
            chunks = self.backend.copy_in(layout.layers_parts(domain_uuid), name, merged,
                                          progress=progress)
        faults.point("store.image-published")
        return self._merged_record(domain_uuid, layer_id, chain, covers, chunks)

    def _merged_record(self, domain_uuid: str, layer_id: str, chain: Sequence[StoredLayer],
                       covers: Sequence[StoredLayer], chunks: ChunkList) -> StoredLayer:
        top = chain[-1]
        layer = StoredLayer(id=layer_id, disk=top.disk, parent=chain[0].parent,
                            image_format=chain[0].image_format, size=chunks.size,
                            virtual_size=top.virtual_size, digest=chunks.digest,
                            source=NO_SOURCE, data_bytes=chunks.data_bytes,
                            stands_for=top.id, covers=tuple(covers))
        record = self.writer.write_layer_record(domain_uuid, layer, chunks)
        self.writer.documents.remember(domain_uuid, record)
        return layer


def checked_merge(inputs: Sequence[tuple[str, str]], destination: str,
                  chain: Sequence[StoredLayer], where: str) -> None:
    """Write the stacking of ``inputs`` (the files of ``chain``, base first) into the new
    image ``destination``, and prove with QEMU that it presents the same disk."""
    top, image_format = chain[-1], chain[0].image_format
    _refuse_external_data(inputs)
    img.convert_chain(inputs, destination, image_format)
    if img.info(destination, image_format).virtual_size != top.virtual_size or \
            not img.identical(inputs, [(destination, image_format)]):
        raise IntegrityError(f"merging {len(chain)} layers of disk {top.disk} into {where} did "
                             "not give the same disk content; nothing was changed in the backup")


def _refuse_external_data(inputs: Sequence[tuple[str, str]]) -> None:
    """A stored qcow2 layer whose header names an external data file would make
    qemu-img read that host file into the merged layer: refused, as restore does."""
    for path, image_format in inputs:
        if image_format == "qcow2" and img.info(path, "qcow2").data_file:
            raise IntegrityError(f"{path} keeps its data in an external file, which is not in "
                                 "the backup; prune merges nothing from it")

