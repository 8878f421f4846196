"""P5, group "snapshot": what a snapshot costs the running guest, and consolidation speed.

- Write stall: a 4-disk domain (qcow2, 64 MiB each) boots the tiny real guest with its
  stall meter on vda (``fib.stallmeter=vda``: 4 KiB O_DIRECT + fsync writes without pause;
  every second the guest prints ``FIBACKUP-STALL <max_ms> <writes>``, see
  scripts/guest/init).  After a quiet period (reported in the note), in an
  order that rotates every repetition, ``fibackup snapshot -d DOM --json`` (no backup
  directory) and fi-backup's ``virsh snapshot-create-as ... --disk-only --atomic
  --no-metadata`` with explicit overlays for the 4 disks, alternately on the same domain.
  A run's stall is the longest write the guest reported in the console lines printed
  from just before the run until the first line after it ended (that line covers the
  second in which it ended).  The idle baseline is a third run in the rotation that
  sleeps as long as fibackup's runs take, measured the same way.
- Snapshot step: fibackup's ``timings.snapshot`` (the libvirt snapshot call alone) of
  those runs against the wall time of the ``virsh snapshot-create-as`` command.
- Consolidation: per repetition two fresh, identical running domains (no guest kernel:
  the firmware idles) with one qcow2 disk of 1 GiB holding 256 MiB (quick: 256 MiB /
  64 MiB) written by qemu-io before the start; ``fibackup snapshot`` twice with 512 MiB
  (quick: 32 MiB) written between them and 128 MiB (quick: 16 MiB) after, so the chain
  is base <- frozen layer <- active layer on both (the job, not the CLI's start, should
  dominate: fibackup's JSON gives the job's own seconds, reported beside).  ``fibackup consolidate --method
  commit`` on one against ``virsh blockcommit DOM vda --base BASE --top FROZEN --wait
  --delete`` on the other (the same job, merged file deleted as fibackup does), which
  goes first rotating; both domains' images evicted from the page cache before each.  The same for ``--method active``
  against ``virsh blockcommit --active --pivot --wait --delete``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "benchmarks"

from benchmarks.common import (GiB, MiB, Row, Settings, fibackup, rounded, time_ratio_row,
                               timed)
from benchmarks.common import run as run_command
from tests.lab import GUEST_DIR, URI, DiskDef, Lab, LabDomain, qemu_io

GROUP = "snapshot"
VIRSH = ("virsh", "-q", "-c", URI)
GUEST_DISKS = ("vda", "vdb", "vdc", "vdd")
METER_DISK = "vda"
STALL_LINE = re.compile(rb"FIBACKUP-STALL (\d+(?:\.\d+)?) (\d+)\r?\n")
LINE_TIMEOUT = 30.0


# -- the guest's stall meter ------------------------------------------------------------------

@dataclass
class StallLine:
    offset: int
    """Where the line starts in the console log."""
    max_ms: float
    writes: int


class StallMeter:
    """The ``FIBACKUP-STALL`` lines of one guest's console log."""

    def __init__(self, console_log: str) -> None:
        self.path = console_log

    def position(self) -> int:
        return os.path.getsize(self.path)

    def lines(self, start: int) -> list[StallLine]:
        """Complete stall lines that start at or after byte ``start``."""
        with open(self.path, "rb") as handle:
            handle.seek(start)
            data = handle.read()
        return [StallLine(start + match.start(), float(match.group(1)), int(match.group(2)))
                for match in STALL_LINE.finditer(data)]

    def wait_lines(self, start: int, count: int, timeout: float = LINE_TIMEOUT) -> list[StallLine]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.lines(start)
            if len(found) >= count:
                return found
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the stall meter printed {len(found)} of {count} lines in "
                                   f"{timeout:g} s ({self.path})")
            time.sleep(0.1)

    def around(self, action: Callable[[], object]) -> tuple[object, float, list[StallLine]]:
        """Run ``action``; its result, wall seconds and the lines covering it."""
        before = self.position()
        started = time.perf_counter()
        result = action()
        wall = time.perf_counter() - started
        after = self.position()
        deadline = time.monotonic() + LINE_TIMEOUT
        while True:
            found = self.lines(before)
            later = [line for line in found if line.offset >= after]
            if later:
                return result, wall, [line for line in found if line.offset < after] + later[:1]
            if time.monotonic() >= deadline:
                raise RuntimeError(f"no stall meter line after the run ({self.path})")
            time.sleep(0.1)


def longest(lines: list[StallLine]) -> float:
    """The longest write in ``lines``, in seconds."""
    return max(line.max_ms for line in lines) / 1000.0


# -- snapshot runs --------------------------------------------------------------------------

def ensure_guest() -> None:
    """Build (or reuse) the tiny guest, as scripts/test.sh does before the tests."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "build-guest.sh")
    run_command(["bash", script])
    for name in ("vmlinuz", "initrd.img"):
        if not os.path.exists(os.path.join(GUEST_DIR, name)):
            raise RuntimeError(f"scripts/build-guest.sh did not leave {name} in {GUEST_DIR}")


def fibackup_snapshot(lab: Lab, dom: LabDomain) -> float:
    """One ``fibackup snapshot`` run; the seconds of its libvirt snapshot call."""
    result = json.loads(fibackup(lab.state_dir, "snapshot", "-d", dom.name, "--json"))
    return float(result[0]["timings"]["snapshot"])


def virsh_snapshot(dom: LabDomain, number: int) -> None:
    """fi-backup's snapshot: explicit overlays beside each disk's current top."""
    specs = []
    for target in GUEST_DISKS:
        top = dom.top(target)
        overlay = os.path.join(os.path.dirname(top), f"{target}.virsh-{number}.qcow2")
        specs += ["--diskspec", f"{target},snapshot=external,file={overlay.replace(',', ',,')}"]
    run_command([*VIRSH, "snapshot-create-as", dom.name, f"bimg-{number}", "--disk-only",
                 "--atomic", "--no-metadata", *specs])


def virsh_overhead(name: str, times: int = 5) -> float:
    """virsh's own start and connect: the median of a trivial command."""
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        run_command([*VIRSH, "domstate", name])
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


@dataclass
class SnapshotRuns:
    """Per run: the longest guest write (stall), wall seconds, lines covering it."""

    stall: dict[str, list[float]] = field(default_factory=dict)
    wall: dict[str, list[float]] = field(default_factory=dict)
    lines: dict[str, list[int]] = field(default_factory=dict)
    fewest_writes: dict[str, int] = field(default_factory=dict)
    step: list[float] = field(default_factory=list)
    """fibackup's timings.snapshot."""
    quiet: list[StallLine] = field(default_factory=list)
    """The idle period before the first run."""
    virsh_start: float = 0.0

    def add(self, label: str, wall: float, lines: list[StallLine]) -> None:
        self.stall.setdefault(label, []).append(longest(lines))
        self.wall.setdefault(label, []).append(wall)
        self.lines.setdefault(label, []).append(len(lines))
        fewest = min(line.writes for line in lines)
        self.fewest_writes[label] = min(self.fewest_writes.get(label, fewest), fewest)


def measure_snapshots(settings: Settings) -> SnapshotRuns:
    """Rotate fibackup snapshot, virsh snapshot-create-as and an idle run of the same length."""
    ensure_guest()
    lab = Lab()
    try:
        disks = [DiskDef(target, "qcow2", 64 * MiB, model=False) for target in GUEST_DISKS]
        dom = lab.domain(disks=disks, guest_cmdline=f"fib.stallmeter={METER_DISK}")
        dom.wait_console("FIBACKUP-STALL ", timeout=120)
        meter = StallMeter(dom.console_log)
        meter.wait_lines(0, 3)                      # let the first seconds after boot pass
        runs = SnapshotRuns(virsh_start=virsh_overhead(dom.name))
        runs.quiet = meter.wait_lines(meter.position(), settings.size(10, 5) + 1)[1:]
        actions: dict[str, Callable[[], object]] = {
            "ours": lambda: runs.step.append(fibackup_snapshot(lab, dom)),
            "virsh": lambda: virsh_snapshot(dom, len(runs.wall.get("virsh", []))),
            "idle": lambda: time.sleep(statistics.median(runs.wall.get("ours", [0.5]))),
        }
        labels = list(actions)
        for round_number in range(settings.repeat):
            shift = round_number % len(labels)
            for label in labels[shift:] + labels[:shift]:
                time.sleep(0.5)
                _, wall, lines = meter.around(actions[label])
                runs.add(label, wall, lines)
        return runs
    finally:
        lab.close()


def snapshot_rows(settings: Settings) -> list[Row]:
    runs = measure_snapshots(settings)
    per_run = statistics.median(runs.lines["ours"])
    stall_note = (f"4 qcow2 disks, meter on {METER_DISK} (4 KiB O_DIRECT+fsync writes in a loop); "
                  f"longest write in the console seconds covering each run (median {per_run:g} "
                  f"lines/run); idle = a run of sleep as long as fibackup's; virsh "
                  f"snapshot-create-as runs: "
                  f"{', '.join(f'{s * 1000:.1f}' for s in runs.stall['virsh'])} ms; "
                  f"{len(runs.quiet)} quiet s before: longest {longest(runs.quiet) * 1000:.1f} ms; "
                  f"fewest writes in one second: "
                  f"{', '.join(f'{k} {v}' for k, v in runs.fewest_writes.items())}")
    stall = time_ratio_row(GROUP, "longest guest write stall during snapshot",
                           runs.stall["ours"], "idle", runs.stall["idle"], note=stall_note)
    stall.samples["virsh snapshot-create-as"] = rounded(runs.stall["virsh"])
    step_note = (f"4 disks; ours: timings.snapshot, the libvirt call alone (whole fibackup "
                 f"snapshot run: median {statistics.median(runs.wall['ours']):.3f} s); virsh: "
                 f"the whole command, of which its start and connect (virsh domstate) take "
                 f"{runs.virsh_start:.3f} s")
    step = time_ratio_row(GROUP, "snapshot step wall time", runs.step,
                          "virsh snapshot-create-as", runs.wall["virsh"], note=step_note)
    step.samples["fibackup snapshot run"] = rounded(runs.wall["ours"])
    return [stall, step]


# -- consolidation ------------------------------------------------------------------------------

@dataclass
class ChainSizes:
    disk: int
    base: int
    frozen: int
    active: int


def sizes(settings: Settings) -> ChainSizes:
    return ChainSizes(disk=settings.size(GiB, 256 * MiB), base=settings.size(256 * MiB, 64 * MiB),
                      frozen=settings.size(512 * MiB, 32 * MiB),
                      active=settings.size(128 * MiB, 16 * MiB))


def chain_domain(lab: Lab, chain: ChainSizes) -> LabDomain:
    """A running domain whose vda is base <- frozen layer <- active layer, all holding data."""
    dom = lab.domain(disks=[DiskDef("vda", "qcow2", chain.disk, model=False)], start=False)
    qemu_io(dom.image_path(dom.disks[0]), "qcow2", f"write -P 1 0 {chain.base}")
    dom.start()
    fibackup(lab.state_dir, "snapshot", "-d", dom.name)
    dom.write("vda", 0x21, chain.base // 2, chain.frozen)
    fibackup(lab.state_dir, "snapshot", "-d", dom.name)
    dom.write("vda", 0x22, chain.disk // 2, chain.active)
    return dom


def live_chain(dom: LabDomain, target: str = "vda") -> list[str]:
    """The running chain of ``target``, active layer first."""
    for disk in dom.live_xml().findall("./devices/disk"):
        if disk.find("target").get("dev") != target:
            continue
        files, node = [], disk
        while node is not None and node.find("source") is not None:
            files.append(node.find("source").get("file"))
            node = node.find("backingStore")
        return files
    raise KeyError(target)


def ours_consolidate(lab: Lab, dom: LabDomain, method: str,
                     job_seconds: list[float]) -> Callable[[], object]:
    """The fibackup run; appends the job's own seconds (from its JSON) to ``job_seconds``."""
    def action() -> None:
        result = json.loads(fibackup(lab.state_dir, "consolidate", "-d", dom.name, "--method",
                                     method, "--json"))
        disks = result[0]["disks"]
        if [disk["outcome"] for disk in disks] != ["merged"]:
            raise RuntimeError(f"fibackup consolidate --method {method}: {disks}")
        job_seconds.append(float(disks[0]["seconds"]))
    return action


def virsh_commit(dom: LabDomain, method: str) -> Callable[[], object]:
    chain = live_chain(dom)
    if method == "commit":
        args = ["--top", chain[1]]
    else:
        args = ["--active", "--pivot"]

    def action() -> None:
        run_command([*VIRSH, "blockcommit", dom.name, "vda", "--base", chain[-1], *args,
                     "--wait", "--delete"])
    return action


def expect_chain(dom: LabDomain, length: int, who: str) -> None:
    chain = live_chain(dom)
    if len(chain) != length:
        raise RuntimeError(f"{who}: chain after consolidating is {chain}, not {length} layers")


def measure_consolidation(settings: Settings, method: str) -> dict[str, list[float]]:
    """Wall seconds of each run ("ours", "virsh") and fibackup's job seconds ("ours job")."""
    chain = sizes(settings)
    times: dict[str, list[float]] = {"ours": [], "virsh": [], "ours job": []}
    for round_number in range(settings.repeat):
        lab = Lab()
        try:
            ours_dom, virsh_dom = chain_domain(lab, chain), chain_domain(lab, chain)
            actions = {"ours": ours_consolidate(lab, ours_dom, method, times["ours job"]),
                       "virsh": virsh_commit(virsh_dom, method)}
            labels = ["ours", "virsh"] if round_number % 2 == 0 else ["virsh", "ours"]
            for label in labels:
                images = [ours_dom.directory, virsh_dom.directory]
                times[label].append(timed(actions[label], cold=images))
            left = 2 if method == "commit" else 1
            expect_chain(ours_dom, left, "fibackup")
            expect_chain(virsh_dom, left, "virsh")
        finally:
            lab.close()
    return times


def consolidation_row(settings: Settings, method: str) -> Row:
    chain = sizes(settings)
    merged = chain.frozen if method == "commit" else chain.frozen + chain.active
    times = measure_consolidation(settings, method)
    rate = {label: merged / MiB / statistics.median(values) for label, values in times.items()}
    if method == "commit":
        case, baseline = "consolidate commit (frozen layer into base)", "virsh blockcommit"
        how = "--top FROZEN --wait --delete"
    else:
        case, baseline = "consolidate active (all into base, pivot)", "virsh blockcommit --active"
        how = "--active --pivot --wait --delete"
    note = (f"{merged // MiB} MiB merged into a base holding {chain.base // MiB} MiB "
            f"({chain.disk // MiB} MiB qcow2); images cold; ours {rate['ours']:.0f} "
            f"MiB/s (whole CLI run, Python's start included; the job alone as fibackup times "
            f"it: {rate['ours job']:.0f} MiB/s), "
            f"virsh blockcommit {how} {rate['virsh']:.0f} MiB/s (virsh --wait polls the job "
            f"every 0.5 s, so its times come in 0.5 s steps)")
    row = time_ratio_row(GROUP, case, times["ours"], baseline, times["virsh"], note=note)
    row.samples["ours job"] = rounded(times["ours job"])
    return row


# -- the group ----------------------------------------------------------------------------------

def run(settings: Settings) -> list[Row]:
    rows = snapshot_rows(settings)
    rows.append(consolidation_row(settings, "commit"))
    rows.append(consolidation_row(settings, "active"))
    return rows


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, short idle period")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    import libvirt
    libvirt.registerErrorHandler(lambda *_: None, None)     # Lab.close looks up gone domains
    rows = run(Settings(quick=args.quick, repeat=args.repeat))
    if args.json:
        print(json.dumps([row.to_json() for row in rows], indent=2))
        return
    for row in rows:
        print(f"{row.case}: ours {row.ours_s:.3f} s, {row.baseline} {row.baseline_s:.3f} s, "
              f"ratio {row.ratio:.3f}\n    {row.note}\n    samples {row.samples}")


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as error:
        sys.exit(f"{error.cmd} failed: {error.stderr}")
