"""The S3 backend: a store's objects under ``s3://BUCKET/PREFIX`` (see __init__.py)."""
from __future__ import annotations

import errno
import os
import secrets
from collections import deque
from typing import Callable, Optional

from fibackup.errors import CorruptStoreError, StoreUnavailableError
from fibackup.store.backend import OBJECT_STORAGE, CheckFn, Parts
from fibackup.store.chunks import CHUNK_SIZE, ChunkList, ProgressFn, ScanResult, Throttle
from fibackup.store.layout import MARKER
from fibackup.store.location import SCHEME, split_url
from fibackup.store.pagecache import drop
from fibackup.store.s3.client import Settings, make_client, settings_from_config
from fibackup.store.s3.download import Download
from fibackup.store.s3.errors import error_code
from fibackup.store.s3.objects import Bucket
from fibackup.store.s3.upload import PART_SIZE, Upload, hash_part, md5, pread_all

SMALL_FILE_LIMIT = 256 * 1024 * 1024
"""Content-addressed files (NVRAM, TPM state, kernel...) are read into memory to be named."""


class S3Backend(Bucket):
    """The objects of one store, the operations of backend.Backend."""

    capabilities = OBJECT_STORAGE

    @classmethod
    def from_url(cls, url: str, settings: Optional[Settings] = None) -> "S3Backend":
        bucket, prefix = split_url(url)
        backend = cls(make_client(settings or settings_from_config()), bucket, prefix)
        with backend.errors("opening the bucket"):
            backend.client.head_bucket(Bucket=bucket)
        return backend

    # -- small objects -------------------------------------------------------------

    def read(self, parts: Parts, name: str) -> bytes:
        path = self.path(parts, name)
        with self.errors(f"reading {path}", missing=path):
            data: bytes = self.client.get_object(Bucket=self.bucket,
                                                 Key=self.key(parts, name))["Body"].read()
            return data

    def write_new(self, parts: Parts, name: str, data: bytes | bytearray) -> None:
        path = self.path(parts, name)
        with self.errors(f"writing {path}"):
            if self.exists(parts, name):
                raise FileExistsError(errno.EEXIST, "object exists", path)
        if not self.write_once(parts, name, bytes(data)) \
                and not self._holds(parts, name, data):   # not our own put, its answer lost
            raise FileExistsError(errno.EEXIST, "object exists", path)

    def write_once(self, parts: Parts, name: str, data: bytes) -> bool:
        """A conditional put (``If-None-Match: *``): False when the object exists."""
        with self.errors(f"writing {self.path(parts, name)}"):
            try:
                self.client.put_object(Bucket=self.bucket, Key=self.key(parts, name),
                                       Body=data, IfNoneMatch="*", ContentMD5=md5(data))
            except Exception as error:
                if error_code(error) not in ("PreconditionFailed", "412"):
                    raise
                return False
        return True

    def settle(self) -> None:
        """A completed put is durable."""

    def note_reused(self, parts: Parts) -> None:
        """A completed put is durable."""

    def _holds(self, parts: Parts, name: str, data: bytes | bytearray) -> bool:
        try:
            return self.read(parts, name) == data
        except (OSError, StoreUnavailableError, CorruptStoreError):
            return False

    def names(self, parts: Parts) -> list[str]:
        objects, prefixes = self.listing(parts)
        return objects + prefixes

    def listing(self, parts: Parts) -> tuple[list[str], list[str]]:
        """The object names and the "directory" names directly below ``parts``."""
        prefix = self.key(parts)
        objects: list[str] = []
        prefixes: list[str] = []
        with self.errors(f"listing {self.path(parts)}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                objects += [item["Key"][len(prefix):] for item in page.get("Contents", ())]
                prefixes += [item["Prefix"][len(prefix):-1]
                             for item in page.get("CommonPrefixes", ())]
        return [name for name in objects if name], [name for name in prefixes if name]

    def freed(self, parts: Parts, name: str) -> int:
        try:
            return self.size(parts, name)
        except FileNotFoundError:
            return 0

    def remove(self, parts: Parts, name: str) -> None:
        with self.errors(f"deleting {self.path(parts, name)}"):
            self.client.delete_object(Bucket=self.bucket, Key=self.key(parts, name))

    def head(self, parts: Parts, name: str, length: int) -> bytes:
        return self._range(parts, name, 0, length)

    def _range(self, parts: Parts, name: str, start: int, length: int) -> bytes:
        path = self.path(parts, name)
        with self.errors(f"reading {path}", missing=path):
            data: bytes = self.client.get_object(
                Bucket=self.bucket, Key=self.key(parts, name),
                Range=f"bytes={start}-{start + length - 1}")["Body"].read()
            return data

    def ensure_dir(self, parts: Parts) -> None:
        """Object storage has no directories."""

    def check_writable(self) -> None:
        name = f".write-probe-{secrets.token_hex(4)}"
        with self.errors(f"writing into {self.root}"):
            self.client.put_object(Bucket=self.bucket, Key=self.key((), name), Body=b"")
        try:
            self.remove((), name)
        except StoreUnavailableError:
            pass                                # a bucket may forbid deletes: harmless

    def is_empty(self) -> bool:
        """Whether nothing is stored under the prefix yet."""
        with self.errors(f"listing {self.root}"):
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        return not page.get("Contents")

    # -- uploads ---------------------------------------------------------------------

    def copy_in(self, parts: Parts, name: str, source: str, *,
                progress: Optional[ProgressFn] = None, throttle: Optional[Throttle] = None,
                clone: bool = False, check_source: CheckFn = None) -> ChunkList:
        path = self.path(parts, name)
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            with self.errors(f"uploading {source} to {path}"):
                if self.exists(parts, name):
                    raise FileExistsError(errno.EEXIST, "object exists", path)
                if size <= PART_SIZE:
                    data = pread_all(fd, 0, size)
                    chunks = hash_part(data, 0, progress, throttle)
                    if check_source is not None:
                        check_source()
                    self.write_new(parts, name, data)
                else:
                    chunks = Upload(self, parts, name, fd, size).run(progress, throttle,
                                                                      check_source)
        finally:
            os.close(fd)
        return ChunkList(size, CHUNK_SIZE, tuple(chunks))

    def copy_in_addressed(self, parts: Parts, name_of: Callable[[ChunkList], str], source: str,
                          check_source: CheckFn = None) -> tuple[ChunkList, bool]:
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size > SMALL_FILE_LIMIT:
                raise StoreUnavailableError(
                    f"{source} is larger than {SMALL_FILE_LIMIT >> 20} MiB; such a boot or "
                    "state file cannot be stored in object storage")
            data = pread_all(fd, 0, size)
        finally:
            os.close(fd)
        chunks = ChunkList(size, CHUNK_SIZE, tuple(hash_part(data, 0, None, None)))
        if check_source is not None:
            check_source()
        try:
            self.write_new(parts, name_of(chunks), data)
        except FileExistsError:
            return chunks, False
        return chunks, True

    # -- checks and downloads -----------------------------------------------------

    def scan(self, parts: Parts, name: str, expected: ChunkList,
             destination: Optional[str] = None, progress: Optional[ProgressFn] = None,
             throttle: Optional[Throttle] = None, clone: bool = False) -> ScanResult:
        size = self.size(parts, name)
        result = ScanResult(chunks=ChunkList(size, expected.chunk_size, ()))
        if expected.size != size:
            result.size_mismatch = True
            if destination is not None:
                return result
        dst = -1
        if destination is not None:
            dst = os.open(destination, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            if dst >= 0:
                os.ftruncate(dst, size)
            listed, checker = Download(self, parts, name, size, expected, dst).run(
                progress, throttle)
            result.chunks = ChunkList(size, expected.chunk_size, tuple(listed))
            result.mismatches = checker.finish()
            if dst >= 0 and result.ok:
                os.fsync(dst)
                drop(dst, 0, 0)                 # restored data is not read again soon
        finally:
            if dst >= 0:
                os.close(dst)
        return result

    def abort_uploads(self, parts: Parts) -> list[str]:
        """Abort the unfinished multipart uploads below ``parts`` (an interrupted run's:
        only called under the domain's lock); their paths."""
        aborted = []
        with self.errors(f"listing unfinished uploads in {self.path(parts)}"):
            for page in self.client.get_paginator("list_multipart_uploads").paginate(
                    Bucket=self.bucket, Prefix=self.key(parts)):
                for upload in page.get("Uploads", ()):
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                       UploadId=upload["UploadId"])
                    aborted.append(f"{SCHEME}{self.bucket}/{upload['Key']} (unfinished upload)")
        return aborted

    # -- several stores in one bucket ----------------------------------------------

    def child_stores(self, depth: int = 3) -> list[str]:
        """The locations of the stores under this prefix (each prefix holding a store
        marker, at most ``depth`` levels down; a store's own keys are not searched)."""
        found: list[str] = []
        pending: deque[tuple[tuple[str, ...], int]] = deque([((), 0)])
        while pending:
            parts, level = pending.popleft()
            objects, prefixes = self.listing(parts)
            if MARKER in objects:
                found.append(self.path(parts))
                continue
            if level < depth:
                pending.extend(((*parts, child), level + 1) for child in sorted(prefixes))
        return found
