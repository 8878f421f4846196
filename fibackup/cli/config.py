"""``fibackup config show``: the effective settings of the configuration files
(fibackup/config.py)."""
from __future__ import annotations

import typer

from fibackup.cli.options import DebugOpt, JsonOpt
from fibackup.cli.render import emit_json, settings_table
from fibackup.cli.root import app
from fibackup.cli.running import load_settings, run
from fibackup.errors import EXIT_OK

config_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                         help="Show the settings of the configuration files (docs/CONFIG.md)."
                              "\n\n"
                              "\b\nExamples:\n"
                              "  fibackup config show              # value and source of each\n"
                              "  FIBACKUP_CONFIG=/etc/other.toml fibackup config show --json")
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(as_json: bool = JsonOpt, debug: bool = DebugOpt) -> None:
    """Show each effective setting and where it comes from (no libvirt needed).

    A source is a configuration file, LIBVIRT_DEFAULT_URI (connect only) or the
    built-in default; a command-line flag overrides each of them.

    \b
    Examples:
      fibackup config show
      fibackup config show --json
    """
    def action() -> int:
        settings = load_settings()
        if as_json:
            emit_json(settings.to_json())
            return EXIT_OK
        for path in settings.searched:
            print(f"{'read' if path in settings.files else 'not found'}: {path}")
        print(settings_table(settings))
        return EXIT_OK

    run(debug, action, as_json)
