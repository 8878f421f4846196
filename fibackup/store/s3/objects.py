"""The keys of one store in a bucket, and the requests the uploads and reads share."""
from __future__ import annotations

from typing import Any, Optional

from fibackup.store.backend import Parts
from fibackup.store.location import SCHEME
from fibackup.store.s3.errors import Errors


class Bucket:
    """The objects of one store: keys ``PREFIX`` + ``/``-joined parts + name."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.root = f"{SCHEME}{bucket}/{prefix}".rstrip("/") if prefix else f"{SCHEME}{bucket}"

    def key(self, parts: Parts, name: str = "") -> str:
        return self.prefix + "".join(f"{part}/" for part in parts) + name

    def path(self, parts: Parts, name: str = "") -> str:
        return f"{SCHEME}{self.bucket}/{self.key(parts, name)}".rstrip("/")

    def errors(self, what: str, missing: Optional[str] = None) -> Errors:
        """A context that turns boto errors into fibackup's (``missing``: the path a
        404 is about, raised as FileNotFoundError)."""
        return Errors(self.bucket, self.endpoint, what, missing)

    def endpoint(self) -> str:
        return str(getattr(self.client.meta, "endpoint_url", "") or "the S3 endpoint")

    def exists(self, parts: Parts, name: str) -> bool:
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

    def read_range_stream(self, parts: Parts, name: str, start: int, end: int) -> Any:
        """The body of a ranged GET of ``[start, end)``."""
        path = self.path(parts, name)
        with self.errors(f"reading {path}", missing=path):
            return self.client.get_object(Bucket=self.bucket, Key=self.key(parts, name),
                                          Range=f"bytes={start}-{end - 1}")["Body"]
