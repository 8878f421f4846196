"""The command line: a thin typer layer over fibackup.commands.

Every expected failure is a FibackupError: one line on stderr, the class's exit
code (README.md, "Exit codes"); a traceback only with --debug.
"""
from __future__ import annotations

import json
import sys
import traceback
from typing import TYPE_CHECKING, Callable, List, Optional, TypeVar

import typer

from fibackup import __version__
from fibackup.errors import (EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL,
                             FibackupError)
from fibackup.fsutil import human
from fibackup.rates import parse_rate
from fibackup.report import Reporter

if TYPE_CHECKING:
    from fibackup.config import Config

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

T = TypeVar("T")

DomainOpt = typer.Option(..., "-d", "--domain", metavar="NAME", help="Domain name (repeatable).")
DomainsOpt = typer.Option([], "-d", "--domain", metavar="NAME",
                          help="Domain name (repeatable); or --all / --all-running.")
AllOpt = typer.Option(False, "--all", help="Every defined (persistent) domain.")
AllRunningOpt = typer.Option(False, "--all-running", help="Every running domain.")
BackupOpt = typer.Option(None, "-b", "--backup-dir", metavar="DIR", help="Backup directory "
                         "[default: backup_dir of the configuration file].")
ConnectOpt = typer.Option(None, "--connect", "-c", metavar="URI", show_default=False,
                          help="libvirt URI [default: connect of the configuration file, else "
                          "$LIBVIRT_DEFAULT_URI, else qemu:///system].")
JsonOpt = typer.Option(False, "--json", help="Print a JSON result on stdout.")
DebugOpt = typer.Option(False, "--debug", help="Show tracebacks of errors.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="Only warnings and errors on stderr, no "
                        "progress bars (a run's log in DIR/logs still gets every line).")
JobsOpt = typer.Option(None, "--jobs", "-j", min=1, max=64, metavar="N", show_default=False,
                       help="Disks copied at once [default: jobs of the configuration "
                       "file, else 2].")
BwlimitOpt = typer.Option(None, "--bwlimit", metavar="RATE", help="Limit all copies of the run "
                          "together to RATE bytes/s: 200M (MiB/s), 1G, 500K; a plain number "
                          "is MiB/s [default: bwlimit of the configuration file, else "
                          "unlimited].")
VerifyBwlimitOpt = typer.Option(None, "--bwlimit", metavar="RATE", help="Limit reading to RATE "
                                "bytes/s: 200M (MiB/s), 1G, 500K; a plain number is MiB/s "
                                "[default: bwlimit of the configuration file, else "
                                "unlimited].")


def _select_domains(conn, names: List[str], every: bool, running: bool) -> List[str]:
    """The domains a run works on: -d names, then --all / --all-running, each once."""
    from fibackup.errors import UsageError
    if not names and not every and not running:
        raise UsageError("name the domains with -d NAME (repeatable), or pass --all or "
                         "--all-running")
    chosen = list(names)
    if every or running:
        chosen += conn.domain_names(running_only=running and not every)
    return list(dict.fromkeys(chosen))


def _exit_code(failures: int, count: int) -> int:
    """0 when every domain succeeded, 3 when some did, 1 when none did."""
    if not failures:
        return EXIT_OK
    return EXIT_PARTIAL if failures < count else EXIT_FAILURE


def _each_domain(names: List[str], run_one: Callable[[str], tuple[dict, bool]],
                 report: Reporter) -> tuple[list[dict], int]:
    """``run_one(name)`` (its JSON and whether it succeeded) for each domain, and how
    many failed.  The error of one of several domains is one stderr line naming it
    and an ``error`` entry; a single domain's error is raised as it is."""
    results, failures = [], 0
    for name in names:
        try:
            document, succeeded = run_one(name)
        except FibackupError as error:
            if len(names) == 1:
                raise
            report.error(f"{name}: {error}")
            document, succeeded = {"domain": name, "error": str(error)}, False
        results.append(document)
        failures += not succeeded
    return results, failures


def _io_options(jobs: Optional[int], bwlimit: Optional[str], reflink: bool = False):
    from fibackup.commands.parallel import DEFAULT_JOBS, IOOptions
    return IOOptions(jobs=jobs or DEFAULT_JOBS,
                     bwlimit=parse_rate(bwlimit) if bwlimit is not None else None,
                     reflink=reflink)


def _reporter(quiet: bool = False, as_json: bool = False, backup_dir: Optional[str] = None,
              command: str = "") -> Reporter:
    """The run's stderr (bars only on a terminal, never with --quiet or --json) and, with
    a backup directory, its log in DIR/logs (README.md, "Progress, logs and journald")."""
    report = Reporter(quiet=quiet, bars=not as_json)
    _log_to(report, backup_dir, command)
    return report


def _log_to(report: Reporter, backup_dir: Optional[str], command: str) -> None:
    """Log the run in ``backup_dir``/logs, once the directory is known (a flag or the
    configuration file)."""
    if backup_dir is not None and not backup_dir.startswith("s3://"):
        report.open_log(backup_dir, command, ["fibackup", *sys.argv[1:]])


def _run(debug: bool, action: Callable[[], int], as_json: bool = False,
         report: Optional[Reporter] = None) -> None:
    """Run a command; every expected failure is one line on stderr and, with --json,
    also ``{"error": {...}}`` on stdout, so a script always gets a document.  The run's
    log (if any) ends with the exit code."""
    report = report or Reporter(bars=False)
    code = EXIT_FAILURE
    try:
        code = _outcome(debug, action, as_json, report)
    finally:
        report.close(code)
    raise typer.Exit(code)


def _outcome(debug: bool, action: Callable[[], int], as_json: bool, report: Reporter) -> int:
    try:
        return action()
    except FibackupError as error:
        if debug:
            traceback.print_exc()
        return _fail(report, str(error), type(error).__name__, error.exit_code, as_json,
                     error.fields)
    except KeyboardInterrupt:
        return _fail(report, "interrupted; nothing incomplete was published", "Interrupted",
                     EXIT_INTERRUPTED, as_json)
    except OSError as error:
        if debug:
            traceback.print_exc()
        where = f" ({error.filename})" if error.filename else ""
        return _fail(report, f"{error.strerror or error}{where}", "OSError", EXIT_FAILURE,
                     as_json)
    except Exception as error:  # noqa: BLE001 - last resort: one line, never a traceback
        if type(error).__module__ != "libvirt":
            raise
        if debug:
            traceback.print_exc()
        return _fail(report, f"libvirt failed: {error}; check 'virsh list --all' and "
                     "libvirtd's log, then run again", "LibvirtError", EXIT_FAILURE, as_json)


def _fail(report: Reporter, message: str, kind: str, code: int, as_json: bool,
          fields: Optional[dict[str, str]] = None) -> int:
    report.error(message)
    if as_json:
        _emit_json({"error": {"message": message, "kind": kind, "exit_code": code,
                              **(fields or {})}})
    return code


def _emit_json(document: object) -> None:
    print(json.dumps(document, indent=2, sort_keys=True))


def _config() -> "Config":
    """The configuration files' settings (fibackup/config.py): flag > file > default."""
    from fibackup.config import load_config
    return load_config()


def _connector(uri: str):
    def connect():
        from fibackup.virt.libvirt_api import connect as open_connection
        return open_connection(uri)
    return connect


def _quiesce_mode(require: bool, fallback: bool, off: bool, settings: "Config") -> str:
    """no, require or fallback: from --quiesce, --quiesce-fallback (which wins over
    --quiesce) or --no-quiesce, else the configuration file's [snapshot] quiesce."""
    from fibackup.errors import UsageError
    if off and (require or fallback):
        raise UsageError("--no-quiesce contradicts --quiesce and --quiesce-fallback; pass one")
    flag = "no" if off else "fallback" if fallback else "require" if require else None
    return settings.pick("snapshot.quiesce", flag)


def _snapshot_backup_dir(flag: Optional[str], no_backup: bool,
                         settings: "Config") -> Optional[str]:
    from fibackup.errors import UsageError
    if no_backup and flag is not None:
        raise UsageError("--no-backup contradicts -b; pass one")
    return None if no_backup else settings.pick("backup_dir", flag)


@app.command()
def snapshot(
    domain: List[str] = DomainsOpt,
    all_domains: bool = AllOpt, all_running: bool = AllRunningOpt,
    backup_dir: Optional[str] = typer.Option(None, "-b", "--backup-dir", metavar="DIR", help="Back up into this directory [default: backup_dir of the configuration file; without either, only the snapshot is taken]."),
    no_backup: bool = typer.Option(False, "--no-backup", help="Only take the snapshot, even when the configuration file names a backup_dir."),
    disk: List[str] = typer.Option([], "--disk", metavar="DISK", help="Only this disk target, e.g. vda (repeatable)."),
    exclude_disk: List[str] = typer.Option([], "--exclude-disk", metavar="DISK", help="Leave this disk out (repeatable)."),
    quiesce: bool = typer.Option(False, "--quiesce", help="Freeze guest filesystems through the guest agent; fail without one."),
    quiesce_fallback: bool = typer.Option(False, "--quiesce-fallback", help="Freeze guest filesystems if the guest agent answers; otherwise take a crash-consistent snapshot and warn ('list' shows which points are quiesced)."),
    no_quiesce: bool = typer.Option(False, "--no-quiesce", help="Do not freeze the guest filesystems, whatever the configuration file's quiesce says (the default without one)."),
    no_space_check: bool = typer.Option(False, "--no-space-check", help="Skip the free-space check before copying."),
    consolidate: Optional[str] = typer.Option(None, "--consolidate", metavar="METHOD", help="Consolidate right after the snapshot and backup: commit, active or pull (see 'fibackup consolidate --help'); none: do not, whatever the configuration file says."),
    max_chain: Optional[int] = typer.Option(None, "--max-chain", metavar="N", help="Consolidate (commit) when a disk's chain has more than N layers; 0: never, whatever the configuration file says."),
    jobs: Optional[int] = JobsOpt, bwlimit: Optional[str] = BwlimitOpt,
    reflink: bool = typer.Option(False, "--reflink", help="Where the backup directory is on the images' btrfs/XFS filesystem, store layers as reflinks: nothing is written (each layer is still read and hashed), but the backup shares its blocks with the images, so it is not independent of them."),
    connect: Optional[str] = ConnectOpt, as_json: bool = JsonOpt, quiet: bool = QuietOpt,
    debug: bool = DebugOpt,
) -> None:
    """Take one atomic external snapshot of each domain's disks; with -b, back up what froze.

    Without -b (and without a backup_dir in the configuration file, or with
    --no-backup) only the snapshot is taken (nothing is copied); a later run
    with -b copies every frozen layer the backup directory lacks.

    \b
    Examples:
      fibackup snapshot -d web                       # snapshot only
      fibackup snapshot -d web -d db -b /backup      # snapshot + backup
      fibackup snapshot -d web -b /backup --exclude-disk vdc --quiesce
      fibackup snapshot -d web -b /backup --max-chain 8   # nightly, bounded chain
      fibackup snapshot -d web -b /backup --bwlimit 200M -j 4
      fibackup snapshot --all-running -b /backup --quiesce-fallback   # nightly, every VM

    Exit codes: 0 every domain succeeded, 3 some failed, 1 all failed, 4 locked.
    """
    from fibackup.commands.compose import snapshot_domain
    from fibackup.commands.snapshot import SnapshotOptions
    report = _reporter(quiet, as_json)

    def action() -> int:
        settings = _config()
        mode = _quiesce_mode(quiesce, quiesce_fallback, no_quiesce, settings)
        method = settings.pick("snapshot.consolidate", consolidate)
        directory = _snapshot_backup_dir(backup_dir, no_backup, settings)
        _log_to(report, directory, "snapshot")
        options = SnapshotOptions(backup_dir=directory, disks=disk, exclude=exclude_disk,
                                  quiesce=mode != "no", quiesce_fallback=mode == "fallback",
                                  space_check=not no_space_check,
                                  consolidate=None if method == "none" else method,
                                  max_chain=settings.pick("snapshot.max_chain", max_chain) or None,
                                  io=_io_options(settings.pick("snapshot.jobs", jobs),
                                                 settings.pick("snapshot.bwlimit", bwlimit),
                                                 reflink))
        conn = _connector(settings.connect_uri(connect))()
        names = _select_domains(conn, domain, all_domains, all_running)
        if not names:
            report.info("no domain to snapshot")
        results, failures = _each_domain(
            names, lambda name: (snapshot_domain(conn, name, options, report).to_json(), True),
            report)
        if as_json:
            _emit_json(results)
        return _exit_code(failures, len(names))

    _run(debug, action, as_json, report)


@app.command("consolidate")
def consolidate_command(
    domain: List[str] = DomainsOpt,
    all_domains: bool = AllOpt, all_running: bool = AllRunningOpt,
    method: Optional[str] = typer.Option(None, "--method", "-m", metavar="METHOD", help="commit (default, or [consolidate] method of the configuration file): merge the frozen layers into the base, backup stays incremental; active: merge everything into the base and pivot (next backup: full copy); pull: copy the backing data into the active layer (next backup: full copy)."),
    backup_dir: Optional[str] = typer.Option(None, "-b", "--backup-dir", metavar="DIR", help="Backup directory; frozen layers it lacks are backed up first (snapshot -b)."),
    bandwidth: int = typer.Option(0, "--bandwidth", metavar="MIB_PER_S", show_default=False, help="Limit the block job to this many MiB/s [default: unlimited]."),
    timeout: Optional[float] = typer.Option(None, "--timeout", metavar="SECONDS", help="Abort a job that has not finished after this long [default: [consolidate] timeout of the configuration file, else wait]."),
    keep_files: bool = typer.Option(False, "--keep-files", help="Keep the merged layer files (they are no longer part of any chain)."),
    force: bool = typer.Option(False, "--force", help="Merge layers a backup directory lacks (that restore point is lost; its next backup is a full copy)."),
    disk: List[str] = typer.Option([], "--disk", metavar="DISK", help="Only this disk target (repeatable)."),
    exclude_disk: List[str] = typer.Option([], "--exclude-disk", metavar="DISK", help="Leave this disk out (repeatable)."),
    no_space_check: bool = typer.Option(False, "--no-space-check", help="Skip the free-space check of a catch-up backup."),
    connect: Optional[str] = ConnectOpt, as_json: bool = JsonOpt, quiet: bool = QuietOpt,
    debug: bool = DebugOpt,
) -> None:
    """Shorten each disk's backing chain, live or offline, without breaking any backup.

    Every restore point keeps restoring. A frozen layer that a backup directory
    of the domain lacks is never merged silently: with -b it is backed up first,
    otherwise fibackup refuses (or goes on with --force).

    \b
    Examples:
      fibackup consolidate -d web                     # commit: base <- active
      fibackup consolidate -d web -b /backup          # back up what is missing first
      fibackup consolidate -d web --method active --timeout 600
      fibackup consolidate --all-running --method commit --json

    Exit codes: 0 done, 1 failed or a job was aborted, 3 some domains failed, 4 locked.
    """
    from fibackup.commands.compose import consolidate_domain
    from fibackup.commands.consolidate import ConsolidateOptions
    report = _reporter(quiet, as_json, backup_dir, "consolidate")

    def action() -> int:
        settings = _config()
        options = ConsolidateOptions(method=settings.pick("consolidate.method", method),
                                     backup_dir=backup_dir, bandwidth_mib=bandwidth,
                                     timeout=settings.pick("consolidate.timeout", timeout),
                                     keep_files=keep_files, force=force, disks=disk,
                                     exclude=exclude_disk, space_check=not no_space_check)
        conn = _connector(settings.connect_uri(connect))()
        names = _select_domains(conn, domain, all_domains, all_running)
        if not names:
            report.info("no domain to consolidate")

        def consolidate_one(name: str) -> tuple[dict, bool]:
            outcome = consolidate_domain(conn, name, options, report)
            if outcome.aborted and not as_json:
                report.error(f"{name}: consolidation of disk(s) "
                             f"{', '.join(item.target for item in outcome.aborted)} was "
                             f"aborted ({outcome.aborted[0].reason})")
            return outcome.to_json(), not outcome.aborted

        results, failures = _each_domain(names, consolidate_one, report)
        if as_json:
            _emit_json(results)
        return _exit_code(failures, len(names))

    _run(debug, action, as_json, report)


@app.command()
def repair(
    domain: List[str] = DomainOpt,
    backup_dir: Optional[str] = typer.Option(None, "-b", "--backup-dir", metavar="DIR", help="Also tidy this backup directory (those the domain was backed up to always are)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", metavar="SECONDS", help="Stop waiting for a block job left running after this long [default: wait]."),
    connect: Optional[str] = ConnectOpt, as_json: bool = JsonOpt, quiet: bool = QuietOpt,
    debug: bool = DebugOpt,
) -> None:
    """Finish or undo what an interrupted fibackup run left behind.

    Reads the domain's intent journal and reconciles it with libvirt, the image
    headers and the backup directories: waits for a block job still running,
    pivots (--method active) or aborts a job left in READY, records overlays and
    consolidations, syncs the definition, deletes merged files, removes partial
    copies and undoes half-published restores. Every other command does the
    safe part of this by itself and names 'fibackup repair' for the rest.

    \b
    Examples:
      fibackup repair -d web                  # after a crash or a killed run
      fibackup repair -d web -b /backup --timeout 600 --json
    """
    from fibackup.commands.repair import repair_domain
    report = _reporter(quiet, as_json)

    def action() -> int:
        conn = _connector(_config().connect_uri(connect))()
        results = [repair_domain(conn, name, backup_dir, report, timeout).to_json()
                   for name in domain]
        if as_json:
            _emit_json(results)
        return EXIT_OK

    _run(debug, action, as_json, report)


@app.command("list")
def list_command(
    backup_dir: Optional[str] = BackupOpt,
    domain: Optional[str] = typer.Option(None, "-d", "--domain", metavar="NAME", help="Only this domain."),
    as_json: bool = JsonOpt, debug: bool = DebugOpt,
) -> None:
    """List the restore points in a backup directory (no libvirt needed).

    Columns: seq and id (what restore --at takes), snapshot time, disks, layers,
    data stored new by that point, data a restore reads, quiesced or not.

    \b
    Examples:
      fibackup list -b /backup
      fibackup list -b /backup -d web --json
    """
    from fibackup.commands.listing import list_stores, point_row
    report = _reporter(as_json=as_json)

    def action() -> int:
        directory = _config().backup_dir(backup_dir)
        found = list_stores(directory, domain, report)
        several = len({store for store, _point in found}) > 1
        rows = [point_row(point, store if several else None) for store, point in found]
        if as_json:
            _emit_json(rows)
        elif not rows:
            print("no restore points" + (f" for domain {domain}" if domain else ""))
        else:
            where = (lambda row: [row["store"], row["host"]]) if several else (lambda row: [])
            table = [[*where(row), row["domain"], row["seq"], row["id"], row["time"],
                      ",".join(row["disks"]), row["layers"], human(row["bytes_new"]),
                      human(row["bytes_total"]), "yes" if row["quiesced"] else "no"]
                     for row in rows]
            from tabulate import tabulate
            print(tabulate(table, headers=[*(["store", "host"] if several else []), "domain",
                                           "seq", "id", "time (UTC)", "disks", "layers",
                                           "new", "restore size", "quiesced"]))
        return EXIT_OK

    _run(debug, action, as_json, report)


@app.command()
def status(
    domain: str = typer.Option(..., "-d", "--domain", metavar="NAME", help="Domain name."),
    backup_dir: Optional[str] = BackupOpt,
    connect: Optional[str] = ConnectOpt, as_json: bool = JsonOpt, debug: bool = DebugOpt,
) -> None:
    """Show each disk's live chain; with -b, which frozen layers that backup holds.

    \b
    Examples:
      fibackup status -d web
      fibackup status -d web -b /backup --json
    """
    from fibackup.commands.listing import domain_status

    def action() -> int:
        settings = _config()
        directory = settings.pick("backup_dir", backup_dir)
        chains = domain_status(_connector(settings.connect_uri(connect))(), domain, directory)
        if as_json:
            _emit_json({target: [layer.__dict__ for layer in layers]
                        for target, layers in chains.items()})
            return EXIT_OK
        for target, layers in chains.items():
            print(f"{target}:")
            rows = [[layer.role, layer.format, layer.path,
                     "" if directory is None else (layer.backed_up or
                                                    ("-" if layer.role == "active" else "NOT BACKED UP"))]
                    for layer in layers]
            headers = ["role", "format", "path"] + (["in backup"] if directory else [])
            from tabulate import tabulate
            print(tabulate([row[:len(headers)] for row in rows], headers=headers))
        return EXIT_OK

    _run(debug, action, as_json)


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
    from fibackup.commands.verify import verify as run_verify
    from fibackup.errors import UsageError
    report = _reporter(quiet, as_json)

    def action() -> int:
        if at is not None and domain is None:
            raise UsageError("--at needs -d DOMAIN")
        settings = _config()
        directory = settings.backup_dir(backup_dir)
        _log_to(report, directory, "verify")
        result = run_verify(directory, domain, at, report,
                            throttle=_io_options(None, settings.pick("verify.bwlimit",
                                                                     bwlimit)).throttle())
        files = f"{result.files} file(s), " if result.files else ""
        summary = (f"{result.points} restore point(s), {result.layers} layer(s), {files}"
                   f"{human(result.bytes_read)} read")
        report.record(f"{'ok' if result.ok else 'damaged'}: {summary}")
        if as_json:
            _emit_json(result.to_json())
        elif result.ok:
            print(f"ok: {summary}")
        else:
            for problem in result.problems:
                report.error(problem, prefix="DAMAGED: ")
            report.error(f"verify found {len(result.problems)} problem(s)")
        return EXIT_OK if result.ok else EXIT_FAILURE

    _run(debug, action, as_json, report)


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
    instant: bool = typer.Option(False, "--instant", help="Instant recovery: start a new domain (--as) that runs straight from the stored layers through new overlays in --to, copying nothing."),
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
    from fibackup.commands.restore import RestoreOptions, restore as run_restore
    from fibackup.errors import UsageError
    report = _reporter(quiet, as_json)

    def action() -> int:
        settings = _config()
        uri = settings.connect_uri(connect)
        rate = settings.pick("restore.bwlimit", bwlimit)
        if finalize is not None or instant:
            rest = {"-d": domain, "-b": backup_dir if finalize is not None
                    else settings.pick("backup_dir", backup_dir), "--to": to, "--at": at,
                    "--disk": disk, "--flatten": flatten, "--no-define": no_define,
                    "--as": as_name, "--force": force, "--trust-xml": trust_xml}
            return _restore_instant(instant, finalize, rest, no_verify, no_space_check,
                                    rate, uri, as_json, report)
        if no_verify:
            raise UsageError("--no-verify applies only to --instant (a restore always checks "
                             "every chunk it copies)")
        if domain is None or to is None:
            raise UsageError("restore needs -d DOMAIN and --to DIR (or --finalize NAME)")
        directory = settings.backup_dir(backup_dir)
        _log_to(report, directory, "restore")
        options = RestoreOptions(domain=domain, backup_dir=directory, to=to,
                                 at=at, disks=disk, flatten=flatten, define=not no_define,
                                 as_name=as_name, force=force, space_check=not no_space_check,
                                 io=_io_options(settings.pick("restore.jobs", jobs), rate,
                                                reflink=not no_reflink),
                                 trust_xml=trust_xml, show_xml=show_xml)
        result = run_restore(options, _connector(uri), report)
        if result.definition is not None:
            if as_json:
                _emit_json(result.to_json())
            else:
                print(result.definition)
            return EXIT_OK
        for target, path in sorted(result.disks.items()):
            report.record(f"restored {target}: {path}")
        _print_disks(result.to_json(), result.disks, as_json)
        return EXIT_OK

    _run(debug, action, as_json, report)


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
    from fibackup.model.retention import Retention
    report = _reporter(quiet, as_json)

    def action() -> int:
        settings = _config()
        retention = Retention(keep, keep_daily, keep_weekly)
        if retention.empty:                 # no rule given: all of the file's [prune] rules
            rules = settings.prune()
            retention = Retention(rules.keep, rules.keep_daily, rules.keep_weekly)
        directory = settings.backup_dir(backup_dir)
        _log_to(report, directory, "prune")
        options = PruneOptions(backup_dir=directory, domains=domain,
                               every=all_domains, retention=retention, dry_run=dry_run,
                               scratch=scratch, any_host=any_host)
        pins = (lambda _store: set()) if no_libvirt else \
            libvirt_pins(_connector(settings.connect_uri(connect)))
        run = PruneRun.open(options, pins)
        names = [name for _uuid, name in run.selected]
        uuids = {name if names.count(name) == 1 else f"{name} ({uuid})": uuid
                 for uuid, name in run.selected}          # a re-created domain: same name
        if not uuids:
            report.info("no domain to prune")
        results, failures = _each_domain(
            list(uuids), lambda label: (run.prune(uuids[label], label, report).to_json(), True),
            report)
        if as_json:
            _emit_json(results)
        return _exit_code(failures, len(uuids))

    _run(debug, action, as_json, report)


config_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                         help="Show the settings of the configuration files (README.md, "
                              "\"Configuration\").\n\n"
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
        settings = _config()
        if as_json:
            _emit_json(settings.to_json())
            return EXIT_OK
        for path in settings.searched:
            print(f"{'read' if path in settings.files else 'not found'}: {path}")
        from tabulate import tabulate
        print(tabulate([[name, settings.shown(name), setting.source]
                        for name, setting in settings.effective().items()],
                       headers=["setting", "value", "from"]))
        return EXIT_OK

    _run(debug, action, as_json)


def _restore_instant(instant: bool, finalize: Optional[str], rest: dict, no_verify: bool,
                     no_space_check: bool, bwlimit: Optional[str], connect: Optional[str],
                     as_json: bool, report: Reporter) -> int:
    """``restore --instant`` and ``restore --finalize NAME``."""
    from fibackup.commands import instant as instant_recovery
    from fibackup.errors import UsageError
    if finalize is not None:
        given = [flag for flag, value in [*rest.items(), ("--instant", instant),
                                          ("--no-verify", no_verify)] if value]
        if given:
            raise UsageError(f"--finalize NAME takes no {', '.join(given)}: the backup "
                             "directory and --to come from its instant-recovery record")
        done = instant_recovery.finalize(finalize, _connector(connect), report,
                                         space_check=not no_space_check)
        _print_disks(done.to_json(), done.disks, as_json)
        return EXIT_OK
    unsupported = [flag for flag in ("--flatten", "--no-define", "--force") if rest[flag]]
    if unsupported:
        raise UsageError(f"--instant runs the domain from the stored layers: "
                         f"{', '.join(unsupported)} does not apply")
    missing = [flag for flag in ("-d", "-b", "--as", "--to") if not rest[flag]]
    if missing:
        raise UsageError(f"--instant needs {', '.join(missing)}: -d DOMAIN -b DIR --as NEWNAME "
                         "(a new domain) --to DIR (for its overlays)")
    _log_to(report, rest["-b"], "restore")
    options = instant_recovery.InstantOptions(
        domain=rest["-d"], backup_dir=rest["-b"], to=rest["--to"], as_name=rest["--as"],
        at=rest["--at"], disks=rest["--disk"], verify=not no_verify,
        space_check=not no_space_check, throttle=_io_options(None, bwlimit).throttle(),
        trust_xml=rest["--trust-xml"])
    if no_verify:
        report.warn("--no-verify: the stored layers were not checked; damaged backup data "
                    "would reach the guest unnoticed")
    started = instant_recovery.instant_restore(options, _connector(connect), report)
    document = started.to_json()
    _print_disks(document, document["disks"], as_json)
    return EXIT_OK


def _print_disks(document: dict, disks: dict, as_json: bool) -> None:
    """A restore's result: the JSON document, or one ``target: image`` line per disk."""
    if as_json:
        _emit_json(document)
    else:
        for target, path in sorted(disks.items()):
            print(f"{target}: {path}")


def _version(value: bool) -> None:
    if value:
        print(f"fibackup {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Show the version and exit.")) -> None:
    pass


def main() -> None:
    app(prog_name="fibackup")
