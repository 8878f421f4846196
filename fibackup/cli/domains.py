"""The one domain loop of the commands that take several domains (snapshot, consolidate
and prune): the domains picked, each run, the results and the exit code."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

from fibackup.cli.render import emit_json
from fibackup.errors import EXIT_FAILURE, EXIT_OK, EXIT_PARTIAL, FibackupError, UsageError

if TYPE_CHECKING:
    from fibackup.report import Reporter
    from fibackup.virt.libvirt_api import Connection

RunOne = Callable[[str], tuple[dict[str, object], bool]]
"""Runs one domain: its JSON document and whether it succeeded."""


def select_domains(conn: "Connection", names: Sequence[str], every: bool,
                   running: bool) -> list[str]:
    """The domains a run works on: -d names, then --all / --all-running, each once."""
    if not names and not every and not running:
        raise UsageError("name the domains with -d NAME (repeatable), or pass --all or "
                         "--all-running")
    chosen = list(names)
    if every or running:
        chosen += conn.domain_names(running_only=running and not every)
    return list(dict.fromkeys(chosen))


def run_domains(labels: Sequence[str], run_one: RunOne, report: "Reporter", as_json: bool,
                verb: str) -> int:
    """``run_one(label)`` for each domain, then, with --json, the list of their documents;
    the exit code: 0 when every domain succeeded, 3 when some did, 1 when none did.

    The error of one of several domains is one stderr line naming it and an ``error``
    entry; a single domain's error is raised as it is."""
    if not labels:
        report.info(f"no domain to {verb}")
    results: list[dict[str, object]] = []
    failures = 0
    for label in labels:
        try:
            document, succeeded = run_one(label)
        except FibackupError as error:
            if len(labels) == 1:
                raise
            report.error(f"{label}: {error}")
            document, succeeded = {"domain": label, "error": str(error)}, False
        results.append(document)
        failures += not succeeded
    if as_json:
        emit_json(results)
    return _exit_code(failures, len(labels))


def _exit_code(failures: int, count: int) -> int:
    if not failures:
        return EXIT_OK
    return EXIT_PARTIAL if failures < count else EXIT_FAILURE
