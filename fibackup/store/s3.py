"""A backup store on S3-compatible object storage (AWS S3, Ceph RGW, MinIO): ``s3://BUCKET/PREFIX``.

The objects have exactly the keys and bytes of the directory store's files
(docs/FORMAT.md), under ``PREFIX/``.  Write-once:

- documents (records, manifests, the marker) are put with ``If-None-Match: *``,
  which fails when the key exists;
- layer images are multipart uploads: parts are read, hashed (4 MiB chunks, the
  chunk list of the record) and uploaded a few in parallel, with bounded memory
  (``PARALLEL + 1`` parts); the object appears under its key only when the upload
  completes, after the source was checked and after a HEAD found the key free (two
  writers of one domain never run at once: they hold the domain's lock on their
  host; two hosts backing up the same domain into one prefix are not supported,
  exactly as with a shared directory).  An interrupted upload leaves no object;
  ``repair`` aborts what it left behind.  The object holds every byte of the
  image, zero chunks included, so the object is a byte copy of the layer.
- reads stream: a check (``verify``) reads every byte in ranges, a few in
  parallel, and compares each chunk with the record; a restore fetches only the
  ranges holding listed chunks (the rest is zeros by the record), checks each
  chunk before writing it and leaves the rest a hole.

Endpoint and credentials: the configuration file's ``[s3]`` keys when set, else
boto3's own chain (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``~/.aws/``...).  Transient errors
are retried with backoff (botocore's standard mode, and here for a body that is
cut while being read).
"""
from __future__ import annotations

import base64
import errno
import hashlib
import os
import secrets
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import xxhash

from fibackup import faults
from fibackup.errors import CorruptStoreError, StoreUnavailableError
from fibackup.store.backend import CheckFn, Parts
from fibackup.store.chunks import (CHUNK_SIZE, Chunk, ChunkList, ProgressFn, ScanResult,
                                   Throttle, _all_zero, _Checker)
from fibackup.store.pagecache import SourceCache, drop

SCHEME = "s3://"
PART_SIZE = 8 * 1024 * 1024
"""Multipart part size (a multiple of the chunk size); larger for files over 70 GiB."""
MAX_PARTS = 9000
PARALLEL = 6
"""Parts uploaded at once per copy."""
READERS = 6
"""Ranges downloaded at once per copy."""
SEGMENT = 4 * CHUNK_SIZE
"""Bytes per ranged GET."""
READ_ATTEMPTS = 4
SMALL_FILE_LIMIT = 256 * 1024 * 1024
"""Content-addressed files (NVRAM, TPM state, kernel...) are read into memory to be named."""
INSTALL_HINT = "pip install 'fibackup[s3]' (in a source tree: .venv/bin/pip install '.[s3]')"


def is_url(location: str) -> bool:
    return location.startswith(SCHEME)


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ("bucket", "a/b/"); the prefix is "" or ends with "/"."""
    rest = url[len(SCHEME):]
    bucket, _slash, prefix = rest.partition("/")
    prefix = "/".join(part for part in prefix.split("/") if part)
    if not bucket or any(part in (".", "..") for part in prefix.split("/")):
        from fibackup.errors import UsageError
        raise UsageError(f"{url} is not a valid S3 location; use s3://BUCKET or "
                         "s3://BUCKET/PREFIX")
    return bucket, prefix + "/" if prefix else ""


@dataclass(frozen=True)
class Settings:
    endpoint_url: Optional[str] = None
    profile: Optional[str] = None
    region: Optional[str] = None


def settings_from_config() -> Settings:
    from fibackup.config import load_config
    config = load_config()
    return Settings(endpoint_url=config.value("s3.endpoint_url"),
                    profile=config.value("s3.profile"), region=config.value("s3.region"))


def make_client(settings: Settings) -> Any:
    """A boto3 S3 client: short connect timeout, retries with backoff, and checksums
    only where the API requires them (Ceph 16's RGW rejects boto3's CRC32 defaults)."""
    try:
        import boto3
        import botocore.config
        import botocore.exceptions
    except ImportError:
        raise StoreUnavailableError(f"s3:// backup locations need boto3, which is not "
                                    f"installed: {INSTALL_HINT}") from None
    options: dict[str, Any] = dict(connect_timeout=5, read_timeout=60,
                                   retries={"max_attempts": 5, "mode": "standard"},
                                   max_pool_connections=4 * (PARALLEL + READERS))
    try:
        config = botocore.config.Config(request_checksum_calculation="when_required",
                                        response_checksum_validation="when_required",
                                        **options)
    except TypeError:                       # botocore before 1.36 has neither setting
        config = botocore.config.Config(**options)
    try:
        session = boto3.session.Session(profile_name=settings.profile)
        return session.client("s3", endpoint_url=settings.endpoint_url,
                              region_name=settings.region, config=config)
    except botocore.exceptions.ProfileNotFound:
        raise StoreUnavailableError(f"the AWS profile '{settings.profile}' does not exist; "
                                    "fix [s3] profile or AWS_PROFILE") from None
    except (botocore.exceptions.BotoCoreError, ValueError) as error:
        raise StoreUnavailableError(f"cannot set up the S3 client ({error}); check "
                                    "AWS_ENDPOINT_URL or [s3] endpoint_url") from None


class S3Backend:
    """The objects of one store: keys ``PREFIX`` + ``/``-joined parts + name."""

    local = False

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.root = f"{SCHEME}{bucket}/{prefix}".rstrip("/") if prefix else f"{SCHEME}{bucket}"

    @classmethod
    def from_url(cls, url: str, settings: Optional[Settings] = None) -> "S3Backend":
        bucket, prefix = split_url(url)
        backend = cls(make_client(settings or settings_from_config()), bucket, prefix)
        with backend.errors("opening the bucket"):
            backend.client.head_bucket(Bucket=bucket)
        return backend

    # -- names and errors ---------------------------------------------------------

    def key(self, parts: Parts, name: str = "") -> str:
        return self.prefix + "".join(f"{part}/" for part in parts) + name

    def path(self, parts: Parts, name: str = "") -> str:
        return f"{SCHEME}{self.bucket}/{self.key(parts, name)}".rstrip("/")

    def errors(self, what: str, missing: Optional[str] = None) -> "_Errors":
        """A context that turns boto errors into fibackup's (``missing``: the path a
        404 is about, raised as FileNotFoundError)."""
        return _Errors(self, what, missing)

    def endpoint(self) -> str:
        return str(getattr(self.client.meta, "endpoint_url", "") or "the S3 endpoint")

    # -- small objects -------------------------------------------------------------

    def read(self, parts: Parts, name: str) -> bytes:
        path = self.path(parts, name)
        with self.errors(f"reading {path}", missing=path):
            return self.client.get_object(Bucket=self.bucket, Key=self.key(parts, name))[
                "Body"].read()

    def write_new(self, parts: Parts, name: str, data: bytes) -> None:
        path = self.path(parts, name)
        with self.errors(f"writing {path}"):
            if self._exists(parts, name):
                raise FileExistsError(errno.EEXIST, "object exists", path)
            try:
                self.client.put_object(Bucket=self.bucket, Key=self.key(parts, name),
                                       Body=data, IfNoneMatch="*", ContentMD5=_md5(data))
            except Exception as error:
                if _code(error) not in ("PreconditionFailed", "412"):
                    raise
                if self._holds(parts, name, data):   # our own put, whose answer was lost
                    return
                raise FileExistsError(errno.EEXIST, "object exists", path) from None

    def _holds(self, parts: Parts, name: str, data: bytes) -> bool:
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

    def _exists(self, parts: Parts, name: str) -> bool:
        try:
            self.size(parts, name)
        except FileNotFoundError:
            return False
        return True

    def size(self, parts: Parts, name: str) -> int:
        path = self.path(parts, name)
        with self.errors(f"looking up {path}", missing=path):
            return int(self.client.head_object(Bucket=self.bucket,
                                               Key=self.key(parts, name))["ContentLength"])

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
            return self.client.get_object(Bucket=self.bucket, Key=self.key(parts, name),
                                          Range=f"bytes={start}-{start + length - 1}")[
                "Body"].read()

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

    @staticmethod
    def initialise_allowed(backend: Any) -> bool:
        return bool(backend.is_empty())

    # -- uploads ---------------------------------------------------------------------

    def copy_in(self, parts: Parts, name: str, source: str, *,
                progress: Optional[ProgressFn] = None, throttle: Optional[Throttle] = None,
                clone: bool = False, check_source: CheckFn = None) -> ChunkList:
        path = self.path(parts, name)
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            with self.errors(f"uploading {source} to {path}"):
                if self._exists(parts, name):
                    raise FileExistsError(errno.EEXIST, "object exists", path)
                if size <= PART_SIZE:
                    data = _pread_all(fd, 0, size)
                    chunks = _hash_part(data, 0, progress, throttle)
                    if check_source is not None:
                        check_source()
                    self.write_new(parts, name, data)
                else:
                    chunks = _Upload(self, parts, name, fd, size).run(progress, throttle,
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
            data = _pread_all(fd, 0, size)
        finally:
            os.close(fd)
        chunks = ChunkList(size, CHUNK_SIZE, tuple(_hash_part(data, 0, None, None)))
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
            listed, checker = _Download(self, parts, name, size, expected, dst).run(
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

    def read_range_stream(self, parts: Parts, name: str, start: int, end: int) -> Any:
        """The body of a ranged GET of ``[start, end)``."""
        path = self.path(parts, name)
        with self.errors(f"reading {path}", missing=path):
            return self.client.get_object(Bucket=self.bucket, Key=self.key(parts, name),
                                          Range=f"bytes={start}-{end - 1}")["Body"]

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
        from fibackup.store.repo import MARKER
        found: list[str] = []
        pending = deque([((), 0)])
        while pending:
            parts, level = pending.popleft()
            objects, prefixes = self.listing(parts)
            if MARKER in objects:
                found.append(self.path(parts))
                continue
            if level < depth:
                pending.extend(((*parts, child), level + 1) for child in sorted(prefixes))
        return found


class _Errors:
    """Turns botocore's exceptions into one-line fibackup errors (a 404 on ``missing``
    into FileNotFoundError)."""

    def __init__(self, backend: S3Backend, what: str, missing: Optional[str]) -> None:
        self.backend = backend
        self.what = what
        self.missing = missing

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: Optional[BaseException], _trace: Any) -> bool:
        from_client = type(error).__module__.startswith(("botocore", "boto3", "urllib3"))
        if error is None or not from_client or isinstance(error, (StoreUnavailableError,
                                                                  CorruptStoreError)):
            return False            # botocore's timeouts are OSErrors too: translated below
        raise translate(error, self.backend.bucket, self.backend.endpoint(), self.what,
                        self.missing) from None


ACCESS_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403",
                "InvalidToken", "ExpiredToken", "AllAccessDisabled"}


def _md5(data: Any) -> str:
    """Content-MD5 of a body: the server refuses a part or document that arrived
    different from what was hashed here (BadDigest), so no damaged object is published."""
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def _code(error: BaseException) -> str:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def translate(error: BaseException, bucket: str, endpoint: str, what: str,
              missing: Optional[str] = None) -> Exception:
    """The fibackup error for a botocore exception, naming the problem and the fix."""
    import botocore.exceptions as bx
    code = _code(error)
    if isinstance(error, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return StoreUnavailableError(
            f"no S3 credentials for s3://{bucket}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or a profile (AWS_PROFILE or [s3] profile in the "
            "configuration file)")
    if isinstance(error, (bx.EndpointConnectionError, bx.ConnectTimeoutError,
                          bx.ConnectionClosedError, bx.ReadTimeoutError,
                          bx.ConnectionError)):
        return StoreUnavailableError(
            f"cannot reach the S3 endpoint {endpoint} while {what} ({error}); check "
            "AWS_ENDPOINT_URL or [s3] endpoint_url and that the service runs, then run again")
    if code in ACCESS_CODES:
        return StoreUnavailableError(
            f"access denied by {endpoint} while {what} ({code}); check the S3 credentials "
            "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, the profile) and the bucket's policy")
    if code == "NoSuchBucket" or (code in ("404", "NotFound") and missing is None):
        return StoreUnavailableError(
            f"the bucket '{bucket}' does not exist at {endpoint}; create it (e.g. 'aws s3 mb "
            f"s3://{bucket}') or fix the name given with -b")
    if code in ("404", "NoSuchKey", "NotFound") and missing is not None:
        return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), missing)
    if code == "InvalidRange":
        return CorruptStoreError(f"{missing or what}: the object is shorter than expected")
    message = ""
    if isinstance(getattr(error, "response", None), dict):
        message = str(error.response.get("Error", {}).get("Message") or "")  # type: ignore
    return StoreUnavailableError(f"S3 error while {what}: {code or type(error).__name__} "
                                 f"{message or error}".rstrip())


def _pread_all(fd: int, offset: int, length: int) -> bytearray:
    data = bytearray(length)
    view = memoryview(data)
    done = 0
    while done < length:
        count = os.preadv(fd, [view[done:]], offset + done)
        if count == 0:
            raise OSError(errno.EIO, "file shrank while being read")
        done += count
    return data


def _hash_part(data: bytearray, offset: int, progress: Optional[ProgressFn],
               throttle: Optional[Throttle]) -> list[Chunk]:
    """The listed (non-zero) chunks of ``data``, which starts at ``offset``."""
    view = memoryview(data)
    zeros = bytes(CHUNK_SIZE)
    listed = []
    for start in range(0, len(data), CHUNK_SIZE):
        piece = view[start:start + CHUNK_SIZE]
        if throttle is not None:
            throttle.consume(len(piece))
        digest = xxhash.xxh3_128(piece).hexdigest()
        if not _all_zero(piece, digest, zeros):
            listed.append(Chunk(offset + start, len(piece), digest))
            if progress is not None:
                progress(len(piece))
    return listed


class _Upload:
    """One multipart upload: parts read and hashed in order, ``PARALLEL`` uploading."""

    def __init__(self, backend: S3Backend, parts: Parts, name: str, fd: int, size: int) -> None:
        self.backend = backend
        self.key = backend.key(parts, name)
        self.parts = parts
        self.name = name
        self.fd = fd
        self.size = size
        self.part_size = max(PART_SIZE, -(-size // MAX_PARTS // CHUNK_SIZE) * CHUNK_SIZE)

    def run(self, progress: Optional[ProgressFn], throttle: Optional[Throttle],
            check_source: CheckFn) -> list[Chunk]:
        client, bucket = self.backend.client, self.backend.bucket
        upload_id = client.create_multipart_upload(Bucket=bucket, Key=self.key)["UploadId"]
        try:
            chunks, done = self._send(upload_id, progress, throttle)
            if check_source is not None:
                check_source()
            if self.backend._exists(self.parts, self.name):
                raise FileExistsError(errno.EEXIST, "object exists",
                                      self.backend.path(self.parts, self.name))
            client.complete_multipart_upload(Bucket=bucket, Key=self.key, UploadId=upload_id,
                                             MultipartUpload={"Parts": done})
            return chunks
        except BaseException:
            try:
                client.abort_multipart_upload(Bucket=bucket, Key=self.key, UploadId=upload_id)
            except Exception:                   # unreachable: repair aborts it later
                pass
            raise

    def _send(self, upload_id: str, progress: Optional[ProgressFn],
              throttle: Optional[Throttle]) -> tuple[list[Chunk], list[dict[str, Any]]]:
        chunks: list[Chunk] = []
        done: list[dict[str, Any]] = []
        pending: deque[Future[dict[str, Any]]] = deque()
        cache = SourceCache(self.fd)            # the host's cached pages stay, ours go
        offsets = list(range(0, self.size, self.part_size))
        with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            try:
                for number, offset in enumerate(offsets, start=1):
                    while len(pending) >= PARALLEL:
                        done.append(pending.popleft().result())
                    for ahead in offsets[number - 1:number + 1]:
                        cache.prepare(ahead, min(ahead + self.part_size, self.size))
                    data = _pread_all(self.fd, offset, min(self.part_size, self.size - offset))
                    cache.release(offset)
                    chunks += _hash_part(data, offset, progress, throttle)
                    pending.append(pool.submit(self._part, upload_id, number, data))
                while pending:
                    done.append(pending.popleft().result())
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
            finally:
                cache.close()
        return chunks, done

    def _part(self, upload_id: str, number: int, data: bytearray) -> dict[str, Any]:
        answer = self.backend.client.upload_part(Bucket=self.backend.bucket, Key=self.key,
                                                 UploadId=upload_id, PartNumber=number,
                                                 Body=data, ContentMD5=_md5(data))
        faults.point("s3.part-uploaded")
        return {"ETag": answer["ETag"], "PartNumber": number}


class _Download:
    """Ranged GETs of one object, ``READERS`` at a time, every chunk hashed and
    compared with the record; with a destination, listed chunks are written there."""

    def __init__(self, backend: S3Backend, parts: Parts, name: str, size: int,
                 expected: ChunkList, dst: int) -> None:
        self.backend = backend
        self.parts = parts
        self.name = name
        self.size = size
        self.chunk_size = expected.chunk_size
        self.expected = {chunk.offset: chunk for chunk in expected.chunks}
        self.checker = _Checker(expected)
        self.dst = dst
        self.stop = threading.Event()

    def segments(self) -> Iterator[tuple[int, int]]:
        """``[start, end)`` ranges; a restore skips those without listed chunks."""
        step = max(SEGMENT // self.chunk_size, 1) * self.chunk_size
        for start in range(0, self.size, step):
            end = min(start + step, self.size)
            if self.dst >= 0 and not any(offset in self.expected
                                         for offset in range(start, end, self.chunk_size)):
                continue
            yield start, end

    def run(self, progress: Optional[ProgressFn],
            throttle: Optional[Throttle]) -> tuple[list[Chunk], _Checker]:
        listed: list[Chunk] = []
        pending: deque[Future[list[tuple[int, Optional[Chunk]]]]] = deque()
        with ThreadPoolExecutor(max_workers=READERS) as pool:
            try:
                for start, end in self.segments():
                    while len(pending) >= 2 * READERS:
                        self._collect(pending.popleft().result(), listed)
                    if self.checker.stopped:
                        break
                    pending.append(pool.submit(self._segment, start, end, progress, throttle))
                while pending and not self.checker.stopped:
                    self._collect(pending.popleft().result(), listed)
            finally:
                if self.checker.stopped:
                    self.stop.set()
                for future in pending:
                    future.cancel()
        return sorted(listed, key=lambda chunk: chunk.offset), self.checker

    def _collect(self, found: list[tuple[int, Optional[Chunk]]], listed: list[Chunk]) -> None:
        for offset, chunk in found:
            if chunk is not None:
                listed.append(chunk)
            if not self.checker.check(chunk, offset) and self.dst >= 0:
                self.checker.stopped = True
                self.stop.set()
                return

    def _segment(self, start: int, end: int, progress: Optional[ProgressFn],
                 throttle: Optional[Throttle]) -> list[tuple[int, Optional[Chunk]]]:
        for attempt in range(READ_ATTEMPTS):
            try:
                return self._read_segment(start, end, progress, throttle)
            except (StoreUnavailableError, CorruptStoreError):
                if attempt == READ_ATTEMPTS - 1:
                    raise
            except Exception as error:          # a body cut while being read
                if attempt == READ_ATTEMPTS - 1:
                    raise translate(error, self.backend.bucket, self.backend.endpoint(),
                                    f"reading {self.backend.path(self.parts, self.name)}")
            time.sleep(0.5 * 2 ** attempt)
        raise AssertionError("unreachable")

    def _read_segment(self, start: int, end: int, progress: Optional[ProgressFn],
                      throttle: Optional[Throttle]) -> list[tuple[int, Optional[Chunk]]]:
        body = self.backend.read_range_stream(self.parts, self.name, start, end)
        zeros = bytes(self.chunk_size)
        found: list[tuple[int, Optional[Chunk]]] = []
        try:
            for offset in range(start, end, self.chunk_size):
                if self.stop.is_set():
                    break
                length = min(self.chunk_size, end - offset)
                data = _read_body(body, length)
                if throttle is not None:
                    throttle.consume(length)
                digest = xxhash.xxh3_128(data).hexdigest()
                chunk = None if _all_zero(memoryview(data), digest, zeros) else \
                    Chunk(offset, length, digest)
                found.append((offset, chunk))
                if chunk is not None and self.dst >= 0:
                    want = self.expected.get(offset)
                    if want is None or want.digest != digest or want.length != length:
                        break                   # never write a chunk the record disowns
                    _write_at(self.dst, data, offset)
                if progress is not None and chunk is not None:
                    progress(length)
        finally:
            body.close()
        return found


def _read_body(body: Any, length: int) -> bytes:
    pieces = []
    wanted = length
    while wanted > 0:
        piece = body.read(wanted)
        if not piece:
            raise CorruptStoreError("the object ended before its recorded size")
        pieces.append(piece)
        wanted -= len(piece)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _write_at(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
