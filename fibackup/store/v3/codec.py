"""A format-3 chunk as it is stored: compressed (zstd) when that pays, sealed
(AES-256-GCM, its id as associated data) in an encrypted store, and checked
against its id whenever it is read back.

Object bytes (docs/FORMAT.md, "Chunk objects")::

    "FBC3" | flags (1 byte) | body
    flags bit 0: the payload is one zstd frame; bit 1: the body is sealed
    body = payload, or nonce (12) | AES-256-GCM(payload) | tag (16)
           with associated data "FBC3" | flags | id (32 bytes)

Reading one back decrypts (which fails on any change), decompresses (never past
the store's chunk size) and recomputes the id from the plaintext: a chunk that
is damaged, truncated, swapped for another or replayed under another name is
refused, never returned.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Optional

import zstandard

from fibackup.errors import CorruptStoreError, IntegrityError, UsageError
from fibackup.store.v3.keys import ChunkIds, Sealer, StoreKeys

MAGIC = b"FBC3"
FLAG_ZSTD = 1
FLAG_SEALED = 2
_KNOWN_FLAGS = FLAG_ZSTD | FLAG_SEALED
DEFAULT_LEVEL = 2
"""The default zstd level: on 2 cores level 2 keeps a full backup at about half of
restic's time and the store within 5 % of its size (docs/PERFORMANCE.md, "Store")."""
_PROBE = 64 * 1024
_GIVE_UP = 0.97
"""A sample that zstd shrinks by less than 3 % means incompressible data (media,
encrypted or already compressed files): the chunk is stored raw at once."""
_SPEC_RE = re.compile(r"^(none|zstd(?::(-?\d{1,2}))?)$")


@dataclass(frozen=True)
class Compression:
    """``none`` or ``zstd:LEVEL`` (the store's setting, in its marker)."""

    level: Optional[int]
    """The zstd level; None for no compression."""

    @classmethod
    def parse(cls, spec: str) -> "Compression":
        match = _SPEC_RE.match(spec.strip().lower())
        if not match:
            raise UsageError(f"compression {spec!r} is not valid: use zstd, zstd:LEVEL "
                             "(1-19, default 2) or none")
        if match.group(1) == "none":
            return cls(None)
        level = int(match.group(2)) if match.group(2) else DEFAULT_LEVEL
        if not 1 <= level <= 19:
            raise UsageError(f"zstd level {level} is out of range: choose 1 to 19")
        return cls(level)

    @property
    def spec(self) -> str:
        return "none" if self.level is None else f"zstd:{self.level}"


class ChunkCodec:
    """Encodes and decodes the chunks of one store (one per store and run; safe to
    use from several threads: each thread gets its own zstd contexts)."""

    def __init__(self, keys: Optional[StoreKeys], compression: Compression,
                 chunk_size: int) -> None:
        self.ids = ChunkIds(keys)
        self._sealer = Sealer(keys) if keys is not None else None
        self.compression = compression
        self.chunk_size = chunk_size
        self._local = threading.local()

    @property
    def sealed(self) -> bool:
        return self._sealer is not None

    def _compressor(self) -> zstandard.ZstdCompressor:
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = zstandard.ZstdCompressor(level=self.compression.level or DEFAULT_LEVEL,
                                                  write_content_size=True)
            self._local.compressor = compressor
        return compressor

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        decompressor = getattr(self._local, "decompressor", None)
        if decompressor is None:
            decompressor = zstandard.ZstdDecompressor()
            self._local.decompressor = decompressor
        return decompressor

    def _compressed(self, data: bytes) -> Optional[bytes]:
        """The zstd frame of ``data``, or None when it does not shrink."""
        if self.compression.level is None:
            return None
        compressor = self._compressor()
        if len(data) > 4 * _PROBE:
            middle = len(data) // 2
            sample = data[middle:middle + _PROBE]
            if len(compressor.compress(sample)) > _GIVE_UP * len(sample):
                return None
        frame = compressor.compress(data)
        return frame if len(frame) < len(data) else None

    def encode(self, chunk_id: bytes, data: bytes) -> bytes:
        """The object bytes of a chunk whose id is ``chunk_id``."""
        frame = self._compressed(data)
        flags = (FLAG_ZSTD if frame is not None else 0) | (FLAG_SEALED if self.sealed else 0)
        payload = frame if frame is not None else data
        header = MAGIC + bytes([flags])
        if self._sealer is not None:
            return header + self._sealer.seal(payload, header + chunk_id)
        return header + payload

    def decode(self, chunk_id: bytes, blob: bytes, what: str,
               length: Optional[int] = None, check_id: bool = True) -> bytes:
        """The plaintext of a stored chunk, checked against ``chunk_id`` (and its
        expected ``length``); IntegrityError/CorruptStoreError otherwise.  Without
        ``check_id`` the plaintext is not hashed: only for a caller that checks what it
        wrote against the id afterwards, before anything names it (restore's proof)."""
        if len(blob) < len(MAGIC) + 1 or blob[:len(MAGIC)] != MAGIC:
            raise IntegrityError(f"{what} is not a fibackup chunk (damaged or truncated)")
        flags = blob[len(MAGIC)]
        if flags & ~_KNOWN_FLAGS or bool(flags & FLAG_SEALED) != self.sealed:
            raise IntegrityError(f"{what} has flags {flags:#x}, which this store does not write")
        header = blob[:len(MAGIC) + 1]
        body = memoryview(blob)[len(MAGIC) + 1:]
        if self._sealer is not None:
            try:
                payload: bytes | memoryview = self._sealer.open(body, header + chunk_id, what)
            except CorruptStoreError as error:
                raise IntegrityError(str(error)) from None
        else:
            payload = body
        if flags & FLAG_ZSTD:
            try:
                claimed = zstandard.frame_content_size(payload)
                if claimed < 0 or claimed > self.chunk_size:
                    raise IntegrityError(f"{what} claims {claimed} bytes, more than a chunk")
                data = self._decompressor().decompress(payload, max_output_size=self.chunk_size)
            except zstandard.ZstdError as error:
                raise IntegrityError(f"{what} does not decompress ({error})") from None
        else:
            data = bytes(payload)
        if length is not None and len(data) != length:
            raise IntegrityError(f"{what} holds {len(data)} bytes where {length} were stored")
        if check_id and self.ids.of(data) != chunk_id:
            raise IntegrityError(f"{what} does not hold the data its id names (damaged, or "
                                 "swapped for another chunk)")
        return data
