"""The test lab: real libvirt domains, real images, exact data patterns.

A LabDomain keeps a byte-exact model of what its guest sees on each disk
(``expected``).  Writes go through QEMU's own block backend over HMP
(``qemu-io`` on the device's backend, exactly what a guest write does) while the
domain runs, or through ``qemu-io`` on the top image while it is shut off.
Restored images are flattened with ``qemu-img convert`` and compared with the
model byte for byte.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Optional, Sequence

import libvirt

from fibackup.virt.libvirt_api import silence_library_errors

# the lab looks up domains that may be gone (Lab.close); libvirt's default handler
# would print each such error, which is raised as libvirtError anyway
silence_library_errors()

KILLED = -signal.SIGKILL  # the exit "code" of a run that fibackup's fault switch killed
MiB = 1024 * 1024
URI = "qemu:///system"
GUEST_DIR = os.environ.get("FIBACKUP_GUEST_DIR", "/var/cache/fibackup/guest")
PREFIX = "fibtest-"


TEST_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "format1.toml")
"""The configuration file of every run (new stores are format 1: tests/format1.toml)."""


def kvm_usable() -> bool:
    return False  # a Linux guest kernel hangs under nested KVM here (tests/README.md)


@dataclass
class DiskDef:
    target: str
    fmt: str = "qcow2"
    size: int = 16 * MiB
    model: bool = True
    """Keep a byte model of the disk (off for huge benchmark disks)."""


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)


def run_cli(*args: str, state_dir: str, expect: Optional[int] = 0,
            timeout: float = 600, env: Optional[dict[str, str]] = None) -> CliResult:
    # FIBACKUP_CONFIG: the host's configuration files never change what a test runs
    env = {**os.environ, "FIBACKUP_STATE_DIR": state_dir, "FIBACKUP_CONFIG": TEST_CONFIG,
           **(env or {})}
    completed = subprocess.run([sys.executable, "-m", "fibackup", *args], capture_output=True,
                               text=True, env=env, timeout=timeout)
    result = CliResult(completed.returncode, completed.stdout, completed.stderr)
    if expect is not None and completed.returncode != expect:
        raise AssertionError(f"fibackup {' '.join(args)} exited {completed.returncode}, "
                             f"expected {expect}\nstdout: {completed.stdout}\n"
                             f"stderr: {completed.stderr}")
    assert "Traceback" not in completed.stderr, completed.stderr
    return result


def image_bytes(path: str, fmt: Optional[str] = None) -> bytes:
    """The guest-visible content of the chain under ``path``."""
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "flat.raw")
        args = ["qemu-img", "convert", "-U", "-O", "raw"]
        if fmt:
            args += ["-f", fmt]
        subprocess.run([*args, path, out], check=True, capture_output=True)
        with open(out, "rb") as handle:
            return handle.read()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Lab:
    """Owns every domain and directory a test creates; ``close`` removes them all."""

    def __init__(self) -> None:
        self.conn = libvirt.open(URI)
        self.root = tempfile.mkdtemp(prefix="fib lab ", dir="/var/tmp")
        os.chmod(self.root, 0o755)
        self.state_dir = os.path.join(self.root, "state")
        self.domains: list[LabDomain] = []
        self.extra_names: list[str] = []
        self.mounts: list[str] = []
        self.loops: list[str] = []
        self.extra_dirs: list[str] = []

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def cli(self, *args: str, expect: Optional[int] = 0,
            env: Optional[dict[str, str]] = None) -> CliResult:
        return run_cli(*args, state_dir=self.state_dir, expect=expect, env=env)

    def domain(self, disks: Sequence[DiskDef] = (DiskDef("vda", "qcow2"), DiskDef("vdb", "raw")),
               start: bool = True, guest_cmdline: Optional[str] = None,
               dirname: str = "images dir", extra_devices: Sequence[ET.Element] = (),
               parent: Optional[str] = None) -> "LabDomain":
        name = f"{PREFIX}{uuid.uuid4().hex[:8]}"
        directory = os.path.join(parent or self.root, f"{name} {dirname}")
        os.makedirs(directory)
        os.chmod(directory, 0o755)
        lab_domain = LabDomain(self, name, directory, list(disks), guest_cmdline)
        lab_domain.create_images()
        xml = lab_domain.build_xml(extra_devices)
        self.domains.append(lab_domain)
        self.conn.defineXML(xml)
        if start:
            lab_domain.start()
        return lab_domain

    def data_domain(self, size: int, data: int) -> "LabDomain":
        """A running domain with one sparse raw disk of ``size`` bytes holding ``data``
        bytes in its middle (no byte model: for benchmarks with big disks)."""
        dom = self.domain(disks=[DiskDef("vda", "raw", size, model=False)], start=False)
        qemu_io(dom.image_path(dom.disks[0]), "raw", f"write -P 1 {size // 2} {data}")
        dom.start()
        return dom

    def reconnect(self) -> None:
        """A new connection, after libvirtd was restarted under the test."""
        try:
            self.conn.close()
        except libvirt.libvirtError:
            pass
        self.conn = libvirt.open(URI)

    def forget_name(self, name: str) -> None:
        self.extra_names.append(name)

    def forget_dir(self, path: str) -> None:
        """A directory outside the lab's root that close removes."""
        self.extra_dirs.append(path)

    def tmpfs(self, name: str, size: str, readonly: bool = False) -> str:
        mountpoint = self.path(name)
        os.makedirs(mountpoint, exist_ok=True)
        options = f"size={size},mode=0755" + (",ro" if readonly else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", mountpoint], check=True)
        self.mounts.append(mountpoint)
        return mountpoint

    def xfs(self, name: str, size: int = 1024 * MiB) -> str:
        """A fresh XFS filesystem with reflink support, loop-mounted at ``name``."""
        image = self.path(f"{name}.xfs.img")
        with open(image, "wb") as handle:
            handle.truncate(size)
        loop = subprocess.run(["losetup", "-f", "--show", image], check=True,
                              capture_output=True, text=True).stdout.strip()
        self.loops.append(loop)
        subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", loop], check=True)
        mountpoint = self.path(name)
        os.makedirs(mountpoint, exist_ok=True)
        subprocess.run(["mount", loop, mountpoint], check=True)
        self.mounts.append(mountpoint)
        os.chmod(mountpoint, 0o755)
        return mountpoint

    def _stop_served(self) -> None:
        """Stop the NBD servers of this lab's instant recoveries from served disks (a
        failed test leaves them running), and remove their socket directories."""
        from fibackup.serve import daemons
        records = os.path.join(self.state_dir, "instant")
        for name in os.listdir(records) if os.path.isdir(records) else ():
            domain_uuid = name[:-len(".json")]
            directory = daemons.domain_dir(domain_uuid)
            for entry in os.listdir(directory) if os.path.isdir(directory) else ():
                if entry.endswith(".sock"):
                    daemons.stop(daemons.place(domain_uuid, entry[:-len(".sock")]))
            daemons.remove_dir(domain_uuid)

    def close(self) -> None:
        names = [d.name for d in self.domains] + self.extra_names
        for name in names:
            try:
                dom = self.conn.lookupByName(name)
            except libvirt.libvirtError:
                continue
            try:
                if dom.isActive():
                    dom.destroy()
            except libvirt.libvirtError:
                pass
            try:
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            except libvirt.libvirtError:
                pass
        for name in names:
            # libvirt 9.0 writes a config file for a *transient* domain on an external
            # snapshot; left behind, it resurrects the domain at libvirtd's next start
            stray = os.path.join("/etc/libvirt/qemu", f"{name}.xml")
            try:
                self.conn.lookupByName(name)
            except libvirt.libvirtError:
                if os.path.exists(stray):
                    os.unlink(stray)
        self._stop_served()
        for mountpoint in reversed(self.mounts):
            subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True)
        for loop in self.loops:
            subprocess.run(["losetup", "-d", loop], check=False, capture_output=True)
        for path in [*self.extra_dirs, self.root]:
            shutil.rmtree(path, ignore_errors=True)
        self.conn.close()


@dataclass
class LabDomain:
    lab: Lab
    name: str
    directory: str
    disks: list[DiskDef]
    guest_cmdline: Optional[str] = None
    expected: dict[str, bytearray] = field(default_factory=dict)

    # -- creation ---------------------------------------------------------------

    def image_path(self, disk: DiskDef) -> str:
        return os.path.join(self.directory, f"{disk.target}.{'qcow2' if disk.fmt == 'qcow2' else 'img'}")

    def create_images(self) -> None:
        for index, disk in enumerate(self.disks):
            path = self.image_path(disk)
            content = bytearray(disk.size if disk.model else 0)
            # distinct initial data, sparse elsewhere: a little at the start and the end
            initial = [(0, bytes([0x10 + index]) * (256 * 1024)),
                       (disk.size - 128 * 1024, bytes([0x60 + index]) * (64 * 1024))]
            if disk.fmt == "raw":
                with open(path, "wb") as handle:
                    handle.truncate(disk.size)
                    for offset, data in initial:
                        handle.seek(offset)
                        handle.write(data)
            else:
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, str(disk.size)],
                               check=True)
                for offset, data in initial:
                    qemu_io(path, "qcow2", f"write -P {data[0]} {offset} {len(data)}")
            if disk.model:
                for offset, data in initial:
                    content[offset:offset + len(data)] = data
                self.expected[disk.target] = content

    def build_xml(self, extra_devices: Sequence[ET.Element]) -> str:
        root = ET.Element("domain", type="kvm" if kvm_usable() else "qemu")
        ET.SubElement(root, "name").text = self.name
        ET.SubElement(root, "memory", unit="MiB").text = "160" if self.guest_cmdline is not None else "48"
        ET.SubElement(root, "vcpu").text = "1"
        os_element = ET.SubElement(root, "os")
        ET.SubElement(os_element, "type", arch="x86_64", machine="pc").text = "hvm"
        if self.guest_cmdline is not None:
            ET.SubElement(os_element, "kernel").text = os.path.join(GUEST_DIR, "vmlinuz")
            ET.SubElement(os_element, "initrd").text = os.path.join(GUEST_DIR, "initrd.img")
            ET.SubElement(os_element, "cmdline").text = f"console=ttyS0 panic=-1 {self.guest_cmdline}"
        features = ET.SubElement(root, "features")
        ET.SubElement(features, "acpi")
        ET.SubElement(features, "apic")
        ET.SubElement(root, "on_reboot").text = "destroy"
        devices = ET.SubElement(root, "devices")
        for disk in self.disks:
            element = ET.SubElement(devices, "disk", type="file", device="disk")
            ET.SubElement(element, "driver", name="qemu", type=disk.fmt)
            ET.SubElement(element, "source", file=self.image_path(disk))
            ET.SubElement(element, "target", dev=disk.target, bus="virtio")
        serial = ET.SubElement(devices, "serial", type="file")
        ET.SubElement(serial, "source", path=self.console_log)
        ET.SubElement(serial, "target", port="0")
        channel = ET.SubElement(devices, "channel", type="unix")
        ET.SubElement(channel, "target", type="virtio", name="org.qemu.guest_agent.0")
        for element in extra_devices:
            devices.append(element)
        return ET.tostring(root, encoding="unicode")

    @property
    def console_log(self) -> str:
        return os.path.join(self.directory, "console.log")

    # -- libvirt ----------------------------------------------------------------

    @property
    def dom(self) -> "libvirt.virDomain":
        return self.lab.conn.lookupByName(self.name)

    def start(self) -> None:
        self.dom.create()

    def destroy(self) -> None:
        if self.dom.isActive():
            self.dom.destroy()

    def live_xml(self) -> ET.Element:
        return ET.fromstring(self.dom.XMLDesc(0))

    def top(self, target: str, inactive: bool = False) -> str:
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        root = ET.fromstring(self.dom.XMLDesc(flags))
        for disk in root.findall("./devices/disk"):
            if disk.find("target").get("dev") == target:
                return disk.find("source").get("file")
        raise KeyError(target)

    def live_xml_inactive_disk(self, target: str) -> ET.Element:
        root = ET.fromstring(self.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        for disk in root.findall("./devices/disk"):
            if disk.find("target").get("dev") == target:
                return disk
        raise KeyError(target)

    def alias(self, target: str) -> str:
        for disk in self.live_xml().findall("./devices/disk"):
            if disk.find("target").get("dev") == target:
                return disk.find("alias").get("name")
        raise KeyError(target)

    # -- data -------------------------------------------------------------------

    def write(self, target: str, pattern: int, offset: int, length: int) -> None:
        """A guest-equivalent write, recorded in the model."""
        command = f"write -P {pattern} {offset} {length}"
        if self.dom.isActive():
            hmp = f'qemu-io -d /machine/peripheral/{self.alias(target)}/virtio-backend "{command}"'
            output = self.lab.conn.lookupByName(self.name)
            reply = libvirt_qemu_monitor(output, hmp)
            assert "error" not in reply.lower() and "failed" not in reply.lower(), reply
        else:
            disk = self.live_xml_inactive_disk(target)
            qemu_io(disk.find("source").get("file"), disk.find("driver").get("type"), command)
        if target in self.expected:
            self.expected[target][offset:offset + length] = bytes([pattern]) * length

    def expected_now(self) -> dict[str, bytes]:
        return {target: bytes(content) for target, content in self.expected.items()}

    def snapshot(self, backup_dir: Optional[str], *extra: str, expect: int = 0) -> CliResult:
        args = ["snapshot", "-d", self.name, "--json"]
        if backup_dir is not None:
            args += ["-b", backup_dir]
        return self.lab.cli(*args, *extra, expect=expect)

    def wait_console(self, text: str, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(self.console_log, errors="replace") as handle:
                    content = handle.read()
                if text in content:
                    return content
            except FileNotFoundError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"'{text}' did not appear on the console of {self.name}")


def libvirt_qemu_monitor(dom: "libvirt.virDomain", hmp: str) -> str:
    import libvirt_qemu
    return libvirt_qemu.qemuMonitorCommand(dom, hmp, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)


def qemu_io(path: str, fmt: str, command: str) -> None:
    subprocess.run(["qemu-io", "-f", fmt, "-c", command, path], check=True, capture_output=True)


def restore_and_read(lab: Lab, domain_name: str, backup_dir: str, at: str,
                     to: Optional[str] = None) -> dict[str, bytes]:
    """Restore point ``at`` with --no-define and return each disk's content."""
    to = to or lab.path(f"restore {uuid.uuid4().hex[:6]}")
    result = lab.cli("restore", "-d", domain_name, "-b", backup_dir, "--to", to,
                     "--at", at, "--no-define", "--json").json()
    return {target: image_bytes(path, "qcow2") for target, path in result["disks"].items()}


def assert_same(actual: dict[str, bytes], expected: dict[str, bytes], what: str) -> None:
    assert sorted(actual) == sorted(expected), f"{what}: disks {sorted(actual)} != {sorted(expected)}"
    for target in expected:
        if actual[target] != expected[target]:
            first = next(i for i, (a, b) in enumerate(zip(actual[target], expected[target])) if a != b) \
                if len(actual[target]) == len(expected[target]) else -1
            raise AssertionError(f"{what}: disk {target} differs from what the guest had "
                                 f"(first difference at byte {first})")


# -- histories: restore points and what each must restore --------------------------------

def backup_history(dom: "LabDomain", backup_dir: str, rounds: int, start_pattern: int = 0x40):
    """Write, then snapshot -b, ``rounds`` times; return {point id: expected content}."""
    points = {}
    for round_number in range(rounds):
        pattern = start_pattern + round_number
        dom.write("vda", pattern, (1 + round_number) * MiB, MiB)
        dom.write("vda", pattern + 0x10, 64 * 1024, 4096)          # overwrite earlier data
        dom.write("vdb", pattern + 0x20, (3 + 2 * round_number) * MiB, 512 * 1024)
        result = dom.snapshot(backup_dir).json()[0]
        points[result["point"]] = dom.expected_now()
    return points


class History:
    """A domain with restore points and what each must restore."""

    def __init__(self, lab, disks=(DiskDef("vda", "qcow2", 16 * MiB), DiskDef("vdb", "raw")),
                 guest_cmdline=None):
        self.lab = lab
        self.dom = lab.domain(disks=disks, guest_cmdline=guest_cmdline)
        self.backup = lab.path("backup")
        self.points: dict[str, dict[str, bytes]] = {}
        self.round = 0
        self.pending: dict[str, bytes] = {}

    def write(self) -> None:
        self.round += 1
        self.dom.write("vda", 0x30 + self.round, self.round * MiB, MiB)
        if "vdb" in self.dom.expected:
            self.dom.write("vdb", 0x60 + self.round, (self.round + 2) * MiB, 256 * 1024)

    def snapshot(self, *extra: str) -> dict:
        result = self.dom.snapshot(self.backup, *extra).json()[0]
        self.points[result["point"]] = self.dom.expected_now()
        return result

    def rounds(self, count: int) -> None:
        for _ in range(count):
            self.write()
            self.snapshot()

    def killed(self, fault: str, *args: str) -> None:
        """Run fibackup with the fault; it must die by SIGKILL.  A point it publishes
        before dying must restore what the guest had now."""
        self.pending = self.dom.expected_now()
        result = self.lab.cli(*args, expect=None, env={"FIBACKUP_FAULT": fault})
        assert result.code == KILLED, (fault, result.code, result.stderr)

    def repair(self) -> str:
        result = self.lab.cli("repair", "-d", self.dom.name, "-b", self.backup)
        return result.stderr

    def adopt_points(self) -> None:
        listed = self.lab.cli("list", "-b", self.backup, "-d", self.dom.name, "--json").json()
        for point in listed:
            self.points.setdefault(point["id"], self.pending)

    def check(self) -> None:
        """The invariants every fault must leave."""
        assert self.dom.dom.isActive(), "the domain must keep running"
        self.adopt_points()
        assert "ok:" in self.lab.cli("verify", "-b", self.backup).stdout
        for point_id, expected in self.points.items():
            assert_same(restore_and_read(self.lab, self.dom.name, self.backup, point_id),
                        expected, point_id)
        assert_same(self.live_content(), self.dom.expected_now(), "live disks")
        self.assert_no_debris()

    def live_content(self) -> dict[str, bytes]:
        return {target: image_bytes(self.dom.top(target)) for target in self.dom.expected}

    def assert_no_debris(self) -> None:
        journal = os.path.join(self.lab.state_dir, "journal")
        assert not os.path.isdir(journal) or not os.listdir(journal), os.listdir(journal)
        listed = set()
        for directory, _dirs, files in os.walk(self.backup):
            if directory.endswith("/points"):
                for name in files:
                    with open(os.path.join(directory, name)) as handle:
                        document = json.load(handle)
                    listed.update(layer["id"] for disk in document["disks"].values()
                                  for layer in disk["layers"])
        for directory, _dirs, files in os.walk(self.backup):
            for name in files:
                assert ".partial-" not in name, f"partial file {name} left in {directory}"
                if directory.endswith("/layers"):
                    assert name.rsplit(".", 1)[0] in listed, f"unlisted layer file {name}"
        chain = set()
        for target in self.dom.expected:
            chain.update(self.lab_chain(target))
        bases = {self.dom.image_path(disk) for disk in self.dom.disks}
        for name in os.listdir(self.dom.directory):
            if name.endswith(".log"):
                continue
            path = os.path.join(self.dom.directory, name)
            assert path in chain or path in bases, f"stray image {name}"

    def lab_chain(self, target: str) -> list[str]:
        status = self.lab.cli("status", "-d", self.dom.name, "--json").json()
        return [layer["path"] for layer in status[target]]


# -- instant recovery ------------------------------------------------------------------------

def instant_restore(lab: Lab, source: str, backup: str, name: str, to: str, *extra: str) -> dict:
    lab.forget_name(name)
    return lab.cli("restore", "-d", source, "-b", backup, "--instant", "--as", name,
                   "--to", to, "--json", *extra).json()


def xml_backing_chains(xml: str) -> dict[str, list[str]]:
    """Each disk's explicit backing chain in domain XML (nearest first)."""
    chains = {}
    for disk in ET.fromstring(xml).findall("./devices/disk"):
        files, node = [], disk.find("backingStore")
        while node is not None and node.find("source") is not None:
            files.append(node.find("source").get("file"))
            node = node.find("backingStore")
        chains[disk.find("target").get("dev")] = files
    return chains
