"""What every benchmark group shares: cold-cache timing, alternating repetitions, rows."""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence, Union

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MiB = 1024 * 1024
GiB = 1024 * MiB
SCRATCH_PARENT = os.environ.get("FIBACKUP_BENCH_DIR", "/var/tmp")


@dataclass
class Settings:
    """What the command line chose; ``quick`` shrinks every size so CI runs it in minutes."""

    quick: bool = False
    repeat: int = 3
    scratch: str = SCRATCH_PARENT

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full


@dataclass
class Row:
    """One comparison: our median time against a baseline's, and the target for their ratio.

    ``ratio`` is ours/baseline for times (lower is better) unless ``higher_is_better``
    (throughput ratios: baseline/ours).  ``limit`` is the target bound on ``ratio``;
    ``met`` is None when no target applies.
    """

    group: str
    case: str
    ours_s: float
    baseline: str
    baseline_s: float
    ratio: float
    target: str = ""
    met: Optional[bool] = None
    note: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def time_ratio_row(group: str, case: str, ours: list[float], baseline_name: str,
                   baseline: list[float], at_most: Optional[float] = None,
                   plus: float = 0.0, note: str = "") -> Row:
    """A row whose target is ``ours <= at_most * baseline + plus`` (times, lower is better)."""
    mine, theirs = statistics.median(ours), statistics.median(baseline)
    ratio = mine / theirs if theirs > 0 else float("inf")
    target, met = "", None
    if at_most is not None:
        target = f"<= {at_most:g}x" + (f" + {plus:g}s" if plus else "")
        met = mine <= at_most * theirs + plus
    return Row(group, case, round(mine, 3), baseline_name, round(theirs, 3), round(ratio, 3),
               target, met, note, {"ours": rounded(ours), baseline_name: rounded(baseline)})


def throughput_row(group: str, case: str, ours: list[float], baseline_name: str,
                   baseline: list[float], at_least: Optional[float] = None,
                   note: str = "") -> Row:
    """A row whose ratio is our throughput over the baseline's (same bytes: their time / ours)."""
    mine, theirs = statistics.median(ours), statistics.median(baseline)
    ratio = theirs / mine if mine > 0 else float("inf")
    target, met = "", None
    if at_least is not None:
        target = f">= {at_least:g}x throughput"
        met = ratio >= at_least
    return Row(group, case, round(mine, 3), baseline_name, round(theirs, 3), round(ratio, 3),
               target, met, note, {"ours": rounded(ours), baseline_name: rounded(baseline)})


def rounded(values: Sequence[float]) -> list[float]:
    return [round(value, 4) for value in values]


def drop_caches() -> bool:
    """Start a run cold, as a nightly backup reads a frozen layer (needs root)."""
    subprocess.run(["sync"], check=True)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("3\n")
        return True
    except OSError:
        return False


def evict(paths: Sequence[str]) -> None:
    """Drop these files (directories: every file below) from the page cache, leaving the
    tools' own programs and libraries cached, as they are on a host that runs backups."""
    subprocess.run(["sync"], check=True)
    for path in paths:
        walked = [os.path.join(top, name) for top, _, names in os.walk(path) for name in names] \
            if os.path.isdir(path) else [path]
        for name in walked:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


Cold = Union[bool, Sequence[str]]
"""True: drop the whole page cache before each run; paths: evict only those; False: warm."""


def timed(action: Callable[[], object], cold: Cold = True) -> float:
    if cold is True:
        drop_caches()
    elif cold:
        evict(cold)
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def alternate(actions: dict[str, Callable[[], object]], repeat: int, cold: Cold = True,
              after: Optional[Callable[[str], object]] = None) -> dict[str, list[float]]:
    """Run each action ``repeat`` times, rotating their order every round; ``after(label)``
    runs untimed after each (to remove what the action wrote)."""
    labels = list(actions)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for round_number in range(repeat):
        shift = round_number % len(labels)
        for label in labels[shift:] + labels[:shift]:
            times[label].append(timed(actions[label], cold))
            if after is not None:
                after(label)
    return times


def run(args: Sequence[str], env: Optional[dict[str, str]] = None) -> str:
    """Run a command (argument list), fail loudly with its stderr, return stdout."""
    done = subprocess.run(list(args), capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


run_command = run
"""The same, for modules whose own entry point is called ``run``."""


CONFIG = "/dev/null"
"""FIBACKUP_CONFIG of every run: no configuration file, so the host's /etc/fibackup.toml
never changes what a row measures (each store's format is chosen by ``init_store``)."""


def fibackup_env(state_dir: str, env: Optional[dict[str, str]] = None) -> dict[str, str]:
    return {"FIBACKUP_STATE_DIR": state_dir, "FIBACKUP_CONFIG": CONFIG, **(env or {})}


def fibackup(state_dir: str, *args: str, env: Optional[dict[str, str]] = None,
             quiet: bool = True) -> str:
    """The fibackup CLI in a fresh process, as an operator runs it."""
    return run([sys.executable, "-m", "fibackup", *args, *(["-q"] if quiet else [])],
               env=fibackup_env(state_dir, env))


def init_store(state_dir: str, store: str, store_format: int, *options: str,
               env: Optional[dict[str, str]] = None) -> None:
    """``fibackup init -b STORE --format N [OPTIONS]`` (untimed): every row says which
    format it measures, whatever ``snapshot -b`` into an empty directory makes by default."""
    fibackup(state_dir, "init", "-b", store, "--format", str(store_format), *options,
             env=env, quiet=False)


def cp_sync(src: str, dst: str, sparse: str = "auto") -> None:
    """The copy baseline: `cp` then `sync` of what it wrote (fibackup's copies are durable)."""
    run(["cp", f"--sparse={sparse}", src, dst])
    run(["sync", dst])


def remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def ensure_debian_package(command: str, package: str) -> str:
    """Path of ``command``, installing Debian's ``package`` first when it is missing."""
    found = shutil.which(command)
    if found:
        return found
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "-qq", "update"], check=False, capture_output=True, env={**os.environ, **env})
    run(["apt-get", "-y", "-qq", "install", "--no-install-recommends", package], env=env)
    found = shutil.which(command)
    if not found:
        raise RuntimeError(f"{package} installed but {command} is not on PATH")
    return found


def print_rows(rows: Sequence[Row]) -> None:
    from tabulate import tabulate
    table = [[row.group, row.case, row.ours_s, f"{row.baseline} {row.baseline_s}", row.ratio,
              row.target, {True: "yes", False: "NO", None: ""}[row.met], row.note]
             for row in rows]
    print(tabulate(table, headers=["group", "case", "fibackup", "baseline", "ratio", "target",
                                   "met", "note"]))


def main_for(run_group: Callable[[Settings], list[Row]]) -> None:
    """Run one group alone (for development): --quick, --repeat N."""
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print_rows(run_group(Settings(quick=args.quick, repeat=args.repeat)))
