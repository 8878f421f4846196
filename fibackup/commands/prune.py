"""``fibackup prune``: keep the restore points a retention policy names, merge the rest away.

Per domain, under its lock and journal (steps ``prune.merge``, ``prune.switch``,
``prune.drop``, ``prune.delete``):

1. the kept points and the merges are planned (fibackup/model/retention.py);
   layers a libvirt domain on this host uses (instant recovery) are never merged
   or removed;
2. each merge reads the stored layers (checking every chunk first), writes one
   new layer under a temporary name, has QEMU compare it with the chain, and
   publishes it with its record: nothing existing is modified;
3. every kept point that listed the merged layers gets a new manifest revision
   listing the merged layer instead (published atomically; readers take the
   highest revision);
4. the manifests of dropped points and the superseded revisions are deleted;
5. then the layers no remaining manifest lists, that the old manifests listed,
   are deleted.

A crash at any moment leaves every listed point complete: new files exist before
anything refers to them, and files are deleted only once nothing refers to them.
Running prune again finishes the work (it plans from what the store says now and
reuses a merged layer already written).
"""
from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from fibackup.errors import CorruptStoreError, IntegrityError, RepairNeededError, UsageError
from fibackup.fsutil import human
from fibackup.host import journal as journals
from fibackup.host.journal import Journal
from fibackup.host.lock import DomainLock
from fibackup.model import naming
from fibackup.model.chain import StoredLayer, chain_from_ids
from fibackup.model.points import RestorePoint
from fibackup.model.retention import (Merge, MergedLayer, Retention, adopted, adoptions,
                                      kept_points, plan_merges, referenced_layers)
from fibackup.report import Reporter
from fibackup.store.layout import manifest_key
from fibackup.store.format import PRUNED_VERSION, point_from_dict
from fibackup.store.repo import BackupStore
from fibackup.commands.collect import collect_garbage, pinned_points
from fibackup.store.tidy import tidy_domain


@dataclass
class PruneOptions:
    backup_dir: str
    domains: Sequence[str] = ()
    """Names or UUIDs as the backup directory knows them; empty with ``every``."""
    every: bool = False
    retention: Retention = field(default_factory=Retention)
    dry_run: bool = False
    scratch: Optional[str] = None
    """Where merges of object storage are staged (default /var/tmp)."""
    any_host: bool = False
    """Prune a prefix of object storage that another host backs up into."""


@dataclass
class PruneResult:
    domain: str
    uuid: str
    kept: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    merges: list[dict[str, Any]] = field(default_factory=list)
    removed_layers: list[str] = field(default_factory=list)
    removed_files: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    pinned: list[str] = field(default_factory=list)
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"domain": self.domain, "uuid": self.uuid, "kept": self.kept,
                "dropped": self.dropped, "merges": self.merges,
                "removed_layers": self.removed_layers, "removed_files": self.removed_files,
                "freed_bytes": self.freed_bytes,
                "pinned_layers": self.pinned, "dry_run": self.dry_run}


PinnedFn = Callable[[BackupStore], set[str]]


@dataclass
class PruneRun:
    """A prune of one backup directory: its domains are pruned one by one; in a format-3
    store, garbage collection runs once, after the last of them."""

    store: BackupStore
    options: PruneOptions
    selected: list[tuple[str, str]]
    """(uuid, name) of each domain to prune."""
    pinned_layers: PinnedFn
    pruned: int = 0
    """How many of ``selected`` :meth:`prune` was called for so far."""

    @classmethod
    def open(cls, options: PruneOptions, pinned_layers: PinnedFn) -> "PruneRun":
        if options.retention.empty:
            raise UsageError("say what to keep: --keep N, --keep-daily D and/or --keep-weekly W")
        for value in (options.retention.keep, options.retention.keep_daily,
                      options.retention.keep_weekly):
            if value is not None and value < 1:
                raise UsageError("--keep, --keep-daily and --keep-weekly take a number of 1 or "
                                 "more (the newest restore point is always kept)")
        store = BackupStore.open(options.backup_dir)
        store.scratch = options.scratch
        return cls(store, options, _select(store, options), pinned_layers)

    def prune(self, uuid: str, name: str, report: Reporter) -> PruneResult:
        """Prune one domain; after the last one (whether it succeeded or not), collect
        the format-3 store's garbage once for all of them (its bytes count for that one)."""
        self.pruned += 1
        last = self.pruned == len(self.selected) and self.store.chunks is not None \
            and not self.options.dry_run
        try:
            result = _drop_points(self.store, uuid, name, self.options, self.pinned_layers,
                                  report)
        except Exception:
            if last:
                collect_garbage(self.store, report)
            raise
        if last:
            result.freed_bytes += collect_garbage(self.store, report)
        return result


def _select(store: BackupStore, options: PruneOptions) -> list[tuple[str, str]]:
    """(uuid, name) of the domains to prune; a name is the newest point's."""
    known: dict[str, str] = {}
    for uuid in store.domain_uuids():
        points = store.points(uuid, problems=[])
        known[uuid] = points[-1].domain_name if points else uuid
    if options.every:
        return sorted(known.items(), key=lambda item: item[1])
    if not options.domains:
        raise UsageError("name the domains with -d NAME (repeatable), or pass --all")
    chosen = []
    for wanted in options.domains:
        matches = [(uuid, name) for uuid, name in known.items() if wanted in (uuid, name)]
        if not matches:
            raise UsageError(f"the backup directory {store.root} holds no domain '{wanted}'; "
                             f"it holds {', '.join(sorted(known.values())) or 'none'}")
        if len(matches) > 1:
            raise UsageError(f"several domains in {store.root} were named '{wanted}'; "
                             "give the UUID ('fibackup list --json' shows it)")
        chosen.append(matches[0])
    return list(dict.fromkeys(chosen))


def _drop_points(store: BackupStore, uuid: str, name: str, options: PruneOptions,
                 pinned_layers: PinnedFn, report: Reporter) -> PruneResult:
    result = PruneResult(domain=name, uuid=uuid, dry_run=options.dry_run)
    waiting = (lambda: report.info(f"{name}: waiting for another fibackup run on its part "
                                   f"of {store.root} (a backup, a restore or a prune, maybe "
                                   "on another host)"))
    with DomainLock(uuid, name), store.domain_lock(uuid, waiting=waiting):
        _finish_dead_run(store, uuid, name, report)
        points = _readable_points(store, uuid, name)
        if not points and (store.layer_ids(uuid) or store.file_ids(uuid)):
            raise CorruptStoreError(
                f"{name}: the backup directory holds stored layers of this domain but no "
                "restore point manifest (an incomplete copy of the directory?); prune "
                f"deletes nothing here: check domains/{uuid}/points")
        _check_writer_host(store, name, points, options)
        pinned = pinned_layers(store)               # now: no instant restore starts meanwhile
        plan = _Plan.make(points, options.retention, pinned, store.layer_ids(uuid),
                          store.file_ids(uuid), _merged_layers(store, uuid),
                          merging=store.chunks is None)
        plan.keep_pinned(pinned_points(store, uuid, report))
        result.kept = [point.id for point in plan.kept]
        result.dropped = [point.id for point in plan.dropped]
        result.pinned = sorted(pinned.intersection(plan.stored))
        if not plan.dropped and not plan.removable(referenced_layers(points)) and \
                not plan.removable_files(points):
            report.info(f"{name}: keeping all {len(points)} restore point(s); nothing to prune")
            return result
        if options.dry_run:
            _describe(store, uuid, name, plan, result, report)
            return result
        options_json = {"backup_dir": store.root, "retention": options.retention.describe()}
        with Journal(uuid, "prune", name, options_json).running() as journal:
            _execute(store, uuid, name, plan, result, journal, report)
    return result


def _check_writer_host(store: BackupStore, name: str, points: Sequence[RestorePoint],
                       options: PruneOptions) -> None:
    """Object storage has no lock shared between hosts: only the host that backs a domain
    up into a prefix prunes it there (its own domain lock keeps the two apart)."""
    from fibackup.fsutil import host_name
    if store.backend.capabilities.shared_lock or not points or options.any_host or points[-1].host == host_name():
        return
    raise UsageError(f"{name}: its newest restore point in {store.root} was made on host "
                     f"{points[-1].host}; object storage has no lock shared between hosts, so "
                     f"run this prune there, or pass --any-host if {points[-1].host} no longer "
                     "backs it up")


def _merged_layers(store: BackupStore, uuid: str) -> list[MergedLayer]:
    return [MergedLayer(layer.id, layer.disk, layer.stands_for,
                        frozenset(covered.id for covered in layer.covers))
            for layer in store.stored_layers(uuid) if layer.stands_for]


def _finish_dead_run(store: BackupStore, uuid: str, name: str, report: Reporter) -> None:
    """A prune that died is finished by this one; any other run's journal needs repair."""
    dead = journals.load(uuid)
    if dead is None:
        return
    if dead.command != "prune":
        raise RepairNeededError(f"{name}: {dead.describe()}; run 'fibackup repair -d {name}' "
                                "first, then prune again")
    report.info(f"{name}: {dead.describe()}; this run finishes it")
    for removed in tidy_domain(store, uuid):
        report.info(f"{name}: removed the incomplete file {removed}")
    dead.end()


@dataclass
class _Plan:
    kept: list[RestorePoint]
    dropped: list[RestorePoint]
    merges: list[Merge]
    pinned: set[str]
    stored: set[str]
    """Every layer in the domain's directory (complete or not)."""
    stored_files: set[str]
    """Every stored file (NVRAM, TPM state, boot files) of the domain."""

    adopted: dict[Merge, str]
    """Prefixes of kept chains that a stored merged layer already replaces -> its id."""

    @classmethod
    def make(cls, points: Sequence[RestorePoint], retention: Retention, pinned: set[str],
             stored: set[str], stored_files: set[str],
             existing: Sequence[MergedLayer], merging: bool = True) -> "_Plan":
        """``merging``: format 1/2 (format 3 never merges: its points are complete)."""
        kept = kept_points(points, retention)
        seqs = {point.seq for point in kept}
        dropped = [point for point in points if point.seq not in seqs]
        replaced = adoptions(points, existing)
        merges = plan_merges([adopted(point, replaced) for point in kept],
                             [adopted(point, replaced) for point in dropped], pinned) \
            if merging else []
        return cls(kept, dropped, merges, pinned, stored, stored_files, replaced)

    def keep_pinned(self, seqs: set[int]) -> None:
        """Format 3: points a pin holds are kept whatever the retention says."""
        held = [point for point in self.dropped if point.seq in seqs]
        if held:
            self.dropped = [point for point in self.dropped if point.seq not in seqs]
            self.kept = sorted([*self.kept, *held], key=lambda point: point.seq)

    def removable_files(self, points: Sequence[RestorePoint]) -> list[str]:
        """Stored files no remaining point lists (ids are shared between points)."""
        return sorted(self.stored_files - {item.id for point in points for item in point.files})

    def removable(self, referenced: set[str], extra: Sequence[str] = ()) -> list[str]:
        """Layers no manifest will list: dropped points' and merged ones, and copies a
        dead run left unlisted (the next backup would have reused them; copying them
        again is the only cost); never a pinned one."""
        return sorted((self.stored | set(extra)) - referenced - self.pinned)


def _describe(store: BackupStore, uuid: str, name: str, plan: _Plan, result: PruneResult,
              report: Reporter) -> None:
    """--dry-run: what would go, without changing anything."""
    merged_away = {layer_id for merge in plan.merges for layer_id in merge.layers}
    after = referenced_layers(plan.kept) - merged_away
    for merge in plan.merges:
        result.merges.append({"disk": merge.disk, "layers": list(merge.layers), "into": None})
        report.info(f"{name}: would merge {len(merge.layers)} layers of disk {merge.disk} "
                    "into one")
    result.removed_layers = plan.removable(after)
    result.removed_files = plan.removable_files(plan.kept)
    result.freed_bytes = sum(_size(store, uuid, layer_id) for layer_id in result.removed_layers)
    report.info(f"{name}: would drop {len(plan.dropped)} restore point(s) "
                f"({', '.join(result.dropped)}), keep {len(plan.kept)}, remove "
                f"{len(result.removed_layers)} stored layer(s) (about {human(result.freed_bytes)} "
                "before the merged layers are written)")


def _size(store: BackupStore, uuid: str, layer_id: str) -> int:
    try:
        return store.layer_record(uuid, layer_id).layer.size
    except CorruptStoreError:
        return 0


def _execute(store: BackupStore, uuid: str, name: str, plan: _Plan, result: PruneResult,
             journal: Journal, report: Reporter) -> None:
    tag = naming.timestamp_tag(_dt.datetime.now(_dt.timezone.utc))
    merged: dict[Merge, StoredLayer] = {
        merge: store.layer_record(uuid, merged_id).layer
        for merge, merged_id in plan.adopted.items()}
    for merge in plan.merges:
        step = journal.start("prune.merge", store=store.root, disk=merge.disk,
                             layers=list(merge.layers))
        merged[merge] = _merged_layer(store, uuid, name, merge, tag, report)
        journal.done(step, merged=merged[merge].id)
        result.merges.append({"disk": merge.disk, "layers": list(merge.layers),
                              "into": merged[merge].id})
    revised = _switch(store, uuid, plan.kept, merged, journal)
    step = journal.start("prune.drop", store=store.root,
                         points=[point.id for point in plan.dropped])
    _drop_manifests(store, uuid, plan.dropped)
    journal.done(step)
    remaining = _readable_points(store, uuid, name)
    if [point.seq for point in remaining] != [point.seq for point in revised]:
        raise CorruptStoreError(f"{name}: after dropping, the backup directory lists points "
                                f"{[point.id for point in remaining]}, not the kept ones; "
                                "nothing was deleted: is another run writing to it?")
    removable = plan.removable(referenced_layers(remaining),
                               [layer.id for layer in merged.values()])
    files = plan.removable_files(remaining)
    step = journal.start("prune.delete", store=store.root, layers=removable, files=files)
    for layer_id in removable:
        result.freed_bytes += store.remove_layer(uuid, layer_id)
    for file_id in files:
        result.freed_bytes += store.remove_file(uuid, file_id)
    result.removed_layers, result.removed_files = removable, files
    journal.done(step)
    report.info(f"{name}: dropped {len(plan.dropped)} restore point(s), kept {len(plan.kept)}, "
                f"merged {len(plan.merges)} chain(s), removed {len(removable)} stored layer(s), "
                f"freed {human(result.freed_bytes)}")


def _drop_manifests(store: BackupStore, uuid: str, dropped: Sequence[RestorePoint]) -> None:
    """Delete the superseded revisions first, then each dropped point's manifest: deleting
    a dropped point's newest revision while an older one remains would bring the older
    one back as the point (listing layers that are about to be deleted)."""
    for superseded in store.superseded_manifests(uuid):
        store.remove_manifest(uuid, superseded)
    names = store.manifest_names(uuid)
    for point in dropped:
        store.remove_manifest(uuid, names[manifest_key(point.seq)])


def _readable_points(store: BackupStore, uuid: str, name: str) -> list[RestorePoint]:
    problems: list[str] = []
    points = store.points(uuid, problems)
    if problems:
        raise CorruptStoreError(
            f"{name}: {problems[0]}; prune removes nothing while a manifest is unreadable "
            "(run 'fibackup verify -b DIR' and move the damaged manifest away)")
    return points


def _merged_layer(store: BackupStore, uuid: str, name: str, merge: Merge, tag: str,
                  report: Reporter) -> StoredLayer:
    """The stored layer that replaces ``merge.layers``: one a dead prune already wrote
    (same parent and top: the same content), or a new one, from checked inputs."""
    chain = [store.layer_record(uuid, layer_id).layer for layer_id in merge.layers]
    for existing in store.stored_layers(uuid):
        if existing.stands_for == merge.top and existing.parent == chain[0].parent and \
                existing.disk == merge.disk and existing.id not in merge.layers:
            report.info(f"{name}: disk {merge.disk}: reusing the merged layer {existing.id}")
            return existing
    try:
        chain_from_ids(merge.layers, {layer.id: layer for layer in chain})
    except ValueError as error:
        raise IntegrityError(f"{name}: disk {merge.disk}: {error}; prune merges nothing from "
                             "layers that do not stack (run 'fibackup verify')") from None
    if any(layer.disk != merge.disk for layer in chain):
        raise IntegrityError(f"{name}: a layer listed for disk {merge.disk} belongs to another "
                             "disk; prune merges nothing from it (run 'fibackup verify')")
    for layer in chain if store.backend.capabilities.local_files else ():   # staging checks every chunk
        problems = store.check_layer(uuid, layer.id)
        if problems:
            raise IntegrityError(f"{name}: {problems[0]}; prune merges nothing from a damaged "
                                 "layer (run 'fibackup verify')")
    report.info(f"{name}: disk {merge.disk}: merging {len(chain)} stored layers into one")
    return store.store_merged_layer(uuid, naming.merged_layer_id(tag, merge.disk), chain,
                                    _covers(chain))


def _covers(chain: Sequence[StoredLayer]) -> list[StoredLayer]:
    """What a merged layer records of the layers it replaces (flattened, base first)."""
    covers: list[StoredLayer] = []
    for layer in chain:
        covers.extend(layer.covers)
        covers.append(StoredLayer(id=layer.id, disk=layer.disk, parent=layer.parent,
                                  image_format=layer.image_format, size=0,
                                  virtual_size=layer.virtual_size, digest="",
                                  source=layer.source, stands_for=layer.stands_for))
    return covers


def _switch(store: BackupStore, uuid: str, kept: Sequence[RestorePoint],
            merged: dict[Merge, StoredLayer], journal: Journal) -> list[RestorePoint]:
    """Publish a new revision of every kept point that lists merged layers."""
    names = store.manifest_names(uuid)
    step = journal.start("prune.switch", store=store.root,
                         points=[point.id for point in kept])
    revised = []
    for point in kept:
        document = store.manifest_document(uuid, names[manifest_key(point.seq)])
        if _replace_layers(document, merged):
            document["version"] = PRUNED_VERSION
            document["revision"] = point.revision + 1
            point = store.publish_revision(uuid, document)
        revised.append(point)
    journal.done(step)
    return revised


def _replace_layers(document: dict[str, Any], merged: dict[Merge, StoredLayer]) -> bool:
    """Put each merged layer in place of the layers it replaced; whether any was."""
    changed = False
    for target, disk in document.get("disks", {}).items():
        for merge, layer in merged.items():            # in order: adopted ones first
            entries = disk["layers"]
            count = len(merge.layers)
            if merge.disk == target and \
                    tuple(entry["id"] for entry in entries[:count]) == merge.layers:
                disk["layers"] = [_entry(layer, any(e.get("new") is True for e in entries[:count])),
                                  *entries[count:]]
                changed = True
    if changed:                                         # the model's totals of the new list
        revised = point_from_dict(document, "the revised manifest")
        document["bytes_new"], document["bytes_total"] = revised.bytes_new, revised.bytes_total
    return changed


def _entry(layer: StoredLayer, new: bool) -> dict[str, Any]:
    return {"id": layer.id, "image_format": layer.image_format, "size": layer.size,
            "virtual_size": layer.virtual_size, "digest": layer.digest,
            "data_bytes": layer.data_bytes, "new": new}


def libvirt_pins(connect: Callable[[], Any]) -> PinnedFn:
    """Layers of the store that a libvirt domain's definition (live or persistent)
    names as a disk source or backing file: an instant-recovery domain runs on them."""
    def pinned(store: BackupStore) -> set[str]:
        from fibackup.virt import domxml
        if not store.backend.capabilities.local_files:
            return set()                        # nothing runs from object storage
        conn = connect()
        found: set[str] = set()
        prefix = os.path.join(os.path.realpath(store.root), "domains") + os.sep
        for domain in conn.other_domains(""):
            for xml in _definitions(domain):
                for path in domxml.source_files(xml):
                    real = os.path.realpath(path)
                    if real.startswith(prefix) and os.sep + "layers" + os.sep in real:
                        found.add(os.path.basename(real).rsplit(".", 1)[0])
        return found
    return pinned


def _definitions(domain: Any) -> list[str]:
    """The domain's live and persistent XML; none when it vanished meanwhile."""
    from fibackup.errors import FibackupError
    documents = []
    for read in (domain.live_xml, domain.inactive_xml):
        try:
            documents.append(read())
        except FibackupError:
            continue
        except Exception as error:  # noqa: BLE001 - undefined while we looked: nothing to pin
            if type(error).__module__ != "libvirt":
                raise
    return documents
