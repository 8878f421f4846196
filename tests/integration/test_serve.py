"""The serving path against the real nbdkit (and its Python plugin), QEMU's NBD client,
the real Ceph RGW: a served format-3 disk reads exactly as the point, and a damaged
chunk is an I/O error, never other bytes."""
from __future__ import annotations

import glob
import os
import subprocess

import pytest

from fibackup.serve import nbdkit
from fibackup.serve.source import ServedDisk
from tests.integration.test_store3 import store3  # noqa: F401 - the fixture
from tests.lab import MiB, DiskDef, TEST_CONFIG


def served_bytes(server: nbdkit.Server, scratch: str) -> bytes:
    out = os.path.join(scratch, "served.raw")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", server.uri, out],
                   check=True, capture_output=True)
    with open(out, "rb") as handle:
        data = handle.read()
    os.unlink(out)
    return data


@pytest.fixture
def plugin_env(monkeypatch, store3):  # noqa: F811
    location, env = store3
    for key, value in {**env, "FIBACKUP_CONFIG": TEST_CONFIG}.items():
        monkeypatch.setenv(key, value)
    return location, env


def points_of(location, dom_name):
    """The domain's points in the store, oldest first (read as the plugin reads them)."""
    from fibackup.store.repo import BackupStore
    store = BackupStore.open(location)
    points = sorted((p for p in store.all_points() if p.domain_name == dom_name),
                    key=lambda p: p.seq)
    return points


def test_a_served_disk_reads_as_its_point_and_a_damaged_chunk_is_an_io_error(lab, plugin_env):
    location, env = plugin_env
    dom = lab.domain(disks=(DiskDef("vda", "qcow2", 24 * MiB),), start=False)
    expected = []
    for round_number in range(2):
        dom.write("vda", 0x41 + round_number, (2 + 5 * round_number) * MiB + 4096, 3 * MiB)
        lab.cli("snapshot", "-d", dom.name, "-b", location, env=env)
        expected.append(dom.expected_now()["vda"])
    points = points_of(location, dom.name)
    assert len(points) == 2
    scratch = nbdkit.sockets_dir()
    lab.forget_dir(scratch)
    for point, want in zip(points, expected):
        disk = point.disks["vda"]
        served = ServedDisk(location, disk.index.id, disk.virtual_size)
        with nbdkit.served(served, scratch, "vda", cache_bytes=8 * MiB) as server:
            assert os.stat(scratch).st_mode & 0o777 == 0o700
            assert served_bytes(server, scratch) == bytes(want)
    if location.startswith("s3://"):
        return
    # damage one chunk object: the read that needs it fails, and the log names the chunk
    from fibackup.store.repo import BackupStore
    index = BackupStore.open(location).chunked.get_index(points[-1].disks["vda"].index.id)
    number, chunk_id = next(iter(index.items()))
    [path] = glob.glob(os.path.join(location, "**", chunk_id.hex()), recursive=True)
    with open(path, "r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([last[0] ^ 0xFF]))
    disk = points[-1].disks["vda"]
    with nbdkit.served(ServedDisk(location, disk.index.id, disk.virtual_size), scratch,
                       "vda") as server:
        with pytest.raises(subprocess.CalledProcessError):
            served_bytes(server, scratch)
        with open(server.log) as handle:
            log = handle.read()
    assert f"chunk {chunk_id.hex()}" in log, log


def test_a_store_that_cannot_be_opened_is_a_clear_error(lab, tmp_path):
    from fibackup.errors import ServeError
    with pytest.raises(ServeError, match="no backup|not a fibackup|does not exist|no store"):
        with nbdkit.served(ServedDisk(str(tmp_path / "nothing"), "0" * 64, MiB),
                           str(tmp_path), "vda"):
            pass


@pytest.mark.parametrize("store3", ["dir-plain"], indirect=True)
def test_mount_raw_shows_each_disk_as_a_read_only_file(lab, store3):  # noqa: F811
    location, env = store3
    dom = lab.domain(disks=(DiskDef("vda", "qcow2", 16 * MiB), DiskDef("vdb", "raw", 8 * MiB)),
                     start=False)
    dom.write("vda", 0x61, 3 * MiB, 2 * MiB)
    dom.write("vdb", 0x62, 1 * MiB, MiB)
    lab.cli("snapshot", "-d", dom.name, "-b", location, env=env)
    expected = dom.expected_now()
    mountpoint = lab.path("raw disks")
    os.makedirs(mountpoint)
    mounted = lab.cli("mount", "-d", dom.name, "-b", location, "--raw", mountpoint, "--json",
                      env=env).json()
    try:
        assert mounted["raw"] is True
        assert sorted(item["path"] for item in mounted["shown"]) == ["/vda.raw", "/vdb.raw"]
        for target in ("vda", "vdb"):
            path = os.path.join(mountpoint, f"{target}.raw")
            assert os.path.getsize(path) == len(expected[target])
            with open(path, "rb") as handle:
                assert handle.read() == bytes(expected[target]), target
            with pytest.raises(OSError):                   # read-only, also for root
                with open(path, "r+b") as handle:
                    handle.write(b"x" * 4096)
                    handle.flush()
            with open(path, "rb") as handle:
                assert handle.read(4096) == bytes(expected[target][:4096])
        listed = lab.cli("mount", "--list", "--json").json()
        assert [item["raw"] for item in listed if item["mountpoint"] == mountpoint] == [True]
    finally:
        lab.cli("umount", mountpoint, expect=None)
    assert os.listdir(mountpoint) == []
    assert lab.cli("mount", "--list", "--json").json() == []
    out = subprocess.run(["pgrep", "-af", "qemu-storage-daemon"], capture_output=True,
                         text=True).stdout
    assert mountpoint not in out
