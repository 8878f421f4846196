"""Snapshot, backup and restore against a real libvirtd, compared byte for byte."""
from __future__ import annotations

import json
import os
import subprocess
import xml.etree.ElementTree as ET

import libvirt

from tests.lab import MiB, assert_same, backup_history, image_bytes, restore_and_read


def test_three_points_each_restore_exact(lab, backup_location):
    dom = lab.domain()
    assert " " in dom.directory
    backup = backup_location("backup one")
    points = backup_history(dom, backup, 3)
    listed = lab.cli("list", "-b", backup, "-d", dom.name, "--json").json()
    assert [row["seq"] for row in listed] == [1, 2, 3]
    assert [row["id"] for row in listed] == list(points)
    assert all(":" not in row["id"] for row in listed)
    # the first point holds both whole images, later ones only the layer frozen since
    assert listed[0]["layers"] == 2 and listed[2]["layers"] == 6
    assert listed[1]["bytes_new"] < listed[0]["bytes_new"]
    for point_id, expected in points.items():
        assert_same(restore_and_read(lab, dom.name, backup, point_id), expected, point_id)
    assert "ok: 3 restore point(s)" in lab.cli("verify", "-b", backup).stdout
    # overlays are named <stem>.bimg-<tag> beside the image, without a colon
    top = dom.top("vda")
    assert os.path.dirname(top) == dom.directory
    assert os.path.basename(top) == f"vda.bimg-{listed[-1]['id']}" and ":" not in top


def test_catch_up_after_snapshot_without_backup_dir(lab, backup_location):
    dom = lab.domain()
    backup = backup_location("backup")
    first = backup_history(dom, backup, 1)
    dom.write("vda", 0x71, 5 * MiB, MiB)
    dom.snapshot(None)                                # freezes a layer nobody copies
    dom.write("vda", 0x72, 6 * MiB, MiB)
    dom.write("vdb", 0x73, 7 * MiB, MiB)
    result = dom.snapshot(backup).json()[0]
    expected = dom.expected_now()
    listed = lab.cli("list", "-b", backup, "--json").json()
    assert len(listed) == 2                           # one point per snapshot -b run
    assert listed[1]["layers"] == 6                   # base + first + caught-up + new, per disk
    assert_same(restore_and_read(lab, dom.name, backup, result["point"]), expected, "caught up")
    point_id = next(iter(first))
    assert_same(restore_and_read(lab, dom.name, backup, point_id), first[point_id], "first")


def test_new_empty_backup_dir_gets_complete_first_point(lab, backup_location):
    dom = lab.domain()
    first_dir, second_dir = backup_location("first"), backup_location("second")
    backup_history(dom, first_dir, 2)
    dom.write("vdb", 0x55, 2 * MiB, MiB)
    second = dom.snapshot(second_dir).json()[0]
    expected_second = dom.expected_now()
    assert_same(restore_and_read(lab, dom.name, second_dir, second["point"]), expected_second,
                "first point of a new backup dir")
    # the first directory catches up on the layer the second run froze
    dom.write("vda", 0x56, 9 * MiB, MiB)
    again = dom.snapshot(first_dir).json()[0]
    assert_same(restore_and_read(lab, dom.name, first_dir, again["point"]), dom.expected_now(),
                "first dir after a run into another dir")


def test_shut_off_domain(lab):
    dom = lab.domain(start=False)
    backup = lab.path("backup")
    dom.write("vda", 0x21, 2 * MiB, MiB)
    first = dom.snapshot(backup).json()[0]
    expected_first = dom.expected_now()
    assert dom.top("vda", inactive=True) == first["overlays"]["vda"]
    dom.write("vda", 0x22, 3 * MiB, MiB)
    dom.write("vdb", 0x23, 4 * MiB, MiB)
    second = dom.snapshot(backup).json()[0]
    assert_same(restore_and_read(lab, dom.name, backup, first["point"]), expected_first, "offline 1")
    assert_same(restore_and_read(lab, dom.name, backup, second["point"]), dom.expected_now(),
                "offline 2")
    # the definition is consistent: the domain starts on the new chain, with the data
    dom.start()
    assert dom.top("vda") == second["overlays"]["vda"]
    dom.destroy()
    assert image_bytes(dom.top("vda"), "qcow2") == dom.expected_now()["vda"]


def test_persistent_xml_has_no_stale_backing_store(lab):
    dom = lab.domain()
    dom.snapshot(None)
    dom.snapshot(None)
    inactive = ET.fromstring(dom.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    for disk in inactive.findall("./devices/disk"):
        assert disk.find("backingStore") is None
    dom.destroy()
    dom.start()                                     # probes the chain from the headers
    assert dom.top("vda").endswith(os.path.basename(dom.top("vda", inactive=True)))


def test_restore_repoints_domain_and_backup_continues_from_restored_point(lab):
    dom = lab.domain()
    backup = lab.path("backup")
    points = backup_history(dom, backup, 3)
    first_id = list(points)[0]
    dom.destroy()
    to = lab.path("restored here")
    result = lab.cli("restore", "-d", dom.name, "-b", backup, "--to", to, "--at", first_id,
                     "--json").json()
    assert result["defined"] == dom.name
    assert dom.top("vda", inactive=True) == result["disks"]["vda"]
    dom.expected = {target: bytearray(content) for target, content in points[first_id].items()}
    dom.start()
    dom.write("vda", 0x7A, 10 * MiB, MiB)
    dom.write("vdb", 0x7B, 11 * MiB, 256 * 1024)
    after = dom.snapshot(backup).json()[0]
    # incremental from the restored point: only the restored overlays were copied
    assert after["bytes_copied"] < 4 * MiB, after
    assert_same(restore_and_read(lab, dom.name, backup, after["point"]), dom.expected_now(),
                "after restore and more writes")
    for point_id, expected in points.items():
        assert_same(restore_and_read(lab, dom.name, backup, point_id), expected, point_id)


def test_flatten_gives_one_standalone_image_per_disk(lab):
    dom = lab.domain()
    backup = lab.path("backup")
    points = backup_history(dom, backup, 2)
    point_id = list(points)[-1]
    to = lab.path("flat")
    result = lab.cli("restore", "-d", dom.name, "-b", backup, "--to", to, "--at", point_id,
                     "--flatten", "--no-define", "--json").json()
    assert sorted(os.listdir(to)) == sorted(os.path.basename(p) for p in result["disks"].values())
    for target, path in result["disks"].items():
        info = json.loads(os.popen(f"qemu-img info --output=json '{path}'").read())
        assert "backing-filename" not in info
        assert image_bytes(path, "qcow2") == points[point_id][target]


def test_flipped_byte_is_caught_by_verify_and_restore(lab):
    dom = lab.domain()
    backup = lab.path("backup")
    points = backup_history(dom, backup, 2)
    listed = lab.cli("list", "-b", backup, "--json").json()
    uuid = listed[0]["uuid"]
    layers_dir = os.path.join(backup, "domains", uuid, "layers")
    victim = sorted(name for name in os.listdir(layers_dir) if name.endswith(".raw"))[0]
    path = os.path.join(layers_dir, victim)
    with open(path, "r+b") as handle:          # flip a byte of the base's initial data
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    result = lab.cli("verify", "-b", backup, expect=1)
    assert victim in result.stderr and "offset 0" in result.stderr
    to = lab.path("bad restore")
    failed = lab.cli("restore", "-d", dom.name, "-b", backup, "--to", to, "--no-define", "-q",
                     expect=1)
    assert "damaged" in failed.stderr and failed.stderr.count("\n") == 1
    leftovers = [name for name in os.listdir(to)] if os.path.isdir(to) else []
    assert leftovers == [], leftovers          # nothing that looks like a usable image
    # the other disk's chain is intact and restores alone
    intact = lab.cli("restore", "-d", dom.name, "-b", backup, "--to", lab.path("vda only"),
                     "--disk", "vda", "--no-define", "--json").json()
    assert image_bytes(intact["disks"]["vda"], "qcow2") == points[list(points)[-1]]["vda"]


def test_restore_as_copy_defines_independent_domain(lab):
    mac = ET.fromstring("<interface type='user'><mac address='52:54:00:12:34:56'/>"
                        "<model type='virtio'/></interface>")
    dom = lab.domain(extra_devices=[mac])
    backup = lab.path("backup")
    points = backup_history(dom, backup, 1)
    copy_name = dom.name + "-copy"
    lab.forget_name(copy_name)
    result = lab.cli("restore", "-d", dom.name, "-b", backup, "--to", lab.path("copy"),
                     "--as", copy_name, "--disk", "vda", "--json").json()
    assert result["defined"] == copy_name
    copy = ET.fromstring(lab.conn.lookupByName(copy_name).XMLDesc(2))
    original = ET.fromstring(dom.dom.XMLDesc(2))
    assert copy.findtext("uuid") != original.findtext("uuid")
    assert copy.find("./devices/interface/mac").get("address") != "52:54:00:12:34:56"
    targets = [disk.find("target").get("dev") for disk in copy.findall("./devices/disk")]
    assert targets == ["vda"]                     # vdb is not in the copy: no shared disk
    lab.conn.lookupByName(copy_name).create()     # and it starts
    assert dom.dom.isActive()
    assert image_bytes(result["disks"]["vda"], "qcow2") == points[list(points)[0]]["vda"]


def test_restore_defines_a_domain_that_no_longer_exists(lab):
    dom = lab.domain()
    backup = lab.path("backup")
    points = backup_history(dom, backup, 2)
    dom.destroy()
    dom.dom.undefine()
    result = lab.cli("restore", "-d", dom.name, "-b", backup, "--to", lab.path("back"),
                     "--json").json()
    assert result["defined"] == dom.name
    assert dom.top("vda", inactive=True) == result["disks"]["vda"]
    dom.start()
    dom.destroy()
    assert image_bytes(result["disks"]["vdb"], "qcow2") == points[list(points)[-1]]["vdb"]


def test_resized_disk_starts_a_new_full_copy(lab):
    dom = lab.domain()
    backup = lab.path("backup")
    first = backup_history(dom, backup, 1)
    dom.dom.blockResize("vda", 24 * MiB, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
    dom.expected["vda"].extend(bytes(8 * MiB))
    dom.write("vda", 0x5A, 20 * MiB, MiB)
    result = dom.snapshot(backup).json()[0]
    assert result["new_generation"] == ["vda"]
    assert_same(restore_and_read(lab, dom.name, backup, result["point"]), dom.expected_now(),
                "after resize")
    point_id = next(iter(first))
    assert_same(restore_and_read(lab, dom.name, backup, point_id), first[point_id], "before resize")
    # the base is now stored twice; the next backups rest on the new generation
    for pattern in (0x5B, 0x5C):
        dom.write("vda", pattern, 2 * MiB, MiB)
        later = dom.snapshot(backup).json()[0]
        assert later["new_generation"] == [] and later["bytes_copied"] < 4 * MiB, later
        assert_same(restore_and_read(lab, dom.name, backup, later["point"]), dom.expected_now(),
                    "incremental after resize")
    assert "ok:" in lab.cli("verify", "-b", backup).stdout


def test_modified_base_is_never_used_as_a_stored_layer(lab):
    """A base changed behind fibackup's back (same name, new content) is copied again."""
    dom = lab.domain(start=False)
    backup = lab.path("backup")
    first = dom.snapshot(backup).json()[0]
    expected_first = dom.expected_now()
    # commit the overlay into the base offline: the base keeps its name, changes content
    top = dom.top("vda", inactive=True)
    dom.write("vda", 0x66, 2 * MiB, MiB)
    subprocess.run(["qemu-img", "commit", "-q", top], check=True)
    base = os.path.join(dom.directory, "vda.qcow2")
    subprocess.run(["qemu-img", "rebase", "-q", "-u", "-b", base, "-F", "qcow2", top], check=True)
    second = dom.snapshot(backup).json()[0]
    assert "vda" in second["new_generation"]
    assert_same(restore_and_read(lab, dom.name, backup, second["point"]), dom.expected_now(),
                "after the base changed")
    assert_same(restore_and_read(lab, dom.name, backup, first["point"]), expected_first,
                "the point taken before the base changed")


def test_several_domains_partial_failure_exit_code(lab):
    dom = lab.domain()
    result = lab.cli("snapshot", "-d", dom.name, "-d", "fibtest-missing", "--json", expect=3)
    rows = result.json()
    assert rows[0]["domain"] == dom.name and "error" in rows[1]


def test_paused_and_transient_domains(lab):
    dom = lab.domain()
    backup = lab.path("backup")
    dom.dom.suspend()
    dom.write("vda", 0x31, 2 * MiB, MiB)
    paused = dom.snapshot(backup).json()[0]
    assert dom.dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
    assert_same(restore_and_read(lab, dom.name, backup, paused["point"]), dom.expected_now(),
                "paused")
    dom.dom.resume()
    dom.dom.undefine()                                  # running on: now transient
    assert not dom.dom.isPersistent()
    dom.write("vdb", 0x32, 5 * MiB, MiB)
    transient = dom.snapshot(backup).json()[0]
    assert_same(restore_and_read(lab, dom.name, backup, transient["point"]), dom.expected_now(),
                "transient")


def test_restore_puts_back_a_disk_detached_since_the_point(lab):
    dom = lab.domain()
    backup = lab.path("backup")
    points = backup_history(dom, backup, 1)
    dom.destroy()
    dom.dom.detachDeviceFlags(
        ET.tostring(dom.live_xml_inactive_disk("vdb"), encoding="unicode"),
        libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    result = lab.cli("restore", "-d", dom.name, "-b", backup, "--to", lab.path("r"),
                     "--json").json()
    assert dom.top("vdb", inactive=True) == result["disks"]["vdb"]
    assert image_bytes(result["disks"]["vdb"], "qcow2") == points[list(points)[0]]["vdb"]


def test_status_shows_live_chain_and_what_the_backup_holds(lab):
    dom = lab.domain()
    backup = lab.path("backup")
    dom.snapshot(backup)
    dom.snapshot(None)
    status = lab.cli("status", "-d", dom.name, "-b", backup, "--json").json()
    vda = status["vda"]
    assert [layer["role"] for layer in vda] == ["active", "frozen", "frozen"]
    assert vda[0]["path"] == dom.top("vda")
    assert vda[1]["backed_up"] is None            # frozen without -b: not in the backup
    assert vda[2]["backed_up"] is not None         # the base, copied by the first run
    table = lab.cli("status", "-d", dom.name, "-b", backup).stdout
    assert "NOT BACKED UP" in table and "active" in table


def test_new_and_replaced_disks_start_their_own_full_copy(lab):
    dom = lab.domain(start=False)
    backup = lab.path("backup")
    first = dom.snapshot(backup).json()[0]
    expected_first = dom.expected_now()
    # replace vdb's image by another file and add a new disk vdc
    replacement = os.path.join(dom.directory, "other.img")
    with open(replacement, "wb") as handle:
        handle.truncate(16 * MiB)
        handle.write(b"\x99" * MiB)
    root = ET.fromstring(dom.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    for disk in root.findall("./devices/disk"):
        if disk.find("target").get("dev") == "vdb":
            disk.find("source").set("file", replacement)
            disk.find("driver").set("type", "raw")
    extra = os.path.join(dom.directory, "vdc.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", extra, "8M"], check=True)
    new = ET.SubElement(root.find("devices"), "disk", type="file", device="disk")
    ET.SubElement(new, "driver", name="qemu", type="qcow2")
    ET.SubElement(new, "source", file=extra)
    ET.SubElement(new, "target", dev="vdc", bus="virtio")
    lab.conn.defineXML(ET.tostring(root, encoding="unicode"))
    dom.expected["vdb"] = bytearray(b"\x99" * MiB + bytes(15 * MiB))
    dom.expected["vdc"] = bytearray(8 * MiB)
    second = dom.snapshot(backup).json()[0]
    assert second["new_generation"] == ["vdb"]
    assert_same(restore_and_read(lab, dom.name, backup, second["point"]), dom.expected_now(),
                "replaced and new disks")
    assert_same(restore_and_read(lab, dom.name, backup, first["point"]), expected_first,
                "before the change")
