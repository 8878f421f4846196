"""``fibackup consolidate``: the command line of fibackup.commands.consolidate."""
from __future__ import annotations

from typing import List, Optional

import typer

from fibackup.cli.domains import run_domains, select_domains
from fibackup.cli.options import (AllOpt, AllRunningOpt, ConnectOpt, DebugOpt, DomainsOpt,
                                  JsonOpt, QuietOpt)
from fibackup.cli.root import app
from fibackup.cli.running import connector, load_settings, reporter, run


@app.command("consolidate")
def consolidate_command(
    domain: List[str] = DomainsOpt,
    all_domains: bool = AllOpt, all_running: bool = AllRunningOpt,
    method: Optional[str] = typer.Option(None, "--method", "-m", metavar="METHOD", help="commit (default, or [consolidate] method of the configuration file): merge the frozen layers into the base, backup stays incremental; active: merge everything into the base and pivot (next backup: full copy); pull: copy the backing data into the active layer (next backup: full copy)."),
    backup_dir: Optional[str] = typer.Option(None, "-b", "--backup-dir", metavar="DIR", help="Backup directory; frozen layers it lacks are backed up first (snapshot -b)."),
    bandwidth: int = typer.Option(0, "--bandwidth", metavar="MIB_PER_S", show_default=False, help="Limit the block job to this many MiB/s [default: unlimited]."),
    timeout: Optional[float] = typer.Option(None, "--timeout", metavar="SECONDS", help="Abort a job that has not finished after this long [default: [consolidate] timeout of the configuration file, else wait]."),
    keep_files: bool = typer.Option(False, "--keep-files", help="Keep the merged layer files (they are no longer part of any chain)."),
    force: bool = typer.Option(False, "--force", help="Merge layers a backup directory lacks (that restore point is lost; its next backup is a full copy)."),
    disk: List[str] = typer.Option([], "--disk", metavar="DISK", help="Only this disk target (repeatable)."),
    exclude_disk: List[str] = typer.Option([], "--exclude-disk", metavar="DISK", help="Leave this disk out (repeatable)."),
    no_space_check: bool = typer.Option(False, "--no-space-check", help="Skip the free-space check of a catch-up backup."),
    connect: Optional[str] = ConnectOpt, as_json: bool = JsonOpt, quiet: bool = QuietOpt,
    debug: bool = DebugOpt,
) -> None:
    """Shorten each disk's backing chain, live or offline, without breaking any backup.

    Every restore point keeps restoring. A frozen layer that a backup directory
    of the domain lacks is never merged silently: with -b it is backed up first,
    otherwise fibackup refuses (or goes on with --force).

    \b
    Examples:
      fibackup consolidate -d web                     # commit: base <- active
      fibackup consolidate -d web -b /backup          # back up what is missing first
      fibackup consolidate -d web --method active --timeout 600
      fibackup consolidate --all-running --method commit --json

    Exit codes: 0 done, 1 failed or a job was aborted, 3 some domains failed, 4 locked.
    """
    from fibackup.commands.compose import consolidate_domain
    from fibackup.commands.consolidate import ConsolidateOptions
    report = reporter(quiet, as_json, backup_dir, "consolidate")

    def action() -> int:
        settings = load_settings()
        options = ConsolidateOptions(method=settings.pick("consolidate.method", method),
                                     backup_dir=backup_dir, bandwidth_mib=bandwidth,
                                     timeout=settings.pick("consolidate.timeout", timeout),
                                     keep_files=keep_files, force=force, disks=disk,
                                     exclude=exclude_disk, space_check=not no_space_check)
        conn = connector(settings.connect_uri(connect))()

        def consolidate_one(name: str) -> tuple[dict[str, object], bool]:
            outcome = consolidate_domain(conn, name, options, report)
            if outcome.aborted and not as_json:
                report.error(f"{name}: consolidation of disk(s) "
                             f"{', '.join(item.target for item in outcome.aborted)} was "
                             f"aborted ({outcome.aborted[0].reason})")
            return outcome.to_json(), not outcome.aborted

        names = select_domains(conn, domain, all_domains, all_running)
        return run_domains(names, consolidate_one, report, as_json, "consolidate")

    run(debug, action, as_json, report)
