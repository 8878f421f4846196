"""``fibackup restore``: a restore (fibackup.commands.restore), or instant recovery with
--instant and --finalize NAME (fibackup.commands.instant)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional

import typer

from fibackup.cli.options import (BackupOpt, BwlimitOpt, ConnectOpt, DebugOpt, JobsOpt,
                                  JsonOpt, QuietOpt)
from fibackup.cli.render import emit_json, print_disks
from fibackup.cli.root import app
from fibackup.cli.running import (connector, io_options, load_settings, log_to, reporter,
                                  run)
from fibackup.errors import EXIT_OK

if TYPE_CHECKING:
    from fibackup.config import Config
    from fibackup.report import Reporter


@dataclass(frozen=True)
class RestoreArgs:
    """The restore command line as given; -b and --bwlimit before the configuration."""

    domain: Optional[str]
    backup_dir: Optional[str]
    to: Optional[str]
    at: Optional[str]
    disks: List[str]
    flatten: bool
    no_define: bool
    as_name: Optional[str]
    force: bool
    no_space_check: bool
    jobs: Optional[int]
    bwlimit: Optional[str]
    no_reflink: bool
    instant: bool
    finalize: Optional[str]
    no_verify: bool
    trust_xml: bool
    show_xml: bool


@app.command()
def restore(
    domain: Optional[str] = typer.Option(None, "-d", "--domain", metavar="NAME", help="Domain whose backup to restore (name or UUID)."),
    backup_dir: Optional[str] = BackupOpt,
    to: Optional[str] = typer.Option(None, "--to", metavar="DIR", help="Directory for the restored images (with --instant: for the overlays)."),
    at: Optional[str] = typer.Option(None, "--at", metavar="ID", help="Restore point id or seq [default: newest]."),
    disk: List[str] = typer.Option([], "--disk", metavar="DISK", help="Only this disk (repeatable)."),
    flatten: bool = typer.Option(False, "--flatten", help="One standalone image per disk."),
    no_define: bool = typer.Option(False, "--no-define", help="Only rebuild the images; no libvirt needed."),
    as_name: Optional[str] = typer.Option(None, "--as", metavar="NEWNAME", help="Define a copy under this new name."),
    force: bool = typer.Option(False, "--force", help="Overwrite files already in --to."),
    no_space_check: bool = typer.Option(False, "--no-space-check", help="Skip the free-space check."),
    jobs: Optional[int] = JobsOpt, bwlimit: Optional[str] = BwlimitOpt,
    no_reflink: bool = typer.Option(False, "--no-reflink", help="Always write full copies. By default, where --to is on the backup's btrfs/XFS filesystem, restored layers share the stored blocks (nothing is written; every chunk is still read and checked), so a media error there would damage both."),
    instant: bool = typer.Option(False, "--instant", help="Instant recovery: start a new domain (--as) that runs straight from the store through new overlays in --to, copying nothing (format 1/2: from its stored layers; format 3, a directory or S3: from its disks served over NBD)."),
    finalize: Optional[str] = typer.Option(None, "--finalize", metavar="NAME", help="Make the instant-recovery domain NAME independent of the backup directory (live, while it runs)."),
    no_verify: bool = typer.Option(False, "--no-verify", help="With --instant: skip checking every stored byte of the chain first (UNSAFE: damaged data would reach the guest)."),
    trust_xml: bool = typer.Option(False, "--trust-xml", help="Define the stored domain definition even if it holds raw QEMU options, host devices or paths outside --to (refused by default when it comes from object storage or another host)."),
    show_xml: bool = typer.Option(False, "--show-xml", help="Print the domain definition restore would define, and restore nothing."),
    connect: Optional[str] = ConnectOpt, as_json: bool = JsonOpt, quiet: bool = QuietOpt,
    debug: bool = DebugOpt,
) -> None:
    """Rebuild a restore point's disks in --to and point the domain (or a copy) at them.

    Repointing the domain itself needs it shut off; --as defines a copy and
    --no-define only rebuilds the images (no libvirt needed). --instant starts
    the copy at once, running from the backup directory; --finalize NAME later
    copies the data it still reads from there into its overlays.

    \b
    Examples:
      fibackup restore -d web -b /backup --to /srv/web --at 3
      fibackup restore -d web -b /backup --to /srv/web-copy --as web-copy
      fibackup restore -d web -b /backup --to /srv/img --no-define --flatten
      fibackup restore -d web -b /backup --instant --as web-now --to /srv/web-now
      fibackup restore --finalize web-now
      fibackup restore -d web -b s3://backups/hv1 --to /srv/web --as web-copy --show-xml
    """
    args = RestoreArgs(domain=domain, backup_dir=backup_dir, to=to, at=at, disks=disk,
                       flatten=flatten, no_define=no_define, as_name=as_name, force=force,
                       no_space_check=no_space_check, jobs=jobs, bwlimit=bwlimit,
                       no_reflink=no_reflink, instant=instant, finalize=finalize,
                       no_verify=no_verify, trust_xml=trust_xml, show_xml=show_xml)
    report = reporter(quiet, as_json)

    def action() -> int:
        settings = load_settings()
        uri = settings.connect_uri(connect)
        if args.finalize is not None:
            return _finalize(args, args.finalize, uri, as_json, report)
        if args.instant:
            return _instant(args, settings, uri, as_json, report)
        return _restore(args, settings, uri, as_json, report)

    run(debug, action, as_json, report)


def _restore(args: RestoreArgs, settings: "Config", uri: str, as_json: bool,
             report: "Reporter") -> int:
    from fibackup.commands.restore import RestoreOptions, restore as run_restore
    RestoreOptions.check_flags(domain=args.domain, to=args.to, no_verify=args.no_verify)
    assert args.domain is not None and args.to is not None     # check_flags refuses None
    directory = settings.backup_dir(args.backup_dir)
    log_to(report, directory, "restore")
    io = io_options(settings.pick("restore.jobs", args.jobs),
                    settings.pick("restore.bwlimit", args.bwlimit), reflink=not args.no_reflink)
    options = RestoreOptions(domain=args.domain, backup_dir=directory, to=args.to, at=args.at,
                             disks=args.disks, flatten=args.flatten, define=not args.no_define,
                             as_name=args.as_name, force=args.force,
                             space_check=not args.no_space_check, io=io,
                             trust_xml=args.trust_xml, show_xml=args.show_xml)
    result = run_restore(options, connector(uri), report)
    if result.definition is not None:
        if as_json:
            emit_json(result.to_json())
        else:
            print(result.definition)
        return EXIT_OK
    for target, path in sorted(result.disks.items()):
        report.record(f"restored {target}: {path}")
    print_disks(result.to_json(), result.disks, as_json)
    return EXIT_OK


def _instant(args: RestoreArgs, settings: "Config", uri: str, as_json: bool,
             report: "Reporter") -> int:
    """``restore --instant``: a new domain running from the stored layers."""
    from fibackup.commands.instant import InstantOptions, instant_restore
    directory = settings.pick("backup_dir", args.backup_dir)
    InstantOptions.check_flags(domain=args.domain, backup_dir=directory, to=args.to,
                               as_name=args.as_name, flatten=args.flatten,
                               no_define=args.no_define, force=args.force)
    assert args.domain and directory and args.to and args.as_name   # check_flags refuses ""
    log_to(report, directory, "restore")
    throttle = io_options(None, settings.pick("restore.bwlimit", args.bwlimit)).throttle()
    options = InstantOptions(domain=args.domain, backup_dir=directory, to=args.to,
                             as_name=args.as_name, at=args.at, disks=args.disks,
                             verify=not args.no_verify, space_check=not args.no_space_check,
                             throttle=throttle, trust_xml=args.trust_xml)
    from fibackup.commands.instant_served import runs_in_place, served_instant
    if not runs_in_place(directory):
        started = served_instant(options, connector(uri), report)
    else:
        if args.no_verify:
            report.warn("--no-verify: the stored layers were not checked; damaged backup "
                        "data would reach the guest unnoticed")
        started = instant_restore(options, connector(uri), report)
    document = started.to_json()
    disks = document["disks"]
    assert isinstance(disks, dict)
    print_disks(document, disks, as_json)
    return EXIT_OK


def _finalize(args: RestoreArgs, name: str, uri: str, as_json: bool,
              report: "Reporter") -> int:
    """``restore --finalize NAME``: the instant-recovery domain NAME made independent."""
    from fibackup.commands.instant import InstantOptions, finalize
    InstantOptions.check_finalize_flags(
        domain=args.domain, backup_dir=args.backup_dir, to=args.to, at=args.at,
        disks=args.disks, flatten=args.flatten, no_define=args.no_define,
        as_name=args.as_name, force=args.force, trust_xml=args.trust_xml,
        instant=args.instant, no_verify=args.no_verify)
    done = finalize(name, connector(uri), report, space_check=not args.no_space_check)
    print_disks(done.to_json(), done.disks, as_json)
    return EXIT_OK
