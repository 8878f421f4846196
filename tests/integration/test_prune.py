"""prune: retention by merging, against real images, checked byte for byte."""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import pytest

from tests.lab import (DiskDef, MiB, assert_same, instant_restore, restore_and_read,
                       xml_backing_chains)


def _history(dom, backup: str, rounds: int, first: int = 0) -> dict[str, dict[str, bytes]]:
    """``rounds`` nights: guest writes, then snapshot -b; {point id: disks' content}."""
    points = {}
    for night in range(first, first + rounds):
        dom.write("vda", 0x21 + night, (night % 12) * MiB, MiB)
        dom.write("vda", 0x61 + night, 64 * 1024, 4096)          # overwrites every night
        dom.write("vdb", 0xa1 + night, ((night * 3) % 14) * MiB, 256 * 1024)
        points[dom.snapshot(backup).json()[0]["point"]] = dom.expected_now()
    return points


def _listed(lab, backup: str, name: str) -> list[dict]:
    return lab.cli("list", "-b", backup, "-d", name, "--json").json()


def _store_files(backup: str) -> dict[str, list[str]]:
    domains = os.path.join(backup, "domains")
    (uuid,) = os.listdir(domains)
    return {sub: sorted(os.listdir(os.path.join(domains, uuid, sub))) for sub in ("layers", "points")}


def _check_all(lab, backup: str, name: str, points: dict[str, dict[str, bytes]]) -> list[dict]:
    """Every listed point restores exactly what the guest had; verify passes; every
    layer file is listed by some manifest (nothing left behind)."""
    listed = _listed(lab, backup, name)
    for row in listed:
        assert_same(restore_and_read(lab, name, backup, row["id"]), points[row["id"]], row["id"])
    assert lab.cli("verify", "-b", backup, "-d", name).code == 0
    files = _store_files(backup)
    assert not [name for name in files["layers"] + files["points"] if name.startswith(".")]
    return listed


def test_prune_to_several_n_over_ten_points_stays_exact_and_incremental(lab):
    dom = lab.domain()
    backup = lab.path("backup")
    points = _history(dom, backup, 10)
    ids = list(points)
    before = _store_files(backup)

    dry = lab.cli("prune", "-b", backup, "-d", dom.name, "--keep", "4", "--dry-run",
                  "--json").json()[0]
    assert dry["dry_run"] and dry["dropped"] == ids[:6] and dry["kept"] == ids[6:]
    assert dry["merges"] and dry["removed_layers"]
    assert _store_files(backup) == before                       # nothing changed

    for keep in (7, 4, 2, 1):
        result = lab.cli("prune", "-b", backup, "-d", dom.name, "--keep", str(keep),
                         "--json").json()[0]
        assert result["kept"] == ids[-keep:], keep
        assert {merge["disk"] for merge in result["merges"]} == {"vda", "vdb"}
        listed = _check_all(lab, backup, dom.name, points)
        assert [row["id"] for row in listed] == ids[-keep:]
        # the oldest kept point now rests on one merged layer per disk
        assert listed[0]["layers"] == 2
    assert len(_store_files(backup)["layers"]) == 4             # 2 disks x (image + record)
    stored = {name.rsplit(".", 1)[0] for name in _store_files(backup)["layers"]}
    status = lab.cli("status", "-d", dom.name, "-b", backup, "--json").json()
    frozen = [layer for layers in status.values() for layer in layers if layer["role"] == "frozen"]
    assert frozen and all(layer["backed_up"] in stored for layer in frozen), status

    # pruning again changes nothing
    again = lab.cli("prune", "-b", backup, "-d", dom.name, "--keep", "1", "--json",
                    "--no-libvirt", "--connect", "qemu:///nonexistent").json()[0]
    assert again["dropped"] == [] and again["removed_layers"] == []

    # forever-incremental: the next backups copy only the new layer, also after a commit
    more = _history(dom, backup, 1, first=10)
    row = _listed(lab, backup, dom.name)[-1]
    assert row["layers"] == 4 and row["bytes_new"] < 4 * MiB, row
    lab.cli("consolidate", "-d", dom.name, "-b", backup)
    more.update(_history(dom, backup, 1, first=11))
    row = _listed(lab, backup, dom.name)[-1]
    assert row["bytes_new"] < 4 * MiB, row
    points.update(more)
    lab.cli("prune", "-b", backup, "-d", dom.name, "--keep", "2")
    listed = _check_all(lab, backup, dom.name, points)
    assert [row["id"] for row in listed] == list(more)


FAULTS = ["prune.merge", "store.image-published", "prune.merge.after", "prune.switch",
          "prune.switch.after", "prune.drop", "prune.drop.after", "prune.delete",
          "prune.delete.after"]


@pytest.mark.parametrize("fault", FAULTS)
def test_prune_killed_halfway_loses_nothing_and_the_next_run_finishes(lab, fault):
    dom = lab.domain()
    backup = lab.path("backup")
    points = _history(dom, backup, 4)
    ids = list(points)
    killed = lab.cli("prune", "-b", backup, "-d", dom.name, "--keep", "2",
                     env={"FIBACKUP_FAULT": fault}, expect=None)
    assert killed.code == -9, killed
    listed = _listed(lab, backup, dom.name)
    assert [row["id"] for row in listed] == ids[len(ids) - len(listed):]
    for row in listed:                                  # every point still listed is exact
        assert_same(restore_and_read(lab, dom.name, backup, row["id"]), points[row["id"]],
                    f"{fault}: {row['id']}")
    lab.cli("prune", "-b", backup, "-d", dom.name, "--keep", "2")
    listed = _check_all(lab, backup, dom.name, points)
    assert [row["id"] for row in listed] == ids[-2:]
    files = _store_files(backup)
    assert len(files["points"]) == 2 and len(files["layers"]) == 2 * (2 + 2)
    # and the next backup is still incremental
    points.update(_history(dom, backup, 1, first=4))
    assert _listed(lab, backup, dom.name)[-1]["bytes_new"] < 4 * MiB


def test_prune_never_touches_layers_a_libvirt_domain_runs_on(lab):
    dom = lab.domain()
    backup = lab.path("backup")
    points = _history(dom, backup, 4)
    ids = list(points)
    first = lab.cli("restore", "-d", dom.name, "-b", backup, "--to", lab.path("r"), "--at",
                    ids[1], "--no-define", "--json").json()
    del first
    uuid = os.listdir(os.path.join(backup, "domains"))[0]
    layers_dir = os.path.join(backup, "domains", uuid, "layers")
    # a (shut-off) domain whose disk is a stored layer file, as instant recovery makes them
    stored = sorted(name for name in os.listdir(layers_dir) if "-vda-001-" in name
                    and name.endswith(".qcow2"))[0]
    reader = lab.domain(disks=[], start=False)
    xml = ET.fromstring(reader.dom.XMLDesc(0))
    disk = ET.SubElement(xml.find("devices"), "disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="qcow2")
    ET.SubElement(disk, "source", file=os.path.join(layers_dir, stored))
    ET.SubElement(disk, "target", dev="vdz", bus="virtio")
    ET.SubElement(disk, "readonly")
    lab.conn.defineXML(ET.tostring(xml, encoding="unicode"))
    result = lab.cli("prune", "-b", backup, "-d", dom.name, "--keep", "1", "--json").json()[0]
    pinned = stored.rsplit(".", 1)[0]
    assert pinned in result["pinned_layers"]
    assert pinned not in result["removed_layers"]
    assert all(pinned not in merge["layers"] for merge in result["merges"])
    assert os.path.exists(os.path.join(layers_dir, stored))
    _check_all(lab, backup, dom.name, points)


def test_prune_takes_its_rules_and_directory_from_the_config_file_unless_flags_say(lab):
    dom = lab.domain()
    backup = lab.path("backup")
    points = _history(dom, backup, 4)
    ids = list(points)
    config = lab.path("fibackup.toml")
    with open(config, "w") as handle:
        handle.write(f'backup_dir = "{backup}"\n[prune]\nkeep = 3\n')
    env = {"FIBACKUP_CONFIG": config}
    assert lab.cli("prune", "-d", dom.name, "--json", env=env).json()[0]["kept"] == ids[1:]
    assert lab.cli("prune", "-d", dom.name, "--keep", "1", "--json",
                   env=env).json()[0]["kept"] == ids[3:]
    _check_all(lab, backup, dom.name, points)


def test_prune_keeps_shared_boot_files_and_removes_the_ones_only_dropped_points_listed(lab):
    import libvirt
    dom = lab.domain(disks=[DiskDef("vda")], start=False, guest_cmdline="")
    kernel = lab.path("kernel-file")
    xml = ET.fromstring(dom.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    xml.find("os/kernel").text = kernel
    lab.conn.defineXML(ET.tostring(xml, encoding="unicode"))
    backup = lab.path("backup")
    points = {}
    for night in range(3):
        with open(kernel, "wb") as handle:            # a new kernel every other night
            handle.write(bytes([0x41 + night // 2]) * 4096)
        dom.write("vda", 0x21 + night, night * MiB, MiB)
        points[dom.snapshot(backup).json()[0]["point"]] = dom.expected_now()
    listed = _listed(lab, backup, dom.name)
    kernels = [[f["digest"] for f in row["files"] if f["role"] == "kernel"] for row in listed]
    assert kernels[0] == kernels[1] != kernels[2]
    result = lab.cli("prune", "-b", backup, "-d", dom.name, "--keep", "1", "--json").json()[0]
    assert kernels[0][0] in result["removed_files"]
    uuid = os.listdir(os.path.join(backup, "domains"))[0]
    stored = set(os.listdir(os.path.join(backup, "domains", uuid, "files")))
    assert {name.rsplit(".", 1)[0] for name in stored} == \
        {f["digest"] for f in _listed(lab, backup, dom.name)[0]["files"]}
    _check_all(lab, backup, dom.name, points)
    restored = lab.cli("restore", "-d", dom.name, "-b", backup, "--to", lab.path("r"),
                       "--no-define", "--json").json()
    with open(restored["domain_files"]["kernel"], "rb") as handle:
        assert handle.read() == bytes([0x42]) * 4096


def test_prune_leaves_an_instant_recovery_domains_chain_alone_until_finalized(lab):
    dom = lab.domain()
    backup = lab.path("backup")
    points = _history(dom, backup, 4)
    ids = list(points)
    name = dom.name + "-now"
    instant_restore(lab, dom.name, backup, name, lab.path("instant"), "--at", "2")
    copy = lab.conn.lookupByName(name)
    used = {path for chain in xml_backing_chains(copy.XMLDesc(0)).values() for path in chain}
    assert used and all(os.path.exists(path) for path in used)

    result = lab.cli("prune", "-b", backup, "-d", dom.name, "--keep", "1", "--json").json()[0]
    assert result["kept"] == ids[-1:] and result["merges"] == []
    assert {os.path.basename(path).rsplit(".", 1)[0] for path in used} <= set(result["pinned_layers"])
    assert all(os.path.exists(path) for path in used)
    _check_all(lab, backup, dom.name, points)

    lab.cli("restore", "--finalize", name)
    copy.destroy()
    assert image_bytes_of(lab, copy, "vda") == points[ids[1]]["vda"]
    points.update(_history(dom, backup, 1, first=4))
    result = lab.cli("prune", "-b", backup, "-d", dom.name, "--keep", "1", "--json").json()[0]
    assert result["merges"] and result["pinned_layers"] == []
    listed = _check_all(lab, backup, dom.name, points)
    assert len(_store_files(backup)["layers"]) == 4     # one merged layer per disk, + records
    assert not any(os.path.exists(path) for path in used)

    # and a pruned point (one merged layer per disk) runs as an instant recovery too
    again = dom.name + "-again"
    instant_restore(lab, dom.name, backup, again, lab.path("instant again"))
    lab.cli("restore", "--finalize", again)
    copy = lab.conn.lookupByName(again)
    copy.destroy()
    newest = points[list(points)[-1]]
    assert {target: image_bytes_of(lab, copy, target) for target in newest} == newest
    assert [row["id"] for row in listed] == list(points)[-1:]


def image_bytes_of(lab, domain, target: str) -> bytes:
    from tests.lab import image_bytes
    for disk in ET.fromstring(domain.XMLDesc(libvirt_inactive())).findall("./devices/disk"):
        if disk.find("target").get("dev") == target:
            return image_bytes(disk.find("source").get("file"), "qcow2")
    raise KeyError(target)


def libvirt_inactive() -> int:
    import libvirt
    return libvirt.VIR_DOMAIN_XML_INACTIVE


def test_a_prune_killed_while_switching_then_a_new_night_loses_nothing(lab):
    """Killed between publishing some revisions and dropping: the rerun lists the merged
    layer in the other kept points too (no second full copy), and a later prune that
    drops a revised point removes all its revisions (none comes back)."""
    dom = lab.domain()
    backup = lab.path("backup")
    points = _history(dom, backup, 4)
    killed = lab.cli("prune", "-b", backup, "-d", dom.name, "--keep", "3",
                     env={"FIBACKUP_FAULT": "prune.switch.after"}, expect=None)
    assert killed.code == -9
    again = lab.cli("prune", "-b", backup, "-d", dom.name, "--keep", "3", "--json").json()[0]
    assert again["merges"] == []                      # the merged layers were adopted
    listed = _check_all(lab, backup, dom.name, points)
    assert [row["id"] for row in listed] == list(points)[1:]
    files = _store_files(backup)
    listed_layers = set()
    for name in files["points"]:
        with open(os.path.join(backup, "domains", os.listdir(os.path.join(backup, "domains"))[0],
                               "points", name)) as handle:
            document = json.load(handle)
        listed_layers.update(layer["id"] for disk in document["disks"].values()
                             for layer in disk["layers"])
    assert {name.rsplit(".", 1)[0] for name in files["layers"]} == listed_layers

    killed = lab.cli("prune", "-b", backup, "-d", dom.name, "--keep", "2",
                     env={"FIBACKUP_FAULT": "prune.switch.after"}, expect=None)
    assert killed.code == -9
    points.update(_history(dom, backup, 1, first=4))
    lab.cli("prune", "-b", backup, "-d", dom.name, "--keep", "2")
    listed = _check_all(lab, backup, dom.name, points)
    assert [row["id"] for row in listed] == list(points)[-2:]
    assert len(_store_files(backup)["points"]) == 2
