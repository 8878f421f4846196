"""Instant recovery from served disks (issue 16): the tiny real guest started with
``restore --instant`` from a format-3 store on S3 against the same point in a local
format-3 directory, in the same run.

The time runs from the start of ``fibackup restore --instant`` until the guest's serial
console shows both ``FIBACKUP-GUEST READY`` (its init ran, its agent listens) and
``FIBACKUP-DISKS-DONE`` (it read and hashed the first 16 MiB of its disk,
``fib.hashbytes``): the tiny guest boots a host kernel and initramfs, so its disk's
bytes are what comes through nbdkit from the store.  The S3 copy is made with
``fibackup copy`` (the RGW of scripts/setup-s3.sh must run; without it the group
reports nothing).
Each round removes the domain and releases its servers and pin
(``restore --finalize NAME`` of an undefined domain).  Reported: the ratio S3/local.
"""
from __future__ import annotations

import os
import sys
import time
import uuid

from benchmarks.common import MiB, Row, Settings, time_ratio_row

from tests.lab import PREFIX, DiskDef, Lab

GROUP = "instant"
READY = ("FIBACKUP-GUEST READY", "FIBACKUP-DISKS-DONE")
TIMEOUT = 300.0


def start_and_wait(lab: Lab, source: str, store: str, env: dict[str, str],
                   console_dir: str) -> float:
    """Seconds from ``restore --instant`` to the guest's READY lines; then it is removed."""
    name = f"{PREFIX}{uuid.uuid4().hex[:8]}"
    lab.forget_name(name)
    began = time.perf_counter()
    lab.cli("restore", "-d", source, "-b", store, "--instant", "--as", name,
            "--to", lab.path(f"to-{name}"), env=env)
    console = os.path.join(console_dir, f"{name}.console.log")
    deadline = began + TIMEOUT
    while time.perf_counter() < deadline:
        try:
            with open(console, errors="replace") as handle:
                text = handle.read()
            if all(line in text for line in READY):
                break
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    else:
        raise RuntimeError(f"{name} did not come up within {TIMEOUT:.0f} s")
    seconds = time.perf_counter() - began
    domain = lab.conn.lookupByName(name)
    domain.destroy()
    domain.undefine()
    lab.cli("restore", "--finalize", name, env=env)         # releases servers and pin
    return seconds


def run(settings: Settings) -> list[Row]:
    import libvirt
    from benchmarks.files import s3_store
    libvirt.registerErrorHandler(lambda _context, _error: None, None)
    lab = Lab()
    cleanups = []
    try:
        dom = lab.domain(disks=[DiskDef("vda", "qcow2", 16 * MiB)],
                         guest_cmdline=f"fib.hashbytes={16 * MiB}")
        dom.write("vda", 0x24, 4 * MiB, 4 * MiB)
        store = lab.path("store")
        lab.cli("init", "-b", store, "--format", "3")
        lab.cli("snapshot", "-d", dom.name, "-b", store)
        remote = s3_store(lab, store)
        if remote is None:
            return []
        cleanups.append(remote[2])
        places = {"local": (store, {}), "s3": (remote[0], remote[1])}
        times: dict[str, list[float]] = {name: [] for name in places}
        order = list(places)
        for number in range(settings.repeat):
            for name in order[number % 2:] + order[:number % 2]:
                location, env = places[name]
                times[name].append(start_and_wait(lab, dom.name, location, env, dom.directory))
        return [time_ratio_row(GROUP, "instant recovery to guest ready (S3 vs local format 3)",
                               times["s3"], "local format-3 directory", times["local"],
                               note="tiny guest, 16 MiB disk read at boot; reported")]
    finally:
        for cleanup in cleanups:
            cleanup()
        lab.close()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks.common import main_for
    main_for(run)
