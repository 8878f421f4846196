"""Consolidation against a real libvirtd: every restore point still restores exactly, and
the backup stream stays incremental after a commit."""
from __future__ import annotations

import os
import subprocess

from tests.lab import DiskDef, MiB, assert_same, restore_and_read

BIG = (DiskDef("vda", "qcow2", 64 * MiB), DiskDef("vdb", "raw"))


def _round(dom, backup, pattern, offset_mib):
    dom.write("vda", pattern, offset_mib * MiB, MiB)
    dom.write("vdb", pattern + 0x20, (offset_mib + 1) * MiB, 512 * 1024)
    result = dom.snapshot(backup).json()[0]
    return result["point"], dom.expected_now(), result["bytes_copied"]


def _history(lab, dom, rounds, pattern):
    """``rounds`` of writes and snapshot -b; the backup dir and {point: expected content}."""
    backup = lab.path("backup")
    points = {}
    for number in range(rounds):
        point, expected, _ = _round(dom, backup, pattern + number, 1 + 2 * number)
        points[point] = expected
    return backup, points


def _backup_now(dom, backup, points):
    """snapshot -b, remembering what the new point must restore."""
    result = dom.snapshot(backup).json()[0]
    points[result["point"]] = dom.expected_now()
    return result


def _consolidate(lab, dom, *args, expect=0):
    return lab.cli("consolidate", "-d", dom.name, "--json", *args, expect=expect)


def _check_all(lab, dom, backup, points):
    for point_id, expected in points.items():
        assert_same(restore_and_read(lab, dom.name, backup, point_id), expected, point_id)


def test_live_commit_keeps_backup_incremental(lab):
    dom = lab.domain()
    backup, points = _history(lab, dom, 3, 0x40)
    before = [os.path.basename(p) for p in dom.lab.conn.lookupByName(dom.name).XMLDesc(0).split()
              if "bimg" in p]
    assert before
    summary = _consolidate(lab, dom).json()[0]
    vda = next(disk for disk in summary["disks"] if disk["disk"] == "vda")
    assert vda["outcome"] == "merged" and len(vda["chain_after"]) == 2
    assert len(vda["chain_before"]) == 4 and vda["next_backup"] == "incremental"
    assert all(not os.path.exists(path) for path in vda["removed"]) and len(vda["removed"]) == 2
    # the next backup copies only the change since the last point
    dom.write("vda", 0x77, 9 * MiB, 2 * MiB)
    result = _backup_now(dom, backup, points)
    assert result["new_generation"] == []
    assert result["bytes_copied"] < 4 * MiB, result
    _check_all(lab, dom, backup, points)
    assert "ok:" in lab.cli("verify", "-b", backup).stdout


def test_pull_keeps_base_and_next_backup_is_full(lab):
    dom = lab.domain()
    backup = lab.path("backup")
    points = {}
    for number in range(2):
        point, expected, _ = _round(dom, backup, 0x50 + number, 2 + 2 * number)
        points[point] = expected
    base = dom.image_path(dom.disks[0])
    summary = _consolidate(lab, dom, "--method", "pull").json()[0]
    vda = next(disk for disk in summary["disks"] if disk["disk"] == "vda")
    assert vda["outcome"] == "merged" and vda["chain_after"] == [vda["chain_before"][-1]]
    assert vda["next_backup"] == "new generation"
    assert os.path.exists(base), "pull must never delete the base"
    assert len(vda["removed"]) == 1 and base not in vda["removed"]
    dom.write("vda", 0x79, 0, MiB)
    result = _backup_now(dom, backup, points)
    assert sorted(result["new_generation"]) == ["vda", "vdb"]
    _check_all(lab, dom, backup, points)


def test_active_commit_pivots_into_base(lab):
    dom = lab.domain()
    backup, points = _history(lab, dom, 2, 0x60)
    dom.write("vda", 0x6f, 6 * MiB, MiB)                   # in the active layer only
    summary = _consolidate(lab, dom, "--method", "active").json()[0]
    for disk in summary["disks"]:
        assert disk["outcome"] == "merged" and len(disk["chain_after"]) == 1, disk
        assert disk["next_backup"] == "new generation"
        assert len(disk["removed"]) == 2
    assert dom.top("vda") == dom.image_path(dom.disks[0])
    assert dom.top("vda", inactive=True) == dom.image_path(dom.disks[0])
    result = _backup_now(dom, backup, points)
    assert sorted(result["new_generation"]) == ["vda", "vdb"]
    _check_all(lab, dom, backup, points)


def test_offline_methods_keep_definition_consistent(lab):
    dom = lab.domain()
    backup = lab.path("backup")
    points = {}
    offset = 1
    for method in ("commit", "pull", "active"):
        for _ in range(2):
            point, expected, _ = _round(dom, backup, 0x30 + offset, offset)
            points[point] = expected
            offset += 2
        dom.destroy()
        summary = _consolidate(lab, dom, "--method", method).json()[0]
        assert summary["live"] is False
        for disk in summary["disks"]:
            assert disk["outcome"] == "merged", disk
            expected_len = {"commit": 2, "pull": 1, "active": 1}[method]
            assert len(disk["chain_after"]) == expected_len, disk
            assert dom.top(disk["disk"], inactive=True) == disk["chain_after"][-1]
            inactive = dom.live_xml_inactive_disk(disk["disk"])
            assert inactive.find("backingStore") is None or \
                inactive.find("backingStore").find("source") is None
        dom.start()                                           # the definition boots
        for target in ("vda", "vdb"):
            dom.write(target, 0x20 + offset, 0, 4096)
    _backup_now(dom, backup, points)
    _check_all(lab, dom, backup, points)


def test_unbacked_layer_refused_then_copied_first(lab):
    dom = lab.domain()
    backup, points = _history(lab, dom, 1, 0x41)
    dom.write("vda", 0x42, 3 * MiB, MiB)
    dom.snapshot(None)                                   # frozen, not in the backup
    dom.write("vda", 0x43, 4 * MiB, MiB)
    refused = _consolidate(lab, dom, expect=1)
    assert "not in backup directory" in refused.stderr and "snapshot -d" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    summary = _consolidate(lab, dom, "-b", backup).json()[0]
    assert summary["snapshot"] and summary["snapshot"]["point"]
    points[summary["snapshot"]["point"]] = dom.expected_now()
    dom.write("vda", 0x44, 5 * MiB, MiB)
    result = _backup_now(dom, backup, points)
    assert result["new_generation"] == [] and result["bytes_copied"] < 3 * MiB
    _check_all(lab, dom, backup, points)


def test_force_merges_unbacked_layer_and_next_backup_is_a_new_generation(lab):
    dom = lab.domain()
    backup, points = _history(lab, dom, 1, 0x51)
    dom.write("vda", 0x52, 3 * MiB, MiB)
    dom.snapshot(None)                                   # never copied, then merged away
    dom.write("vda", 0x53, 4 * MiB, MiB)
    dom.snapshot(None)
    summary = _consolidate(lab, dom, "--force").json()[0]
    assert all(disk["outcome"] == "merged" for disk in summary["disks"])
    result = _backup_now(dom, backup, points)
    assert "vda" in result["new_generation"]
    _check_all(lab, dom, backup, points)


def test_domain_without_backup_is_consolidated_without_asking(lab):
    dom = lab.domain()
    for number in range(3):
        dom.write("vda", 0x30 + number, number * MiB, MiB)
        dom.snapshot(None)
    summary = _consolidate(lab, dom).json()[0]
    assert all(len(disk["chain_after"]) == 2 for disk in summary["disks"])
    backup = lab.path("backup")
    result = dom.snapshot(backup).json()[0]
    assert_same(restore_and_read(lab, dom.name, backup, result["point"]), dom.expected_now(), "first")


def test_active_commit_timeout_aborts_cleanly(lab):
    dom = lab.domain(disks=BIG)
    backup, points = _history(lab, dom, 1, 0x41)
    dom.write("vda", 0x45, 16 * MiB, 24 * MiB)           # 24 MiB to mirror at 1 MiB/s
    chain_before = dom.top("vda")
    result = _consolidate(lab, dom, "--method", "active", "--disk", "vda", "--bandwidth", "1",
                          "--timeout", "2", expect=1)
    vda = result.json()[0]["disks"][0]
    assert vda["outcome"] == "aborted" and vda["chain_after"] == vda["chain_before"]
    assert "not ready to pivot" in vda["reason"]
    assert "aborted" in result.stderr
    assert dom.dom.isActive() and dom.top("vda") == chain_before
    assert not dom.dom.blockJobInfo("vda", 0)
    dom.write("vda", 0x46, 2 * MiB, MiB)                 # the domain still writes fine
    result = _backup_now(dom, backup, points)
    assert "vda" in result["new_generation"]           # the base was partly written
    _check_all(lab, dom, backup, points)


def test_commit_timeout_aborts_and_next_backup_is_new_generation(lab):
    dom = lab.domain(disks=BIG)
    backup, points = _history(lab, dom, 1, 0x41)
    dom.write("vda", 0x47, 16 * MiB, 24 * MiB)          # 24 MiB to commit at 1 MiB/s
    point, expected, _ = _round(dom, backup, 0x48, 3)
    points[point] = expected
    result = _consolidate(lab, dom, "--disk", "vda", "--bandwidth", "1", "--timeout", "2",
                          expect=1)
    vda = result.json()[0]["disks"][0]
    assert vda["outcome"] == "aborted" and vda["chain_after"] == vda["chain_before"]
    result = _backup_now(dom, backup, points)
    assert "vda" in result["new_generation"]
    _check_all(lab, dom, backup, points)


def _three_layers(lab):
    """A running domain whose vda is base <- frozen <- active, and its base's path."""
    dom = lab.domain()
    dom.write("vda", 0x41, 0, MiB)
    dom.snapshot(None)
    dom.snapshot(None)
    return dom, dom.image_path(dom.disks[0])


def test_base_shared_with_another_domain_is_refused(lab):
    dom, base = _three_layers(lab)
    other = lab.domain(start=False)
    overlay = os.path.join(other.directory, "on-shared.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2",
                    overlay], check=True)
    xml = other.dom.XMLDesc(0).replace(other.image_path(other.disks[0]), overlay)
    lab.conn.defineXML(xml)
    result = _consolidate(lab, dom, expect=1)
    assert other.name in result.stderr and base in result.stderr
    assert len(dom.live_xml().findall("./devices/disk/backingStore/backingStore")) >= 1
    # pull never writes the base: allowed
    _consolidate(lab, dom, "--method", "pull")
    assert os.path.exists(base)


def test_permission_error_is_one_clear_line(lab):
    dom, base = _three_layers(lab)
    subprocess.run(["chattr", "+i", base], check=True)
    try:
        result = _consolidate(lab, dom, "--disk", "vda", expect=1)
    finally:
        subprocess.run(["chattr", "-i", base], check=True)
    errors = [line for line in result.stderr.splitlines() if line.startswith("fibackup:")]
    assert len(errors) == 1, result.stderr
    assert f"may not write {base}" in errors[0] and "AppArmor" in errors[0], errors[0]
    assert len(dom.live_xml().findall("./devices/disk/backingStore/backingStore")) >= 1


def test_cycles_of_every_kind_keep_every_point_exact(lab):
    """8+ rounds of writes and backups with consolidations of every kind in between."""
    dom = lab.domain()
    backup, points = _history(lab, dom, 1, 0x30)
    plan = ["commit", None, "pull", "commit", "active", None, "commit", "offline-commit",
            "offline-pull", "commit"]
    copied_after = {}
    for number, method in enumerate(plan):
        if method is not None and method.startswith("offline-"):
            dom.destroy()
            _consolidate(lab, dom, "--method", method.split("-", 1)[1])
            dom.start()
        elif method is not None:
            _consolidate(lab, dom, "--method", method)
        dom.write("vda", 0x50 + number, (number % 12) * MiB, MiB)
        dom.write("vdb", 0x70 + number, (number % 7) * MiB + 4096, 64 * 1024)
        result = _backup_now(dom, backup, points)
        copied_after.setdefault(method or "none", []).append(result["bytes_copied"])
    # after a commit (live or offline) the backup copies only the change
    for key in ("commit", "offline-commit", "none"):
        assert all(value < 2 * MiB for value in copied_after[key]), copied_after
    for key in ("pull", "active", "offline-pull"):
        assert all(value > 2 * MiB for value in copied_after[key]), copied_after
    _check_all(lab, dom, backup, points)
    assert "ok:" in lab.cli("verify", "-b", backup).stdout


def test_snapshot_consolidate_and_max_chain_bound_a_nightly_loop(lab):
    dom = lab.domain()
    backup, points = _history(lab, dom, 1, 0x30)
    result = dom.snapshot(backup, "--consolidate", "commit").json()[0]
    points[result["point"]] = dom.expected_now()
    assert all(len(disk["chain_after"]) == 2 for disk in result["consolidation"]["disks"])
    lengths = []
    for number in range(6):
        dom.write("vda", 0x40 + number, number * MiB, MiB)
        result = dom.snapshot(backup, "--max-chain", "4").json()[0]
        points[result["point"]] = dom.expected_now()
        lengths.append(len(dom.live_xml().find("./devices/disk").findall(".//source")))
        assert result["new_generation"] == []
    assert max(lengths) <= 4 and result["bytes_copied"] < 2 * MiB, lengths
    _check_all(lab, dom, backup, points)


def test_fifty_layer_chain_consolidates_in_one_command(lab):
    dom = lab.domain()
    backup, points = _history(lab, dom, 1, 0x30)
    for number in range(49):
        dom.write("vda", number % 200, (number % 16) * MiB, 4096)
        if number % 10 == 9:
            _backup_now(dom, backup, points)
        else:
            dom.snapshot(None)
    warned = dom.snapshot(backup)
    points[warned.json()[0]["point"]] = dom.expected_now()
    assert "long chains" in warned.stderr
    summary = _consolidate(lab, dom).json()[0]
    vda = next(disk for disk in summary["disks"] if disk["disk"] == "vda")
    assert len(vda["chain_before"]) >= 50 and len(vda["chain_after"]) == 2
    dom.write("vda", 0x99, 0, MiB)
    result = _backup_now(dom, backup, points)
    assert result["new_generation"] == [] and result["bytes_copied"] < 2 * MiB
    for point_id in list(points)[-3:]:
        assert_same(restore_and_read(lab, dom.name, backup, point_id), points[point_id], point_id)
