"""A domain definition read from a backup store is untrusted input.

A shared store (an S3 bucket many hosts write, a directory another host wrote)
can hand restore any XML: raw QEMU arguments, a host's PCI or USB devices, a
serial "log" that QEMU writes into ``/etc``, a host directory shared with the
guest.  Before restore defines such a definition, :func:`untrusted_parts` names
everything in it that reaches beyond ``--to`` (what restore wrote) and a few
read-only system files; restore refuses unless ``--trust-xml``.

:func:`definition_problems` is the one trust decision restore and instant
recovery share: a definition this host recorded storing (host state) is trusted
as it is; any other is checked part by part, and, when it is to redefine the
point's own domain, must be of that domain.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Collection, Optional, Sequence

from fibackup.host import state as host_state
from fibackup.model.points import RestorePoint
from fibackup.virt.domxml import parse

QEMU_NAMESPACE = "{http://libvirt.org/schemas/domain/qemu/1.0}"
FIRMWARE_DIRS = ("/usr/share/", "/usr/lib/", "/usr/lib64/", "/usr/local/share/")
"""Where read-only firmware (a loader, an NVRAM template) may live."""
EMULATORS = ("/usr/bin/qemu-system-", "/usr/libexec/qemu-kvm", "/usr/bin/kvm",
             "/usr/local/bin/qemu-system-")
"""What an ``<emulator>`` may be."""
REFUSED_DEVICES = {
    "hostdev": "a device of the host passed to the guest",
    "filesystem": "a host directory shared with the guest",
    "smartcard": "the host's smartcard or certificate database",
    "shmem": "memory shared with the host or other guests",
    "redirdev": "a USB device redirected from elsewhere",
}
REFUSED_TYPES = {
    "interface": ("hostdev", "direct", "vdpa", "ethernet", "vhostuser"),
    "input": ("passthrough", "evdev"),
    "memory": ("nvdimm", "virtio-pmem"),
}
"""Devices refused when their ``type`` (``model`` for memory) is one of these."""


def definition_problems(point: RestorePoint, xml: str, inside: str,
                        allowed: Sequence[str] = (), same_domain: bool = False) -> list[str]:
    """Why ``xml``, made from ``point``'s stored definition, is unsafe to define:
    nothing when this host recorded storing exactly that definition.  With
    ``same_domain`` (not a copy) the definition must also be of the point's domain."""
    if host_state.load(point.domain_uuid).stored_definition(point.domain_xml):
        return []
    problems = untrusted_parts(xml, inside, allowed)
    return problems + _identity_problems(point) if same_domain else problems


def _identity_problems(point: RestorePoint) -> list[str]:
    """A stored definition must be of the point's own domain (name and UUID), or it
    would redefine another domain of this host."""
    root = parse(point.domain_xml)
    name, uuid = root.findtext("name", ""), root.findtext("uuid", "")
    if name == point.domain_name and uuid in ("", point.domain_uuid):
        return []
    return [f"a definition of domain '{name}' ({uuid or 'no UUID'}), not of "
            f"'{point.domain_name}' ({point.domain_uuid})"]


def untrusted_parts(xml: str, inside: str, allowed: Collection[str] = ()) -> list[str]:
    """What in a domain definition reaches outside the directory ``inside`` or into the
    host: one description per problem (empty when it can be defined as it is).  Every
    attribute value and text that is an absolute path must lie inside ``inside`` or be
    one of the files ``allowed``, except read-only firmware and the emulator; devices
    that reach the host are refused."""
    allowed = {os.path.normpath(path) for path in allowed}
    problems: list[str] = []
    pending = [parse(xml)]
    while pending:
        element = pending.pop()
        tag = element.tag if isinstance(element.tag, str) else ""
        if tag.startswith(QEMU_NAMESPACE):
            problems.append(f"<qemu:{tag[len(QEMU_NAMESPACE):]}> (raw QEMU options)")
            continue                            # its arguments are part of it
        problems += _device_problems(tag, element)
        problems += _path_problems(tag, element, inside, allowed)
        pending.extend(reversed(list(element)))
    return list(dict.fromkeys(problems))


def _device_problems(tag: str, element: ET.Element) -> list[str]:
    kind = element.get("model" if tag == "memory" else "type")
    if tag in REFUSED_DEVICES:
        return [f"<{tag}> ({REFUSED_DEVICES[tag]})"]
    if kind in REFUSED_TYPES.get(tag, ()):
        return [f"<{tag} type='{kind}'> (reaches into the host)"]
    if tag == "disk" and element.get("type", "file") != "file":
        return [f"<disk type='{element.get('type')}'> (only file disks are restored)"]
    if tag == "seclabel" and (element.get("type") in ("none", "static")
                              or element.find("label") is not None):
        return ["<seclabel> turning off or fixing the guest's confinement"]
    if tag == "loader" and element.get("readonly") != "yes":
        return ["<loader> that is not read-only"]
    return []


def _path_problems(tag: str, element: ET.Element, inside: str,
                   allowed: Collection[str]) -> list[str]:
    found: list[tuple[Optional[str], str]] = [
        (name, value.strip()) for name, value in element.attrib.items()
        if value.strip().startswith("/")]
    text = (element.text or "").strip()
    if text.startswith("/"):
        found.append((None, text))
    problems = []
    for attribute, path in found:
        if _within(path, inside) or os.path.normpath(path) in allowed or \
                _system_file(tag, attribute, path):
            continue
        where = f"<{tag} {attribute}='{path}'>" if attribute else f"<{tag}>{path}</{tag}>"
        problems.append(f"{where} (outside --to)")
    return problems


def _within(path: str, directory: str) -> bool:
    real = os.path.normpath(path)
    base = os.path.normpath(directory)
    return real.startswith(base.rstrip("/") + "/")


def _system_file(tag: str, attribute: str | None, path: str) -> bool:
    """Read-only firmware, an NVRAM template, or the emulator."""
    real = os.path.normpath(path)
    if ".." in path.split("/"):
        return False
    if (tag, attribute) in (("loader", None), ("nvram", "template")):
        return real.startswith(FIRMWARE_DIRS)
    if (tag, attribute) == ("emulator", None):
        return real.startswith(EMULATORS)
    return False
