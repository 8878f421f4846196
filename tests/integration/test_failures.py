"""Every expected failure: non-zero exit, one line naming problem and fix, no
traceback, and nothing half-done left looking valid (no snapshot taken when the
backup cannot be made, no manifest without all its data)."""
from __future__ import annotations

import os

from fibackup.host.lock import DomainLock
from tests.lab import MiB, DiskDef, assert_same, restore_and_read


def one_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("fibackup:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_unknown_domain(lab):
    result = lab.cli("snapshot", "-d", "fibtest-no-such-domain", expect=1)
    assert "not defined" in one_line(result) and "virsh list --all" in one_line(result)
    backup = lab.path("backup")
    lab.domain(disks=[DiskDef("vda")]).snapshot(backup)
    result = lab.cli("restore", "-d", "fibtest-no-such-domain", "-b", backup, "--to",
                     lab.path("r"), "--no-define", expect=1)
    assert "no restore point of domain 'fibtest-no-such-domain'" in one_line(result)
    assert "fibackup list" in one_line(result)


def test_libvirtd_unreachable(lab):
    result = lab.cli("snapshot", "-d", "x", "--connect",
                     "qemu+unix:///system?socket=/nonexistent/libvirt-sock", expect=1)
    assert "cannot connect" in one_line(result) and "libvirtd" in one_line(result)


def test_bad_disk_names_are_usage_errors(lab):
    dom = lab.domain(disks=[DiskDef("vda")])
    result = lab.cli("snapshot", "-d", dom.name, "--disk", "vdz", expect=2)
    assert "no disk vdz" in one_line(result) and "its disks are vda" in one_line(result)
    backup = lab.path("backup")
    dom.snapshot(backup)
    result = lab.cli("restore", "-d", dom.name, "-b", backup, "--to", lab.path("r"),
                     "--disk", "vdz", "--no-define", expect=2)
    assert "no disk vdz" in one_line(result) and "vda" in one_line(result)


def test_no_such_restore_point_and_missing_backup_dir(lab):
    dom = lab.domain(disks=[DiskDef("vda")])
    backup = lab.path("backup")
    dom.snapshot(backup)
    result = lab.cli("restore", "-d", dom.name, "-b", backup, "--to", lab.path("r"),
                     "--at", "19990101-000000", "--no-define", expect=1)
    assert "no restore point '19990101-000000'" in one_line(result)
    for command in (["list"], ["verify"], ["restore", "-d", dom.name, "--to", lab.path("r2")]):
        result = lab.cli(*command, "-b", lab.path("missing"), expect=1)
        assert "does not exist" in one_line(result) and "mounted" in one_line(result)
    before = dom.top("vda")
    result = lab.cli("snapshot", "-d", dom.name, "-b", lab.path("no parent", "child"), expect=1)
    assert "does not exist" in one_line(result)
    assert dom.top("vda") == before            # refused before any snapshot


def test_backup_dir_not_writable(lab):
    dom = lab.domain(disks=[DiskDef("vda")])
    readonly = lab.tmpfs("readonly", "8M", readonly=True)
    before = dom.top("vda")
    result = lab.cli("snapshot", "-d", dom.name, "-b", readonly, expect=1)
    assert "not writable" in one_line(result) and "read-write" in one_line(result)
    assert dom.top("vda") == before


def test_not_enough_space_is_refused_before_the_snapshot(lab):
    dom = lab.domain(disks=[DiskDef("vda", "qcow2", 32 * MiB)])
    dom.write("vda", 0x44, 0, 8 * MiB)
    small = lab.tmpfs("small", "4M")
    before = dom.top("vda")
    result = lab.cli("snapshot", "-d", dom.name, "-b", small, expect=1)
    line = one_line(result)
    assert "not enough space" in line and "needed" in line and "free" in line
    assert dom.top("vda") == before


def test_disk_full_mid_copy_leaves_no_restore_point(lab):
    dom = lab.domain(disks=[DiskDef("vda", "qcow2", 32 * MiB)])
    dom.write("vda", 0x45, 0, 8 * MiB)
    small = lab.tmpfs("full", "4M")
    result = lab.cli("snapshot", "-d", dom.name, "-b", small, "--no-space-check", expect=1)
    assert "filled up" in one_line(result)
    assert lab.cli("list", "-b", small, "--json").json() == []
    leftovers = [name for directory, _, files in os.walk(small) for name in files
                 if name not in ("fibackup-store.json", ".lock")
                 and os.path.basename(directory) != "logs"]
    assert leftovers == [], leftovers
    # the domain runs on an intact chain and the next run into a roomy dir works
    assert dom.dom.isActive()
    roomy = lab.path("roomy")
    point = dom.snapshot(roomy).json()[0]["point"]
    assert_same(restore_and_read(lab, dom.name, roomy, point), dom.expected_now(), "after ENOSPC")


def test_domain_locked_by_another_run(lab):
    dom = lab.domain(disks=[DiskDef("vda")])
    backup = lab.path("backup")
    dom.snapshot(backup)
    os.environ["FIBACKUP_STATE_DIR"] = lab.state_dir
    try:
        with DomainLock(dom.dom.UUIDString(), dom.name):
            result = lab.cli("snapshot", "-d", dom.name, expect=4)
            dom.destroy()
            restore = lab.cli("restore", "-d", dom.name, "-b", backup, "--to", lab.path("r"),
                              expect=4)
    finally:
        del os.environ["FIBACKUP_STATE_DIR"]
    assert "locked by another fibackup run" in one_line(result)
    assert "locked by another fibackup run" in one_line(restore)


def test_quiesce_without_agent_fails_clearly_and_takes_nothing(lab):
    dom = lab.domain(disks=[DiskDef("vda")])            # firmware only: no agent answers
    before = dom.top("vda")
    result = lab.cli("snapshot", "-d", dom.name, "--quiesce", expect=1)
    line = one_line(result)
    assert "quiesce" in line and "agent" in line and "No snapshot was taken" in line
    assert dom.top("vda") == before
    assert not [name for name in os.listdir(dom.directory) if ".bimg-" in name]


def test_restore_refuses_running_domain_and_existing_files(lab):
    dom = lab.domain(disks=[DiskDef("vda")])
    backup = lab.path("backup")
    dom.snapshot(backup)
    result = lab.cli("restore", "-d", dom.name, "-b", backup, "--to", lab.path("r"), expect=1)
    assert "needs it shut off" in one_line(result)
    to = lab.path("twice")
    lab.cli("restore", "-d", dom.name, "-b", backup, "--to", to, "--no-define")
    result = lab.cli("restore", "-d", dom.name, "-b", backup, "--to", to, "--no-define", expect=1)
    assert "--force" in one_line(result)
    lab.cli("restore", "-d", dom.name, "-b", backup, "--to", to, "--no-define", "--force")


def test_unsupported_disks_are_named_with_the_way_out(lab):
    import xml.etree.ElementTree as ET
    block = ET.fromstring("<disk type='block' device='disk'><driver name='qemu' type='raw'/>"
                          "<source dev='/dev/null'/><target dev='vdc' bus='virtio'/></disk>")
    dom = lab.domain(disks=[DiskDef("vda")], start=False, extra_devices=[block])
    result = lab.cli("snapshot", "-d", dom.name, expect=1)
    line = one_line(result)
    assert "vdc" in line and "--exclude-disk vdc" in line
    backup = lab.path("backup")
    lab.cli("snapshot", "-d", dom.name, "-b", backup, "--exclude-disk", "vdc")
    listed = lab.cli("list", "-b", backup, "--json").json()
    assert listed[0]["disks"] == ["vda"]


def test_restore_target_unreachable_by_qemu_is_named(lab):
    dom = lab.domain(disks=[DiskDef("vda")])
    backup = lab.path("backup")
    dom.snapshot(backup)
    dom.destroy()
    private = lab.path("private")
    os.mkdir(private, 0o700)
    result = lab.cli("restore", "-d", dom.name, "-b", backup, "--to",
                     os.path.join(private, "images"), expect=1)
    line = one_line(result)
    assert "libvirt-qemu" in line and "chmod o+x" in line and private in line
    images = os.path.join(private, "images")
    assert not os.path.exists(images) or os.listdir(images) == []


def test_qcow2_with_external_data_file_is_refused_before_the_snapshot(lab):
    import subprocess
    import xml.etree.ElementTree as ET
    dom = lab.domain(disks=[DiskDef("vda")], start=False)
    image = os.path.join(dom.directory, "ext.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                    f"data_file={os.path.join(dom.directory, 'ext.data')}", image, "4M"], check=True)
    disk = ET.fromstring("<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                         "<target dev='vdb' bus='virtio'/></disk>")
    ET.SubElement(disk, "source", file=image)
    xml = ET.fromstring(dom.dom.XMLDesc(0))
    xml.find("devices").append(disk)
    lab.conn.defineXML(ET.tostring(xml, encoding="unicode"))
    before = dom.top("vdb", inactive=True)
    result = lab.cli("snapshot", "-d", dom.name, "-b", lab.path("backup"), expect=1)
    line = one_line(result)
    assert "external file" in line and "--exclude-disk vdb" in line
    assert dom.top("vdb", inactive=True) == before


def test_damaged_manifest_of_one_domain_does_not_hide_the_others(lab):
    first = lab.domain(disks=[DiskDef("vda")])
    second = lab.domain(disks=[DiskDef("vda")])
    backup = lab.path("backup")
    first.snapshot(backup)
    second.snapshot(backup)
    uuid = first.dom.UUIDString()
    manifest = os.path.join(backup, "domains", uuid, "points", "00000001.json")
    with open(manifest, "w") as handle:
        handle.write("{garbage")
    listed = lab.cli("list", "-b", backup, "--json")
    assert [row["domain"] for row in listed.json()] == [second.name]
    assert "00000001.json" in listed.stderr
    lab.cli("restore", "-d", second.name, "-b", backup, "--to", lab.path("r"), "--no-define")
    result = lab.cli("verify", "-b", backup, expect=1)
    assert "00000001.json" in result.stderr
    second.snapshot(backup)                       # later runs still work
    first.snapshot(backup)


def test_recreated_domain_with_same_name_is_not_repointed(lab):
    dom = lab.domain(disks=[DiskDef("vda")])
    backup = lab.path("backup")
    dom.snapshot(backup)
    xml = dom.dom.XMLDesc(2)
    dom.destroy()
    dom.dom.undefine()
    import re
    lab.conn.defineXML(re.sub(r"<uuid>[^<]*</uuid>", "", xml))     # same name, new UUID
    result = lab.cli("restore", "-d", dom.name, "-b", backup, "--to", lab.path("r"), expect=1)
    assert "is not the domain this backup was taken from" in one_line(result)
    assert "--as" in one_line(result)


def test_explicitly_truncated_chain_is_refused_before_the_snapshot(lab):
    import subprocess
    import xml.etree.ElementTree as ET
    dom = lab.domain(disks=[DiskDef("vda")], start=False)
    base = os.path.join(dom.directory, "vda.qcow2")
    top = os.path.join(dom.directory, "top.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top],
                   check=True)
    xml = ET.fromstring(dom.dom.XMLDesc(2))
    disk = xml.find("./devices/disk")
    disk.find("source").set("file", top)
    ET.SubElement(disk, "backingStore")          # "no backing", though the header names one
    lab.conn.defineXML(ET.tostring(xml, encoding="unicode"))
    assert ET.fromstring(dom.dom.XMLDesc(2)).find("./devices/disk/backingStore") is not None
    result = lab.cli("snapshot", "-d", dom.name, "-b", lab.path("backup"), expect=1)
    assert "names the backing file" in one_line(result)
    assert dom.top("vda", inactive=True) == top


def test_disk_full_during_restore_leaves_nothing(lab):
    dom = lab.domain(disks=[DiskDef("vda", "qcow2", 32 * MiB)])
    dom.write("vda", 0x47, 0, 8 * MiB)
    backup = lab.path("backup")
    dom.snapshot(backup)
    small = lab.tmpfs("small restore", "4M")
    result = lab.cli("restore", "-d", dom.name, "-b", backup, "--to", small, "--no-define",
                     expect=1)
    assert "not enough space" in one_line(result)
    result = lab.cli("restore", "-d", dom.name, "-b", backup, "--to", small, "--no-define",
                     "--no-space-check", expect=1)
    assert "filled up" in one_line(result)
    assert os.listdir(small) == []


def test_list_verify_and_restore_need_no_libvirt(lab):
    dom = lab.domain(disks=[DiskDef("vda")])
    backup = lab.path("backup")
    point = dom.snapshot(backup).json()[0]["point"]
    os.environ["LIBVIRT_DEFAULT_URI"] = "qemu+unix:///system?socket=/nonexistent/sock"
    try:
        assert lab.cli("list", "-b", backup, "--json").json()[0]["id"] == point
        lab.cli("verify", "-b", backup, "-d", dom.name, "--at", point)
        assert_same(restore_and_read(lab, dom.name, backup, point), dom.expected_now(),
                    "restored without libvirt")
        lab.cli("status", "-d", dom.name, expect=1)          # this one needs libvirt
    finally:
        del os.environ["LIBVIRT_DEFAULT_URI"]


def test_killed_run_publishes_no_point_and_the_next_run_catches_up(lab):
    import signal
    import subprocess
    import sys
    import time
    dom = lab.domain(disks=[DiskDef("vda", "raw", 512 * MiB)], start=False)
    for index in range(8):
        dom.write("vda", 0x50 + index, index * 64 * MiB, 48 * MiB)
    backup = lab.path("backup")
    env = {**os.environ, "FIBACKUP_STATE_DIR": lab.state_dir}
    process = subprocess.Popen([sys.executable, "-m", "fibackup", "snapshot", "-d", dom.name,
                                "-b", backup], env=env, stderr=subprocess.DEVNULL)
    layers = os.path.join(backup, "domains", dom.dom.UUIDString(), "layers")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if os.path.isdir(layers) and any(".partial-" in name for name in os.listdir(layers)):
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert lab.cli("list", "-b", backup, "--json").json() == []
    point = dom.snapshot(backup).json()[0]["point"]
    assert_same(restore_and_read(lab, dom.name, backup, point), dom.expected_now(), "after kill")
    assert "ok: 1 restore point(s)" in lab.cli("verify", "-b", backup).stdout
