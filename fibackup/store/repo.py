"""The backup directory: layer copies, layer records and restore-point manifests.

Layout (docs/FORMAT.md)::

    DIR/fibackup-store.json                       store marker (id, format version)
    DIR/domains/<uuid>/layers/<layer-id>.<fmt>    a stored layer image (write-once)
    DIR/domains/<uuid>/layers/<layer-id>.json     its record: chunk list, source identity
    DIR/domains/<uuid>/points/<seq>.json          a restore point manifest (written last)

Every file is written under a hidden temporary name, fsynced, then published
under its final name without ever replacing an existing file.
"""
from __future__ import annotations

import datetime as _dt
import errno
import os
from dataclasses import replace
import uuid as _uuid
from typing import Callable, Iterator, Optional

from fibackup.errors import (CorruptStoreError, IntegrityError, NotEnoughSpaceError,
                             StoreUnavailableError)
from fibackup.fsutil import (make_private_dirs, publish, remove_quietly, temp_name,
                             write_file)
from fibackup.model.chain import FileIdentity, StoredLayer
from fibackup.model.points import RestorePoint
from fibackup.store import format as fmt
from fibackup.store.chunks import ChunkList, ProgressFn, scan_file

MARKER = "fibackup-store.json"
POINT_NAME_DIGITS = 8


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class BackupStore:
    """A backup directory opened for reading or for writing."""

    def __init__(self, root: str, store_id: str) -> None:
        self.root = root
        self.store_id = store_id
        self._records: dict[tuple[str, str], fmt.LayerRecord] = {}

    # -- opening -----------------------------------------------------------

    @classmethod
    def open(cls, path: str, create: bool = False) -> "BackupStore":
        """Open the store at ``path``; with ``create``, initialise an empty directory."""
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
        marker = os.path.join(root, MARKER)
        if os.path.exists(marker):
            return cls(root, _read_marker(marker))
        if not create:
            raise StoreUnavailableError(
                f"{root} is not a fibackup backup directory (no {MARKER}); "
                "check the path given with -b")
        if any(not name.startswith(f".{MARKER}.partial-") for name in os.listdir(root)):
            raise StoreUnavailableError(
                f"{root} is not empty and is not a fibackup backup directory; "
                "choose an empty or new directory for -b")
        store_id = str(_uuid.uuid4())
        document = {"kind": fmt.STORE_KIND, "version": fmt.FORMAT_VERSION,
                    "store_id": store_id, "created": utc_now()}
        try:
            _write(marker, fmt.dumps(document))
        except FileExistsError:            # another run initialised it at the same moment
            return cls(root, _read_marker(marker))
        return cls(root, store_id)

    def check_writable(self) -> None:
        probe = temp_name(self.root, "write-probe")
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            os.unlink(probe)
        except OSError as error:
            raise StoreUnavailableError(
                f"backup directory {self.root} is not writable ({error.strerror}); "
                "fix its permissions or mount it read-write") from None

    # -- paths ---------------------------------------------------------------

    def domain_dir(self, domain_uuid: str) -> str:
        if not fmt.is_valid_uuid(domain_uuid):
            raise CorruptStoreError(f"invalid domain uuid {domain_uuid!r}")
        return os.path.join(self.root, "domains", domain_uuid)

    def layer_path(self, domain_uuid: str, layer_id: str, image_format: str) -> str:
        if not fmt.is_valid_id(layer_id) or image_format not in fmt.IMAGE_FORMATS:
            raise CorruptStoreError(f"invalid layer id or format {layer_id!r}/{image_format!r}")
        return os.path.join(self.domain_dir(domain_uuid), "layers", f"{layer_id}.{image_format}")

    def _record_path(self, domain_uuid: str, layer_id: str) -> str:
        return os.path.join(self.domain_dir(domain_uuid), "layers", f"{layer_id}.json")

    # -- reading -------------------------------------------------------------

    def domain_uuids(self) -> list[str]:
        base = os.path.join(self.root, "domains")
        try:
            names = sorted(os.listdir(base))
        except FileNotFoundError:
            return []
        return [name for name in names if fmt.is_valid_uuid(name)]

    def points(self, domain_uuid: str,
               problems: Optional[list[str]] = None) -> list[RestorePoint]:
        """The domain's restore points, oldest first.

        An unreadable manifest raises CorruptStoreError, or, when ``problems``
        is given, is described there and left out (one damaged manifest must not
        hide the others).
        """
        directory = os.path.join(self.domain_dir(domain_uuid), "points")
        points = []
        for name in _documents(directory):
            try:
                points.append(self._point(domain_uuid, os.path.join(directory, name)))
            except CorruptStoreError as error:
                if problems is None:
                    raise
                problems.append(str(error))
        return sorted(points, key=lambda point: point.seq)

    def _point(self, domain_uuid: str, path: str) -> RestorePoint:
        try:
            data = _read(path)
        except OSError as error:
            raise CorruptStoreError(f"cannot read {path} ({error.strerror})") from None
        point = fmt.point_from_dict(fmt.loads(data, path), path)
        if point.domain_uuid != domain_uuid or os.path.basename(path) != _point_name(point.seq):
            raise CorruptStoreError(f"{path} belongs to another domain or sequence number")
        return point

    def all_points(self, problems: Optional[list[str]] = None) -> list[RestorePoint]:
        return [point for uuid in self.domain_uuids() for point in self.points(uuid, problems)]

    def layer_record(self, domain_uuid: str, layer_id: str) -> fmt.LayerRecord:
        """A layer's record; records are write-once, so each is parsed once per run."""
        key = (domain_uuid, layer_id)
        if key not in self._records:
            self._records[key] = self._read_layer_record(domain_uuid, layer_id)
        return self._records[key]

    def _read_layer_record(self, domain_uuid: str, layer_id: str) -> fmt.LayerRecord:
        path = self._record_path(domain_uuid, layer_id)
        try:
            data = _read(path)
        except FileNotFoundError:
            raise CorruptStoreError(f"layer record {path} is missing") from None
        record = fmt.layer_record_from_dict(fmt.loads(data, path), path)
        if record.layer.id != layer_id:
            raise CorruptStoreError(f"{path} describes layer {record.layer.id}, not {layer_id}")
        return record

    def stored_layers(self, domain_uuid: str) -> list[StoredLayer]:
        """Layers with a complete record and image file (candidates for reuse)."""
        directory = os.path.join(self.domain_dir(domain_uuid), "layers")
        layers = []
        for name in _documents(directory):
            layer_id = name[:-len(".json")]
            try:
                layer = self.layer_record(domain_uuid, layer_id).layer
            except CorruptStoreError:
                continue
            image = self.layer_path(domain_uuid, layer.id, layer.image_format)
            try:
                if os.stat(image).st_size == layer.size:
                    layers.append(layer)
            except FileNotFoundError:
                continue
        return layers

    # -- writing -------------------------------------------------------------

    def store_layer(self, domain_uuid: str, layer_id: str, source: str, image_format: str,
                    virtual_size: int, parent: Optional[str], disk: str,
                    identity: FileIdentity, progress: Optional[ProgressFn] = None,
                    check_source: Optional[Callable[[], None]] = None) -> StoredLayer:
        """Copy ``source`` into the store (hashing in the same pass), then its record.

        ``check_source`` runs after the copy and before anything is published; if
        it raises, the copy is discarded.
        """
        directory = os.path.join(self.domain_dir(domain_uuid), "layers")
        make_private_dirs(directory)
        final = self.layer_path(domain_uuid, layer_id, image_format)
        temporary = temp_name(directory, os.path.basename(final))
        try:
            chunks = scan_file(source, temporary, progress=progress).chunks
            if check_source is not None:
                check_source()
            publish(temporary, final)
        except OSError as error:
            remove_quietly(temporary)
            if error.errno == errno.ENOSPC:
                raise NotEnoughSpaceError(
                    f"the backup disk filled up while copying {source} into {self.root}; "
                    "nothing incomplete was kept: free up space and run again") from None
            raise
        except BaseException:
            remove_quietly(temporary)
            raise
        layer = StoredLayer(id=layer_id, disk=disk, parent=parent, image_format=image_format,
                            size=chunks.size, virtual_size=virtual_size, digest=chunks.digest,
                            source=identity, data_bytes=chunks.data_bytes)
        record = fmt.LayerRecord(layer=layer, chunks=chunks, stored_at=utc_now())
        _write(self._record_path(domain_uuid, layer_id), fmt.dumps(fmt.layer_record_to_dict(record)))
        return layer

    def publish_point(self, point: RestorePoint) -> RestorePoint:
        """Write a restore point manifest under the next free sequence number."""
        directory = os.path.join(self.domain_dir(point.domain_uuid), "points")
        make_private_dirs(directory)
        seq = point.seq
        while True:
            candidate = replace(point, seq=seq)
            path = os.path.join(directory, _point_name(seq))
            try:
                _write(path, fmt.dumps(fmt.point_to_dict(candidate)))
                return candidate
            except FileExistsError:
                seq += 1

    def next_seq(self, domain_uuid: str) -> int:
        """One more than the highest manifest number, readable or not."""
        directory = os.path.join(self.domain_dir(domain_uuid), "points")
        numbers = [int(name[:-len(".json")]) for name in _documents(directory)
                   if name[:-len(".json")].isdigit()]
        return max(numbers, default=0) + 1

    # -- checking ------------------------------------------------------------

    def check_layer(self, domain_uuid: str, layer_id: str,
                    progress: Optional[ProgressFn] = None) -> list[str]:
        """Problems found re-reading one stored layer (empty when it is intact)."""
        try:
            record = self.layer_record(domain_uuid, layer_id)
        except CorruptStoreError as error:
            return [str(error)]
        path = self.layer_path(domain_uuid, layer_id, record.layer.image_format)
        try:
            result = scan_file(path, expected=record.chunks, progress=progress,
                               follow_symlinks=False)
        except FileNotFoundError:
            return [f"{path} is missing"]
        except OSError as error:
            return [f"{path} cannot be read ({error.strerror})"]
        return describe_damage(path, record.chunks, result)

    def restore_layer(self, domain_uuid: str, layer_id: str, destination: str,
                      progress: Optional[ProgressFn] = None) -> fmt.LayerRecord:
        """Copy a stored layer to ``destination``, checking every chunk on the way."""
        record = self.layer_record(domain_uuid, layer_id)
        path = self.layer_path(domain_uuid, layer_id, record.layer.image_format)
        if os.path.islink(path) or not os.path.isfile(path):
            raise IntegrityError(f"stored layer {path} is missing or not a regular file; this "
                                 "restore point cannot be restored (run 'fibackup verify')")
        result = scan_file(path, destination, expected=record.chunks, progress=progress,
                           follow_symlinks=False)
        problems = describe_damage(path, record.chunks, result)
        if problems:
            remove_quietly(destination)
            raise IntegrityError("; ".join(problems) + "; nothing was restored from it "
                                 "(choose another restore point with --at)")
        return record

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


def _point_name(seq: int) -> str:
    return f"{seq:0{POINT_NAME_DIGITS}d}.json"


def _mkdir(path: str) -> None:
    try:
        os.mkdir(path, 0o700)
    except OSError as error:
        raise StoreUnavailableError(f"cannot create backup directory {path} "
                                    f"({error.strerror})") from None


def _write(path: str, data: bytes) -> None:
    try:
        write_file(path, data)
    except FileExistsError:
        raise
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise NotEnoughSpaceError(f"the backup disk is full while writing {path}; "
                                      "free up space and run again") from None
        raise StoreUnavailableError(f"cannot write {path} ({error.strerror}); the backup "
                                    "directory is not writable: fix its permissions or mount "
                                    "it read-write") from None


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _documents(path: str) -> list[str]:
    """Names of the published JSON documents in ``path`` (temporary names skipped)."""
    try:
        names = sorted(os.listdir(path))
    except FileNotFoundError:
        return []
    return [name for name in names if not name.startswith(".") and name.endswith(".json")]


def _read_marker(path: str) -> str:
    try:
        document = fmt.loads(_read(path), path)
    except OSError as error:
        raise StoreUnavailableError(f"cannot read {path} ({error.strerror})") from None
    fmt.check_header(document, fmt.STORE_KIND, path)
    store_id = document.get("store_id")
    if not isinstance(store_id, str) or not fmt.is_valid_uuid(store_id):
        raise CorruptStoreError(f"{path} has no valid store_id")
    return store_id
