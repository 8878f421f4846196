"""Format 3 (issue 15): the chunk store against format 1's plain copy, on the same disks.

Every store is made untimed by ``fibackup init -b STORE --format 1|3 [OPTIONS]``
(FIBACKUP_CONFIG=/dev/null: built-in defaults, so format 3 means 4 MiB chunks and zstd:2
unless a row says otherwise).  Every disk is a raw image prepared once, and every domain
is a fresh shut-off throwaway domain (tests.lab) whose disk is a hard link to it, so each
full backup starts from the same one-layer chain; every timed run starts with its images
and stores evicted from the page cache, and fibackup fsyncs what it writes (both
formats).  Each comparison rotates its order every repetition; medians are compared.

Disks: *random*, P1's incompressible data (copying.make_dense: 2 GiB; --quick 256 MiB);
*files*, the host's files in an ext4 filesystem built by ``mke2fs -d`` (stores.py's
``build_filesystem``: 700 MiB of /usr/share, /usr/include, /usr/lib/python3 in a 1.25 GiB
raw disk; --quick 60 MiB in 192 MiB).

- copy: ``snapshot -b`` (full) into a format-3 store against a format-1 store (byte copies
  of the layer files: today's plain copy): throughput at least 0.7x on random data, 0.4x
  on files (it compresses them); the encrypted store (``--encrypt``) as extra rows with the
  same targets.
- restore: ``restore --no-define`` of those full points, format 3 against format 1: at
  least 0.8x the throughput (encrypted as an extra row).
- P3 for format 3: an incremental ``snapshot -b`` after 64 MiB (--quick 16 MiB) of 64 KiB
  writes of random data at random 64 KiB-aligned offsets within the data of a 64 GiB raw
  disk (--quick 8 GiB) holding 2 GiB (--quick 256 MiB) of random data in 16 extents, for
  stores of 1M, 2M and 4M chunks (``init --chunk-size``) against format 1: time, and bytes
  stored (``bytes_new`` of ``fibackup list --json``; du of the store in the note).  Every
  write lands in data, so every chunk it touches is stored again whole: what the chunk
  size costs a small change.  No target: the rows say which chunk size is better.
- P2 for format 3: a full backup of an 8 GiB raw disk holding 256 MiB of data in 16
  extents (--quick 2 GiB, 64 MiB) against one of a dense 256 MiB raw disk: at most 1.1x.
- S3 (only when the RGW of scripts/setup-s3.sh already runs; else one row says it was
  skipped): a full ``snapshot -b s3://BUCKET/PREFIX`` into a format-3 store against boto3's
  ``upload_file`` of the raw image, and ``restore`` from it against ``download_file`` +
  fsync, on a smaller files disk (256 MiB of files in 512 MiB; --quick the one above) and
  on 256 MiB (--quick 64 MiB) of random data: logical throughput (the disk's virtual size
  per second) at least 0.9x.  The RGW is shared with the test suite and keeps its objects
  in a 3 GiB memstore: a repetition's objects are removed before the next one starts
  (waiting for the RGW when it does not answer), so at most about 700 MiB is held.  A repetition during
  which the RGW stops answering (the test suite's cut-connection tests stop it for a
  moment) is run again once it answers, and the note says so.
- prune: 8 nightly points (a full backup of 512 MiB, --quick 64 MiB, of random data, then
  7 nights of 8 MiB, --quick 1 MiB, in 256 KiB writes: a quarter of the chunks change
  each night) in a format-3 store and a format-1 one; ``prune -d DOM --keep 3
  --no-libvirt`` of a copy of each: the bytes the prune process wrote (write_bytes, from
  getrusage of the reaped child: pages it dirtied, file data and the filesystem metadata
  its deletes dirty) and the files it created or changed in the store and in its state
  directory.  Target: no chunk, index or other data written in the store (only its run
  log; its lock objects come and go); format 1, which merges, is the baseline.

The stages run in that order; FIBACKUP_BENCH_FORMAT3="S3,prune" runs only the stages named
("copy random", "copy files", "P3", "P2", "S3", "prune").
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "benchmarks"

from benchmarks.common import (GiB, MiB, Row, Settings, evict, fibackup, init_store,
                               remove, rounded, run_command, throughput_row, time_ratio_row,
                               timed)
from benchmarks.copying import make_dense, make_sparse
from benchmarks.peers import human, rotated
from tests.lab import DiskDef, Lab, LabDomain

GROUP = "format3"
TARGET = "vda"
V1 = "format 1"
V3 = "format 3"
V3_ENC = "format 3 encrypted"
KINDS: dict[str, tuple[int, tuple[str, ...]]] = {V1: (1, ()), V3: (3, ()), V3_ENC: (3, ("--encrypt",))}
"""Each store kind: its format and its other ``init`` options."""
PASSWORD = "fibackup-bench-format3\n"
CHUNK_SIZES = ("1M", "2M", "4M")
NIGHTS = 8
KEEP = 3
BOTO3 = "boto3"


# -- disks, domains, stores ---------------------------------------------------------


@dataclass
class Disk:
    """A prepared raw image; every domain's disk is a hard link to it."""

    label: str
    path: str
    describe: str

    @property
    def virtual(self) -> int:
        return os.path.getsize(self.path)

    @property
    def data(self) -> int:
        return allocated(self.path)


def allocated(path: str) -> int:
    """Bytes allocated by a file, or by every file below a directory."""
    if not os.path.isdir(path):
        return os.stat(path).st_blocks * 512
    return sum(os.lstat(os.path.join(top, name)).st_blocks * 512
               for top, _dirs, names in os.walk(path) for name in names)


class Disks:
    """The images of one run, made once each, in the scratch directory."""

    def __init__(self, settings: Settings, scratch: str) -> None:
        self.settings = settings
        self.scratch = scratch
        self.made: dict[str, Disk] = {}

    def random(self, size: int) -> Disk:
        key = f"random-{size}"
        if key not in self.made:
            path = os.path.join(self.scratch, f"{key}.raw")
            make_dense(path, size)
            self.made[key] = Disk("random", path, f"{human(size)} of random data, raw")
        return self.made[key]

    def files(self, disk: int = 0, data: int = 0) -> Disk:
        """The host's files in ext4 (default: 700 MiB in 1.25 GiB, --quick 60 in 192 MiB)."""
        disk = disk or self.settings.size(1280 * MiB, 192 * MiB)
        data = data or self.settings.size(700 * MiB, 60 * MiB)
        key = f"files-{disk}-{data}"
        if key not in self.made:
            from benchmarks.stores import build_filesystem
            path, count, total = build_filesystem(disk, data, self.scratch, f"{key}.raw")
            self.made[key] = Disk("files", path, f"{human(total)} in {count} host files, "
                                  f"ext4 in a {human(disk)} raw disk "
                                  f"({human(allocated(path))} allocated)")
        return self.made[key]

    def sparse(self, virtual: int, data: int) -> Disk:
        key = f"sparse-{virtual}-{data}"
        if key not in self.made:
            path = os.path.join(self.scratch, f"{key}.raw")
            make_sparse(path, virtual, data)
            self.made[key] = Disk("sparse", path, f"{human(data)} of random data in 16 extents "
                                  f"of a {human(virtual)} raw disk")
        return self.made[key]


class Bench:
    """One lab: shut-off domains over hard links to prepared disks, stores, the CLI."""

    def __init__(self, env: Optional[dict[str, str]] = None) -> None:
        self.lab = Lab()
        self.password = self.lab.path("password")
        with open(os.open(self.password, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
            handle.write(PASSWORD)
        self.env = {"FIBACKUP_PASSWORD_FILE": self.password, **(env or {})}
        self.stores = 0

    def cli(self, *args: str, quiet: bool = True) -> str:
        return fibackup(self.lab.state_dir, *args, env=self.env, quiet=quiet)

    def domain(self, disk: Disk) -> LabDomain:
        dom = self.lab.domain(disks=[DiskDef(TARGET, "raw", disk.virtual, model=False)],
                              start=False)
        image = dom.image_path(dom.disks[0])
        os.unlink(image)
        os.link(disk.path, image)
        return dom

    def store(self, store_format: int, *options: str, location: Optional[str] = None) -> str:
        self.stores += 1
        if location is None:
            os.makedirs(self.lab.path("stores"), exist_ok=True)
            location = self.lab.path("stores", f"{self.stores:03d}")
        init_store(self.lab.state_dir, location, store_format, *options, env=self.env)
        return location

    def kind(self, kind: str) -> str:
        store_format, options = KINDS[kind]
        return self.store(store_format, *options)

    def snapshot(self, dom: LabDomain, store: str) -> dict:
        (result,) = json.loads(self.cli("snapshot", "-d", dom.name, "-b", store, "--json"))
        return result

    def restore(self, dom: LabDomain, store: str, to: str) -> None:
        self.cli("restore", "-d", dom.name, "-b", store, "--to", to, "--no-define")

    def newest_point(self, dom: LabDomain, store: str) -> dict:
        points = json.loads(self.cli("list", "-b", store, "-d", dom.name, "--json", quiet=False))
        return max(points, key=lambda point: point["seq"])

    def close(self) -> None:
        import libvirt
        try:
            alive = self.lab.conn.isAlive()
        except libvirt.libvirtError:
            alive = False
        if not alive and libvirt_answers(120):      # libvirtd restarted meanwhile
            self.lab.reconnect()
        self.lab.close()


@contextlib.contextmanager
def bench_lab(env: Optional[dict[str, str]] = None) -> Iterator[Bench]:
    bench = Bench(env)
    try:
        yield bench
    finally:
        bench.close()


def make_writes(scratch: str, extents: list[tuple[int, int]], total: int, size: int,
                seed: int) -> list[tuple[int, str]]:
    """``total`` bytes of random data in writes of ``size`` bytes at distinct random
    ``size``-aligned offsets inside ``extents``: (offset, file holding its data)."""
    slots = [start + number * size for start, length in extents
             for number in range(length // size)]
    offsets = sorted(random.Random(seed).sample(slots, total // size))
    directory = os.path.join(scratch, f"writes-{seed}")
    remove(directory)
    os.makedirs(directory)
    writes = []
    for offset in offsets:
        piece = os.path.join(directory, str(offset))
        with open(piece, "wb") as handle:
            handle.write(os.urandom(size))
        writes.append((offset, piece))
    return writes


def apply_writes(dom: LabDomain, writes: list[tuple[int, str]]) -> None:
    """The writes, as the guest's, into the shut-off domain's top image (qemu-io)."""
    disk = dom.live_xml_inactive_disk(TARGET)
    top, fmt = disk.find("source").get("file"), disk.find("driver").get("type")
    args = ["qemu-io", "-f", fmt]
    for offset, piece in writes:
        args += ["-c", f"write -q -s {piece} {offset} {os.path.getsize(piece)}"]
    run_command([*args, top])


def mib_s(size: int, seconds: list[float]) -> str:
    return f"{size / MiB / statistics.median(seconds):.0f}"


def median_phase(results: list[dict], name: str) -> float:
    values = [float(result["timings"][name]) for result in results if name in result.get("timings", {})]
    return statistics.median(values) if values else 0.0


# -- a, b: full backup and restore, format 3 against format 1 ----------------------------


def copy_rows(settings: Settings, disk: Disk, backup_target: float) -> list[Row]:
    backups: dict[str, list[float]] = {kind: [] for kind in KINDS}
    restores: dict[str, list[float]] = {kind: [] for kind in KINDS}
    stored: dict[str, list[int]] = {kind: [] for kind in KINDS}
    outputs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    for number in range(settings.repeat):
        with bench_lab() as bench:
            subjects = {kind: (bench.domain(disk), bench.kind(kind)) for kind in KINDS}
            for kind in rotated(tuple(KINDS), number):
                dom, store = subjects[kind]
                backups[kind].append(timed(
                    lambda: outputs[kind].append(bench.snapshot(dom, store)),
                    cold=[disk.path, dom.directory, store]))
                stored[kind].append(allocated(store))
            for kind in rotated(tuple(KINDS), number):
                dom, store = subjects[kind]
                to = bench.lab.path("restored")
                restores[kind].append(timed(lambda: bench.restore(dom, store, to), cold=[store]))
                remove(to)
    data = disk.data
    common = f"{disk.describe}; MiB/s of the {human(data)} of data; cold, median of {settings.repeat}"

    def stored_note(kind: str) -> str:
        size = statistics.median(stored[kind])
        return (f"stored {human(size)} (data/stored {data / size:.2f}x), format 1 "
                f"{human(statistics.median(stored[V1]))}; fibackup's own backup phase "
                f"{median_phase(outputs[kind], 'backup'):.2f}s vs "
                f"{median_phase(outputs[V1], 'backup'):.2f}s")

    rows = []
    for kind, extra in ((V3, ""), (V3_ENC, " (extra row)")):
        rows.append(throughput_row(
            GROUP, f"full backup, {kind} vs format 1, {disk.label}{extra}", backups[kind],
            "format 1 (plain copy)", backups[V1], at_least=backup_target,
            note=f"{mib_s(data, backups[kind])} vs {mib_s(data, backups[V1])} MiB/s; "
                 f"{stored_note(kind)}; {common}"))
    for kind, extra in ((V3, ""), (V3_ENC, " (extra row)")):
        rows.append(throughput_row(
            GROUP, f"restore of that full point, {kind} vs format 1, {disk.label}{extra}",
            restores[kind], "format 1 restore", restores[V1], at_least=0.8,
            note=f"{mib_s(data, restores[kind])} vs {mib_s(data, restores[V1])} MiB/s; "
                 f"restore --no-define, {human(disk.virtual)} raw disk written; {common}"))
    return rows


# -- c: P3, incremental after scattered small writes, per chunk size ----------------------


def incremental_rows(settings: Settings, disks: Disks) -> list[Row]:
    virtual = settings.size(64 * GiB, 8 * GiB)
    data = settings.size(2 * GiB, 256 * MiB)
    change = settings.size(64 * MiB, 16 * MiB)
    write = 64 * 1024
    disk = disks.sparse(virtual, data)
    extents = [(index * (virtual // 16), data // 16) for index in range(16)]
    labels = (V1, *(f"{V3}, {size} chunks" for size in CHUNK_SIZES))
    times: dict[str, list[float]] = {label: [] for label in labels}
    stored: dict[str, list[float]] = {label: [] for label in labels}
    grown: dict[str, list[int]] = {label: [] for label in labels}
    read: dict[str, list[int]] = {label: [] for label in labels}
    with bench_lab() as bench:
        subjects = {V1: (bench.domain(disk), bench.store(1))}
        for size in CHUNK_SIZES:
            subjects[f"{V3}, {size} chunks"] = (bench.domain(disk),
                                                bench.store(3, "--chunk-size", size))
        for dom, store in subjects.values():
            bench.snapshot(dom, store)                          # the full backups, untimed
        for number in range(settings.repeat):
            writes = make_writes(disks.scratch, extents, change, write, seed=number)
            for dom, _store in subjects.values():
                apply_writes(dom, writes)
            remove(os.path.dirname(writes[0][1]))
            for label in rotated(labels, number):
                dom, store = subjects[label]
                before = allocated(store)
                result: dict = {}
                times[label].append(timed(lambda: result.update(bench.snapshot(dom, store)),
                                          cold=[disk.path, dom.directory, store]))
                grown[label].append(allocated(store) - before)
                read[label].append(int(result["bytes_copied"]))
                stored[label].append(int(bench.newest_point(dom, store)["bytes_new"]))
    case = (f"P3 incremental, {human(change)} in 64 KiB writes on a {human(virtual)} disk "
            f"holding {human(data)}")
    common = f"random data; cold, median of {settings.repeat}"
    rows = []
    for size in CHUNK_SIZES:
        label = f"{V3}, {size} chunks"
        rows.append(time_ratio_row(
            GROUP, f"{case}: {label} vs format 1, time", times[label], "format 1",
            times[V1], note=f"read {human(statistics.median(read[label]))} of the view "
                            f"(format 1 copied {human(statistics.median(read[V1]))}); {common}"))
    for size in CHUNK_SIZES:
        label = f"{V3}, {size} chunks"
        row = time_ratio_row(
            GROUP, f"{case}: {label} vs format 1, bytes stored (MiB)", stored[label],
            "format 1", stored[V1],
            note=f"bytes_new of the point; du grew {human(statistics.median(grown[label]))} "
                 f"(format 1 {human(statistics.median(grown[V1]))}); {common}")
        row.ours_s = round(statistics.median(stored[label]) / MiB, 1)
        row.baseline_s = round(statistics.median(stored[V1]) / MiB, 1)
        rows.append(row)
    medians = {size: (statistics.median(times[f"{V3}, {size} chunks"]),
                      statistics.median(stored[f"{V3}, {size} chunks"])) for size in CHUNK_SIZES}
    fastest = min(CHUNK_SIZES, key=lambda size: medians[size][0])
    smallest = min(CHUNK_SIZES, key=lambda size: medians[size][1])
    small, large = f"{V3}, {CHUNK_SIZES[0]} chunks", f"{V3}, {CHUNK_SIZES[-1]} chunks"
    summary = time_ratio_row(
        GROUP, f"{case}: {CHUNK_SIZES[0]} vs {CHUNK_SIZES[-1]} chunks, time", times[small],
        f"{CHUNK_SIZES[-1]} chunks", times[large],
        note=f"best for this small change: {fastest} by time, {smallest} by bytes stored "
             f"({', '.join(f'{size} {medians[size][0]:.2f}s {human(medians[size][1])}' for size in CHUNK_SIZES)})")
    return rows + [summary]


# -- d: P2, sparse raw base --------------------------------------------------------------


def sparse_row(settings: Settings, disks: Disks) -> Row:
    data = settings.size(256 * MiB, 64 * MiB)
    sparse = disks.sparse(settings.size(8 * GiB, 2 * GiB), data)
    dense = disks.random(data)
    subjects = {"sparse": sparse, "dense": dense}
    times: dict[str, list[float]] = {label: [] for label in subjects}
    read: dict[str, list[int]] = {label: [] for label in subjects}
    for number in range(settings.repeat):
        with bench_lab() as bench:
            for label in rotated(tuple(subjects), number):
                dom, store = bench.domain(subjects[label]), bench.store(3)
                result: dict = {}
                times[label].append(timed(lambda: result.update(bench.snapshot(dom, store)),
                                          cold=[subjects[label].path, dom.directory, store]))
                read[label].append(int(result["bytes_copied"]))
    return time_ratio_row(
        GROUP, f"P2 sparse base, format 3 full: {human(sparse.virtual)} raw holding "
               f"{human(data)}", times["sparse"], f"format 3 full of {human(data)} dense",
        times["dense"], at_most=1.1,
        note=f"read {human(statistics.median(read['sparse']))} of the sparse disk's view; "
             f"cold, median of {settings.repeat}")


# -- e: S3 -------------------------------------------------------------------------------


def rgw_env() -> Optional[dict[str, str]]:
    """The RGW's settings when scripts/setup-s3.sh's RGW runs now (never started here)."""
    from tests import s3lab
    done = subprocess.run(["bash", s3lab.SETUP, "--status"], capture_output=True, timeout=120)
    if done.returncode != 0:
        return None
    directory = os.environ.get("FIBACKUP_RGW_DIR", "/var/tmp/fibackup-rgw")
    env = {}
    with open(os.path.join(directory, "env")) as handle:
        for line in handle:
            key, _sep, value = line.strip().removeprefix("export ").partition("=")
            if key:
                env[key] = value
    return env


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def s3_rows(settings: Settings, disks: list[Disk]) -> list[Row]:
    env = rgw_env()
    if env is None:
        return [Row(GROUP, "S3: format-3 backup and restore vs boto3", 0.0, BOTO3, 0.0, 0.0,
                    note="skipped: the RGW of scripts/setup-s3.sh is not running "
                         "(start it with scripts/setup-s3.sh, then run this group again)")]
    with environment(env):
        from fibackup.store.s3 import Settings as S3Settings, make_client
        client = make_client(S3Settings(endpoint_url=env["AWS_ENDPOINT_URL"]))
        bucket = f"fibench3-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)
        try:
            return [row for disk in disks
                    for row in s3_disk_rows(settings, disk, client, bucket, env)]
        finally:
            if not cleaned(client, bucket, env, "", remove_bucket=True):
                # not an outage message: run_stage must not fill the RGW further
                raise RuntimeError(f"S3: bucket {bucket} could not be emptied (the RGW does not "
                                   "answer); empty it by hand, nothing was run again")


def cleaned(client, bucket: str, env: dict[str, str], *prefixes: str,
            remove_bucket: bool = False) -> bool:
    """Remove every object under ``prefixes``, waiting for the RGW to answer (the RGW is
    shared and keeps its objects in a 3 GiB memstore: nothing is left behind)."""
    for _attempt in range(3):
        if not rgw_answers(env, wait=120):
            return False
        try:
            for prefix in prefixes:
                empty_bucket(client, bucket, prefix)
            if remove_bucket:
                client.delete_bucket(Bucket=bucket)
            return True
        except Exception as error:  # noqa: BLE001 - tried again while the RGW answers
            print(f"bench: format3 S3: removing objects failed ({error}); again", file=sys.stderr)
            time.sleep(5)
    return False


def empty_bucket(client, bucket: str, prefix: str) -> int:
    """Remove every object (and unfinished upload) under ``prefix``; bytes removed."""
    removed = 0
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket,
                                                                        Prefix=prefix):
        for upload in page.get("Uploads", ()):
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                          UploadId=upload["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", ()):
            client.delete_object(Bucket=bucket, Key=item["Key"])
            removed += item["Size"]
    return removed


def rgw_answers(env: dict[str, str], wait: float = 0.0) -> bool:
    """Whether the RGW answers (within ``wait`` seconds): another user of it (the test
    suite's cut-connection tests) may stop it for a moment."""
    import urllib.error
    import urllib.request
    deadline = time.monotonic() + wait
    while True:
        try:
            urllib.request.urlopen(env["AWS_ENDPOINT_URL"], timeout=2).close()
            return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(1)


S3_OUTAGES = ("Read timeout on endpoint", "Connection was closed", "Could not connect")
"""What boto3 says when the RGW stopped answering (its objects are removed before a retry)."""


@dataclass
class S3Samples:
    up: dict[str, list[float]] = field(default_factory=lambda: {V3: [], BOTO3: []})
    down: dict[str, list[float]] = field(default_factory=lambda: {V3: [], BOTO3: []})
    stored: list[int] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)


def s3_repetition(number: int, attempt: int, disk: Disk, client, bucket: str,
                  env: dict[str, str]) -> S3Samples:
    """One repetition: backup and upload, then restore and download, rotated; every
    object it wrote is removed afterwards."""
    from benchmarks.objects import _download_and_sync
    samples = S3Samples()
    prefix, key = f"{disk.label}-{number}-{attempt}/", f"boto3-{disk.label}-{number}-{attempt}.raw"
    try:
        with bench_lab() as bench:
            dom = bench.domain(disk)
            store = bench.store(3, location=f"s3://{bucket}/{prefix.rstrip('/')}")
            uploads: dict[str, Callable[[], object]] = {
                V3: lambda: bench.snapshot(dom, store),
                BOTO3: lambda: client.upload_file(disk.path, bucket, key)}
            for label in rotated(tuple(uploads), number):
                samples.up[label].append(timed(uploads[label], cold=[disk.path, dom.directory]))
            samples.stored.append(sum(item["Size"] for page in client.get_paginator(
                "list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                for item in page.get("Contents", ())))
            to, downloaded = bench.lab.path("restored"), bench.lab.path("downloaded.raw")
            downloads: dict[str, Callable[[], object]] = {
                V3: lambda: bench.restore(dom, store, to),
                BOTO3: lambda: _download_and_sync(client, bucket, key, downloaded)}
            for label in rotated(tuple(downloads), number):
                samples.down[label].append(timed(downloads[label], cold=False))
                remove(to)
                remove(downloaded)
    finally:
        if not cleaned(client, bucket, env, prefix, key):
            raise RuntimeError(f"S3: the objects of {prefix} could not be removed (the RGW does "
                               "not answer); nothing was run again")
    return samples


def s3_disk_rows(settings: Settings, disk: Disk, client, bucket: str,
                 env: dict[str, str]) -> list[Row]:
    total = S3Samples()
    for number in range(settings.repeat):
        try:
            samples = s3_repetition(number, 0, disk, client, bucket, env)
        except Exception as error:  # noqa: BLE001 - only an RGW that went away is retried
            if not any(text in str(error) for text in OUTAGES + S3_OUTAGES):
                raise
            if not rgw_answers(env, wait=120):
                raise RuntimeError(f"the RGW stopped answering in repetition {number + 1} "
                                   f"and did not come back: {error}") from error
            total.retried.append(f"repetition {number + 1} run again: the RGW stopped "
                                 f"answering ({str(error)[:80]})")
            samples = s3_repetition(number, 1, disk, client, bucket, env)
        for label in (V3, BOTO3):
            total.up[label] += samples.up[label]
            total.down[label] += samples.down[label]
        total.stored += samples.stored
    up, down, stored = total.up, total.down, total.stored
    virtual = disk.virtual
    common = (f"{disk.describe}; logical MiB/s: the disk's {human(virtual)} per second; "
              f"boto3 moves the raw image ({human(virtual)}), fibackup stored "
              f"{human(statistics.median(stored))}; RGW in memory on the same 2 cores; "
              f"median of {settings.repeat}" + "".join(f"; {item}" for item in total.retried))
    return [
        throughput_row(GROUP, f"S3 full backup, format 3 vs boto3 upload_file, {disk.label}",
                       up[V3], "boto3 upload_file", up[BOTO3], at_least=0.9,
                       note=f"{mib_s(virtual, up[V3])} vs {mib_s(virtual, up[BOTO3])} "
                            f"logical MiB/s; images cold; {common}"),
        throughput_row(GROUP, f"S3 restore, format 3 vs boto3 download_file, {disk.label}",
                       down[V3], "boto3 download_file + fsync", down[BOTO3], at_least=0.9,
                       note=f"{mib_s(virtual, down[V3])} vs {mib_s(virtual, down[BOTO3])} "
                            f"logical MiB/s; {common}"),
    ]


# -- f: prune writes no data ---------------------------------------------------------------


@dataclass
class PruneRun:
    seconds: float
    written: int
    """write_bytes of the prune process and its children (getrusage, 512-byte blocks)."""
    created: list[tuple[str, int]] = field(default_factory=list)
    """Files the prune created or changed: (path in the store, size)."""
    freed: int = 0
    state: int = 0
    """Bytes of the files it created or changed in its state directory (intent journal)."""


def tree_state(root: str) -> dict[str, tuple[int, int, int]]:
    state = {}
    for top, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(top, name)
            info = os.lstat(path)
            state[os.path.relpath(path, root)] = (info.st_ino, info.st_size, info.st_mtime_ns)
    return state


def measured_prune(bench: Bench, dom: LabDomain, store: str) -> PruneRun:
    """``prune --keep KEEP`` of a copy of ``store`` (the store is kept for the next round)."""
    work = bench.lab.path("prune work")
    run_command(["cp", "-a", "--sparse=always", store, work])
    try:
        before, size_before = tree_state(work), allocated(work)
        state_before = tree_state(bench.lab.state_dir)
        evict([work])
        blocks = resource.getrusage(resource.RUSAGE_CHILDREN).ru_oublock
        start = time.perf_counter()
        bench.cli("prune", "-b", work, "-d", dom.name, "--keep", str(KEEP), "--no-libvirt")
        seconds = time.perf_counter() - start
        written = (resource.getrusage(resource.RUSAGE_CHILDREN).ru_oublock - blocks) * 512
        after, state_after = tree_state(work), tree_state(bench.lab.state_dir)
        created = sorted((path, state[1]) for path, state in after.items()
                         if before.get(path) != state)
        state = sum(state[1] for path, state in state_after.items()
                    if state_before.get(path) != state)
        return PruneRun(seconds, written, created, size_before - allocated(work), state)
    finally:
        remove(work)


def data_files(created: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """What a prune must not write: anything but its run log and lock objects."""
    return [(path, size) for path, size in created
            if not path.startswith(("logs/", "locks/"))]


def prune_rows(settings: Settings, disks: Disks) -> list[Row]:
    size = settings.size(512 * MiB, 64 * MiB)
    nightly = settings.size(8 * MiB, 1 * MiB)
    disk = disks.random(size)
    runs: dict[str, list[PruneRun]] = {V1: [], V3: []}
    with bench_lab() as bench:
        subjects = {kind: (bench.domain(disk), bench.kind(kind)) for kind in runs}
        for night in range(NIGHTS):
            if night:
                writes = make_writes(disks.scratch, [(0, size)], nightly, 256 * 1024,
                                     seed=1000 + night)
                for dom, _store in subjects.values():
                    apply_writes(dom, writes)
                remove(os.path.dirname(writes[0][1]))
            for dom, store in subjects.values():
                bench.snapshot(dom, store)
        points = {kind: len(json.loads(bench.cli("list", "-b", store, "-d", dom.name, "--json",
                                                 quiet=False)))
                  for kind, (dom, store) in subjects.items()}
        for number in range(settings.repeat):
            for kind in rotated(tuple(runs), number):
                dom, store = subjects[kind]
                runs[kind].append(measured_prune(bench, dom, store))

    def median(kind: str, what: Callable[[PruneRun], float]) -> float:
        return statistics.median(what(run) for run in runs[kind])

    wrong = [item for run in runs[V3] for item in data_files(run.created)]
    last = runs[V3][-1]
    listed = ", ".join(f"{path} ({size} B)" for path, size in last.created[:4]) or "none"
    if len(last.created) > 4:
        listed += f", ... ({len(last.created)} files)"
    case = (f"prune --keep {KEEP} of {points[V3]} nightly points ({human(size)} full, "
            f"{human(nightly)} a night)")
    written = Row(
        GROUP, f"{case}: format 3, MiB written", round(median(V3, lambda run: run.written) / MiB, 3),
        "format 1 prune (merges)", round(median(V1, lambda run: run.written) / MiB, 3),
        round(median(V3, lambda run: run.written) / max(1, median(V1, lambda run: run.written)), 4),
        "0 bytes of data", not wrong,
        note=f"write_bytes of the prune process (getrusage): "
             f"{median(V3, lambda run: run.written) / 1024:.0f} KiB vs format 1 "
             f"{human(median(V1, lambda run: run.written))}; files it created or changed: "
             f"{listed}, and {median(V3, lambda run: run.state):.0f} B in its state directory; "
             f"write_bytes also counts the filesystem metadata its deletes dirty"
             + (f"; DATA WRITTEN: {wrong[:5]}" if wrong else "")
             + f"; freed {human(median(V3, lambda run: run.freed))} (format 1 "
               f"{human(median(V1, lambda run: run.freed))}); format 1 has {points[V1]} points",
        samples={"ours": rounded([run.written for run in runs[V3]]),
                 V1: rounded([run.written for run in runs[V1]])})
    seconds = time_ratio_row(GROUP, f"{case}: format 3, time", [run.seconds for run in runs[V3]],
                             "format 1 prune (merges)", [run.seconds for run in runs[V1]],
                             note=f"store copies cold; median of {settings.repeat}")
    return [written, seconds]


# -- the group -----------------------------------------------------------------------------


OUTAGES = ("cannot connect to libvirt", "libvirt-sock", "cannot reach the S3 endpoint",
           "Could not connect to the endpoint")
"""What an error says when libvirtd or the RGW was down for a moment: the test suite
restarts libvirtd and stops radosgw in some of its tests, on this same host."""


def libvirt_answers(wait: float) -> bool:
    import libvirt
    deadline = time.monotonic() + wait
    while True:
        try:
            libvirt.open("qemu:///system").close()
            return True
        except libvirt.libvirtError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(1)


def run_stage(name: str, stage: Callable[[], list[Row]]) -> list[Row]:
    """The stage's rows; a stage that libvirtd or the RGW dropped out of is run again,
    once, when libvirtd answers again (its rows say so)."""
    try:
        return stage()
    except Exception as error:  # noqa: BLE001 - only an outage is retried
        if not any(text in str(error) for text in OUTAGES) or not libvirt_answers(120):
            raise
        traceback.print_exc()
        print(f"bench: format3 {name}: run again after an outage", file=sys.stderr)
        time.sleep(5)
        rows = stage()
        for row in rows:
            row.note += f"; stage run again after an outage of libvirtd or the RGW ({str(error)[:60]})"
        return rows


def check_space(settings: Settings, scratch: str) -> None:
    need = settings.size(40 * GiB, 4 * GiB)
    free = shutil.disk_usage(scratch).free
    if free < need:
        raise RuntimeError(f"format3 needs {human(need)} free under {scratch}, has {human(free)}")


def run(settings: Settings) -> list[Row]:
    import libvirt
    libvirt.registerErrorHandler(lambda _context, _error: None, None)
    scratch = os.path.join(settings.scratch, f"fibackup-bench-format3-{os.getpid()}")
    os.makedirs(scratch)
    rows: list[Row] = []
    try:
        check_space(settings, scratch)
        disks = Disks(settings, scratch)
        stages: list[tuple[str, Callable[[], list[Row]]]] = [
            ("copy random", lambda: copy_rows(settings, disks.random(
                settings.size(2 * GiB, 256 * MiB)), 0.7)),
            ("copy files", lambda: copy_rows(settings, disks.files(), 0.4)),
            ("P3", lambda: incremental_rows(settings, disks)),
            ("P2", lambda: [sparse_row(settings, disks)]),
            ("S3", lambda: s3_rows(settings, [
                disks.files(settings.size(512 * MiB, 0), settings.size(256 * MiB, 0)),
                disks.random(settings.size(256 * MiB, 64 * MiB))])),
            ("prune", lambda: prune_rows(settings, disks)),
        ]
        # FIBACKUP_BENCH_FORMAT3="S3,prune" runs those stages alone (development)
        chosen = os.environ.get("FIBACKUP_BENCH_FORMAT3")
        if chosen:
            wanted = {name.strip() for name in chosen.split(",")}
            stages = [(name, stage) for name, stage in stages if name in wanted]
        for name, stage in stages:
            start = time.perf_counter()
            try:
                rows.extend(run_stage(name, stage))
            except Exception as error:  # noqa: BLE001 - one stage failing must not hide the others
                traceback.print_exc()
                rows.append(Row(GROUP, f"{name}: stage failed", 0.0, "", 0.0, 0.0, met=False,
                                note=str(error)[:300]))
            print(f"bench: format3 {name} took {time.perf_counter() - start:.0f} s",
                  file=sys.stderr)
    finally:
        remove(scratch)
    return rows


if __name__ == "__main__":
    from benchmarks.common import main_for
    main_for(run)
