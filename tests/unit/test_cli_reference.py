"""docs/CLI.md is generated from the CLI (fibackup/cli/reference.py) and must match it."""
from __future__ import annotations

import typer

from fibackup.cli import app
from fibackup.cli.reference import COMMAND, REFERENCE, render


def test_docs_cli_md_is_the_generated_reference() -> None:
    current = REFERENCE.read_text(encoding="utf-8") if REFERENCE.exists() else ""
    assert current == render(), (f"{REFERENCE} differs from the CLI's help texts: run "
                                 f"`{COMMAND}` to regenerate it, and commit it")


def test_the_reference_has_every_command_and_option() -> None:
    text = render()
    root = typer.main.get_command(app)
    context = root.context_class(root, info_name="fibackup")
    for name, command in root.commands.items():
        assert f"\n## fibackup {name}\n" in text
        for param in command.get_params(context):
            for flag in param.opts:
                assert flag in text, f"fibackup {name} {flag} is not in the reference"


def test_the_reference_does_not_depend_on_the_terminal(monkeypatch) -> None:
    first = render()
    monkeypatch.setenv("COLUMNS", "37")
    assert render() == first
