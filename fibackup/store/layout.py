"""Where each object of a store lives, and what it is called (docs/FORMAT.md)::

    fibackup-store.json                       store marker (id, format version)
    domains/<uuid>/layers/<layer-id>.<fmt>    a stored layer image (write-once)
    domains/<uuid>/layers/<layer-id>.json     its record: chunk list, source identity
    domains/<uuid>/files/<digest>.data        a stored non-disk file (NVRAM, TPM state,
    domains/<uuid>/files/<digest>.json        kernel...; content-addressed) and its record
    domains/<uuid>/points/<seq>[.r<n>].json   a restore point manifest (written last)
    domains/<uuid>/.lock                      the domain's lock (directories only)

A location is a tuple of "directory" components below the store's root and a
name; ``Backend.path()`` turns one into what messages show.  Every name built
here is checked first (an id read from a manifest never becomes ``../x``).
"""
from __future__ import annotations

import re
from typing import Optional

from fibackup.errors import CorruptStoreError
from fibackup.store import format as fmt

MARKER = "fibackup-store.json"
LOCK_NAME = ".lock"
POINT_NAME_DIGITS = 8

_POINT_NAME_RE = re.compile(r"\A([0-9]+)(?:\.r([1-9][0-9]{0,8}))?\.json\Z")


def domain_parts(domain_uuid: str) -> tuple[str, str]:
    """The components of a domain's directory below the root."""
    if not fmt.is_valid_uuid(domain_uuid):
        raise CorruptStoreError(f"invalid domain uuid {domain_uuid!r}")
    return ("domains", domain_uuid)


def layers_parts(domain_uuid: str) -> tuple[str, ...]:
    """The components of a domain's layers directory below the root."""
    return (*domain_parts(domain_uuid), "layers")


def files_parts(domain_uuid: str) -> tuple[str, ...]:
    """The components of a domain's stored-files directory below the root."""
    return (*domain_parts(domain_uuid), "files")


def points_parts(domain_uuid: str) -> tuple[str, ...]:
    """The components of a domain's manifests directory below the root."""
    return (*domain_parts(domain_uuid), "points")


def image_name(layer_id: str, image_format: str) -> str:
    if not fmt.is_valid_id(layer_id) or image_format not in fmt.IMAGE_FORMATS:
        raise CorruptStoreError(f"invalid layer id or format {layer_id!r}/{image_format!r}")
    return f"{layer_id}.{image_format}"


def data_name(file_id: str) -> str:
    if not fmt.is_valid_id(file_id):
        raise CorruptStoreError(f"invalid stored file id {file_id!r}")
    return f"{file_id}.data"


def record_name(layer_id: str) -> str:
    """The record of a layer or of a stored file."""
    if not fmt.is_valid_id(layer_id):
        raise CorruptStoreError(f"invalid layer id {layer_id!r}")
    return f"{layer_id}.json"


def manifest_key(seq: int) -> str:
    """The key of a restore point in ``BackupStore.manifest_names()``: its sequence
    number as its manifests are named (``00000003``)."""
    return f"{seq:0{POINT_NAME_DIGITS}d}"


def point_name(seq: int, revision: int = 0) -> str:
    """A manifest's name: ``00000003.json``, revision 2 ``00000003.r2.json``."""
    suffix = f".r{revision}" if revision else ""
    return f"{manifest_key(seq)}{suffix}.json"


def parse_point_name(name: str) -> tuple[Optional[str], int]:
    """``00000003.json`` -> ("00000003", 0), ``00000003.r2.json`` -> ("00000003", 2);
    (None, 0) for any other name (reading it then reports it).  ASCII digits only."""
    match = _POINT_NAME_RE.match(name)
    if match is None:
        return None, 0
    return match.group(1), int(match.group(2) or 0)
