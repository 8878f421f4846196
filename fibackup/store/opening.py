"""Opening a store: the backend for a location, and the store's marker.

A directory is opened (or, with ``create``, made) on this host; an
``s3://BUCKET/PREFIX`` location (location.is_url) on object storage.  A store
is recognised by its marker (layout.MARKER), which ``create`` writes into an
empty location only.
"""
from __future__ import annotations

import os
import uuid as _uuid
from dataclasses import dataclass
from typing import Callable, Optional

from fibackup.errors import CorruptStoreError, StoreUnavailableError
from fibackup.model.naming import utc_time
from fibackup.store import format as fmt
from fibackup.store.backend import Backend, DirectoryBackend
from fibackup.store.documents import read_document
from fibackup.store.layout import MARKER
from fibackup.store.location import is_url
from fibackup.store.s3.backend import S3Backend
from fibackup.store.v3.settings import STORE_VERSION, StoreSettings


@dataclass(frozen=True)
class Marker:
    """What a store's marker says: its id, and for format 3 its settings."""

    store_id: str
    settings: Optional[StoreSettings] = None
    """None: a format-1/2 store."""


@dataclass(frozen=True)
class NewStore:
    """How to initialise an empty location: format 3 with ``settings`` (and, when they
    say so, the first key, wrapped by ``passphrase``, asked for when None), or format 1
    when ``settings`` is None."""

    settings: Optional[StoreSettings] = None
    passphrase: Optional[bytes] = None


FORMAT_1 = NewStore()
FORMAT_3 = NewStore(StoreSettings())
"""A new store as fibackup makes it by default: format 3, zstd, not encrypted."""


def open_backend(path: str, create: bool = False,
                 new: NewStore = FORMAT_1) -> tuple[Backend, Marker]:
    """The backend of the store at ``path`` and its marker; with ``create``, an empty
    directory or prefix is initialised first (as ``new`` says)."""
    if is_url(path):
        backend = S3Backend.from_url(path)
        return backend, _marked(backend, backend.is_empty, create, new)
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
    directory = DirectoryBackend(root)
    if os.path.lexists(os.path.join(root, MARKER)):
        return directory, read_marker(directory)

    def empty() -> bool:
        return all(name.startswith(f".{MARKER}.partial-") for name in os.listdir(root))
    return directory, _marked(directory, empty, create, new)


def _marked(backend: Backend, empty: Callable[[], bool], create: bool,
            new: NewStore) -> Marker:
    """The store's marker, or with ``create`` a new marker written into an empty
    location."""
    try:
        return read_marker(backend)
    except FileNotFoundError:
        pass
    root = backend.root
    if not create:
        raise StoreUnavailableError(
            f"{root} is not a fibackup backup directory (no {MARKER}); "
            "check the path given with -b")
    if not empty():
        raise StoreUnavailableError(
            f"{root} is not empty and is not a fibackup backup directory; "
            "choose an empty or new directory for -b")
    store_id = str(_uuid.uuid4())
    document = {"kind": fmt.STORE_KIND, "version": fmt.FORMAT_VERSION,
                "store_id": store_id, "created": utc_time()}
    if new.settings is not None:
        document.update(version=STORE_VERSION, **new.settings.to_marker())
        if new.settings.encrypted:
            _first_key(backend, store_id, new)
    try:
        backend.write_new((), MARKER, fmt.dumps(document))
    except FileExistsError:            # another run initialised it at the same moment
        return read_marker(backend)
    return Marker(store_id, new.settings)


def _first_key(backend: Backend, store_id: str, new: NewStore) -> None:
    """The first wrapped key of a new encrypted store, written before its marker (a
    marker of an encrypted store with no key would be a store nobody can read)."""
    from fibackup.store.v3 import passwords
    from fibackup.store.v3.objects import ChunkStore
    if new.settings is None:
        raise ValueError("a format-1 store has no keys")
    passphrase = new.passphrase or passwords.passphrase(backend.root, new=True)
    ChunkStore(backend, store_id, new.settings).add_key(passphrase)


def read_marker(backend: Backend) -> Marker:
    """The store's marker (FileNotFoundError when there is none)."""
    path = backend.path((), MARKER)
    try:
        document = read_document(backend, (), MARKER)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise StoreUnavailableError(f"cannot read {path} ({error.strerror})") from None
    if document.get("kind") == fmt.STORE_KIND and document.get("version") == STORE_VERSION:
        settings: Optional[StoreSettings] = StoreSettings.from_marker(document, path)
    else:
        fmt.check_header(document, fmt.STORE_KIND, path)
        settings = None
    store_id = document.get("store_id")
    if not isinstance(store_id, str) or not fmt.is_valid_uuid(store_id):
        raise CorruptStoreError(f"{path} has no valid store_id")
    return Marker(store_id, settings)


def has_marker(backend: Backend) -> bool:
    """Whether the store is still there (a run checks it after an I/O error)."""
    try:
        backend.size((), MARKER)
    except (OSError, StoreUnavailableError, CorruptStoreError):
        return False
    return True


def _mkdir(path: str) -> None:
    try:
        os.mkdir(path, 0o700)
    except OSError as error:
        raise StoreUnavailableError(f"cannot create backup directory {path} "
                                    f"({error.strerror})") from None
