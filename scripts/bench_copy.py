"""Copy + checksum throughput of fibackup's engine against `cp` + `sync` of the same file.

Ratios only, measured in one run (alternating, median of --repeat runs, page cache
dropped before each run when running as root):
  dense:  a frozen layer full of data          (fibackup copy+hash vs cp; sync)
  sparse: a raw base, mostly holes             (fibackup vs cp --sparse=always; sync)
Usage: .venv/bin/python scripts/bench_copy.py [--size-mib 1024] [--repeat 3] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fibackup.store.chunks import scan_file  # noqa: E402

MiB = 1024 * 1024


def make_dense(path: str, size: int) -> None:
    block = os.urandom(4 * MiB)
    with open(path, "wb") as handle:
        for offset in range(0, size, len(block)):
            handle.write(block[: min(len(block), size - offset)][::-1] if offset % 8 else block)
        handle.flush()
        os.fsync(handle.fileno())


def make_sparse(path: str, size: int, data: int) -> None:
    with open(path, "wb") as handle:
        handle.truncate(size)
        step = size // 16
        chunk = data // 16
        for index in range(16):
            handle.seek(index * step)
            handle.write(os.urandom(chunk))
        os.fsync(handle.fileno())


def drop_caches() -> bool:
    """Start each run cold, as a nightly backup reads a frozen layer (needs root)."""
    subprocess.run(["sync"], check=True)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("3\n")
        return True
    except OSError:
        return False


def timed(action) -> float:
    drop_caches()
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def run_cp(src: str, dst: str, sparse: bool) -> None:
    args = ["cp", "--sparse=always" if sparse else "--sparse=auto", src, dst]
    subprocess.run(args, check=True)
    subprocess.run(["sync", dst], check=True)


def compare(name: str, src: str, scratch: str, repeat: int, sparse: bool) -> dict[str, float]:
    ours, theirs = [], []
    for round_number in range(repeat):
        for label in (("fib", "cp") if round_number % 2 == 0 else ("cp", "fib")):
            dst = os.path.join(scratch, f"{label}-{round_number}")
            if label == "fib":
                ours.append(timed(lambda: scan_file(src, dst)))
            else:
                theirs.append(timed(lambda: run_cp(src, dst, sparse)))
            os.unlink(dst)
    fib, cp = statistics.median(ours), statistics.median(theirs)
    size = os.path.getsize(src)
    return {"case": name, "bytes": size, "fibackup_s": round(fib, 3), "cp_sync_s": round(cp, 3),
            "throughput_ratio": round(cp / fib, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
        dense = os.path.join(scratch, "dense.img")
        sparse = os.path.join(scratch, "sparse.img")
        make_dense(dense, size)
        make_sparse(sparse, 8 * size, size // 4)
        rows = [compare("dense", dense, scratch, args.repeat, False),
                compare("sparse", sparse, scratch, args.repeat, True)]
    for row in rows:
        print(f"{row['case']:7s} {row['bytes'] / MiB:8.0f} MiB  fibackup {row['fibackup_s']:.3f}s  "
              f"cp+sync {row['cp_sync_s']:.3f}s  throughput ratio {row['throughput_ratio']:.2f}x")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
