"""The journal context every command that changes a domain runs in.

:func:`journalled` locks the domain, reconciles what a dead run left (its journal,
replayed through each command's recovery handlers, fibackup/commands/recovery/),
and journals this run.  It sits below the command run code and above the
recovery handlers: no command module is imported from here, and ``repair`` is
:func:`reconcile` with waiting allowed.

After a replay every backup directory of the domain is tidied: hidden
``.partial-`` files, images without a record and records without an image are
removed (only in the domain's own directories, under the domain's lock).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

from fibackup.commands.recovery import HANDLERS
from fibackup.commands.recovery.context import RepairResult, Replay
from fibackup.errors import StoreError
from fibackup.host import journal as journals
from fibackup.host import state as host_state
from fibackup.host.journal import Journal
from fibackup.host.lock import DomainLock
from fibackup.report import Reporter
from fibackup.store.location import location
from fibackup.store.repo import BackupStore
from fibackup.store.tidy import tidy_domain
from fibackup.virt.libvirt_api import Connection, Domain


@contextlib.contextmanager
def journalled(conn: Connection, domain: Domain, command: str, options: dict[str, Any],
               report: Reporter) -> Iterator[Journal]:
    """Lock the domain, reconcile what a dead run left, and journal this run.

    The journal is removed when the run ends, also on a clean error; it stays
    when a step was left open (an error the step could not clean up after).
    """
    with DomainLock(domain.uuid, domain.name):
        if journals.load(domain.uuid) is not None:
            reconcile(conn, domain, report, wait=False)
        with Journal(domain.uuid, command, domain.name, options).running() as journal:
            yield journal


def reconcile(conn: Connection, domain: Domain, report: Reporter, wait: bool,
              backup_dir: Optional[str] = None, timeout: Optional[float] = None) -> RepairResult:
    """Replay a dead run's journal (if any) and tidy the domain's backup directories
    (the caller holds the domain's lock).  ``wait``: wait for a block job the dead run
    left running (repair) instead of refusing (every other command)."""
    result = RepairResult(domain.name)
    journal = journals.load(domain.uuid)
    stores: set[str] = {location(backup_dir)} if backup_dir else set()
    if journal is not None:
        result.interrupted = journal.describe()
        report.info(f"{domain.name}: {journal.describe()}; reconciling")
        replay = Replay(conn, domain, journal, report, result, wait, timeout)
        replay.run(HANDLERS)
        stores.update(replay.stores)
    if wait or journal is not None:
        stores.update(host_state.load(domain.uuid).stores.values())
        for root in sorted(stores):
            _tidy(root, domain, report, result)
    if journal is not None:
        journal.end()
    return result


def _tidy(root: str, domain: Domain, report: Reporter, result: RepairResult) -> None:
    try:
        store = BackupStore.open(root)
    except StoreError as error:
        report.warn(f"{domain.name}: backup directory {root} not checked: {error}")
        return
    for removed in tidy_domain(store, domain.uuid):
        result.act(report, f"removed the incomplete file {removed}")
