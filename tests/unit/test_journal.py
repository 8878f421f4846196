"""The intent journal, the fault switch and the store tidy-up (no libvirt)."""
import json
import os
import stat

import pytest

from fibackup import faults
from fibackup.errors import CorruptStoreError
from fibackup.host import journal as journals
from fibackup.host.journal import ALL_STEPS, STEPS, Journal
from fibackup.store.tidy import tidy_domain
from tests.storelab import UUID, make_point, store_layer, write_stray

pytestmark = pytest.mark.usefixtures("state_dir")     # tests/unit/conftest.py


def test_journal_records_each_step_before_and_after():
    journal = Journal(UUID, "consolidate", "web", {"method": "active"}).begin()
    step = journal.start("consolidate.job", disk="vda", before=["a", "b"])
    loaded = journals.load(UUID)
    assert loaded is not None and loaded.command == "consolidate"
    assert [(s.name, s.status) for s in loaded.steps] == [("consolidate.job", "started")]
    assert loaded.options == {"method": "active"} and loaded.open_steps()[0].data["disk"] == "vda"
    journal.done(step, outcome="merged")
    loaded = journals.load(UUID)
    assert loaded.steps[0].status == "done" and loaded.steps[0].data["outcome"] == "merged"
    assert loaded.last("consolidate.job") is not None and not loaded.open_steps()
    journal.end()
    assert journals.load(UUID) is None


def test_journal_file_and_directory_are_private(state_dir):
    old = os.umask(0)
    try:
        journal = Journal(UUID, "snapshot", "web").begin()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(journal.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(journal.path)).st_mode) == 0o700


@pytest.mark.parametrize("content", [b"{", b"[]", b'{"kind": "fibackup-journal", "version": 9}',
                                     b'{"kind": "fibackup-journal", "version": 1}'])
def test_damaged_journal_is_named_never_guessed(content):
    journal = Journal(UUID, "snapshot", "web").begin()
    with open(journal.path, "wb") as handle:
        handle.write(content)
    with pytest.raises(CorruptStoreError, match="journal"):
        journals.load(UUID)


def test_unknown_step_names_are_a_programming_error():
    journal = Journal(UUID, "snapshot", "web").begin()
    with pytest.raises(AssertionError):
        journal.start("snapshot.tkae")


def test_every_command_has_steps_and_names_are_unique():
    names = [name for steps in STEPS.values() for name in steps]
    assert len(names) == len(set(names)) == len(ALL_STEPS)
    assert set(STEPS) == {"snapshot", "consolidate", "restore", "prune", "finalize"}


def test_restore_journals_are_listed_apart():
    Journal(UUID, "snapshot", "web").begin()
    key = journals.restore_key()
    Journal(key, "restore", "web", {"staging": "/x/.fibackup-restore-1"}).begin()
    assert [journal.key for journal in journals.restore_journals()] == [key]


def test_fault_switch_is_inert_unless_named(monkeypatch):
    calls = []
    progress = calls.append
    assert faults.counting(progress) is progress
    faults.point("backup.copy")                  # no FIBACKUP_FAULT: nothing happens
    monkeypatch.setenv(faults.ENV, "backup.publish")
    faults.point("backup.copy")                  # another step: nothing happens
    monkeypatch.setenv(faults.ENV, "copy-bytes:1000")
    wrapped = faults.counting(progress)
    assert wrapped is not progress
    wrapped(10)
    assert calls == [10]


def test_tidy_removes_debris_and_keeps_every_listed_or_complete_layer(store, source):
    listed = store_layer(store, source, "20260101-000000-vda-000-aaaaaa")
    store.publish_point(make_point([listed]))
    spare = store_layer(store, source, "20260102-000000-vda-000-bbbbbb")
    layers = os.path.join(store.domain_dir(UUID), "layers")
    points = os.path.join(store.domain_dir(UUID), "points")
    debris = [os.path.join(layers, ".20260103-000000-vda-000-cccccc.raw.partial-1a2b3c4d"),
              os.path.join(layers, "20260103-000000-vda-000-dddddd.raw"),       # no record
              os.path.join(layers, "20260103-000000-vda-000-eeeeee.json"),      # no image
              os.path.join(points, ".00000002.json.partial-5e6f7a8b")]
    for path in debris:
        write_stray(path, b"x")
    removed = tidy_domain(store, UUID)
    assert sorted(removed) == sorted(debris)
    assert all(not os.path.exists(path) for path in debris)
    for layer in (listed, spare):
        assert os.path.exists(store.layer_path(UUID, layer.id, "raw"))
    assert [point.seq for point in store.points(UUID)] == [1]


def test_tidy_keeps_a_listed_layer_whose_image_is_missing(store, source):
    layer = store_layer(store, source)
    store.publish_point(make_point([layer]))
    os.unlink(store.layer_path(UUID, layer.id, "raw"))
    assert tidy_domain(store, UUID) == []
    record = os.path.join(store.domain_dir(UUID), "layers", f"{layer.id}.json")
    assert os.path.exists(record), "damage is for verify to report, not for tidy to erase"


def test_tidy_removes_only_partial_files_while_a_manifest_is_unreadable(store, source):
    layer = store_layer(store, source)
    store.publish_point(make_point([layer]))
    orphan = os.path.join(store.domain_dir(UUID), "layers", "20260103-000000-vda-000-dddddd.raw")
    write_stray(orphan, b"x")
    with open(os.path.join(store.domain_dir(UUID), "points", "00000001.json"), "w") as handle:
        json.dump({"kind": "fibackup-point"}, handle)
    assert tidy_domain(store, UUID) == []
    assert os.path.exists(orphan)


def _published(tmp_path, names, existed=()):
    """A restore journal that published ``names`` into tmp_path/to (no define step)."""
    from fibackup.fsutil import file_stamp as file_key
    destination = tmp_path / "to"
    staging = destination / ".fibackup-restore-1"
    staging.mkdir(parents=True)
    for name in existed:
        (destination / name).write_bytes(b"the user's own file")
    files = {}
    for name in names:
        (destination / name).write_bytes(b"restored") if name not in existed else \
            (destination / name).write_bytes(b"restored over the user's file")
        files[str(destination / name)] = list(file_key(str(destination / name)))
    journal = Journal(journals.restore_key(), "restore", "web",
                      {"staging": str(staging)}).begin()
    journal.start("restore.publish", files=files,
                  existed=[str(destination / name) for name in existed])
    return journal, destination, staging


def test_undo_restore_removes_what_it_published_and_its_staging(tmp_path):
    from fibackup.commands.recovery.restore import undo_restore
    from fibackup.report import Reporter
    journal, destination, staging = _published(tmp_path, ["vda.qcow2", "vda-00.qcow2"])
    actions = undo_restore(None, journal, Reporter(quiet=True))
    assert sorted(os.listdir(destination)) == [] and not staging.exists()
    assert len(actions) == 3


def test_undo_restore_never_removes_a_name_that_existed_or_a_file_since_replaced(tmp_path):
    from fibackup.commands.recovery.restore import undo_restore
    from fibackup.report import Reporter
    journal, destination, _staging = _published(tmp_path, ["vda.qcow2", "vdb.qcow2"],
                                                existed=["vda.qcow2"])
    os.unlink(destination / "vdb.qcow2")
    (destination / "vdb.qcow2").write_bytes(b"someone else's, written after the crash")
    undo_restore(None, journal, Reporter(quiet=True))
    assert sorted(os.listdir(destination)) == ["vda.qcow2", "vdb.qcow2"]


def test_undo_restore_needs_libvirt_when_the_define_step_began(tmp_path):
    from fibackup.commands.recovery.restore import undo_restore
    from fibackup.report import Reporter
    journal, destination, _staging = _published(tmp_path, ["vda.qcow2"])
    journal.done(journal.steps[-1])
    journal.start("restore.define")
    assert undo_restore(None, journal, Reporter(quiet=True)) is None
    assert "vda.qcow2" in os.listdir(destination), "kept until libvirt can say"
