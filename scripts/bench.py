"""fibackup's benchmark: every comparison runs in this one run, as ratios against a baseline.

Groups (scripts/benchmarks/, docs/PERFORMANCE.md explains each target):
  copy      P1 dense copy+hash vs cp+sync, P2 sparse base, page cache growth, hashing vs xxhsum
  chains    P3 incremental cost vs disk size, P4 10-layer restore vs cp+sync, verify vs xxhsum,
            start-up path (imports, libvirt round trips)
  snapshot  P5 guest write stall during a 4-disk snapshot, snapshot call vs virsh, consolidation
            vs virsh blockcommit
  peers     full and incremental runs vs fi-backup's method and virtnbdbackup (installed from
            Debian's packages when missing)
  s3        upload and download of a layer against the real Ceph RGW vs plain boto3
            upload_file/download_file of the same bytes (scripts/setup-s3.sh)
  store     an encrypted format-3 store vs restic (zstd) and borg (lz4), same ext4 disk of
            the host's files: full and incremental times, store size after both (restic
            and borgbackup installed from Debian's packages when missing)
  format3   format 3 vs format 1 (init --format 1: layer copies) on the same disks: full
            backup and restore throughput (random data, host files; plain and encrypted),
            P3 incremental time and bytes stored per chunk size (1M, 2M, 4M), P2 sparse
            base, S3 backup and restore vs boto3 (when the RGW runs), prune's bytes written
  files     fibackup mount of a 20 GiB-virtual point (local and S3) vs a bare guestmount of
            the same point restored to a local image: time to the first file read, and
            reading a 1 GiB file
  instant   restore --instant of the tiny guest from a format-3 store on S3 vs from a local
            format-3 directory: time to the guest ready (its disk read over the served disk)
Stores are made by `fibackup init --format N` (FIBACKUP_CONFIG=/dev/null), never by
`snapshot -b` into an empty directory (which makes format 3 now): chains and peers keep
measuring format 1, as copy and s3 do (they call format 1's copy engine in this process).
Each comparison alternates the tools over --repeat rounds and takes medians; files are
evicted from the page cache before each timed run (needs root).  Nothing is asserted: the
table says which targets were met; --quick shrinks every size (CI runs it to prove the
benchmark works, not to judge speed).

Usage: .venv/bin/python scripts/bench.py [--quick] [--repeat N] [--only GROUP,...]
                                          [--json FILE]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchmarks.common import Row, Settings, print_rows  # noqa: E402

GROUPS = ("copy", "chains", "snapshot", "peers", "s3", "store", "format3", "files",
          "instant")
MODULES = {"copy": "benchmarks.copying", "chains": "benchmarks.chains",
           "snapshot": "benchmarks.stall", "peers": "benchmarks.peers",
           "s3": "benchmarks.objects", "store": "benchmarks.stores",
           "format3": "benchmarks.format3", "files": "benchmarks.files",
           "instant": "benchmarks.instant"}


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    def first_line(path: str, prefix: str) -> str:
        try:
            with open(path) as handle:
                return next((line.split(":", 1)[1].strip() for line in handle
                             if line.startswith(prefix)), "")
        except OSError:
            return ""
    versions = {}
    for tool in ("qemu-img", "virsh"):
        import subprocess
        done = subprocess.run([tool, "--version"], capture_output=True, text=True)
        versions[tool] = done.stdout.splitlines()[0] if done.returncode == 0 else "?"
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "kernel": platform.release(), "python": platform.python_version(),
            "cpu": first_line("/proc/cpuinfo", "model name"), "cpus": os.cpu_count(),
            "memory": first_line("/proc/meminfo", "MemTotal"), "kvm": os.access("/dev/kvm", os.W_OK),
            **versions}


def run_group(name: str, settings: Settings) -> list[Row]:
    import importlib
    module = importlib.import_module(MODULES[name])
    start = time.perf_counter()
    try:
        rows = module.run(settings)
    except Exception as error:  # noqa: BLE001 - one group failing must not hide the others
        traceback.print_exc()
        rows = [Row(name, "group failed", 0.0, "", 0.0, 0.0, met=False, note=str(error)[:300])]
    print(f"bench: group {name} took {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
    parser.add_argument("--repeat", type=int, default=None,
                        help="rounds per comparison [default: 3, --quick: 1]")
    parser.add_argument("--only", default=",".join(GROUPS), help="comma-separated groups")
    parser.add_argument("--json", metavar="FILE", help="also write the rows and the machine")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root (libvirt domains, dropping the page cache)", file=sys.stderr)
        return 2
    groups = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in groups if name not in MODULES]
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    import libvirt
    libvirt.registerErrorHandler(lambda _context, _error: None, None)  # errors are raised anyway
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    settings = Settings(quick=args.quick, repeat=max(1, repeat))
    rows = [row for name in groups for row in run_group(name, settings)]
    print_rows(rows)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": machine(), "quick": args.quick, "repeat": settings.repeat,
                       "rows": [row.to_json() for row in rows]}, handle, indent=2)
    failed = [row for row in rows if row.case == "group failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
