"""Reading a store's documents: restore-point manifests, layer and file records.

Records are write-once, so each is parsed once per run and kept
(:class:`Documents`); manifests are listed and read afresh, the highest revision
of each restore point chosen (layout.parse_point_name).  Every document is
untrusted: format.py parses it defensively, and a manifest that lists a layer
unlike another manifest does, when the layer's record contradicts it, is left
out as damaged.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from fibackup.errors import CorruptStoreError
from fibackup.model.chain import StoredLayer
from fibackup.model.points import PointLayer, RestorePoint
from fibackup.store import format as fmt
from fibackup.store import layout
from fibackup.store.backend import Backend, Parts
from fibackup.store.checking import agreed, entries, layer_disagreement


def read_document(backend: Backend, parts: Parts, name: str) -> dict[str, Any]:
    """A JSON document of the store (FileNotFoundError when missing)."""
    return fmt.loads(backend.read(parts, name), backend.path(parts, name))


def document_names(backend: Backend, parts: Parts) -> list[str]:
    """Names of the published JSON documents in ``parts`` (temporary names skipped)."""
    try:
        names = sorted(backend.names(parts))
    except FileNotFoundError:
        return []
    return [name for name in names if not name.startswith(".") and name.endswith(".json")]


def stems(backend: Backend, parts: Parts, suffixes: Sequence[str]) -> set[str]:
    """Valid ids of the published files ``<id>.<suffix>`` in ``parts``."""
    try:
        names = backend.names(parts)
    except FileNotFoundError:
        return set()
    found = {name.rsplit(".", 1)[0] for name in names
             if not name.startswith(".") and "." in name and name.rsplit(".", 1)[1] in suffixes}
    return {stem for stem in found if fmt.is_valid_id(stem)}


class Documents:
    """The documents of one store, records cached for the run."""

    def __init__(self, backend: Backend, version: int = 1) -> None:
        self.backend = backend
        self.version = version
        """The store's format: a manifest of the other kind is refused (3: chunks)."""
        self._records: dict[tuple[str, str], fmt.LayerRecord] = {}
        self._file_records: dict[tuple[str, str], fmt.FileRecord] = {}
        self._listed: dict[tuple[str, str], dict[str, PointLayer]] = {}
        """(domain, layer id) -> {manifest path: its entry} of the manifests read."""

    # -- restore points ----------------------------------------------------------

    def domain_uuids(self) -> list[str]:
        try:
            names = sorted(self.backend.names(("domains",)))
        except FileNotFoundError:
            return []
        return [name for name in names if fmt.is_valid_uuid(name)]

    def points(self, domain_uuid: str,
               problems: Optional[list[str]] = None) -> list[RestorePoint]:
        """The domain's restore points, oldest first (see ``BackupStore.points``)."""
        found: list[CorruptStoreError] = []
        loaded: dict[str, RestorePoint] = {}
        parts = layout.points_parts(domain_uuid)
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
            for _target, layer in entries(point):
                self._listed.setdefault((domain_uuid, layer.id), {})[path] = layer
        return sorted(loaded.values(), key=lambda point: point.seq)

    def _point(self, domain_uuid: str, parts: Sequence[str], name: str) -> RestorePoint:
        path = self.backend.path(parts, name)
        point = fmt.point_from_dict(read_document(self.backend, parts, name), path)
        if point.domain_uuid != domain_uuid or \
                name != layout.point_name(point.seq, point.revision):
            raise CorruptStoreError(f"{path} belongs to another domain or sequence number")
        if (point.format == 3) != (self.version == 3):
            raise CorruptStoreError(f"{path} is a format-{point.format} manifest in a "
                                    f"format-{self.version} store; it was not written here")
        return point

    def listings(self, domain_uuid: str, layer_id: str) -> dict[str, PointLayer]:
        """{manifest path: its entry} of every manifest read so far that lists the layer."""
        return dict(self._listed.get((domain_uuid, layer_id), {}))

    def manifest_names(self, domain_uuid: str) -> dict[str, str]:
        """Each restore point's manifest file name, by its key (layout.manifest_key, or
        the whole name when it is not a manifest name): the highest revision of each
        point; lower revisions are superseded (prune removes them)."""
        chosen: dict[str, tuple[int, str]] = {}
        for name in document_names(self.backend, layout.points_parts(domain_uuid)):
            seq, revision = layout.parse_point_name(name)
            key = seq if seq is not None else name
            if key not in chosen or revision > chosen[key][0]:
                chosen[key] = (revision, name)
        return {key: name for key, (_revision, name) in chosen.items()}

    def superseded_manifests(self, domain_uuid: str) -> list[str]:
        """Manifest names that a higher revision of the same point replaced."""
        current = set(self.manifest_names(domain_uuid).values())
        return [name for name in document_names(self.backend, layout.points_parts(domain_uuid))
                if name not in current]

    def manifest_document(self, domain_uuid: str, name: str) -> dict[str, Any]:
        """A manifest as JSON (prune rewrites it key by key, keeping what it does not know)."""
        return read_document(self.backend, layout.points_parts(domain_uuid), name)

    def next_seq(self, domain_uuid: str) -> int:
        """One more than the highest manifest number, readable or not."""
        numbers = [int(seq) for seq, _revision in map(
            layout.parse_point_name,
            document_names(self.backend, layout.points_parts(domain_uuid)))
            if seq is not None]
        return max(numbers, default=0) + 1

    def _contradicted(self, domain_uuid: str,
                      loaded: dict[str, RestorePoint]) -> dict[str, str]:
        """Manifests listing a layer unlike another manifest does, and unlike its record.

        Only layers listed differently are looked up (their records decide which
        listing is wrong), so reading the manifests stays cheap.  When the record
        cannot be read nothing is decided here: restore and verify report it.
        """
        listings: dict[str, list[tuple[str, str, PointLayer]]] = {}
        for path, point in loaded.items():
            for target, layer in entries(point):
                listings.setdefault(layer.id, []).append((path, target, layer))
        wrong: dict[str, str] = {}
        for layer_id, listed in sorted(listings.items()):
            if len({agreed(layer) for _path, _target, layer in listed}) == 1:
                continue
            try:
                record = self.layer_record(domain_uuid, layer_id)
            except CorruptStoreError:
                continue
            for path, target, layer in listed:
                differences = layer_disagreement(layer, record.layer)
                if differences and path not in wrong:
                    point = loaded[path]
                    wrong[path] = (f"{path} (restore point {point.domain_name}/{point.id}), disk "
                                   f"{target}: layer {layer_id} is listed with "
                                   f"{'; '.join(differences)}, unlike in other restore points")
        return wrong

    # -- records -----------------------------------------------------------------

    def layer_record(self, domain_uuid: str, layer_id: str) -> fmt.LayerRecord:
        """A layer's record; records are write-once, so each is parsed once per run."""
        key = (domain_uuid, layer_id)
        if key not in self._records:
            self._records[key] = self._read_layer_record(domain_uuid, layer_id)
        return self._records[key]

    def _record_document(self, parts: Parts, item_id: str,
                         what: str) -> tuple[dict[str, Any], str]:
        """The record of a layer or stored file, and its path; missing is corrupt."""
        name = layout.record_name(item_id)
        path = self.backend.path(parts, name)
        try:
            return read_document(self.backend, parts, name), path
        except FileNotFoundError:
            raise CorruptStoreError(f"{what} record {path} is missing") from None

    def _read_layer_record(self, domain_uuid: str, layer_id: str) -> fmt.LayerRecord:
        document, path = self._record_document(layout.layers_parts(domain_uuid), layer_id,
                                               "layer")
        record = fmt.layer_record_from_dict(document, path)
        if record.layer.id != layer_id:
            raise CorruptStoreError(f"{path} describes layer {record.layer.id}, not {layer_id}")
        return record

    def file_record(self, domain_uuid: str, file_id: str) -> fmt.FileRecord:
        """A stored file's record (parsed once per run)."""
        key = (domain_uuid, file_id)
        if key not in self._file_records:
            document, path = self._record_document(layout.files_parts(domain_uuid), file_id,
                                                   "file")
            record = fmt.file_record_from_dict(document, path)
            if record.id != file_id:
                raise CorruptStoreError(f"{path} describes file {record.id}, not {file_id}")
            self._file_records[key] = record
        return self._file_records[key]

    def remember(self, domain_uuid: str, record: fmt.LayerRecord) -> None:
        """Keep a record this run wrote (it is not read back)."""
        self._records[(domain_uuid, record.layer.id)] = record

    def forget_layer(self, domain_uuid: str, layer_id: str) -> None:
        self._records.pop((domain_uuid, layer_id), None)

    def forget_file(self, domain_uuid: str, file_id: str) -> None:
        self._file_records.pop((domain_uuid, file_id), None)

    def layer_ids(self, domain_uuid: str) -> set[str]:
        """Ids of every published layer file (image or record) of the domain."""
        return stems(self.backend, layout.layers_parts(domain_uuid),
                     ("json", *fmt.IMAGE_FORMATS))

    def file_ids(self, domain_uuid: str) -> set[str]:
        """Ids of every published stored file (data or record) of the domain."""
        return stems(self.backend, layout.files_parts(domain_uuid), ("json", "data"))

    def stored_layers(self, domain_uuid: str) -> list[StoredLayer]:
        """Layers with a complete record and image file (candidates for reuse); in a
        format-3 store, every readable layer record.

        A link in place of the domain's directory, ``layers/`` or ``points/``
        raises CorruptStoreError (a backup refuses it before taking a snapshot).
        """
        parts = layout.layers_parts(domain_uuid)
        names = document_names(self.backend, parts)
        document_names(self.backend, layout.points_parts(domain_uuid))
        layers = []
        for name in names:
            try:
                record = self.layer_record(domain_uuid, name[:-len(".json")])
                layer = record.layer
                if record.chunks.chunk_size == 0:      # format 3: the record is all there is
                    layers.append(layer)
                    continue
                size = self.backend.size(parts, layout.image_name(layer.id, layer.image_format))
            except (CorruptStoreError, OSError):
                continue
            if size == layer.size:
                layers.append(layer)
        return layers
