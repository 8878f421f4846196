"""The recovery tables (fibackup/commands/recovery/): every journal step is either
handled or deliberately left to the step after it."""
from fibackup.commands.recovery import HANDLERS
from fibackup.host.journal import ALL_STEPS

UNHANDLED = {
    "snapshot.tidy-xml",        # snapshot.take's handler tidies the definition again
    "consolidate.catch-up",     # its snapshot's own steps are in the journal
    "consolidate.rebase",       # consolidate.job's handler finishes the offline job
    "consolidate.redefine",
    "consolidate.sync-xml",     # consolidate.job's handler does what finish_merge still owed
    "consolidate.delete",
    "finalize.release",         # --finalize run again finishes it
    "restore.stage", "restore.publish", "restore.define", "restore.tpm",  # recovery/restore.py
}


def test_every_step_is_handled_or_left_on_purpose():
    assert set(HANDLERS) <= ALL_STEPS
    assert ALL_STEPS - set(HANDLERS) == UNHANDLED


def test_no_command_module_is_below_the_journal_context():
    import ast
    import pathlib
    below = pathlib.Path(__file__).parents[2] / "fibackup" / "commands" / "recovery"
    for module in [*below.glob("*.py"), below.parent / "journalled.py"]:
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.startswith("fibackup.commands."):
                assert node.module.startswith(("fibackup.commands.recovery",)), \
                    f"{module.name} imports {node.module}"
