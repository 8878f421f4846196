"""Where a store is: the ``-b`` spec, a directory on this host or ``s3://BUCKET/PREFIX``.

This module is the one place that decides whether a location is object storage
(:func:`is_url`); everything else (opening, journals, run logs, instant
recovery) asks it.  It imports nothing of the store, so anything may use it.
"""
from __future__ import annotations

import os

from fibackup.errors import UsageError

SCHEME = "s3://"


def is_url(location: str) -> bool:
    """Whether ``location`` names object storage (``s3://...``) rather than a directory."""
    return location.startswith(SCHEME)


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ("bucket", "a/b/"); the prefix is "" or ends with "/"."""
    rest = url[len(SCHEME):]
    bucket, _slash, prefix = rest.partition("/")
    prefix = "/".join(part for part in prefix.split("/") if part)
    if not bucket or any(part in (".", "..") for part in prefix.split("/")):
        raise UsageError(f"{url} is not a valid S3 location; use s3://BUCKET or "
                         "s3://BUCKET/PREFIX")
    return bucket, prefix + "/" if prefix else ""


def location(path: str) -> str:
    """A backup location as stored in journals and host state: an absolute path, or an
    ``s3://`` URL unchanged."""
    return path if is_url(path) else os.path.abspath(path)


def require_local(path: str, what: str) -> None:
    """UsageError when ``path`` is object storage and ``what`` needs local files."""
    if is_url(path):
        raise UsageError(f"{what} needs a backup directory on this host; {path} is object "
                         "storage: restore without --instant, or prune a directory store")
