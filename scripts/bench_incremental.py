"""Cost of an incremental `fibackup snapshot -b` against the size of the disk.

For each disk size: a running domain with a sparse raw disk holding 256 MiB of
data, a first full backup, then --repeat rounds of (64 MiB written through the
guest's block backend, incremental snapshot -b).  Prints the median wall time of
the incremental runs and the ratio to the smallest disk: it should stay near
1.0 (a run costs what changed, not what the disk holds).
Usage: .venv/bin/python scripts/bench_incremental.py [--sizes-gib 1,64] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.lab import MiB, Lab  # noqa: E402

GiB = 1024 * MiB


def run(lab: Lab, *args: str) -> float:
    env = {**os.environ, "FIBACKUP_STATE_DIR": lab.state_dir}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fibackup", *args, "-q"], env=env, check=True)
    return time.perf_counter() - start


def measure(size: int, repeat: int) -> float:
    lab = Lab()
    try:
        dom = lab.data_domain(size, 256 * MiB)
        backup = lab.path("backup")
        run(lab, "snapshot", "-d", dom.name, "-b", backup)
        times = []
        for round_number in range(repeat):
            offset = (round_number * 64 * MiB) % (size - 64 * MiB)
            hmp = (f'qemu-io -d /machine/peripheral/{dom.alias("vda")}/virtio-backend '
                   f'"write -P {round_number + 2} {offset} {64 * MiB}"')
            subprocess.run(["virsh", "-q", "qemu-monitor-command", dom.name, "--hmp", hmp],
                           check=True, capture_output=True)
            times.append(run(lab, "snapshot", "-d", dom.name, "-b", backup))
        return statistics.median(times)
    finally:
        lab.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes-gib", default="1,64")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(value) for value in args.sizes_gib.split(",")]
    results = [(size, measure(size * GiB, args.repeat)) for size in sizes]
    base = results[0][1]
    for size, seconds in results:
        print(f"disk {size:4d} GiB, 64 MiB changed: incremental run {seconds:.2f}s "
              f"(ratio {seconds / base:.2f} to the {sizes[0]} GiB disk)")


if __name__ == "__main__":
    main()
