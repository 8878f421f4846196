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
