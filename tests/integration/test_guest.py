"""End to end with the tiny real Linux guest: a process in the guest writes while
backups run (quiesced through the real guest agent), every point restores a
consistent prefix of its writes, and a restored copy boots and sees the bytes."""
from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import re
import time

import pytest

from tests.lab import MiB, DiskDef, image_bytes, restore_and_read

RECORD = 4096
HASH_BYTES = 16 * MiB               # whole disks: head -c stops at the end of vdb


def record(index: int) -> bytes:
    head = f"FIBREC {index}\n".encode()
    return head + b"x" * (RECORD - len(head))


def written_prefix(content: bytes) -> int:
    count = 0
    while content[count * RECORD:(count + 1) * RECORD] == record(count):
        count += 1
    return count


def with_records(initial: bytes, count: int) -> bytes:
    data = bytearray(initial)
    for index in range(count):
        data[index * RECORD:(index + 1) * RECORD] = record(index)
    return bytes(data)


@pytest.mark.guest
def test_guest_writes_during_backups_and_restored_copy_boots(guest_lab):
    lab = guest_lab
    dom = lab.domain(disks=[DiskDef("vda", "qcow2", 16 * MiB), DiskDef("vdb", "raw", 8 * MiB)],
                     guest_cmdline=f"fib.writer=vdb fib.writer_delay=0.01 fib.hashbytes={HASH_BYTES}")
    dom.wait_console("FIBACKUP-WRITER STARTED")
    initial_vdb = dom.expected_now()["vdb"]
    backup = lab.path("backup")
    points = []
    for round_number in range(3):
        time.sleep(1.0)
        dom.write("vda", 0x30 + round_number, (4 + round_number) * MiB, MiB)
        # the fallback policy quiesces too when the agent answers
        policy = "--quiesce-fallback" if round_number == 1 else "--quiesce"
        result = dom.snapshot(backup, policy).json()[0]
        assert result["quiesced"], result
        points.append((result["point"], dom.expected_now()["vda"]))
    listed = lab.cli("list", "-b", backup, "--json").json()
    assert all(row["quiesced"] for row in listed)

    prefixes = []
    for point_id, expected_vda in points:
        restored = restore_and_read(lab, dom.name, backup, point_id)
        assert restored["vda"] == expected_vda, point_id
        count = written_prefix(restored["vdb"])
        # the snapshot caught the writer between two records: exactly a prefix of
        # its writes, the rest of the disk exactly as it was before
        assert restored["vdb"] == with_records(initial_vdb, count), point_id
        prefixes.append(count)
    assert 0 < prefixes[0] < prefixes[1] < prefixes[2], prefixes

    copy_name = dom.name + "-copy"
    lab.forget_name(copy_name)
    result = lab.cli("restore", "-d", dom.name, "-b", backup, "--to", lab.path("copy dir"),
                     "--as", copy_name, "--json").json()
    copy = lab.conn.lookupByName(copy_name)
    copy.create()
    console_path = f"{dom.directory}/{copy_name}.console.log"
    deadline = time.monotonic() + 90
    console = ""
    while time.monotonic() < deadline and "FIBACKUP-DISKS-DONE" not in console:
        time.sleep(0.5)
        with open(console_path, errors="replace") as handle:
            console = handle.read()
    seen = dict(re.findall(r"FIBACKUP-DISK (vd\w) ([0-9a-f]{32})", console))
    assert set(seen) == {"vda", "vdb"}, console[-2000:]
    copy.destroy()
    for target, path in result["disks"].items():
        want = hashlib.md5(image_bytes(path, "qcow2")[:HASH_BYTES]).hexdigest()
        assert seen[target] == want, f"the booted copy sees other bytes on {target}"


@pytest.mark.guest
def test_active_commit_and_pull_while_the_guest_writes(guest_lab):
    """Consolidations of the disk a real guest process keeps writing: every restore point
    is a prefix of its writes, and the live disk afterwards holds all of them."""
    lab = guest_lab
    dom = lab.domain(disks=[DiskDef("vda", "qcow2", 16 * MiB), DiskDef("vdb", "qcow2", 8 * MiB)],
                     guest_cmdline="fib.writer=vdb fib.writer_delay=0.02")
    dom.wait_console("FIBACKUP-WRITER STARTED")
    initial_vdb = dom.expected_now()["vdb"]
    backup = lab.path("backup")
    points = []
    for method in ("active", "commit", "pull", "active"):
        time.sleep(0.5)
        points.append(dom.snapshot(backup).json()[0]["point"])
        time.sleep(0.5)
        points.append(dom.snapshot(backup).json()[0]["point"])
        summary = lab.cli("consolidate", "-d", dom.name, "--method", method, "--timeout", "120",
                          "--json").json()[0]
        assert all(disk["outcome"] == "merged" for disk in summary["disks"]), summary
    time.sleep(0.5)
    points.append(dom.snapshot(backup).json()[0]["point"])
    prefixes = []
    for point_id in points:
        restored = restore_and_read(lab, dom.name, backup, point_id)
        count = written_prefix(restored["vdb"])
        assert restored["vdb"] == with_records(initial_vdb, count), point_id
        prefixes.append(count)
    assert prefixes == sorted(prefixes) and prefixes[0] < prefixes[-1], prefixes
    dom.destroy()
    live = image_bytes(dom.top("vdb", inactive=True), "qcow2")
    count = written_prefix(live)
    assert count >= prefixes[-1] and live == with_records(initial_vdb, count)


FS_DATA = 1024 * 1024


def _file_in_restored_fs(lab, name: str, backup: str, point_id: str) -> bytes:
    """/data of the ext2 filesystem on vda at a restore point (debugfs, read-only)."""
    content = restore_and_read(lab, name, backup, point_id)["vda"]
    with tempfile.TemporaryDirectory() as scratch:       # debugfs splits its request on spaces
        image, dumped = os.path.join(scratch, "fs.raw"), os.path.join(scratch, "data")
        with open(image, "wb") as handle:
            handle.write(content)
        subprocess.run(["debugfs", "-R", f"dump /data {dumped}", image], check=True,
                       capture_output=True)
        if not os.path.exists(dumped):
            return b""
        with open(dumped, "rb") as handle:
            return handle.read()


@pytest.mark.guest
def test_quiesce_flushes_a_mounted_filesystem_through_the_real_agent(guest_lab):
    """The guest wrote a file and did not sync it: the agent's freeze puts it on the disk
    before the snapshot, so the quiesced point holds the whole file."""
    lab = guest_lab
    dom = lab.domain(disks=[DiskDef("vda", "raw", 16 * MiB, model=False)],
                     guest_cmdline=f"fib.fs=vda fib.fsdata={FS_DATA}")
    dom.wait_console("FIBACKUP-FS WRITTEN")
    backup = lab.path("backup")
    result = dom.snapshot(backup, "--quiesce").json()[0]
    assert result["quiesced"], result
    assert _file_in_restored_fs(lab, dom.name, backup, result["point"]) == b"F" * FS_DATA


@pytest.mark.guest
def test_without_an_agent_quiesce_refuses_and_the_fallback_is_crash_consistent(guest_lab):
    """No agent answers: --quiesce takes nothing; --quiesce-fallback warns and takes a
    crash-consistent point, which (the data was never synced) lacks the file's data."""
    lab = guest_lab
    dom = lab.domain(disks=[DiskDef("vda", "raw", 16 * MiB, model=False)],
                     guest_cmdline=f"fib.fs=vda fib.fsdata={FS_DATA} fib.noagent")
    dom.wait_console("FIBACKUP-FS WRITTEN")
    backup = lab.path("backup")
    refused = dom.snapshot(backup, "--quiesce", expect=1)
    assert "No snapshot was taken" in refused.stderr
    fallback = dom.snapshot(backup, "--quiesce-fallback")
    result = fallback.json()[0]
    assert not result["quiesced"] and "warning:" in fallback.stderr
    listed = lab.cli("list", "-b", backup, "--json").json()
    assert [row["quiesced"] for row in listed] == [False]
    assert _file_in_restored_fs(lab, dom.name, backup, result["point"]) != b"F" * FS_DATA
