"""``fibackup list``: the restore points of a backup directory (fibackup.commands.listing)."""
from __future__ import annotations

from typing import Optional

import typer

from fibackup.cli.options import BackupOpt, DebugOpt, JsonOpt
from fibackup.cli.render import emit_json, points_table
from fibackup.cli.root import app
from fibackup.cli.running import load_settings, reporter, run
from fibackup.errors import EXIT_OK


@app.command("list")
def list_command(
    backup_dir: Optional[str] = BackupOpt,
    domain: Optional[str] = typer.Option(None, "-d", "--domain", metavar="NAME", help="Only this domain."),
    as_json: bool = JsonOpt, debug: bool = DebugOpt,
) -> None:
    """List the restore points in a backup directory (no libvirt needed).

    Columns: seq and id (what restore --at takes), snapshot time, disks, layers,
    data stored new by that point, data a restore reads, quiesced or not.

    \b
    Examples:
      fibackup list -b /backup
      fibackup list -b /backup -d web --json
    """
    from fibackup.commands.listing import list_stores, point_row
    report = reporter(as_json=as_json)

    def action() -> int:
        directory = load_settings().backup_dir(backup_dir)
        found = list_stores(directory, domain, report)
        several = len({store for store, _point in found}) > 1
        rows = [point_row(point, store if several else None) for store, point in found]
        if as_json:
            emit_json(rows)
        elif not rows:
            print("no restore points" + (f" for domain {domain}" if domain else ""))
        else:
            print(points_table(rows, several))
        return EXIT_OK

    run(debug, action, as_json, report)
