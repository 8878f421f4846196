"""Reading stored copies back, every chunk checked: ``verify`` and ``restore``.

A check re-reads a stored layer or file against its record's chunk list and
reports problems in words; a restore copies it to a new local file, stops at the
first chunk that differs and removes the partial copy.  Before a layer is
restored, its record must agree with every manifest read so far that lists it
(checking.layer_disagreement).
"""
from __future__ import annotations

from typing import Optional

from fibackup.errors import CorruptStoreError, IntegrityError
from fibackup.fsutil import remove_quietly
from fibackup.model.chain import StoredLayer
from fibackup.model.points import PointFile, PointLayer
from fibackup.store import format as fmt
from fibackup.store import layout
from fibackup.store.backend import Backend
from fibackup.store.checking import (describe_damage, layer_disagreement,
                                     presented_size_problems, qcow2_size_problems,
                                     require_file_agreement)
from fibackup.store.chunks import ProgressFn, Throttle
from fibackup.store.documents import Documents

_NOT_RESTORABLE = "; this restore point cannot be restored (run 'fibackup verify')"


class Reader:
    """Checked reads of one store's layers and files."""

    def __init__(self, backend: Backend, documents: Documents) -> None:
        self.backend = backend
        self.documents = documents

    def _layer_path(self, domain_uuid: str, layer_id: str, image_format: str) -> str:
        return self.backend.path(layout.layers_parts(domain_uuid),
                                 layout.image_name(layer_id, image_format))

    def _file_path(self, domain_uuid: str, file_id: str) -> str:
        return self.backend.path(layout.files_parts(domain_uuid), layout.data_name(file_id))

    # -- layers ------------------------------------------------------------------

    def check_layer(self, domain_uuid: str, layer_id: str,
                    progress: Optional[ProgressFn] = None,
                    throttle: Optional[Throttle] = None) -> list[str]:
        """Problems found re-reading one stored layer (empty when it is intact)."""
        try:
            record = self.documents.layer_record(domain_uuid, layer_id)
        except CorruptStoreError as error:
            return [str(error)]
        path = self._layer_path(domain_uuid, layer_id, record.layer.image_format)
        try:
            result = self.backend.scan(layout.layers_parts(domain_uuid),
                                       layout.image_name(layer_id, record.layer.image_format),
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
        record = self.documents.layer_record(domain_uuid, layer_id)
        path = self._layer_path(domain_uuid, layer_id, record.layer.image_format)
        self._require_listed_alike(domain_uuid, record, expected)
        try:
            result = self.backend.scan(layout.layers_parts(domain_uuid),
                                       layout.image_name(layer_id, record.layer.image_format),
                                       record.chunks, destination, progress=progress,
                                       throttle=throttle, clone=clone)
        except FileNotFoundError as error:
            if error.filename != path:
                raise                            # the destination, not the store
            raise IntegrityError(f"stored layer {path} is missing; this restore point cannot "
                                 "be restored (run 'fibackup verify')") from None
        except CorruptStoreError as error:
            raise IntegrityError(f"{error}{_NOT_RESTORABLE}") from None
        problems = describe_damage(path, record.chunks, result)
        if not problems:
            problems = presented_size_problems(destination, record.layer, path)
        if problems:
            remove_quietly(destination)
            raise IntegrityError("; ".join(problems) + "; nothing was restored from it "
                                 "(choose another restore point with --at)")
        return record

    def _require_listed_alike(self, domain_uuid: str, record: fmt.LayerRecord,
                              expected: Optional[PointLayer]) -> None:
        """IntegrityError unless every listing of the layer agrees with its record."""
        layer_id = record.layer.id
        listed = self.documents.listings(domain_uuid, layer_id)
        if expected is not None:
            listed["the restore point"] = expected
        for manifest, entry in sorted(listed.items()):
            differences = layer_disagreement(entry, record.layer)
            if differences:
                record_path = self.backend.path(layout.layers_parts(domain_uuid),
                                                layout.record_name(layer_id))
                raise IntegrityError(
                    f"{manifest} lists layer {layer_id} with {'; '.join(differences)} "
                    f"({record_path}); the backup directory was "
                    "damaged or edited: nothing was restored from it (run 'fibackup verify', "
                    "choose another restore point with --at)")

    def _stored_size_problems(self, domain_uuid: str, layer: StoredLayer,
                              path: str) -> list[str]:
        if layer.image_format == "raw":                 # needs no read: opened for nothing
            return presented_size_problems(path, layer, path)
        head = self.backend.head(layout.layers_parts(domain_uuid),
                                 layout.image_name(layer.id, layer.image_format), 32)
        return qcow2_size_problems(head, layer, path)

    # -- stored files ------------------------------------------------------------

    def check_file(self, domain_uuid: str, item: PointFile) -> list[str]:
        """Problems found re-reading one stored file (empty when it is intact)."""
        try:
            record = self.agreeing_file_record(domain_uuid, item)
            path = self._file_path(domain_uuid, item.id)
            result = self.backend.scan(layout.files_parts(domain_uuid),
                                       layout.data_name(item.id), record.chunks)
        except (CorruptStoreError, IntegrityError) as error:
            return [str(error)]
        except FileNotFoundError:
            return [f"{self._file_path(domain_uuid, item.id)} is missing"]
        except OSError as error:
            return [f"{self._file_path(domain_uuid, item.id)} cannot be read "
                    f"({error.strerror})"]
        return describe_damage(path, record.chunks, result)

    def restore_file(self, domain_uuid: str, item: PointFile, destination: str) -> None:
        """Copy a stored file to ``destination``, checking every chunk on the way."""
        try:
            record = self.agreeing_file_record(domain_uuid, item)
        except CorruptStoreError as error:
            raise IntegrityError(f"{error}{_NOT_RESTORABLE}") from None
        path = self._file_path(domain_uuid, item.id)
        try:
            result = self.backend.scan(layout.files_parts(domain_uuid),
                                       layout.data_name(item.id), record.chunks, destination)
        except FileNotFoundError as error:
            if error.filename != path:
                raise
            raise IntegrityError(f"stored file {path} ({item.role} {item.path}) is missing; "
                                 "this restore point cannot be restored (run "
                                 "'fibackup verify')") from None
        except CorruptStoreError as error:
            raise IntegrityError(f"{error}{_NOT_RESTORABLE}") from None
        problems = describe_damage(path, record.chunks, result)
        if problems:
            remove_quietly(destination)
            raise IntegrityError("; ".join(problems) + f" ({item.role} {item.path}); nothing "
                                 "was restored from it (choose another restore point with --at)")

    def agreeing_file_record(self, domain_uuid: str, item: PointFile) -> fmt.FileRecord:
        """A stored file's record; CorruptStoreError unless it agrees with ``item``."""
        record = self.documents.file_record(domain_uuid, item.id)
        require_file_agreement(record, item)
        return record
