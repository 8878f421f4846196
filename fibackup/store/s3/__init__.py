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

The modules: client.py (the boto3 client and its settings), errors.py
(botocore's exceptions as fibackup's), objects.py (keys, and the requests the
others share), upload.py (puts and multipart uploads), download.py (ranged,
checked reads), backend.py (``S3Backend``, the store's operations).  Whether a
location is S3 at all is decided in ``fibackup.store.location``.
"""
from __future__ import annotations

from fibackup.store.location import SCHEME, is_url, split_url
from fibackup.store.s3.backend import S3Backend
from fibackup.store.s3.client import Settings, make_client, settings_from_config
from fibackup.store.s3.errors import translate

__all__ = ["SCHEME", "S3Backend", "Settings", "is_url", "make_client", "settings_from_config",
           "split_url", "translate"]
