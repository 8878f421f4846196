"""Stores (issue 15): fibackup's encrypted format-3 store against restic and borg, backing
up the same disk holding real files: full run, incremental run, and the store's size after both.

The disk: the host's own files, taken in sorted order (directories and files sorted, symlinks
kept, other special files skipped, a file that would overflow the budget skipped) from
/usr/share, then /usr/include, then /usr/lib/python3, until 700 MiB of file data (--quick:
60 MiB), copied to a scratch tree and turned into an ext4 filesystem by ``mke2fs -t ext4 -b
4096 -d TREE`` in a raw image of 1.25 GiB (--quick: 192 MiB) with a fixed UUID, hash seed
and clock (``E2FSPROGS_FAKE_TIME``), so the same host gives the same image every run.  Its
qcow2 form (``qemu-img convert``) is the disk of a shut-off throwaway domain (tests.lab).

The change, made without booting a guest: 64 MiB (--quick: 16 MiB) of real binaries, the
first regular files of /usr/bin then /usr/lib/x86_64-linux-gnu in sorted order (the last
one cut to make the amount exact), written into a copy of the raw image by ``debugfs -w``
(``mkdir``, then ``write`` per file: ext2fs allocates the blocks and updates inodes, bitmaps,
group descriptors and the directory, as the guest's kernel would; ``e2fsck -fn`` must find
the result clean).  The blocks that differ between the two raw images are the guest's
writes; they are written into the domain's active image (the overlay fibackup's first
snapshot created) with ``qemu-io write -s``, and ``qemu-img compare`` must find the domain's
chain equal to the changed raw image.

Each repetition starts fresh stores and a fresh domain; in an order that rotates every
repetition, each tool makes its full backup; the change is applied; each tool makes its
incremental backup; then ``du -sb`` of each store.  Every timed run starts with the images,
stores and caches evicted from the page cache and ends with ``sync`` of every file in its
store.  Medians over the repetitions are compared.

- fibackup: ``fibackup init -b DIR --encrypt --password-file FILE`` (untimed; its default
  compression, zstd:2, and 4 MiB chunks), then ``fibackup snapshot -d DOM -b DIR --json``
  with ``FIBACKUP_PASSWORD_FILE`` in a fresh process, the domain shut off (the full run
  reads the qcow2 base, the incremental run the overlay holding the change).  Where
  ``fibackup init`` does not exist (before format 3), the rows say so and ``snapshot -b``
  writes into an empty directory, today's store.
- restic (Debian 12's 0.14.0, installed when missing): ``restic init`` (repository version 2,
  compression auto = zstd, always encrypted), then ``restic backup`` of the raw image file
  (the disk as the guest sees it), then of the changed raw image at the same path
  (restic's parent snapshot finds the file changed and reads all of it; its chunks dedup).
- borg (Debian 12's 1.2.4): ``borg init -e repokey``, then ``borg create --compression lz4``
  (its default) of the same raw image file, then of the changed one.
Both peers read holes of the raw image as zeros: what an image-level backup with them costs.
- virtnbdbackup (Debian 12's 1.9.15; no target, it is the issue's fourth row): ``virtnbdbackup
  -U qemu:///system -d DOM -l full|inc -o DIR --compress --noprogress`` of a second domain
  that runs (libvirt's backup API needs one; no guest kernel, the firmware idles) on its own
  copy of the qcow2 base; the change reaches it as guest writes (HMP ``qemu-io write -s``
  on its virtio backend), so its incremental reads what its dirty bitmap recorded.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "benchmarks"

from benchmarks.common import (MiB, Row, Settings, ensure_debian_package, remove,
                               rounded, run_command, time_ratio_row, timed)
from benchmarks.peers import error_lines, human, release_checkpoints, rotated, sync_tree
import libvirt
from tests.lab import DiskDef, Lab, LabDomain, libvirt_qemu_monitor

GROUP = "store"
OURS = "fibackup"
RESTIC = "restic (zstd, encrypted)"
BORG = "borg (lz4, encrypted)"
VIRTNBD = "virtnbdbackup (--compress)"
TOOLS = (OURS, RESTIC, BORG, VIRTNBD)
URI = "qemu:///system"
PHASES = ("full", "incremental")
TARGET = "vda"
DATA_ROOTS = ("/usr/share", "/usr/include", "/usr/lib/python3")
CHANGE_ROOTS = ("/usr/bin", "/usr/lib/x86_64-linux-gnu")
FS_UUID = "6a1f0b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b"
FS_HASH_SEED = "0b7c5d2e-1f3a-4b6c-9d8e-7f6a5b4c3d2e"
FS_TIME = "1700000000"
PASSWORD = "fibackup-bench-store\n"
BLOCK = 4096


@dataclass
class Sizes:
    disk: int
    data: int
    changed: int


@dataclass
class Images:
    """Both states of the disk: raw images, the qcow2 base, the blocks that differ."""

    raw_full: str
    raw_changed: str
    base_qcow2: str
    files: int
    data: int
    change_files: int
    extents: list[tuple[int, int]]

    @property
    def differing(self) -> int:
        return sum(length for _offset, length in self.extents)

    def describe(self) -> str:
        return (f"{human(self.data)} in {self.files} files of the host in a "
                f"{human(os.path.getsize(self.raw_full))} ext4 disk (qcow2 base "
                f"{human(allocated(self.base_qcow2))})")


@dataclass
class Tally:
    times: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {tool: {phase: [] for phase in PHASES} for tool in TOOLS})
    store_mib: dict[str, list[float]] = field(default_factory=lambda: {t: [] for t in TOOLS})
    errors: dict[str, str] = field(default_factory=dict)
    bytes_copied: list[int] = field(default_factory=list)
    phase_times: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {phase: {} for phase in PHASES})
    """fibackup's own timings ("snapshot", "backup") per run phase."""
    stats: list[dict] = field(default_factory=list)
    """``fibackup stats --json`` of the store after both runs."""


def allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512


# -- the disk's two states ----------------------------------------------------------------


def copy_tree(roots: tuple[str, ...], budget: int, dest: str) -> tuple[int, int]:
    """Copy the first files of ``roots`` (sorted walk) into ``dest`` until ``budget`` bytes
    of file data; return (files, bytes)."""
    files = total = 0
    for root in roots:
        if not os.path.isdir(root):
            continue
        top = os.path.join(dest, root.strip("/").replace("/", "_"))
        for parent, dirs, names in os.walk(root):
            dirs.sort()
            target_dir = os.path.join(top, os.path.relpath(parent, root))
            os.makedirs(target_dir, exist_ok=True)
            for name in sorted(names):
                source, target = os.path.join(parent, name), os.path.join(target_dir, name)
                if os.path.islink(source):
                    os.symlink(os.readlink(source), target)
                    continue
                try:
                    size = os.stat(source).st_size
                    if not os.path.isfile(source) or total + size > budget:
                        continue
                    shutil.copy2(source, target)
                except OSError:
                    continue
                files += 1
                total += size
            if budget - total < BLOCK:
                return files, total
    return files, total


def stage_binaries(roots: tuple[str, ...], amount: int, dest: str) -> list[str]:
    """Exactly ``amount`` bytes of regular files from ``roots`` (sorted), the last one cut."""
    os.makedirs(dest)
    staged: list[str] = []
    left = amount
    for root in roots:
        for parent, dirs, names in os.walk(root):
            dirs.sort()
            for name in sorted(names):
                source = os.path.join(parent, name)
                if os.path.islink(source) or not os.path.isfile(source):
                    continue
                size = os.path.getsize(source)
                if size == 0:
                    continue
                safe = re.sub(r"[^A-Za-z0-9._+-]", "_", name)
                target = os.path.join(dest, f"{len(staged):04d}-{safe}")
                with open(source, "rb") as src, open(target, "wb") as dst:
                    dst.write(src.read(min(size, left)))
                staged.append(target)
                left -= min(size, left)
                if left == 0:
                    return staged
    raise RuntimeError(f"only {amount - left} bytes of files under {', '.join(roots)}")


def differing_extents(path_a: str, path_b: str, step: int = 4 * MiB) -> list[tuple[int, int]]:
    """(offset, length) of the 4 KiB blocks that differ between two files of one size,
    neighbours merged."""
    extents: list[tuple[int, int]] = []
    with open(path_a, "rb") as one, open(path_b, "rb") as two:
        offset = 0
        while True:
            a, b = one.read(step), two.read(step)
            if not a and not b:
                break
            if a != b:
                for start in range(0, max(len(a), len(b)), BLOCK):
                    if a[start:start + BLOCK] == b[start:start + BLOCK]:
                        continue
                    here = offset + start
                    if extents and sum(extents[-1]) == here:
                        extents[-1] = (extents[-1][0], extents[-1][1] + BLOCK)
                    else:
                        extents.append((here, BLOCK))
            offset += step
    return extents


def build_filesystem(disk: int, data: int, scratch: str,
                     name: str = "full.raw") -> tuple[str, int, int]:
    """A raw image of ``disk`` bytes holding an ext4 filesystem of the host's files (the
    first ``data`` bytes of DATA_ROOTS, sorted), made reproducibly by ``mke2fs -d``:
    (its path, files, bytes of file data)."""
    tree = os.path.join(scratch, "tree")
    files, total = copy_tree(DATA_ROOTS, data, tree)
    raw = os.path.join(scratch, name)
    run_command(["mke2fs", "-q", "-F", "-t", "ext4", "-b", str(BLOCK), "-U", FS_UUID,
                 "-E", f"hash_seed={FS_HASH_SEED},root_owner=0:0", "-d", tree, raw,
                 f"{disk // 1024}k"], env={"E2FSPROGS_FAKE_TIME": FS_TIME})
    remove(tree)
    return raw, files, total


def build_images(sizes: Sizes, scratch: str) -> Images:
    raw_full, files, data = build_filesystem(sizes.disk, sizes.data, scratch)
    raw_changed = os.path.join(scratch, "changed.raw")
    env = {"E2FSPROGS_FAKE_TIME": FS_TIME}
    staged = stage_binaries(CHANGE_ROOTS, sizes.changed, os.path.join(scratch, "binaries"))
    run_command(["cp", "--sparse=always", raw_full, raw_changed])
    commands = os.path.join(scratch, "debugfs.commands")
    with open(commands, "w") as handle:
        handle.write("mkdir /bench-change\ncd /bench-change\n")
        handle.writelines(f"write {path} {os.path.basename(path)}\n" for path in staged)
    done = subprocess.run(["debugfs", "-w", "-f", commands, raw_changed], capture_output=True,
                          text=True, env={**os.environ, **env})
    errors = [line for line in done.stderr.splitlines()
              if line.strip() and not line.startswith(("debugfs ", "Allocated inode"))]
    if done.returncode != 0 or errors:
        raise RuntimeError(f"debugfs -w failed: {' | '.join(errors[:5])}")
    remove(os.path.join(scratch, "binaries"))
    run_command(["e2fsck", "-fn", raw_changed])
    base = os.path.join(scratch, "base.qcow2")
    run_command(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw_full, base])
    return Images(raw_full, raw_changed, base, files, data, len(staged),
                  differing_extents(raw_full, raw_changed))


def apply_change(images: Images, active: str, scratch: str,
                 live: Optional[LabDomain] = None) -> None:
    """Write the blocks the change touched into the domain's active image (qemu-io), then
    check that the chain reads as the changed raw image; the same as guest writes into
    ``live``, the running domain, if there is one."""
    pieces = os.path.join(scratch, "pieces")
    os.makedirs(pieces)
    try:
        args = ["qemu-io", "-f", "qcow2"]
        written = []
        with open(images.raw_changed, "rb") as source:
            for number, (offset, length) in enumerate(images.extents):
                piece = os.path.join(pieces, str(number))
                source.seek(offset)
                with open(piece, "wb") as handle:
                    handle.write(source.read(length))
                args += ["-c", f"write -q -s {piece} {offset} {length}"]
                written.append((piece, offset, length))
        done = subprocess.run([*args, active], capture_output=True, text=True)
        if done.returncode != 0 or done.stdout.strip() or done.stderr.strip():
            raise RuntimeError(f"qemu-io on {active}: {(done.stdout + done.stderr).strip()}")
        if live is not None:
            write_live(live, written)
    finally:
        remove(pieces)
    run_command(["qemu-img", "compare", "-q", "-f", "qcow2", "-F", "raw", active,
                 images.raw_changed])


# -- the tools -------------------------------------------------------------------------


def has_init() -> bool:
    """Whether this fibackup has ``init`` (format-3 stores)."""
    done = subprocess.run([sys.executable, "-m", "fibackup", "init", "--help"],
                          capture_output=True, text=True)
    return done.returncode == 0


@dataclass
class Run:
    """One repetition: the domain, the stores, the raw image file the peers read."""

    lab: Lab
    dom: LabDomain
    images: Images
    encrypted: bool
    disk_file: str
    password_file: str
    live: Optional[LabDomain] = None
    """The running domain virtnbdbackup backs up (None when it cannot run here)."""
    outputs: dict[str, str] = field(default_factory=dict)

    def store(self, tool: str) -> str:
        return self.lab.path("stores", tool.split()[0])

    def cache(self, tool: str) -> str:
        return self.lab.path("caches", tool.split()[0])

    def point_disk_at(self, raw: str) -> None:
        """The peers' disk image file, as the host holds it: this state's raw image."""
        staged = self.disk_file + ".new"
        os.link(raw, staged)
        os.replace(staged, self.disk_file)

    def fibackup(self, *args: str) -> str:
        return run_command([sys.executable, "-m", "fibackup", *args],
                           env={"FIBACKUP_STATE_DIR": self.lab.state_dir,
                                "FIBACKUP_CONFIG": "/dev/null",
                                "FIBACKUP_PASSWORD_FILE": self.password_file})

    def restic_env(self) -> dict[str, str]:
        return {"RESTIC_REPOSITORY": self.store(RESTIC), "RESTIC_PASSWORD": PASSWORD.strip(),
                "RESTIC_CACHE_DIR": self.cache(RESTIC)}

    def borg_env(self) -> dict[str, str]:
        return {"BORG_PASSPHRASE": PASSWORD.strip(), "BORG_BASE_DIR": self.cache(BORG),
                "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}

    def init(self, tool: str) -> None:
        os.makedirs(self.lab.path("stores"), exist_ok=True)
        os.makedirs(self.cache(tool), exist_ok=True)
        if tool == OURS:
            if self.encrypted:
                # FIBACKUP_BENCH_COMPRESSION=zstd:N measures another level than the default
                level = os.environ.get("FIBACKUP_BENCH_COMPRESSION")
                self.fibackup("init", "-b", self.store(OURS), "--format", "3", "--encrypt",
                              "--password-file", self.password_file,
                              *(["--compression", level] if level else []))
        elif tool == RESTIC:
            run_command(["restic", "init", "-q"], env=self.restic_env())
        elif tool == VIRTNBD:
            if self.live is None:
                raise RuntimeError("its running domain could not be made")
            os.makedirs(self.store(tool))
        else:
            run_command(["borg", "init", "-e", "repokey", self.store(BORG)], env=self.borg_env())

    def backup(self, tool: str, phase: str) -> None:
        if tool == OURS:
            self.outputs[phase] = self.fibackup("snapshot", "-d", self.dom.name,
                                                "-b", self.store(OURS), "--json", "-q")
        elif tool == RESTIC:
            run_command(["restic", "backup", "-q", "--host", "bench", self.disk_file],
                        env=self.restic_env())
        elif tool == VIRTNBD:
            assert self.live is not None
            args = ["virtnbdbackup", "-U", URI, "-d", self.live.name, "-l",
                    "full" if phase == "full" else "inc", "-o", self.store(tool),
                    "--compress", "--noprogress"]
            done = subprocess.run(args, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"virtnbdbackup exited {done.returncode}: "
                                   f"{error_lines(done.stderr)}")
        else:
            run_command(["borg", "create", "--compression", "lz4",
                         f"{self.store(BORG)}::{phase}", self.disk_file], env=self.borg_env())
        sync_tree(self.store(tool))

    def action(self, tool: str, phase: str) -> Callable[[], None]:
        return lambda: self.backup(tool, phase)

    def cold(self) -> list[str]:
        return [self.images.raw_full, self.images.raw_changed, self.dom.directory,
                self.lab.path("stores"), self.lab.path("caches"),
                *([self.live.directory] if self.live is not None else [])]


def du_mib(path: str) -> float:
    return int(run_command(["du", "-sb", path]).split()[0]) / MiB


def make_live(lab: Lab, images: Images, size: int) -> Optional[LabDomain]:
    """virtnbdbackup's running domain on a copy of the base (None if it cannot start)."""
    try:
        live = lab.domain(disks=[DiskDef(TARGET, "qcow2", size, model=False)], start=False)
        run_command(["cp", "--sparse=always", images.base_qcow2, live.image_path(live.disks[0])])
        live.start()
        return live
    except (RuntimeError, OSError, libvirt.libvirtError):
        return None


def write_live(live: LabDomain, pieces: list[tuple[str, int, int]]) -> None:
    """The change as guest writes into the running domain (HMP qemu-io on its backend)."""
    domain = live.lab.conn.lookupByName(live.name)
    device = f"/machine/peripheral/{live.alias(TARGET)}/virtio-backend"
    for piece, offset, length in pieces:
        reply = libvirt_qemu_monitor(domain, f'qemu-io -d {device} "write -q -s {piece} '
                                             f'{offset} {length}"')
        if reply.strip():
            raise RuntimeError(f"qemu-io in {live.name}: {reply.strip()}")


def make_run(images: Images, encrypted: bool, scratch: str, with_live: bool = True) -> Run:
    lab = Lab()
    try:
        size = os.path.getsize(images.raw_full)
        dom = lab.domain(disks=[DiskDef(TARGET, "qcow2", size, model=False)], start=False)
        run_command(["cp", "--sparse=always", images.base_qcow2, dom.image_path(dom.disks[0])])
        password_file = lab.path("password")
        with open(os.open(password_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
            handle.write(PASSWORD)
        disk_file = os.path.join(scratch, "host disk", "vda.raw")
        os.makedirs(os.path.dirname(disk_file), exist_ok=True)
        run = Run(lab, dom, images, encrypted, disk_file, password_file,
                  live=make_live(lab, images, size) if with_live else None)
        run.point_disk_at(images.raw_full)
        return run
    except BaseException:
        lab.close()
        raise


def measure(run: Run, tool: str, phase: str, tally: Tally) -> None:
    """Time one run, its data cold; a peer that fails is recorded and left out from then on."""
    try:
        seconds = timed(run.action(tool, phase), cold=run.cold())
    except (RuntimeError, OSError) as error:
        if tool == OURS:
            raise
        tally.errors[tool] = f"{phase}: {error}"[:300]
        return
    tally.times[tool][phase].append(seconds)


def record_fibackup(run: Run, tally: Tally) -> None:
    for phase in PHASES:
        if phase not in run.outputs:
            continue
        (result,) = json.loads(run.outputs[phase])
        for name, seconds in result.get("timings", {}).items():
            tally.phase_times[phase].setdefault(name, []).append(float(seconds))
        if phase == "incremental":
            tally.bytes_copied.append(int(result["bytes_copied"]))
    if run.encrypted:
        tally.stats.append(json.loads(run.fibackup("stats", "-b", run.store(OURS), "--json")))


def repetition(number: int, images: Images, encrypted: bool, scratch: str,
               tally: Tally) -> None:
    run = make_run(images, encrypted, scratch, with_live=VIRTNBD not in tally.errors)
    try:
        tools = [tool for tool in TOOLS if tool not in tally.errors]
        for tool in tools:
            try:
                run.init(tool)
            except (RuntimeError, OSError) as error:
                if tool == OURS:
                    raise
                tally.errors[tool] = f"init: {error}"[:300]
        order = [tool for tool in rotated(tuple(tools), number) if tool not in tally.errors]
        for phase in PHASES:
            if phase == "incremental":
                live = run.live if VIRTNBD not in tally.errors else None
                apply_change(images, run.dom.top(TARGET, inactive=True), scratch, live)
                run.point_disk_at(images.raw_changed)
            for tool in order:
                if tool not in tally.errors:
                    measure(run, tool, phase, tally)
        for tool in order:
            if tool not in tally.errors:
                tally.store_mib[tool].append(du_mib(run.store(tool)))
        record_fibackup(run, tally)
    finally:
        release_checkpoints(run.lab)        # virtnbdbackup's, which block a plain undefine
        run.lab.close()


# -- rows -------------------------------------------------------------------------------


def seconds_note(tally: Tally, phase: str) -> str:
    parts = [f"{tool.split()[0]} {statistics.median(tally.times[tool][phase]):.2f}s"
             for tool in TOOLS if tally.times[tool][phase]]
    return ", ".join(parts)


def phases_note(tally: Tally, phase: str) -> str:
    if not tally.phase_times[phase]:
        return ""
    parts = ", ".join(f"{name} {statistics.median(values):.2f}s"
                      for name, values in sorted(tally.phase_times[phase].items()))
    return f"; fibackup's own timings (median): {parts}"


def stats_note(tally: Tally) -> str:
    """What ``fibackup stats`` says of the last repetition's store."""
    if not tally.stats:
        return ""
    last = tally.stats[-1]
    return (f"; fibackup stats: {last['points']} points, logical {human(last['logical_bytes'])}, "
            f"after dedup {human(last['unique_bytes'])}, stored {human(last['stored_bytes'])} "
            f"({last['compression']}, encrypted {last['encrypted']})")


def peer_row(case: str, phase: str, peer: str, tally: Tally, note: str,
             at_most: Optional[float]) -> Row:
    ours = tally.times[OURS][phase]
    theirs = tally.times[peer][phase]
    failed = tally.errors.get(peer)
    if not theirs:
        return Row(GROUP, case, round(statistics.median(ours), 3), peer, 0.0, 0.0, "", None,
                   f"{peer} could not run here: {failed or 'no sample'}", {"ours": rounded(ours)})
    if failed:
        note += f"; {peer} failed in a later repetition: {failed}"
    return time_ratio_row(GROUP, case, ours, peer, theirs, at_most=at_most, note=note)


def store_row(case: str, peer: str, tally: Tally, note: str, at_most: Optional[float]) -> Row:
    ours, theirs = tally.store_mib[OURS], tally.store_mib[peer]
    if not theirs:
        return Row(GROUP, case, round(statistics.median(ours), 1), peer, 0.0, 0.0, "", None,
                   f"{peer} could not run here: {tally.errors.get(peer, 'no sample')}",
                   {"ours": rounded(ours)})
    row = time_ratio_row(GROUP, case, ours, peer, theirs, at_most=at_most, note=note)
    row.ours_s, row.baseline_s = round(statistics.median(ours), 1), round(statistics.median(theirs), 1)
    return row


def build_rows(images: Images, sizes: Sizes, tally: Tally, encrypted: bool,
               repeat: int) -> list[Row]:
    kind = "" if encrypted else " [no fibackup init: today's store, not encrypted]"
    common = f"{images.describe()}; cold, median of {repeat}"
    full_note = f"{seconds_note(tally, 'full')}; {common}{phases_note(tally, 'full')}"
    copied = (f"; fibackup copied {human(max(tally.bytes_copied))}" if tally.bytes_copied else "")
    incremental_note = (f"{seconds_note(tally, 'incremental')}; change: {human(sizes.changed)} "
                        f"of binaries ({images.change_files} files) by debugfs, "
                        f"{human(images.differing)} of disk blocks differ{copied}; {common}"
                        f"{phases_note(tally, 'incremental')}")
    sizes_note = ", ".join(f"{tool.split()[0]} {statistics.median(tally.store_mib[tool]):.1f} MiB"
                           for tool in TOOLS if tally.store_mib[tool])
    store_note = (f"du -sb after both: {sizes_note}; files {human(images.data)}, "
                  f"change {human(sizes.changed)}{stats_note(tally)}")
    rows = [
        peer_row(f"full vs restic{kind}", "full", RESTIC, tally, full_note, 0.6),
        peer_row(f"full vs borg{kind}", "full", BORG, tally, full_note, 1.0),
        peer_row(f"incremental vs restic{kind}", "incremental", RESTIC, tally,
                 incremental_note, 0.3),
        peer_row(f"incremental vs borg{kind}", "incremental", BORG, tally,
                 incremental_note, 0.3),
        store_row(f"store after both vs restic (MiB){kind}", RESTIC, tally, store_note, 1.1),
        store_row(f"store after both vs borg (MiB){kind}", BORG, tally, store_note, None),
        peer_row(f"full vs virtnbdbackup{kind}", "full", VIRTNBD, tally, full_note, None),
        peer_row(f"incremental vs virtnbdbackup{kind}", "incremental", VIRTNBD, tally,
                 incremental_note, None),
        store_row(f"store after both vs virtnbdbackup (MiB){kind}", VIRTNBD, tally, store_note,
                  None),
    ]
    return rows


def check_space(sizes: Sizes, scratch: str) -> None:
    need = 8 * sizes.data + 2 * sizes.disk
    free = shutil.disk_usage(scratch).free
    if free < need:
        raise RuntimeError(f"store needs {human(need)} free under {scratch}, has {human(free)}")


def run_stores(settings: Settings) -> list[Row]:
    sizes = Sizes(disk=settings.size(1280 * MiB, 192 * MiB), data=settings.size(700 * MiB, 60 * MiB),
                  changed=settings.size(64 * MiB, 16 * MiB))
    tally = Tally()
    for command, package, tool in (("restic", "restic", RESTIC), ("borg", "borgbackup", BORG)):
        try:
            ensure_debian_package(command, package)
        except (RuntimeError, OSError) as error:
            tally.errors[tool] = f"not installable: {error}"
    scratch = os.path.join(settings.scratch, f"fibackup-bench-store-{os.getpid()}")
    os.makedirs(scratch)
    try:
        check_space(sizes, scratch)
        images = build_images(sizes, scratch)
        encrypted = has_init()
        for number in range(settings.repeat):
            repetition(number, images, encrypted, scratch, tally)
        return build_rows(images, sizes, tally, encrypted, settings.repeat)
    finally:
        remove(scratch)


def run(settings: Settings) -> list[Row]:
    import libvirt
    libvirt.registerErrorHandler(lambda _context, _error: None, None)
    return run_stores(settings)


if __name__ == "__main__":
    from benchmarks.common import main_for
    main_for(run)
