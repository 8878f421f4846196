"""Which restore points a retention policy keeps, and which layers prune merges (pure).

Forever-incremental retention: the points a policy drops disappear, and the
stored layers only they needed go with them; where a kept point rests on the
view of a dropped one (the usual case: the oldest kept point's chain starts with
the base and the increments of every older night), those layers are merged
into one new layer, so the store never needs a new full copy.

Only a *common prefix* of the kept points' chains of one disk generation is
merged (base first): every kept point of that generation lists those layers,
so each can list the merged layer instead, and the merged layer presents
exactly the view of the prefix's top layer.  Layers above it are untouched.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Mapping, Optional, Sequence

from fibackup.errors import CorruptStoreError
from fibackup.model.naming import parse_utc_time
from fibackup.model.points import PointLayer, RestorePoint


@dataclass(frozen=True)
class Retention:
    """What to keep: the newest ``keep`` points, plus the newest point of each of the
    newest ``keep_daily`` days and ``keep_weekly`` ISO weeks that have points (UTC)."""

    keep: Optional[int] = None
    keep_daily: Optional[int] = None
    keep_weekly: Optional[int] = None

    @property
    def empty(self) -> bool:
        return self.keep is None and self.keep_daily is None and self.keep_weekly is None

    def describe(self) -> str:
        parts = [f"{label} {value}" for label, value in (
            ("--keep", self.keep), ("--keep-daily", self.keep_daily),
            ("--keep-weekly", self.keep_weekly)) if value is not None]
        return ", ".join(parts)


@dataclass(frozen=True)
class Merge:
    """Layers of one disk (ids, base first) that prune replaces with one new layer."""

    disk: str
    layers: tuple[str, ...]

    @property
    def top(self) -> str:
        return self.layers[-1]


def kept_points(points: Sequence[RestorePoint], retention: Retention) -> list[RestorePoint]:
    """The points ``retention`` keeps, oldest first; the newest point is always kept."""
    ordered = sorted(points, key=lambda point: point.seq)
    if not ordered:
        return []
    newest_first = list(reversed(ordered))
    keep = {newest_first[0].seq}
    if retention.keep is not None:
        keep.update(point.seq for point in newest_first[:retention.keep])
    if retention.keep_daily is not None:
        keep.update(_newest_per_period(newest_first, retention.keep_daily, _day))
    if retention.keep_weekly is not None:
        keep.update(_newest_per_period(newest_first, retention.keep_weekly, _week))
    return [point for point in ordered if point.seq in keep]


def _newest_per_period(newest_first: Sequence[RestorePoint], count: int,
                       period: Callable[[RestorePoint], object]) -> set[int]:
    chosen: dict[object, int] = {}
    for point in newest_first:
        key = period(point)
        if key not in chosen:
            if len(chosen) == count:
                break
            chosen[key] = point.seq
    return set(chosen.values())


def _moment(point: RestorePoint) -> _dt.datetime:
    try:
        return parse_utc_time(point.time)
    except ValueError:
        raise CorruptStoreError(f"restore point {point.domain_name}/{point.id} has the time "
                                f"{point.time!r}, which is not a UTC time; --keep-daily and "
                                "--keep-weekly cannot place it (use --keep)") from None


def _day(point: RestorePoint) -> object:
    return _moment(point).date()


def _week(point: RestorePoint) -> object:
    year, week, _weekday = _moment(point).isocalendar()
    return (year, week)


def plan_merges(kept: Sequence[RestorePoint], dropped: Sequence[RestorePoint],
                pinned: Iterable[str] = ()) -> list[Merge]:
    """The merges that let ``kept`` stay exact while the layers only ``dropped`` needed go.

    Per disk and generation (first layer), the common prefix of the kept points'
    chains is merged when it holds the top of a dropped point below its own top
    (so a view nobody keeps sits inside it) and none of its layers is ``pinned``
    (a running instant-recovery domain reads it).
    """
    pinned = set(pinned)
    dropped_tops = {(target, disk.top.id) for point in dropped
                    for target, disk in point.disks.items()}
    chains: dict[tuple[str, str], list[tuple[str, ...]]] = {}
    for point in kept:
        for target, disk in point.disks.items():
            ids = tuple(layer.id for layer in disk.layers)
            chains.setdefault((target, ids[0]), []).append(ids)
    merges = []
    for (target, _generation), lists in sorted(chains.items()):
        prefix = _common_prefix(lists)
        if len(prefix) < 2 or pinned.intersection(prefix):
            continue
        if any((target, layer_id) in dropped_tops for layer_id in prefix[:-1]):
            merges.append(Merge(disk=target, layers=prefix))
    return merges


@dataclass(frozen=True)
class MergedLayer:
    """What planning needs of a merged layer already stored (a previous prune's)."""

    id: str
    disk: str
    stands_for: str
    covers: frozenset[str]


def adoptions(points: Sequence[RestorePoint],
              existing: Sequence[MergedLayer]) -> dict[Merge, str]:
    """Chains that still list layers a stored merged layer already replaces (a prune
    killed while it switched manifests, or a backup that ran before it was rerun): the
    longest such prefix of each chain -> the merged layer's id.  The merged layer
    presents exactly the view of that prefix's top, so listing it instead is exact, and
    merging the same layers again would only store a second copy."""
    by_top = {(merged.disk, merged.stands_for): merged for merged in existing}
    found: dict[Merge, str] = {}
    for point in points:
        for target, disk in point.disks.items():
            ids = tuple(layer.id for layer in disk.layers)
            for end in range(len(ids) - 1, 0, -1):
                merged = by_top.get((target, ids[end]))
                if merged is not None and merged.id not in ids and \
                        set(ids[:end + 1]) <= merged.covers:
                    found[Merge(target, ids[:end + 1])] = merged.id
                    break
    return found


def adopted(point: RestorePoint, replaced: Mapping[Merge, str]) -> RestorePoint:
    """``point`` as planning sees it once the ``replaced`` prefixes list their merged layer."""
    disks = dict(point.disks)
    for merge, merged_id in replaced.items():
        disk = disks.get(merge.disk)
        if disk is None or tuple(layer.id for layer in disk.layers[:len(merge.layers)]) \
                != merge.layers:
            continue
        stand_in = PointLayer(merged_id, disk.layers[0].image_format, 0,
                              disk.layers[len(merge.layers) - 1].virtual_size, "0" * 32, False)
        disks[merge.disk] = replace(disk, layers=(stand_in, *disk.layers[len(merge.layers):]))
    return replace(point, disks=disks)


def _common_prefix(lists: Sequence[tuple[str, ...]]) -> tuple[str, ...]:
    first = lists[0]
    length = len(first)
    for other in lists[1:]:
        length = min(length, len(other))
        for position in range(length):
            if other[position] != first[position]:
                length = position
                break
    return first[:length]


def referenced_layers(points: Iterable[RestorePoint]) -> set[str]:
    return {layer.id for point in points for disk in point.disks.values()
            for layer in disk.layers}
