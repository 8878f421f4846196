"""``fibackup key``: the command line of fibackup.commands.keys."""
from __future__ import annotations

from typing import Optional

import typer

from fibackup.cli.options import BackupOpt, DebugOpt, JsonOpt
from fibackup.cli.render import emit_json, keys_table
from fibackup.cli.root import app
from fibackup.cli.running import load_settings, run
from fibackup.errors import EXIT_OK

key_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                      help="Manage the keys of an encrypted store: each is the store's master "
                           "key wrapped by its own passphrase."
                           "\n\n"
                           "\b\nExamples:\n"
                           "  fibackup key list -b /backup --json\n"
                           "  fibackup key add -b /backup --new-password-file /root/pw2\n"
                           "  fibackup key remove -b /backup 3f2a9c0e1d4b5a69")
app.add_typer(key_app, name="key")


@key_app.command("list")
def key_list(backup_dir: Optional[str] = BackupOpt, as_json: bool = JsonOpt,
             debug: bool = DebugOpt) -> None:
    """List the store's keys; the one this run's passphrase opens is marked."""
    from fibackup.commands.keys import list_keys

    def action() -> int:
        found = list_keys(load_settings().backup_dir(backup_dir))
        if as_json:
            emit_json([key.to_json() for key in found])
        else:
            print(keys_table(found))
        return EXIT_OK

    run(debug, action, as_json)


@key_app.command("add")
def key_add(backup_dir: Optional[str] = BackupOpt,
            new_password_file: Optional[str] = typer.Option(
                None, "--new-password-file", metavar="FILE",
                help="The new key's passphrase (first line) [default: a prompt, twice]."),
            as_json: bool = JsonOpt, debug: bool = DebugOpt) -> None:
    """Add a key: the master key wrapped by a new passphrase (the current one, from the
    usual places, must open the store)."""
    from fibackup.commands.keys import add_key

    def action() -> int:
        key_id = add_key(load_settings().backup_dir(backup_dir), new_password_file)
        if as_json:
            emit_json({"added": key_id})
        else:
            print(f"added key {key_id}")
        return EXIT_OK

    run(debug, action, as_json)


@key_app.command("remove")
def key_remove(key_id: str = typer.Argument(..., metavar="KEY-ID"),
               backup_dir: Optional[str] = BackupOpt, as_json: bool = JsonOpt,
               debug: bool = DebugOpt) -> None:
    """Remove a key (never the last one; a passphrase that opens the store is needed)."""
    from fibackup.commands.keys import remove_key

    def action() -> int:
        remove_key(load_settings().backup_dir(backup_dir), key_id)
        if as_json:
            emit_json({"removed": key_id})
        else:
            print(f"removed key {key_id}")
        return EXIT_OK

    run(debug, action, as_json)
