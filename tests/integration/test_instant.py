"""Instant recovery (restore --instant / --finalize) against the real libvirtd and QEMU.

A domain runs straight from a restore point's stored layers through overlays in
--to; its data is read back through exactly the chain QEMU was given, writes
land in the overlays, and --finalize detaches it from the backup directory while
it runs.  The stored files must be left exactly as they were (bytes, mtime,
owner, mode, no ACL left behind), and QEMU must never open the stale backing
names inside the stored qcow2 headers.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time

import libvirt
import pytest

from fibackup.qemu.img import explicit_chain
from tests.lab import (MiB, DiskDef, LabDomain, backup_history, image_bytes, instant_restore,
                       xml_backing_chains)


def _store_snapshot(backup: str) -> dict[str, tuple]:
    """Every file and directory of the store: content hash, mtime, owner, mode, xattrs
    (run logs in logs/ are not store data: the instant restore logs there)."""
    seen = {}
    for directory, dirs, files in os.walk(backup):
        if directory == backup:
            dirs[:] = [name for name in dirs if name != "logs"]
        for path in [directory, *(os.path.join(directory, name) for name in files)]:
            info = os.lstat(path)
            content = ""
            if os.path.isfile(path):
                with open(path, "rb") as handle:
                    content = hashlib.sha256(handle.read()).hexdigest()
            seen[path] = (content, info.st_mtime_ns, info.st_uid, info.st_gid, info.st_mode,
                          sorted(os.listxattr(path, follow_symlinks=False)))
    return seen


def _open_files(name: str) -> list[str]:
    with open(f"/run/libvirt/qemu/{name}.pid") as handle:
        pid = int(handle.read())
    paths = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            paths.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return paths


def _acl_lines(path: str) -> list[str]:
    out = subprocess.run(["getfacl", "-P", "-c", "-p", path], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if line]


def _read_through(chain: list[tuple[str, str]], size: int) -> bytes:
    """The guest's view of an explicit chain (base first), headers' backing names ignored."""
    return image_bytes(explicit_chain(chain))[:size]


def _lab_copy(lab, name: str, directory: str, disks, expected: dict[str, bytes]) -> LabDomain:
    """A LabDomain view of a domain fibackup defined (for guest-equivalent writes)."""
    return LabDomain(lab, name, directory, list(disks),
                     expected={target: bytearray(data) for target, data in expected.items()})


def test_instant_recovery_boots_and_data_matches_then_finalize_while_running(lab):
    dom = lab.domain()                                  # vda qcow2, vdb raw base
    backup = lab.path("backup")
    points = backup_history(dom, backup, 3)
    second = list(points)[1]
    before = _store_snapshot(backup)
    name, to = dom.name + "-now", lab.path("instant to")

    started = instant_restore(lab, dom.name, backup, name, to, "--at", "2")
    assert started["point"] == second and started["verified"] is True
    copy = lab.conn.lookupByName(name)
    assert copy.isActive() and copy.UUIDString() == started["uuid"]
    layers_dir = os.path.join(os.path.realpath(backup), "domains",
                              dom.dom.UUIDString(), "layers")
    # live and persistent XML name the stored layers by their real paths (prune looks there)
    for flags in (0, libvirt.VIR_DOMAIN_XML_INACTIVE):
        chains = xml_backing_chains(copy.XMLDesc(flags))
        for target in ("vda", "vdb"):
            assert chains[target] == list(reversed(started["chains"][target]))
            assert all(os.path.dirname(path) == layers_dir for path in chains[target])
    # QEMU opened the stored layers, never the stale names in their headers
    opened = _open_files(name)
    assert not [path for path in opened if path.startswith(dom.directory)], opened
    assert set(started["chains"]["vda"]) <= set(opened)
    for path in started["chains"]["vda"]:
        assert os.stat(path).st_uid == 0                # libvirt did not chown it
        assert "user:libvirt-qemu:r--" in _acl_lines(path)
    # the running domain sees exactly point 2's bytes
    for target in ("vda", "vdb"):
        chain = [(path, path.rsplit(".", 1)[1]) for path in started["chains"][target]]
        got = _read_through([*chain, (started["disks"][target], "qcow2")], 16 * MiB)
        assert got == points[second][target], f"{target} differs from point 2"

    instant = _lab_copy(lab, name, to, dom.disks, points[second])
    instant.write("vda", 0x7A, 3 * MiB, MiB)
    instant.write("vdb", 0x7B, 10 * MiB, 512 * 1024)
    done = lab.cli("restore", "--finalize", name, "--json").json()
    assert done["method"] == "pull" and done["kept"] == [] and done["revoked"], done
    assert copy.isActive()
    for flags in (0, libvirt.VIR_DOMAIN_XML_INACTIVE):
        assert xml_backing_chains(copy.XMLDesc(flags)) == {"vda": [], "vdb": []}
    assert not [path for path in _open_files(name) if path.startswith(os.path.realpath(backup))]
    assert os.listdir(os.path.join(lab.state_dir, "instant")) == []
    instant.write("vda", 0x7C, 12 * MiB, MiB)           # it goes on, on its own images
    copy.destroy()
    for target, path in done["disks"].items():
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", path],
                                         capture_output=True, text=True, check=True).stdout)
        assert "backing-filename" not in info
        assert image_bytes(path, "qcow2") == instant.expected_now()[target], target
    assert _store_snapshot(backup) == before            # bytes, mtime, owner, mode, no ACL


def _write_offline(chain: list[tuple[str, str]], pattern: int, offset: int, length: int) -> None:
    subprocess.run(["qemu-io", "-c", f"write -P {pattern} {offset} {length}",
                    explicit_chain(chain)], check=True, capture_output=True)


def test_shared_grants_offline_finalize_and_a_vanished_domain(lab):
    dom = lab.domain(disks=[DiskDef("vda", "qcow2")])
    backup = lab.path("backup")
    points = _history_vda(dom, backup, 2)
    first = list(points)[0]
    before = _store_snapshot(backup)
    a = instant_restore(lab, dom.name, backup, dom.name + "-a", lab.path("a"), "--at", "1")
    b = instant_restore(lab, dom.name, backup, dom.name + "-b", lab.path("b"), "--at", "1",
                 "--no-verify")
    assert b["verified"] is False
    refused = lab.cli("snapshot", "-d", dom.name + "-b", expect=1)  # would drop its chain
    assert "--finalize" in refused.stderr
    copy_a = lab.conn.lookupByName(dom.name + "-a")
    copy_a.destroy()                                    # shut off: finalized offline
    chain_a = [(path, "qcow2") for path in a["chains"]["vda"]] + [(a["disks"]["vda"], "qcow2")]
    _write_offline(chain_a, 0x5E, 6 * MiB, MiB)
    done = lab.cli("restore", "--finalize", dom.name + "-a", "--json").json()
    assert done["method"] == "rebase" and done["revoked"] == []
    assert sorted(done["kept"]) == sorted(b["granted"])  # b still needs every entry
    assert xml_backing_chains(copy_a.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) == {"vda": []}
    expected = bytearray(points[first]["vda"])
    expected[6 * MiB:7 * MiB] = bytes([0x5E]) * MiB
    assert image_bytes(done["disks"]["vda"], "qcow2") == bytes(expected)
    copy_a.create()                                     # boots from its own image now
    copy_b = lab.conn.lookupByName(dom.name + "-b")
    copy_b.destroy()
    copy_b.create()                                     # b kept its access
    copy_b.destroy()
    copy_b.undefine()                                   # gone without --finalize
    gone = lab.cli("restore", "--finalize", dom.name + "-b", "--json").json()
    assert gone["method"] == "gone" and sorted(gone["revoked"]) == sorted(b["granted"])
    assert os.listdir(os.path.join(lab.state_dir, "instant")) == []
    assert _store_snapshot(backup) == before


def _history_vda(dom, backup: str, rounds: int) -> dict[str, dict[str, bytes]]:
    points = {}
    for round_number in range(rounds):
        dom.write("vda", 0x40 + round_number, (1 + round_number) * MiB, MiB)
        points[dom.snapshot(backup).json()[0]["point"]] = dom.expected_now()
    return points


def test_instant_refuses_a_damaged_chain_and_leaves_nothing(lab):
    dom = lab.domain(disks=[DiskDef("vda", "qcow2")])
    backup = lab.path("backup")
    _history_vda(dom, backup, 1)
    layers = os.path.join(backup, "domains", dom.dom.UUIDString(), "layers")
    victim = next(os.path.join(layers, n) for n in os.listdir(layers) if n.endswith(".qcow2"))
    with open(victim, "r+b") as handle:                 # a byte of the initial data
        handle.seek(os.path.getsize(victim) - 1)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    name, to = dom.name + "-bad", lab.path("bad")
    lab.forget_name(name)
    failed = lab.cli("restore", "-d", dom.name, "-b", backup, "--instant", "--as", name,
                     "--to", to, expect=1)
    assert "damaged" in failed.stderr and failed.stderr.count("\n") == 1, failed.stderr
    with pytest.raises(libvirt.libvirtError):
        lab.conn.lookupByName(name)
    assert os.listdir(to) == [] and not os.path.exists(os.path.join(lab.state_dir, "instant"))
    assert "libvirt-qemu" not in "".join(_acl_lines(victim))
    usage = lab.cli("restore", "-d", dom.name, "-b", backup, "--instant", "--to", to, expect=2)
    assert "--as" in usage.stderr
    usage = lab.cli("restore", "--finalize", name, "-b", backup, expect=2)
    assert "-b" in usage.stderr


@pytest.mark.guest
def test_real_guest_boots_from_the_instant_chain(guest_lab):
    lab = guest_lab
    dom = lab.domain(disks=[DiskDef("vda", "qcow2", 16 * MiB)],
                     guest_cmdline=f"fib.hashbytes={16 * MiB}")
    dom.write("vda", 0x24, 4 * MiB, MiB)
    backup = lab.path("backup")
    point = dom.snapshot(backup).json()[0]["point"]
    want = hashlib.md5(dom.expected_now()["vda"]).hexdigest()
    dom.write("vda", 0x25, 5 * MiB, MiB)                # after the point: not in the copy
    dom.snapshot(backup)
    name = dom.name + "-now"
    instant_restore(lab, dom.name, backup, name, lab.path("now"), "--at", point)
    console_path = f"{dom.directory}/{name}.console.log"
    deadline, console = time.monotonic() + 90, ""
    while time.monotonic() < deadline and "FIBACKUP-DISKS-DONE" not in console:
        time.sleep(0.5)
        with open(console_path, errors="replace") as handle:
            console = handle.read()
    seen = dict(re.findall(r"FIBACKUP-DISK (vd\w) ([0-9a-f]{32})", console))
    assert seen == {"vda": want}, console[-2000:]
    done = lab.cli("restore", "--finalize", name, "--json").json()
    assert done["method"] == "pull" and lab.conn.lookupByName(name).isActive()


def test_finalize_killed_during_the_pull_is_finished_after_repair(lab):
    dom = lab.domain(disks=[DiskDef("vda", "qcow2")])
    backup = lab.path("backup")
    points = _history_vda(dom, backup, 1)
    name = dom.name + "-now"
    started = instant_restore(lab, dom.name, backup, name, lab.path("now"))
    instant = _lab_copy(lab, name, lab.path("now"), dom.disks, points[started["point"]])
    instant.write("vda", 0x6D, 9 * MiB, MiB)
    killed = lab.cli("restore", "--finalize", name, expect=None,
                     env={"FIBACKUP_FAULT": "consolidate.job.running"})
    assert killed.code == -9
    repaired = lab.cli("repair", "-d", name, "--json").json()[0]
    assert any("--finalize" in action for action in repaired["actions"]), repaired
    done = lab.cli("restore", "--finalize", name, "--json").json()
    assert done["method"] == "none" and done["revoked"]       # the pull had finished
    assert xml_backing_chains(instant.dom.XMLDesc(0)) == {"vda": []}
    instant.destroy()
    assert image_bytes(done["disks"]["vda"], "qcow2") == instant.expected_now()["vda"]
    assert not os.path.exists(os.path.join(lab.state_dir, "journal", f"{started['uuid']}.json"))
