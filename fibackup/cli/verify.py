"""``fibackup verify``: the command line of fibackup.commands.verify."""
from __future__ import annotations

from typing import Optional

import typer

from fibackup.cli.options import BackupOpt, DebugOpt, JsonOpt, QuietOpt, VerifyBwlimitOpt
from fibackup.cli.render import emit_json, verify_summary
from fibackup.cli.root import app
from fibackup.cli.running import io_options, load_settings, log_to, reporter, run
from fibackup.errors import EXIT_FAILURE, EXIT_OK


@app.command()
def verify(
    backup_dir: Optional[str] = BackupOpt,
    domain: Optional[str] = typer.Option(None, "-d", "--domain", metavar="NAME", help="Only this domain."),
    at: Optional[str] = typer.Option(None, "--at", metavar="ID", help="Only this restore point (id or seq)."),
    bwlimit: Optional[str] = VerifyBwlimitOpt,
    as_json: bool = JsonOpt, quiet: bool = QuietOpt, debug: bool = DebugOpt,
) -> None:
    """Re-read every stored layer and check it against its checksums (no libvirt needed).

    \b
    Examples:
      fibackup verify -b /backup                   # every restore point
      fibackup verify -b /backup -d web --at 20261123-020000
      fibackup verify -b /backup --bwlimit 100M --json

    Exit codes: 0 intact, 1 damage found (one DAMAGED line per problem).
    """
    from fibackup.commands.verify import check_selection, verify as run_verify
    report = reporter(quiet, as_json)

    def action() -> int:
        check_selection(domain, at)
        settings = load_settings()
        directory = settings.backup_dir(backup_dir)
        log_to(report, directory, "verify")
        throttle = io_options(None, settings.pick("verify.bwlimit", bwlimit)).throttle()
        result = run_verify(directory, domain, at, report, throttle=throttle)
        summary = verify_summary(result)
        report.record(f"{'ok' if result.ok else 'damaged'}: {summary}")
        if as_json:
            emit_json(result.to_json())
        elif result.ok:
            print(f"ok: {summary}")
        else:
            for problem in result.problems:
                report.error(problem, prefix="DAMAGED: ")
            report.error(f"verify found {len(result.problems)} problem(s)")
        return EXIT_OK if result.ok else EXIT_FAILURE

    run(debug, action, as_json, report)
