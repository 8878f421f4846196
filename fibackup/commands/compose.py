"""The entry points of ``snapshot`` and ``consolidate``, which run each other.

``snapshot --consolidate``/``--max-chain`` consolidates right after the snapshot
(and backup); ``consolidate -b`` takes a ``snapshot -b`` first when a layer it
would merge away is not stored yet.  Both run code modules
(fibackup/commands/snapshot.py, fibackup/commands/consolidate.py) stay below this
one and never import each other: the consolidation receives the catch-up
snapshot as a callable (:func:`catch_up`).  Here each run is locked, reconciled
and journalled (fibackup/commands/journalled.py), once, for both parts.
"""
from __future__ import annotations

from fibackup.commands.consolidate import (ConsolidateOptions, ConsolidateResult,
                                           check_options as check_consolidate_options,
                                           consolidate_locked,
                                           journal_options as consolidate_journal_options)
from fibackup.commands.journalled import journalled
from fibackup.commands.snapshot import (CHAIN_WARNING, SnapshotOptions, SnapshotResult,
                                        check_options as check_snapshot_options,
                                        journal_options as snapshot_journal_options,
                                        snapshot_locked)
from fibackup.errors import ConsolidationFailedError, FibackupError
from fibackup.host.instant import refuse_instant
from fibackup.host.journal import Journal
from fibackup.model.states import Method
from fibackup.report import Reporter
from fibackup.virt.libvirt_api import Connection, Domain


def snapshot_domain(conn: Connection, name: str, options: SnapshotOptions,
                    report: Reporter) -> SnapshotResult:
    """``fibackup snapshot`` of one domain."""
    check_snapshot_options(options)
    domain = conn.domain(name)
    refuse_instant(domain.uuid, domain.name, "snapshot")
    with journalled(conn, domain, "snapshot", snapshot_journal_options(options),
                    report) as journal:
        result = snapshot_locked(domain, options, report, journal)
        _consolidate_after(conn, domain, options, result, report, journal)
        return result


def consolidate_domain(conn: Connection, name: str, options: ConsolidateOptions,
                       report: Reporter) -> ConsolidateResult:
    """``fibackup consolidate`` of one domain."""
    check_consolidate_options(options)
    domain = conn.domain(name)
    refuse_instant(domain.uuid, domain.name, "consolidate")
    with journalled(conn, domain, "consolidate", consolidate_journal_options(options),
                    report) as journal:
        return consolidate_locked(conn, domain, options, report, journal, catch_up)


def catch_up(domain: Domain, options: ConsolidateOptions, report: Reporter,
             journal: Journal) -> dict[str, object]:
    """The snapshot with backup a consolidation takes first (``consolidate -b``)."""
    step = journal.start("consolidate.catch-up", backup_dir=options.backup_dir)
    snapshot = snapshot_locked(domain, SnapshotOptions(
        backup_dir=options.backup_dir, disks=options.disks, exclude=options.exclude,
        space_check=options.space_check), report, journal)
    journal.done(step)
    return snapshot.to_json()


def _consolidate_after(conn: Connection, domain: Domain, options: SnapshotOptions,
                       result: SnapshotResult, report: Reporter, journal: Journal) -> None:
    """fi-backup's -C, and the --max-chain bound; warn about long chains otherwise."""
    longest = max(len(disk) for disk in result.chains.values()) if result.chains else 0
    method = options.consolidate
    if method is None and options.max_chain is not None and longest > options.max_chain:
        report.info(f"{domain.name}: a chain has {longest} layers, more than --max-chain "
                    f"{options.max_chain}: consolidating (commit)")
        method = Method.COMMIT
    if method is None:
        if longest > CHAIN_WARNING:
            report.warn(f"{domain.name}: a disk's backing chain has {longest} layers; long "
                        "chains slow the guest down and libvirt refuses more than 200: run "
                        f"'fibackup consolidate -d {domain.name}' or use --max-chain")
        return
    try:
        outcome = consolidate_locked(conn, domain, ConsolidateOptions(
            method=method, backup_dir=options.backup_dir, disks=options.disks,
            exclude=options.exclude, space_check=options.space_check), report, journal,
            catch_up)
    except FibackupError as error:
        stored = f"restore point {result.point.id} is stored" if result.point else \
            f"snapshot {result.tag} was taken"
        raise ConsolidationFailedError(f"{stored}, but the consolidation failed: {error}",
                                       domain=domain.name) from None
    result.consolidation = outcome.to_json()
