"""A backup directory someone tampered with: links leading outside it, special files,
broken or hostile documents, layers of another domain, manifests that contradict
the layer records.  fibackup refuses, names the file, and never reads or writes
outside the backup directory."""
import dataclasses
import json
import os
import shutil
import struct

import pytest

from fibackup.errors import CorruptStoreError, IntegrityError
from fibackup.fsutil import file_identity
from fibackup.store.layout import MARKER
from fibackup.store.repo import BackupStore
from tests.storelab import (BASE, OTHER_UUID, SOURCE_SIZE, TOP, UUID, foreign_layer,
                            make_point, make_source, manifest_path, record_path, store_layer,
                            with_entries, write_stray)

def rewrite_json(path, change):
    """Edit a stored JSON document in place (what a hand edit or damage does)."""
    with open(path) as handle:
        document = json.load(handle)
    change(document)
    os.chmod(path, 0o600)
    with open(path, "w") as handle:
        json.dump(document, handle)


def move_out(path, outside):
    """Move ``path`` outside the store and leave a symbolic link to it in its place:
    the content is intact, so only refusing the link keeps fibackup inside."""
    target = os.path.join(outside, os.path.basename(path))
    shutil.move(path, target)
    os.symlink(target, path)
    return target


@pytest.fixture
def outside(tmp_path):
    directory = tmp_path / "outside"
    directory.mkdir()
    return str(directory)


@pytest.fixture
def backed_up(store, source):
    """A store with one restore point of two layers (base, top)."""
    base = store_layer(store, source, BASE)
    top = store_layer(store, source, TOP, parent=base.id)
    store.publish_point(make_point([base, top]))
    return base, top


def reopened(store):
    """The same directory opened afresh (nothing cached)."""
    return BackupStore.open(store.root)


# -- links inside the backup directory ------------------------------------------

def test_symlinked_layer_image_is_never_read(store, backed_up, outside, tmp_path):
    base, _top = backed_up
    image = store.layer_path(UUID, base.id, "raw")
    move_out(image, outside)
    fresh = reopened(store)
    fresh.points(UUID)
    with pytest.raises(IntegrityError, match="symbolic link") as caught:
        fresh.restore_layer(UUID, base.id, str(tmp_path / "restored.raw"))
    assert image in str(caught.value)
    assert not (tmp_path / "restored.raw").exists()
    problems = fresh.check_layer(UUID, base.id)
    assert len(problems) == 1 and image in problems[0] and "symbolic link" in problems[0]
    assert base.id not in [layer.id for layer in fresh.stored_layers(UUID)]


def test_symlinked_layer_record_is_never_read(store, backed_up, outside):
    base, _top = backed_up
    record = record_path(store, base.id)
    move_out(record, outside)
    with pytest.raises(CorruptStoreError, match="symbolic link") as caught:
        reopened(store).layer_record(UUID, base.id)
    assert record in str(caught.value)
    assert base.id not in [layer.id for layer in reopened(store).stored_layers(UUID)]


@pytest.mark.parametrize("parts", [("layers",), ()], ids=["layers dir", "domain dir"])
def test_symlinked_directory_of_layers_is_refused(store, backed_up, outside, tmp_path, parts):
    base, _top = backed_up
    directory = os.path.join(store.domain_dir(UUID), *parts)
    move_out(directory, outside)
    fresh = reopened(store)
    with pytest.raises(CorruptStoreError, match="symbolic link") as caught:
        fresh.layer_record(UUID, base.id)
    assert directory in str(caught.value)
    with pytest.raises(CorruptStoreError, match="symbolic link"):
        fresh.stored_layers(UUID)                  # a backup refuses before its snapshot
    with pytest.raises(CorruptStoreError, match="symbolic link"):
        fresh.restore_layer(UUID, base.id, str(tmp_path / "restored.raw"))
    assert not (tmp_path / "restored.raw").exists()
    assert "symbolic link" in fresh.check_layer(UUID, base.id)[0]


@pytest.mark.parametrize("parts", [("points",), ()], ids=["points dir", "domain dir"])
def test_symlinked_directory_of_points_is_reported_and_hides_nothing_else(
        store, backed_up, outside, source, parts):
    other = foreign_layer(store, source)
    kept = store.publish_point(dataclasses.replace(make_point([other]), domain_uuid=OTHER_UUID))
    directory = os.path.join(store.domain_dir(UUID), *parts)
    move_out(directory, outside)
    problems = []
    assert reopened(store).all_points(problems) == [kept]
    assert len(problems) == 1 and directory in problems[0] and "symbolic link" in problems[0]
    with pytest.raises(CorruptStoreError, match="symbolic link"):
        reopened(store).points(UUID)


def test_symlinked_manifest_is_reported(store, backed_up, outside):
    manifest = manifest_path(store)
    move_out(manifest, outside)
    problems = []
    assert reopened(store).points(UUID, problems) == []
    assert len(problems) == 1 and manifest in problems[0] and "symbolic link" in problems[0]


def test_symlinked_domains_directory_is_refused(store, backed_up, outside):
    directory = os.path.join(store.root, "domains")
    move_out(directory, outside)
    with pytest.raises(CorruptStoreError, match="symbolic link") as caught:
        reopened(store).all_points([])
    assert directory in str(caught.value)


def test_symlinked_store_marker_is_refused(store, outside):
    move_out(os.path.join(store.root, MARKER), outside)
    with pytest.raises(CorruptStoreError, match="symbolic link"):
        BackupStore.open(store.root)
    with pytest.raises(CorruptStoreError, match="symbolic link"):
        BackupStore.open(store.root, create=True)


def test_nothing_is_written_through_a_symlinked_domain_directory(store, source, outside):
    os.makedirs(os.path.join(store.root, "domains"))
    os.symlink(outside, store.domain_dir(UUID))
    with pytest.raises(CorruptStoreError, match="symbolic link"):
        store_layer(store, source, BASE)
    with pytest.raises(CorruptStoreError, match="symbolic link"):
        store.publish_point(make_point([]))
    assert os.listdir(outside) == []


def test_special_files_are_refused_without_being_opened(store, backed_up, tmp_path):
    base, top = backed_up
    image = store.layer_path(UUID, base.id, "raw")
    os.unlink(image)
    os.mkfifo(image)                     # opening a FIFO for reading would block
    fresh = reopened(store)
    with pytest.raises(IntegrityError, match="not a regular file"):
        fresh.restore_layer(UUID, base.id, str(tmp_path / "restored.raw"))
    assert "not a regular file" in fresh.check_layer(UUID, base.id)[0]
    record = record_path(store, top.id)
    os.unlink(record)
    os.mkfifo(record)
    with pytest.raises(CorruptStoreError, match="not a regular file"):
        fresh.layer_record(UUID, top.id)


# -- broken and hostile documents -------------------------------------------------

@pytest.mark.parametrize("data", [b"", b'{"kind": "fibackup-la', b"\xff\xfe garbage",
                                  b"[" * 100000, b'{"size": ' + b"9" * 5000 + b"}"],
                         ids=["empty", "truncated", "not utf-8", "nested", "huge number"])
def test_unreadable_layer_record_is_named(store, backed_up, data):
    base, top = backed_up
    record = record_path(store, top.id)
    os.chmod(record, 0o600)
    write_stray(record, data)
    fresh = reopened(store)
    with pytest.raises(CorruptStoreError) as caught:
        fresh.layer_record(UUID, top.id)
    assert record in str(caught.value)
    assert fresh.check_layer(UUID, top.id) == [str(caught.value)]
    assert [layer.id for layer in fresh.stored_layers(UUID)] == [base.id]


@pytest.mark.parametrize("data", [b"", b'{"kind": "fibackup-store", "vers', b"[" * 100000,
                                  b"null"], ids=["empty", "truncated", "nested", "not an object"])
def test_unreadable_store_marker_is_named(store, data):
    marker = os.path.join(store.root, MARKER)
    os.chmod(marker, 0o600)
    write_stray(marker, data)
    with pytest.raises(CorruptStoreError) as caught:
        BackupStore.open(store.root)
    assert marker in str(caught.value)


@pytest.mark.parametrize("data", [b"", b'{"kind": "fibackup-point", "ver', b"[" * 100000],
                         ids=["empty", "truncated", "nested"])
def test_unreadable_manifest_hides_no_other_point(store, source, data):
    layer = store_layer(store, source, BASE)
    store.publish_point(make_point([layer], seq=1))
    second = store.publish_point(make_point([layer], seq=2, point_id="20260102-000000"))
    write_stray(manifest_path(store, 1), data)
    problems = []
    assert reopened(store).points(UUID, problems) == [second]
    assert len(problems) == 1 and manifest_path(store, 1) in problems[0]


@pytest.mark.parametrize("edit", [
    lambda d: d["disks"]["vda"]["layers"][0].__setitem__("id", "../../../../etc/passwd"),
    lambda d: d["disks"]["vda"]["layers"][0].__setitem__("id", "/etc/passwd"),
    lambda d: d["disks"]["vda"]["layers"][0].__setitem__("id", "a/b"),
    lambda d: d["disks"]["vda"]["layers"][0].__setitem__("image_format", "../raw"),
    lambda d: d["disks"]["vda"]["layers"][0].__setitem__("digest", "../" * 10 + "aa"),
    lambda d: d["disks"].__setitem__("../../escape", d["disks"].pop("vda")),
    lambda d: d["disks"].__setitem__("/tmp/x", d["disks"].pop("vda")),
    lambda d: d.__setitem__("id", "../20260101-000000"),
    lambda d: d["domain"].__setitem__("uuid", "../" + UUID),
    lambda d: d.__setitem__("seq", 0),
    lambda d: d["disks"]["vda"]["layers"][0].__setitem__("size", -1),
    lambda d: d["disks"]["vda"].__setitem__("virtual_size", SOURCE_SIZE * 2),
], ids=["dotdot layer", "absolute layer", "slash layer", "format", "digest", "dotdot target",
        "absolute target", "point id", "uuid", "seq 0", "negative size", "disk size"])
def test_hostile_manifest_is_refused_and_named(store, backed_up, edit):
    manifest = manifest_path(store)
    rewrite_json(manifest, edit)
    problems = []
    assert reopened(store).points(UUID, problems) == []
    assert len(problems) == 1 and manifest in problems[0]


@pytest.mark.parametrize("edit", [
    lambda d: d.__setitem__("id", "../../x"),
    lambda d: d.__setitem__("id", "/etc/passwd"),
    lambda d: d.__setitem__("parent", "../" + BASE),
    lambda d: d.__setitem__("image_format", "raw/../../x"),
    lambda d: d.__setitem__("disk", "../vda"),
], ids=["dotdot id", "absolute id", "parent", "format", "disk"])
def test_hostile_layer_record_is_refused_and_named(store, backed_up, edit):
    _base, top = backed_up
    record = record_path(store, top.id)
    rewrite_json(record, edit)
    with pytest.raises(CorruptStoreError) as caught:
        reopened(store).layer_record(UUID, top.id)
    assert record in str(caught.value)


@pytest.mark.parametrize("layer_id", ["../../../etc/passwd", "/etc/passwd", "a/b", ".hidden"])
def test_invalid_layer_id_never_becomes_a_path(store, layer_id, tmp_path):
    with pytest.raises(CorruptStoreError, match="invalid layer id"):
        store.layer_record(UUID, layer_id)
    assert store.check_layer(UUID, layer_id)[0].startswith("invalid layer id")
    with pytest.raises(CorruptStoreError, match="invalid layer id"):
        store.restore_layer(UUID, layer_id, str(tmp_path / "x"))


# -- layers of another domain ------------------------------------------------------

def test_layer_of_another_domain_is_not_restored(store, source, tmp_path):
    foreign = foreign_layer(store, source)
    store.publish_point(make_point([foreign]))            # lists a layer this domain lacks
    fresh = reopened(store)
    [point] = fresh.points(UUID)
    with pytest.raises(CorruptStoreError, match="missing") as caught:
        fresh.restore_layer(UUID, point.disks["vda"].layers[0].id, str(tmp_path / "r.raw"))
    assert store.domain_dir(UUID) in str(caught.value)
    assert not (tmp_path / "r.raw").exists()


def test_record_copied_from_another_domain_without_its_image_is_refused(store, source, tmp_path):
    foreign = foreign_layer(store, source)
    os.makedirs(os.path.join(store.domain_dir(UUID), "layers"))
    shutil.copy(os.path.join(store.domain_dir(OTHER_UUID), "layers", f"{BASE}.json"),
                record_path(store, BASE))
    store.publish_point(make_point([foreign]))
    fresh = reopened(store)
    fresh.points(UUID)
    with pytest.raises(IntegrityError, match="missing"):
        fresh.restore_layer(UUID, BASE, str(tmp_path / "r.raw"))
    assert "missing" in fresh.check_layer(UUID, BASE)[0]


# -- manifests that contradict the layer records ----------------------------------

@pytest.mark.parametrize("change", [{"image_format": "qcow2"}, {"virtual_size": SOURCE_SIZE * 2},
                                    {"digest": "f" * 32}, {"size": SOURCE_SIZE + 1}],
                         ids=["format", "virtual size", "digest", "size"])
def test_manifest_entry_contradicting_the_record_is_not_restored(store, source, tmp_path, change):
    base = store_layer(store, source, BASE)
    point = make_point([base])
    entry = dataclasses.replace(point.disks["vda"].layers[0], **change)
    store.publish_point(with_entries(point, entry))
    fresh = reopened(store)
    assert len(fresh.points(UUID)) == 1
    field = next(iter(change)).replace("_", " ")
    with pytest.raises(IntegrityError, match=field) as caught:
        fresh.restore_layer(UUID, BASE, str(tmp_path / "r"))
    assert manifest_path(store) in str(caught.value)
    assert not (tmp_path / "r").exists()
    with pytest.raises(IntegrityError, match=field):         # the entry given directly
        reopened(store).restore_layer(UUID, BASE, str(tmp_path / "r"), expected=entry)


def test_manifest_listing_a_layer_unlike_the_others_is_set_aside(store, source, tmp_path):
    base = store_layer(store, source, BASE)
    good = store.publish_point(make_point([base], seq=1))
    bad = make_point([base], seq=2, point_id="20260102-000000")
    store.publish_point(with_entries(bad, dataclasses.replace(bad.disks["vda"].layers[0],
                                                              digest="e" * 32)))
    fresh = reopened(store)
    problems = []
    assert fresh.points(UUID, problems) == [good]
    assert len(problems) == 1
    assert manifest_path(store, 2) in problems[0] and "disk vda" in problems[0]
    assert "digest" in problems[0]
    fresh.restore_layer(UUID, BASE, str(tmp_path / "r.raw"))    # the good point restores


# -- the disk size a layer presents -----------------------------------------------

def qcow2_like(path, virtual_size):
    """A file with a qcow2 header stating ``virtual_size`` (all fibackup reads of it)."""
    header = b"QFI\xfb" + struct.pack(">I", 3) + bytes(16) + struct.pack(">Q", virtual_size)
    return make_source(path, ((0, header), (SOURCE_SIZE - 8, b"trailer!")))


@pytest.mark.parametrize("recorded, stated, image_format, error", [
    (SOURCE_SIZE, SOURCE_SIZE, "qcow2", None),
    (SOURCE_SIZE * 4, SOURCE_SIZE * 4, "qcow2", None),
    (SOURCE_SIZE * 4, SOURCE_SIZE * 2, "qcow2", "presents a disk of"),
    (SOURCE_SIZE, None, "qcow2", "not a qcow2 image"),
    (SOURCE_SIZE, None, "raw", None),
    (SOURCE_SIZE + 512, None, "raw", "raw image of"),
])
def test_restored_disk_size_is_what_the_image_presents(store, tmp_path, recorded, stated,
                                                        image_format, error):
    path = tmp_path / "image"
    source = qcow2_like(path, stated) if stated is not None else make_source(path)
    store.store_layer(UUID, BASE, source, image_format, virtual_size=recorded, parent=None,
                      disk="vda", identity=file_identity(source))
    destination = tmp_path / "restored"
    if error is None:
        store.restore_layer(UUID, BASE, str(destination))
        assert store.check_layer(UUID, BASE) == []
        return
    with pytest.raises(IntegrityError, match=error):
        store.restore_layer(UUID, BASE, str(destination))
    assert not destination.exists()
    assert error in store.check_layer(UUID, BASE)[0]
