"""Which image files other domains (or other disks of the same domain) use.

A consolidation never writes into, and never deletes, a file something else
uses: these maps answer "who uses this file" by (device, inode)
(:attr:`fibackup.model.chain.FileStamp.inode`), whatever path names it.
"""
from __future__ import annotations

import os
from typing import Callable, Collection, Iterable, Optional, Sequence

from fibackup.errors import FibackupError
from fibackup.fsutil import file_stamp
from fibackup.model.chain import LiveDisk
from fibackup.qemu import img
from fibackup.virt import domxml
from fibackup.virt.libvirt_api import Connection, Domain, libvirt

Users = dict[tuple[int, int], str]
"""(device, inode) of an image -> who uses it, for messages."""


def inode_of(path: str) -> Optional[tuple[int, int]]:
    """(device, inode) of the file ``path`` names (None: no such file)."""
    stamp = file_stamp(path)
    return stamp.inode if stamp is not None else None


def images_of_other_domains(conn: Connection, uuid: str) -> Users:
    """Every image in the chains of every other domain -> who uses it."""
    users: Users = {}
    for other in conn.other_domains(uuid):
        try:
            xmls = [other.live_xml()]
            if other.is_active() and other.is_persistent():
                xmls.append(other.inactive_xml())
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                continue                # undefined while we looked: it uses nothing now
            raise
        for key, who in _files_in(xmls, _other_domain(other.name)).items():
            users.setdefault(key, who)
    return users


def own_other_disks(domain: Domain, disks: Sequence[LiveDisk]) -> Users:
    """Images of this domain's disks that are not consolidated (excluded, skipped, or
    only in the persistent definition): writing them would change those disks."""
    worked = {inode_of(layer.path) for disk in disks for layer in disk.layers}
    targets = {disk.target for disk in disks}
    current = domain.current_xml()
    return _files_in({current, domain.inactive_xml()}, _same_domain,
                     skip=lambda spec, xml: spec.target in targets and xml == current,
                     worked=worked)


def own_chain_files(domain: Domain) -> Users:
    """Every image in the chains of this domain's disks now (live and persistent)."""
    return _files_in({domain.current_xml(), domain.inactive_xml()}, _same_domain)


def _other_domain(name: str) -> Callable[[domxml.DiskSpec], str]:
    return lambda _spec: f"domain '{name}'"


def _same_domain(spec: domxml.DiskSpec) -> str:
    return f"disk {spec.target} of the same domain"


def _files_in(xmls: Iterable[str], describe: Callable[[domxml.DiskSpec], str],
              skip: Callable[[domxml.DiskSpec, str], bool] = lambda _spec, _xml: False,
              worked: Collection[Optional[tuple[int, int]]] = ()) -> Users:
    """Every image in the disks' chains of ``xmls`` -> who uses it."""
    users: Users = {}
    for xml in xmls:
        for spec in domxml.disks(domxml.parse(xml)):
            if skip(spec, xml):
                continue
            for path in _chain_files(spec):
                key = inode_of(path)
                if key is not None and key not in worked:
                    users.setdefault(key, describe(spec))
    return users


def _chain_files(spec: domxml.DiskSpec) -> list[str]:
    if not spec.source or not os.path.isfile(spec.source):
        return []
    files = [spec.source, *(layer.path for layer in spec.backing)]
    try:
        probed = img.backing_chain(files[-1], None, force_share=True)
    except FibackupError:
        return files
    return [*files, *(info.path for info in probed[1:])]
