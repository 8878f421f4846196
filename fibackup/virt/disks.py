"""A domain's disks as libvirt defines them now: their tops and chains, and the
rewrites of the persistent definition that snapshots and consolidations need.

Below the commands and their recovery steps (which both use these): reads and
redefines through :class:`~fibackup.virt.libvirt_api.Domain`, nothing else.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

from fibackup.model.chain import LiveDisk, LiveLayer
from fibackup.model.states import Method
from fibackup.virt import domxml
from fibackup.virt.chains import live_chain
from fibackup.virt.libvirt_api import Domain

if TYPE_CHECKING:
    from fibackup.report import Reporter


def current_tops(domain: Domain) -> dict[str, Optional[str]]:
    """Each disk's top image (what the guest writes to) now."""
    return {spec.target: spec.source for spec in domxml.disks(domxml.parse(domain.current_xml()))}


def chain_now(domain: Domain, target: str) -> list[str]:
    """The paths of disk ``target``'s chain now, base first (empty: no such disk)."""
    for spec in domxml.disks(domxml.parse(domain.current_xml())):
        if spec.target == target and spec.source:
            return [layer.path for layer in live_chain(spec, domain.is_active())]
    return []


def is_writable_disk(xml: str, target: str) -> bool:
    """Whether ``target`` is a disk the guest writes (not a CD-ROM, floppy or read-only)."""
    for spec in domxml.disks(domxml.parse(xml)):
        if spec.target == target:
            return spec.device not in ("cdrom", "floppy") and not spec.readonly
    return False


def tidy_persistent_xml(domain: Domain, overlays: dict[str, str]) -> None:
    """Drop the explicit chain libvirt writes into the persistent XML after a live snapshot.

    An explicit ``<backingStore>`` wins over the image headers, so a stale one
    (after any later offline change) would silently open the wrong files.
    """
    if not domain.is_persistent():
        return
    persistent = domain.inactive_xml()
    specs = {spec.target: spec for spec in domxml.disks(domxml.parse(persistent))}
    targets = [target for target, path in overlays.items()
               if specs.get(target) is not None and specs[target].source == path]
    xml, changed = domxml.strip_backing_stores(persistent, targets)
    if changed:
        domain.redefine(xml)


def redefine_offline(domain: Domain, target: str, method: str, base: LiveLayer) -> None:
    """The definition after an offline job: the base for an active commit, otherwise the
    same top without a stale explicit chain."""
    if method == Method.ACTIVE:
        xml = domxml.repoint_disks(domain.inactive_xml(), {target: (base.path, base.format)})
    else:
        xml, _changed = domxml.strip_backing_stores(domain.inactive_xml(), [target])
    if xml != domain.inactive_xml():
        domain.redefine(xml)


def sync_definition(domain: Domain, disk: LiveDisk, after: Sequence[str],
                    report: "Reporter") -> bool:
    """After a live job, the persistent definition must name the new top and no stale
    chain; False when it names something else (then no merged file may be deleted)."""
    if not domain.is_active() or not domain.is_persistent() or not after:
        return True
    persistent = domain.inactive_xml()
    spec = next((item for item in domxml.disks(domxml.parse(persistent))
                 if item.target == disk.target), None)
    if spec is None:
        return True
    if spec.source not in (disk.active.path, after[-1]):
        report.warn(f"{domain.name}: the persistent definition of disk {disk.target} names "
                    f"{spec.source}, not the running chain's top; left as it is, and the "
                    "merged files are kept (that definition may still need them)")
        return False
    top = disk.base if after[-1] == disk.base.path else disk.active
    xml = domxml.repoint_disks(persistent, {disk.target: (top.path, top.format)})
    if xml != persistent:
        domain.redefine(xml)
    return True
