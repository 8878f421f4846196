"""The objects of a format-3 store: chunks, indexes, keys, and sealed documents.

:class:`ChunkStore` is one opened format-3 store's data side (one per store and
run): it unlocks the master key when something first needs it, writes each
chunk once under its id, reads every chunk back checked against its id, and
seals the JSON documents of an encrypted store (manifests, layer records, locks,
pins) with their own name as associated data, so a document moved to another
name does not open.  Layout (docs/FORMAT.md, "Format 3")::

    keys/<key-id>.json            wrapped master keys (plaintext JSON)
    chunks/<2 hex>/<64 hex>       chunk objects (codec.py)
    indexes/<2 hex>/<64 hex>      index objects: an index (index.py) encoded as a chunk
"""
from __future__ import annotations

import secrets
import threading
from typing import Iterator, Optional

from fibackup.errors import CorruptStoreError, FibackupError, IntegrityError
from fibackup.fsutil import host_name
from fibackup.model.naming import utc_time
from fibackup.store import format as fmt
from fibackup.store.backend import Backend, Parts, json_names
from fibackup.store.v3 import passwords
from fibackup.store.v3.codec import ChunkCodec
from fibackup.store.v3.index import ID_BYTES, DiskIndex
from fibackup.store.v3.keys import (KEY_KIND, Sealer, StoreKeys, new_master_key, no_key_error,
                                    unwrap, wrap)
from fibackup.store.v3.settings import StoreSettings

CHUNKS = "chunks"
INDEXES = "indexes"
KEYS = "keys"
SEALED_MAGIC = b"FBD3"
_HEX = set("0123456789abcdef")
MAX_INDEX_BYTES = 1 << 30


def is_object_name(name: str) -> bool:
    return len(name) == 2 * ID_BYTES and set(name) <= _HEX


class ChunkStore:
    """Chunks, indexes and keys of one format-3 store."""

    def __init__(self, backend: Backend, store_id: str, settings: StoreSettings) -> None:
        self.backend = backend
        self.store_id = store_id
        self.settings = settings
        self._keys: Optional[StoreKeys] = None
        self._codec: Optional[ChunkCodec] = None
        self._index_codec: Optional[ChunkCodec] = None
        self._unlock = threading.Lock()
        self._failed: Optional[FibackupError] = None
        self._master_key: Optional[bytes] = None

    # -- keys ----------------------------------------------------------------------

    @property
    def encrypted(self) -> bool:
        return self.settings.encrypted

    def keys(self) -> Optional[StoreKeys]:
        """The store's keys (None for a plain store); the first call unlocks them."""
        if not self.encrypted:
            return None
        with self._unlock:
            if self._failed is not None:
                raise self._failed                # asked once: never prompt again
            if self._keys is None:
                try:
                    self._master_key = self._master()
                    self._keys = StoreKeys.derive(self._master_key, self.store_id)
                except FibackupError as error:
                    self._failed = error
                    raise
            return self._keys

    def master_key(self) -> bytes:
        """The master key itself (to wrap another copy of it: ``key add``); unlocking the
        store once gives it."""
        self.keys()
        assert self._master_key is not None
        return self._master_key

    def unlock_soon(self) -> None:
        """Start unlocking in the background (scrypt takes ~0.1 s) when the passphrase
        comes from a file or a command, not a prompt; the first use waits for it."""
        if not self.encrypted or self._keys is not None or not passwords.unattended():
            return

        def unlock() -> None:
            try:
                self.keys()
            except Exception:  # noqa: BLE001 - kept in _failed, raised on first use
                pass

        threading.Thread(target=unlock, name="unlock", daemon=True).start()

    def _master(self, passphrase: Optional[bytes] = None) -> bytes:
        documents = self.key_documents()
        if not documents:
            raise CorruptStoreError(f"{self.backend.root} is encrypted but holds no key "
                                    f"(nothing in {self.backend.path((KEYS,))}); its data "
                                    "cannot be read by anyone", path=self.backend.root)
        phrase = passphrase if passphrase is not None else passwords.passphrase(self.backend.root)
        for name, document in documents:
            master = unwrap(document, phrase, self.store_id, self.backend.path((KEYS,), name))
            if master is not None:
                return master
        raise no_key_error(self.backend.root, "the passphrase given opens none of its "
                           f"{len(documents)} key(s); nothing was read or written")

    def key_documents(self) -> list[tuple[str, dict[str, object]]]:
        """(name, document) of every wrapped key."""
        found = []
        for name in json_names(self.backend, (KEYS,)):
            origin = self.backend.path((KEYS,), name)
            document = fmt.loads(self.backend.read((KEYS,), name), origin)
            if document.get("kind") == KEY_KIND:
                found.append((name, document))
        return found

    def add_key(self, passphrase: bytes, master: Optional[bytes] = None) -> str:
        """Write a new wrapped copy of the master key (a new one for a new store);
        its key id."""
        if master is None:
            master = self.master_key() if self.key_documents() else new_master_key()
        key_id = secrets.token_hex(8)
        document = wrap(master, passphrase, self.store_id, key_id, host_name(), utc_time())
        self.backend.ensure_dir((KEYS,))
        self.backend.write_new((KEYS,), f"{key_id}.json", fmt.dumps(document))
        return key_id

    def unlock_with(self, passphrase: bytes) -> None:
        """Unlock with this passphrase (StoreKeyError when it opens no key)."""
        with self._unlock:
            self._master_key = self._master(passphrase)
            self._keys = StoreKeys.derive(self._master_key, self.store_id)

    # -- chunks ----------------------------------------------------------------------

    @property
    def codec(self) -> ChunkCodec:
        if self._codec is None:
            self._codec = ChunkCodec(self.keys(), self.settings.compression,
                                     self.settings.chunk_size)
        return self._codec

    @property
    def index_codec(self) -> ChunkCodec:
        if self._index_codec is None:
            self._index_codec = ChunkCodec(self.keys(), self.settings.compression,
                                           MAX_INDEX_BYTES)
        return self._index_codec

    def chunk_id(self, data: bytes | memoryview) -> bytes:
        return self.codec.ids.of(data)

    @staticmethod
    def place(kind: str, object_id: bytes) -> tuple[tuple[str, str], str]:
        name = object_id.hex()
        return (kind, name[:2]), name

    def has(self, kind: str, object_id: bytes) -> bool:
        parts, name = self.place(kind, object_id)
        try:
            self.backend.size(parts, name)
        except FileNotFoundError:
            return False
        return True

    def put_chunk(self, chunk_id: bytes, data: bytes) -> int:
        """Store one chunk unless it is there; the bytes written (0: it was there)."""
        if self.has(CHUNKS, chunk_id):
            self.backend.note_reused(self.place(CHUNKS, chunk_id)[0])
            return 0
        return self._put(CHUNKS, chunk_id, self.codec.encode(chunk_id, data))

    def _put(self, kind: str, object_id: bytes, blob: bytes) -> int:
        parts, name = self.place(kind, object_id)
        if self.backend.write_once(parts, name, blob):
            return len(blob)
        self.backend.note_reused(parts)              # another run's, published meanwhile
        return 0

    def _read(self, kind: str, object_id: bytes, what: str) -> bytes:
        parts, name = self.place(kind, object_id)
        try:
            return self.backend.read(parts, name)
        except FileNotFoundError:
            raise IntegrityError(f"{what} is missing from the store") from None

    def get_chunk(self, chunk_id: bytes, length: Optional[int] = None,
                  check_id: bool = True) -> bytes:
        """A chunk's plaintext, checked against its id (IntegrityError otherwise; see
        ChunkCodec.decode for ``check_id``)."""
        what = f"chunk {chunk_id.hex()}"
        return self.codec.decode(chunk_id, self._read(CHUNKS, chunk_id, what), what, length,
                                 check_id)

    def settle(self) -> None:
        """Make every chunk and index written so far durable (before a document names them)."""
        self.backend.settle()

    # -- indexes ---------------------------------------------------------------------

    def put_index(self, index: DiskIndex) -> tuple[str, int]:
        """Store an index (once: indexes are named by their content); its id in hex and
        the bytes written."""
        data = index.encode()
        index_id = self.index_codec.ids.of(data)
        if self.has(INDEXES, index_id):
            self.backend.note_reused(self.place(INDEXES, index_id)[0])
            return index_id.hex(), 0
        return index_id.hex(), self._put(INDEXES, index_id,
                                         self.index_codec.encode(index_id, data))

    def get_index(self, index_hex: str) -> DiskIndex:
        if not is_object_name(index_hex):
            raise CorruptStoreError(f"index id {index_hex!r} is not valid")
        index_id = bytes.fromhex(index_hex)
        what = f"index {index_hex}"
        blob = self._read(INDEXES, index_id, what)
        index = DiskIndex.decode(self.index_codec.decode(index_id, blob, what), what)
        if index.chunk_size != self.settings.chunk_size:
            raise CorruptStoreError(f"{what} uses chunks of {index.chunk_size} bytes; the store's "
                                    f"are {self.settings.chunk_size}")
        return index

    # -- listing and removing (garbage collection) --------------------------------------

    def object_ids(self, kind: str) -> Iterator[bytes]:
        """Every stored chunk (or index) id; names that are not ids are skipped."""
        try:
            fans = sorted(self.backend.names((kind,)))
        except FileNotFoundError:
            return
        for fan in fans:
            if len(fan) != 2 or not set(fan) <= _HEX:
                continue
            for name in sorted(self.backend.names((kind, fan))):
                if is_object_name(name) and name.startswith(fan):
                    yield bytes.fromhex(name)

    def partials(self, kind: str) -> Iterator[tuple[tuple[str, str], str]]:
        """Hidden temporary objects a killed run left (only garbage collection, under
        the exclusive lock, may remove them: a running backup's are in flight)."""
        try:
            fans = sorted(self.backend.names((kind,)))
        except FileNotFoundError:
            return
        for fan in fans:
            if len(fan) == 2 and set(fan) <= _HEX:
                for name in self.backend.names((kind, fan)):
                    if name.startswith(".") and ".partial-" in name:
                        yield (kind, fan), name

    def freed(self, kind: str, object_id: bytes) -> int:
        parts, name = self.place(kind, object_id)
        return self.backend.freed(parts, name)

    def remove(self, kind: str, object_id: bytes) -> None:
        parts, name = self.place(kind, object_id)
        self.backend.remove(parts, name)

    # -- sealed documents ------------------------------------------------------------

    def sealer(self) -> Optional[Sealer]:
        keys = self.keys()
        return Sealer(keys) if keys is not None else None


def document_aad(parts: Parts, name: str) -> bytes:
    return SEALED_MAGIC + b" " + "/".join([*parts, name]).encode()


class SealedBackend:
    """A backend whose JSON documents below ``domains/`` (manifests, layer records) and
    ``locks/``/``pins/`` are sealed; everything else passes through.  Used by
    :class:`~fibackup.store.repo.BackupStore` for an encrypted format-3 store, so that
    the code reading and writing documents is the same for every format."""

    SEALED_TOPS = ("domains", "locks", "pins")

    def __init__(self, inner: Backend, chunks: ChunkStore) -> None:
        self.inner = inner
        self.chunks = chunks
        self.root = inner.root
        self.capabilities = inner.capabilities

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def _sealed(self, parts: Parts) -> bool:
        return bool(parts) and parts[0] in self.SEALED_TOPS

    def read(self, parts: Parts, name: str) -> bytes:
        blob = self.inner.read(parts, name)
        if not self._sealed(parts):
            return blob
        sealer = self.chunks.sealer()
        assert sealer is not None
        what = self.inner.path(parts, name)
        if blob[:len(SEALED_MAGIC)] != SEALED_MAGIC:
            raise CorruptStoreError(f"{what} is not sealed, but every document of this "
                                    "encrypted store is; it was not written by fibackup")
        return sealer.open(memoryview(blob)[len(SEALED_MAGIC):], document_aad(parts, name), what)

    def write_new(self, parts: Parts, name: str, data: bytes) -> None:
        if self._sealed(parts):
            sealer = self.chunks.sealer()
            assert sealer is not None
            data = SEALED_MAGIC + sealer.seal(data, document_aad(parts, name))
        self.inner.write_new(parts, name, data)


def sealed_backend(inner: Backend, chunks: ChunkStore) -> Backend:
    """The backend documents go through: sealing for an encrypted store."""
    if not chunks.encrypted:
        return inner
    return SealedBackend(inner, chunks)  # type: ignore[return-value]
