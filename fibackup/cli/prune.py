"""``fibackup prune``: the command line of fibackup.commands.prune."""
from __future__ import annotations

from typing import List, Optional

import typer

from fibackup.cli.domains import run_domains
from fibackup.cli.options import BackupOpt, ConnectOpt, DebugOpt, JsonOpt, QuietOpt
from fibackup.cli.root import app
from fibackup.cli.running import connector, load_settings, log_to, reporter, run


@app.command("prune")
def prune_command(
    backup_dir: Optional[str] = BackupOpt,
    domain: List[str] = typer.Option([], "-d", "--domain", metavar="NAME", help="Domain name or UUID as the backup directory knows it (repeatable); or --all."),
    all_domains: bool = typer.Option(False, "--all", help="Every domain in the backup directory."),
    keep: Optional[int] = typer.Option(None, "--keep", metavar="N", help="Keep the newest N restore points."),
    keep_daily: Optional[int] = typer.Option(None, "--keep-daily", metavar="D", help="Keep the newest point of each of the newest D days that have points (UTC)."),
    keep_weekly: Optional[int] = typer.Option(None, "--keep-weekly", metavar="W", help="Keep the newest point of each of the newest W ISO weeks that have points (UTC)."),
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Only show what would be dropped, merged and removed."),
    scratch: Optional[str] = typer.Option(None, "--scratch", metavar="DIR", help="With -b s3://...: where merges are staged (the merged layers are downloaded, checked and merged there, then uploaded) [default: /var/tmp]."),
    any_host: bool = typer.Option(False, "--any-host", help="With -b s3://...: prune a domain whose newest point another host made (only when that host no longer backs it up there: object storage has no lock shared between hosts)."),
    no_libvirt: bool = typer.Option(False, "--no-libvirt", help="Do not ask libvirt which stored layers instant-recovery domains run on (for a backup server without libvirt; only safe when no host runs a domain from this backup directory)."),
    connect: Optional[str] = ConnectOpt, as_json: bool = JsonOpt, quiet: bool = QuietOpt,
    debug: bool = DebugOpt,
) -> None:
    """Keep only the restore points a retention policy names, merging the others away.

    The rules add up (the newest point is always kept). Without any of them the
    configuration file's [prune] rules apply; any rule on the command line
    replaces all of the file's. Layers that kept points
    still need are merged into new files, checked against the old chain by
    QEMU, and the kept points switch to them; only then are the dropped points'
    manifests and the files nothing lists any more removed. Every kept point
    restores exactly as before, and a prune killed at any moment loses nothing
    (run it again to finish). Layers a libvirt domain on this host runs on
    (instant recovery) are never merged or removed.

    \b
    Examples:
      fibackup prune -b /backup -d web --keep 14            # forever-incremental
      fibackup prune -b /backup --all --keep-daily 7 --keep-weekly 4
      fibackup prune -b /backup -d web --keep 3 --dry-run   # what would go
    """
    from fibackup.commands.prune import PruneOptions, PruneRun, libvirt_pins
    from fibackup.config import PruneSettings
    from fibackup.model.retention import Retention
    report = reporter(quiet, as_json)

    def action() -> int:
        settings = load_settings()
        rules = settings.prune_rules(PruneSettings(keep, keep_daily, keep_weekly))
        retention = Retention(rules.keep, rules.keep_daily, rules.keep_weekly)
        directory = settings.backup_dir(backup_dir)
        log_to(report, directory, "prune")
        options = PruneOptions(backup_dir=directory, domains=domain,
                               every=all_domains, retention=retention, dry_run=dry_run,
                               scratch=scratch, any_host=any_host)
        pins = (lambda _store: set()) if no_libvirt else \
            libvirt_pins(connector(settings.connect_uri(connect)))
        prune_run = PruneRun.open(options, pins)
        names = [name for _uuid, name in prune_run.selected]
        uuids = {name if names.count(name) == 1 else f"{name} ({uuid})": uuid
                 for uuid, name in prune_run.selected}    # a re-created domain: same name
        return run_domains(
            list(uuids),
            lambda label: (prune_run.prune(uuids[label], label, report).to_json(), True),
            report, as_json, "prune")

    run(debug, action, as_json, report)
