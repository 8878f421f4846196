"""Names of overlays, tags and layer ids (fibackup.model.naming)."""
import datetime as dt
import os

import pytest

from fibackup.model import naming
from fibackup.store.format import is_valid_id


@pytest.mark.parametrize("filename, stem", [
    ("disk.qcow2", "disk"),
    ("disk.bimg-20260101-000000", "disk"),
    ("disk.bimg-20260101-000000-2", "disk"),
    ("my.disk.img", "my.disk"),
    ("disk", "disk"),
    ("vm:disk.qcow2", "vm_disk"),
    ("a:b:c", "a_b_c"),
    ("/var/lib/libvirt/my images/disk one.qcow2", "disk one"),
    ("/var/lib/libvirt/images/web.bimg-20260101-000000", "web"),
])
def test_image_stem(filename, stem):
    assert naming.image_stem(filename) == stem


def test_image_stem_of_overlay_of_overlay_is_original_stem():
    first = naming.overlay_path("/images/disk.qcow2", "20260101-000000")
    second = naming.overlay_path(first, "20260102-000000")
    assert os.path.basename(second) == "disk.bimg-20260102-000000"


def test_image_stem_never_empty():
    assert naming.image_stem("") == "disk"
    assert naming.image_stem("/some/dir/") == "disk"


def test_overlay_path_keeps_directory():
    path = naming.overlay_path("/var/lib/libvirt/images/disk.qcow2", "20260101-000000")
    assert path == "/var/lib/libvirt/images/disk.bimg-20260101-000000"


def test_overlay_path_relative_image_stays_relative():
    assert naming.overlay_path("disk.raw", "20260101-000000") == "disk.bimg-20260101-000000"


@pytest.mark.parametrize("image", [
    "/images/vm:1/disk:a.qcow2",
    "/images/a:b:c",
    "/images/with space/x:y.img",
])
def test_overlay_name_never_contains_colon(image):
    path = naming.overlay_path(image, "20260101-000000")
    assert os.path.dirname(path) == os.path.dirname(image)
    assert ":" not in os.path.basename(path)


def test_unique_tag_free_base():
    assert naming.unique_tag("20260101-000000", lambda tag: False) == "20260101-000000"


def test_unique_tag_counts_from_two():
    taken = {"base"}
    assert naming.unique_tag("base", taken.__contains__) == "base-2"


def test_unique_tag_skips_taken_suffixes():
    taken = {"base", "base-2"}
    assert naming.unique_tag("base", taken.__contains__) == "base-3"


def test_timestamp_tag_naive():
    assert naming.timestamp_tag(dt.datetime(2026, 1, 2, 3, 4, 5)) == "20260102-030405"


def test_timestamp_tag_converts_aware_to_utc():
    plus_two = dt.timezone(dt.timedelta(hours=2))
    when = dt.datetime(2026, 1, 1, 1, 30, 0, tzinfo=plus_two)
    assert naming.timestamp_tag(when) == "20251231-233000"


def test_timestamp_tag_utc_unchanged():
    when = dt.datetime(2026, 6, 30, 23, 59, 59, tzinfo=dt.timezone.utc)
    assert naming.timestamp_tag(when) == "20260630-235959"


def test_timestamp_tag_is_a_tag_and_has_no_colon():
    tag = naming.timestamp_tag(dt.datetime.now(dt.timezone.utc))
    assert naming.is_tag(tag)
    assert ":" not in tag


@pytest.mark.parametrize("text", ["20260101-000000", "20260101-000000-2", "20260101-000000-15"])
def test_is_tag_accepts(text):
    assert naming.is_tag(text)


@pytest.mark.parametrize("text", [
    "", "latest", "3", "2026-01-01", "20260101-00000", "20260101-000000-", "20260101-000000-x",
    "x20260101-000000", "20260101T000000",
])
def test_is_tag_rejects(text):
    assert not naming.is_tag(text)


def test_new_layer_id_is_unique():
    ids = {naming.new_layer_id("20260101-000000", "vda", 0) for _ in range(500)}
    assert len(ids) == 500


def test_new_layer_id_shape():
    layer_id = naming.new_layer_id("20260101-000000", "vda", 7)
    assert layer_id.startswith("20260101-000000-vda-007-")
    assert is_valid_id(layer_id)


@pytest.mark.parametrize("target", ["vda", "sda", "hdc", "../etc", "a/b", "x:y", ".hidden", "with space", ""])
def test_new_layer_id_is_safe(target):
    layer_id = naming.new_layer_id("20260101-000000", target, 1)
    assert "/" not in layer_id
    assert ":" not in layer_id
    assert not layer_id.startswith(".")
    assert is_valid_id(layer_id)


def test_new_layer_id_is_valid_for_target_with_double_dot():
    assert is_valid_id(naming.new_layer_id("20260101-000000", "a..b", 0))


def test_safe_component():
    assert naming.safe_component("vd/a:b c") == "vd_a_b_c"
    assert naming.safe_component("...x") == "x"
    assert naming.safe_component("") == "_"
    assert naming.safe_component("...") == "_"


def test_overlay_paths_never_collide_for_disks_sharing_a_stem():
    paths = naming.overlay_paths({"vda": "/img/vm.qcow2", "vdb": "/img/vm.img",
                                  "vdc": "/other/vm.qcow2"}, "20260101-000000")
    assert len(set(paths.values())) == 3
    assert paths["vdc"] == "/other/vm.bimg-20260101-000000"
    assert paths["vda"] == "/img/vm.vda.bimg-20260101-000000"
    # the next snapshot of such an overlay keeps a distinct stem
    again = naming.overlay_paths({"vda": paths["vda"], "vdb": paths["vdb"]}, "20260102-000000")
    assert again == {"vda": "/img/vm.vda.bimg-20260102-000000",
                     "vdb": "/img/vm.vdb.bimg-20260102-000000"}
