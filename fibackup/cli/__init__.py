"""The command line: a thin typer layer over fibackup.commands.

One module per command (snapshot, consolidate, repair, listing for ``list``, status,
verify, restore with instant recovery, prune, config), each registering itself on
:data:`app` (root.py); options several commands share are in options.py, running a
command and turning its errors into exit codes and JSON in running.py, the domain loop
in domains.py, tables and printed results in render.py.  docs/CLI.md is generated from
these modules (``python -m fibackup.cli.reference``).
"""
from __future__ import annotations

from fibackup.cli.root import app
# each command module registers its command on app; --help lists them in this order
from fibackup.cli import snapshot, consolidate, repair, listing, status, verify  # noqa: F401
from fibackup.cli import restore, mount, prune, copy, init, stats, keys, pin, config  # noqa: F401

__all__ = ["app", "main"]


def main() -> None:
    app(prog_name="fibackup")
