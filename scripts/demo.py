"""The walk-through behind scripts/demo.sh (uses the test lab to make a real domain):
snapshot + backup, list, status, verify, restore, prune, instant recovery (+ finalize on a
format-1 store)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.integration.test_guest import written_prefix  # noqa: E402
from tests.lab import MiB, DiskDef, Lab, image_bytes  # noqa: E402


def show(lab: Lab, *args: str) -> str:
    print(f"\n$ fibackup {' '.join(repr(a) if ' ' in a else a for a in args)}", flush=True)
    env = {**os.environ, "FIBACKUP_STATE_DIR": lab.state_dir}
    # one stream, as a terminal shows it: the messages (stderr) in order with the result
    completed = subprocess.run([sys.executable, "-m", "fibackup", *args], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sys.stdout.write(completed.stdout)
    if completed.returncode != 0:
        raise SystemExit(f"demo step failed with exit code {completed.returncode}")
    return completed.stdout


def main() -> None:
    keep = "--keep" in sys.argv
    lab = Lab()
    try:
        dom = lab.domain(disks=[DiskDef("vda", "qcow2", 64 * MiB), DiskDef("vdb", "raw", 32 * MiB)],
                         guest_cmdline="fib.writer=vdb fib.writer_delay=0.02")
        print(f"demo domain {dom.name} (tiny Linux guest writing records to vdb) in {lab.root}")
        dom.wait_console("FIBACKUP-WRITER STARTED")
        backup = lab.path("backup")
        for round_number in range(3):
            time.sleep(1)
            dom.write("vda", 0x41 + round_number, (8 + round_number) * MiB, 4 * MiB)
            show(lab, "snapshot", "-d", dom.name, "-b", backup, "--quiesce")
        show(lab, "list", "-b", backup)
        show(lab, "status", "-d", dom.name, "-b", backup)
        show(lab, "verify", "-b", backup)
        to = lab.path("restored")
        show(lab, "restore", "-d", dom.name, "-b", backup, "--to", to, "--at", "2", "--no-define")
        print(f"\nrestored chain: {sorted(os.listdir(to))}")
        vdb = image_bytes(os.path.join(to, [n for n in os.listdir(to) if n.startswith("vdb-")
                                             and n.endswith(".qcow2") and n.count("-") == 2][0]))
        count = written_prefix(vdb)
        print(f"vdb of restore point 2 holds the guest writer's records 0..{count - 1}, "
              f"in order, with nothing after them: {'consistent' if vdb[count * 4096:count * 4096 + 6] != b'FIBREC' else 'INCONSISTENT'}")
        show(lab, "prune", "-b", backup, "-d", dom.name, "--keep", "2")
        show(lab, "list", "-b", backup)
        instant = dom.name + "-instant"
        lab.forget_name(instant)
        show(lab, "restore", "-d", dom.name, "-b", backup, "--instant", "--as", instant,
             "--to", lab.path("instant"))
        with open(os.path.join(backup, "fibackup-store.json")) as handle:
            chunked = '"version": 3' in handle.read()
        if chunked:
            print("\n(a format-3 store: the instant copy was restored into --to first and runs "
                  "from its own files, so there is nothing to finalize)")
        else:
            show(lab, "restore", "--finalize", instant)
        if keep:
            print(f"\n--keep: domain {dom.name} and {lab.root} are left for you")
            lab.domains.clear()
            return
    finally:
        if not keep:
            lab.close()


if __name__ == "__main__":
    main()
