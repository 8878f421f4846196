"""Garbage collection of a format-3 store: delete the indexes and chunks no restore
point needs any more.  Prune deletes points (manifests); this is the only place data
leaves the store, and it never rewrites anything.

It runs under the store's exclusive lock (locks.py), so no backup is between
deciding to reuse a chunk and publishing the point that needs it.  **Mark**: every
manifest of every domain is read (all revisions), then every index they name: the
chunks those list are referenced.  If any manifest or index cannot be read, nothing
is deleted (a manifest that fails to open must not make its chunks look unneeded).
**Sweep**: every index and chunk object not referenced is deleted, and the hidden
temporary objects killed runs left.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from fibackup.errors import FibackupError
from fibackup.store.v3.objects import CHUNKS, INDEXES, ChunkStore

@dataclass
class Collected:
    indexes: int = 0
    chunks: int = 0
    freed_bytes: int = 0
    kept_chunks: int = 0
    problems: list[str] = field(default_factory=list)


def referenced(chunks: ChunkStore, index_ids: set[str]) -> set[bytes]:
    """Every chunk the indexes list (CorruptStoreError/IntegrityError if one is unreadable)."""
    needed: set[bytes] = set()
    for index_id in sorted(index_ids):
        needed.update(chunks.get_index(index_id).ids())
    return needed


def collect(chunks: ChunkStore, index_ids: set[str], problems: list[str],
            dry_run: bool = False, progress: Optional[Callable[[int], None]] = None) -> Collected:
    """Sweep what ``index_ids`` (every index any manifest names) do not reach.
    ``problems``: what went wrong reading the manifests; any problem means no sweep."""
    result = Collected(problems=list(problems))
    if result.problems:
        return result
    try:
        needed = referenced(chunks, index_ids)
    except FibackupError as error:
        result.problems.append(f"an index cannot be read ({error}); garbage collection "
                               "deleted nothing (run 'fibackup verify')")
        return result
    if not dry_run:
        for kind in (CHUNKS, INDEXES):
            for parts, name in list(chunks.partials(kind)):
                chunks.backend.remove(parts, name)
    wanted_indexes = {bytes.fromhex(index_id) for index_id in index_ids}
    for kind, keep, count in ((INDEXES, wanted_indexes, "indexes"), (CHUNKS, needed, "chunks")):
        for object_id in list(chunks.object_ids(kind)):
            if object_id in keep:
                if kind == CHUNKS:
                    result.kept_chunks += 1
                continue
            if not dry_run:
                result.freed_bytes += chunks.freed(kind, object_id)
                chunks.remove(kind, object_id)
            setattr(result, count, getattr(result, count) + 1)
            if progress is not None:
                progress(1)
    return result
