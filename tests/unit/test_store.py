"""The backup directory on disk (fibackup.store.repo), without libvirt."""
import json
import os
import stat

import pytest

from fibackup.errors import (CorruptStoreError, IntegrityError, StoreError,
                             StoreUnavailableError)
from fibackup.fsutil import file_identity
from fibackup.store import format as fmt
from fibackup.store.chunks import CHUNK_SIZE, scan_file
from fibackup.store.layout import MARKER
from fibackup.store.repo import BackupStore
from tests.storelab import (MiB, OTHER_UUID, SOURCE_SIZE, UUID, all_files, flip_byte,
                            make_point, make_source, store_layer, write_stray)


@pytest.fixture(autouse=True)
def usual_umask():
    """A typical umask, so that permission checks mean something."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# -- opening ---------------------------------------------------------------------

def test_create_new_directory_writes_marker(tmp_path):
    root = tmp_path / "backup"
    store = BackupStore.open(str(root), create=True)
    document = json.loads((root / MARKER).read_text())
    assert document["kind"] == "fibackup-store"
    assert document["version"] == fmt.FORMAT_VERSION
    assert fmt.is_valid_uuid(document["store_id"])
    assert store.store_id == document["store_id"]
    assert store.root == str(root)


def test_create_in_existing_empty_directory(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    store = BackupStore.open(str(root), create=True)
    assert (root / MARKER).exists()
    assert fmt.is_valid_uuid(store.store_id)


def test_reopen_keeps_store_id(tmp_path):
    first = BackupStore.open(str(tmp_path / "backup"), create=True)
    assert BackupStore.open(str(tmp_path / "backup")).store_id == first.store_id
    assert BackupStore.open(str(tmp_path / "backup"), create=True).store_id == first.store_id


def test_two_stores_have_different_ids(tmp_path):
    one = BackupStore.open(str(tmp_path / "one"), create=True)
    two = BackupStore.open(str(tmp_path / "two"), create=True)
    assert one.store_id != two.store_id


def test_missing_directory_without_create(tmp_path):
    with pytest.raises(StoreUnavailableError, match="does not exist"):
        BackupStore.open(str(tmp_path / "nowhere"))
    assert not (tmp_path / "nowhere").exists()


def test_missing_parent_with_create(tmp_path):
    with pytest.raises(StoreUnavailableError):
        BackupStore.open(str(tmp_path / "not-mounted" / "backup"), create=True)


def test_existing_dir_without_marker_and_without_create(tmp_path):
    with pytest.raises(StoreUnavailableError, match=MARKER):
        BackupStore.open(str(tmp_path))


def test_non_empty_non_store_directory_is_refused(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    (root / "holiday.jpg").write_bytes(b"jpeg")
    with pytest.raises(StoreUnavailableError, match="not empty"):
        BackupStore.open(str(root), create=True)
    assert sorted(os.listdir(root)) == ["holiday.jpg"]


def test_path_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"x")
    with pytest.raises(StoreUnavailableError):
        BackupStore.open(str(path), create=True)


def test_damaged_marker(tmp_path):
    root = tmp_path / "backup"
    BackupStore.open(str(root), create=True)
    (root / MARKER).write_text('{"kind": "fibackup-store", "version": 1, "store_id": "x"}')
    with pytest.raises(StoreError):
        BackupStore.open(str(root))


def test_marker_of_future_version(tmp_path):
    root = tmp_path / "backup"
    BackupStore.open(str(root), create=True)
    document = json.loads((root / MARKER).read_text())
    document["version"] = 2
    (root / MARKER).write_text(json.dumps(document))
    with pytest.raises(CorruptStoreError, match="upgrade"):
        BackupStore.open(str(root))


def test_check_writable(store):
    store.check_writable()
    assert os.listdir(store.root) == [MARKER]


def test_invalid_uuid_or_layer_id_never_makes_a_path(store):
    with pytest.raises(CorruptStoreError):
        store.domain_dir("../../etc")
    with pytest.raises(CorruptStoreError):
        store.layer_path(UUID, "../x", "raw")
    with pytest.raises(CorruptStoreError):
        store.layer_path(UUID, "x", "vmdk")


# -- layers and points -------------------------------------------------------

def test_store_layer_copies_exactly_and_records_it(store, source):
    layer = store_layer(store, source)
    path = store.layer_path(UUID, layer.id, "raw")
    with open(path, "rb") as stored, open(source, "rb") as original:
        assert stored.read() == original.read()
    assert layer.size == SOURCE_SIZE
    assert layer.digest == scan_file(source).chunks.digest
    assert layer.source == file_identity(source)
    assert layer.parent is None and layer.disk == "vda"
    record = store.layer_record(UUID, layer.id)
    assert record.layer == layer
    assert record.chunks == scan_file(source).chunks


def test_stored_layer_keeps_holes(store, source):
    layer = store_layer(store, source)
    path = store.layer_path(UUID, layer.id, "raw")
    assert os.stat(path).st_blocks * 512 < MiB


def test_store_layer_never_overwrites(store, source, tmp_path):
    layer = store_layer(store, source)
    other = make_source(tmp_path / "other.img", ((0, b"other"),))
    with pytest.raises(FileExistsError):
        store_layer(store, other, layer_id=layer.id)
    assert store.check_layer(UUID, layer.id) == []
    assert not [p for p, _ in all_files(store.root) if ".partial" in os.path.basename(p)]


def test_publish_and_read_points(store, source):
    base = store_layer(store, source)
    top = store_layer(store, source, layer_id="20260102-000000-vda-001-bbbbbb", parent=base.id)
    point = make_point([base, top])
    published = store.publish_point(point)
    assert published == point
    assert store.points(UUID) == [point]
    assert store.all_points() == [point]
    assert store.domain_uuids() == [UUID]
    assert store.next_seq(UUID) == 2
    assert list(store.iter_point_layers(point)) == [("vda", base.id), ("vda", top.id)]


def test_no_points_yet(store):
    assert store.points(UUID) == []
    assert store.next_seq(UUID) == 1
    assert store.all_points() == []
    assert store.stored_layers(UUID) == []


def test_points_are_ordered_by_seq(store, source):
    layer = store_layer(store, source)
    for seq, point_id in ((3, "20260103-000000"), (1, "20260101-000000"), (2, "20260102-000000")):
        store.publish_point(make_point([layer], seq=seq, point_id=point_id))
    assert [p.seq for p in store.points(UUID)] == [1, 2, 3]


def test_publish_point_with_used_seq_takes_next(store, source):
    layer = store_layer(store, source)
    first = store.publish_point(make_point([layer], seq=1, point_id="20260101-000000"))
    second = store.publish_point(make_point([layer], seq=1, point_id="20260102-000000"))
    third = store.publish_point(make_point([layer], seq=1, point_id="20260103-000000"))
    assert (first.seq, second.seq, third.seq) == (1, 2, 3)
    points = store.points(UUID)
    assert [(p.seq, p.id) for p in points] == [
        (1, "20260101-000000"), (2, "20260102-000000"), (3, "20260103-000000")]


def test_stored_layers_lists_complete_layers(store, source):
    base = store_layer(store, source)
    top = store_layer(store, source, layer_id="20260102-000000-vda-001-bbbbbb", parent=base.id)
    assert sorted(store.stored_layers(UUID), key=lambda l: l.id) == [base, top]


def test_stored_layers_ignores_missing_image(store, source):
    base = store_layer(store, source)
    top = store_layer(store, source, layer_id="20260102-000000-vda-001-bbbbbb", parent=base.id)
    os.unlink(store.layer_path(UUID, base.id, "raw"))
    assert store.stored_layers(UUID) == [top]


def test_stored_layers_ignores_image_of_wrong_size(store, source):
    base = store_layer(store, source)
    top = store_layer(store, source, layer_id="20260102-000000-vda-001-bbbbbb", parent=base.id)
    path = store.layer_path(UUID, top.id, "raw")
    os.chmod(path, 0o600)
    os.truncate(path, SOURCE_SIZE - 512)
    assert store.stored_layers(UUID) == [base]


def test_stored_layers_ignores_damaged_record_and_hidden_files(store, source):
    base = store_layer(store, source)
    layers_dir = os.path.dirname(store.layer_path(UUID, base.id, "raw"))
    write_stray(os.path.join(layers_dir, "broken-layer.json"), b'{"kind": "fibackup-layer", "vers')
    write_stray(os.path.join(layers_dir, "broken-layer.raw"), b"x")
    write_stray(os.path.join(layers_dir, ".partial-thing.json"), b"{}")
    assert store.stored_layers(UUID) == [base]


def test_record_describing_another_layer_is_corrupt(store, source):
    base = store_layer(store, source)
    layers_dir = os.path.dirname(store.layer_path(UUID, base.id, "raw"))
    os.link(os.path.join(layers_dir, f"{base.id}.json"), os.path.join(layers_dir, "impostor.json"))
    with pytest.raises(CorruptStoreError, match="impostor"):
        store.layer_record(UUID, "impostor")


def test_missing_record_is_corrupt(store):
    with pytest.raises(CorruptStoreError, match="missing"):
        store.layer_record(UUID, "20260101-000000-vda-000-ffffff")


def test_check_layer_intact(store, source):
    layer = store_layer(store, source)
    assert store.check_layer(UUID, layer.id) == []


def test_check_layer_finds_flipped_byte(store, source):
    layer = store_layer(store, source)
    flip_byte(store.layer_path(UUID, layer.id, "raw"), 5 * MiB + 100)
    problems = store.check_layer(UUID, layer.id)
    assert len(problems) == 1
    assert str(5 * MiB // CHUNK_SIZE * CHUNK_SIZE) in problems[0]
    assert "damaged" in problems[0]


def test_check_layer_missing_image(store, source):
    layer = store_layer(store, source)
    os.unlink(store.layer_path(UUID, layer.id, "raw"))
    problems = store.check_layer(UUID, layer.id)
    assert len(problems) == 1 and "missing" in problems[0]


def test_check_layer_wrong_size(store, source):
    layer = store_layer(store, source)
    path = store.layer_path(UUID, layer.id, "raw")
    os.chmod(path, 0o600)
    os.truncate(path, SOURCE_SIZE + 4096)
    problems = store.check_layer(UUID, layer.id)
    assert any("size" in problem for problem in problems)


def test_check_layer_damaged_record(store, source):
    layer = store_layer(store, source)
    record = os.path.join(os.path.dirname(store.layer_path(UUID, layer.id, "raw")),
                          f"{layer.id}.json")
    os.chmod(record, 0o600)
    with open(record, "r+b") as handle:
        handle.truncate(20)
    problems = store.check_layer(UUID, layer.id)
    assert len(problems) == 1 and record in problems[0]


def test_restore_layer_gives_identical_sparse_copy(store, source, tmp_path):
    layer = store_layer(store, source)
    destination = tmp_path / "restored.img"
    record = store.restore_layer(UUID, layer.id, str(destination))
    assert record.layer == layer
    with open(source, "rb") as original:
        assert destination.read_bytes() == original.read()
    assert os.stat(destination).st_blocks * 512 < MiB


def test_restore_damaged_layer_raises_and_leaves_nothing(store, source, tmp_path):
    layer = store_layer(store, source)
    flip_byte(store.layer_path(UUID, layer.id, "raw"), SOURCE_SIZE - 3)
    destination = tmp_path / "restored.img"
    with pytest.raises(IntegrityError, match="damaged"):
        store.restore_layer(UUID, layer.id, str(destination))
    assert not destination.exists()


def test_restore_truncated_layer_raises_and_leaves_nothing(store, source, tmp_path):
    layer = store_layer(store, source)
    path = store.layer_path(UUID, layer.id, "raw")
    os.chmod(path, 0o600)
    os.truncate(path, SOURCE_SIZE // 2)
    destination = tmp_path / "restored.img"
    with pytest.raises(IntegrityError):
        store.restore_layer(UUID, layer.id, str(destination))
    assert not destination.exists()


def test_restore_missing_layer_raises(store, source, tmp_path):
    layer = store_layer(store, source)
    os.unlink(store.layer_path(UUID, layer.id, "raw"))
    destination = tmp_path / "restored.img"
    with pytest.raises(IntegrityError, match="missing"):
        store.restore_layer(UUID, layer.id, str(destination))
    assert not destination.exists()


def test_restore_never_overwrites_destination(store, source, tmp_path):
    layer = store_layer(store, source)
    destination = tmp_path / "restored.img"
    destination.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        store.restore_layer(UUID, layer.id, str(destination))
    assert destination.read_bytes() == b"keep me"


def test_restore_into_missing_directory_does_not_blame_the_store(store, source, tmp_path):
    layer = store_layer(store, source)
    with pytest.raises(FileNotFoundError):
        store.restore_layer(UUID, layer.id, str(tmp_path / "no-such-dir" / "restored.img"))


def test_manifest_renamed_to_other_seq_is_corrupt(store, source):
    layer = store_layer(store, source)
    store.publish_point(make_point([layer], seq=1))
    points_dir = os.path.join(store.domain_dir(UUID), "points")
    os.rename(os.path.join(points_dir, "00000001.json"), os.path.join(points_dir, "00000002.json"))
    with pytest.raises(CorruptStoreError, match="00000002.json"):
        store.points(UUID)


def test_manifest_moved_to_other_domain_is_corrupt(store, source):
    layer = store_layer(store, source)
    store.publish_point(make_point([layer], seq=1))
    other = os.path.join(store.domain_dir(OTHER_UUID), "points")
    os.makedirs(other)
    os.rename(os.path.join(store.domain_dir(UUID), "points", "00000001.json"),
              os.path.join(other, "00000001.json"))
    with pytest.raises(CorruptStoreError):
        store.points(OTHER_UUID)


def test_damaged_manifest_is_corrupt(store, source):
    layer = store_layer(store, source)
    store.publish_point(make_point([layer], seq=1))
    path = os.path.join(store.domain_dir(UUID), "points", "00000001.json")
    os.chmod(path, 0o600)
    with open(path, "r+b") as handle:
        handle.truncate(30)
    with pytest.raises(CorruptStoreError, match="00000001.json"):
        store.points(UUID)


def test_hidden_and_foreign_files_in_points_dir_are_ignored(store, source):
    layer = store_layer(store, source)
    point = store.publish_point(make_point([layer], seq=1))
    points_dir = os.path.join(store.domain_dir(UUID), "points")
    write_stray(os.path.join(points_dir, ".00000002.json.partial-1234"), b"half a manif")
    write_stray(os.path.join(points_dir, "README.txt"), b"notes")
    assert store.points(UUID) == [point]


def test_non_uuid_directories_are_not_domains(store, source):
    store_layer(store, source)
    os.makedirs(os.path.join(store.root, "domains", "lost+found"))
    assert store.domain_uuids() == [UUID]


def test_no_partial_file_left_after_success(store, source):
    base = store_layer(store, source)
    store_layer(store, source, layer_id="20260102-000000-vda-001-bbbbbb", parent=base.id)
    store.publish_point(make_point([base], seq=1))
    store.publish_point(make_point([base], seq=1, point_id="20260102-000000"))
    names = [os.path.basename(path) for path, _ in all_files(store.root)]
    assert names
    assert not [name for name in names if ".partial" in name or name.startswith(".")]


def test_files_are_private(store, source):
    base = store_layer(store, source)
    store.publish_point(make_point([base], seq=1))
    files = [path for path, is_dir in all_files(store.root) if not is_dir]
    assert len(files) == 4  # marker, layer image, layer record, manifest
    for path in files:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


def test_all_store_directories_are_private(store, source):
    base = store_layer(store, source)
    store.publish_point(make_point([base], seq=1))
    dirs = [path for path, is_dir in all_files(store.root) if is_dir]
    assert len(dirs) == 4  # domains, <uuid>, layers, points
    for path in [store.root, *dirs]:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700, path
