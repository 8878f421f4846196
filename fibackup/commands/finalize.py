"""``fibackup restore --finalize NAME``: make an instant-recovery domain independent
of the backup directory it runs from (see fibackup/commands/instant.py for
``--instant``).

A live block pull copies the backing data into each overlay (or, shut off,
``qemu-img rebase`` through the explicit chain does), the persistent
definition loses the chain, and the ACL entries no other instant-recovery
domain needs are removed (fibackup/commands/grants.py).  The block job step
(``finalize.job``) is journalled like a consolidation's; its recovery is
fibackup/commands/recovery/finalize.py.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Literal

from fibackup.commands.grants import grants_lock, release, release_gone
from fibackup.commands.journalled import journalled
from fibackup.commands.served_disks import bring_up, take_down
from fibackup.errors import (BlockJobError, DomainNotFoundError, InconsistentChainError,
                             JobNotStartedError, UsageError)
from fibackup.fsutil import ensure_space
from fibackup.host import acl
from fibackup.host import instant as records
from fibackup.host.instant import InstantDisk, InstantRecord
from fibackup.host.journal import Journal
from fibackup.model.states import Outcome
from fibackup.qemu import img
from fibackup.report import Reporter
from fibackup.virt import blockjobs, domxml
from fibackup.virt.libvirt_api import Connection, Domain

FinalizeMethod = Literal["pull", "rebase", "none", "gone"]


@dataclass
class FinalizeResult:
    domain: str
    disks: dict[str, str] = field(default_factory=dict)
    """Target -> its overlay, which now stands alone."""
    method: FinalizeMethod = "none"
    """``pull`` (live), ``rebase`` (shut off), ``none`` (already detached) or ``gone``."""
    seconds: float = 0.0
    revoked: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    """ACL entries left because another instant-recovery domain still needs them."""

    def to_json(self) -> dict[str, object]:
        return {"domain": self.domain, "disks": self.disks, "method": self.method,
                "seconds": round(self.seconds, 3), "revoked": self.revoked, "kept": self.kept}


def finalize(name: str, connect: Callable[[], Connection], report: Reporter,
             space_check: bool = True) -> FinalizeResult:
    conn = connect()
    domain = conn.find_domain(name)
    if domain is None:
        return _finalize_gone(conn, name, report)
    record = records.load(domain.uuid)
    if record is None:
        raise UsageError(f"domain '{name}' does not run from a backup directory (no "
                         f"instant-recovery record {records.record_path(domain.uuid)}); "
                         "there is nothing to finalize")
    result = FinalizeResult(domain.name)
    with journalled(conn, domain, "finalize", {"record": record.path}, report) as journal:
        pending = [disk for disk in record.disks.values() if _attached(domain, record, disk)]
        if pending and record.served is not None:
            bring_up(record, acl.qemu_account())       # after a reboot they may be down
        if pending and space_check:
            ensure_space(record.to, sum(_layer_bytes(record, disk) for disk in pending),
                         f"the data of {domain.name}'s stored layers")
        for disk in pending:
            result.seconds += _detach(domain, record, disk, journal, report)
            result.method = "pull" if domain.is_active() else "rebase"
        step = journal.start("finalize.release", disks=sorted(record.disks))
        _sync_definition(domain, record)
        for disk in record.disks.values():
            if _attached(domain, record, disk):
                raise InconsistentChainError(
                    f"disk {disk.target} of '{domain.name}' still rests on the backup "
                    f"directory after the job; check 'virsh domblklist {domain.name}' and "
                    f"'qemu-img info {disk.overlay}', then run --finalize again")
            result.disks[disk.target] = disk.overlay
        with grants_lock():
            result.revoked, result.kept = release(record)
        if record.served is not None:
            take_down(record, report)                # the servers and the point's pin
        record.remove()
        journal.done(step)
    report.info(f"domain '{domain.name}' no longer uses {record.store_root}; its disks are "
                f"{', '.join(sorted(result.disks.values()))}")
    return result


def _finalize_gone(conn: Connection, name: str, report: Reporter) -> FinalizeResult:
    if not any(record.domain_name == name for record in records.all_records()):
        raise DomainNotFoundError(f"domain '{name}' is not defined and no instant recovery of "
                                  "that name is recorded; 'virsh list --all' shows the domains")
    with grants_lock():
        revoked = release_gone(conn, report, name)
    return FinalizeResult(name, method="gone", revoked=revoked)


def _attached(domain: Domain, record: InstantRecord, disk: InstantDisk) -> bool:
    """Whether the disk still reads from the backup directory (definition or header)."""
    xml = domain.live_xml() if domain.is_active() else domain.inactive_xml()
    chain = domxml.backing_files(xml, [disk.target]).get(disk.target)
    if chain is None:
        raise InconsistentChainError(f"domain '{domain.name}' has no disk {disk.target} any "
                                     "more; its instant-recovery record cannot be finalized: "
                                     f"check the domain, then move {record.path} away")
    return bool(chain) or not _standalone(domain, disk)


def _layer_bytes(record: InstantRecord, disk: InstantDisk) -> int:
    """What the disk's backing holds at most: its stored files, or the served disk."""
    if record.served is not None:
        return record.served.sizes.get(disk.target, 0)
    return sum(os.stat(layer.path).st_blocks * 512 for layer in disk.layers)


def _detach(domain: Domain, record: InstantRecord, disk: InstantDisk, journal: Journal,
            report: Reporter) -> float:
    """Copy the disk's backing data into its overlay: a live pull, or offline a rebase
    through the explicit chain.  Returns the seconds it took."""
    live = domain.is_active()
    step = journal.start("finalize.job", disk=disk.target, live=live, overlay=disk.overlay,
                         layers=[layer.path for layer in disk.layers])
    if not live:
        began = time.monotonic()
        report.info(f"{disk.target}: copying the stored data into {disk.overlay} (offline)")
        if record.served is not None:                # its header names the served disk
            img.make_standalone(disk.overlay)
        else:
            img.make_standalone_explicit(disk.chain)
        journal.done(step, outcome=Outcome.MERGED)
        return time.monotonic() - began
    report.info(f"{disk.target}: pulling the stored data into {disk.overlay} while "
                f"'{domain.name}' runs")
    try:
        with report.progress(f"{disk.target} pull", _layer_bytes(record, disk)) as bar:
            job = blockjobs.pull(domain, disk.target, 0, None, bar)
    except JobNotStartedError:
        journal.done(step, outcome=Outcome.NOT_STARTED)
        raise
    if not job.completed:
        journal.done(step, outcome=Outcome.ABORTED)
        raise BlockJobError(f"the pull of disk {disk.target} of '{domain.name}' was cancelled "
                            f"from outside; the domain keeps running from the backup directory: "
                            f"run 'fibackup restore --finalize {domain.name}' again")
    journal.done(step, outcome=Outcome.MERGED)
    return job.seconds


def _sync_definition(domain: Domain, record: InstantRecord) -> None:
    """Drop the stored layers from the persistent definition of each disk whose overlay
    stands alone now (libvirt then reads its header, which names no backing file)."""
    if not domain.is_persistent():
        return
    xml = domain.inactive_xml()
    stored = {layer.path for disk in record.disks.values() for layer in disk.layers}
    targets = [target for target, chain in domxml.backing_files(xml, sorted(record.disks)).items()
               if set(chain) & stored and _standalone(domain, record.disks[target])]
    if targets:
        domain.redefine(domxml.strip_backing_stores(xml, targets)[0])


def _standalone(domain: Domain, disk: InstantDisk) -> bool:
    return img.info(disk.overlay, "qcow2", force_share=domain.is_active()).backing_file is None

