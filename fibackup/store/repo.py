"""The backup store: layer copies, layer records and restore-point manifests.

``BackupStore`` is what commands use: one object per opened store (a directory,
or a prefix of an S3 bucket), composed of the pieces that each do one job:

- location.py: the ``-b`` spec (directory or ``s3://`` URL); opening.py: the
  backend for it and the store's marker;
- layout.py: where each object lives and what it is called (docs/FORMAT.md);
- documents.py: reading manifests and records (records cached for the run);
- writing.py: publishing copies, records and manifests, and prune's removals;
- reading.py: reading copies back for verify and restore, every chunk checked;
- checking.py: the consistency rules (a manifest's entry against its record...);
- merging.py: prune's merges through qemu-img;
- locking.py: the domain's lock in the store;
- backend.py: the primitive operations, in a directory (there) or on S3 (s3/),
  and the backend's ``Capabilities``.

Every file is written under a hidden temporary name (or as an upload that
completes atomically), then published under its final name without ever
replacing an existing one.  Nothing inside the store is trusted: a directory
store opens every file relative to a checked descriptor of its directory and
never through a link (backend.py), and every document is parsed defensively
(format.py).
"""
from __future__ import annotations

from typing import Any, Callable, ContextManager, Iterator, Optional, Sequence

from fibackup.model.chain import FileIdentity, StoredLayer
from fibackup.model.points import PointFile, PointLayer, RestorePoint
from fibackup.store import format as fmt
from fibackup.store import layout
from fibackup.store.backend import Backend
from fibackup.store.chunks import ProgressFn, Throttle
from fibackup.store.documents import Documents
from fibackup.store.locking import domain_lock
from fibackup.store.merging import Merger
from fibackup.store.opening import FORMAT_1, Marker, NewStore, has_marker, open_backend
from fibackup.store.reading import Reader
from fibackup.store.v3 import files as v3files
from fibackup.store.v3.objects import ChunkStore, sealed_backend
from fibackup.store.writing import Writer


class BackupStore:
    """A backup store (a directory, or a prefix of an S3 bucket) opened for reading or
    for writing; every object is read and written through its ``backend``."""

    def __init__(self, backend: Backend, marker: Marker) -> None:
        self.root = backend.root
        self.store_id = marker.store_id
        self.settings = marker.settings
        """None for a format-1/2 store; a format-3 store's chunk size, compression and
        encryption."""
        self.chunks: Optional[ChunkStore] = None
        """A format-3 store's chunks, indexes and keys (v3/objects.py)."""
        if marker.settings is not None:
            self.chunks = ChunkStore(backend, marker.store_id, marker.settings)
            backend = sealed_backend(backend, self.chunks)
        self.backend = backend
        self.documents = Documents(backend, 1 if marker.settings is None else 3)
        self.reader = Reader(backend, self.documents)
        self.writer = Writer(backend, self.documents)
        self.merger = Merger(backend, self.reader, self.writer)

    @classmethod
    def open(cls, path: str, create: bool = False, new: NewStore = FORMAT_1) -> "BackupStore":
        """Open the store at ``path`` (a directory or ``s3://BUCKET/PREFIX``); with
        ``create``, initialise an empty directory or prefix (as ``new`` says)."""
        return cls(*open_backend(path, create, new))

    @property
    def version(self) -> int:
        """The store's format: 1 (format-1/2 documents) or 3 (chunks and indexes)."""
        return 1 if self.settings is None else 3

    @property
    def chunked(self) -> ChunkStore:
        """The chunks of a format-3 store (ValueError for another format)."""
        if self.chunks is None:
            raise ValueError(f"{self.root} is a format-{self.version} store")
        return self.chunks

    @property
    def scratch(self) -> Optional[str]:
        """Where prune stages a merge for object storage (default: /var/tmp)."""
        return self.merger.scratch

    @scratch.setter
    def scratch(self, value: Optional[str]) -> None:
        self.merger.scratch = value

    def check_writable(self) -> None:
        self.backend.check_writable()

    def has_marker(self) -> bool:
        """Whether the store is still there (a run checks it after an I/O error)."""
        return has_marker(self.backend)

    def domain_lock(self, domain_uuid: str, shared: bool = False,
                    waiting: Optional[Callable[[], None]] = None) -> ContextManager[None]:
        """The domain's lock in the store (locking.py): a backup and a prune take it
        exclusively, a restore shared; ``waiting`` is called first when it is busy."""
        return domain_lock(self.backend, domain_uuid, shared, waiting)

    # -- paths ---------------------------------------------------------------

    def domain_dir(self, domain_uuid: str) -> str:
        return self.backend.path(layout.domain_parts(domain_uuid))

    def layer_path(self, domain_uuid: str, layer_id: str, image_format: str) -> str:
        return self.backend.path(layout.layers_parts(domain_uuid),
                                 layout.image_name(layer_id, image_format))

    def file_path(self, domain_uuid: str, file_id: str) -> str:
        return self.backend.path(layout.files_parts(domain_uuid), layout.data_name(file_id))

    # -- reading documents -----------------------------------------------------

    def domain_uuids(self) -> list[str]:
        return self.documents.domain_uuids()

    def points(self, domain_uuid: str,
               problems: Optional[list[str]] = None) -> list[RestorePoint]:
        """The domain's restore points, oldest first.

        An unreadable manifest raises CorruptStoreError, or, when ``problems``
        is given, is described there and left out (one damaged manifest must not
        hide the others).  So is a manifest that lists a layer differently from
        another manifest when the layer's record contradicts it.
        """
        return self.documents.points(domain_uuid, problems)

    def all_points(self, problems: Optional[list[str]] = None) -> list[RestorePoint]:
        return [point for uuid in self.domain_uuids() for point in self.points(uuid, problems)]

    def manifest_names(self, domain_uuid: str) -> dict[str, str]:
        """Each restore point's manifest file name by its key (layout.manifest_key)."""
        return self.documents.manifest_names(domain_uuid)

    def superseded_manifests(self, domain_uuid: str) -> list[str]:
        return self.documents.superseded_manifests(domain_uuid)

    def manifest_document(self, domain_uuid: str, name: str) -> dict[str, Any]:
        return self.documents.manifest_document(domain_uuid, name)

    def next_seq(self, domain_uuid: str) -> int:
        return self.documents.next_seq(domain_uuid)

    def layer_record(self, domain_uuid: str, layer_id: str) -> fmt.LayerRecord:
        return self.documents.layer_record(domain_uuid, layer_id)

    def file_record(self, domain_uuid: str, file_id: str) -> fmt.FileRecord:
        return self.documents.file_record(domain_uuid, file_id)

    def layer_ids(self, domain_uuid: str) -> set[str]:
        return self.documents.layer_ids(domain_uuid)

    def file_ids(self, domain_uuid: str) -> set[str]:
        return self.documents.file_ids(domain_uuid)

    def stored_layers(self, domain_uuid: str) -> list[StoredLayer]:
        return self.documents.stored_layers(domain_uuid)

    def iter_point_layers(self, point: RestorePoint) -> Iterator[tuple[str, str]]:
        for disk in point.disks.values():
            for layer in disk.layers:
                yield disk.target, layer.id

    # -- writing ---------------------------------------------------------------

    def store_layer(self, domain_uuid: str, layer_id: str, source: str, image_format: str,
                    virtual_size: int, parent: Optional[str], disk: str,
                    identity: FileIdentity, progress: Optional[ProgressFn] = None,
                    check_source: Optional[Callable[[], None]] = None,
                    throttle: Optional[Throttle] = None, clone: bool = False) -> StoredLayer:
        """Copy ``source`` into the store (hashing in the same pass), then its record.

        ``check_source`` runs after the copy and before anything is published; if
        it raises, the copy is discarded.
        """
        return self.writer.store_layer(domain_uuid, layer_id, source, image_format,
                                       virtual_size, parent, disk, identity, progress,
                                       check_source, throttle, clone)

    def store_file(self, domain_uuid: str, source: str,
                   check_source: Optional[Callable[[], None]] = None
                   ) -> tuple[fmt.FileRecord, bool]:
        """Copy ``source`` into ``files/`` under its digest, then its record; a file
        already stored with that content is kept (and the copy discarded).  Returns
        the record and whether the content was new.  ``check_source`` runs after the
        copy, before anything is published (it raises to discard the copy)."""
        return self.writer.store_file(domain_uuid, source, check_source)

    def publish_point(self, point: RestorePoint) -> RestorePoint:
        return self.writer.publish_point(point)

    def publish_revision(self, domain_uuid: str, document: dict[str, Any]) -> RestorePoint:
        return self.writer.publish_revision(domain_uuid, document)

    def store_merged_layer(self, domain_uuid: str, layer_id: str,
                           chain: Sequence[StoredLayer], covers: Sequence[StoredLayer],
                           progress: Optional[ProgressFn] = None) -> StoredLayer:
        """Write the stacking of ``chain`` (stored layers, base first) as one new layer.

        The new image is written under a temporary name, hashed, compared with the
        chain by QEMU (``qemu-img compare``) and only then published with its
        record; the chain's files are only read.
        """
        return self.merger.store_merged_layer(domain_uuid, layer_id, chain, covers, progress)

    def remove_manifest(self, domain_uuid: str, name: str) -> None:
        self.writer.remove_manifest(domain_uuid, name)

    def remove_layer(self, domain_uuid: str, layer_id: str) -> int:
        return self.writer.remove_layer(domain_uuid, layer_id)

    def remove_file(self, domain_uuid: str, file_id: str) -> int:
        return self.writer.remove_file(domain_uuid, file_id)

    # -- checking and restoring ------------------------------------------------

    def check_layer(self, domain_uuid: str, layer_id: str,
                    progress: Optional[ProgressFn] = None,
                    throttle: Optional[Throttle] = None) -> list[str]:
        """Problems found re-reading one stored layer (empty when it is intact)."""
        return self.reader.check_layer(domain_uuid, layer_id, progress, throttle)

    def restore_layer(self, domain_uuid: str, layer_id: str, destination: str,
                      progress: Optional[ProgressFn] = None,
                      expected: Optional[PointLayer] = None,
                      throttle: Optional[Throttle] = None,
                      clone: bool = False) -> fmt.LayerRecord:
        """Copy a stored layer to ``destination``, checking every chunk on the way.

        The layer's record must agree with ``expected`` (the restore point's
        entry) and with every manifest read so far that lists the layer.
        """
        return self.reader.restore_layer(domain_uuid, layer_id, destination, progress,
                                         expected, throttle, clone)

    def check_file(self, domain_uuid: str, item: PointFile) -> list[str]:
        """Problems found re-reading one stored file (empty when it is intact)."""
        if item.index is not None:
            return v3files.check_file(self.chunked, item.index, item.size,
                                      f"{item.role} file {item.path}")
        return self.reader.check_file(domain_uuid, item)

    def restore_file(self, domain_uuid: str, item: PointFile, destination: str) -> None:
        """Copy a stored file to ``destination``, checking every chunk on the way."""
        if item.index is not None:
            v3files.restore_file(self.chunked, item.index, item.size, destination,
                                 f"{item.role} file {item.path}")
        else:
            self.reader.restore_file(domain_uuid, item, destination)

    def check_file_listing(self, domain_uuid: str, item: PointFile) -> None:
        """CorruptStoreError unless the file's record agrees with this listing."""
        if item.index is not None:
            v3files.file_index(self.chunked, item.index, item.size, f"{item.role} file {item.path}")
        else:
            self.reader.agreeing_file_record(domain_uuid, item)
