"""Remove what an interrupted run left in a domain's part of the backup directory.

Only called under the domain's lock (no other run writes there then).  Nothing
a restore point refers to is touched: a layer is only removed when it is
incomplete (its image without its record, or its record without its image) and
no manifest lists it (the record is written after the image and the manifest
last, so an interrupted run leaves exactly such layers); while any manifest of
the domain is unreadable, only hidden partial files are removed.
Complete layers no manifest lists yet are kept: the next backup reuses them.
Stored files (``files/``: NVRAM, TPM state, boot files) are treated alike: data
without its record, or a record without data, that no manifest lists is removed.
"""
from __future__ import annotations

from fibackup.errors import CorruptStoreError
from fibackup.store import format as fmt
from fibackup.store.repo import BackupStore

PARTIAL = ".partial-"


def tidy_domain(store: BackupStore, domain_uuid: str) -> list[str]:
    """Remove partial files and incomplete layers of one domain; return what was removed."""
    store.domain_dir(domain_uuid)
    backend = store.backend
    unreadable: list[str] = []
    points = store.points(domain_uuid, unreadable)
    listed = {layer_id for point in points for _target, layer_id in store.iter_point_layers(point)}
    listed_files = {item.id for point in points for item in point.files}
    removed = backend.abort_uploads(("domains", domain_uuid))    # object storage's uploads
    for sub in ("layers", "files", "points"):
        parts = ("domains", domain_uuid, sub)
        try:
            names = set(backend.names(parts))
        except (OSError, CorruptStoreError):     # missing, or a link: never followed
            continue
        for name in sorted(names):
            if name.startswith(".") and PARTIAL in name or \
                    sub == "layers" and not unreadable and _incomplete_layer(name, names, listed) \
                    or sub == "files" and not unreadable and \
                    _incomplete_file(name, names, listed_files):
                try:
                    backend.remove(parts, name)
                except OSError:
                    continue
                removed.append(backend.path(parts, name))
    return removed


def _incomplete_layer(name: str, names: set[str], listed: set[str]) -> bool:
    """An image without its record, or a record without its image, that no manifest
    lists (a listed one is damage for verify to report, not debris)."""
    stem, _dot, suffix = name.rpartition(".")
    if not stem or not fmt.is_valid_id(stem) or stem in listed:
        return False
    if suffix == "json":
        return not any(f"{stem}.{image}" in names for image in fmt.IMAGE_FORMATS)
    return suffix in fmt.IMAGE_FORMATS and f"{stem}.json" not in names


def _incomplete_file(name: str, names: set[str], listed: set[str]) -> bool:
    """A stored file's data without its record, or a record without data, that no
    manifest lists."""
    stem, _dot, suffix = name.rpartition(".")
    if not stem or not fmt.is_valid_id(stem) or stem in listed:
        return False
    partner = {"json": "data", "data": "json"}.get(suffix)
    return partner is not None and f"{stem}.{partner}" not in names
