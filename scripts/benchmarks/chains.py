"""P3, P4, verify and the start-up path, on real domains and a real backup directory.

Every backup directory here is a format-1 store (``fibackup init --format 1``: byte
copies of the layer files), the format these targets were set for; format 3 has its
own rows (benchmarks/format3.py).

- P3 incremental: `snapshot -b` after 64 MiB changed, on a 64 GiB disk against a
  1 GiB disk (--quick: 8 GiB), each holding the same data: at most 1.2x.
- P4 restore of a 10-layer chain (`restore --no-define`, every chunk checked on
  the way) against `cp` + `sync` of the same stored files: at most 1.2x.
- verify of that backup directory against `xxhsum -H2` of the same files:
  at least 0.9x the throughput.
- prune of that 10-point backup to its newest point (`prune --keep 1`: every
  input chunk checked, `qemu-img convert` of the chain, the result hashed and
  compared by `qemu-img compare`, manifests switched, old layers deleted)
  against the bare merge it contains: `qemu-img convert` of the same stored
  chain + `sync`. No target: the ratio is the price of checking.
- start-up: what an incremental run spends outside the copy: Python start and
  imports (against `python -c pass`), libvirt RPC round trips (counted from
  libvirt's client log), and the snapshot call alone.
"""
from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "benchmarks"

from benchmarks.common import (GiB, MiB, Row, Settings, alternate, ensure_debian_package,
                               evict, fibackup, fibackup_env, init_store, remove, run_command,
                               throughput_row, time_ratio_row)
from tests.lab import Lab, LabDomain

GROUP = "chains"

def snapshot_json(lab: Lab, dom: LabDomain, backup: str, *extra: str) -> dict:
    return json.loads(fibackup(lab.state_dir, "snapshot", "-d", dom.name, "-b", backup,
                               "--json", *extra))[0]

def incremental_row(settings: Settings) -> Row:
    data = settings.size(256 * MiB, 64 * MiB)
    change = settings.size(64 * MiB, 16 * MiB)
    sizes = {"small": GiB, "large": settings.size(64 * GiB, 8 * GiB)}
    lab = Lab()
    try:
        domains = {label: lab.data_domain(size, data) for label, size in sizes.items()}
        backups = {label: lab.path(f"backup-{label}") for label in sizes}
        for label, dom in domains.items():
            init_store(lab.state_dir, backups[label], 1)
            snapshot_json(lab, dom, backups[label])
        rounds = {label: 0 for label in sizes}
        copied: dict[str, int] = {}

        def incremental(label: str) -> None:
            dom = domains[label]
            rounds[label] += 1
            dom.write("vda", 0x40 + rounds[label] % 64, rounds[label] * change % sizes["small"],
                      change)
            copied[label] = snapshot_json(lab, dom, backups[label])["bytes_copied"]

        images = [dom.directory for dom in domains.values()]
        times = alternate({label: (lambda label=label: incremental(label)) for label in sizes},
                          settings.repeat, cold=images)
    finally:
        lab.close()
    return time_ratio_row(GROUP, f"P3 incremental, {change // MiB} MiB changed: "
                          f"{sizes['large'] // GiB} GiB disk vs 1 GiB disk", times["large"],
                          "same on 1 GiB", times["small"], at_most=1.2,
                          note=f"copied {copied['large'] // MiB} / {copied['small'] // MiB} MiB")

def ten_layer_backup(settings: Settings, lab: Lab, backup: str) -> LabDomain:
    """A running domain whose backup holds a 10-layer chain (a base and 9 increments)."""
    base_data = settings.size(512 * MiB, 64 * MiB)
    change = settings.size(64 * MiB, 8 * MiB)
    dom = lab.data_domain(2 * GiB, base_data)
    init_store(lab.state_dir, backup, 1)
    snapshot_json(lab, dom, backup)
    for number in range(9):
        dom.write("vda", 0x50 + number, number * change, change)
        snapshot_json(lab, dom, backup)
    return dom

def stored_files(backup: str) -> list[str]:
    return sorted(glob.glob(os.path.join(backup, "domains", "*", "layers", "*.raw"))
                  + glob.glob(os.path.join(backup, "domains", "*", "layers", "*.qcow2")))

def restore_row(settings: Settings, lab: Lab, dom: LabDomain, backup: str) -> Row:
    files = stored_files(backup)
    target = lab.path("restored")
    copies = lab.path("copied")

    def ours() -> None:
        fibackup(lab.state_dir, "restore", "-d", dom.name, "-b", backup, "--to", target,
                 "--no-define")

    def baseline() -> None:
        os.makedirs(copies)
        run_command(["cp", "--sparse=auto", *files, copies])
        run_command(["sync", "-f", copies])

    times = alternate({"fibackup": ours, "cp+sync": baseline}, settings.repeat, cold=[backup],
                      after=lambda _label: (remove(target), remove(copies)))
    data = sum(os.stat(path).st_blocks * 512 for path in files)
    return time_ratio_row(GROUP, f"P4 restore of a {len(files)}-layer chain, checked",
                          times["fibackup"], "cp+sync of the stored files", times["cp+sync"],
                          at_most=1.2, note=f"{data // MiB} MiB of data in the stored files")

def verify_row(settings: Settings, lab: Lab, backup: str) -> Row:
    xxhsum = ensure_debian_package("xxhsum", "xxhash")
    files = stored_files(backup)
    times = alternate({"fibackup": lambda: fibackup(lab.state_dir, "verify", "-b", backup),
                       "xxhsum": lambda: run_command([xxhsum, "-H2", *files])},
                      settings.repeat, cold=[backup])
    apparent = sum(os.path.getsize(path) for path in files)
    data = sum(os.stat(path).st_blocks * 512 for path in files)
    return throughput_row(GROUP, "verify of the same backup", times["fibackup"],
                          "xxhsum -H2", times["xxhsum"], at_least=0.9,
                          note=f"xxhsum reads {apparent // MiB} MiB (holes too), fibackup the "
                               f"{data // MiB} MiB of data")

def prune_row(settings: Settings, lab: Lab, dom: LabDomain, backup: str) -> Row:
    from fibackup.qemu.img import explicit_chain
    work, merged = lab.path("prune-work"), lab.path("merged.raw")
    chain = _newest_chain(backup, "vda")

    def prepare(_label: str = "") -> None:
        remove(work)
        remove(merged)
        run_command(["cp", "-a", "--sparse=always", backup, work])

    def baseline() -> None:
        run_command(["qemu-img", "convert", "-O", "raw", explicit_chain(chain, read_only=True),
                     merged])
        run_command(["sync", "-f", lab.path()])

    prepare()
    times = alternate({"fibackup": lambda: fibackup(lab.state_dir, "prune", "-b", work, "-d",
                                                   dom.name, "--keep", "1"),
                       "convert": baseline}, settings.repeat, cold=[backup, work],
                      after=prepare)
    remove(work)
    data = sum(os.stat(path).st_blocks * 512 for path, _format in chain)
    return time_ratio_row(GROUP, f"prune of {len(chain)} layers to 1 (checked)",
                          times["fibackup"], "qemu-img convert + sync of the chain",
                          times["convert"], note=f"{data // MiB} MiB of data in the chain")


def _newest_chain(backup: str, target: str) -> list[tuple[str, str]]:
    """(path, format) of the stored layers of the newest point's disk, base first."""
    (points,) = glob.glob(os.path.join(backup, "domains", "*", "points"))
    with open(sorted(glob.glob(os.path.join(points, "*.json")))[-1]) as handle:
        layers = json.load(handle)["disks"][target]["layers"]
    directory = os.path.join(os.path.dirname(points), "layers")
    return [(os.path.join(directory, f"{layer['id']}.{layer['image_format']}"),
             layer["image_format"]) for layer in layers]


def startup_rows(settings: Settings, lab: Lab, dom: LabDomain, backup: str) -> list[Row]:
    python = [sys.executable, "-c", "pass"]
    importing = [sys.executable, "-c", "import fibackup.cli"]
    times = alternate({"import": lambda: run_command(importing), "python": lambda: run_command(python)},
                      max(5, settings.repeat), cold=False)
    rows = [time_ratio_row(GROUP, "start-up: import fibackup.cli", times["import"],
                           "python -c pass", times["python"])]
    runs = [_incremental_run(lab, dom, backup, {}) for _ in range(max(3, settings.repeat))]
    wall, timings = sorted(runs, key=lambda item: item[0])[len(runs) // 2]
    log = f"/tmp/fibackup-bench-libvirt-{os.getpid()}.log"      # outputs are space-separated
    _incremental_run(lab, dom, backup, {"LIBVIRT_LOG_FILTERS": "1:rpc",
                                        "LIBVIRT_LOG_OUTPUTS": f"1:file:{log}"})
    with open(log, errors="replace") as handle:
        calls = len(re.findall(r"virNetClientCallNew", handle.read()))
    remove(log)
    phases = timings["snapshot"] + timings["backup"]
    rows.append(Row(GROUP, "incremental run (1 MiB changed): whole run vs its snapshot + copy",
                    round(wall, 3), "snapshot call + backup", round(phases, 3),
                    round(wall / phases, 3),
                    note=f"libvirt RPC calls: {calls}; snapshot call {timings['snapshot']:.3f}s"))
    return rows


def _incremental_run(lab: Lab, dom: LabDomain, backup: str,
                     env: dict[str, str]) -> tuple[float, dict[str, float]]:
    """Wall time and reported phase timings of one `snapshot -b` after 1 MiB changed."""
    dom.write("vda", 0x70, 0, MiB)
    evict([dom.directory, backup])
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "fibackup", "snapshot", "-d", dom.name, "-b",
                           backup, "--json", "-q"], capture_output=True, text=True,
                          env={**os.environ, **fibackup_env(lab.state_dir, env)})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"fibackup snapshot failed: {done.stderr.strip()}")
    return wall, json.loads(done.stdout)[0]["timings"]


def run(settings: Settings) -> list[Row]:
    rows = [incremental_row(settings)]
    lab = Lab()
    try:
        backup = lab.path("backup")
        dom = ten_layer_backup(settings, lab, backup)
        rows.append(restore_row(settings, lab, dom, backup))
        rows.append(verify_row(settings, lab, backup))
        rows.extend(startup_rows(settings, lab, dom, backup))
        rows.append(prune_row(settings, lab, dom, backup))
    finally:
        lab.close()
    return rows


if __name__ == "__main__":
    from benchmarks.common import main_for
    main_for(run)
