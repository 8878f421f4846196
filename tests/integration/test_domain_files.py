"""NVRAM, swtpm state and direct-boot files: saved with each restore point, restored with it.

Real libvirtd and QEMU: a UEFI domain (OVMF pflash loader + per-domain NVRAM, an
emulated TPM 2.0) that sits in its firmware, and a direct-kernel-boot domain.
Every check compares bytes.
"""
from __future__ import annotations

import json
import os
import subprocess
import xml.etree.ElementTree as ET

import libvirt
import pytest

from tests.lab import GUEST_DIR, DiskDef, LabDomain, libvirt_qemu_monitor

OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
SWTPM = "/var/lib/libvirt/swtpm"
NVRAM_OFFSET = 0x3F000
"""Where the test writes into the variable store: an erased area of OVMF_VARS_4M."""


def _uefi_domain(lab) -> tuple[LabDomain, str]:
    if not os.path.exists(OVMF_CODE) or not os.path.exists("/usr/bin/swtpm"):
        pytest.fail("ovmf and swtpm are not installed: run scripts/setup-host.sh")
    tpm = ET.fromstring("<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>")
    dom = lab.domain(disks=[DiskDef("vda", "qcow2")], start=False, extra_devices=[tpm])
    root = ET.fromstring(dom.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    os_element = root.find("os")
    ET.SubElement(os_element, "loader", readonly="yes", type="pflash").text = OVMF_CODE
    nvram = os.path.join(dom.directory, "uefi VARS.fd")
    ET.SubElement(os_element, "nvram", template=OVMF_VARS).text = nvram
    root.find("memory").text = "96"
    root.find("on_reboot").text = "restart"              # OVMF resets once on its first boot
    lab.conn.defineXML(ET.tostring(root, encoding="unicode"))
    dom.start()
    return dom, nvram


def _write_nvram(dom: LabDomain, pattern: int) -> None:
    """A write into the variable store through QEMU's pflash block node, like firmware's."""
    reply = libvirt_qemu_monitor(
        dom.dom, f'qemu-io libvirt-pflash1-format "write -P {pattern} {NVRAM_OFFSET} 4096"')
    assert "error" not in reply.lower() and "failed" not in reply.lower(), reply


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _tpm_state(uuid: str) -> bytes:
    return _read(os.path.join(SWTPM, uuid, "tpm2", "tpm2-00.permall"))


def _new_tpm(dom: LabDomain, uuid: str) -> None:
    """Give the shut-off domain a freshly manufactured TPM (new keys: a new state file)."""
    dom.destroy()
    subprocess.run(["swtpm_setup", "--tpm2", "--tpmstate", os.path.join(SWTPM, uuid, "tpm2"),
                    "--createek", "--overwrite", "--runas", "tss"], check=True,
                   capture_output=True)
    dom.start()


def _os_text(xml: str, tag: str) -> str:
    return (ET.fromstring(xml).findtext(f"os/{tag}") or "").strip()


def test_nvram_and_tpm_state_saved_and_restored(lab):
    dom, nvram = _uefi_domain(lab)
    uuid = dom.dom.UUIDString()
    backup = lab.path("backup")
    points: dict[str, tuple[bytes, bytes]] = {}
    for pattern in (0x5A, 0xA5):
        if points:
            _new_tpm(dom, uuid)
        _write_nvram(dom, pattern)
        point = dom.snapshot(backup).json()[0]["point"]
        nvram_now, tpm_now = _read(nvram), _tpm_state(uuid)
        assert nvram_now[NVRAM_OFFSET:NVRAM_OFFSET + 4096] == bytes([pattern]) * 4096
        points[point] = (nvram_now, tpm_now)
    first, second = list(points)
    assert points[first][0] != points[second][0] and points[first][1] != points[second][1]
    listed = lab.cli("list", "-b", backup, "--json").json()
    assert [sorted(item["role"] for item in row["files"]) for row in listed] == \
        [["nvram", "tpm"], ["nvram", "tpm"]]
    assert "4 file(s)" in lab.cli("verify", "-b", backup).stdout
    dom.destroy()
    live_nvram = _read(nvram)

    # in place: NVRAM into --to and the definition points at it; TPM state into libvirt's
    # directory of that UUID, the state it replaces kept in --to
    to = lab.path("restored first")
    result = lab.cli("restore", "-d", dom.name, "-b", backup, "--to", to, "--at", first,
                     "--json").json()
    restored_nvram = result["domain_files"]["nvram"]
    assert os.path.dirname(restored_nvram) == to
    assert _read(restored_nvram) == points[first][0]
    assert _os_text(dom.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), "nvram") == restored_nvram
    assert _read(nvram) == live_nvram                   # the live NVRAM is never overwritten
    assert _tpm_state(uuid) == points[first][1]
    assert _read(os.path.join(result["domain_files"]["tpm"], "tpm2", "tpm2-00.permall")) == \
        points[first][1]
    replaced = os.path.join(to, f"tpm-{first}-replaced", "tpm2", "tpm2-00.permall")
    assert os.path.exists(replaced)

    # a copy: its own NVRAM in --to, the TPM state in the swtpm directory of its new UUID
    copy_name = dom.name + "-copy"
    lab.forget_name(copy_name)
    to_copy = lab.path("copy")
    result = lab.cli("restore", "-d", dom.name, "-b", backup, "--to", to_copy, "--at", second,
                     "--as", copy_name, "--json").json()
    copy = lab.conn.lookupByName(copy_name)
    copy_nvram = _os_text(copy.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), "nvram")
    assert copy_nvram == result["domain_files"]["nvram"] and copy_nvram.startswith(to_copy)
    assert _read(copy_nvram) == points[second][0]
    assert copy.UUIDString() != uuid and _tpm_state(copy.UUIDString()) == points[second][1]
    copy.create()                                   # libvirt and swtpm accept the restored state
    assert copy.isActive()
    copy.destroy()


def test_direct_boot_files_deduplicated_verified_and_restored(lab):
    dom = lab.domain(disks=[DiskDef("vda", "qcow2")], start=False, guest_cmdline="quiet")
    backup = lab.path("backup")
    first = dom.snapshot(backup).json()[0]
    dom.write("vda", 0x33, 1 << 20, 4096)
    second = dom.snapshot(backup).json()[0]
    assert second["bytes_copied"] < 1 << 20          # kernel and initrd are not copied again
    uuid = lab.cli("list", "-b", backup, "--json").json()[0]["uuid"]
    files_dir = os.path.join(backup, "domains", uuid, "files")
    assert len([name for name in os.listdir(files_dir) if name.endswith(".data")]) == 2
    with open(os.path.join(backup, "domains", uuid, "points", "00000002.json")) as handle:
        manifest = json.load(handle)
    assert {item["role"]: item["new"] for item in manifest["files"]} == \
        {"kernel": False, "initrd": False}
    kernel, initrd = (_read(os.path.join(GUEST_DIR, name)) for name in ("vmlinuz", "initrd.img"))

    copy_name = dom.name + "-copy"
    lab.forget_name(copy_name)
    to = lab.path("copy")
    result = lab.cli("restore", "-d", dom.name, "-b", backup, "--to", to, "--at",
                     first["point"], "--as", copy_name, "--json").json()
    xml = lab.conn.lookupByName(copy_name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    for role, content in (("kernel", kernel), ("initrd", initrd)):
        path = _os_text(xml, role)
        assert path == result["domain_files"][role] and os.path.dirname(path) == to
        assert _read(path) == content

    # --no-define: the files land in --to only
    only = lab.cli("restore", "-d", dom.name, "-b", backup, "--to", lab.path("files only"),
                   "--no-define", "--json").json()
    assert _read(only["domain_files"]["kernel"]) == kernel
    assert _read(only["domain_files"]["initrd"]) == initrd

    # a flipped byte in the stored kernel: verify names it, a restore refuses
    stored = os.path.join(files_dir, f"{manifest['files'][0]['id']}.data")
    with open(stored, "r+b") as handle:
        handle.seek(4096)
        byte = handle.read(1)
        handle.seek(4096)
        handle.write(bytes([byte[0] ^ 0xFF]))
    damaged = lab.cli("verify", "-b", backup, expect=1)
    assert stored in damaged.stderr and manifest["files"][0]["role"] in damaged.stderr
    bad = lab.path("bad")
    failed = lab.cli("restore", "-d", dom.name, "-b", backup, "--to", bad, "--no-define",
                     expect=1)
    assert "damaged" in failed.stderr
    assert not os.path.isdir(bad) or os.listdir(bad) == []

    # debris of an interrupted run in files/ is tidied by repair; listed files are kept
    partial = os.path.join(files_dir, ".file.data.partial-0123abcd")
    orphan = os.path.join(files_dir, "0" * 32 + ".data")
    for path in (partial, orphan):
        with open(path, "wb") as handle:
            handle.write(b"x")
    lab.cli("repair", "-d", dom.name, "-b", backup)
    assert not os.path.exists(partial) and not os.path.exists(orphan)
    assert len([name for name in os.listdir(files_dir) if name.endswith(".data")]) == 2
