"""What a format-3 store's marker fixes for its whole life: chunk size, compression,
whether it is encrypted (docs/FORMAT.md, "Format 3").  Pure, no I/O."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from fibackup.errors import CorruptStoreError, UsageError
from fibackup.store.v3.codec import DEFAULT_LEVEL, Compression
from fibackup.store.v3.keys import CIPHER, ID_ALGORITHM_KEYED, ID_ALGORITHM_PLAIN, KDF

STORE_VERSION = 3
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
MIN_CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 64 * 1024 * 1024
_SIZE_RE = re.compile(r"^(\d+)([KMG]?)(?:I?B)?$")


@dataclass(frozen=True)
class StoreSettings:
    chunk_size: int = DEFAULT_CHUNK_SIZE
    compression: Compression = Compression(DEFAULT_LEVEL)
    encrypted: bool = False

    def to_marker(self) -> dict[str, Any]:
        return {"chunk_size": self.chunk_size, "compression": self.compression.spec,
                "chunk_ids": ID_ALGORITHM_KEYED if self.encrypted else ID_ALGORITHM_PLAIN,
                "encryption": {"cipher": CIPHER, "kdf": KDF} if self.encrypted else None}

    @classmethod
    def from_marker(cls, document: Mapping[str, Any], origin: str) -> "StoreSettings":
        chunk_size = document.get("chunk_size")
        if type(chunk_size) is not int or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE \
                or chunk_size & (chunk_size - 1):
            raise CorruptStoreError(f"{origin}: chunk_size {chunk_size!r} is not valid")
        spec = document.get("compression")
        try:
            compression = Compression.parse(spec if isinstance(spec, str) else "?")
        except UsageError:
            raise CorruptStoreError(f"{origin}: compression {spec!r} is not valid") from None
        encryption = document.get("encryption")
        if encryption is not None and encryption != {"cipher": CIPHER, "kdf": KDF}:
            raise CorruptStoreError(f"{origin}: encryption {encryption!r} is one this fibackup "
                                    "does not know (upgrade fibackup)")
        encrypted = encryption is not None
        ids = ID_ALGORITHM_KEYED if encrypted else ID_ALGORITHM_PLAIN
        if document.get("chunk_ids") != ids:
            raise CorruptStoreError(f"{origin}: chunk_ids {document.get('chunk_ids')!r} does not "
                                    f"fit the store's encryption (expected {ids})")
        return cls(chunk_size=chunk_size, compression=compression, encrypted=encrypted)


def parse_size(text: str) -> int:
    """A chunk size as users write it: 4M, 1MiB, 65536."""
    match = _SIZE_RE.match(text.strip().upper())
    if not match:
        raise UsageError(f"size {text!r} is not valid: write it as 1M, 4M, 512K")
    value = int(match.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[match.group(2)]
    if not MIN_CHUNK_SIZE <= value <= MAX_CHUNK_SIZE or value & (value - 1):
        raise UsageError(f"chunk size {text} is not valid: a power of two from 64K to 64M "
                         "(default 4M)")
    return value
