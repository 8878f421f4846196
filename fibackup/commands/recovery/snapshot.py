"""Recovery of ``snapshot`` (and ``snapshot -b``) steps.

* ``snapshot.take``: if the overlays are the disks' tops, the snapshot happened:
  record them as fibackup's own and drop the stale explicit chain from the
  persistent definition (both idempotent);
* ``backup.files`` / ``backup.copy`` / ``backup.publish``: nothing to undo (a
  manifest is published atomically or not at all); partial files are removed
  when the backup directory is tidied; a published point's directory is recorded.
"""
from __future__ import annotations

from fibackup.commands.recovery.context import Handler, Replay
from fibackup.errors import StoreError
from fibackup.host import state as host_state
from fibackup.host.journal import Step
from fibackup.model.states import StepStatus
from fibackup.qemu import view
from fibackup.store.repo import BackupStore
from fibackup.virt.disks import current_tops, tidy_persistent_xml


def snapshot_taken(replay: Replay, step: Step) -> None:
    overlays: dict[str, str] = dict(step.data.get("overlays") or {})
    tops = current_tops(replay.domain)
    taken = {target: path for target, path in overlays.items() if tops.get(target) == path}
    if not taken:
        if step.status == StepStatus.STARTED:
            replay.act(f"snapshot {step.data.get('tag')} was not taken; nothing to undo")
        return
    if step.status == StepStatus.STARTED:
        replay.act(f"snapshot {step.data.get('tag')} was taken: its overlays "
                   f"{', '.join(sorted(taken.values()))} are recorded as fibackup's")
    host_state.remember_overlays(replay.domain.uuid, taken, str(step.data.get("tag")))
    tidy_persistent_xml(replay.domain, taken)


def copy(replay: Replay, step: Step) -> None:
    replay.stores.add(str(step.data.get("store")))
    if step.status == StepStatus.STARTED:
        replay.act(f"the copy of disk {step.data.get('disk')} layer {step.data.get('source')} "
                   "was interrupted; no restore point was published for it, and the next "
                   "'snapshot -b' copies the frozen layers")


def chunks(replay: Replay, step: Step) -> None:
    """A format-3 read of a disk's changes: stop the export it left running; the chunks
    it stored are referenced by no point (garbage collection removes them)."""
    replay.stores.add(str(step.data.get("store")))
    scratch = step.data.get("views")
    if isinstance(scratch, str):
        for mountpoint in view.stop_leftovers(scratch):
            replay.act(f"stopped the export of the frozen chain left at {mountpoint}")
    if step.status == StepStatus.STARTED:
        replay.act(f"reading disk {step.data.get('disk')} into the store was interrupted; no "
                   "restore point was published for it, and the next 'snapshot -b' reads it "
                   "again")


def files(replay: Replay, step: Step) -> None:
    replay.stores.add(str(step.data.get("store")))
    if step.status == StepStatus.STARTED:
        replay.act("saving the domain's NVRAM, TPM state and boot files was interrupted; no "
                   "restore point was published for that snapshot")


def publish(replay: Replay, step: Step) -> None:
    root = str(step.data.get("store"))
    replay.stores.add(root)
    try:
        store = BackupStore.open(root)
        published = any(point.id == step.data.get("point")
                        for point in store.points(replay.domain.uuid, problems=[]))
    except StoreError:
        return
    if published:
        host_state.remember_store(replay.domain.uuid, store.store_id, store.root)
        if step.status == StepStatus.STARTED:
            replay.act(f"restore point {step.data.get('point')} had been published in {root}")
    elif step.status == StepStatus.STARTED:
        replay.act(f"restore point {step.data.get('point')} was not published in {root}")


HANDLERS: dict[str, Handler] = {"snapshot.take": snapshot_taken, "backup.copy": copy,
                                "backup.chunks": chunks,
                                "backup.files": files, "backup.publish": publish}
