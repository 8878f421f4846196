"""``fibackup repair``: finish or undo what an interrupted run left behind.

A run that changes anything writes an intent journal (fibackup/host/journal.py)
and removes it when it ends.  A journal found later means that run died.
Repair replays it step by step, through each command's recovery handlers
(fibackup/commands/recovery/, which say what each step needs), waiting for a
block job the dead run left running (up to ``--timeout``); then it tidies every
backup directory of the domain, undoes the domain's interrupted restores, cleans up
its dead mounts, and brings back the servers of an instant-recovery domain that runs
from served disks (after a reboot) and resumes it if the store's failure paused it.

Every other command runs the same reconciliation first
(fibackup/commands/journalled.py), but never waits: a job still running makes
it refuse and name ``fibackup repair``.
"""
from __future__ import annotations

from typing import Optional

from fibackup.commands.journalled import reconcile
from fibackup.commands.mount import repair_mounts
from fibackup.commands.recovery.context import RepairResult
from fibackup.commands.recovery.restore import repair_restores
from fibackup.commands.served_disks import repair_served
from fibackup.host.lock import DomainLock
from fibackup.report import Reporter
from fibackup.virt.libvirt_api import Connection

__all__ = ["RepairResult", "repair_domain"]


def repair_domain(conn: Connection, name: str, backup_dir: Optional[str], report: Reporter,
                  timeout: Optional[float] = None) -> RepairResult:
    domain = conn.domain(name)
    with DomainLock(domain.uuid, domain.name):
        result = reconcile(conn, domain, report, wait=True, backup_dir=backup_dir,
                           timeout=timeout)
    result.actions.extend(repair_restores(conn, report, {domain.name, domain.uuid}))
    result.actions.extend(repair_mounts(report, {domain.name, domain.uuid}))
    result.actions.extend(repair_served(domain, report))
    if not result.actions:
        report.info(f"{domain.name}: nothing to repair")
    return result
