"""Bytes the next backup copies after each kind of consolidation.

For each method: a running domain with a 1 GiB raw disk holding 256 MiB of data,
a first full backup, two rounds of (16 MiB written, snapshot -b), then
`fibackup consolidate --method M`, 16 MiB more written and one more snapshot -b.
Prints the bytes that last backup copied and the ratio to the bytes written
since the previous backup: about 1 means incremental, about 16 means a full copy
(the 256 MiB of data).  "none" is the baseline without a consolidation.
Usage: .venv/bin/python scripts/bench_consolidate.py [--methods none,commit,active,pull]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.lab import MiB, Lab  # noqa: E402

GiB = 1024 * MiB
CHANGE = 16 * MiB


def cli(lab: Lab, *args: str) -> list[dict]:
    env = {**os.environ, "FIBACKUP_STATE_DIR": lab.state_dir}
    done = subprocess.run([sys.executable, "-m", "fibackup", *args, "--json", "-q"], env=env,
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def measure(method: str) -> tuple[int, float]:
    lab = Lab()
    try:
        dom = lab.data_domain(GiB, 256 * MiB)
        backup = lab.path("backup")
        cli(lab, "snapshot", "-d", dom.name, "-b", backup)
        for number in range(2):
            dom.write("vda", 0x20 + number, number * CHANGE, CHANGE)
            cli(lab, "snapshot", "-d", dom.name, "-b", backup)
        seconds = 0.0
        if method != "none":
            start = time.perf_counter()
            cli(lab, "consolidate", "-d", dom.name, "--method", method)
            seconds = time.perf_counter() - start
        dom.write("vda", 0x30, 4 * CHANGE, CHANGE)
        copied = cli(lab, "snapshot", "-d", dom.name, "-b", backup)[0]["bytes_copied"]
        return copied, seconds
    finally:
        lab.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="none,commit,active,pull")
    args = parser.parse_args()
    print(f"{'method':8} {'next backup copied':>20} {'x change':>9} {'consolidate s':>14}")
    for method in args.methods.split(","):
        copied, seconds = measure(method)
        print(f"{method:8} {copied / MiB:>16.1f} MiB {copied / CHANGE:>9.2f} {seconds:>14.2f}")


if __name__ == "__main__":
    main()
