"""``fibackup list`` and ``fibackup status``: what the store holds, what the live chain is."""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Optional

from fibackup.commands.common import layer_index
from fibackup.fsutil import file_identity
from fibackup.model.points import RestorePoint
from fibackup.report import Reporter
from fibackup.store.repo import BackupStore
from fibackup.virt import domxml
from fibackup.virt.chains import live_chain
from fibackup.virt.libvirt_api import Connection


def list_points(backup_dir: str, domain: Optional[str], report: Reporter) -> list[RestorePoint]:
    store = BackupStore.open(backup_dir)
    problems: list[str] = []
    points = store.all_points(problems)
    for problem in problems:
        report.warn(f"{problem} (not listed; run 'fibackup verify')")
    if domain is not None:
        points = [point for point in points if domain in (point.domain_name, point.domain_uuid)]
    return sorted(points, key=lambda point: (point.domain_name, point.seq))


def point_row(point: RestorePoint) -> dict[str, object]:
    return {"id": point.id, "seq": point.seq, "time": point.time, "domain": point.domain_name,
            "uuid": point.domain_uuid, "host": point.host,
            "disks": sorted(point.disks), "layers": point.layer_count,
            "bytes_new": point.bytes_new, "bytes_total": point.bytes_total,
            "quiesced": point.quiesced,
            "files": [{"role": item.role, "path": item.path, "size": item.size,
                       "digest": item.digest} for item in point.files]}


@dataclass
class LayerStatus:
    path: str
    format: str
    role: str
    backed_up: Optional[str]


def domain_status(conn: Connection, name: str,
                  backup_dir: Optional[str]) -> dict[str, list[LayerStatus]]:
    """Each selected disk's live chain, top first, with the stored layer it equals."""
    domain = conn.domain(name)
    running = domain.is_active()
    index = None
    if backup_dir is not None:
        store = BackupStore.open(backup_dir)
        index = layer_index(store, domain.uuid)
    status: dict[str, list[LayerStatus]] = {}
    for spec in domxml.select_disks(domxml.disks(domxml.parse(domain.current_xml())), (), ()).selected:
        chain = live_chain(spec, running)
        rows: list[LayerStatus] = []
        present = itertools.takewhile(lambda layer: os.path.exists(layer.path), chain[:-1])
        segments = index.match_prefix([file_identity(layer.path)
                                       for layer in present]) if index else []
        for position, layer in enumerate(chain):
            active = position == len(chain) - 1
            stored = index.holder(segments[position][-1]).id \
                if index is not None and position < len(segments) else None
            rows.append(LayerStatus(layer.path, layer.format, "active" if active else "frozen", stored))
        status[spec.target] = list(reversed(rows))
    return status
