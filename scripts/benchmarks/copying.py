"""P1, P2 and the page cache: fibackup's copy engine against `cp` + `sync` of the same file.

- P1 dense: copy + checksum of a frozen layer full of data (2 GiB; --quick 256 MiB),
  throughput at least 0.9x that of `cp` + `sync`.
- P2 sparse: a raw base of 8 GiB virtual size holding 256 MiB of data, at most 1.3x
  the time fibackup takes to copy a dense 256 MiB file; the bytes read (rchar) show
  that holes are never read.
- hashing: reading and hashing the dense layer (what `verify` does per layer) against
  `xxhsum -H2` of the same file: at least 0.9x the throughput.
- reflink: on a loop-mounted XFS, a cloned copy (then the clone read and hashed)
  against a full copy on the same filesystem.
- page cache: how much of the source and the copy each tool leaves cached, with a
  quarter of the source cached before as the host's own hot data (fibackup keeps that
  quarter and drops what it brought in; cp leaves source and copy cached).
The engine runs in this process (`scan_file`, what `snapshot -b` runs per layer of a
format-1 store, whatever format `snapshot -b` gives a new store; format 3's counterparts
of P1 and P2 are in benchmarks/format3.py).
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "benchmarks"

from benchmarks.common import (GiB, MiB, Row, Settings, alternate, cp_sync, evict,
                               ensure_debian_package, remove, run_command, throughput_row,
                               time_ratio_row)
from fibackup.store.chunks import scan_file

GROUP = "copy"


def make_dense(path: str, size: int) -> None:
    """Incompressible data, every 4 MiB block distinct."""
    block = bytearray(os.urandom(4 * MiB))
    with open(path, "wb") as handle:
        for offset in range(0, size, len(block)):
            block[:8] = offset.to_bytes(8, "little")
            handle.write(block[: min(len(block), size - offset)])
        handle.flush()
        os.fsync(handle.fileno())


def make_sparse(path: str, size: int, data: int, pieces: int = 16) -> None:
    """``data`` bytes in ``pieces`` extents spread over ``size`` bytes of holes."""
    with open(path, "wb") as handle:
        handle.truncate(size)
        for index in range(pieces):
            handle.seek(index * (size // pieces))
            handle.write(os.urandom(data // pieces))
        handle.flush()
        os.fsync(handle.fileno())


def fibackup_copy(src: str, dst: str) -> None:
    scan_file(src, dst)


def read_chars() -> int:
    with open("/proc/self/io") as handle:
        for line in handle:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    return 0


def dense_row(settings: Settings, src: str, scratch: str) -> Row:
    dst = os.path.join(scratch, "copy")
    times = alternate({"fibackup": lambda: fibackup_copy(src, dst),
                       "cp+sync": lambda: cp_sync(src, dst)},
                      settings.repeat, cold=[src], after=lambda _label: remove(dst))
    size = os.path.getsize(src)
    return throughput_row(GROUP, f"P1 copy+hash of a {size // MiB} MiB dense layer",
                          times["fibackup"], "cp+sync", times["cp+sync"], at_least=0.9)


def sparse_rows(settings: Settings, scratch: str) -> list[Row]:
    data = 256 * MiB if not settings.quick else 64 * MiB
    virtual = settings.size(8 * GiB, 2 * GiB)
    sparse = os.path.join(scratch, "sparse.img")
    dense = os.path.join(scratch, "dense-small.img")
    make_sparse(sparse, virtual, data)
    make_dense(dense, data)
    dst = os.path.join(scratch, "copy")
    before = read_chars()
    scan_file(sparse, dst)
    read = read_chars() - before
    remove(dst)
    times = alternate({"sparse": lambda: fibackup_copy(sparse, dst),
                       "dense": lambda: fibackup_copy(dense, dst),
                       "cp": lambda: cp_sync(sparse, dst, "always"),
                       "sparse read": lambda: scan_file(sparse),
                       "dense read": lambda: scan_file(dense)},
                      settings.repeat, cold=[sparse, dense], after=lambda _label: remove(dst))
    case = f"P2 sparse base {virtual // GiB} GiB holding {data // MiB} MiB"
    return [time_ratio_row(GROUP, case, times["sparse"],
                           f"fibackup copy of {data // MiB} MiB dense", times["dense"],
                           at_most=1.3,
                           note=f"bytes read {read // MiB} MiB of {virtual // MiB} MiB virtual"),
            time_ratio_row(GROUP, f"{case}, read+hash only", times["sparse read"],
                           f"read+hash of {data // MiB} MiB dense", times["dense read"],
                           at_most=1.3, note="the reading side of P2 alone"),
            throughput_row(GROUP, f"{case}, against cp", times["sparse"],
                           "cp --sparse=always+sync", times["cp"],
                           note="the same sparse file: what writing its scattered extents "
                                "costs any tool here")]


def hash_row(settings: Settings, src: str) -> Row:
    xxhsum = ensure_debian_package("xxhsum", "xxhash")
    times = alternate({"fibackup": lambda: scan_file(src),
                       "xxhsum": lambda: run_command([xxhsum, "-H2", src])}, settings.repeat, cold=[src])
    return throughput_row(GROUP, f"read+hash of the {os.path.getsize(src) // MiB} MiB layer",
                          times["fibackup"], "xxhsum -H2", times["xxhsum"], at_least=0.9)


def resident_mib(*paths: str) -> float:
    """MiB of these files in the page cache (mincore)."""
    from fibackup.store.pagecache import uncached_runs
    total = 0
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            runs = uncached_runs(fd, 0, size) or []
            total += size - sum(min(end, size) - start for start, end in runs)
        finally:
            os.close(fd)
    return total / MiB


def cache_row(src: str, scratch: str) -> Row:
    """Pages of the source and the copy left in the page cache by each tool (lower is
    better), starting with a quarter of the source cached as the host's own hot data."""
    dst = os.path.join(scratch, "copy")
    left: dict[str, float] = {}
    for label, action in (("fibackup", lambda: fibackup_copy(src, dst)),
                          ("cp+sync", lambda: cp_sync(src, dst))):
        evict([src])
        with open(src, "rb") as handle:
            handle.read(os.path.getsize(src) // 4)
        hot = resident_mib(src)
        action()
        # pages of the hot quarter the kernel itself evicted meanwhile can make this
        # slightly negative: nothing was left behind
        left[label] = max(0.0, resident_mib(src, dst) - hot)
        remove(dst)
    size = os.path.getsize(src) // MiB
    ratio = left["fibackup"] / left["cp+sync"] if left["cp+sync"] else 0.0
    return Row(GROUP, f"page cache taken by copying {size} MiB (MiB)", round(left["fibackup"], 1),
               "cp+sync", round(left["cp+sync"], 1), round(ratio, 3),
               note=f"{hot:.0f} MiB of the source cached before, still cached after fibackup: "
                    f"{resident_mib(src) >= hot}")


def reflink_row(settings: Settings) -> Row:
    """Copy+hash on a reflink-capable filesystem (a loop-mounted XFS): cloned, then the
    clone read and hashed, against the usual copy on the same filesystem."""
    import shutil
    from tests.lab import Lab
    if shutil.which("mkfs.xfs") is None:
        return Row(GROUP, "reflinked copy+hash on XFS", 0.0, "", 0.0, 0.0,
                   note="skipped: mkfs.xfs missing (apt install xfsprogs)")
    size = settings.size(1 * GiB, 128 * MiB)
    lab = Lab()
    try:
        mount = lab.xfs("xfs", size * 3 + 256 * MiB)
        src = os.path.join(mount, "layer.img")
        make_dense(src, size)
        dst = os.path.join(mount, "copy")
        times = alternate({"reflink": lambda: scan_file(src, dst, clone=True),
                           "copy": lambda: scan_file(src, dst)},
                          settings.repeat, cold=[src], after=lambda _label: remove(dst))
    finally:
        lab.close()
    return throughput_row(GROUP, f"reflinked copy+hash of {size // MiB} MiB on XFS",
                          times["reflink"], "fibackup full copy", times["copy"],
                          note="restore's default; snapshot -b --reflink (opt-in)")


def run(settings: Settings) -> list[Row]:
    scratch = os.path.join(settings.scratch, f"fibackup-bench-copy-{os.getpid()}")
    os.makedirs(scratch)
    try:
        src = os.path.join(scratch, "layer.img")
        make_dense(src, settings.size(2 * GiB, 256 * MiB))
        rows = [dense_row(settings, src, scratch), *sparse_rows(settings, scratch),
                hash_row(settings, src), cache_row(src, scratch), reflink_row(settings)]
    finally:
        remove(scratch)
    return rows


if __name__ == "__main__":
    from benchmarks.common import main_for
    main_for(run)
