"""Files a block commit produced map onto the stored layers of the files it merged
(LayerIndex compositions, match, match_sequence, and plan_disk through them)."""
from fibackup.model.chain import LayerIndex, plan_disk
from tests.chainlab import GiB, frozen, stored_from


def ids(layers):
    return [layer.id for layer in layers]


# The chain B <- L1 <- L2 was backed up, then committed into B, which became B'
# (same file, new size and mtime).  Later L3 was added on top of B' and B' <- L3
# committed again into B''.
B = frozen("/img/disk.qcow2", ino=1)
L1 = frozen("/img/disk.bimg-1", ino=2)
L2 = frozen("/img/disk.bimg-2", ino=3)
L3 = frozen("/img/disk.bimg-3", ino=4)
L4 = frozen("/img/disk.bimg-4", ino=5)
B1 = frozen("/img/disk.qcow2", ino=1, mtime_ns=2_000, size=2_000_000)   # B'
B2 = frozen("/img/disk.qcow2", ino=1, mtime_ns=3_000, size=3_000_000)   # B''

S_B = stored_from(B, "L-b", None)
S_L1 = stored_from(L1, "L-1", "L-b")
S_L2 = stored_from(L2, "L-2", "L-1")
S_L3 = stored_from(L3, "L-3", "L-2")

B1_PARTS = (B.identity, L1.identity, L2.identity)


def test_direct_match_is_a_one_element_list():
    index = LayerIndex([S_B, S_L1])
    assert index.match(B.identity, None) == [S_B]
    assert index.match(L1.identity, "L-b") == [S_L1]


def test_no_match_without_store_or_composition():
    index = LayerIndex([S_B])
    assert index.match(L1.identity, "L-b") is None
    assert index.match(B.identity, "L-other") is None


def test_composition_maps_onto_stored_layers_of_its_parts_in_order():
    index = LayerIndex([S_B, S_L1, S_L2], compositions={B1.identity: B1_PARTS})
    assert index.match(B1.identity, None) == [S_B, S_L1, S_L2]


def test_match_sequence_chains_parents():
    index = LayerIndex([S_B, S_L1, S_L2])
    assert index.match_sequence(B1_PARTS, None) == [S_B, S_L1, S_L2]
    # The same files resting on something else are not proven.
    assert index.match_sequence(B1_PARTS, "L-other") is None
    # Out of order, the parents do not chain.
    assert index.match_sequence((L1.identity, B.identity), None) is None


def test_composition_fails_when_a_part_is_missing():
    for missing in (S_B, S_L1, S_L2):
        layers = [layer for layer in (S_B, S_L1, S_L2) if layer is not missing]
        index = LayerIndex(layers, compositions={B1.identity: B1_PARTS})
        assert index.match(B1.identity, None) is None, missing.id


def test_composition_fails_when_a_part_is_stored_on_another_parent():
    # L1 is stored, but on top of another base than B.
    other = stored_from(frozen("/img/other.qcow2", ino=50), "L-other", None)
    l1_elsewhere = stored_from(L1, "L-1-other", "L-other")
    l2_on_it = stored_from(L2, "L-2-other", "L-1-other")
    index = LayerIndex([S_B, other, l1_elsewhere, l2_on_it],
                       compositions={B1.identity: B1_PARTS})
    assert index.match(B1.identity, None) is None


def test_composition_fails_when_the_result_rests_on_another_parent():
    index = LayerIndex([S_B, S_L1, S_L2], compositions={B1.identity: B1_PARTS})
    assert index.match(B1.identity, "L-x") is None


def test_composition_of_overlays_rests_on_the_layers_below():
    # L2 was committed into L1 (not into the base): L1' = [L1, L2], on top of B.
    l1_after = frozen(L1.layer.path, ino=2, mtime_ns=9_000)
    index = LayerIndex([S_B, S_L1, S_L2],
                       compositions={l1_after.identity: (L1.identity, L2.identity)})
    assert index.match(l1_after.identity, "L-b") == [S_L1, S_L2]
    assert index.match(l1_after.identity, None) is None


def test_nested_compositions_expand_recursively():
    compositions = {B1.identity: B1_PARTS, B2.identity: (B1.identity, L3.identity)}
    index = LayerIndex([S_B, S_L1, S_L2, S_L3], compositions=compositions)
    assert index.match(B2.identity, None) == [S_B, S_L1, S_L2, S_L3]


def test_nested_composition_fails_when_an_inner_part_is_missing():
    compositions = {B1.identity: B1_PARTS, B2.identity: (B1.identity, L3.identity)}
    index = LayerIndex([S_B, S_L2, S_L3], compositions=compositions)
    assert index.match(B2.identity, None) is None


def test_direct_match_is_preferred_over_composition():
    # B' was itself backed up (as a new generation) after the commit.
    s_b1 = stored_from(B1, "L-b1", None)
    index = LayerIndex([S_B, S_L1, S_L2, s_b1], compositions={B1.identity: B1_PARTS})
    assert index.match(B1.identity, None) == [s_b1]


def test_composition_used_when_direct_copy_has_another_parent():
    b1_elsewhere = stored_from(B1, "L-b1", "L-x")
    index = LayerIndex([S_B, S_L1, S_L2, b1_elsewhere], compositions={B1.identity: B1_PARTS})
    assert index.match(B1.identity, None) == [S_B, S_L1, S_L2]


def test_empty_composition_is_ignored():
    index = LayerIndex([S_B], compositions={B1.identity: ()})
    assert index.match(B1.identity, None) is None


def test_self_cycle_does_not_recurse_forever():
    a = B1.identity
    index = LayerIndex([S_B], compositions={a: (a,)})
    assert index.match(a, None) is None


def test_two_file_cycle_does_not_recurse_forever():
    a, b = B1.identity, B2.identity
    index = LayerIndex([S_B, S_L1], compositions={a: (b, L1.identity), b: (a,)})
    assert index.match(a, None) is None
    assert index.match(b, None) is None


def test_cycle_with_stored_prefix_does_not_recurse_forever():
    a = B1.identity
    index = LayerIndex([S_B, S_L1], compositions={a: (B.identity, a)})
    assert index.match(a, None) is None


def test_aliases_combine_with_compositions():
    # B and L1 were restored to new files, then the restored chain was committed.
    restored_b = frozen("/restore/disk.qcow2", ino=500)
    restored_l1 = frozen("/restore/disk.bimg-1", ino=501)
    committed = frozen("/restore/disk.qcow2", ino=500, mtime_ns=7_000)
    index = LayerIndex([S_B, S_L1],
                       aliases=[(restored_b.identity, "L-b"), (restored_l1.identity, "L-1")],
                       compositions={committed.identity: (restored_b.identity,
                                                          restored_l1.identity)})
    assert index.match(committed.identity, None) == [S_B, S_L1]


def test_alias_to_unknown_layer_does_not_prove_a_composition_part():
    restored_b = frozen("/restore/disk.qcow2", ino=500)
    committed = frozen("/restore/disk.qcow2", ino=500, mtime_ns=7_000)
    index = LayerIndex([S_L1], aliases=[(restored_b.identity, "L-gone")],
                       compositions={committed.identity: (restored_b.identity, L1.identity)})
    assert index.match(committed.identity, None) is None


def test_plan_reuses_parts_of_a_composed_base_and_copies_only_the_new_top():
    index = LayerIndex([S_B, S_L1, S_L2], compositions={B1.identity: B1_PARTS})
    plan = plan_disk("vda", [B1, L3], index)
    assert not plan.new_generation
    assert plan.reason == ""
    assert ids(plan.reuse) == ["L-b", "L-1", "L-2"]
    assert plan.copy == [L3]
    assert plan.parent_of_first_copy == "L-2"


def test_plan_reuses_nested_composition_and_layers_above_it():
    compositions = {B1.identity: B1_PARTS, B2.identity: (B1.identity, L3.identity)}
    s_l4 = stored_from(L4, "L-4", "L-3")
    newer = frozen("/img/disk.bimg-5", ino=6)
    index = LayerIndex([S_B, S_L1, S_L2, S_L3, s_l4], compositions=compositions)
    plan = plan_disk("vda", [B2, L4, newer], index)
    assert not plan.new_generation
    assert ids(plan.reuse) == ["L-b", "L-1", "L-2", "L-3", "L-4"]
    assert plan.copy == [newer]


def test_plan_with_composed_overlay_in_the_middle():
    l1_after = frozen(L1.layer.path, ino=2, mtime_ns=9_000)
    index = LayerIndex([S_B, S_L1, S_L2],
                       compositions={l1_after.identity: (L1.identity, L2.identity)})
    plan = plan_disk("vda", [B, l1_after, L3], index)
    assert ids(plan.reuse) == ["L-b", "L-1", "L-2"]
    assert plan.copy == [L3]


def test_plan_starts_new_generation_when_a_part_is_missing():
    index = LayerIndex([S_B, S_L2], compositions={B1.identity: B1_PARTS})
    plan = plan_disk("vda", [B1, L3], index)
    assert plan.new_generation
    assert plan.reuse == []
    assert plan.copy == [B1, L3]
    assert plan.parent_of_first_copy is None


def test_plan_without_compositions_starts_new_generation_after_commit():
    plan = plan_disk("vda", [B1, L3], LayerIndex([S_B, S_L1, S_L2]))
    assert plan.new_generation
    assert plan.copy == [B1, L3]


def test_plan_detects_resize_across_a_composition():
    grown = frozen(L3.layer.path, ino=4, virtual_size=20 * GiB)
    index = LayerIndex([S_B, S_L1, S_L2], compositions={B1.identity: B1_PARTS})
    plan = plan_disk("vda", [B1, grown], index)
    assert plan.new_generation
    assert plan.reuse == []
    assert plan.copy == [B1, grown]
    assert "resized" in plan.reason


def test_a_base_stored_twice_does_not_make_every_later_backup_full():
    """After a resize the unchanged base is re-copied in a new generation; the layers
    above rest on the newer copy, which must be the one matched."""
    from tests.chainlab import frozen, stored_from
    from fibackup.model.chain import LayerIndex, plan_disk
    base, resized, later = frozen("/i/base", 1), frozen("/i/o1", 2), frozen("/i/o2", 3)
    old_base = stored_from(base, "20260101-000000-vda-000-aaaaaa", None)
    new_base = stored_from(base, "20260102-000000-vda-000-bbbbbb", None)
    above = stored_from(resized, "20260102-000000-vda-001-cccccc", new_base.id)
    index = LayerIndex([old_base, new_base, above])
    plan = plan_disk("vda", [base, resized, later], index)
    assert [layer.id for layer in plan.reuse] == [new_base.id, above.id]
    assert [item.layer.path for item in plan.copy] == ["/i/o2"] and not plan.new_generation


def test_on_a_tie_the_newest_stored_copy_is_matched():
    from tests.chainlab import frozen, stored_from
    from fibackup.model.chain import LayerIndex
    base = frozen("/i/base", 1)
    older = stored_from(base, "20260101-000000-vda-000-aaaaaa", None)
    newer = stored_from(base, "20260103-000000-vda-000-bbbbbb", None)
    assert LayerIndex([older, newer]).match_prefix([base.identity]) == [[newer]]
    assert LayerIndex([older, newer]).match_prefix([frozen("/i/x", 9).identity]) == []
