"""The states and methods fibackup writes into its files, as enums (pure).

Every member's value is the string the files have always held (host state,
intent journal, instant-recovery record, ``--json`` documents): the classes
derive from ``str``, so ``json.dumps`` writes the value, a member compares
equal to its string, and ``str()``/f-strings give the value too.  Reading a
file keeps the plain string (``Method(text)`` where a member is needed).
"""
from __future__ import annotations

from enum import Enum


class State(str, Enum):
    """Base of fibackup's states: a ``str`` whose ``str()`` is its value."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Method(State):
    """How ``consolidate`` shortens a chain (docs/CONSOLIDATION.md)."""

    COMMIT = "commit"
    """Merge the frozen layers into the base: base <- active."""
    ACTIVE = "active"
    """Merge everything, the active layer too, into the base and pivot to it."""
    PULL = "pull"
    """Copy the backing data into the active layer, which then stands alone."""

    @property
    def job_name(self) -> str:
        """The job's name in messages (``active commit``)."""
        return "active commit" if self is Method.ACTIVE else self.value


METHODS = tuple(method.value for method in Method)
"""The method names, in the order ``--method`` lists them."""


class Outcome(State):
    """What became of one disk's consolidation job (host state, journal, ``--json``)."""

    MERGED = "merged"
    """The job completed: the chain is the one expected."""
    ABORTED = "aborted"
    """Timeout or abort: the disk keeps its chain (a commit's base may be partly written)."""
    FAILED = "failed"
    """The job failed, or left a chain other than the one expected."""
    NOT_STARTED = "not started"
    """libvirt refused to start it: nothing was written."""
    NOTHING = "nothing to do"
    """The chain was already short (``--json`` only)."""


class StepStatus(State):
    """An intent-journal step: written ``started`` before its work, ``done`` after."""

    STARTED = "started"
    DONE = "done"


class InstantStatus(State):
    """An instant-recovery record: ``starting`` until its domain is defined and started."""

    STARTING = "starting"
    READY = "ready"
