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


def collect(chunks: ChunkStore, index_ids: set[str], problems: list[str]) -> Collected:
    """Sweep what ``index_ids`` (every index any manifest or pin names) do not reach.
    ``problems``: what went wrong reading the manifests; any problem means no sweep."""
    result = Collected(problems=list(problems))
    if result.problems:
        return result
    try:
        needed = referenced(chunks, index_ids)
    except FibackupError as error:
        result.problems.append(f"an index cannot be read ({error}; run 'fibackup verify')")
        return result
    for kind in (CHUNKS, INDEXES):
        for parts, name in list(chunks.partials(kind)):
            chunks.backend.remove(parts, name)
    result.indexes, _ = _sweep(chunks, INDEXES,
                               {bytes.fromhex(index_id) for index_id in index_ids}, result)
    result.chunks, result.kept_chunks = _sweep(chunks, CHUNKS, needed, result)
    return result


def _sweep(chunks: ChunkStore, kind: str, keep: set[bytes],
           result: Collected) -> tuple[int, int]:
    """Delete every object of ``kind`` not in ``keep`` (its bytes added to ``result``);
    how many were removed and how many kept."""
    removed = kept = 0
    for object_id in list(chunks.object_ids(kind)):
        if object_id in keep:
            kept += 1
            continue
        result.freed_bytes += chunks.freed(kind, object_id)
        chunks.remove(kind, object_id)
        removed += 1
    return removed, kept
