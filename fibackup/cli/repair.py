"""``fibackup repair``: the command line of fibackup.commands.repair."""
from __future__ import annotations

from typing import List, Optional

import typer

from fibackup.cli.options import ConnectOpt, DebugOpt, DomainOpt, JsonOpt, QuietOpt
from fibackup.cli.render import emit_json
from fibackup.cli.root import app
from fibackup.cli.running import connector, load_settings, reporter, run
from fibackup.errors import EXIT_OK


@app.command()
def repair(
    domain: List[str] = DomainOpt,
    backup_dir: Optional[str] = typer.Option(None, "-b", "--backup-dir", metavar="DIR", help="Also tidy this backup directory (those the domain was backed up to always are)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", metavar="SECONDS", help="Stop waiting for a block job left running after this long [default: wait]."),
    connect: Optional[str] = ConnectOpt, as_json: bool = JsonOpt, quiet: bool = QuietOpt,
    debug: bool = DebugOpt,
) -> None:
    """Finish or undo what an interrupted fibackup run left behind.

    Reads the domain's intent journal and reconciles it with libvirt, the image
    headers and the backup directories: waits for a block job still running,
    pivots (--method active) or aborts a job left in READY, records overlays and
    consolidations, syncs the definition, deletes merged files, removes partial
    copies, undoes half-published restores, cleans up the domain's mounts whose
    server died ('fibackup mount'), brings back the NBD servers of an
    instant-recovery domain that runs from a format-3 store (after a reboot) and
    resumes it if an I/O error of the store paused it. Every other command does the
    safe part of this by itself and names 'fibackup repair' for the rest.

    \b
    Examples:
      fibackup repair -d web                  # after a crash or a killed run
      fibackup repair -d web -b /backup --timeout 600 --json
    """
    from fibackup.commands.repair import repair_domain
    report = reporter(quiet, as_json)

    def action() -> int:
        conn = connector(load_settings().connect_uri(connect))()
        results = [repair_domain(conn, name, backup_dir, report, timeout).to_json()
                   for name in domain]
        if as_json:
            emit_json(results)
        return EXIT_OK

    run(debug, action, as_json, report)
