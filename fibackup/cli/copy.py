"""``fibackup copy``: the command line of fibackup.commands.copy."""
from __future__ import annotations

from typing import List, Optional

import typer

from fibackup.cli.options import DebugOpt, JsonOpt, QuietOpt
from fibackup.cli.render import emit_json
from fibackup.cli.root import app
from fibackup.cli.running import configured_store, load_settings, reporter, run
from fibackup.errors import EXIT_OK, UsageError


@app.command()
def copy(
    source: str = typer.Option(..., "--from", metavar="STORE", help="The store to copy from "
                               "(a directory or s3://BUCKET/PREFIX, any format)."),
    target: str = typer.Option(..., "--to", metavar="STORE", help="The format-3 store to copy "
                               "into (an empty location is made one, as 'fibackup init' "
                               "would with the configuration file's [store])."),
    domain: List[str] = typer.Option([], "-d", "--domain", metavar="NAME",
                                     help="Only this domain (repeatable) [default: every "
                                     "domain of --from]."),
    at: Optional[str] = typer.Option(None, "--at", metavar="ID", help="Only this restore "
                                     "point (id or seq; needs one -d)."),
    latest: bool = typer.Option(False, "--latest", help="Only each domain's newest point."),
    from_password_file: Optional[str] = typer.Option(
        None, "--from-password-file", metavar="FILE", help="The passphrase of an encrypted "
        "--from store [default: the one of --to, from the usual places]."),
    scratch: Optional[str] = typer.Option(None, "--scratch", metavar="DIR", help="Where a "
                                          "format-1/2 point's layers are staged [default: "
                                          "/var/tmp]."),
    as_json: bool = JsonOpt, quiet: bool = QuietOpt, debug: bool = DebugOpt,
) -> None:
    """Copy restore points into a format-3 store (no libvirt needed).

    Only the chunks the target lacks are transferred, each checked; points the target
    holds already are skipped, so a copy killed or run again only adds what is
    missing. Format 1/2 -> 3 is the upgrade path; directory <-> S3 and plain <->
    encrypted work too. The next 'fibackup snapshot -b' into the target stays
    incremental.

    \b
    Examples:
      fibackup copy --from /backup --to s3://offsite/hv1
      fibackup copy --from /old-backup --to /backup -d web --latest
      fibackup copy --from s3://a/x --to /backup --from-password-file /root/a.pass --json
    """
    from fibackup.commands.copy import CopyOptions, copy_points
    from fibackup.store.v3.passwords import read_file
    report = reporter(quiet, as_json)

    def action() -> int:
        if at is not None and (len(domain) != 1 or latest):
            raise UsageError("--at names a point of one domain: give exactly one -d, and no "
                             "--latest")
        settings = load_settings()
        passphrase = read_file(from_password_file) if from_password_file else None
        result = copy_points(CopyOptions(source=source, target=target, domains=domain, at=at,
                                         latest=latest, scratch=scratch),
                             configured_store(settings, target, 3), report, passphrase)
        if as_json:
            emit_json(result.to_json())
        else:
            print(f"copied {len(result.copied)} restore point(s), skipped "
                  f"{len(result.skipped)} the target holds; {result.new_chunks} new chunk(s)")
        return EXIT_OK

    run(debug, action, as_json, report)
