"""``fibackup verify``: re-read every stored layer against its record and manifests.

Besides the stored bytes, each restore point's chains are checked: every disk
lists layers, every layer has a readable record that agrees with the manifest's
entry, the records stack base first (the base has no parent), and the disk's
size is what its top layer presents.  A layer listed by several restore points
must be listed alike by all of them.  Each problem is one line naming the
restore point and disk; a damaged layer file is re-read only once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from fibackup.commands.restore_common import find_points
from fibackup.commands.chunked_restore import disk_index
from fibackup.errors import CorruptStoreError, FibackupError
from fibackup.host import state as host_state
from fibackup.model.chain import StoredLayer
from fibackup.model.points import PointDisk, PointFile, PointLayer, RestorePoint, select_point
from fibackup.progress import Bar
from fibackup.report import Reporter
from fibackup.store.chunks import Throttle
from fibackup.store.checking import layer_disagreement
from fibackup.store.repo import BackupStore
from fibackup.store.v3.ingest import check_chunks


@dataclass
class VerifyResult:
    points: int = 0
    layers: int = 0
    files: int = 0
    bytes_read: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "points": self.points, "layers": self.layers,
                "files": self.files, "bytes": self.bytes_read, "problems": self.problems}


@dataclass
class _Seen:
    """What earlier restore points showed about each (domain, layer id)."""

    damaged: dict[tuple[str, str], str] = field(default_factory=dict)
    """Layers whose data was re-read, and where it was found damaged ("" if intact)."""
    listed: dict[tuple[str, str], tuple[str, PointLayer]] = field(default_factory=dict)
    """The first listing of each layer: "restore point N/ID disk T" and its entry."""
    files: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    """Stored files (domain, id) already re-read, and what was wrong with them."""
    chunks: dict[bytes, str] = field(default_factory=dict)
    """Format 3: chunks already re-read, and what was wrong with each ("" if intact)."""
    throttle: Optional[Throttle] = None
    bar: Optional[Bar] = None
    """The run's progress bar (None when none is drawn)."""


def check_selection(domain: Optional[str], at: Optional[str]) -> None:
    """``verify --at`` names a point of one domain: without -d it is a UsageError."""
    from fibackup.errors import UsageError
    if at is not None and domain is None:
        raise UsageError("--at needs -d DOMAIN")


def verify(backup_dir: str, domain: Optional[str], at: Optional[str],
           report: Reporter, throttle: Optional[Throttle] = None) -> VerifyResult:
    store = BackupStore.open(backup_dir)
    result = VerifyResult()
    unreadable: list[str] = []
    if domain is not None:
        points = find_points(store, domain, unreadable)
        points = [select_point(points, at, f"domain '{domain}'")] if at is not None else points
        if not points and not unreadable:
            select_point(points, None, f"domain '{domain}'")
    else:
        points = store.all_points(unreadable)
    for problem in [*unreadable, *_rollbacks(store, points)]:
        result.problems.append(problem)
        report.warn(problem)
    with report.progress("verify", _data_bytes(points)) as bar:
        seen = _Seen(throttle=throttle, bar=bar)
        for point in points:
            result.points += 1
            for target, disk in sorted(point.disks.items()):
                for problem in _disk_problems(store, point, disk, seen, result):
                    message = (f"restore point {point.domain_name}/{point.id}, disk {target}: "
                               f"{problem}")
                    result.problems.append(message)
                    report.warn(message)
            for item in point.files:
                for problem in _file_problems(store, point, item, seen, result):
                    message = (f"restore point {point.domain_name}/{point.id}, {item.role} file "
                               f"{item.name or item.path}: {problem}")
                    result.problems.append(message)
                    report.warn(message)
    return result


def _rollbacks(store: BackupStore, points: list[RestorePoint]) -> list[str]:
    """Domains of the store whose newest point this host published is gone from it."""
    problems = []
    for uuid in sorted({point.domain_uuid for point in points}):
        problem = host_state.rollback(host_state.load(uuid), store.store_id, store.root, [
            (point.id, point.seq) for point in store.points(uuid, problems=[])])
        if problem is not None:
            problems.append(problem)
    return problems


def _file_problems(store: BackupStore, point: RestorePoint, item: PointFile, seen: _Seen,
                   result: VerifyResult) -> list[str]:
    """A stored NVRAM/TPM/boot file, re-read the first time a restore point lists it
    (files are content-addressed: many points share one); the record must agree with
    every listing."""
    key = (point.domain_uuid, item.id)
    if key not in seen.files:
        seen.files[key] = store.check_file(point.domain_uuid, item)
        result.files += 1
        result.bytes_read += item.size
        return seen.files[key]
    if seen.files[key]:
        return [f"stored file {item.id} is damaged (see above)"]
    try:
        store.check_file_listing(point.domain_uuid, item)
    except CorruptStoreError as error:
        return [str(error)]
    return []


def _data_bytes(points: list[RestorePoint]) -> int:
    """What the run will read, each layer once (as the manifests say: for the bar only)."""
    layers = {(point.domain_uuid, layer.id): layer.data_bytes for point in points
              for disk in point.disks.values() for layer in disk.layers}
    indexes = {ref.id: ref.data_bytes for point in points for ref in point.indexes()}
    return sum(layers.values()) + sum(indexes.values())


def _disk_problems(store: BackupStore, point: RestorePoint, disk: PointDisk, seen: _Seen,
                   result: VerifyResult) -> list[str]:
    if not disk.layers:
        return ["the restore point lists no layer for this disk"]
    problems = []
    if disk.top.virtual_size != disk.virtual_size:
        problems.append(f"the disk's virtual size {disk.virtual_size} is not its top layer's "
                        f"{disk.top.virtual_size}")
    here = f"restore point {point.domain_name}/{point.id} disk {disk.target}"
    parent: Optional[str] = None
    below: Optional[StoredLayer] = None
    for layer in disk.layers:
        key = (point.domain_uuid, layer.id)
        first = seen.listed.setdefault(key, (here, layer))
        differences = layer_disagreement(layer, first[1], first[0])
        if differences:
            problems.append(f"layer {layer.id} is listed with {'; '.join(differences)}")
        try:
            record = store.layer_record(point.domain_uuid, layer.id).layer
        except CorruptStoreError as error:
            problems.append(str(error))
            parent, below = layer.id, None
            continue
        if disk.index is None:
            problems.extend(_data_problems(store, key, here, seen, result))
        differences = layer_disagreement(layer, record)
        if differences:
            problems.append(f"layer {layer.id}: the manifest lists {'; '.join(differences)}")
        if record.parent != parent and not (below is not None and below.is_parent_of(record)):
            problems.append(f"layer {layer.id} rests on {record.parent or 'nothing'} but the "
                            f"restore point stacks it on {parent or 'nothing'}")
        parent, below = layer.id, record
    if disk.index is not None:
        problems.extend(_index_problems(store, point, disk, seen, result))
    return problems


def _index_problems(store: BackupStore, point: RestorePoint, disk: PointDisk, seen: _Seen,
                    result: VerifyResult) -> list[str]:
    """Format 3: the disk's index, and each of its chunks (read once per run: chunks are
    shared by many points, so a damaged one is named for every point that needs it)."""
    try:
        index = disk_index(store, point, disk)
    except FibackupError as error:
        return [str(error)]
    wanted = {chunk_id: index.length(number) for number, chunk_id in index.items()
              if chunk_id not in seen.chunks}
    found = check_chunks(store.chunked, wanted,
                         progress=lambda count: _count(result, count, seen.bar),
                         throttle=seen.throttle.consume if seen.throttle else None)
    for chunk_id in wanted:
        seen.chunks[chunk_id] = found.get(chunk_id, "")
    result.layers += 1
    return [f"chunk {number} ({seen.chunks[chunk_id]})" for number, chunk_id in index.items()
            if seen.chunks[chunk_id]]


def _data_problems(store: BackupStore, key: tuple[str, str], here: str, seen: _Seen,
                   result: VerifyResult) -> list[str]:
    """The layer's stored bytes, re-read the first time a restore point lists it."""
    if key in seen.damaged:
        where = seen.damaged[key]
        return [f"layer {key[1]} is damaged (see {where})"] if where else []
    problems = store.check_layer(*key, progress=lambda count: _count(result, count, seen.bar),
                                 throttle=seen.throttle)
    result.layers += 1
    seen.damaged[key] = here if problems else ""
    return problems


def _count(result: VerifyResult, count: int, bar: Optional[Bar]) -> None:
    result.bytes_read += count
    if bar is not None:
        bar(count)
