"""The copy engine on the real stack: disks copied in parallel under a bandwidth limit,
and reflinked copies on a real XFS filesystem; every point still restores byte-exact."""
from __future__ import annotations

import os
import shutil

import pytest

from tests.lab import MiB, DiskDef, assert_same, restore_and_read


def _rounds(dom, backup: str, rounds: int, *extra: str) -> dict[str, dict[str, bytes]]:
    points = {}
    for number in range(rounds):
        for index, disk in enumerate(dom.disks):
            dom.write(disk.target, 0x30 + 8 * number + index, (1 + number) * MiB + index * 4096,
                      MiB // 2)
        result = dom.snapshot(backup, *extra).json()[0]
        points[result["point"]] = dom.expected_now()
    return points


def test_four_disks_in_parallel_under_a_bandwidth_limit(lab):
    dom = lab.domain(disks=[DiskDef("vda", "qcow2"), DiskDef("vdb", "raw"),
                            DiskDef("vdc", "qcow2"), DiskDef("vdd", "raw")])
    backup = lab.path("backup")
    points = _rounds(dom, backup, 2, "-j", "3", "--bwlimit", "256M")
    for point_id, expected in points.items():
        assert_same(restore_and_read(lab, dom.name, backup, point_id), expected, point_id)
    to = lab.path("restored in parallel")
    lab.cli("restore", "-d", dom.name, "-b", backup, "--to", to, "--no-define", "-j", "4",
            "--bwlimit", "100M")
    assert "ok: 2 restore point(s)" in lab.cli("verify", "-b", backup, "--bwlimit", "1G").stdout


def test_bad_bandwidth_limit_is_refused_before_any_snapshot(lab):
    dom = lab.domain(disks=[DiskDef("vda")])
    top = dom.top("vda")
    result = lab.cli("snapshot", "-d", dom.name, "-b", lab.path("backup"), "--bwlimit", "lots",
                     expect=2)
    assert "--bwlimit" in result.stderr and "200M" in result.stderr
    assert dom.top("vda") == top


@pytest.mark.skipif(shutil.which("mkfs.xfs") is None, reason="xfsprogs is not installed")
def test_reflinked_backup_and_restore_on_xfs_are_exact_and_share_blocks(lab):
    mount = lab.xfs("xfs", 1024 * MiB)
    dom = lab.domain(disks=[DiskDef("vda", "qcow2", 64 * MiB), DiskDef("vdb", "raw", 64 * MiB)],
                     parent=mount)
    for disk in dom.disks:                              # enough data for sharing to show
        dom.write(disk.target, 0x21, 8 * MiB, 32 * MiB)
    backup = os.path.join(mount, "backup")
    before = shutil.disk_usage(mount).used
    points = _rounds(dom, backup, 2, "--reflink")
    grown = shutil.disk_usage(mount).used - before
    # 64 MiB of data was stored without new blocks (only overlays and metadata grew)
    assert grown < 24 * MiB, grown
    for point_id, expected in points.items():
        to = os.path.join(mount, f"restore {point_id}")            # reflinked by default
        assert_same(restore_and_read(lab, dom.name, backup, point_id, to=to), expected, point_id)
    assert "ok: 2 restore point(s)" in lab.cli("verify", "-b", backup).stdout
    # a restore elsewhere (another filesystem) makes real copies of the same bytes
    last = list(points)[-1]
    assert_same(restore_and_read(lab, dom.name, backup, last), points[last], "copied")
    # --no-reflink writes independent copies on the same filesystem too
    to = os.path.join(mount, "independent")
    used = shutil.disk_usage(mount).used
    lab.cli("restore", "-d", dom.name, "-b", backup, "--to", to, "--at", last, "--no-define",
            "--no-reflink")
    assert shutil.disk_usage(mount).used - used > 48 * MiB
