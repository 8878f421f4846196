"""A domain definition read from a backup store is untrusted input.

A shared store (an S3 bucket many hosts write, a directory another host wrote)
can hand restore any XML: raw QEMU arguments, a host's PCI or USB devices, a
serial "log" that QEMU writes into ``/etc``, a host directory shared with the
guest.  Before restore defines such a definition, :func:`untrusted_parts` names
everything in it that reaches beyond ``--to`` (what restore wrote) and a few
read-only system files; restore refuses unless ``--trust-xml``.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET

from fibackup.virt.domxml import parse

QEMU_NAMESPACE = "{http://libvirt.org/schemas/domain/qemu/1.0}"
SYSTEM_DIRS = ("/usr/share/", "/usr/lib/", "/usr/lib64/", "/usr/libexec/", "/usr/bin/",
               "/usr/local/share/", "/usr/local/bin/", "/usr/local/libexec/")
"""Where read-only system files a definition may name live (firmware, the emulator)."""
READ_ONLY_SYSTEM = {("loader", None), ("nvram", "template"), ("emulator", None)}
"""(element, attribute or None for its text) naming a read-only system file."""
PATH_ATTRIBUTES = ("file", "path", "dir", "dev", "socket", "template", "append")
PATH_TEXTS = ("kernel", "initrd", "dtb", "loader", "nvram", "emulator")


def untrusted_parts(xml: str, inside: str) -> list[str]:
    """What in a domain definition reaches outside the directory ``inside``: one
    description per problem (empty when the definition can be defined as it is)."""
    problems: list[str] = []
    pending = [parse(xml)]
    while pending:
        element = pending.pop()
        tag = element.tag if isinstance(element.tag, str) else ""
        if tag.startswith(QEMU_NAMESPACE):
            problems.append(f"<qemu:{tag[len(QEMU_NAMESPACE):]}> (raw QEMU options)")
            continue                            # its arguments are part of it
        problems += _device_problems(tag, element)
        problems += _path_problems(tag, element, inside)
        pending.extend(reversed(list(element)))
    return list(dict.fromkeys(problems))


def _device_problems(tag: str, element: ET.Element) -> list[str]:
    if tag == "hostdev" or (tag == "interface" and element.get("type") == "hostdev"):
        return [f"<{tag}> (a device of the host passed to the guest)"]
    if tag == "filesystem":
        source = element.find("source")
        shared = source.get("dir") or source.get("file") if source is not None else None
        return [f"<filesystem> sharing the host's {shared or 'files'} with the guest"]
    return []


def _path_problems(tag: str, element: ET.Element, inside: str) -> list[str]:
    found = [(name, value) for name, value in element.attrib.items()
             if name in PATH_ATTRIBUTES and value.startswith("/")]
    text = (element.text or "").strip()
    if tag in PATH_TEXTS and text.startswith("/"):
        found.append((None, text))
    problems = []
    for attribute, path in found:
        if _within(path, inside):
            continue
        if (tag, attribute) in READ_ONLY_SYSTEM and _system_file(path):
            continue
        where = f"<{tag} {attribute}='{path}'>" if attribute else f"<{tag}>{path}</{tag}>"
        problems.append(f"{where} (outside --to)")
    return problems


def _within(path: str, directory: str) -> bool:
    real = os.path.normpath(path)
    base = os.path.normpath(directory)
    return real.startswith(base.rstrip("/") + "/")


def _system_file(path: str) -> bool:
    real = os.path.normpath(path)
    return real.startswith(SYSTEM_DIRS) and ".." not in path.split("/")
