"""``fibackup snapshot``: the command line of fibackup.commands.snapshot."""
from __future__ import annotations

from typing import List, Optional

import typer

from fibackup.cli.domains import run_domains, select_domains
from fibackup.cli.options import (AllOpt, AllRunningOpt, BwlimitOpt, ConnectOpt, DebugOpt,
                                  DomainsOpt, JobsOpt, JsonOpt, QuietOpt)
from fibackup.cli.root import app
from fibackup.cli.running import (configured_store, connector, io_options, load_settings,
                                  log_to, reporter, run)


def _quiesce_flag(require: bool, fallback: bool, off: bool) -> Optional[str]:
    """The [snapshot] quiesce mode the flags ask for (--quiesce-fallback wins over
    --quiesce; SnapshotOptions.check_flags refuses --no-quiesce beside either)."""
    return "no" if off else "fallback" if fallback else "require" if require else None


@app.command()
def snapshot(
    domain: List[str] = DomainsOpt,
    all_domains: bool = AllOpt, all_running: bool = AllRunningOpt,
    backup_dir: Optional[str] = typer.Option(None, "-b", "--backup-dir", metavar="DIR", help="Back up into this directory [default: backup_dir of the configuration file; without either, only the snapshot is taken]."),
    no_backup: bool = typer.Option(False, "--no-backup", help="Only take the snapshot, even when the configuration file names a backup_dir."),
    disk: List[str] = typer.Option([], "--disk", metavar="DISK", help="Only this disk target, e.g. vda (repeatable)."),
    exclude_disk: List[str] = typer.Option([], "--exclude-disk", metavar="DISK", help="Leave this disk out (repeatable)."),
    quiesce: bool = typer.Option(False, "--quiesce", help="Freeze guest filesystems through the guest agent; fail without one."),
    quiesce_fallback: bool = typer.Option(False, "--quiesce-fallback", help="Freeze guest filesystems if the guest agent answers; otherwise take a crash-consistent snapshot and warn ('list' shows which points are quiesced)."),
    no_quiesce: bool = typer.Option(False, "--no-quiesce", help="Do not freeze the guest filesystems, whatever the configuration file's quiesce says (the default without one)."),
    no_space_check: bool = typer.Option(False, "--no-space-check", help="Skip the free-space check before copying."),
    consolidate: Optional[str] = typer.Option(None, "--consolidate", metavar="METHOD", help="Consolidate right after the snapshot and backup: commit, active or pull (see 'fibackup consolidate --help'); none: do not, whatever the configuration file says."),
    max_chain: Optional[int] = typer.Option(None, "--max-chain", metavar="N", help="Consolidate (commit) when a disk's chain has more than N layers; 0: never, whatever the configuration file says."),
    jobs: Optional[int] = JobsOpt, bwlimit: Optional[str] = BwlimitOpt,
    reflink: bool = typer.Option(False, "--reflink", help="Where the backup directory is on the images' btrfs/XFS filesystem, store layers as reflinks: nothing is written (each layer is still read and hashed), but the backup shares its blocks with the images, so it is not independent of them."),
    connect: Optional[str] = ConnectOpt, as_json: bool = JsonOpt, quiet: bool = QuietOpt,
    debug: bool = DebugOpt,
) -> None:
    """Take one atomic external snapshot of each domain's disks; with -b, back up what froze.

    Without -b (and without a backup_dir in the configuration file, or with
    --no-backup) only the snapshot is taken (nothing is copied); a later run
    with -b copies every frozen layer the backup directory lacks.

    \b
    Examples:
      fibackup snapshot -d web                       # snapshot only
      fibackup snapshot -d web -d db -b /backup      # snapshot + backup
      fibackup snapshot -d web -b /backup --exclude-disk vdc --quiesce
      fibackup snapshot -d web -b /backup --max-chain 8   # nightly, bounded chain
      fibackup snapshot -d web -b /backup --bwlimit 200M -j 4
      fibackup snapshot --all-running -b /backup --quiesce-fallback   # nightly, every VM

    Exit codes: 0 every domain succeeded, 3 some failed, 1 all failed, 4 locked.
    """
    from fibackup.commands.compose import snapshot_domain
    from fibackup.commands.snapshot import SnapshotOptions
    report = reporter(quiet, as_json)

    def action() -> int:
        settings = load_settings()
        SnapshotOptions.check_flags(backup_dir=backup_dir, no_backup=no_backup,
                                    quiesce=quiesce, quiesce_fallback=quiesce_fallback,
                                    no_quiesce=no_quiesce)
        mode = settings.pick("snapshot.quiesce",
                             _quiesce_flag(quiesce, quiesce_fallback, no_quiesce))
        directory = None if no_backup else settings.pick("backup_dir", backup_dir)
        log_to(report, directory, "snapshot")
        options = SnapshotOptions(
            backup_dir=directory, disks=disk, exclude=exclude_disk,
            quiesce=mode != "no", quiesce_fallback=mode == "fallback",
            space_check=not no_space_check,
            consolidate=settings.pick("snapshot.consolidate", consolidate),
            max_chain=settings.pick("snapshot.max_chain", max_chain),
            io=io_options(settings.pick("snapshot.jobs", jobs),
                          settings.pick("snapshot.bwlimit", bwlimit), reflink),
            new_store=configured_store(settings, directory))
        conn = connector(settings.connect_uri(connect))()
        names = select_domains(conn, domain, all_domains, all_running)
        return run_domains(
            names, lambda name: (snapshot_domain(conn, name, options, report).to_json(), True),
            report, as_json, "snapshot")

    run(debug, action, as_json, report)
