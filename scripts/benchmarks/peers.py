"""Peers (issue 5): fibackup against fi-backup.sh's method and virtnbdbackup, same domains.

Each repetition builds one fresh running domain per tool, all identical: one qcow2 disk
of 2 GiB virtual size holding 1 GiB of data (quick: 256 MiB on 512 MiB), written with
qemu-io before the domain starts (no guest kernel: the firmware just idles).  Then, in
an order that rotates every repetition, each tool makes its full backup; 64 MiB
(quick: 16 MiB) are written through the running QEMU's block backend on every domain;
and each tool makes its incremental backup.  Every timed run starts with the domain's
images and the backup directory evicted from the page cache (the tools' programs stay
cached, as on a host that runs them every night; the note gives fibackup's start-up
with everything cold) and ends with ``sync`` of every file in its backup directory.  Medians over
the repetitions are compared.

- fi-backup method: ``virsh snapshot-create-as DOM bimg-<ts> --disk-only --atomic
  --no-metadata``, then ``cp`` of the layer that froze (the base, then the first
  overlay) into a directory; no hashing, no metadata.
- fibackup: ``fibackup snapshot -d DOM -b DIR --json`` in a fresh process (it hashes
  and fsyncs what it copies); the incremental run's ``bytes_copied`` is checked against
  the amount changed, and its phase timings are reported in the note.  DIR is a
  format-1 store (``fibackup init --format 1``, untimed): layer copies, the format
  these targets were set for (format 3 has its own rows: benchmarks/format3.py).
- virtnbdbackup (Debian 12's 1.9.15): ``virtnbdbackup -U qemu:///system -d DOM -l full
  -o DIR --noprogress``, then ``-l inc``; libvirt's pull-mode backup API with a
  checkpoint (persistent dirty bitmap) per run, data read over NBD.  Should it fail
  here, its rows carry the error and no target verdict.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "benchmarks"

from benchmarks.common import (GiB, MiB, Row, Settings, ensure_debian_package, fibackup,
                               init_store, rounded, time_ratio_row, timed)
from benchmarks.common import run as run_command
import libvirt
from tests.lab import DiskDef, Lab, LabDomain, qemu_io

GROUP = "peers"
URI = "qemu:///system"
OURS = "fibackup"
FI_BACKUP = "fi-backup method"
VIRTNBD = "virtnbdbackup"
TOOLS = (OURS, FI_BACKUP, VIRTNBD)
PHASES = ("full", "incremental")
TARGET = "vda"


@dataclass
class Sizes:
    disk: int
    data: int
    changed: int

    def describe(self) -> str:
        return (f"{human(self.data)} data on a {human(self.disk)} qcow2 disk, "
                f"{human(self.changed)} changed")


@dataclass
class Subject:
    """One tool's domain in one repetition, and where that tool writes its backup."""

    tool: str
    dom: LabDomain
    backup_dir: str
    runs: int = 0
    outputs: dict[str, str] = field(default_factory=dict)


@dataclass
class Tally:
    """What all repetitions measured."""

    times: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {tool: {phase: [] for phase in PHASES} for tool in TOOLS})
    errors: dict[str, str] = field(default_factory=dict)
    bytes_copied: list[int] = field(default_factory=list)
    cold_start: list[float] = field(default_factory=list)
    """Seconds for a cold interpreter to import what ``fibackup snapshot`` runs."""
    phase_times: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {phase: {} for phase in PHASES})
    """fibackup's own timings ("snapshot", "backup") per run phase."""


def human(size: float) -> str:
    return f"{size / GiB:g} GiB" if size >= GiB else f"{size / MiB:.4g} MiB"


# -- the tools --------------------------------------------------------------------------


def sync_tree(directory: str) -> None:
    """fsync every file and directory under ``directory`` (coreutils ``sync FILE...``)."""
    paths = [directory]
    for parent, dirs, files in os.walk(directory):
        paths += [os.path.join(parent, name) for name in dirs + files]
    run_command(["sync", *paths])


def fi_backup_method(subject: Subject) -> None:
    """What fi-backup.sh -b does: snapshot, then cp the layer that froze, then sync."""
    frozen = subject.dom.top(TARGET)
    subject.runs += 1
    tag = f"bimg-{time.strftime('%Y%m%d-%H%M%S')}-{subject.runs}"
    run_command(["virsh", "-q", "-c", URI, "snapshot-create-as", subject.dom.name, tag,
                 "--disk-only", "--atomic", "--no-metadata"])
    os.makedirs(subject.backup_dir, exist_ok=True)
    run_command(["cp", frozen, os.path.join(subject.backup_dir, os.path.basename(frozen))])
    sync_tree(subject.backup_dir)


def fibackup_run(state_dir: str, subject: Subject, phase: str) -> None:
    subject.outputs[phase] = fibackup(state_dir, "snapshot", "-d", subject.dom.name,
                                      "-b", subject.backup_dir, "--json")
    sync_tree(subject.backup_dir)


def virtnbdbackup_run(subject: Subject, phase: str) -> None:
    level = "full" if phase == "full" else "inc"
    args = [VIRTNBD, "-U", URI, "-d", subject.dom.name, "-l", level,
            "-o", subject.backup_dir, "--noprogress"]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}: "
                           f"{error_lines(done.stderr)}")
    sync_tree(subject.backup_dir)


def error_lines(log: str) -> str:
    """virtnbdbackup logs everything on stderr: keep its errors, else its last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if " ERROR " in line or " CRITICAL " in line
              or "Traceback" in line or "Error:" in line]
    return " | ".join(errors or lines[-1:]) or "(no output)"


def action(lab: Lab, subject: Subject, phase: str) -> Callable[[], None]:
    if subject.tool == OURS:
        return lambda: fibackup_run(lab.state_dir, subject, phase)
    if subject.tool == FI_BACKUP:
        return lambda: fi_backup_method(subject)
    return lambda: virtnbdbackup_run(subject, phase)


# -- one repetition ---------------------------------------------------------------------


def make_subject(lab: Lab, tool: str, sizes: Sizes) -> Subject:
    dom = lab.domain(disks=[DiskDef(TARGET, "qcow2", sizes.disk, model=False)], start=False)
    qemu_io(dom.image_path(dom.disks[0]), "qcow2", f"write -P 1 0 {sizes.data}")
    dom.start()
    subject = Subject(tool, dom, lab.path(f"backup {tool}"))
    if tool == OURS:
        init_store(lab.state_dir, subject.backup_dir, 1)
    return subject


def rotated(labels: tuple[str, ...], number: int) -> list[str]:
    shift = number % len(labels)
    return list(labels[shift:] + labels[:shift])


def measure(lab: Lab, subject: Subject, phase: str, tally: Tally) -> None:
    """Time one run, its data cold; a peer that fails is recorded and left out from then on."""
    try:
        seconds = timed(action(lab, subject, phase),
                        cold=[subject.dom.directory, subject.backup_dir])
    except (RuntimeError, OSError) as error:
        if subject.tool == OURS:
            raise
        tally.errors[subject.tool] = f"{phase}: {error}"
        return
    tally.times[subject.tool][phase].append(seconds)


def record_fibackup(subject: Subject, tally: Tally) -> None:
    """fibackup's phase timings, and what its incremental run copied (see ``copied_note``)."""
    for phase in PHASES:
        if phase not in subject.outputs:
            continue
        (result,) = json.loads(subject.outputs[phase])
        for name, seconds in result.get("timings", {}).items():
            tally.phase_times[phase].setdefault(name, []).append(float(seconds))
        if phase == "incremental":
            tally.bytes_copied.append(int(result["bytes_copied"]))


def cold_start() -> None:
    """What every fibackup run pays before its work: the interpreter and its imports."""
    run_command([sys.executable, "-c", "import fibackup.cli, fibackup.commands.snapshot"])


def repetition(number: int, sizes: Sizes, tally: Tally) -> None:
    lab = Lab()
    try:
        tools = [tool for tool in TOOLS if tool not in tally.errors]
        subjects = {tool: make_subject(lab, tool, sizes) for tool in tools}
        order = rotated(tuple(tools), number)
        for phase in PHASES:
            if phase == "incremental":
                for subject in subjects.values():
                    subject.dom.write(TARGET, 2, sizes.data // 4, sizes.changed)
            for tool in order:
                if tool not in tally.errors:
                    measure(lab, subjects[tool], phase, tally)
        record_fibackup(subjects[OURS], tally)
        tally.cold_start.append(timed(cold_start, cold=True))
    finally:
        release_checkpoints(lab)
        lab.close()


def release_checkpoints(lab: Lab) -> None:
    """virtnbdbackup leaves libvirt checkpoints, which block a plain undefine."""
    for lab_domain in lab.domains:
        try:
            dom = lab.conn.lookupByName(lab_domain.name)
            if not dom.listAllCheckpoints():
                continue
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                              | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        except libvirt.libvirtError:
            continue


# -- rows -------------------------------------------------------------------------------


def check_space(sizes: Sizes) -> None:
    need = 3 * len(TOOLS) * sizes.data
    free = shutil.disk_usage("/var/tmp").free
    if free < need:
        raise RuntimeError(f"peers needs {human(need)} free under /var/tmp, has {human(free)}")


def phases_note(tally: Tally, phase: str) -> str:
    """Where fibackup's run went: its own phases, and what a cold start alone costs
    (the rest is setup: libvirt, chains, store, journal)."""
    note = ""
    if tally.phase_times[phase]:
        parts = ", ".join(f"{name} {statistics.median(values):.3f}s"
                          for name, values in sorted(tally.phase_times[phase].items()))
        note += f"; fibackup's own timings (median): {parts}"
    if tally.cold_start:
        note += (f"; a cold interpreter importing fibackup's CLI alone: "
                 f"{statistics.median(tally.cold_start):.3f}s")
    return note


def copied_note(sizes: Sizes, tally: Tally) -> tuple[str, bool]:
    """fibackup's incremental run must have copied about what changed, not the disk."""
    copied = max(tally.bytes_copied) if tally.bytes_copied else 0
    ok = bool(tally.bytes_copied) and all(
        sizes.changed <= value <= 1.5 * sizes.changed for value in tally.bytes_copied)
    note = (f"; fibackup incremental copied {human(copied)} for {human(sizes.changed)} changed"
            + ("" if ok else " (CHECK FAILED: expected about the changed amount)"))
    return note, ok


def peer_row(case: str, phase: str, peer: str, tally: Tally, note: str,
             at_most: Optional[float], plus: float = 0.0) -> Row:
    ours = tally.times[OURS][phase]
    theirs = tally.times[peer][phase]
    failed = tally.errors.get(peer)
    if not theirs:
        return Row(GROUP, case, round(statistics.median(ours), 3), peer, 0.0, 0.0, "", None,
                   f"{peer} could not run here: {failed or 'no sample'}", {"ours": rounded(ours)})
    if failed:
        note += f"; {peer} failed in a later repetition: {failed}"
    return time_ratio_row(GROUP, case, ours, peer, theirs, at_most=at_most, plus=plus, note=note)


def build_rows(sizes: Sizes, tally: Tally, repeat: int) -> list[Row]:
    common_note = f"{sizes.describe()}; images and backups cold, median of {repeat}"
    copied, copied_ok = copied_note(sizes, tally)
    full_note = common_note + phases_note(tally, "full")
    incremental_note = common_note + copied + phases_note(tally, "incremental")
    rows = [
        peer_row("full vs fi-backup method", "full", FI_BACKUP, tally, full_note, 1.1),
        peer_row("full vs virtnbdbackup", "full", VIRTNBD, tally, full_note, 1.0),
        peer_row("incremental vs fi-backup method", "incremental", FI_BACKUP, tally,
                 incremental_note, 1.2, 0.3),
        peer_row("incremental vs virtnbdbackup", "incremental", VIRTNBD, tally,
                 incremental_note, 1.0),
    ]
    informative = rows[3]
    if informative.target:
        informative.target += " (informative)"
        informative.met = None
    if not copied_ok:
        for row in rows[2:]:
            row.met = False
    return rows


def run_peers(settings: Settings) -> list[Row]:
    sizes = Sizes(disk=settings.size(2 * GiB, 512 * MiB), data=settings.size(GiB, 256 * MiB),
                  changed=settings.size(64 * MiB, 16 * MiB))
    check_space(sizes)
    tally = Tally()
    try:
        ensure_debian_package(VIRTNBD, "virtnbdbackup")
    except (RuntimeError, OSError) as error:
        tally.errors[VIRTNBD] = f"not installable: {error}"
    for number in range(settings.repeat):
        repetition(number, sizes, tally)
    return build_rows(sizes, tally, settings.repeat)


def run(settings: Settings) -> list[Row]:
    # libvirt prints every error it raises; the lab's cleanup expects some
    libvirt.registerErrorHandler(lambda _context, _error: None, None)
    return run_peers(settings)


if __name__ == "__main__":
    from benchmarks.common import main_for
    main_for(run)
