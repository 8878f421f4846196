"""Running a command: its Reporter and log, and every failure it expects turned into one
line on stderr, an exit code and, with --json, the error document.

Every expected failure is a FibackupError: one line on stderr, the class's exit code
(README.md, "Exit codes"); a traceback only with --debug.  Heavy modules (the
commands, the Reporter, libvirt) are imported only when a command runs, so that
``fibackup --help`` starts fast (docs/PERFORMANCE.md, "Start-up").
"""
from __future__ import annotations

import sys
import traceback
from typing import TYPE_CHECKING, Callable, NoReturn, Optional

import typer

from fibackup.cli.render import emit_json
from fibackup.errors import EXIT_FAILURE, EXIT_INTERRUPTED, FibackupError

if TYPE_CHECKING:
    from fibackup.commands.parallel import IOOptions
    from fibackup.config import Config
    from fibackup.report import Reporter
    from fibackup.store.opening import NewStore
    from fibackup.virt.libvirt_api import Connection

Action = Callable[[], int]
"""A command's work; returns the exit code."""


_password_file: Optional[str] = None


def use_password_file(path: Optional[str]) -> None:
    """--password-file of this run (before :func:`load_settings`)."""
    global _password_file
    _password_file = path


def load_settings() -> "Config":
    """The configuration files' settings (fibackup/config.py: flag > file > environment >
    default), read when the command runs; they also say where an encrypted store's
    passphrase comes from (fibackup/store/v3/passwords.py)."""
    from fibackup.config import load_config
    from fibackup.store.v3 import passwords
    config = load_config()
    passwords.use(passwords.Sources(password_file=_password_file,
                                    config_file=config.value("store.password_file"),
                                    config_command=config.value("store.password_command")))
    return config


def reporter(quiet: bool = False, as_json: bool = False, backup_dir: Optional[str] = None,
             command: str = "") -> "Reporter":
    """The run's stderr (bars only on a terminal, never with --quiet or --json) and, with
    a backup directory, its log in DIR/logs (docs/OPERATIONS.md)."""
    from fibackup.report import Reporter
    report = Reporter(quiet=quiet, bars=not as_json)
    log_to(report, backup_dir, command)
    return report


def log_to(report: "Reporter", backup_dir: Optional[str], command: str) -> None:
    """Log the run in ``backup_dir``/logs, once the directory is known (a flag or the
    configuration file); object storage keeps no log."""
    if backup_dir is None:
        return
    from fibackup.store.location import is_url
    if not is_url(backup_dir) and not _encrypted(backup_dir):
        report.open_log(backup_dir, command, ["fibackup", *sys.argv[1:]])


def _encrypted(backup_dir: str) -> bool:
    """An encrypted store keeps no plaintext log (it names domains and paths)."""
    import json
    import os
    from fibackup.store.layout import MARKER
    try:
        with open(os.path.join(backup_dir, MARKER), "rb") as handle:
            return json.load(handle).get("encryption") is not None
    except (OSError, ValueError, AttributeError):
        return False


def configured_store(settings: "Config", location: Optional[str],
                     store_format: Optional[int] = None) -> "NewStore":
    """What an empty location becomes: the configuration file's [store] settings (and
    ``store_format`` instead of its format, when given)."""
    from fibackup.commands.init import InitOptions, new_store
    return new_store(InitOptions(location=location or "",
                                 format=store_format or settings.value("store.format"),
                                 encrypt=settings.value("store.encrypt"),
                                 compression=settings.value("store.compression"),
                                 chunk_size=settings.value("store.chunk_size")))


def connector(uri: str) -> Callable[[], "Connection"]:
    """Opens the libvirt connection when the command needs it (not before)."""
    def connect() -> "Connection":
        from fibackup.virt.libvirt_api import connect as open_connection
        return open_connection(uri)
    return connect


def io_options(jobs: Optional[int], bwlimit: Optional[str], reflink: bool = False) -> "IOOptions":
    """--jobs and --bwlimit (already resolved against the configuration) as IOOptions."""
    from fibackup.commands.parallel import DEFAULT_JOBS, IOOptions
    from fibackup.rates import parse_rate
    return IOOptions(jobs=jobs or DEFAULT_JOBS,
                     bwlimit=parse_rate(bwlimit) if bwlimit is not None else None,
                     reflink=reflink)


def run(debug: bool, action: Action, as_json: bool = False,
        report: Optional["Reporter"] = None) -> NoReturn:
    """Run a command; every expected failure is one line on stderr and, with --json,
    also ``{"error": {...}}`` on stdout, so a script always gets a document.  The run's
    log (if any) ends with the exit code."""
    if report is None:
        from fibackup.report import Reporter
        report = Reporter(bars=False)
    code = EXIT_FAILURE
    try:
        code = _outcome(debug, action, as_json, report)
    finally:
        report.close(code)
    raise typer.Exit(code)


def _outcome(debug: bool, action: Action, as_json: bool, report: "Reporter") -> int:
    try:
        return action()
    except FibackupError as error:
        if debug:
            traceback.print_exc()
        return _fail(report, error.to_json(), error.exit_code, as_json)
    except KeyboardInterrupt:
        return _fail(report, _document("interrupted; nothing incomplete was published",
                                       "Interrupted", EXIT_INTERRUPTED),
                     EXIT_INTERRUPTED, as_json)
    except OSError as error:
        if debug:
            traceback.print_exc()
        where = f" ({error.filename})" if error.filename else ""
        return _fail(report, _document(f"{error.strerror or error}{where}", "OSError",
                                       EXIT_FAILURE), EXIT_FAILURE, as_json)
    except Exception as error:  # noqa: BLE001 - last resort: one line, never a traceback
        if type(error).__module__ != "libvirt":
            raise
        if debug:
            traceback.print_exc()
        return _fail(report, _document(f"libvirt failed: {error}; check 'virsh list --all' "
                                       "and libvirtd's log, then run again", "LibvirtError",
                                       EXIT_FAILURE), EXIT_FAILURE, as_json)


def _document(message: str, kind: str, code: int) -> dict[str, object]:
    """The error document of a failure that is no FibackupError (FibackupError.to_json)."""
    return {"message": message, "kind": kind, "exit_code": code}


def _fail(report: "Reporter", document: dict[str, object], code: int, as_json: bool) -> int:
    report.error(str(document["message"]))
    if as_json:
        emit_json({"error": document})
    return code
