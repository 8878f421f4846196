"""`fibackup --help` and every command's --help show real examples; every command has --json."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer

from fibackup.cli import app

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMANDS = sorted(typer.main.get_command(app).commands)


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    """Each command's --help (and the root's, as ""), run as a user would, in parallel."""
    running = {name: subprocess.Popen([sys.executable, "-m", "fibackup", *name.split(), "--help"],
                                      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env={**os.environ, "COLUMNS": "100"})
               for name in ["", *COMMANDS]}
    texts = {}
    for name, process in running.items():
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0 and not err, err
        texts[name] = out
    return texts


def test_every_help_has_examples_that_run_fibackup(helps):
    assert {"snapshot", "consolidate", "list", "status", "verify", "restore",
            "repair"} <= set(COMMANDS)
    for name, text in helps.items():
        assert text.startswith(f"Usage: fibackup {name}".rstrip()), text
        assert "Example" in text, f"'fibackup {name} --help' shows no example"
        examples = [line.strip() for line in text.splitlines()
                    if line.strip().startswith("fibackup ")]
        assert examples, f"'fibackup {name} --help' shows no command line"
        if name:
            assert all(line.startswith(f"fibackup {name} ") for line in examples), examples
            assert "--json" in text, f"'fibackup {name}' has no --json"


def test_root_help_names_every_exit_code(helps):
    text = " ".join(helps[""].split())
    assert ("Exit codes: 0 success, 1 failure, 2 usage error, 3 some of several domains failed, "
            "4 domain locked by another run, 130 interrupted") in text
