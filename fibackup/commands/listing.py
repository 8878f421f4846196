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
    return [point for _store, point in list_stores(backup_dir, domain, report)]


def list_stores(backup_dir: str, domain: Optional[str],
                report: Reporter) -> list[tuple[str, RestorePoint]]:
    """(store location, point) of the store at ``backup_dir``; for ``s3://BUCKET/PREFIX``
    that holds no store itself, of every store below it (one per host, say)."""
    found = []
    for store in _open_stores(backup_dir):
        if store.chunks is not None:
            store.chunks.keys()                  # an encrypted store: no key, no listing
        problems: list[str] = []
        points = store.all_points(problems)
        for problem in problems:
            report.warn(f"{problem} (not listed; run 'fibackup verify')")
        if domain is not None:
            points = [point for point in points
                      if domain in (point.domain_name, point.domain_uuid)]
        found += [(store.root, point) for point in points]
    return sorted(found, key=lambda item: (item[0], item[1].domain_name, item[1].seq))


def _open_stores(backup_dir: str) -> list[BackupStore]:
    from fibackup.errors import StoreUnavailableError
    from fibackup.store import s3
    try:
        return [BackupStore.open(backup_dir)]
    except StoreUnavailableError:
        if not s3.is_url(backup_dir):
            raise
        backend = s3.S3Backend.from_url(backup_dir)
        stores = backend.child_stores()
        if not stores:
            raise
        return [BackupStore.open(location) for location in stores]


def point_row(point: RestorePoint, store: Optional[str] = None) -> dict[str, object]:
    return {**({"store": store} if store is not None else {}), "id": point.id, "seq": point.seq, "time": point.time, "domain": point.domain_name,
            "uuid": point.domain_uuid, "host": point.host,
            "disks": sorted(point.disks), "layers": point.layer_count,
            "bytes_new": point.bytes_new, "bytes_total": point.bytes_total,
            "quiesced": point.quiesced, "format": point.format,
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
