"""Reading and rewriting libvirt domain XML with ElementTree (no string formatting)."""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from fibackup.errors import DomainXMLError, UsageError
from fibackup.model.chain import LiveLayer


@dataclass(frozen=True)
class DiskSpec:
    """A ``<disk>`` element as fibackup needs it."""

    target: str
    device: str
    source_type: str
    source: Optional[str]
    format: str
    readonly: bool
    shareable: bool
    transient: bool
    encrypted: bool
    backing: tuple[LiveLayer, ...]
    """Layers below ``source`` from ``<backingStore>``, nearest first (may be empty)."""
    backing_terminated: bool
    """Whether the XML chain ends in an empty ``<backingStore/>`` (complete)."""


@dataclass(frozen=True)
class Selection:
    """Which disks a backup takes, skips (harmless) and cannot take."""

    selected: tuple[DiskSpec, ...]
    skipped: tuple[tuple[str, str], ...]
    refused: tuple[tuple[str, str], ...]


def parse(xml: str) -> ET.Element:
    try:
        return ET.fromstring(xml)
    except ET.ParseError as error:
        raise DomainXMLError(f"domain XML cannot be parsed ({error})") from None


def domain_name(root: ET.Element) -> str:
    return root.findtext("name", default="")


def disks(root: ET.Element) -> list[DiskSpec]:
    return [_disk_spec(element) for element in root.findall("./devices/disk")]


def _disk_spec(element: ET.Element) -> DiskSpec:
    source = element.find("source")
    driver = element.find("driver")
    source_type = element.get("type", "file")
    path = None
    if source is not None:
        path = (source.get("file") or source.get("dev") or source.get("name")
                or source.get("volume"))
    backing, terminated = _backing(element)
    target = element.find("target")
    return DiskSpec(
        target=target.get("dev", "") if target is not None else "",
        device=element.get("device", "disk"), source_type=source_type, source=path,
        format=(driver.get("type", "raw") if driver is not None else "raw"),
        readonly=element.find("readonly") is not None,
        shareable=element.find("shareable") is not None,
        transient=element.find("transient") is not None,
        encrypted=(source is not None and source.find("encryption") is not None)
        or element.find("encryption") is not None,
        backing=backing, backing_terminated=terminated)


def _backing(element: ET.Element) -> tuple[tuple[LiveLayer, ...], bool]:
    layers: list[LiveLayer] = []
    node = element.find("backingStore")
    while node is not None:
        source = node.find("source")
        if source is None or node.get("type") is None:
            return tuple(layers), True
        if node.get("type") != "file":
            host = source.find("host")
            socket = host.get("socket", "") if host is not None else ""
            layers.append(LiveLayer(path=source.get("dev") or source.get("name") or socket,
                                    format="network:" + node.get("type", "")))
            return tuple(layers), True
        form = node.find("format")
        layers.append(LiveLayer(path=source.get("file", ""),
                                format=form.get("type", "raw") if form is not None else "raw"))
        node = node.find("backingStore")
    return tuple(layers), False


def mirror_ready(xml: str, target: str) -> bool:
    """Whether the disk ``target`` has a ``<mirror ready='yes'>`` (a job waiting to pivot)."""
    for element in parse(xml).findall("./devices/disk"):
        node = element.find("target")
        if node is not None and node.get("dev") == target:
            mirror = element.find("mirror")
            return mirror is not None and mirror.get("ready") == "yes"
    return False


def select_disks(specs: Sequence[DiskSpec], include: Sequence[str],
                 exclude: Sequence[str]) -> Selection:
    """Apply --disk / --exclude-disk and sort out what cannot be backed up."""
    selected, skipped, refused = [], [], []
    for spec in specs:
        if include and spec.target not in include:
            continue
        if spec.target in exclude:
            skipped.append((spec.target, "excluded with --exclude-disk"))
            continue
        harmless = _skip_reason(spec)
        if harmless:
            if spec.target in include:
                raise UsageError(f"disk {spec.target} is {harmless}: there is nothing to back "
                                 f"up; drop --disk {spec.target}")
            else:
                skipped.append((spec.target, harmless))
            continue
        problem = _refuse_reason(spec)
        if problem:
            refused.append((spec.target, problem))
        else:
            selected.append(spec)
    return Selection(tuple(selected), tuple(skipped), tuple(refused))


def _skip_reason(spec: DiskSpec) -> str:
    if spec.device in ("cdrom", "floppy"):
        return f"a {spec.device}"
    if spec.readonly:
        return "read-only"
    if spec.source is None:
        return "empty (no source)"
    return ""


def _refuse_reason(spec: DiskSpec) -> str:
    if spec.device == "lun":
        return "a pass-through LUN (device='lun'), which has no image to snapshot"
    if spec.source_type != "file":
        return (f"a {spec.source_type} disk; fibackup backs up file-based images only "
                "(network, block device and pool volume disks cannot be copied)")
    if spec.shareable:
        return "shareable and writable; a qcow2 overlay cannot be shared between domains"
    if spec.transient:
        return "a <transient/> disk, whose changes are discarded at shutdown"
    if spec.encrypted:
        return "LUKS-encrypted, which fibackup does not support yet"
    if spec.format not in ("qcow2", "raw"):
        return f"in {spec.format} format; fibackup handles qcow2 and raw images"
    for layer in spec.backing:
        if layer.format not in ("qcow2", "raw"):
            return f"backed by {layer.path or 'a non-file image'} ({layer.format}), which fibackup cannot copy"
    return ""


def snapshot_xml(overlays: Mapping[str, str], all_targets: Sequence[str]) -> str:
    """A disk-only external snapshot: given targets get overlays, others none."""
    root = ET.Element("domainsnapshot")
    ET.SubElement(root, "description").text = "fibackup"
    disks_element = ET.SubElement(root, "disks")
    for target in all_targets:
        disk = ET.SubElement(disks_element, "disk", name=target)
        if target in overlays:
            disk.set("snapshot", "external")
            ET.SubElement(disk, "driver", type="qcow2")
            ET.SubElement(disk, "source", file=overlays[target])
        else:
            disk.set("snapshot", "no")
    return ET.tostring(root, encoding="unicode")


def strip_backing_stores(xml: str, targets: Sequence[str]) -> tuple[str, bool]:
    """Drop explicit ``<backingStore>`` chains of ``targets`` so libvirt probes headers."""
    root = parse(xml)
    changed = False
    for element in root.findall("./devices/disk"):
        target = element.find("target")
        if target is None or target.get("dev") not in targets:
            continue
        for backing in element.findall("backingStore"):
            element.remove(backing)
            changed = True
    return ET.tostring(root, encoding="unicode"), changed


def repoint_disks(xml: str, images: Mapping[str, tuple[str, str]]) -> str:
    """Point each disk target at ``(path, format)``; drop stale ``<backingStore>``."""
    root = parse(xml)
    for element in root.findall("./devices/disk"):
        target = element.find("target")
        if target is None or target.get("dev") not in images:
            continue
        path, image_format = images[target.get("dev", "")]
        element.set("type", "file")
        for backing in element.findall("backingStore"):
            element.remove(backing)
        source = element.find("source")
        if source is None:
            source = ET.SubElement(element, "source")
        for key in list(source.attrib):
            del source.attrib[key]
        for child in list(source):                # a <dataStore>, <auth>, <host>... of the old
            source.remove(child)
        source.set("file", path)
        driver = element.find("driver")
        if driver is None:
            driver = ET.SubElement(element, "driver", name="qemu")
        driver.set("type", image_format)
    return ET.tostring(root, encoding="unicode")


def disk_targets(xml: str) -> list[str]:
    return [spec.target for spec in disks(parse(xml))]


def as_copy(xml: str, new_name: str, keep_targets: Sequence[str]) -> tuple[str, list[str]]:
    """A definition for a copy: new name, no UUID, no MACs, only ``keep_targets`` disks.

    Returns the XML and the targets of the writable disks that were removed.
    """
    root = parse(xml)
    name = root.find("name")
    if name is None:
        name = ET.SubElement(root, "name")
    name.text = new_name
    for tag in ("uuid", "title"):
        for element in root.findall(tag):
            root.remove(element)
    devices = root.find("devices")
    removed: list[str] = []
    if devices is not None:
        for interface in devices.findall("interface"):
            for mac in interface.findall("mac"):
                interface.remove(mac)
        _rename_chardev_files(devices, new_name)
        for element in devices.findall("disk"):
            spec = _disk_spec(element)
            if spec.target in keep_targets or spec.device in ("cdrom", "floppy") or spec.readonly:
                continue
            devices.remove(element)
            removed.append(spec.target)
    os_element = root.find("os")
    if os_element is not None:
        for nvram in os_element.findall("nvram"):
            os_element.remove(nvram)
    return ET.tostring(root, encoding="unicode"), removed


def _rename_chardev_files(devices: ET.Element, new_name: str) -> None:
    """Give a copy its own console/serial log files: two QEMUs cannot share them."""
    for tag in ("serial", "console", "parallel", "channel"):
        for device in devices.findall(tag):
            source = device.find("source")
            if device.get("type") == "file" and source is not None and source.get("path"):
                source.set("path", _prefixed(source.get("path", ""), new_name))
            log = device.find("log")
            if log is not None and log.get("file"):
                log.set("file", _prefixed(log.get("file", ""), new_name))


def _prefixed(path: str, prefix: str) -> str:
    directory, base = os.path.split(path)
    return os.path.join(directory, f"{prefix}.{base}")


def add_missing_disks(xml: str, source_xml: str, targets: Sequence[str]) -> tuple[str, list[str]]:
    """Copy ``<disk>`` elements of ``targets`` absent from ``xml`` out of ``source_xml``.

    Returns the new XML and the targets found in neither definition.  Copied
    disks lose their ``<address>`` so libvirt places them anew.
    """
    root = parse(xml)
    devices = root.find("devices")
    if devices is None:
        devices = ET.SubElement(root, "devices")
    present = {spec.target for spec in disks(root)}
    sources = {(_disk_spec(element)).target: element
               for element in parse(source_xml).findall("./devices/disk")}
    unplaced = []
    for target in targets:
        if target in present:
            continue
        element = sources.get(target)
        if element is None:
            unplaced.append(target)
            continue
        for address in element.findall("address"):
            element.remove(address)
        devices.append(element)
    return ET.tostring(root, encoding="unicode"), unplaced


def source_files(xml: str) -> list[str]:
    """Every file a domain's disks name: their sources and backing stores, mirrors included."""
    return [source.get("file", "") for source in parse(xml).iterfind("./devices/disk//source")
            if source.get("file")]


def set_uuid(xml: str, uuid: str) -> str:
    """The definition with ``<uuid>`` set (a copy gets its UUID before it is defined)."""
    root = parse(xml)
    for element in root.findall("uuid"):
        root.remove(element)
    element = ET.Element("uuid")
    element.text = uuid
    root.insert(1, element)
    return ET.tostring(root, encoding="unicode")


def set_explicit_chains(xml: str, chains: Mapping[str, tuple[str, Sequence[tuple[str, str]]]]) -> str:
    """Point each disk target at a qcow2 ``overlay`` resting on an explicit, complete,
    read-only chain ``[(path, format)...]`` (base first) of files libvirt must not relabel.

    Each layer is a ``<backingStore>`` with its ``<format>`` and ``<source file>``
    carrying ``<seclabel model='dac' relabel='no'/>``; the chain ends in an empty
    ``<backingStore/>``, so neither libvirt nor QEMU reads a backing name from an
    image header.
    """
    images = {target: (overlay, "qcow2") for target, (overlay, _chain) in chains.items()}
    root = parse(repoint_disks(xml, images))
    for element in root.findall("./devices/disk"):
        target = element.find("target")
        if target is None or target.get("dev") not in chains:
            continue
        _overlay, chain = chains[target.get("dev", "")]
        parent = element
        for path, image_format in reversed(chain):
            node = _backing_node(path, image_format)
            _insert_after_source(parent, node)
            parent = node
        _insert_after_source(parent, ET.Element("backingStore"))
    return ET.tostring(root, encoding="unicode")


NBD_LAYER = "nbd"
"""A chain layer whose path is the Unix socket of an NBD server of a raw disk."""


def _backing_node(path: str, image_format: str) -> ET.Element:
    """One ``<backingStore>``: a file, or (format :data:`NBD_LAYER`) a raw disk served
    over NBD on the Unix socket ``path``."""
    if image_format == NBD_LAYER:
        node = ET.Element("backingStore", type="network")
        ET.SubElement(node, "format", type="raw")
        source = ET.SubElement(node, "source", protocol="nbd")
        ET.SubElement(source, "host", transport="unix", socket=path)
        return node
    node = ET.Element("backingStore", type="file")
    ET.SubElement(node, "format", type=image_format)
    source = ET.SubElement(node, "source", file=path)
    ET.SubElement(source, "seclabel", model="dac", relabel="no")
    return node


def set_error_policy(xml: str, targets: Sequence[str], policy: str) -> str:
    """Set ``error_policy`` and ``rerror_policy`` of the disks ``targets`` to ``policy``
    (``stop``: QEMU pauses the guest on an I/O error instead of passing it on)."""
    root = parse(xml)
    for element in root.findall("./devices/disk"):
        target = element.find("target")
        if target is None or target.get("dev") not in targets:
            continue
        driver = element.find("driver")
        if driver is None:
            driver = ET.SubElement(element, "driver", name="qemu")
        driver.set("error_policy", policy)
        driver.set("rerror_policy", policy)
    return ET.tostring(root, encoding="unicode")


def _insert_after_source(parent: ET.Element, node: ET.Element) -> None:
    children = list(parent)
    source = parent.find("source")
    parent.insert(children.index(source) + 1 if source is not None else len(children), node)


def backing_files(xml: str, targets: Sequence[str]) -> dict[str, list[str]]:
    """The files of each disk's explicit ``<backingStore>`` chain, nearest first."""
    return {spec.target: [layer.path for layer in spec.backing]
            for spec in disks(parse(xml)) if spec.target in targets}


BOOT_FILE_ROLES = ("nvram", "kernel", "initrd", "dtb")
"""The ``<os>`` children that name a per-domain or boot file fibackup saves."""


def boot_files(root: ET.Element) -> dict[str, str]:
    """Role -> host path of the domain's NVRAM and direct-boot files.

    The read-only ``<loader>`` firmware is a system file and not listed; an NVRAM
    kept elsewhere than in a local file (``type='network'``) is not either.
    """
    files: dict[str, str] = {}
    os_element = root.find("os")
    if os_element is None:
        return files
    for role in BOOT_FILE_ROLES:
        element = os_element.find(role)
        if element is None:
            continue
        path = _nvram_path(element) if role == "nvram" else (element.text or "").strip()
        if path:
            files[role] = path
    return files


def _nvram_path(element: ET.Element) -> str:
    if element.get("type") not in (None, "file"):
        return ""
    source = element.find("source")
    if source is not None:
        return source.get("file", "")
    return (element.text or "").strip()


def has_tpm_emulator(root: ET.Element) -> bool:
    """Whether the domain has an emulated TPM (swtpm), whose state libvirt keeps."""
    return any(backend.get("type") == "emulator"
               for backend in root.findall("./devices/tpm/backend"))


def repoint_boot_files(xml: str, paths: Mapping[str, str]) -> str:
    """Point ``<nvram>``, ``<kernel>``, ``<initrd>``, ``<dtb>`` at restored files
    (role -> path); a missing element is added (a copy made by ``as_copy`` has no
    ``<nvram>``)."""
    root = parse(xml)
    os_element = root.find("os")
    if os_element is None:
        os_element = ET.SubElement(root, "os")
    for role in BOOT_FILE_ROLES:
        if role not in paths:
            continue
        element = os_element.find(role)
        if element is None:
            element = ET.SubElement(os_element, role)
        if role == "nvram":
            for child in list(element):
                element.remove(child)
            element.attrib.pop("type", None)
        element.text = paths[role]
    return ET.tostring(root, encoding="unicode")
