"""store/batched.py through the directory store: a name never appears before its data
is durable, the writer sees its own objects at once, others once they are settled."""
import os

from fibackup.store import batched
from fibackup.store.backend import DirectoryBackend


def listing(root):
    return sorted(os.path.join(os.path.relpath(top, root), name)
                  for top, _dirs, names in os.walk(root) for name in names)


def test_objects_are_published_by_settle_and_read_back_by_their_writer(tmp_path):
    root = str(tmp_path)
    writer = DirectoryBackend(root)
    assert writer.write_once(("chunks", "ab"), "ab01", b"one")
    assert not writer.write_once(("chunks", "ab"), "ab01", b"one")     # already on its way
    assert all(".partial-" in path for path in listing(root))          # no name yet
    other = DirectoryBackend(root)
    assert "ab01" not in os.listdir(os.path.join(root, "chunks", "ab"))
    assert writer.read(("chunks", "ab"), "ab01") == b"one"            # its writer sees it
    assert writer.write_once(("chunks", "cd"), "cd01", b"two")
    writer.settle()
    assert listing(root) == ["chunks/ab/ab01", "chunks/cd/cd01"]
    assert other.read(("chunks", "cd"), "cd01") == b"two"


def test_a_full_batch_is_published_without_waiting_for_settle(tmp_path, monkeypatch):
    monkeypatch.setattr(batched, "BATCH_OBJECTS", 3)
    root = str(tmp_path)
    writer = DirectoryBackend(root)
    for number in range(3):
        writer.write_once(("chunks",), f"c{number}", b"x" * number)
    assert listing(root) == ["chunks/c0", "chunks/c1", "chunks/c2"]
    writer.write_once(("chunks",), "c3", b"y")
    assert "chunks/c3" not in listing(root)


def test_a_run_that_dies_before_settle_leaves_only_temporary_names(tmp_path):
    root = str(tmp_path)
    writer = DirectoryBackend(root)
    writer.write_once(("chunks",), "lost", b"data")
    del writer                                  # never settled: killed
    assert [path for path in listing(root) if ".partial-" not in path] == []
