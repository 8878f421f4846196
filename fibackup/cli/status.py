"""``fibackup status``: a domain's live chains (fibackup.commands.listing.domain_status)."""
from __future__ import annotations

from typing import Optional

import typer

from fibackup.cli.options import BackupOpt, ConnectOpt, DebugOpt, JsonOpt
from fibackup.cli.render import chain_table, emit_json
from fibackup.cli.root import app
from fibackup.cli.running import connector, load_settings, run
from fibackup.errors import EXIT_OK


@app.command()
def status(
    domain: str = typer.Option(..., "-d", "--domain", metavar="NAME", help="Domain name."),
    backup_dir: Optional[str] = BackupOpt,
    connect: Optional[str] = ConnectOpt, as_json: bool = JsonOpt, debug: bool = DebugOpt,
) -> None:
    """Show each disk's live chain; with -b, which frozen layers that backup holds.

    \b
    Examples:
      fibackup status -d web
      fibackup status -d web -b /backup --json
    """
    from fibackup.commands.listing import domain_status

    def action() -> int:
        settings = load_settings()
        directory = settings.pick("backup_dir", backup_dir)
        chains = domain_status(connector(settings.connect_uri(connect))(), domain, directory)
        if as_json:
            emit_json({target: [layer.__dict__ for layer in layers]
                       for target, layers in chains.items()})
            return EXIT_OK
        for target, layers in chains.items():
            print(f"{target}:")
            print(chain_table(layers, with_backup=bool(directory)))
        return EXIT_OK

    run(debug, action, as_json)
