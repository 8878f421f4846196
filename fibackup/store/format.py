"""JSON documents of the backup store (docs/FORMAT.md), read defensively.

Everything read from a store is untrusted: a value of the wrong type, an id
that could name a path outside the store, or an unknown format version raises
:class:`CorruptStoreError` naming the file.  File paths are never taken from
documents; they are derived from validated ids.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, TypeVar

from fibackup.errors import CorruptStoreError
from fibackup.model.chain import NO_SOURCE, FileIdentity, StoredLayer
from fibackup.model.points import IndexRef, PointDisk, PointFile, PointLayer, RestorePoint
from fibackup.store.chunks import ALGORITHM, Chunk, ChunkList

FORMAT_VERSION = 1
PRUNED_VERSION = 2
"""Layer records of merged layers and revised manifests (written by prune) carry
version 2, so a fibackup that predates prune refuses them instead of misreading."""
CHUNKED_VERSION = 3
"""Format 3: layer records that only identify live files, manifests whose disks and
files are indexes of chunks (docs/FORMAT.md, "Format 3")."""
READ_VERSIONS = (FORMAT_VERSION, PRUNED_VERSION, CHUNKED_VERSION)
STORE_KIND = "fibackup-store"
LAYER_KIND = "fibackup-layer"
POINT_KIND = "fibackup-point"
FILE_KIND = "fibackup-file"
IMAGE_FORMATS = ("qcow2", "raw")

_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$")
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_HEX_RE = re.compile(r"^[0-9a-f]{32}$")
_OBJECT_RE = re.compile(r"^[0-9a-f]{64}$")

T = TypeVar("T")


@dataclass(frozen=True)
class FileRecord:
    """A stored non-disk file (NVRAM, TPM state, kernel...): ``files/<id>.json``."""

    id: str
    chunks: ChunkList
    stored_at: str

    @property
    def digest(self) -> str:
        return self.chunks.digest

    @property
    def size(self) -> int:
        return self.chunks.size


@dataclass(frozen=True)
class LayerRecord:
    """A stored layer with its chunk list (the layer's ``.json`` record)."""

    layer: StoredLayer
    chunks: ChunkList
    stored_at: str


def is_valid_id(text: str) -> bool:
    return bool(_ID_RE.match(text)) and ".." not in text


def is_valid_uuid(text: str) -> bool:
    return bool(_UUID_RE.match(text))


def dumps(document: Mapping[str, Any]) -> bytes:
    return (json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


def loads(data: bytes, origin: str) -> dict[str, Any]:
    try:
        document = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as error:    # bad UTF-8 or JSON, absurd nesting or numbers
        detail = str(error) if not isinstance(error, RecursionError) else "nested too deeply"
        raise CorruptStoreError(f"{origin} is not valid JSON ({detail}); "
                                "the file is damaged or was edited by hand") from None
    if not isinstance(document, dict):
        raise CorruptStoreError(f"{origin} does not hold a JSON object")
    return document


def _field(document: Mapping[str, Any], key: str, kind: type[T], origin: str) -> T:
    value = document.get(key)
    if kind is int and isinstance(value, bool):
        value = None
    if not isinstance(value, kind):
        raise CorruptStoreError(f"{origin}: field '{key}' is missing or not a {kind.__name__}")
    return value


def _checked(value: str, check: Callable[[str], bool], what: str, origin: str) -> str:
    if not check(value):
        raise CorruptStoreError(f"{origin}: {what} {value!r} is not valid")
    return value


def _count(document: Mapping[str, Any], key: str, origin: str, least: int = 0) -> int:
    value = _field(document, key, int, origin)
    if value < least:
        raise CorruptStoreError(f"{origin}: field '{key}' is {value}, below {least}")
    return value


def check_header(document: Mapping[str, Any], kind: str, origin: str) -> None:
    if document.get("kind") != kind:
        raise CorruptStoreError(f"{origin} is not a {kind} document")
    version = document.get("version")
    readable = READ_VERSIONS if kind != STORE_KIND else (FORMAT_VERSION,)
    if type(version) is not int or version not in readable:
        raise CorruptStoreError(
            f"{origin} has format version {version!r}; this fibackup reads version "
            f"{' and '.join(map(str, readable))} (upgrade fibackup to read it)")


# -- file identity -------------------------------------------------------------

def identity_to_dict(identity: FileIdentity) -> dict[str, Any]:
    return {"host": identity.host, "path": identity.path, "dev": identity.dev,
            "ino": identity.ino, "size": identity.size, "mtime_ns": identity.mtime_ns,
            "head_digest": identity.head_digest}


def identity_from_dict(document: Mapping[str, Any], origin: str) -> FileIdentity:
    return FileIdentity(
        host=_field(document, "host", str, origin), path=_field(document, "path", str, origin),
        dev=_field(document, "dev", int, origin), ino=_field(document, "ino", int, origin),
        size=_field(document, "size", int, origin),
        mtime_ns=_field(document, "mtime_ns", int, origin),
        head_digest=_field(document, "head_digest", str, origin))


# -- layer records -------------------------------------------------------------

def layer_record_to_dict(record: LayerRecord) -> dict[str, Any]:
    layer = record.layer
    if record.chunks.chunk_size == 0:                 # format 3: the live file's identity only
        return {"kind": LAYER_KIND, "version": CHUNKED_VERSION, "id": layer.id,
                "disk": layer.disk, "parent": layer.parent, "image_format": layer.image_format,
                "size": layer.size, "virtual_size": layer.virtual_size,
                "source": identity_to_dict(layer.source), "stored_at": record.stored_at}
    document = {
        "kind": LAYER_KIND, "version": PRUNED_VERSION if layer.stands_for else FORMAT_VERSION,
        "id": layer.id, "disk": layer.disk, "parent": layer.parent,
        "image_format": layer.image_format, "size": layer.size,
        "virtual_size": layer.virtual_size,
        "checksum": _checksum_to_dict(record.chunks),
        "compression": None, "encryption": None,
        "source": None if layer.stands_for else identity_to_dict(layer.source),
        "stored_at": record.stored_at,
    }
    if layer.stands_for:
        document["merged"] = {"stands_for": layer.stands_for,
                              "covers": [_covered_to_dict(covered) for covered in layer.covers]}
    return document


def _covered_to_dict(layer: StoredLayer) -> dict[str, Any]:
    return {"id": layer.id, "parent": layer.parent, "virtual_size": layer.virtual_size,
            "source": None if layer.stands_for else identity_to_dict(layer.source),
            "stands_for": layer.stands_for}


def _covered_from_dict(entry: Any, disk: str, origin: str) -> StoredLayer:
    if not isinstance(entry, dict):
        raise CorruptStoreError(f"{origin}: a merged layer's 'covers' entry is not an object")
    stands_for = _optional_id(entry, "stands_for", origin)
    source = entry.get("source")
    return StoredLayer(
        id=_checked(_field(entry, "id", str, origin), is_valid_id, "layer id", origin),
        disk=disk, parent=_optional_id(entry, "parent", origin), image_format="raw", size=0,
        virtual_size=_count(entry, "virtual_size", origin), digest="",
        source=NO_SOURCE if source is None else identity_from_dict(
            _field(entry, "source", dict, origin), origin),
        stands_for=stands_for)


def _optional_id(document: Mapping[str, Any], key: str, origin: str) -> Optional[str]:
    if document.get(key) is None:
        return None
    return _checked(_field(document, key, str, origin), is_valid_id, key.replace("_", " "), origin)


def identity_record(layer: StoredLayer, stored_at: str) -> LayerRecord:
    """A format-3 layer record: which frozen live file a point's index was read from."""
    return LayerRecord(layer=layer, chunks=ChunkList(layer.size, 0, ()), stored_at=stored_at)


def _identity_record_from_dict(document: Mapping[str, Any], origin: str) -> LayerRecord:
    layer = StoredLayer(
        id=_checked(_field(document, "id", str, origin), is_valid_id, "layer id", origin),
        disk=_checked(_field(document, "disk", str, origin), is_valid_id, "disk target", origin),
        parent=_optional_id(document, "parent", origin),
        image_format=_checked(_field(document, "image_format", str, origin),
                              lambda fmt: fmt in IMAGE_FORMATS, "image format", origin),
        size=_count(document, "size", origin), virtual_size=_count(document, "virtual_size", origin),
        digest="", source=identity_from_dict(_field(document, "source", dict, origin), origin))
    return identity_record(layer, str(document.get("stored_at", "")))


def layer_record_from_dict(document: Mapping[str, Any], origin: str) -> LayerRecord:
    check_header(document, LAYER_KIND, origin)
    if document.get("version") == CHUNKED_VERSION:
        return _identity_record_from_dict(document, origin)
    _refuse_transforms(document, origin)
    size = _field(document, "size", int, origin)
    if _field(document, "virtual_size", int, origin) < 0:
        raise CorruptStoreError(f"{origin}: chunk size, size or virtual size out of range")
    chunk_list = _checksum(document, size, origin)
    digest = chunk_list.digest
    parent = _optional_id(document, "parent", origin)
    disk = _checked(_field(document, "disk", str, origin), is_valid_id, "disk target", origin)
    merged = _merged_from_dict(document, disk, origin)
    layer = StoredLayer(
        id=_checked(_field(document, "id", str, origin), is_valid_id, "layer id", origin),
        disk=disk, parent=parent,
        image_format=_checked(_field(document, "image_format", str, origin),
                              lambda fmt: fmt in IMAGE_FORMATS, "image format", origin),
        size=size, virtual_size=_field(document, "virtual_size", int, origin),
        digest=digest,
        source=NO_SOURCE if merged else identity_from_dict(
            _field(document, "source", dict, origin), origin),
        data_bytes=chunk_list.data_bytes,
        stands_for=merged[0] if merged else None, covers=merged[1] if merged else ())
    return LayerRecord(layer=layer, chunks=chunk_list,
                       stored_at=str(document.get("stored_at", "")))


def _merged_from_dict(document: Mapping[str, Any], disk: str,
                      origin: str) -> Optional[tuple[str, tuple[StoredLayer, ...]]]:
    """A merged layer's ``stands_for`` and ``covers`` (None for a copied layer)."""
    if (document.get("merged") is None) == (document.get("version") == PRUNED_VERSION):
        raise CorruptStoreError(f"{origin}: version {PRUNED_VERSION} records, and only they, "
                                "describe merged layers")
    if document.get("merged") is None:
        return None
    merged = _field(document, "merged", dict, origin)
    stands_for = _checked(_field(merged, "stands_for", str, origin), is_valid_id,
                          "stands_for id", origin)
    covers = tuple(_covered_from_dict(entry, disk, origin)
                   for entry in _field(merged, "covers", list, origin))
    if not covers or covers[-1].id != stands_for:
        raise CorruptStoreError(f"{origin}: a merged layer must cover the layer it stands for, "
                                "last")
    return stands_for, covers
def _checksum(document: Mapping[str, Any], size: int, origin: str) -> ChunkList:
    """The ``checksum`` object of a record: its chunk list, checked against its digest."""
    checksum = _field(document, "checksum", dict, origin)
    if checksum.get("algorithm") != ALGORITHM:
        raise CorruptStoreError(f"{origin}: unknown checksum algorithm {checksum.get('algorithm')!r}")
    chunk_size = _field(checksum, "chunk_size", int, origin)
    if chunk_size <= 0 or size < 0:
        raise CorruptStoreError(f"{origin}: chunk size or size out of range")
    chunks = tuple(_chunk(entry, chunk_size, size, origin)
                   for entry in _field(checksum, "chunks", list, origin))
    chunk_list = ChunkList(size, chunk_size, chunks)
    if _field(checksum, "digest", str, origin) != chunk_list.digest:
        raise CorruptStoreError(f"{origin}: the chunk list does not match the recorded digest")
    return chunk_list


def _checksum_to_dict(chunks: ChunkList) -> dict[str, Any]:
    return {"algorithm": ALGORITHM, "chunk_size": chunks.chunk_size, "digest": chunks.digest,
            "chunks": [[c.offset, c.length, c.digest] for c in chunks.chunks]}


def _refuse_transforms(document: Mapping[str, Any], origin: str) -> None:
    for transform in ("compression", "encryption"):
        if document.get(transform) is not None:
            raise CorruptStoreError(f"{origin} uses {transform} "
                                    f"{document[transform]!r}, which this fibackup cannot read")


# -- stored files (NVRAM, TPM state, kernel, initrd) -------------------------------

def file_record_to_dict(record: FileRecord) -> dict[str, Any]:
    return {"kind": FILE_KIND, "version": FORMAT_VERSION, "id": record.id,
            "size": record.size, "checksum": _checksum_to_dict(record.chunks),
            "compression": None, "encryption": None, "stored_at": record.stored_at}


def file_record_from_dict(document: Mapping[str, Any], origin: str) -> FileRecord:
    check_header(document, FILE_KIND, origin)
    _refuse_transforms(document, origin)
    chunks = _checksum(document, _field(document, "size", int, origin), origin)
    record = FileRecord(
        id=_checked(_field(document, "id", str, origin), is_valid_id, "file id", origin),
        chunks=chunks, stored_at=str(document.get("stored_at", "")))
    if record.id != record.digest:
        raise CorruptStoreError(f"{origin}: file id {record.id} is not its digest "
                                f"{record.digest} (stored files are named by their content)")
    return record


def is_relative_name(text: str) -> bool:
    """A path inside a directory: valid id components, never absolute or ``..``."""
    return bool(text) and all(is_valid_id(part) for part in text.split("/"))


def _chunk(entry: Any, chunk_size: int, size: int, origin: str) -> Chunk:
    if (not isinstance(entry, list) or len(entry) != 3
            or not all(isinstance(value, int) and not isinstance(value, bool) for value in entry[:2])
            or not isinstance(entry[2], str) or not _HEX_RE.match(entry[2])):
        raise CorruptStoreError(f"{origin}: malformed chunk entry {entry!r}")
    offset, length, digest = entry
    if offset < 0 or offset % chunk_size or length <= 0 or length > chunk_size or offset + length > size:
        raise CorruptStoreError(f"{origin}: chunk entry {entry!r} lies outside the file")
    return Chunk(offset, length, digest)


# -- restore points ------------------------------------------------------------

def point_to_dict(point: RestorePoint) -> dict[str, Any]:
    if point.format == CHUNKED_VERSION:
        return _chunked_point_to_dict(point)
    return {
        "kind": POINT_KIND, "version": FORMAT_VERSION,
        "id": point.id, "seq": point.seq, "time": point.time,
        "domain": {"name": point.domain_name, "uuid": point.domain_uuid, "host": point.host},
        "quiesced": point.quiesced,
        "skipped_disks": list(point.skipped_disks),
        "disks": {target: {
            "virtual_size": disk.virtual_size, "source_path": disk.source_path,
            "layers": [{"id": layer.id, "image_format": layer.image_format, "size": layer.size,
                        "virtual_size": layer.virtual_size, "digest": layer.digest,
                        "data_bytes": layer.data_bytes, "new": layer.new}
                       for layer in disk.layers]}
            for target, disk in sorted(point.disks.items())},
        "files": [_file_entry(item) for item in point.files],
        "bytes_new": point.bytes_new, "bytes_total": point.bytes_total,
        "domain_xml": point.domain_xml,
    }


def _chunked_point_to_dict(point: RestorePoint) -> dict[str, Any]:
    def file_entry(item: PointFile) -> dict[str, Any]:
        assert item.index is not None
        entry = {"role": item.role, "path": item.path, "size": item.size, "mode": item.mode,
                 "new": item.new, "index": _index_to_dict(item.index)}
        return {**entry, "name": item.name} if item.name else entry

    return {
        "kind": POINT_KIND, "version": CHUNKED_VERSION,
        "id": point.id, "seq": point.seq, "time": point.time,
        "domain": {"name": point.domain_name, "uuid": point.domain_uuid, "host": point.host},
        "quiesced": point.quiesced, "skipped_disks": list(point.skipped_disks),
        "disks": {target: {
            "virtual_size": disk.virtual_size, "source_path": disk.source_path,
            "index": _index_to_dict(_required(disk.index, target)),
            "layers": [{"id": layer.id, "image_format": layer.image_format, "size": layer.size,
                        "virtual_size": layer.virtual_size, "new": layer.new}
                       for layer in disk.layers]}
            for target, disk in sorted(point.disks.items())},
        "files": [file_entry(item) for item in point.files],
        "bytes_new": point.bytes_new, "bytes_total": point.bytes_total,
        "domain_xml": point.domain_xml,
    }


def _required(ref: Optional[IndexRef], target: str) -> IndexRef:
    if ref is None:
        raise ValueError(f"a format-3 point needs an index for disk {target}")
    return ref


def _index_to_dict(ref: IndexRef) -> dict[str, Any]:
    return {"id": ref.id, "data_bytes": ref.data_bytes, "chunks": ref.chunks,
            "new_chunks": ref.new_chunks, "stored_bytes": ref.stored_bytes}


def _index_from_dict(document: Mapping[str, Any], origin: str) -> IndexRef:
    return IndexRef(id=_checked(_field(document, "id", str, origin),
                                lambda text: bool(_OBJECT_RE.match(text)), "index id", origin),
                    data_bytes=_count(document, "data_bytes", origin),
                    chunks=_count(document, "chunks", origin),
                    new_chunks=_count(document, "new_chunks", origin),
                    stored_bytes=_count(document, "stored_bytes", origin))


def _file_entry(item: PointFile) -> dict[str, Any]:
    entry: dict[str, Any] = {"role": item.role, "path": item.path, "id": item.id,
                             "digest": item.digest, "size": item.size, "mode": item.mode,
                             "new": item.new}
    if item.name:
        entry["name"] = item.name
    return entry


def point_from_dict(document: Mapping[str, Any], origin: str) -> RestorePoint:
    check_header(document, POINT_KIND, origin)
    chunked = document.get("version") == CHUNKED_VERSION
    domain = _field(document, "domain", dict, origin)
    disks: dict[str, PointDisk] = {}
    for target, entry in _field(document, "disks", dict, origin).items():
        _checked(target, is_valid_id, "disk target", origin)
        if not isinstance(entry, dict):
            raise CorruptStoreError(f"{origin}: disk {target!r} is not an object")
        layers = tuple(_point_layer(layer, origin, chunked)
                       for layer in _field(entry, "layers", list, origin))
        if not layers:
            raise CorruptStoreError(f"{origin}: disk {target!r} lists no layer")
        virtual_size = _count(entry, "virtual_size", origin)
        if virtual_size != layers[-1].virtual_size:
            # the restored disk is sized from this: it must be what the top layer presents
            raise CorruptStoreError(f"{origin}: disk {target!r} has virtual size {virtual_size} "
                                    f"but its top layer has {layers[-1].virtual_size}")
        disks[target] = PointDisk(
            target=target, layers=layers, virtual_size=virtual_size,
            source_path=str(entry.get("source_path", "")),
            index=_index_from_dict(_field(entry, "index", dict, origin), origin) if chunked
            else None)
    if not disks:
        raise CorruptStoreError(f"{origin} lists no disk")
    skipped = document.get("skipped_disks", [])
    revision = document.get("revision", 0)
    if type(revision) is not int or revision < 0 or (revision > 0) != (
            document.get("version") == PRUNED_VERSION):
        raise CorruptStoreError(f"{origin}: revision {revision!r} is not valid for format "
                                f"version {document.get('version')!r}")
    return RestorePoint(
        id=_checked(_field(document, "id", str, origin), is_valid_id, "point id", origin),
        seq=_count(document, "seq", origin, least=1), time=_field(document, "time", str, origin),
        domain_name=_field(domain, "name", str, origin),
        domain_uuid=_checked(_field(domain, "uuid", str, origin), is_valid_uuid, "uuid", origin),
        host=_field(domain, "host", str, origin), disks=disks,
        domain_xml=_field(document, "domain_xml", str, origin),
        quiesced=document.get("quiesced") is True,
        skipped_disks=tuple(str(name) for name in skipped) if isinstance(skipped, list) else (),
        revision=revision, format=CHUNKED_VERSION if chunked else FORMAT_VERSION,
        files=_point_files(document, origin, chunked))


def _point_files(document: Mapping[str, Any], origin: str,
                 chunked: bool) -> tuple[PointFile, ...]:
    """The optional ``files`` list (manifests written before it existed have none)."""
    if document.get("files") is None:
        return ()
    entries = _field(document, "files", list, origin)
    files = tuple(_point_file(entry, origin, chunked) for entry in entries)
    places = [(item.role, item.name or item.path) for item in files]
    if len(set(places)) != len(places):
        raise CorruptStoreError(f"{origin} lists a file twice")
    return files


def _point_file(entry: Any, origin: str, chunked: bool) -> PointFile:
    if not isinstance(entry, dict):
        raise CorruptStoreError(f"{origin}: a file entry is not an object")
    role = _checked(_field(entry, "role", str, origin), is_valid_id, "file role", origin)
    name = entry.get("name", "")
    if name or role == "tpm":
        _checked(_field(entry, "name", str, origin), is_relative_name, "file name", origin)
    if chunked:
        index = _index_from_dict(_field(entry, "index", dict, origin), origin)
        return PointFile(role=role, path=_field(entry, "path", str, origin), id=index.id,
                         digest=index.id, size=_count(entry, "size", origin),
                         mode=_count(entry, "mode", origin), name=name,
                         new=entry.get("new") is True, index=index)
    digest = _checked(_field(entry, "digest", str, origin), lambda text: bool(_HEX_RE.match(text)),
                      "digest", origin)
    return PointFile(
        role=role, path=_field(entry, "path", str, origin),
        id=_checked(_field(entry, "id", str, origin), is_valid_id, "file id", origin),
        digest=digest, size=_count(entry, "size", origin), mode=_count(entry, "mode", origin),
        name=name, new=entry.get("new") is True)


def _point_layer(entry: Any, origin: str, chunked: bool = False) -> PointLayer:
    if not isinstance(entry, dict):
        raise CorruptStoreError(f"{origin}: a layer entry is not an object")
    if chunked:
        return PointLayer(
            id=_checked(_field(entry, "id", str, origin), is_valid_id, "layer id", origin),
            image_format=_checked(_field(entry, "image_format", str, origin),
                                  lambda fmt: fmt in IMAGE_FORMATS, "image format", origin),
            size=_count(entry, "size", origin), virtual_size=_count(entry, "virtual_size", origin),
            digest="", new=entry.get("new") is True)
    return PointLayer(
        id=_checked(_field(entry, "id", str, origin), is_valid_id, "layer id", origin),
        image_format=_checked(_field(entry, "image_format", str, origin),
                              lambda fmt: fmt in IMAGE_FORMATS, "image format", origin),
        size=_count(entry, "size", origin), virtual_size=_count(entry, "virtual_size", origin),
        digest=_checked(_field(entry, "digest", str, origin), lambda text: bool(_HEX_RE.match(text)),
                        "digest", origin),
        new=entry.get("new") is True, data_bytes=_count(entry, "data_bytes", origin))
