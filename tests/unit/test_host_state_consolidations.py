"""Host state: backup directories, consolidation records and the compositions
they prove (fibackup.host.state)."""
import json
import os

import pytest

from fibackup.errors import CorruptStoreError
from fibackup.host import state
from fibackup.host.state import Consolidation, HostState, RestoredFile
from fibackup.model.chain import FileIdentity

UUID = "5a1e0000-0000-4000-8000-000000000001"

pytestmark = pytest.mark.usefixtures("state_dir")     # tests/unit/conftest.py


def identity(path, ino, mtime_ns=1_000, size=1_000_000):
    return FileIdentity(host="host1", path=path, dev=42, ino=ino, size=size,
                        mtime_ns=mtime_ns, head_digest="ab" * 16)


BASE = identity("/img/disk.qcow2", 1)
L1 = identity("/img/disk.bimg-1", 2)
L2 = identity("/img/disk.bimg-2", 3)
RESULT = identity("/img/disk.qcow2", 1, mtime_ns=2_000, size=2_000_000)


def consolidation(disk="vda", outcome="merged", result=RESULT, parts=(BASE, L1, L2),
                  time="2026-01-01T00:00:00Z", method="commit"):
    return Consolidation(disk=disk, method=method, time=time, outcome=outcome,
                         base="/img/disk.qcow2",
                         merged=("/img/disk.bimg-1", "/img/disk.bimg-2"),
                         result=result, parts=parts)


def write_state(state_dir, document):
    path = state_dir / "domains" / f"{UUID}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


def document(**changes):
    base = {"kind": state.STATE_KIND, "version": state.STATE_VERSION, "domain_uuid": UUID,
            "restored": [], "overlays": [], "stores": {}, "consolidations": []}
    base.update(changes)
    return base


def test_missing_state_file_is_empty_state():
    loaded = state.load(UUID)
    assert loaded.stores == {}
    assert loaded.consolidations == []
    assert loaded.compositions() == {}


def test_path_is_under_the_state_dir(state_dir):
    assert HostState(UUID).path == os.path.join(str(state_dir), "domains", f"{UUID}.json")


def test_save_load_round_trip_keeps_stores_and_consolidations():
    saved = HostState(UUID)
    saved.stores = {"store-1": "/backup/one", "store-2": "/backup/two"}
    saved.overlays = [{"disk": "vda", "path": "/img/disk.bimg-3", "tag": "t1"}]
    saved.restored = [RestoredFile("store-1", "L-b", identity("/restore/disk.qcow2", 9))]
    saved.record(consolidation())
    saved.record(consolidation(disk="vdb", outcome="aborted", result=None, parts=()))
    saved.save()

    loaded = state.load(UUID)
    assert loaded == saved
    assert loaded.stores == {"store-1": "/backup/one", "store-2": "/backup/two"}
    first = loaded.consolidations[0]
    assert isinstance(first.result, FileIdentity)
    assert first.result == RESULT
    assert first.parts == (BASE, L1, L2)
    assert first.merged == ("/img/disk.bimg-1", "/img/disk.bimg-2")
    assert loaded.consolidations[1].result is None
    assert loaded.consolidations[1].parts == ()


def test_consolidation_json_round_trip():
    item = consolidation()
    assert Consolidation.from_json(json.loads(json.dumps(item.to_json()))) == item


def test_saved_file_is_private_and_well_formed(state_dir):
    saved = HostState(UUID, stores={"s": "/b"})
    saved.record(consolidation())
    saved.save()
    path = state_dir / "domains" / f"{UUID}.json"
    assert (path.stat().st_mode & 0o777) == 0o600
    on_disk = json.loads(path.read_text())
    assert on_disk["stores"] == {"s": "/b"}
    assert on_disk["consolidations"][0]["result"]["ino"] == 1
    assert [part["path"] for part in on_disk["consolidations"][0]["parts"]] == [
        BASE.path, L1.path, L2.path]


def test_compositions_only_from_completed_commits():
    host = HostState(UUID)
    merged = consolidation()
    other_result = identity("/img/other.qcow2", 7)
    host.record(merged)
    host.record(consolidation(outcome="aborted", result=other_result))
    host.record(consolidation(outcome="failed", result=identity("/img/x.qcow2", 8)))
    host.record(consolidation(result=None))                       # pull: no result
    host.record(consolidation(result=identity("/img/y.qcow2", 9), parts=()))
    assert host.compositions() == {RESULT: (BASE, L1, L2)}


def test_compositions_of_several_disks():
    host = HostState(UUID)
    vdb_result = identity("/img/data.qcow2", 20, mtime_ns=5)
    vdb_parts = (identity("/img/data.qcow2", 20), identity("/img/data.bimg-1", 21))
    host.record(consolidation())
    host.record(consolidation(disk="vdb", result=vdb_result, parts=vdb_parts))
    assert host.compositions() == {RESULT: (BASE, L1, L2), vdb_result: vdb_parts}


def test_record_keeps_at_most_max_consolidations(monkeypatch):
    monkeypatch.setattr(state, "MAX_CONSOLIDATIONS", 3)
    host = HostState(UUID)
    for number in range(5):
        host.record(consolidation(time=f"t{number}"))
    assert [item.time for item in host.consolidations] == ["t2", "t3", "t4"]


def test_record_below_the_limit_keeps_everything():
    host = HostState(UUID)
    for number in range(4):
        host.record(consolidation(time=f"t{number}"))
    assert len(host.consolidations) == 4


def test_last_consolidation_of_a_disk():
    host = HostState(UUID)
    assert host.last_consolidation("vda") is None
    host.record(consolidation(disk="vda", time="t1"))
    host.record(consolidation(disk="vdb", time="t2"))
    host.record(consolidation(disk="vda", time="t3", outcome="aborted"))
    host.record(consolidation(disk="vdb", time="t4"))
    assert host.last_consolidation("vda").time == "t3"
    assert host.last_consolidation("vdb").time == "t4"
    assert host.last_consolidation("vdc") is None


def test_created_overlay_and_forget_overlays():
    host = HostState(UUID, overlays=[
        {"disk": "vda", "path": "/img/a.bimg-1", "tag": "t1"},
        {"disk": "vdb", "path": "/img/b.bimg-1", "tag": "t1"},
        {"disk": "vda", "path": "/img/a.bimg-2", "tag": "t2"},
    ])
    assert host.created_overlay("/img/a.bimg-1")
    assert not host.created_overlay("/img/a.qcow2")

    host.forget_overlays({"/img/a.bimg-1", "/img/a.bimg-2", "/img/unknown"})
    assert not host.created_overlay("/img/a.bimg-1")
    assert not host.created_overlay("/img/a.bimg-2")
    assert host.created_overlay("/img/b.bimg-1")
    assert host.overlays == [{"disk": "vdb", "path": "/img/b.bimg-1", "tag": "t1"}]


def test_forget_nothing_keeps_overlays():
    overlays = [{"disk": "vda", "path": "/img/a.bimg-1", "tag": "t1"}]
    host = HostState(UUID, overlays=list(overlays))
    host.forget_overlays(set())
    assert host.overlays == overlays


def test_old_state_file_without_new_keys_still_loads(state_dir):
    restored = identity("/restore/disk.qcow2", 9)
    write_state(state_dir, {
        "kind": state.STATE_KIND, "version": state.STATE_VERSION, "domain_uuid": UUID,
        "restored": [{"store_id": "s", "layer_id": "L-b", "identity": restored.__dict__}],
        "overlays": [{"disk": "vda", "path": "/img/a.bimg-1", "tag": "t1"}],
    })
    loaded = state.load(UUID)
    assert loaded.stores == {}
    assert loaded.consolidations == []
    assert loaded.compositions() == {}
    assert loaded.aliases("s") == [(restored, "L-b")]
    assert loaded.created_overlay("/img/a.bimg-1")


def test_consolidation_without_optional_keys_loads(state_dir):
    write_state(state_dir, document(consolidations=[
        {"disk": "vda", "method": "pull", "time": "t", "outcome": "merged", "base": "/b"}]))
    item = state.load(UUID).consolidations[0]
    assert item.merged == ()
    assert item.result is None
    assert item.parts == ()


@pytest.mark.parametrize("entry", [
    {"method": "commit", "time": "t", "outcome": "merged", "base": "/b"},        # no disk
    {"disk": "vda", "method": "commit", "time": "t", "outcome": "merged", "base": "/b",
     "result": {"path": "/b"}},                                                  # partial identity
    {"disk": "vda", "method": "commit", "time": "t", "outcome": "merged", "base": "/b",
     "result": dict(RESULT.__dict__, colour="blue")},                            # unknown field
    {"disk": "vda", "method": "commit", "time": "t", "outcome": "merged", "base": "/b",
     "parts": [{"host": "h"}]},                                                  # bad part
    {"disk": "vda", "method": "commit", "time": "t", "outcome": "merged", "base": "/b",
     "parts": 5},                                                                # not a list
    "not an object",
    None,
], ids=["no-disk", "partial-result", "unknown-field", "bad-part", "parts-not-list",
        "string", "null"])
def test_malformed_consolidation_is_corrupt(state_dir, entry):
    write_state(state_dir, document(consolidations=[entry]))
    with pytest.raises(CorruptStoreError, match="malformed"):
        state.load(UUID)


def test_malformed_stores_is_corrupt(state_dir):
    write_state(state_dir, document(stores=["not", "a", "mapping"]))
    with pytest.raises(CorruptStoreError):
        state.load(UUID)


def test_damaged_json_is_corrupt(state_dir):
    path = state_dir / "domains" / f"{UUID}.json"
    path.parent.mkdir(parents=True)
    path.write_text("{ not json")
    with pytest.raises(CorruptStoreError, match="damaged"):
        state.load(UUID)


def test_wrong_version_is_corrupt(state_dir):
    write_state(state_dir, document(version=state.STATE_VERSION + 1))
    with pytest.raises(CorruptStoreError):
        state.load(UUID)
