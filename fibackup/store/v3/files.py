"""A domain's other files (NVRAM, TPM state, kernel, initrd) in a format-3 store:
chunked and indexed like a disk, the file's size as the index's size."""
from __future__ import annotations

import os
from typing import Callable, Optional

from fibackup.errors import CorruptStoreError, FibackupError
from fibackup.fsutil import reading_file
from fibackup.model.points import IndexRef
from fibackup.store.v3.index import DiskIndex
from fibackup.store.v3.ingest import ingest, write_out
from fibackup.store.v3.objects import ChunkStore


def save_file(chunks: ChunkStore, source: str,
              check_source: Optional[Callable[[], None]] = None,
              size: Optional[int] = None) -> tuple[IndexRef, bool]:
    """Store ``source``'s chunks and index; the index and whether anything was new.
    ``size``: the file's size as the caller saw it (the index covers exactly that);
    ``check_source`` runs after the file was read, before the index is written."""
    empty = DiskIndex(os.stat(source).st_size if size is None else size,
                      chunks.settings.chunk_size)
    with reading_file(source) as view:
        done = ingest(chunks, view, empty, range(empty.chunk_count))
    if check_source is not None:
        check_source()
    index_id, index_bytes = chunks.put_index(done.index)
    chunks.settle()
    ref = IndexRef(id=index_id, data_bytes=done.index.data_bytes, chunks=len(done.index.chunks),
                   new_chunks=done.new_chunks, stored_bytes=done.stored_bytes + index_bytes)
    return ref, bool(index_bytes or done.new_chunks)


def file_index(chunks: ChunkStore, ref: IndexRef, size: int, what: str) -> DiskIndex:
    index = chunks.get_index(ref.id)
    if index.virtual_size != size or len(index.chunks) != ref.chunks:
        raise CorruptStoreError(f"the index of {what} does not describe a file of {size} bytes "
                                "with the chunks the restore point lists")
    return index


def restore_file(chunks: ChunkStore, ref: IndexRef, size: int, destination: str,
                 what: str) -> None:
    """Write the file to the new file ``destination``, every chunk checked."""
    index = file_index(chunks, ref, size, what)
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.close(fd)
    write_out(chunks, index, destination)


def check_file(chunks: ChunkStore, ref: IndexRef, size: int, what: str) -> list[str]:
    """Problems found re-reading the file's index and chunks (empty when intact)."""
    try:
        index = file_index(chunks, ref, size, what)
        for number, chunk_id in index.items():
            chunks.get_chunk(chunk_id, index.length(number))
    except FibackupError as error:
        return [f"{what}: {error}"]
    return []
