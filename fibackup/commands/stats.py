"""``fibackup stats``: what a store holds and what it costs: the logical size of every
restore point, the data after deduplication, the bytes on the backend after
compression, and the ratios."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fibackup.model.points import RestorePoint
from fibackup.report import Reporter
from fibackup.store.repo import BackupStore
from fibackup.store.v3.objects import CHUNKS, INDEXES


@dataclass
class StoreStats:
    store: str
    format: int
    domains: int = 0
    points: int = 0
    logical_bytes: int = 0
    """What restoring every point would write: the sum of their data sizes."""
    unique_bytes: int = 0
    """The data once deduplicated: each distinct chunk (or stored layer) once."""
    stored_bytes: int = 0
    """Bytes of the objects that hold it (chunks and indexes, or layer copies)."""
    chunks: int = 0
    encrypted: bool = False
    compression: str = "none"
    problems: list[str] = field(default_factory=list)

    @property
    def dedup_ratio(self) -> float:
        return self.logical_bytes / self.unique_bytes if self.unique_bytes else 1.0

    @property
    def compression_ratio(self) -> float:
        return self.unique_bytes / self.stored_bytes if self.stored_bytes else 1.0

    def to_json(self) -> dict[str, object]:
        return {"store": self.store, "format": self.format, "domains": self.domains,
                "points": self.points, "logical_bytes": self.logical_bytes,
                "unique_bytes": self.unique_bytes, "stored_bytes": self.stored_bytes,
                "chunks": self.chunks, "dedup_ratio": round(self.dedup_ratio, 3),
                "compression_ratio": round(self.compression_ratio, 3),
                "total_ratio": round(self.logical_bytes / self.stored_bytes, 3)
                if self.stored_bytes else 1.0,
                "encrypted": self.encrypted, "compression": self.compression,
                "problems": self.problems}


def store_stats(backup_dir: str, report: Reporter) -> StoreStats:
    store = BackupStore.open(backup_dir)
    problems: list[str] = []
    points = store.all_points(problems)
    for problem in problems:
        report.warn(f"{problem} (not counted)")
    result = StoreStats(store=store.root, format=store.version, problems=problems,
                        domains=len({point.domain_uuid for point in points}),
                        points=len(points),
                        logical_bytes=sum(point.bytes_total for point in points))
    if store.chunks is None:
        _layer_stats(store, points, result)
    else:
        _chunk_stats(store, points, result)
    return result


def _layer_stats(store: BackupStore, points: list[RestorePoint], result: StoreStats) -> None:
    layers = {(point.domain_uuid, layer.id): layer for point in points
              for disk in point.disks.values() for layer in disk.layers}
    files = {(point.domain_uuid, item.id): item.size for point in points for item in point.files}
    result.unique_bytes = sum(layer.data_bytes for layer in layers.values()) + sum(files.values())
    result.stored_bytes = result.unique_bytes
    result.chunks = len(layers)


def _chunk_stats(store: BackupStore, points: list[RestorePoint], result: StoreStats) -> None:
    chunks = store.chunked
    result.encrypted = chunks.encrypted
    result.compression = chunks.settings.compression.spec
    index_ids = {ref.id for point in points for ref in point.indexes()}
    lengths: dict[bytes, int] = {}
    for index_id in sorted(index_ids):
        index = chunks.get_index(index_id)
        for number, chunk_id in index.items():
            lengths[chunk_id] = index.length(number)
    result.chunks = len(lengths)
    result.unique_bytes = sum(lengths.values())
    objects = [(CHUNKS, chunk_id) for chunk_id in lengths] + \
        [(INDEXES, bytes.fromhex(index_id)) for index_id in index_ids]

    def size(item: tuple[str, bytes]) -> int:
        parts, name = chunks.place(*item)
        try:
            return chunks.backend.size(parts, name)
        except FileNotFoundError:
            return 0

    with ThreadPoolExecutor(max_workers=8) as pool:
        result.stored_bytes = sum(pool.map(size, objects))
