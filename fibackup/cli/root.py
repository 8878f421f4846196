"""The ``fibackup`` command group: its help text and its own option, --version.

Each command registers itself on :data:`app` from its module (fibackup/cli/*.py);
fibackup/cli/__init__.py imports them in the order ``--help`` lists them.
"""
from __future__ import annotations

from typing import Optional

import typer

from fibackup import __version__

app = typer.Typer(
    add_completion=False, no_args_is_help=True, rich_markup_mode=None,
    help="Forward-incremental, verifiable backups of libvirt/QEMU domains.\n\n"
         "Examples:\n\n"
         "\b\n"
         "  fibackup snapshot -d web -b /backup     # snapshot + incremental backup\n"
         "  fibackup consolidate -d web -b /backup  # shorten the chain\n"
         "  fibackup list -b /backup                # restore points\n"
         "  fibackup status -d web -b /backup       # live chain, what is backed up\n"
         "  fibackup verify -b /backup              # re-read every stored byte\n"
         "  fibackup restore -d web -b /backup --to /srv/web-restored --at 3\n"
         "  fibackup prune -b /backup -d web --keep 14   # retention by merging\n"
         "  fibackup repair -d web                  # after a crash: finish or undo\n"
         "  fibackup config show                    # settings and where each comes from\n"
         "  fibackup COMMAND --help                 # each command's options and examples\n\n"
         "Every command takes --json (errors too are JSON then). Progress bars are drawn "
         "on a terminal only; each run on a backup directory writes its log to "
         "DIR/logs.\n\n"
         "Exit codes: 0 success, 1 failure, 2 usage error, 3 some of several domains "
         "failed, 4 domain locked by another run, 130 interrupted (Ctrl-C).")


def _version(value: bool) -> None:
    if value:
        print(f"fibackup {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Show the version and exit."),
         password_file: Optional[str] = typer.Option(
             None, "--password-file", metavar="FILE",
             help="The passphrase of an encrypted store (its first line), for any command "
             "[default: $FIBACKUP_PASSWORD_FILE, else [store] password_file or "
             "password_command, else a prompt].")) -> None:
    if password_file is not None:
        from fibackup.cli.running import use_password_file
        use_password_file(password_file)
