"""The store's small pieces: location, layout names, backend capabilities."""
import pytest

from fibackup.errors import CorruptStoreError, UsageError
from fibackup.store import layout, location, s3
from fibackup.store.backend import DIRECTORY, OBJECT_STORAGE, DirectoryBackend
from fibackup.store.s3.backend import S3Backend


def test_one_place_decides_what_object_storage_is():
    assert location.is_url("s3://bucket/prefix") and not location.is_url("/backup")
    assert s3.is_url is location.is_url and s3.split_url is location.split_url
    assert location.location("s3://b/p") == "s3://b/p"
    assert location.location("relative").startswith("/")
    with pytest.raises(UsageError):
        location.require_local("s3://b", "instant recovery")
    location.require_local("/backup", "instant recovery")


def test_capabilities_say_what_each_backend_can_do(tmp_path):
    assert DirectoryBackend(str(tmp_path)).capabilities == DIRECTORY
    assert DIRECTORY.local_files and DIRECTORY.space_check and DIRECTORY.shared_lock
    assert S3Backend.capabilities == OBJECT_STORAGE
    assert not (OBJECT_STORAGE.local_files or OBJECT_STORAGE.space_check
                or OBJECT_STORAGE.shared_lock)
    assert DirectoryBackend(str(tmp_path)).abort_uploads(("domains",)) == []


def test_manifest_names_are_built_from_their_key():
    assert layout.manifest_key(3) == "00000003"
    assert layout.point_name(3) == "00000003.json"
    assert layout.point_name(3, 2) == "00000003.r2.json"
    assert layout.parse_point_name(layout.point_name(12, 4)) == (layout.manifest_key(12), 4)


def test_names_built_from_untrusted_ids_are_checked():
    for bad in ("../x", "", ".hidden", "a/b"):
        with pytest.raises(CorruptStoreError):
            layout.record_name(bad)
        with pytest.raises(CorruptStoreError):
            layout.image_name(bad, "qcow2")
    with pytest.raises(CorruptStoreError):
        layout.image_name("layer", "vmdk")
    with pytest.raises(CorruptStoreError):
        layout.layers_parts("not-a-uuid")
