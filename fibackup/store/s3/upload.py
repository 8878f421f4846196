"""Uploads to an S3 store: small objects in one put, layer images as multipart uploads.

Parts are read, hashed (4 MiB chunks, the chunk list of the record) and uploaded
``PARALLEL`` at a time, with bounded memory (``PARALLEL + 1`` parts); every part
carries its Content-MD5, so the server refuses one that arrived different.  The
object appears under its key only when the upload completes, after the source
was checked and a HEAD found the key free; an interrupted upload is aborted (or
``repair`` aborts it later) and leaves no object.
"""
from __future__ import annotations

import base64
import errno
import hashlib
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Optional

import xxhash

from fibackup import faults
from fibackup.store.backend import CheckFn, Parts
from fibackup.store.chunks import CHUNK_SIZE, Chunk, ProgressFn, Throttle, all_zero
from fibackup.store.pagecache import SourceCache
from fibackup.store.s3.objects import Bucket

PART_SIZE = 8 * 1024 * 1024
"""Multipart part size (a multiple of the chunk size); larger for files over 70 GiB."""
MAX_PARTS = 9000
PARALLEL = 6
"""Parts uploaded at once per copy."""


def md5(data: Any) -> str:
    """Content-MD5 of a body: the server refuses a part or document that arrived
    different from what was hashed here (BadDigest), so no damaged object is published."""
    return base64.b64encode(hashlib.md5(data).digest()).decode()



def pread_all(fd: int, offset: int, length: int) -> bytearray:
    data = bytearray(length)
    view = memoryview(data)
    done = 0
    while done < length:
        count = os.preadv(fd, [view[done:]], offset + done)
        if count == 0:
            raise OSError(errno.EIO, "file shrank while being read")
        done += count
    return data


def hash_part(data: bytearray, offset: int, progress: Optional[ProgressFn],
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
        if not all_zero(piece, digest, zeros):
            listed.append(Chunk(offset + start, len(piece), digest))
            if progress is not None:
                progress(len(piece))
    return listed


class Upload:
    """One multipart upload: parts read and hashed in order, ``PARALLEL`` uploading."""

    def __init__(self, backend: Bucket, parts: Parts, name: str, fd: int, size: int) -> None:
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
            if self.backend.exists(self.parts, self.name):
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
                    data = pread_all(self.fd, offset, min(self.part_size, self.size - offset))
                    cache.release(offset)
                    chunks += hash_part(data, offset, progress, throttle)
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
                                                 Body=data, ContentMD5=md5(data))
        faults.point("s3.part-uploaded")
        return {"ETag": answer["ETag"], "PartNumber": number}

