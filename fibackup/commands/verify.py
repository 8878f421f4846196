"""``fibackup verify``: re-read every stored layer against its record and manifests."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from fibackup.commands.restore import find_points
from fibackup.model.points import PointDisk, select_point
from fibackup.report import Reporter
from fibackup.store.repo import BackupStore


@dataclass
class VerifyResult:
    points: int = 0
    layers: int = 0
    bytes_read: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "points": self.points, "layers": self.layers,
                "bytes": self.bytes_read, "problems": self.problems}


def verify(backup_dir: str, domain: Optional[str], at: Optional[str],
           report: Reporter) -> VerifyResult:
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
    for problem in unreadable:
        result.problems.append(problem)
        report.warn(problem)
    checked: set[tuple[str, str]] = set()
    for point in points:
        result.points += 1
        for target, layer_id in store.iter_point_layers(point):
            key = (point.domain_uuid, layer_id)
            if key in checked:
                continue
            checked.add(key)
            problems = _check(store, point.domain_uuid, layer_id, point.disks[target], result)
            for problem in problems:
                message = f"restore point {point.domain_name}/{point.id}, disk {target}: {problem}"
                result.problems.append(message)
                report.warn(message)
    return result


def _check(store: BackupStore, domain_uuid: str, layer_id: str, disk: PointDisk,
           result: VerifyResult) -> list[str]:
    listed = next(layer for layer in disk.layers if layer.id == layer_id)
    problems = store.check_layer(domain_uuid, layer_id, progress=lambda n: _count(result, n))
    result.layers += 1
    if not problems:
        record = store.layer_record(domain_uuid, layer_id)
        if (record.layer.digest, record.layer.size) != (listed.digest, listed.size):
            problems.append(f"layer {layer_id}: the manifest and the layer record disagree "
                            "on its checksum or size")
        problems.extend(_chain_problems(store, domain_uuid, disk, layer_id))
    return problems


def _chain_problems(store: BackupStore, domain_uuid: str, disk: PointDisk,
                    layer_id: str) -> list[str]:
    ids = [layer.id for layer in disk.layers]
    position = ids.index(layer_id)
    expected_parent = ids[position - 1] if position else None
    parent = store.layer_record(domain_uuid, layer_id).layer.parent
    if parent != expected_parent:
        return [f"layer {layer_id} rests on {parent or 'nothing'} but the restore point "
                f"stacks it on {expected_parent or 'nothing'}"]
    return []


def _count(result: VerifyResult, count: int) -> None:
    result.bytes_read += count
