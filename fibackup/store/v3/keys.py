"""The keys of an encrypted format-3 store, and how chunk ids are made.

An encrypted store has one random 256-bit **master key**.  It is never stored as
it is: each ``keys/<key-id>.json`` holds a copy wrapped (AES-256-GCM) by a key
derived from a passphrase with scrypt, the parameters beside it.  From the master
key HKDF-SHA256 derives two keys: the **id key** (HMAC-SHA256 chunk ids, so that
listing the store reveals nothing about its content) and the **data key**
(AES-256-GCM of chunks and documents).  A plain store names chunks by SHA-256.

Everything here is the ``cryptography`` package and ``hashlib`` (OpenSSL
underneath); nothing is home-made.  docs/FORMAT.md, "Format 3", fixes the bytes.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from fibackup.errors import CorruptStoreError, StoreKeyError

KEY_KIND = "fibackup-key"
KEY_VERSION = 3
CIPHER = "aes-256-gcm"
KDF = "scrypt"
ID_ALGORITHM_PLAIN = "sha256"
ID_ALGORITHM_KEYED = "hmac-sha256"
NONCE_BYTES = 12
MASTER_KEY_BYTES = 32
SCRYPT_N = 2 ** 15
"""scrypt cost: 32 MiB of memory and ~0.1 s per unlock here; stored per key, so a
later fibackup may raise it for new keys without breaking old ones."""
SCRYPT_R = 8
SCRYPT_P = 1
_SCRYPT_MAX_N = 2 ** 22
_SCRYPT_MAX_MEMORY = 128 * SCRYPT_R * _SCRYPT_MAX_N
"""A key document asking for more is refused (a hostile store must not make an
unlock eat the host's memory): scrypt takes 128 * n * r bytes, so r counts too."""


@dataclass(frozen=True)
class StoreKeys:
    """The keys derived from an encrypted store's master key."""

    id_key: bytes
    data_key: bytes

    @classmethod
    def derive(cls, master: bytes, store_id: str) -> "StoreKeys":
        return cls(id_key=_hkdf(master, store_id, b"fibackup-3 chunk ids"),
                   data_key=_hkdf(master, store_id, b"fibackup-3 data"))


def _hkdf(master: bytes, store_id: str, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=store_id.encode(),
                info=info).derive(master)


class ChunkIds:
    """Names chunks: SHA-256 of the plaintext, or HMAC-SHA256 with the id key."""

    def __init__(self, keys: Optional[StoreKeys]) -> None:
        self.keyed = keys is not None
        self._key = keys.id_key if keys is not None else b""

    @property
    def algorithm(self) -> str:
        return ID_ALGORITHM_KEYED if self.keyed else ID_ALGORITHM_PLAIN

    def of(self, data: bytes | memoryview) -> bytes:
        """The 32-byte id of a chunk's plaintext."""
        if self.keyed:
            return hmac.new(self._key, data, hashlib.sha256).digest()
        return hashlib.sha256(data).digest()


class Sealer:
    """AES-256-GCM with the data key: ``nonce || ciphertext || tag``, a random 96-bit
    nonce each time, ``aad`` authenticated (what the sealed bytes are)."""

    def __init__(self, keys: StoreKeys) -> None:
        self._aead = AESGCM(keys.data_key)

    def seal(self, data: bytes | memoryview, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, bytes(data), aad)

    def open(self, blob: bytes | memoryview, aad: bytes, what: str) -> bytes:
        """The plaintext; CorruptStoreError when the bytes or their ``aad`` were changed."""
        if len(blob) < NONCE_BYTES + 16:
            raise CorruptStoreError(f"{what} is too short to be sealed data")
        view = memoryview(blob)
        try:
            return self._aead.decrypt(bytes(view[:NONCE_BYTES]), bytes(view[NONCE_BYTES:]), aad)
        except InvalidTag:
            raise CorruptStoreError(
                f"{what} fails its authentication check: it was damaged, or replaced by "
                "other data (a chunk or document swapped for another)") from None


# -- wrapped master keys -------------------------------------------------------------

def new_master_key() -> bytes:
    return secrets.token_bytes(MASTER_KEY_BYTES)


def _kek(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)


def _wrap_aad(store_id: str, key_id: str) -> bytes:
    return f"fibackup-3 key {store_id} {key_id}".encode()


def wrap(master: bytes, passphrase: bytes, store_id: str, key_id: str,
         host: str, created: str) -> dict[str, Any]:
    """A key document holding ``master`` wrapped by ``passphrase``."""
    salt = secrets.token_bytes(16)
    kek = _kek(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    nonce = os.urandom(NONCE_BYTES)
    wrapped = AESGCM(kek).encrypt(nonce, master, _wrap_aad(store_id, key_id))
    return {"kind": KEY_KIND, "version": KEY_VERSION, "id": key_id, "host": host,
            "created": created, "cipher": CIPHER,
            "kdf": {"name": KDF, "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P,
                    "salt": _b64(salt)},
            "nonce": _b64(nonce), "wrapped": _b64(wrapped)}


def unwrap(document: Mapping[str, Any], passphrase: bytes, store_id: str,
           origin: str) -> Optional[bytes]:
    """The master key, or None when ``passphrase`` is not this key's."""
    if document.get("kind") != KEY_KIND or document.get("version") != KEY_VERSION \
            or document.get("cipher") != CIPHER:
        raise CorruptStoreError(f"{origin} is not a fibackup key document this version reads")
    kdf = document.get("kdf")
    if not isinstance(kdf, dict) or kdf.get("name") != KDF:
        raise CorruptStoreError(f"{origin}: unknown key derivation {kdf!r}")
    n, r, p = (kdf.get(name) for name in ("n", "r", "p"))
    if not all(type(value) is int for value in (n, r, p)) or not (
            2 <= n <= _SCRYPT_MAX_N and n & (n - 1) == 0 and 1 <= r <= 32   # type: ignore[operator]
            and 1 <= p <= 16 and 128 * n * r <= _SCRYPT_MAX_MEMORY):          # type: ignore[operator]
        raise CorruptStoreError(f"{origin}: scrypt parameters out of range")
    key_id = document.get("id")
    if not isinstance(key_id, str):
        raise CorruptStoreError(f"{origin}: no key id")
    salt = _unb64(kdf.get("salt"), origin)
    nonce = _unb64(document.get("nonce"), origin)
    wrapped = _unb64(document.get("wrapped"), origin)
    kek = _kek(passphrase, salt, n, r, p)                             # type: ignore[arg-type]
    try:
        master = AESGCM(kek).decrypt(nonce, wrapped, _wrap_aad(store_id, key_id))
    except (InvalidTag, ValueError):
        return None
    if len(master) != MASTER_KEY_BYTES:
        raise CorruptStoreError(f"{origin}: the wrapped key has the wrong length")
    return master


def no_key_error(root: str, reason: str) -> StoreKeyError:
    return StoreKeyError(
        f"{root} is an encrypted fibackup store and {reason}. Give the passphrase with "
        "--password-file FILE, FIBACKUP_PASSWORD_FILE, or password_file/password_command in "
        "the configuration file [store] section (or type it at the prompt on a terminal)",
        path=root)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: Any, origin: str) -> bytes:
    if not isinstance(value, str):
        raise CorruptStoreError(f"{origin}: a base64 field is missing")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise CorruptStoreError(f"{origin}: a field is not valid base64") from None
