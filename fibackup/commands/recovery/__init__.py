"""Each command's recovery steps: what finishes or undoes a step a dead run left open.

A run that changes anything writes an intent journal (fibackup/host/journal.py)
and removes it when it ends; a journal found later means that run died.  The
journal context (fibackup/commands/journalled.py) replays it, step by step,
against what libvirt, the image headers and the backup directory say now.

Layering (each layer imports only the ones below it)::

    command run code        snapshot, backup, consolidate, restore, instant, finalize, prune
      (compose.py above snapshot and consolidate: the two run each other)
    journal context         journalled.py: lock, reconcile a dead run, journal this one
    recovery handlers       recovery/<command>.py: one table journal step -> handler each
    virt / host / store     libvirt and domain XML, host state and journal, the backup store

Each module here has ``HANDLERS``, a table journal step name -> handler
``(Replay, Step) -> None`` (recovery/context.py), and holds the steps both the
command and repair perform (``finish_merge``); :data:`HANDLERS` below is their
union, walked in journal order.  A step with no handler needs nothing (its data
work is found by the step that follows it, e.g. ``consolidate.rebase``).
Restores need no domain: their journals are undone as a whole (recovery/restore.py).
"""
from __future__ import annotations

from fibackup.commands.recovery import consolidate, finalize, prune, snapshot
from fibackup.commands.recovery.context import Handler

HANDLERS: dict[str, Handler] = {**snapshot.HANDLERS, **consolidate.HANDLERS,
                                **prune.HANDLERS, **finalize.HANDLERS}
"""Every journal step with something to finish or undo -> its handler."""
