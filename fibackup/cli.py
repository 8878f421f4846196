"""The command line: a thin typer layer over fibackup.commands.

Every expected failure is a FibackupError: one line on stderr, the class's exit
code (README.md, "Exit codes"); a traceback only with --debug.
"""
from __future__ import annotations

import json
import sys
import traceback
from typing import Callable, List, Optional, TypeVar

import typer

from fibackup import __version__
from fibackup.errors import (EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL,
                             FibackupError)
from fibackup.fsutil import human
from fibackup.report import Reporter

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
         "  fibackup repair -d web                  # after a crash: finish or undo\n"
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
BackupOpt = typer.Option(None, "-b", "--backup-dir", metavar="DIR", help="Backup directory.")
ConnectOpt = typer.Option(None, "--connect", "-c", envvar="LIBVIRT_DEFAULT_URI", metavar="URI",
                          help="libvirt URI [default: qemu:///system].")
JsonOpt = typer.Option(False, "--json", help="Print a JSON result on stdout.")
DebugOpt = typer.Option(False, "--debug", help="Show tracebacks of errors.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="Only warnings and errors on stderr, no "
                        "progress bars (a run's log in DIR/logs still gets every line).")
JobsOpt = typer.Option(None, "--jobs", "-j", min=1, max=64, metavar="N", show_default=False,
                       help="Disks copied at once [default: 2].")
BwlimitOpt = typer.Option(None, "--bwlimit", metavar="RATE", help="Limit all copies of the run "
                          "together to RATE bytes/s: 200M (MiB/s), 1G, 500K; a plain number "
                          "is MiB/s [default: unlimited].")
VerifyBwlimitOpt = typer.Option(None, "--bwlimit", metavar="RATE", help="Limit reading to RATE "
                                "bytes/s: 200M (MiB/s), 1G, 500K; a plain number is MiB/s "
                                "[default: unlimited].")

RATE_UNITS = {"B": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}
MIN_RATE = 64 * 1024
"""Below this a 4 MiB chunk takes over a minute: surely a typo for a larger unit."""


def parse_rate(text: str) -> int:
    """Bytes per second from ``200M``, ``1.5G``, ``500K``, ``65536B`` or ``200`` (MiB/s)."""
    from fibackup.errors import UsageError
    value = text.strip().upper().replace(" ", "").removesuffix("/S")
    if value.endswith("IB") or (value.endswith("B") and value[-2:-1] in ("K", "M", "G")):
        value = value[:-2] if value.endswith("IB") else value[:-1]
    unit = value[-1:] if value[-1:] in RATE_UNITS else "M"
    number = value[:-1] if value[-1:] in RATE_UNITS else value
    try:
        rate = float(number) * RATE_UNITS[unit]
    except ValueError:
        rate = float("nan")
    if not rate > 0 or rate == float("inf"):
        raise UsageError(f"--bwlimit {text!r} is not a rate; use e.g. 200M (MiB/s), 1G or 500K")
    if rate < MIN_RATE:
        raise UsageError(f"--bwlimit {text!r} is below 64K per second, which would take "
                         "minutes per 4 MiB chunk; a plain number means MiB/s (200 = 200M)")
    return int(rate)


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
    if backup_dir is not None:
        report.open_log(backup_dir, command, ["fibackup", *sys.argv[1:]])
    return report


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
        return _fail(report, str(error), type(error).__name__, error.exit_code, as_json)
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


def _fail(report: Reporter, message: str, kind: str, code: int, as_json: bool) -> int:
    report.error(message)
    if as_json:
        _emit_json({"error": {"message": message, "kind": kind, "exit_code": code}})
    return code


def _emit_json(document: object) -> None:
    print(json.dumps(document, indent=2, sort_keys=True))


def _connector(uri: Optional[str]):
    def connect():
        from fibackup.virt.libvirt_api import connect as open_connection
        return open_connection(uri)
    return connect


@app.command()
def snapshot(
    domain: List[str] = DomainsOpt,
    all_domains: bool = AllOpt, all_running: bool = AllRunningOpt,
    backup_dir: Optional[str] = BackupOpt,
    disk: List[str] = typer.Option([], "--disk", metavar="DISK", help="Only this disk target, e.g. vda (repeatable)."),
    exclude_disk: List[str] = typer.Option([], "--exclude-disk", metavar="DISK", help="Leave this disk out (repeatable)."),
    quiesce: bool = typer.Option(False, "--quiesce", help="Freeze guest filesystems through the guest agent; fail without one."),
    quiesce_fallback: bool = typer.Option(False, "--quiesce-fallback", help="Freeze guest filesystems if the guest agent answers; otherwise take a crash-consistent snapshot and warn ('list' shows which points are quiesced)."),
    no_space_check: bool = typer.Option(False, "--no-space-check", help="Skip the free-space check before copying."),
    consolidate: Optional[str] = typer.Option(None, "--consolidate", metavar="METHOD", help="Consolidate right after the snapshot and backup: commit, active or pull (see 'fibackup consolidate --help')."),
    max_chain: Optional[int] = typer.Option(None, "--max-chain", metavar="N", help="Consolidate (commit) when a disk's chain has more than N layers."),
    jobs: Optional[int] = JobsOpt, bwlimit: Optional[str] = BwlimitOpt,
    reflink: bool = typer.Option(False, "--reflink", help="Where the backup directory is on the images' btrfs/XFS filesystem, store layers as reflinks: nothing is written (each layer is still read and hashed), but the backup shares its blocks with the images, so it is not independent of them."),
    connect: Optional[str] = ConnectOpt, as_json: bool = JsonOpt, quiet: bool = QuietOpt,
    debug: bool = DebugOpt,
) -> None:
    """Take one atomic external snapshot of each domain's disks; with -b, back up what froze.

    Without -b only the snapshot is taken (nothing is copied); a later run with
    -b copies every frozen layer the backup directory lacks.

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
    from fibackup.commands.snapshot import SnapshotOptions, snapshot_domain
    report = _reporter(quiet, as_json, backup_dir, "snapshot")

    def action() -> int:
        options = SnapshotOptions(backup_dir=backup_dir, disks=disk, exclude=exclude_disk,
                                  quiesce=quiesce or quiesce_fallback,
                                  quiesce_fallback=quiesce_fallback,
                                  space_check=not no_space_check,
                                  consolidate=consolidate, max_chain=max_chain,
                                  io=_io_options(jobs, bwlimit, reflink))
        conn = _connector(connect)()
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
    method: str = typer.Option("commit", "--method", "-m", metavar="METHOD", help="commit (default): merge the frozen layers into the base, backup stays incremental; active: merge everything into the base and pivot (next backup: full copy); pull: copy the backing data into the active layer (next backup: full copy)."),
    backup_dir: Optional[str] = typer.Option(None, "-b", "--backup-dir", metavar="DIR", help="Backup directory; frozen layers it lacks are backed up first (snapshot -b)."),
    bandwidth: int = typer.Option(0, "--bandwidth", metavar="MIB_PER_S", show_default=False, help="Limit the block job to this many MiB/s [default: unlimited]."),
    timeout: Optional[float] = typer.Option(None, "--timeout", metavar="SECONDS", help="Abort a job that has not finished after this long [default: wait]."),
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
    from fibackup.commands.consolidate import ConsolidateOptions, consolidate_domain
    report = _reporter(quiet, as_json, backup_dir, "consolidate")

    def action() -> int:
        options = ConsolidateOptions(method=method, backup_dir=backup_dir,
                                     bandwidth_mib=bandwidth, timeout=timeout,
                                     keep_files=keep_files, force=force, disks=disk,
                                     exclude=exclude_disk, space_check=not no_space_check)
        conn = _connector(connect)()
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
        conn = _connector(connect)()
        results = [repair_domain(conn, name, backup_dir, report, timeout).to_json()
                   for name in domain]
        if as_json:
            _emit_json(results)
        return EXIT_OK

    _run(debug, action, as_json, report)


@app.command("list")
def list_command(
    backup_dir: str = typer.Option(..., "-b", "--backup-dir", metavar="DIR", help="Backup directory."),
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
    from fibackup.commands.listing import list_points, point_row
    report = _reporter(as_json=as_json)

    def action() -> int:
        rows = [point_row(point) for point in list_points(backup_dir, domain, report)]
        if as_json:
            _emit_json(rows)
        elif not rows:
            print("no restore points" + (f" for domain {domain}" if domain else ""))
        else:
            table = [[row["domain"], row["seq"], row["id"], row["time"], ",".join(row["disks"]),
                      row["layers"], human(row["bytes_new"]), human(row["bytes_total"]),
                      "yes" if row["quiesced"] else "no"] for row in rows]
            from tabulate import tabulate
            print(tabulate(table, headers=["domain", "seq", "id", "time (UTC)", "disks", "layers",
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
        chains = domain_status(_connector(connect)(), domain, backup_dir)
        if as_json:
            _emit_json({target: [layer.__dict__ for layer in layers]
                        for target, layers in chains.items()})
            return EXIT_OK
        for target, layers in chains.items():
            print(f"{target}:")
            rows = [[layer.role, layer.format, layer.path,
                     "" if backup_dir is None else (layer.backed_up or
                                                    ("-" if layer.role == "active" else "NOT BACKED UP"))]
                    for layer in layers]
            headers = ["role", "format", "path"] + (["in backup"] if backup_dir else [])
            from tabulate import tabulate
            print(tabulate([row[:len(headers)] for row in rows], headers=headers))
        return EXIT_OK

    _run(debug, action, as_json)


@app.command()
def verify(
    backup_dir: str = typer.Option(..., "-b", "--backup-dir", metavar="DIR", help="Backup directory."),
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
    report = _reporter(quiet, as_json, backup_dir, "verify")

    def action() -> int:
        if at is not None and domain is None:
            raise UsageError("--at needs -d DOMAIN")
        result = run_verify(backup_dir, domain, at, report,
                            throttle=_io_options(None, bwlimit).throttle())
        summary = (f"{result.points} restore point(s), {result.layers} layer(s), "
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
    domain: str = typer.Option(..., "-d", "--domain", metavar="NAME", help="Domain whose backup to restore (name or UUID)."),
    backup_dir: str = typer.Option(..., "-b", "--backup-dir", metavar="DIR", help="Backup directory."),
    to: str = typer.Option(..., "--to", metavar="DIR", help="Directory for the restored images."),
    at: Optional[str] = typer.Option(None, "--at", metavar="ID", help="Restore point id or seq [default: newest]."),
    disk: List[str] = typer.Option([], "--disk", metavar="DISK", help="Only this disk (repeatable)."),
    flatten: bool = typer.Option(False, "--flatten", help="One standalone image per disk."),
    no_define: bool = typer.Option(False, "--no-define", help="Only rebuild the images; no libvirt needed."),
    as_name: Optional[str] = typer.Option(None, "--as", metavar="NEWNAME", help="Define a copy under this new name."),
    force: bool = typer.Option(False, "--force", help="Overwrite files already in --to."),
    no_space_check: bool = typer.Option(False, "--no-space-check", help="Skip the free-space check."),
    jobs: Optional[int] = JobsOpt, bwlimit: Optional[str] = BwlimitOpt,
    no_reflink: bool = typer.Option(False, "--no-reflink", help="Always write full copies. By default, where --to is on the backup's btrfs/XFS filesystem, restored layers share the stored blocks (nothing is written; every chunk is still read and checked), so a media error there would damage both."),
    connect: Optional[str] = ConnectOpt, as_json: bool = JsonOpt, quiet: bool = QuietOpt,
    debug: bool = DebugOpt,
) -> None:
    """Rebuild a restore point's disks in --to and point the domain (or a copy) at them.

    Repointing the domain itself needs it shut off; --as defines a copy and
    --no-define only rebuilds the images (no libvirt needed).

    \b
    Examples:
      fibackup restore -d web -b /backup --to /srv/web --at 3
      fibackup restore -d web -b /backup --to /srv/web-copy --as web-copy
      fibackup restore -d web -b /backup --to /srv/img --no-define --flatten
    """
    from fibackup.commands.restore import RestoreOptions, restore as run_restore
    report = _reporter(quiet, as_json, backup_dir, "restore")

    def action() -> int:
        options = RestoreOptions(domain=domain, backup_dir=backup_dir, to=to, at=at, disks=disk,
                                 flatten=flatten, define=not no_define, as_name=as_name,
                                 force=force, space_check=not no_space_check,
                                 io=_io_options(jobs, bwlimit, reflink=not no_reflink))
        result = run_restore(options, _connector(connect), report)
        for target, path in sorted(result.disks.items()):
            report.record(f"restored {target}: {path}")
        if as_json:
            _emit_json(result.to_json())
        else:
            for target, path in sorted(result.disks.items()):
                print(f"{target}: {path}")
        return EXIT_OK

    _run(debug, action, as_json, report)


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
