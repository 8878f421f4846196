"""The backup directory: layer copies, layer records and restore-point manifests.

Layout (docs/FORMAT.md)::

    DIR/fibackup-store.json                       store marker (id, format version)
    DIR/domains/<uuid>/layers/<layer-id>.<fmt>    a stored layer image (write-once)
    DIR/domains/<uuid>/layers/<layer-id>.json     its record: chunk list, source identity
    DIR/domains/<uuid>/files/<digest>.data        a stored non-disk file (NVRAM, TPM state,
    DIR/domains/<uuid>/files/<digest>.json        kernel...; content-addressed) and its record
    DIR/domains/<uuid>/points/<seq>.json          a restore point manifest (written last)

Every file is written under a hidden temporary name, fsynced, then published
under its final name without ever replacing an existing file.

Nothing inside the directory is trusted: every file is opened relative to a
descriptor of its directory, each directory below the root must be a real
directory (never a symbolic link) and each file a regular file opened with
``O_NOFOLLOW``, so a link planted in a backup directory never makes fibackup
read or write outside it.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import os
import re
import struct
import tempfile
from dataclasses import replace
import uuid as _uuid
from typing import Callable, Iterator, Optional, Sequence, Union

from fibackup import faults
from fibackup.errors import (CorruptStoreError, IntegrityError, NotEnoughSpaceError,
                             StoreUnavailableError)
from fibackup.fsutil import remove_quietly
from fibackup.model.chain import NO_SOURCE, FileIdentity, StoredLayer
from fibackup.model.points import PointFile, PointLayer, RestorePoint
from fibackup.store import format as fmt
from fibackup.store.backend import Backend, DirectoryBackend, Parts, open_dir
from fibackup.store.chunks import ChunkList, ProgressFn, Throttle, scan_file

MARKER = "fibackup-store.json"
POINT_NAME_DIGITS = 8

AGREED_FIELDS = ("image_format", "size", "virtual_size", "digest", "data_bytes")
"""What a manifest's layer entry and the layer's record must agree on."""


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class BackupStore:
    """A backup store (a directory, or a prefix of an S3 bucket) opened for reading or
    for writing; every object is read and written through its ``backend``."""

    def __init__(self, backend: Backend, store_id: str) -> None:
        self.backend = backend
        self.root = backend.root
        self.store_id = store_id
        self._records: dict[tuple[str, str], fmt.LayerRecord] = {}
        self._file_records: dict[tuple[str, str], fmt.FileRecord] = {}
        self._listed: dict[tuple[str, str], dict[str, PointLayer]] = {}
        """(domain, layer id) -> {manifest path: its entry} of the manifests read."""
        self.scratch: Optional[str] = None
        """Where prune stages a merge for object storage (default: /var/tmp)."""

    # -- opening -----------------------------------------------------------

    @classmethod
    def open(cls, path: str, create: bool = False) -> "BackupStore":
        """Open the store at ``path`` (a directory or ``s3://BUCKET/PREFIX``); with
        ``create``, initialise an empty directory or prefix."""
        from fibackup.store import s3
        if s3.is_url(path):
            backend = s3.S3Backend.from_url(path)
            return cls._open_backend(backend, backend.initialise_allowed, create)
        root = os.path.abspath(path)
        if not os.path.exists(root):
            if not create:
                raise StoreUnavailableError(
                    f"backup directory {root} does not exist; check the path (is the backup "
                    "disk mounted?)")
            parent = os.path.dirname(root)
            if not os.path.isdir(parent):
                raise StoreUnavailableError(
                    f"cannot create backup directory {root}: its parent {parent} does not "
                    "exist (is the backup disk mounted?)")
            _mkdir(root)
        if not os.path.isdir(root):
            raise StoreUnavailableError(f"backup directory {root} is not a directory; "
                                        "give a directory with -b")
        if os.path.lexists(os.path.join(root, MARKER)):
            return cls(DirectoryBackend(root), _read_marker(DirectoryBackend(root)))

        def empty(backend: Backend) -> bool:
            return all(name.startswith(f".{MARKER}.partial-") for name in os.listdir(root))
        return cls._open_backend(DirectoryBackend(root), empty, create)

    @classmethod
    def _open_backend(cls, backend: Backend, empty: Callable[[Backend], bool],
                      create: bool) -> "BackupStore":
        """Read the store's marker, or with ``create`` write it into an empty location."""
        try:
            return cls(backend, _read_marker(backend))
        except FileNotFoundError:
            pass
        root = backend.root
        if not create:
            raise StoreUnavailableError(
                f"{root} is not a fibackup backup directory (no {MARKER}); "
                "check the path given with -b")
        if not empty(backend):
            raise StoreUnavailableError(
                f"{root} is not empty and is not a fibackup backup directory; "
                "choose an empty or new directory for -b")
        store_id = str(_uuid.uuid4())
        document = {"kind": fmt.STORE_KIND, "version": fmt.FORMAT_VERSION,
                    "store_id": store_id, "created": utc_now()}
        try:
            backend.write_new((), MARKER, fmt.dumps(document))
        except FileExistsError:            # another run initialised it at the same moment
            return cls(backend, _read_marker(backend))
        return cls(backend, store_id)

    def check_writable(self) -> None:
        self.backend.check_writable()

    def has_marker(self) -> bool:
        """Whether the store is still there (a run checks it after an I/O error)."""
        try:
            self.backend.size((), MARKER)
        except (OSError, StoreUnavailableError, CorruptStoreError):
            return False
        return True

    # -- paths ---------------------------------------------------------------

    def domain_dir(self, domain_uuid: str) -> str:
        if not fmt.is_valid_uuid(domain_uuid):
            raise CorruptStoreError(f"invalid domain uuid {domain_uuid!r}")
        return self.backend.path(("domains", domain_uuid))

    def layer_path(self, domain_uuid: str, layer_id: str, image_format: str) -> str:
        return self.backend.path(self._layers(domain_uuid), _image_name(layer_id, image_format))

    def _record_path(self, domain_uuid: str, layer_id: str) -> str:
        return self.backend.path(self._layers(domain_uuid), _record_name(layer_id))

    def _layers(self, domain_uuid: str) -> tuple[str, ...]:
        """The components of a domain's layers directory below the root."""
        self.domain_dir(domain_uuid)
        return ("domains", domain_uuid, "layers")

    def _files(self, domain_uuid: str) -> tuple[str, ...]:
        """The components of a domain's stored-files directory below the root."""
        self.domain_dir(domain_uuid)
        return ("domains", domain_uuid, "files")

    def file_path(self, domain_uuid: str, file_id: str) -> str:
        return self.backend.path(self._files(domain_uuid), _data_name(file_id))

    def _points_dir(self, domain_uuid: str) -> tuple[str, ...]:
        self.domain_dir(domain_uuid)
        return ("domains", domain_uuid, "points")

    # -- reading -------------------------------------------------------------

    def domain_uuids(self) -> list[str]:
        try:
            names = sorted(self.backend.names(("domains",)))
        except FileNotFoundError:
            return []
        return [name for name in names if fmt.is_valid_uuid(name)]

    def points(self, domain_uuid: str,
               problems: Optional[list[str]] = None) -> list[RestorePoint]:
        """The domain's restore points, oldest first.

        An unreadable manifest raises CorruptStoreError, or, when ``problems``
        is given, is described there and left out (one damaged manifest must not
        hide the others).  So is a manifest that lists a layer differently from
        another manifest when the layer's record contradicts it.
        """
        found: list[CorruptStoreError] = []
        loaded: dict[str, RestorePoint] = {}
        parts = self._points_dir(domain_uuid)
        try:
            for name in self.manifest_names(domain_uuid).values():
                path = self.backend.path(parts, name)
                try:
                    loaded[path] = self._point(domain_uuid, parts, name)
                except CorruptStoreError as error:
                    found.append(error)
        except CorruptStoreError as error:          # the directory itself
            found.append(error)
        for path, message in self._contradicted(domain_uuid, loaded).items():
            del loaded[path]
            found.append(CorruptStoreError(message))
        if found and problems is None:
            raise found[0]
        if problems is not None:
            problems.extend(str(error) for error in found)
        for path, point in loaded.items():
            for _target, layer in _entries(point):
                self._listed.setdefault((domain_uuid, layer.id), {})[path] = layer
        return sorted(loaded.values(), key=lambda point: point.seq)

    def _point(self, domain_uuid: str, parts: Sequence[str], name: str) -> RestorePoint:
        path = self.backend.path(parts, name)
        point = fmt.point_from_dict(_read_document(self.backend, parts, name), path)
        if point.domain_uuid != domain_uuid or name != _point_name(point.seq, point.revision):
            raise CorruptStoreError(f"{path} belongs to another domain or sequence number")
        return point

    def manifest_names(self, domain_uuid: str) -> dict[str, str]:
        """Each restore point's manifest file name, by its key (the sequence number as
        named, or the whole name when it is not a manifest name): the highest revision
        of each point; lower revisions are superseded (prune removes them)."""
        chosen: dict[str, tuple[int, str]] = {}
        for name in _documents(self.backend, self._points_dir(domain_uuid)):
            seq, revision = _parse_point_name(name)
            key = seq if seq is not None else name
            if key not in chosen or revision > chosen[key][0]:
                chosen[key] = (revision, name)
        return {key: name for key, (_revision, name) in chosen.items()}

    def superseded_manifests(self, domain_uuid: str) -> list[str]:
        """Manifest names that a higher revision of the same point replaced."""
        current = set(self.manifest_names(domain_uuid).values())
        return [name for name in _documents(self.backend, self._points_dir(domain_uuid))
                if name not in current]

    def manifest_document(self, domain_uuid: str, name: str) -> dict:
        """A manifest as JSON (prune rewrites it key by key, keeping what it does not know)."""
        return _read_document(self.backend, self._points_dir(domain_uuid), name)

    def _contradicted(self, domain_uuid: str,
                      loaded: dict[str, RestorePoint]) -> dict[str, str]:
        """Manifests listing a layer unlike another manifest does, and unlike its record.

        Only layers listed differently are looked up (their records decide which
        listing is wrong), so reading the manifests stays cheap.  When the record
        cannot be read nothing is decided here: restore and verify report it.
        """
        listings: dict[str, list[tuple[str, str, PointLayer]]] = {}
        for path, point in loaded.items():
            for target, layer in _entries(point):
                listings.setdefault(layer.id, []).append((path, target, layer))
        wrong: dict[str, str] = {}
        for layer_id, entries in sorted(listings.items()):
            if len({_agreed(layer) for _path, _target, layer in entries}) == 1:
                continue
            try:
                record = self.layer_record(domain_uuid, layer_id)
            except CorruptStoreError:
                continue
            for path, target, layer in entries:
                differences = layer_disagreement(layer, record.layer)
                if differences and path not in wrong:
                    point = loaded[path]
                    wrong[path] = (f"{path} (restore point {point.domain_name}/{point.id}), disk "
                                   f"{target}: layer {layer_id} is listed with "
                                   f"{'; '.join(differences)}, unlike in other restore points")
        return wrong

    def all_points(self, problems: Optional[list[str]] = None) -> list[RestorePoint]:
        return [point for uuid in self.domain_uuids() for point in self.points(uuid, problems)]

    def layer_record(self, domain_uuid: str, layer_id: str) -> fmt.LayerRecord:
        """A layer's record; records are write-once, so each is parsed once per run."""
        key = (domain_uuid, layer_id)
        if key not in self._records:
            self._records[key] = self._read_layer_record(domain_uuid, layer_id)
        return self._records[key]

    def _record_document(self, parts: Sequence[str], item_id: str,
                         what: str) -> tuple[dict, str]:
        """The record of a layer or stored file, and its path; missing is corrupt."""
        path = self.backend.path(parts, _record_name(item_id))
        try:
            return _read_document(self.backend, parts, _record_name(item_id)), path
        except FileNotFoundError:
            raise CorruptStoreError(f"{what} record {path} is missing") from None

    def _read_layer_record(self, domain_uuid: str, layer_id: str) -> fmt.LayerRecord:
        document, path = self._record_document(self._layers(domain_uuid), layer_id, "layer")
        record = fmt.layer_record_from_dict(document, path)
        if record.layer.id != layer_id:
            raise CorruptStoreError(f"{path} describes layer {record.layer.id}, not {layer_id}")
        return record

    def layer_ids(self, domain_uuid: str) -> set[str]:
        """Ids of every published layer file (image or record) of the domain."""
        return _stems(self.backend, self._layers(domain_uuid), ("json", *fmt.IMAGE_FORMATS))

    def file_ids(self, domain_uuid: str) -> set[str]:
        """Ids of every published stored file (data or record) of the domain."""
        return _stems(self.backend, self._files(domain_uuid), ("json", "data"))

    def file_record(self, domain_uuid: str, file_id: str) -> fmt.FileRecord:
        """A stored file's record (parsed once per run)."""
        key = (domain_uuid, file_id)
        if key not in self._file_records:
            document, path = self._record_document(self._files(domain_uuid), file_id, "file")
            record = fmt.file_record_from_dict(document, path)
            if record.id != file_id:
                raise CorruptStoreError(f"{path} describes file {record.id}, not {file_id}")
            self._file_records[key] = record
        return self._file_records[key]

    def stored_layers(self, domain_uuid: str) -> list[StoredLayer]:
        """Layers with a complete record and image file (candidates for reuse).

        A link in place of the domain's directory, ``layers/`` or ``points/``
        raises CorruptStoreError (a backup refuses it before taking a snapshot).
        """
        parts = self._layers(domain_uuid)
        names = _documents(self.backend, parts)
        _documents(self.backend, self._points_dir(domain_uuid))
        layers = []
        for name in names:
            try:
                layer = self.layer_record(domain_uuid, name[:-len(".json")]).layer
                size = self.backend.size(parts, _image_name(layer.id, layer.image_format))
            except (CorruptStoreError, OSError):
                continue
            if size == layer.size:
                layers.append(layer)
        return layers

    # -- writing -------------------------------------------------------------

    def store_layer(self, domain_uuid: str, layer_id: str, source: str, image_format: str,
                    virtual_size: int, parent: Optional[str], disk: str,
                    identity: FileIdentity, progress: Optional[ProgressFn] = None,
                    check_source: Optional[Callable[[], None]] = None,
                    throttle: Optional[Throttle] = None, clone: bool = False) -> StoredLayer:
        """Copy ``source`` into the store (hashing in the same pass), then its record.

        ``check_source`` runs after the copy and before anything is published; if
        it raises, the copy is discarded.
        """
        with _disk_full(_copy_full_message(source, self.root)):
            chunks = self.backend.copy_in(self._layers(domain_uuid),
                                          _image_name(layer_id, image_format), source,
                                          progress=progress, throttle=throttle, clone=clone,
                                          check_source=check_source)
        faults.point("store.image-published")
        layer = StoredLayer(id=layer_id, disk=disk, parent=parent, image_format=image_format,
                            size=chunks.size, virtual_size=virtual_size, digest=chunks.digest,
                            source=identity, data_bytes=chunks.data_bytes)
        record = fmt.LayerRecord(layer=layer, chunks=chunks, stored_at=utc_now())
        self._write(self._layers(domain_uuid), _record_name(layer_id),
                    fmt.dumps(fmt.layer_record_to_dict(record)))
        return layer

    def store_merged_layer(self, domain_uuid: str, layer_id: str,
                           chain: Sequence[StoredLayer], covers: Sequence[StoredLayer],
                           progress: Optional[ProgressFn] = None) -> StoredLayer:
        """Write the stacking of ``chain`` (stored layers, base first) as one new layer.

        The new image is written under a temporary name, hashed, compared with the
        chain by QEMU (``qemu-img compare``) and only then published with its
        record; the chain's files are only read.
        """
        from fibackup.fsutil import publish, temp_name
        if not self.backend.local:
            return self._merge_staged(domain_uuid, layer_id, chain, covers, progress)
        image_format = chain[0].image_format
        final = self.layer_path(domain_uuid, layer_id, image_format)
        parts = self._layers(domain_uuid)
        self.backend.ensure_dir(parts)
        temporary = temp_name(self.backend.path(parts), os.path.basename(final))
        inputs = [(self.layer_path(domain_uuid, layer.id, layer.image_format), layer.image_format)
                  for layer in chain]
        try:
            with _disk_full(f"the backup disk filled up while merging layers into {final}; "
                            "nothing was changed: free up space and run prune again"):
                _merge_checked(inputs, temporary, chain, final)
                _fsync_file(temporary)
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
        name = _image_name(layer_id, chain[0].image_format)
        parent = self.scratch or ("/var/tmp" if os.path.isdir("/var/tmp") else None)
        with _disk_full(f"the scratch directory {parent or tempfile.gettempdir()} filled up "
                        f"while prune staged a merge of {self.root}; nothing was changed: free "
                        "up space there or give another one with --scratch"), \
                tempfile.TemporaryDirectory(prefix=".fibackup-prune-", dir=parent) as work:
            inputs = []
            for layer in chain:
                local = os.path.join(work, _image_name(layer.id, layer.image_format))
                self.restore_layer(domain_uuid, layer.id, local)
                inputs.append((local, layer.image_format))
            merged = os.path.join(work, name)
            _merge_checked(inputs, merged, chain, f"{self.root} ({name})")
            chunks = self.backend.copy_in(self._layers(domain_uuid), name, merged,
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
        record = fmt.LayerRecord(layer=layer, chunks=chunks, stored_at=utc_now())
        self._write(self._layers(domain_uuid), _record_name(layer_id),
                    fmt.dumps(fmt.layer_record_to_dict(record)))
        self._records[(domain_uuid, layer_id)] = record
        return layer

    def publish_revision(self, domain_uuid: str, document: dict) -> RestorePoint:
        """Publish a new revision of a restore point (a manifest prune rewrote); it is
        read back through the same checks as any manifest before it is written."""
        parts = self._points_dir(domain_uuid)
        point = fmt.point_from_dict(document, "the revised manifest")
        if point.domain_uuid != domain_uuid or point.revision < 1:
            raise ValueError("a revision of another domain, or revision 0")
        self._write(parts, _point_name(point.seq, point.revision), fmt.dumps(document))
        return point

    def remove_manifest(self, domain_uuid: str, name: str) -> None:
        """Delete one manifest file (prune only)."""
        _seq, _revision = _parse_point_name(name)
        if _seq is None:
            raise ValueError(f"not a manifest name: {name!r}")
        self.backend.remove(self._points_dir(domain_uuid), name)

    def remove_layer(self, domain_uuid: str, layer_id: str) -> int:
        """Delete a layer's image, then its record (prune only); the bytes freed."""
        parts = self._layers(domain_uuid)
        freed = 0
        for image_format in fmt.IMAGE_FORMATS:
            name = _image_name(layer_id, image_format)
            try:
                self.backend.size(parts, name)
            except (FileNotFoundError, CorruptStoreError):
                continue
            freed += self.backend.freed(parts, name)
            self.backend.remove(parts, name)
        self.backend.remove(parts, _record_name(layer_id))
        self._records.pop((domain_uuid, layer_id), None)
        return freed

    def store_file(self, domain_uuid: str, source: str,
                   check_source: Optional[Callable[[], None]] = None) -> tuple[fmt.FileRecord, bool]:
        """Copy ``source`` into ``files/`` under its digest, then its record; a file
        already stored with that content is kept (and the copy discarded).  Returns
        the record and whether the content was new.  ``check_source`` runs after the
        copy, before anything is published (it raises to discard the copy)."""
        parts = self._files(domain_uuid)
        with _disk_full(_copy_full_message(source, self.root)):
            chunks, new = self.backend.copy_in_addressed(
                parts, lambda listed: _data_name(listed.digest), source, check_source)
        record = fmt.FileRecord(id=chunks.digest, chunks=chunks, stored_at=utc_now())
        try:
            self._write(parts, _record_name(record.id), fmt.dumps(fmt.file_record_to_dict(record)))
        except FileExistsError:
            pass                                # stored before: same id, same content
        return record, new

    @contextlib.contextmanager
    def domain_lock(self, domain_uuid: str, shared: bool = False,
                    waiting: Optional[Callable[[], None]] = None) -> Iterator[None]:
        """``flock`` on ``domains/<uuid>/.lock`` in the store itself, so runs on other
        hosts that share the directory see it too: a backup and a prune take it
        exclusively (a prune must not delete what a backup is about to list), a restore
        shared.  Waits for it, calling ``waiting`` first when it is busy.  Object storage
        has no such lock (one host per prefix writes a domain; prune does not run there)."""
        if not self.backend.local:
            yield
            return
        directory = open_dir(self.root, ("domains", domain_uuid), create=not shared)
        try:
            fd = os.open(".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=directory)
        except OSError as error:
            if error.errno != errno.EROFS:
                raise
            fd = -1                                 # a read-only store: nobody writes it
        finally:
            os.close(directory)
        if fd < 0:
            yield
            return
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting is not None:
                    waiting()
                fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)

    def remove_file(self, domain_uuid: str, file_id: str) -> int:
        """Delete a stored file's data, then its record (prune only); the bytes freed."""
        parts = self._files(domain_uuid)
        freed = self.backend.freed(parts, _data_name(file_id))
        self.backend.remove(parts, _data_name(file_id))
        self.backend.remove(parts, _record_name(file_id))
        self._file_records.pop((domain_uuid, file_id), None)
        return freed

    def publish_point(self, point: RestorePoint) -> RestorePoint:
        """Write a restore point manifest under the next free sequence number."""
        parts = self._points_dir(point.domain_uuid)
        seq = point.seq
        while True:
            candidate = replace(point, seq=seq)
            try:
                self._write(parts, _point_name(seq), fmt.dumps(fmt.point_to_dict(candidate)))
                return candidate
            except FileExistsError:
                seq += 1

    def next_seq(self, domain_uuid: str) -> int:
        """One more than the highest manifest number, readable or not."""
        numbers = [int(seq) for seq, _revision in map(
            _parse_point_name, _documents(self.backend, self._points_dir(domain_uuid)))
            if seq is not None]
        return max(numbers, default=0) + 1

    def _write(self, parts: Parts, name: str, data: bytes) -> None:
        """Publish a document once (FileExistsError when the name is taken)."""
        self.backend.ensure_dir(parts)
        self.backend.write_new(parts, name, data)

    # -- checking ------------------------------------------------------------

    def check_layer(self, domain_uuid: str, layer_id: str,
                    progress: Optional[ProgressFn] = None,
                    throttle: Optional[Throttle] = None) -> list[str]:
        """Problems found re-reading one stored layer (empty when it is intact)."""
        try:
            record = self.layer_record(domain_uuid, layer_id)
        except CorruptStoreError as error:
            return [str(error)]
        path = self.layer_path(domain_uuid, layer_id, record.layer.image_format)
        try:
            result = self.backend.scan(self._layers(domain_uuid),
                                       _image_name(layer_id, record.layer.image_format),
                                       record.chunks, progress=progress, throttle=throttle)
            problems = describe_damage(path, record.chunks, result)
            if not problems:
                problems = self._stored_size_problems(domain_uuid, record.layer, path)
        except FileNotFoundError:
            return [f"{path} is missing"]
        except CorruptStoreError as error:
            return [str(error)]
        except OSError as error:
            return [f"{path} cannot be read ({error.strerror})"]
        return problems

    def restore_layer(self, domain_uuid: str, layer_id: str, destination: str,
                      progress: Optional[ProgressFn] = None,
                      expected: Optional[PointLayer] = None,
                      throttle: Optional[Throttle] = None,
                      clone: bool = False) -> fmt.LayerRecord:
        """Copy a stored layer to ``destination``, checking every chunk on the way.

        The layer's record must agree with ``expected`` (the restore point's
        entry) and with every manifest read so far that lists the layer.
        """
        record = self.layer_record(domain_uuid, layer_id)
        path = self.layer_path(domain_uuid, layer_id, record.layer.image_format)
        listed = dict(self._listed.get((domain_uuid, layer_id), {}))
        if expected is not None:
            listed["the restore point"] = expected
        for manifest, entry in sorted(listed.items()):
            differences = layer_disagreement(entry, record.layer)
            if differences:
                raise IntegrityError(
                    f"{manifest} lists layer {layer_id} with {'; '.join(differences)} "
                    f"({self._record_path(domain_uuid, layer_id)}); the backup directory was "
                    "damaged or edited: nothing was restored from it (run 'fibackup verify', "
                    "choose another restore point with --at)")
        try:
            result = self.backend.scan(self._layers(domain_uuid),
                                       _image_name(layer_id, record.layer.image_format),
                                       record.chunks, destination, progress=progress,
                                       throttle=throttle, clone=clone)
        except FileNotFoundError as error:
            if error.filename != path:
                raise                            # the destination, not the store
            raise IntegrityError(f"stored layer {path} is missing; this restore point cannot "
                                 "be restored (run 'fibackup verify')") from None
        except CorruptStoreError as error:
            raise IntegrityError(f"{error}; this restore point cannot be restored (run "
                                 "'fibackup verify')") from None
        problems = describe_damage(path, record.chunks, result)
        if not problems:
            problems = _presented_size_problems(destination, record.layer, path)
        if problems:
            remove_quietly(destination)
            raise IntegrityError("; ".join(problems) + "; nothing was restored from it "
                                 "(choose another restore point with --at)")
        return record

    def check_file(self, domain_uuid: str, item: PointFile) -> list[str]:
        """Problems found re-reading one stored file (empty when it is intact)."""
        try:
            record = self._agreeing_file_record(domain_uuid, item)
            path = self.file_path(domain_uuid, item.id)
            result = self.backend.scan(self._files(domain_uuid), _data_name(item.id),
                                       record.chunks)
        except (CorruptStoreError, IntegrityError) as error:
            return [str(error)]
        except FileNotFoundError:
            return [f"{self.file_path(domain_uuid, item.id)} is missing"]
        except OSError as error:
            return [f"{self.file_path(domain_uuid, item.id)} cannot be read ({error.strerror})"]
        return describe_damage(path, record.chunks, result)

    def restore_file(self, domain_uuid: str, item: PointFile, destination: str) -> None:
        """Copy a stored file to ``destination``, checking every chunk on the way."""
        try:
            record = self._agreeing_file_record(domain_uuid, item)
        except CorruptStoreError as error:
            raise IntegrityError(f"{error}; this restore point cannot be restored (run "
                                 "'fibackup verify')") from None
        path = self.file_path(domain_uuid, item.id)
        try:
            result = self.backend.scan(self._files(domain_uuid), _data_name(item.id),
                                       record.chunks, destination)
        except FileNotFoundError as error:
            if error.filename != path:
                raise
            raise IntegrityError(f"stored file {path} ({item.role} {item.path}) is missing; "
                                 "this restore point cannot be restored (run "
                                 "'fibackup verify')") from None
        except CorruptStoreError as error:
            raise IntegrityError(f"{error}; this restore point cannot be restored (run "
                                 "'fibackup verify')") from None
        problems = describe_damage(path, record.chunks, result)
        if problems:
            remove_quietly(destination)
            raise IntegrityError("; ".join(problems) + f" ({item.role} {item.path}); nothing "
                                 "was restored from it (choose another restore point with --at)")

    def check_file_listing(self, domain_uuid: str, item: PointFile) -> None:
        """CorruptStoreError unless the file's record agrees with this listing."""
        self._agreeing_file_record(domain_uuid, item)

    def _agreeing_file_record(self, domain_uuid: str, item: PointFile) -> fmt.FileRecord:
        record = self.file_record(domain_uuid, item.id)
        if (record.digest, record.size) != (item.digest, item.size):
            raise CorruptStoreError(
                f"the restore point lists {item.role} file {item.id} with digest {item.digest} "
                f"and size {item.size}, its record says {record.digest} and {record.size}; the "
                "backup directory was damaged or edited")
        return record

    def _stored_size_problems(self, domain_uuid: str, layer: StoredLayer,
                              path: str) -> list[str]:
        if layer.image_format == "raw":                 # needs no read: opened for nothing
            return _presented_size_problems(path, layer, path)
        head = self.backend.head(self._layers(domain_uuid),
                                 _image_name(layer.id, layer.image_format), 32)
        return _qcow2_size_problems(head, layer, path)

    def iter_point_layers(self, point: RestorePoint) -> Iterator[tuple[str, str]]:
        for disk in point.disks.values():
            for layer in disk.layers:
                yield disk.target, layer.id


def describe_damage(path: str, expected: ChunkList, result) -> list[str]:
    problems = []
    if result.size_mismatch:
        problems.append(f"{path} has size {result.chunks.size}, expected {expected.size}")
    if result.mismatches:
        offsets = ", ".join(str(offset) for offset in result.mismatches[:8])
        more = f" and {len(result.mismatches) - 8} more" if len(result.mismatches) > 8 else ""
        problems.append(f"{path} is damaged: checksum mismatch in chunk(s) at offset "
                        f"{offsets}{more}")
    return problems


def layer_disagreement(listed: PointLayer, layer: Union[PointLayer, StoredLayer],
                       other: str = "its record") -> list[str]:
    """How a manifest's entry differs from a layer record (or another entry), in words."""
    return [f"{name.replace('_', ' ')} {getattr(listed, name)!r} ({other}: "
            f"{getattr(layer, name)!r})"
            for name in AGREED_FIELDS if getattr(listed, name) != getattr(layer, name)]


def _agreed(layer: PointLayer) -> tuple[object, ...]:
    return tuple(getattr(layer, name) for name in AGREED_FIELDS)


def _entries(point: RestorePoint) -> Iterator[tuple[str, PointLayer]]:
    for target, disk in sorted(point.disks.items()):
        for layer in disk.layers:
            yield target, layer


QCOW2_MAGIC = b"QFI\xfb"


def _presented_size_problems(image: str, layer: StoredLayer, path: str) -> list[str]:
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
    return _qcow2_size_problems(head, layer, path)


def _qcow2_size_problems(head: bytes, layer: StoredLayer, path: str) -> list[str]:
    if len(head) < 32 or head[:4] != QCOW2_MAGIC:
        return [f"{path} is not a qcow2 image although its record says it is"]
    presented = struct.unpack(">Q", head[24:32])[0]
    if presented != layer.virtual_size:
        return [f"{path} presents a disk of {presented} bytes but its record says "
                f"{layer.virtual_size}"]
    return []


_POINT_NAME_RE = re.compile(r"\A([0-9]+)(?:\.r([1-9][0-9]{0,8}))?\.json\Z")


def _point_name(seq: int, revision: int = 0) -> str:
    suffix = f".r{revision}" if revision else ""
    return f"{seq:0{POINT_NAME_DIGITS}d}{suffix}.json"


def _parse_point_name(name: str) -> tuple[Optional[str], int]:
    """``00000003.json`` -> ("00000003", 0), ``00000003.r2.json`` -> ("00000003", 2);
    (None, 0) for any other name (reading it then reports it).  ASCII digits only."""
    match = _POINT_NAME_RE.match(name)
    if match is None:
        return None, 0
    return match.group(1), int(match.group(2) or 0)


def _image_name(layer_id: str, image_format: str) -> str:
    if not fmt.is_valid_id(layer_id) or image_format not in fmt.IMAGE_FORMATS:
        raise CorruptStoreError(f"invalid layer id or format {layer_id!r}/{image_format!r}")
    return f"{layer_id}.{image_format}"


def _data_name(file_id: str) -> str:
    if not fmt.is_valid_id(file_id):
        raise CorruptStoreError(f"invalid stored file id {file_id!r}")
    return f"{file_id}.data"


def _record_name(layer_id: str) -> str:
    if not fmt.is_valid_id(layer_id):
        raise CorruptStoreError(f"invalid layer id {layer_id!r}")
    return f"{layer_id}.json"


def _copy_full_message(source: str, root: str) -> str:
    return (f"the backup disk filled up while copying {source} into {root}; nothing "
            "incomplete was kept: free up space and run again")


@contextlib.contextmanager
def _disk_full(message: str) -> Iterator[None]:
    """A full disk (ENOSPC) inside the block is NotEnoughSpaceError(``message``)."""
    try:
        yield
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise NotEnoughSpaceError(message) from None
        raise


def _merge_checked(inputs: Sequence[tuple[str, str]], destination: str,
                   chain: Sequence[StoredLayer], where: str) -> None:
    """Write the stacking of ``inputs`` (the files of ``chain``, base first) into the new
    image ``destination``, and prove with QEMU that it presents the same disk."""
    from fibackup.qemu import img
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
    from fibackup.qemu import img
    for path, image_format in inputs:
        if image_format == "qcow2" and img.info(path, "qcow2").data_file:
            raise IntegrityError(f"{path} keeps its data in an external file, which is not in "
                                 "the backup; prune merges nothing from it")


def _stems(backend: Backend, parts: Parts, suffixes: Sequence[str]) -> set[str]:
    """Valid ids of the published files ``<id>.<suffix>`` in ``parts``."""
    try:
        names = backend.names(parts)
    except FileNotFoundError:
        return set()
    stems = {name.rsplit(".", 1)[0] for name in names
             if not name.startswith(".") and "." in name and name.rsplit(".", 1)[1] in suffixes}
    return {stem for stem in stems if fmt.is_valid_id(stem)}


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdir(path: str) -> None:
    try:
        os.mkdir(path, 0o700)
    except OSError as error:
        raise StoreUnavailableError(f"cannot create backup directory {path} "
                                    f"({error.strerror})") from None


def _read_document(backend: Backend, parts: Parts, name: str) -> dict:
    """A JSON document of the store (FileNotFoundError when missing)."""
    return fmt.loads(backend.read(parts, name), backend.path(parts, name))


def _documents(backend: Backend, parts: Parts) -> list[str]:
    """Names of the published JSON documents in ``parts`` (temporary names skipped)."""
    try:
        names = sorted(backend.names(parts))
    except FileNotFoundError:
        return []
    return [name for name in names if not name.startswith(".") and name.endswith(".json")]


def _read_marker(backend: Backend) -> str:
    """The store's id from its marker (FileNotFoundError when there is none)."""
    path = backend.path((), MARKER)
    try:
        document = _read_document(backend, (), MARKER)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise StoreUnavailableError(f"cannot read {path} ({error.strerror})") from None
    fmt.check_header(document, fmt.STORE_KIND, path)
    store_id = document.get("store_id")
    if not isinstance(store_id, str) or not fmt.is_valid_uuid(store_id):
        raise CorruptStoreError(f"{path} has no valid store_id")
    return store_id
