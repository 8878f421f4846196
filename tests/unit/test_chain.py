"""Backup planning over stored layers (fibackup.model.chain)."""
import dataclasses

import pytest

from fibackup.model.chain import LayerIndex, chain_from_ids, plan_disk
from tests.chainlab import GiB, frozen, stored_from


BASE = frozen("/img/disk.qcow2", ino=1)
MID = frozen("/img/disk.bimg-20260101-000000", ino=2)
TOP = frozen("/img/disk.bimg-20260102-000000", ino=3)
NEWER = frozen("/img/disk.bimg-20260103-000000", ino=4)

S_BASE = stored_from(BASE, "L-base", None)
S_MID = stored_from(MID, "L-mid", "L-base")


def ids(layers):
    return [layer.id for layer in layers]


def test_empty_index_starts_new_generation_copying_everything():
    plan = plan_disk("vda", [BASE, MID], LayerIndex([]))
    assert plan.new_generation
    assert plan.reuse == []
    assert plan.copy == [BASE, MID]
    assert plan.parent_of_first_copy is None
    assert plan.reason


def test_no_frozen_layer_is_an_error():
    with pytest.raises(ValueError, match="vda"):
        plan_disk("vda", [], LayerIndex([]))


def test_full_prefix_reused_only_new_top_copied():
    plan = plan_disk("vda", [BASE, MID, TOP], LayerIndex([S_BASE, S_MID]))
    assert not plan.new_generation
    assert ids(plan.reuse) == ["L-base", "L-mid"]
    assert plan.copy == [TOP]
    assert plan.parent_of_first_copy == "L-mid"


def test_catch_up_copies_two_new_layers():
    plan = plan_disk("vda", [BASE, MID, TOP, NEWER], LayerIndex([S_BASE, S_MID]))
    assert not plan.new_generation
    assert ids(plan.reuse) == ["L-base", "L-mid"]
    assert plan.copy == [TOP, NEWER]


def test_modified_base_starts_new_generation():
    changed_base = dataclasses.replace(
        BASE, identity=dataclasses.replace(BASE.identity, mtime_ns=BASE.identity.mtime_ns + 1))
    plan = plan_disk("vda", [changed_base, MID, TOP], LayerIndex([S_BASE, S_MID]))
    assert plan.new_generation
    assert plan.reuse == []
    assert plan.copy == [changed_base, MID, TOP]


def test_modified_middle_layer_reuses_only_what_is_below_it():
    changed_mid = dataclasses.replace(
        MID, identity=dataclasses.replace(MID.identity, size=MID.identity.size + 512))
    plan = plan_disk("vda", [BASE, changed_mid, TOP], LayerIndex([S_BASE, S_MID]))
    assert not plan.new_generation
    assert ids(plan.reuse) == ["L-base"]
    assert plan.copy == [changed_mid, TOP]


def test_same_path_different_inode_is_not_reused():
    replaced_base = frozen(BASE.layer.path, ino=99)
    plan = plan_disk("vda", [replaced_base, MID], LayerIndex([S_BASE, S_MID]))
    assert plan.new_generation
    assert plan.copy == [replaced_base, MID]


def test_same_path_other_host_is_not_reused():
    other_host = frozen(BASE.layer.path, ino=1, host="host2")
    plan = plan_disk("vda", [other_host, TOP], LayerIndex([S_BASE]))
    assert plan.new_generation


def test_stored_layer_with_other_parent_is_not_reused():
    # A copy of MID exists, but it was stored on top of another base.
    other_base = stored_from(frozen("/img/other.qcow2", ino=50), "L-other", None)
    mid_on_other = stored_from(MID, "L-mid-other", "L-other")
    plan = plan_disk("vda", [BASE, MID, TOP], LayerIndex([S_BASE, other_base, mid_on_other]))
    assert ids(plan.reuse) == ["L-base"]
    assert plan.copy == [MID, TOP]


def test_stored_middle_layer_without_its_base_is_not_reused():
    plan = plan_disk("vda", [BASE, MID, TOP], LayerIndex([S_MID]))
    assert plan.new_generation
    assert plan.copy == [BASE, MID, TOP]


def test_resized_disk_starts_new_generation_copying_everything():
    grown_top = frozen(TOP.layer.path, ino=3, virtual_size=20 * GiB)
    plan = plan_disk("vda", [BASE, MID, grown_top], LayerIndex([S_BASE, S_MID]))
    assert plan.new_generation
    assert plan.reuse == []
    assert plan.copy == [BASE, MID, grown_top]
    assert "resized" in plan.reason


def test_same_virtual_size_is_not_a_resize():
    plan = plan_disk("vda", [BASE, MID, TOP], LayerIndex([S_BASE, S_MID]))
    assert not plan.new_generation
    assert plan.reason == ""


def test_restored_files_are_reusable_through_aliases():
    restored_base = frozen("/restore/disk.qcow2", ino=500)
    restored_mid = frozen("/restore/disk.bimg-20260101-000000", ino=501)
    new_top = frozen("/restore/disk.bimg-20260201-000000", ino=502)
    chain = [restored_base, restored_mid, new_top]

    without = plan_disk("vda", chain, LayerIndex([S_BASE, S_MID]))
    assert without.new_generation

    aliases = [(restored_base.identity, "L-base"), (restored_mid.identity, "L-mid")]
    plan = plan_disk("vda", chain, LayerIndex([S_BASE, S_MID], aliases=aliases))
    assert not plan.new_generation
    assert ids(plan.reuse) == ["L-base", "L-mid"]
    assert plan.copy == [new_top]


def test_alias_to_unknown_layer_is_ignored():
    restored = frozen("/restore/disk.qcow2", ino=500)
    index = LayerIndex([S_BASE], aliases=[(restored.identity, "L-gone")])
    assert index.find(restored.identity, None) is None


def test_original_identity_still_works_with_aliases():
    restored = frozen("/restore/disk.qcow2", ino=500)
    index = LayerIndex([S_BASE], aliases=[(restored.identity, "L-base")])
    assert index.find(BASE.identity, None) == S_BASE
    assert index.find(restored.identity, None) == S_BASE


def test_index_has_disk_and_get():
    index = LayerIndex([S_BASE, S_MID])
    assert index.has_disk("vda")
    assert not index.has_disk("vdb")
    assert index.get("L-mid") == S_MID
    assert index.get("nope") is None


def test_chain_from_ids_resolves_in_order():
    index = {layer.id: layer for layer in (S_BASE, S_MID)}
    assert chain_from_ids(["L-base", "L-mid"], index) == [S_BASE, S_MID]


def test_chain_from_ids_detects_broken_parent_link():
    stray = stored_from(TOP, "L-top", "L-elsewhere")
    index = {layer.id: layer for layer in (S_BASE, S_MID, stray)}
    with pytest.raises(ValueError, match="L-top"):
        chain_from_ids(["L-base", "L-mid", "L-top"], index)


def test_chain_from_ids_detects_chain_not_starting_at_a_base():
    index = {layer.id: layer for layer in (S_BASE, S_MID)}
    with pytest.raises(ValueError):
        chain_from_ids(["L-mid"], index)


def test_chain_from_ids_unknown_id():
    with pytest.raises(KeyError):
        chain_from_ids(["L-base", "L-missing"], {"L-base": S_BASE})
