"""S3: fibackup's upload and download of a layer against plain boto3 transfers of the same
bytes, on the real Ceph RGW of scripts/setup-s3.sh (started here, or reused when it runs).

These are format-1 stores' transfers (layer copies, called in this process, whatever format
a new store gets); format 3's backup and restore on S3 are in benchmarks/format3.py.

- upload: ``S3Backend.copy_in`` (what ``snapshot -b s3://`` runs per layer: read, hash
  every 4 MiB chunk, multipart parts of 8 MiB, 6 in flight) against boto3's
  ``upload_file`` (its default TransferConfig: 8 MiB parts, 10 threads), which hashes
  nothing; at least 0.8x the throughput.
- download: ``S3Backend.scan`` with a destination (what ``restore`` runs per layer: ranged
  GETs of 16 MiB, 6 at a time, every chunk checked before it is written, the file fsynced)
  against ``download_file`` followed by an fsync of the file (as every copy baseline of
  this benchmark is followed by a sync); at least 0.8x the throughput.
The layer is dense (512 MiB; --quick 64 MiB). The RGW keeps its objects in memory
(memstore) on the same 2 cores, so these figures compare clients, not storage.
"""
from __future__ import annotations

import os
import sys
import tempfile
import uuid

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "benchmarks"

from benchmarks.common import MiB, Row, Settings, alternate, remove, throughput_row  # noqa: E402
from benchmarks.copying import make_dense  # noqa: E402

GROUP = "s3"


def run(settings: Settings) -> list[Row]:
    from tests import s3lab                  # the tests' RGW (scripts/setup-s3.sh)
    with s3lab.running() as gateway:
        return _rows(settings, gateway.env["AWS_ENDPOINT_URL"])


def _rows(settings: Settings, endpoint: str) -> list[Row]:
    from fibackup.store.chunks import scan_file
    from fibackup.store.s3 import S3Backend, Settings as S3Settings, make_client
    client = make_client(S3Settings(endpoint_url=endpoint))
    bucket = f"fibench-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    backend = S3Backend(client, bucket, "bench/")
    size = settings.size(512 * MiB, 64 * MiB)
    with tempfile.TemporaryDirectory(prefix="fib bench s3 ", dir=settings.scratch) as scratch:
        src = os.path.join(scratch, "layer")
        dst = os.path.join(scratch, "restored")
        make_dense(src, size)
        expected = scan_file(src).chunks
        parts = ("layers",)

        def drop(_label: str) -> None:
            client.delete_object(Bucket=bucket, Key=backend.key(parts, "ours"))
            client.delete_object(Bucket=bucket, Key=backend.key(parts, "boto3"))

        try:
            up = alternate({"fibackup": lambda: backend.copy_in(parts, "ours", src),
                            "boto3": lambda: client.upload_file(src, bucket,
                                                                backend.key(parts, "boto3"))},
                           settings.repeat, cold=[src], after=drop)
            backend.copy_in(parts, "ours", src)
            down = alternate({"fibackup": lambda: backend.scan(parts, "ours", expected, dst),
                              "boto3": lambda: _download_and_sync(
                                  client, bucket, backend.key(parts, "ours"), dst)},
                             settings.repeat, cold=False, after=lambda _label: remove(dst))
        finally:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for item in page.get("Contents", ()):
                    client.delete_object(Bucket=bucket, Key=item["Key"])
            client.delete_bucket(Bucket=bucket)
    mib = size // MiB
    return [
        throughput_row(GROUP, f"upload of a {mib} MiB layer (hashed, multipart)",
                       up["fibackup"], "boto3 upload_file", up["boto3"], at_least=0.8,
                       note=f"{mib / min(up['fibackup']):.0f} MiB/s best"),
        throughput_row(GROUP, f"download of a {mib} MiB layer (every chunk checked)",
                       down["fibackup"], "boto3 download_file + fsync", down["boto3"],
                       at_least=0.8,
                       note=f"{mib / min(down['fibackup']):.0f} MiB/s best"),
    ]


def _download_and_sync(client, bucket: str, key: str, path: str) -> None:
    client.download_file(bucket, key, path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


if __name__ == "__main__":
    from benchmarks.common import main_for
    main_for(run)
