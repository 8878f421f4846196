"""Recovery of ``restore --finalize`` (instant recovery) steps.

* ``finalize.job``: a pull is always safe to let finish: it is waited for (or,
  when another command reconciles, refused while it runs); ``--finalize`` run
  again does the rest.
"""
from __future__ import annotations

from fibackup.commands.recovery.context import Handler, Replay
from fibackup.host.journal import Step
from fibackup.model.states import Method, StepStatus


def finalize_job(replay: Replay, step: Step) -> None:
    if step.status != StepStatus.STARTED:
        return
    target = str(step.data.get("disk"))
    if step.data.get("live") and replay.domain.is_active():
        replay.settle_live_job(target, Method.PULL)
    replay.act(f"disk {target}: the interrupted 'restore --finalize' left the disk on a valid "
               f"chain; run 'fibackup restore --finalize {replay.domain.name}' to finish it")


HANDLERS: dict[str, Handler] = {"finalize.job": finalize_job}
