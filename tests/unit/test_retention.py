"""Retention selection, merge planning, and backups mapping onto merged layers (pure)."""
from __future__ import annotations

from fibackup.model.chain import NO_SOURCE, FileIdentity, FrozenLayer, LayerIndex, LiveLayer, \
    StoredLayer, chain_from_ids, plan_disk
from fibackup.model.points import PointDisk, PointLayer, RestorePoint
from fibackup.model.retention import Merge, Retention, kept_points, plan_merges


def point(seq: int, time: str = "2026-11-01T01:00:00Z", **chains: list[str]) -> RestorePoint:
    disks = {target: PointDisk(target, 1, tuple(PointLayer(i, "qcow2", 1, 1, "0" * 32, False)
                                                 for i in ids))
             for target, ids in chains.items()}
    return RestorePoint(id=str(seq), seq=seq, time=time, domain_name="web", domain_uuid="u",
                        host="h", disks=disks, domain_xml="")


def test_keep_n_keeps_the_newest():
    history = [point(seq) for seq in range(1, 11)]
    assert [p.seq for p in kept_points(history, Retention(keep=3))] == [8, 9, 10]
    assert [p.seq for p in kept_points(history, Retention(keep=30))] == list(range(1, 11))


def test_daily_and_weekly_keep_the_newest_of_each_period_and_add_up():
    history = [point(1, "2026-11-02T01:00:00Z"), point(2, "2026-11-09T01:00:00Z"),
               point(3, "2026-11-10T01:00:00Z"), point(4, "2026-11-10T13:00:00Z"),
               point(5, "2026-11-11T01:00:00Z")]
    assert [p.seq for p in kept_points(history, Retention(keep_daily=2))] == [4, 5]
    assert [p.seq for p in kept_points(history, Retention(keep_weekly=2))] == [1, 5]
    assert [p.seq for p in kept_points(history, Retention(keep=1, keep_daily=2,
                                                          keep_weekly=2))] == [1, 4, 5]


def test_the_newest_point_is_always_kept():
    history = [point(seq) for seq in range(1, 4)]
    assert [p.seq for p in kept_points(history, Retention(keep_weekly=1))] == [3]


def test_merges_the_common_prefix_that_holds_a_dropped_view():
    p1, p2, p3 = (point(1, vda=["a"]), point(2, vda=["a", "b"]), point(3, vda=["a", "b", "c"]))
    assert plan_merges([p2, p3], [p1]) == [Merge("vda", ("a", "b"))]
    assert plan_merges([p1, p3], [p2]) == []        # the common prefix is one layer
    assert plan_merges([p3], [p1, p2]) == [Merge("vda", ("a", "b", "c"))]
    p4 = point(4, vda=["a", "b", "c", "d"])
    assert plan_merges([p3, p4], [p1, p2]) == [Merge("vda", ("a", "b", "c"))]
    assert plan_merges([p3, p4], [p1, p2], pinned={"b"}) == []


def test_branches_and_generations_merge_only_what_all_kept_points_share():
    kept = [point(3, vda=["a", "b", "c"]), point(4, vda=["a", "b", "x"]),
            point(5, vda=["n", "m"])]
    dropped = [point(2, vda=["a", "b"]), point(1, vda=["n"])]
    # (a, b) is dropped point 2's view, which nothing else holds: merging it frees nothing
    assert plan_merges(kept, dropped) == [Merge("vda", ("n", "m"))]
    dropped.append(point(0, vda=["a"]))
    assert plan_merges(kept, dropped) == [Merge("vda", ("a", "b")), Merge("vda", ("n", "m"))]


def ident(n: int) -> FileIdentity:
    return FileIdentity("h", f"/img/{n}", 1, n, 10, 10, "x")


def layer(layer_id: str, parent, n: int) -> StoredLayer:
    return StoredLayer(layer_id, "vda", parent, "qcow2", 10, 100, "0" * 32, ident(n))


def covered(stored: StoredLayer) -> StoredLayer:
    return StoredLayer(stored.id, "vda", stored.parent, "raw", 0, stored.virtual_size, "",
                       stored.source, stands_for=stored.stands_for)


def merged(layer_id: str, parts: list[StoredLayer], covers=None) -> StoredLayer:
    return StoredLayer(layer_id, "vda", None, "qcow2", 10, 100, "0" * 32, NO_SOURCE,
                       stands_for=parts[-1].id, covers=tuple(covers or map(covered, parts)))


def frozen(*numbers: int) -> list[FrozenLayer]:
    return [FrozenLayer(LiveLayer(f"/img/{n}", "qcow2"), ident(n), 100) for n in numbers]


def test_a_backup_maps_live_files_onto_a_merged_layer_and_stays_incremental():
    l0, l1, l2 = layer("L0", None, 0), layer("L1", "L0", 1), layer("L2", "L1", 2)
    m = merged("M", [l0, l1])
    index = LayerIndex([m, l2])                   # L0 and L1 were merged and deleted
    plan = plan_disk("vda", frozen(0, 1, 2, 3), index)
    assert [s.id for s in plan.reuse] == ["M", "L2"] and not plan.new_generation
    assert [item.layer.path for item in plan.copy] == ["/img/3"]
    assert chain_from_ids(["M", "L2"], {"M": m, "L2": l2})      # L2 rests on L1 = M


def test_a_chain_that_ends_inside_a_merged_range_starts_a_new_generation():
    l0, l1, l2 = layer("L0", None, 0), layer("L1", "L0", 1), layer("L2", "L1", 2)
    index = LayerIndex([merged("M", [l0, l1, l2])])
    plan = plan_disk("vda", frozen(0, 1, 9), index)
    assert plan.new_generation and len(plan.copy) == 3


def test_merges_of_merges_keep_mapping_both_old_and_new_layers():
    l0, l1 = layer("L0", None, 0), layer("L1", "L0", 1)
    m1 = merged("M1", [l0, l1])
    n1 = layer("N1", "M1", 2)                        # stored on M1 after the first prune
    m2 = merged("M2", [m1, n1], covers=[*m1.covers, covered(m1), covered(n1)])
    index = LayerIndex([m2, layer("N2", "N1", 3)])
    plan = plan_disk("vda", frozen(0, 1, 2, 3, 4), index)
    assert [s.id for s in plan.reuse] == ["M2", "N2"]
    # a restored copy of M1 (an alias) also maps
    index = LayerIndex([m2], aliases=[(ident(7), "M1")])
    assert [s.id for s in plan_disk("vda", frozen(7, 2, 5), index).reuse] == ["M2"]


def test_a_chain_still_listing_merged_layers_adopts_the_merged_layer():
    from fibackup.model.retention import MergedLayer, adopted, adoptions
    existing = [MergedLayer("M", "vda", "c", frozenset({"a", "b", "c"}))]
    p3, p4 = point(3, vda=["M", "d"]), point(4, vda=["a", "b", "c", "d", "e"])
    found = adoptions([p3, p4], existing)
    assert found == {Merge("vda", ("a", "b", "c")): "M"}
    assert [layer.id for layer in adopted(p4, found).disks["vda"].layers] == ["M", "d", "e"]
    # not adopted: a chain that ends inside the merged range, or another disk
    assert adoptions([point(5, vda=["a", "b"]), point(6, vdb=["a", "b", "c"])], existing) == {}
    # planning on adopted chains merges nothing new when nothing was dropped
    assert plan_merges([adopted(p, found) for p in (p3, p4)], []) == []


def test_daily_rules_refuse_a_point_without_a_utc_time():
    import pytest
    from fibackup.errors import CorruptStoreError
    history = [point(1, "yesterday"), point(2, "2026-11-10T01:00:00Z")]
    with pytest.raises(CorruptStoreError, match="not a UTC time"):
        kept_points(history, Retention(keep_daily=3))
    assert [p.seq for p in kept_points(history, Retention(keep=1))] == [2]


def test_manifest_names_are_ascii_digits_with_an_optional_revision():
    from fibackup.store.layout import parse_point_name as _parse_point_name
    assert _parse_point_name("00000003.json") == ("00000003", 0)
    assert _parse_point_name("00000003.r12.json") == ("00000003", 12)
    for name in ("00000003.r0.json", "00000003.r\u00b2.json", "0000000\u0663.json",
                 "00000003.r01.json", "x.json", "00000003.rr1.json", "00000003.r1.x.json"):
        assert _parse_point_name(name) == (None, 0), name
