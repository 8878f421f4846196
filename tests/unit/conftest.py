"""Fixtures shared by the unit tests (the builders they use are in tests/storelab.py)."""
import pytest

from fibackup import faults
from fibackup.store.repo import BackupStore
from tests.storelab import make_source


@pytest.fixture
def store(tmp_path):
    return BackupStore.open(str(tmp_path / "backup"), create=True)


@pytest.fixture
def source(tmp_path):
    directory = tmp_path / "images"
    directory.mkdir()
    return make_source(directory / "disk.qcow2")


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    """A private $FIBACKUP_STATE_DIR, and no fault switch from the environment."""
    path = tmp_path / "state"
    monkeypatch.setenv("FIBACKUP_STATE_DIR", str(path))
    monkeypatch.delenv(faults.ENV, raising=False)
    return path
