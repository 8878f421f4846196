"""``fibackup init``: make an empty directory or S3 prefix a backup store.

A new store is format 3 (docs/FORMAT.md): chunks of the guests' disks, compressed,
deduplicated across every point, disk and domain in it, and with ``encrypt``
sealed with a random master key that the passphrase wraps.  ``snapshot -b`` into an
empty location does the same with the configuration file's ``[store]`` settings.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from fibackup.errors import StoreUnavailableError, UsageError
from fibackup.store.opening import FORMAT_1, NewStore
from fibackup.store.repo import BackupStore
from fibackup.store.v3.codec import Compression
from fibackup.store.v3.settings import StoreSettings, parse_size


@dataclass
class InitOptions:
    location: str
    format: int = 3
    encrypt: bool = False
    compression: str = "zstd:2"
    chunk_size: str = "4M"


def new_store(options: InitOptions, passphrase: Optional[bytes] = None) -> NewStore:
    """What a new store at ``options.location`` is made of (an encrypted one's passphrase
    is asked for when the store is made, unless given)."""
    if options.format == 1:
        if options.encrypt:
            raise UsageError("a format-1 store cannot be encrypted; use --format 3 (the default)")
        return FORMAT_1
    if options.format != 3:
        raise UsageError(f"store format {options.format} does not exist: choose 3 (or 1)")
    settings = StoreSettings(chunk_size=parse_size(options.chunk_size),
                             compression=Compression.parse(options.compression),
                             encrypted=options.encrypt)
    return NewStore(settings, passphrase)


def init(options: InitOptions) -> BackupStore:
    """Initialise the empty location; UsageError when it is a store already."""
    try:
        existing: Optional[BackupStore] = BackupStore.open(options.location)
    except StoreUnavailableError:
        existing = None
    if existing is not None:
        raise UsageError(f"{existing.root} is a fibackup store already (format "
                         f"{existing.version}); nothing was changed", path=existing.root)
    store = BackupStore.open(options.location, create=True, new=new_store(options))
    store.check_writable()
    return store
