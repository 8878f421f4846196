"""``fibackup key list|add|remove``: the wrapped copies of an encrypted store's master
key.  Each copy opens with its own passphrase; every copy opens the same store.  Adding
or removing one needs a passphrase that opens the store; the last copy is never
removed (without any, nobody can read the store)."""
from __future__ import annotations

from dataclasses import dataclass

from fibackup.errors import StoreKeyError, UsageError
from fibackup.store.repo import BackupStore
from fibackup.store.v3 import passwords
from fibackup.store.v3.keys import unwrap
from fibackup.store.v3.objects import KEYS, ChunkStore


@dataclass(frozen=True)
class KeyInfo:
    id: str
    host: str
    created: str
    current: bool
    """The passphrase of this run opens it (only known when one was asked for)."""

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "host": self.host, "created": self.created,
                "current": self.current}


def _encrypted(backup_dir: str) -> tuple[BackupStore, ChunkStore]:
    store = BackupStore.open(backup_dir)
    if store.chunks is None or not store.chunks.encrypted:
        raise UsageError(f"{store.root} is not an encrypted store: it has no keys "
                         "(make one with 'fibackup init --encrypt')", path=store.root)
    return store, store.chunks


def list_keys(backup_dir: str) -> list[KeyInfo]:
    store, chunks = _encrypted(backup_dir)
    phrase = passwords.passphrase(store.root)
    found = []
    for name, document in chunks.key_documents():
        opens = unwrap(document, phrase, store.store_id, name) is not None
        found.append(KeyInfo(str(document.get("id")), str(document.get("host")),
                             str(document.get("created")), opens))
    if not any(key.current for key in found):
        raise StoreKeyError(f"the passphrase given opens none of the keys of {store.root}")
    return found


def add_key(backup_dir: str, new_password_file: str | None) -> str:
    """Wrap the master key with a new passphrase; the new key's id."""
    store, chunks = _encrypted(backup_dir)
    master = chunks.master_key()                         # the current passphrase opens it
    new = passwords.read_file(new_password_file) if new_password_file else \
        passwords.prompt_new(store.root)
    return chunks.add_key(new, master)


def remove_key(backup_dir: str, key_id: str) -> None:
    store, chunks = _encrypted(backup_dir)
    chunks.keys()
    documents = chunks.key_documents()
    names = [name for name, document in documents if document.get("id") == key_id]
    if not names:
        raise UsageError(f"{store.root} has no key {key_id} ('fibackup key list' shows them)")
    if len(documents) == 1:
        raise UsageError(f"key {key_id} is the only key of {store.root}; without it nobody "
                         "could read the store. Add another first ('fibackup key add')")
    store.backend.remove((KEYS,), names[0])
