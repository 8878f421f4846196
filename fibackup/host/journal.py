"""The intent journal: what a fibackup run on a domain set out to do, step by step.

``<state dir>/journal/<uuid>.json`` (docs/FORMAT.md, "Intent journal") exists
only while a run that changes something is under way.  Each step is written
(atomically, fsynced) as ``started`` with everything needed to finish or undo
it before its work begins, and marked ``done`` after; the file is removed when
the run ends, also on an error between steps.  On an error inside a step it is
kept with ``error`` set, as the step may be half done.  A journal found by the
next run therefore means the run before it died (SIGKILL, power loss, OOM) or
stopped inside a step: ``fibackup repair`` (fibackup/commands/repair.py), and
every other command before its own run (fibackup/commands/journalled.py), reads
it and reconciles through each command's recovery handlers
(fibackup/commands/recovery/).

Restores are journalled under ``restore-<token>.json``, as they need no domain.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from fibackup import faults
from fibackup.errors import JournalError, StateDirError
from fibackup.fsutil import make_private_dirs, remove_quietly, write_file
from fibackup.host.state import state_dir
from fibackup.model.naming import utc_time
from fibackup.model.states import StepStatus

JOURNAL_KIND = "fibackup-journal"
JOURNAL_VERSION = 1

STEPS = {
    "snapshot": ("snapshot.take", "snapshot.tidy-xml", "backup.files", "backup.copy",
                 "backup.chunks", "backup.publish"),
    "consolidate": ("consolidate.catch-up", "consolidate.job", "consolidate.rebase",
                    "consolidate.redefine", "consolidate.sync-xml", "consolidate.delete"),
    "restore": ("restore.stage", "restore.publish", "restore.define", "restore.tpm"),
    "prune": ("prune.merge", "prune.switch", "prune.drop", "prune.delete"),
    "finalize": ("finalize.job", "finalize.release"),
}
"""Every step name, per command (the fault-injection suite runs each of them)."""
ALL_STEPS = frozenset(name for names in STEPS.values() for name in names)


def journal_dir() -> str:
    return os.path.join(state_dir(), "journal")


def _now() -> str:
    return utc_time()


@dataclass
class Step:
    name: str
    status: str
    """A :class:`~fibackup.model.states.StepStatus`: ``started``, then ``done``."""
    time: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Journal:
    """One run's journal; ``begin`` creates the file, ``end`` removes it."""

    key: str
    """The domain UUID, or ``restore-<token>``."""
    command: str
    domain_name: str
    options: dict[str, Any] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    started: str = field(default_factory=_now)
    pid: int = field(default_factory=os.getpid)
    error: Optional[str] = None
    """Set when the run ended on an error with a step still open (it did not crash)."""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    """Disks are copied in parallel: one step is recorded at a time."""

    @property
    def path(self) -> str:
        return os.path.join(journal_dir(), f"{self.key}.json")

    def begin(self) -> "Journal":
        try:
            make_private_dirs(journal_dir())
        except OSError as error:
            raise StateDirError(f"cannot create {journal_dir()} ({error.strerror}); fibackup "
                                "needs a writable state directory") from None
        self._save()
        return self

    def end(self) -> None:
        remove_quietly(self.path)

    @contextlib.contextmanager
    def running(self) -> Iterator["Journal"]:
        """Begin the journal; remove it when the run ends, also on an error between
        steps, but keep it (with ``error`` set) when a step was left open."""
        self.begin()
        try:
            yield self
        except BaseException as error:
            if self.open_steps():
                self.failed(error)
            else:
                self.end()
            raise
        self.end()

    def start(self, name: str, **data: Any) -> Step:
        """Record that step ``name`` begins, with what repair needs to finish or undo it."""
        assert name in ALL_STEPS, name
        step = Step(name, StepStatus.STARTED, _now(), dict(data))
        with self.lock:
            self.steps.append(step)
            self._save()
        faults.point(name)
        return step

    def done(self, step: Step, **data: Any) -> None:
        faults.point(f"{step.name}.after")
        with self.lock:
            step.status = StepStatus.DONE
            step.data.update(data)
            self._save()

    def failed(self, error: BaseException) -> None:
        """Keep the journal of a run that stops on an error inside a step, saying so."""
        with self.lock:
            self.error = str(error) or type(error).__name__
            self._save()

    def describe(self) -> str:
        """How the run that left this journal ended, for the next run's message."""
        how = f"failed ({self.error})" if self.error else "was interrupted"
        return (f"the '{self.command}' run started {self.started} (pid {self.pid}) {how} "
                f"during step {', '.join(step.name for step in self.open_steps()) or '-'}")

    def open_steps(self) -> list[Step]:
        return [step for step in self.steps if step.status == StepStatus.STARTED]

    def last(self, name: str) -> Optional[Step]:
        return next((step for step in reversed(self.steps) if step.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {"kind": JOURNAL_KIND, "version": JOURNAL_VERSION, "key": self.key,
                "command": self.command, "domain_name": self.domain_name,
                "options": self.options, "started": self.started, "pid": self.pid,
                "error": self.error,
                "steps": [{"name": step.name, "status": step.status, "time": step.time,
                           "data": step.data} for step in self.steps]}

    def _save(self) -> None:
        write_file(self.path, json.dumps(self.to_json(), indent=1).encode(), replace=True)


def restore_key() -> str:
    return f"restore-{secrets.token_hex(6)}"


def load(key: str) -> Optional[Journal]:
    """The journal a dead run left for ``key``, or None."""
    path = os.path.join(journal_dir(), f"{key}.json")
    try:
        with open(path, "rb") as handle:
            document = json.loads(handle.read().decode())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as error:
        raise JournalError(f"the journal {path} is damaged ({error}); fibackup cannot tell "
                           "what the interrupted run did: check the domain's chain "
                           "('virsh domblklist', 'qemu-img info --backing-chain'), then "
                           "move the file away", path=path) from None
    return _from_json(document, path)


def _from_json(document: Any, path: str) -> Journal:
    try:
        if document.get("kind") != JOURNAL_KIND or document.get("version") != JOURNAL_VERSION:
            raise ValueError(f"not a fibackup journal of version {JOURNAL_VERSION}")
        steps = [Step(str(item["name"]), str(item["status"]), str(item["time"]),
                      dict(item.get("data") or {})) for item in document["steps"]]
        return Journal(key=str(document["key"]), command=str(document["command"]),
                       domain_name=str(document["domain_name"]),
                       options=dict(document.get("options") or {}), steps=steps,
                       started=str(document["started"]), pid=int(document["pid"]),
                       error=str(document["error"]) if document.get("error") else None)
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise JournalError(f"the journal {path} is malformed ({error}); move it away "
                           "after checking the domain's chain by hand", path=path) from None


def restore_journals() -> Iterator[Journal]:
    try:
        names = sorted(os.listdir(journal_dir()))
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith("restore-") and name.endswith(".json"):
            journal = load(name[:-len(".json")])
            if journal is not None:
                yield journal
