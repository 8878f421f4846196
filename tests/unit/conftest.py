"""Fixtures shared by the unit tests (the builders they use are in tests/storelab.py)."""
import io

import pytest

from fibackup import faults
from fibackup.store.repo import BackupStore
from fibackup.store.v3 import keys, passwords
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


@pytest.fixture
def fast_scrypt(monkeypatch):
    """New format-3 keys wrapped with a cheap scrypt (2**10: milliseconds, not 0.1 s);
    unwrap reads the cost from each key document, so nothing else changes."""
    monkeypatch.setattr(keys, "SCRYPT_N", 2 ** 10)


@pytest.fixture
def passphrase_sources(monkeypatch):
    """No passphrase from the environment, a CLI run or a terminal, before and after."""
    monkeypatch.delenv(passwords.PASSWORD_FILE_ENV, raising=False)
    monkeypatch.setattr(passwords.sys, "stdin", io.StringIO())          # not a terminal
    passwords.use(passwords.Sources())
    yield passwords
    passwords.use(passwords.Sources())
