"""Format-3 stores (chunks, compressed, deduplicated, optionally encrypted) against the real
libvirtd, QEMU and Ceph RGW: every point restores exactly what the guest had."""
from __future__ import annotations

import os

import pytest

from tests.lab import MiB, DiskDef, assert_same, backup_history, restore_and_read


@pytest.fixture(params=["dir-plain", "dir-encrypted", "s3-plain", "s3-encrypted"])
def store3(request, lab):
    """(location, env) of a new format-3 store: directory or S3, plain or encrypted."""
    where, kind = request.param.split("-")
    if where == "dir":
        location = lab.path("store3")
    else:
        bucket = request.getfixturevalue("s3_bucket")
        location = f"s3://{bucket}/store3"
    env = {}
    args = ["init", "-b", location, "--json"]
    if kind == "encrypted":
        secret = lab.path("passphrase")
        with open(secret, "w") as handle:
            handle.write("correct horse battery staple\n")
        env["FIBACKUP_PASSWORD_FILE"] = secret
        args.append("--encrypt")
    made = lab.cli(*args, env=env).json()
    assert made["format"] == 3 and made["encrypted"] == (kind == "encrypted")
    return location, env


def test_points_restore_exact_and_increments_read_only_changes(lab, store3):
    location, env = store3
    dom = lab.domain(disks=(DiskDef("vda", "qcow2", 32 * MiB), DiskDef("vdb", "raw", 16 * MiB)))
    points = {}
    for round_number in range(3):
        dom.write("vda", 0x40 + round_number, (1 + round_number) * MiB, MiB)
        dom.write("vdb", 0x50 + round_number, (3 + 2 * round_number) * MiB, 512 * 1024)
        result = lab.cli("snapshot", "-d", dom.name, "-b", location, "--json", env=env).json()[0]
        points[result["point"]] = dom.expected_now()
    listed = lab.cli("list", "-b", location, "--json", env=env).json()
    assert [row["id"] for row in listed] == list(points)
    assert listed[1]["bytes_new"] < listed[0]["bytes_new"]
    for point_id, expected in points.items():
        restored = restore_and_read_env(lab, dom.name, location, point_id, env)
        assert_same(restored, expected, point_id)
    assert "ok:" in lab.cli("verify", "-b", location, env=env).stdout


def restore_and_read_env(lab, name, location, at, env):
    from tests.lab import image_bytes
    to = lab.path(f"restore-{at}")
    result = lab.cli("restore", "-d", name, "-b", location, "--to", to, "--at", at,
                     "--no-define", "--json", env=env).json()
    return {target: image_bytes(path, "qcow2") for target, path in result["disks"].items()}


def _store_bytes(location):
    total = 0
    for directory, _dirs, names in os.walk(location):
        total += sum(os.path.getsize(os.path.join(directory, name)) for name in names)
    return total


@pytest.mark.parametrize("store3", ["dir-plain", "s3-encrypted"], indirect=True)
def test_prune_deletes_points_then_unneeded_chunks_only(lab, store3):
    location, env = store3
    dom = lab.domain(disks=(DiskDef("vda", "qcow2", 24 * MiB),))
    points = {}
    for round_number in range(4):
        # each round overwrites the same 2 MiB: older points' chunks become garbage
        dom.write("vda", 0x30 + round_number, 4 * MiB, 2 * MiB)
        dom.write("vda", 0x50 + round_number, (8 + round_number) * MiB, 64 * 1024)
        result = lab.cli("snapshot", "-d", dom.name, "-b", location, "--json", env=env).json()[0]
        points[result["point"]] = dom.expected_now()
    before = _store_bytes(location) if not location.startswith("s3://") else None
    pruned = lab.cli("prune", "-b", location, "-d", dom.name, "--keep", "2", "--no-libvirt",
                     "--json", env=env).json()
    ids = list(points)
    assert pruned[0]["dropped"] == ids[:2] and pruned[0]["kept"] == ids[2:]
    assert pruned[0]["freed_bytes"] > 0
    if before is not None:
        assert _store_bytes(location) < before
    listed = lab.cli("list", "-b", location, "--json", env=env).json()
    assert [row["id"] for row in listed] == ids[2:]
    for point_id in ids[2:]:
        assert_same(restore_and_read_env(lab, dom.name, location, point_id, env),
                    points[point_id], point_id)
    # the next backup is still incremental on the kept history, and exact
    dom.write("vda", 0x77, 12 * MiB, MiB)
    result = lab.cli("snapshot", "-d", dom.name, "-b", location, "--json", env=env).json()[0]
    assert_same(restore_and_read_env(lab, dom.name, location, result["point"], env),
                dom.expected_now(), "after prune")
    assert "ok:" in lab.cli("verify", "-b", location, env=env).stdout


@pytest.mark.parametrize("store3", ["dir-encrypted"], indirect=True)
def test_encrypted_store_without_the_key_says_so_and_writes_nothing(lab, store3):
    location, env = store3
    dom = lab.domain(disks=(DiskDef("vda", "qcow2", 16 * MiB),))
    lab.cli("snapshot", "-d", dom.name, "-b", location, "--json", env=env)
    listed = lab.cli("list", "-b", location, expect=1)
    assert "encrypted" in listed.stderr and "no passphrase" in listed.stderr
    assert len(listed.stderr.strip().splitlines()) == 1
    wrong = lab.path("wrong")
    with open(wrong, "w") as handle:
        handle.write("not it\n")
    to = lab.path("restore-wrong")
    failed = lab.cli("restore", "-d", dom.name, "-b", location, "--to", to, "--no-define",
                     expect=1, env={"FIBACKUP_PASSWORD_FILE": wrong})
    assert "opens none of its" in failed.stderr
    assert not os.path.exists(to) or not os.listdir(to)
    # nothing in the store's files reveals the domain's name or its paths
    for directory, _dirs, names in os.walk(location):
        for name in names:
            with open(os.path.join(directory, name), "rb") as handle:
                data = handle.read()
            if name != "fibackup-store.json":
                assert dom.name.encode() not in data, os.path.join(directory, name)
