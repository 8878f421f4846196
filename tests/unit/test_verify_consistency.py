"""``fibackup verify`` checks chains and manifests, not only bytes: hand-built stores
with one inconsistency each, every problem one line naming restore point and disk."""
import dataclasses
import os

import pytest

from fibackup.commands.verify import verify
from fibackup.report import Reporter
from tests.storelab import (BASE, SOURCE_SIZE, TOP, UUID, flip_byte, foreign_layer,
                            make_point, manifest_path, record_path, store_layer, with_entries,
                            write_stray)

SECOND = "20260102-000000"


def run_verify(store, domain=None, at=None):
    return verify(store.root, domain, at, Reporter(quiet=True))


def one_problem(result, point_id="20260101-000000", disk="vda"):
    assert len(result.problems) == 1, result.problems
    problem = result.problems[0]
    assert problem.startswith(f"restore point web/{point_id}, disk {disk}: "), problem
    return problem


@pytest.fixture
def chain(store, source):
    base = store_layer(store, source, BASE)
    top = store_layer(store, source, TOP, parent=base.id)
    return base, top


def test_intact_points_sharing_layers(store, chain):
    base, top = chain
    store.publish_point(make_point([base], seq=1))
    store.publish_point(make_point([base, top], seq=2, point_id=SECOND))
    result = run_verify(store)
    assert result.ok, result.problems
    assert (result.points, result.layers) == (2, 2)


def test_missing_record_is_named_for_every_point_listing_it(store, chain):
    base, top = chain
    store.publish_point(make_point([base, top], seq=1))
    store.publish_point(make_point([base, top], seq=2, point_id=SECOND))
    os.unlink(record_path(store, top.id))
    result = run_verify(store)
    assert len(result.problems) == 2, result.problems
    for problem, point_id in zip(result.problems, ("20260101-000000", SECOND)):
        assert problem.startswith(f"restore point web/{point_id}, disk vda: ")
        assert record_path(store, top.id) in problem and "missing" in problem


def test_top_without_its_base(store, chain):
    _base, top = chain
    store.publish_point(make_point([top]))
    problem = one_problem(run_verify(store))
    assert f"layer {top.id} rests on {BASE} but the restore point stacks it on nothing" in problem


def test_base_with_a_parent(store, source):
    orphan = store_layer(store, source, TOP, parent="20251231-000000-vda-000-cccccc")
    store.publish_point(make_point([orphan]))
    assert "stacks it on nothing" in one_problem(run_verify(store))


def test_layers_stacked_in_the_wrong_order(store, chain):
    base, top = chain
    store.publish_point(make_point([top, base]))
    result = run_verify(store)
    assert len(result.problems) == 2, result.problems
    assert all(problem.startswith("restore point web/20260101-000000, disk vda: ")
               for problem in result.problems)


def test_layer_of_another_domain(store, source):
    store.publish_point(make_point([foreign_layer(store, source)]))
    problem = one_problem(run_verify(store))
    assert "missing" in problem and store.domain_dir(UUID) in problem


@pytest.mark.parametrize("change", [{"image_format": "qcow2"}, {"virtual_size": 2 * SOURCE_SIZE},
                                    {"digest": "d" * 32}, {"size": 7}, {"data_bytes": 1}])
def test_manifest_entry_disagreeing_with_its_record(store, chain, change):
    base, _top = chain
    point = make_point([base])
    store.publish_point(with_entries(point, dataclasses.replace(point.disks["vda"].layers[0],
                                                                **change)))
    problem = one_problem(run_verify(store))
    field = next(iter(change)).replace("_", " ")
    assert f"layer {base.id}: the manifest lists {field}" in problem


def test_manifests_listing_one_layer_differently(store, chain):
    base, _top = chain
    store.publish_point(make_point([base], seq=1))
    point = make_point([base], seq=2, point_id=SECOND)
    store.publish_point(with_entries(point, dataclasses.replace(point.disks["vda"].layers[0],
                                                                virtual_size=SOURCE_SIZE + 512)))
    result = run_verify(store)
    assert len(result.problems) == 1, result.problems
    problem = result.problems[0]
    assert manifest_path(store, 2) in problem and f"web/{SECOND}), disk vda" in problem
    assert "virtual size" in problem


def test_manifests_disagreeing_on_a_layer_whose_record_is_gone(store, chain):
    base, _top = chain
    store.publish_point(make_point([base], seq=1))
    point = make_point([base], seq=2, point_id=SECOND)
    store.publish_point(with_entries(point, dataclasses.replace(point.disks["vda"].layers[0],
                                                                digest="c" * 32)))
    os.unlink(record_path(store, base.id))
    problems = run_verify(store).problems
    assert len(problems) == 3, problems               # the record twice, the listing once
    listed = [problem for problem in problems if "is listed with" in problem]
    assert len(listed) == 1 and listed[0].startswith(f"restore point web/{SECOND}, disk vda: ")
    assert "restore point web/20260101-000000 disk vda" in listed[0]


def test_disk_size_not_the_top_layers(store, chain):
    base, _top = chain
    point = make_point([base])
    store.publish_point(dataclasses.replace(point, disks={"vda": dataclasses.replace(
        point.disks["vda"], virtual_size=SOURCE_SIZE * 3)}))
    result = run_verify(store)
    assert len(result.problems) == 1, result.problems
    assert manifest_path(store) in result.problems[0] and "'vda'" in result.problems[0]
    assert "virtual size" in result.problems[0]


def test_damaged_layer_is_read_once_and_named_for_each_point(store, chain):
    base, top = chain
    store.publish_point(make_point([base], seq=1))
    store.publish_point(make_point([base, top], seq=2, point_id=SECOND))
    flip_byte(store.layer_path(UUID, base.id, "raw"), 0)
    result = run_verify(store)
    assert result.layers == 2
    first, second = result.problems
    assert first.startswith("restore point web/20260101-000000, disk vda: ") and "offset 0" in first
    assert second.startswith(f"restore point web/{SECOND}, disk vda: ")
    assert f"layer {base.id} is damaged (see restore point web/20260101-000000 disk vda)" in second


def test_one_point_only(store, chain):
    base, top = chain
    store.publish_point(make_point([base], seq=1))
    store.publish_point(make_point([top], seq=2, point_id=SECOND))
    assert run_verify(store, "web", "1").ok
    problem = one_problem(run_verify(store, "web", SECOND), SECOND)
    assert "stacks it on nothing" in problem


def test_unreadable_record_does_not_stop_the_other_checks(store, chain):
    base, top = chain
    store.publish_point(make_point([base, top], seq=1))
    write_stray(record_path(store, base.id), b"{")
    problems = run_verify(store).problems
    assert len(problems) == 1 and record_path(store, base.id) in problems[0]
