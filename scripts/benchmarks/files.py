"""File-level restore (issue 16): ``fibackup mount`` of a stored point against a bare
``guestmount`` of the same point restored to a local image, in the same run.

The disk: a sparse raw image of 20 GiB virtual size (--quick: 2 GiB) holding one ext4
filesystem on the whole disk, made by ``mke2fs -d`` from a tree with ``first.txt`` (a
small file) and ``big.bin``, 1 GiB (--quick: 64 MiB) of the host's real files
concatenated (stores.DATA_ROOTS, sorted).  It is the only disk of a shut-off throwaway
domain, backed up once into a format-3 directory store (and a copy on S3 when the RGW
of scripts/setup-s3.sh runs); the point is restored with ``restore --no-define`` to a
local standalone image for the baseline (untimed; qcow2 or raw, as restore writes it).

- **first read**: from the start of the mount command to the end of reading
  ``first.txt``: ``fibackup mount -d DOM -b STORE MP`` then ``MP/vda/disk/first.txt``,
  against ``guestmount --ro --format=FMT -a IMAGE -m /dev/sda MP`` then
  ``MP/first.txt``.  Target: at most 1.3x (local store); S3 reported against the same
  baseline.
- **1 GiB read**: reading ``big.bin`` once through each mount, right after it came up
  (cold: the page cache is dropped first; the appliance's cache is new).  Target: at
  least 0.8x the throughput.
Both run libguestfs with the same settings (``LIBGUESTFS_BACKEND=direct``, and
``force_tcg`` where the suite needs it); the tools alternate every repetition.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Callable

from benchmarks.common import (GiB, MiB, Row, Settings, drop_caches, remove, throughput_row,
                               time_ratio_row)
from benchmarks.stores import DATA_ROOTS, FS_TIME, FS_UUID

from tests.lab import DiskDef, Lab

GROUP = "files"
ENV = {"LIBGUESTFS_BACKEND": "direct",
       "LIBGUESTFS_BACKEND_SETTINGS": os.environ.get("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")}


def concatenated(roots: tuple[str, ...], amount: int, path: str) -> None:
    """``amount`` bytes of the host's files, in sorted order, into one file."""
    left = amount
    with open(path, "wb") as out:
        for root in roots:
            for top, dirs, names in os.walk(root):
                dirs.sort()
                for name in sorted(names):
                    source = os.path.join(top, name)
                    if left <= 0:
                        return
                    if os.path.islink(source) or not os.path.isfile(source):
                        continue
                    try:
                        with open(source, "rb") as handle:
                            data = handle.read(left)
                    except OSError:
                        continue
                    out.write(data)
                    left -= len(data)


def build_image(path: str, virtual: int, big: int, scratch: str) -> None:
    tree = os.path.join(scratch, "tree")
    os.makedirs(tree)
    with open(os.path.join(tree, "first.txt"), "w") as handle:
        handle.write("the first file\n")
    concatenated(DATA_ROOTS, big, os.path.join(tree, "big.bin"))
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-U", FS_UUID, "-E",
                    "lazy_itable_init=1,root_owner=0:0", "-d", tree, path,
                    f"{virtual // 1024}k"], check=True, env={**os.environ,
                                                           "E2FSPROGS_FAKE_TIME": FS_TIME})
    remove(tree)


def read_all(path: str) -> int:
    total = 0
    with open(path, "rb", buffering=0) as handle:
        while True:
            block = handle.read(4 * MiB)
            if not block:
                return total
            total += len(block)


class Mounts:
    def __init__(self, lab: Lab, domain: str, image: str, env: dict[str, str]) -> None:
        self.lab, self.domain, self.image, self.env = lab, domain, image, env
        self.mountpoint = lab.path("mnt")
        os.makedirs(self.mountpoint, exist_ok=True)

    def ours(self, store: str) -> Callable[[], str]:
        def mount() -> str:
            self.lab.cli("mount", "-d", self.domain, "-b", store, self.mountpoint,
                         env={**ENV, **self.env})
            return os.path.join(self.mountpoint, "vda", "disk")
        return mount

    def bare(self) -> str:
        image_format = "qcow2" if self.image.endswith(".qcow2") else "raw"
        subprocess.run(["guestmount", "--ro", f"--format={image_format}", "-a", self.image,
                        "-m", "/dev/sda",
                        self.mountpoint], check=True, env={**os.environ, **ENV})
        return self.mountpoint

    def end(self, ours: bool) -> None:
        if ours:
            self.lab.cli("umount", self.mountpoint)
        else:
            subprocess.run(["guestunmount", self.mountpoint], check=True)
            while os.path.ismount(self.mountpoint):
                time.sleep(0.05)


def measure(mounts: Mounts, mount: Callable[[], str], ours: bool) -> tuple[float, float]:
    """(seconds to the first file's bytes, seconds to read big.bin)."""
    drop_caches()
    start = time.perf_counter()
    base = mount()
    with open(os.path.join(base, "first.txt"), "rb") as handle:
        handle.read()
    first = time.perf_counter() - start
    drop_caches()
    start = time.perf_counter()
    read_all(os.path.join(base, "big.bin"))
    big = time.perf_counter() - start
    mounts.end(ours)
    return first, big


def s3_store(lab: Lab, local: str) -> tuple[str, dict[str, str], Callable[[], None]] | None:
    """A copy of ``local`` on the RGW when it runs: (location, env, cleanup)."""
    from benchmarks.format3 import cleaned, rgw_env
    env = rgw_env()
    if env is None:
        return None
    os.environ.update(env)
    from fibackup.store.s3.client import Settings as S3Settings, make_client
    client = make_client(S3Settings(endpoint_url=env["AWS_ENDPOINT_URL"]))
    bucket = f"fibenchfiles-{os.getpid()}"
    client.create_bucket(Bucket=bucket)
    location = f"s3://{bucket}/files"
    lab.cli("init", "-b", location, "--format", "3", env=env)
    lab.cli("copy", "--from", local, "--to", location, env=env)
    return location, env, lambda: cleaned(client, bucket, env, "", remove_bucket=True) and None


def run(settings: Settings) -> list[Row]:
    import libvirt
    libvirt.registerErrorHandler(lambda _context, _error: None, None)
    virtual, big = settings.size(20 * GiB, 2 * GiB), settings.size(1 * GiB, 64 * MiB)
    lab = Lab()
    cleanups: list[Callable[[], None]] = []
    try:
        dom = lab.domain(disks=(DiskDef("vda", "raw", MiB, model=False),), start=False)
        image = dom.image_path(dom.disks[0])
        remove(image)
        build_image(image, virtual, big, lab.root)
        store = lab.path("store")
        lab.cli("init", "-b", store, "--format", "3")
        lab.cli("snapshot", "-d", dom.name, "-b", store)
        restored = lab.cli("restore", "-d", dom.name, "-b", store, "--to", lab.path("restored"),
                           "--no-define", "--json").json()["disks"]["vda"]
        mounts = Mounts(lab, dom.name, restored, {})
        tools: dict[str, tuple[Callable[[], str], bool]] = {
            "fibackup": (mounts.ours(store), True), "guestmount": (mounts.bare, False)}
        remote = s3_store(lab, store)
        if remote is not None:
            cleanups.append(remote[2])
            s3_mounts = Mounts(lab, dom.name, restored, remote[1])
            tools["fibackup-s3"] = (s3_mounts.ours(remote[0]), True)
        first: dict[str, list[float]] = {name: [] for name in tools}
        reads: dict[str, list[float]] = {name: [] for name in tools}
        names = list(tools)
        for number in range(settings.repeat):
            for name in names[number % len(names):] + names[:number % len(names)]:
                mount, ours = tools[name]
                seconds, reading = measure(mounts, mount, ours)
                first[name].append(seconds)
                reads[name].append(reading)
        size = f"{virtual // GiB} GiB virtual, {big // MiB} MiB file"
        rows = [time_ratio_row(GROUP, "mount to first file read (local store)", first["fibackup"],
                               "guestmount", first["guestmount"], at_most=1.3, note=size),
                throughput_row(GROUP, "read a file through the mount (local store)",
                               reads["fibackup"], "guestmount", reads["guestmount"],
                               at_least=0.8, note=size)]
        if "fibackup-s3" in tools:
            rows += [time_ratio_row(GROUP, "mount to first file read (S3 store)",
                                    first["fibackup-s3"], "guestmount", first["guestmount"],
                                    note=size + "; reported"),
                     throughput_row(GROUP, "read a file through the mount (S3 store)",
                                    reads["fibackup-s3"], "guestmount", reads["guestmount"],
                                    note=size + "; reported")]
        return rows
    finally:
        for record in lab.cli("mount", "--list", "--json", expect=None).json() or []:
            lab.cli("umount", record["mountpoint"], expect=None)
        for cleanup in cleanups:
            cleanup()
        lab.close()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks.common import main_for
    main_for(run)
