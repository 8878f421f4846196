"""What a recovery handler works with: one dead run's journal being replayed."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from fibackup.errors import RepairNeededError
from fibackup.host.journal import Journal, Step
from fibackup.model.states import Method
from fibackup.report import Reporter
from fibackup.virt import blockjobs
from fibackup.virt.libvirt_api import Connection, Domain


@dataclass
class RepairResult:
    domain: str
    interrupted: Optional[str] = None
    """The interrupted run, e.g. ``consolidate started 2026-11-23T10:00:00Z (pid 42)``."""
    actions: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"domain": self.domain, "interrupted": self.interrupted, "actions": self.actions}

    def act(self, report: Reporter, action: str) -> None:
        """Note what was done, and say it."""
        self.actions.append(action)
        report.info(f"{self.domain}: {action}")


class Replay:
    """One dead run's journal, replayed in order by the handlers of its steps.

    ``wait`` is False when another command reconciles before its own run: then a
    block job still running is not waited for (the command refuses and names
    ``fibackup repair``).  Handlers add the backup directories the run wrote to
    ``stores``: they are tidied afterwards."""

    def __init__(self, conn: Connection, domain: Domain, journal: Journal, report: Reporter,
                 result: RepairResult, wait: bool, timeout: Optional[float]) -> None:
        self.conn = conn
        self.domain = domain
        self.journal = journal
        self.report = report
        self.result = result
        self.wait = wait
        self.deadline = time.monotonic() + timeout if wait and timeout else None
        self.stores: set[str] = set()

    def act(self, action: str) -> None:
        self.result.act(self.report, action)

    def run(self, handlers: dict[str, "Handler"]) -> None:
        for step in list(self.journal.steps):
            handler = handlers.get(step.name)
            if handler is not None:
                handler(self, step)

    def settle_live_job(self, target: str, method: str) -> None:
        """End the block job the dead run left on ``target``: wait for it (repair), pivot
        a mirror in READY (active commit) or abort it; refuse while it still runs."""
        deadline = self.deadline if self.wait else time.monotonic()
        status = blockjobs.settle(self.domain, target, pivot=method == Method.ACTIVE,
                                  deadline=deadline)
        if status == "running":
            raise RepairNeededError(
                f"the {method} an interrupted run started on disk {target} of "
                f"'{self.domain.name}' is still running; "
                + ("wait for it with 'fibackup repair -d " + self.domain.name + "'"
                   if not self.wait else "it did not end within --timeout; run repair again")
                + f" (or cancel it: 'virsh blockjob {self.domain.name} {target} --abort')",
                domain=self.domain.name, disk=target)
        if status in ("pivoted", "aborted"):
            self.act(f"disk {target}: the job left in READY was "
                     + ("pivoted, as the active commit intended" if status == "pivoted"
                        else "aborted"))


Handler = Callable[[Replay, Step], None]
"""Finishes or undoes one journal step of a dead run."""
