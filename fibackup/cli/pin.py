"""``fibackup pin``: the command line of fibackup.commands.pinning."""
from __future__ import annotations

from typing import Optional

import typer

from fibackup.cli.options import BackupOpt, DebugOpt, JsonOpt
from fibackup.cli.render import emit_json, pins_table
from fibackup.cli.root import app
from fibackup.cli.running import load_settings, run
from fibackup.errors import EXIT_OK

pin_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                      help="Pins: restore points of a format-3 store that prune and garbage "
                           "collection keep, on every host (instant recovery pins the point "
                           "it serves; a legal hold is a pin by hand)."
                           "\n\n"
                           "\b\nExamples:\n"
                           "  fibackup pin add -b /backup -d web --at 12 --reason 'case 4711'\n"
                           "  fibackup pin list -b /backup --json\n"
                           "  fibackup pin remove -b /backup 9c1d0e2f3a4b5c6d")
app.add_typer(pin_app, name="pin")


@pin_app.command("add")
def pin_add(domain: str = typer.Option(..., "-d", "--domain", metavar="NAME", help="Domain name."),
            at: Optional[str] = typer.Option(None, "--at", metavar="ID",
                                             help="The restore point (id or seq) [default: the newest]."),
            reason: str = typer.Option("", "--reason", metavar="TEXT",
                                       help="Why it is kept (shown by 'pin list')."),
            backup_dir: Optional[str] = BackupOpt, as_json: bool = JsonOpt,
            debug: bool = DebugOpt) -> None:
    """Pin a restore point: prune keeps it until the pin is removed."""
    from fibackup.commands.pinning import pin_point

    def action() -> int:
        pin_id, point = pin_point(load_settings().backup_dir(backup_dir), domain, at, reason)
        if as_json:
            emit_json({"pin": pin_id, "point": point})
        else:
            print(f"pinned restore point {point} of {domain}: pin {pin_id}")
        return EXIT_OK

    run(debug, action, as_json)


@pin_app.command("list")
def pin_list(backup_dir: Optional[str] = BackupOpt, as_json: bool = JsonOpt,
             debug: bool = DebugOpt) -> None:
    """List the pins: which point, by which host, since when, why."""
    from fibackup.commands.pinning import list_pins

    def action() -> int:
        found = list_pins(load_settings().backup_dir(backup_dir))
        if as_json:
            emit_json([pin.to_json() for pin in found])
        else:
            print(pins_table(found) if found else "no pins")
        return EXIT_OK

    run(debug, action, as_json)


@pin_app.command("remove")
def pin_remove(pin_id: str = typer.Argument(..., metavar="PIN-ID"),
               backup_dir: Optional[str] = BackupOpt, as_json: bool = JsonOpt,
               debug: bool = DebugOpt) -> None:
    """Remove a pin (a stale one, or a hold that ended)."""
    from fibackup.commands.pinning import unpin

    def action() -> int:
        unpin(load_settings().backup_dir(backup_dir), pin_id)
        if as_json:
            emit_json({"removed": pin_id})
        else:
            print(f"removed pin {pin_id}")
        return EXIT_OK

    run(debug, action, as_json)
