"""Recovery of ``prune`` steps (``prune.merge``, ``.switch``, ``.drop``, ``.delete``):
nothing to undo, as every listed point is complete at every step; the next prune,
which plans from the store as it is, finishes the work."""
from __future__ import annotations

from fibackup.commands.recovery.context import Handler, Replay
from fibackup.host.journal import Step
from fibackup.model.states import StepStatus


def interrupted(replay: Replay, step: Step) -> None:
    replay.stores.add(str(step.data.get("store")))
    if step.status == StepStatus.STARTED:
        replay.act(f"the prune of {step.data.get('store')} was interrupted in step "
                   f"{step.name}; every listed restore point is complete: run the same "
                   "'fibackup prune' again to finish it")


HANDLERS: dict[str, Handler] = {name: interrupted for name in
                                ("prune.merge", "prune.switch", "prune.drop", "prune.delete")}
