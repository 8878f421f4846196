"""qemu/reader.py reads a chain's view from the layer files at the offsets qemu-img map
gives; these tests prove, on real images made by qemu-img and qemu-io, that it reads
exactly what QEMU presents (qemu-storage-daemon's export of the same chain), for every
shape of chain a backup or a restore meets, and that it leaves to QEMU what only QEMU
can decode."""
from __future__ import annotations

import os
import random
import subprocess

import pytest

from fibackup.qemu import reader, view
from fibackup.qemu.reader import Source

MiB = 1 << 20


def qemu_io(path: str, image_format: str, *commands: str) -> None:
    args = ["qemu-io", "-f", image_format]
    for command in commands:
        args += ["-c", command]
    subprocess.run([*args, path], check=True, capture_output=True)


def overlay(path: str, backing: str, backing_format: str, size: str = "", *options: str) -> None:
    args = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", backing_format, "-b", backing]
    for option in options:
        args += ["-o", option]
    subprocess.run([*args, path, *([size] if size else [])], check=True)


def host_files(path: str, size: int) -> None:
    """Compressible real data: this host's files, concatenated."""
    with open(path, "wb") as out:
        written = 0
        for root, _dirs, names in os.walk("/usr/share/doc"):
            for name in sorted(names):
                try:
                    with open(os.path.join(root, name), "rb") as handle:
                        data = handle.read(size - written)
                except OSError:
                    continue
                out.write(data)
                written += len(data)
                if written >= size:
                    return
        out.write(bytes(size - written))


def assert_reads_as_qemu(chain, step: int = 3 * MiB + 4097) -> set[Source]:
    """Read the whole view with the reader in unaligned pieces that cross extents, and
    compare with the export; the sources it used."""
    extents = view.allocation(chain)
    size = sum(extent.length for extent in extents)
    with view.exported(chain) as presented, open(presented, "rb") as qemu, \
            reader.reading(chain, extents) as direct:
        assert os.path.getsize(presented) == size
        offset = 0
        while offset < size:
            length = min(step, size - offset)
            expected = qemu.read(length)
            assert direct.read(offset, length) == expected, f"bytes {offset}-{offset + length}"
            offset += length
        for _ in range(64):                       # small reads anywhere
            start = random.randrange(size)
            length = min(random.randrange(1, 256 * 1024), size - start)
            qemu.seek(start)
            assert direct.read(start, length) == qemu.read(length)
        with pytest.raises(OSError):
            direct.read(size - 10, 20)
    return set(reader.sources(chain, extents))


def test_raw_base_with_holes_under_qcow2_overlays(tmp_path):
    base = str(tmp_path / "base.raw")
    with open(base, "wb") as handle:
        handle.truncate(48 * MiB)
    qemu_io(base, "raw", "write -P 0x11 0 3M", "write -P 0x22 20M 5M", "write -P 0x33 47M 1M")
    top1, top2 = str(tmp_path / "top1.qcow2"), str(tmp_path / "top2.qcow2")
    overlay(top1, base, "raw")
    qemu_io(top1, "qcow2", "write -P 0x44 1M 4M", "write -z 21M 1M", "discard 2M 64k",
            "write -P 0x45 30M 12k")
    overlay(top2, top1, "qcow2", "64M")           # grown past the layers below
    qemu_io(top2, "qcow2", "write -P 0x55 22M 2M", "write -P 0x66 60M 1M")
    used = assert_reads_as_qemu([(base, "raw"), (top1, "qcow2"), (top2, "qcow2")])
    assert Source.QEMU not in used
    assert used == {Source.FILE, Source.ZERO}


def test_qcow2_base_subclusters_and_small_clusters(tmp_path):
    base = str(tmp_path / "base.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                    "cluster_size=4096", base, "40M"], check=True)
    qemu_io(base, "qcow2", *(f"write -P {n} {n * 397}k 5k" for n in range(1, 60)))
    top = str(tmp_path / "top.qcow2")
    overlay(top, base, "qcow2", "", "extended_l2=on", "cluster_size=65536")
    qemu_io(top, "qcow2", "write -P 0x77 1k 3k", "write -P 0x78 100k 300k", "write -z 8k 4k")
    assert Source.QEMU not in assert_reads_as_qemu([(base, "qcow2"), (top, "qcow2")])


def test_compressed_clusters_are_read_through_qemu(tmp_path):
    data = str(tmp_path / "data.raw")
    host_files(data, 24 * MiB)
    base = str(tmp_path / "base.qcow2")
    subprocess.run(["qemu-img", "convert", "-q", "-c", "-O", "qcow2", "-f", "raw", data, base],
                   check=True)
    top = str(tmp_path / "top.qcow2")
    overlay(top, base, "qcow2")
    qemu_io(top, "qcow2", "write -P 0x99 5M 2M")
    used = assert_reads_as_qemu([(base, "qcow2"), (top, "qcow2")])
    assert Source.QEMU in used and Source.FILE in used


def test_an_external_data_file_is_read_through_qemu(tmp_path):
    image, data = str(tmp_path / "disk.qcow2"), str(tmp_path / "disk.data")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={data}",
                    image, "16M"], check=True)
    qemu_io(image, "qcow2", "write -P 0x12 1M 3M")
    used = assert_reads_as_qemu([(image, "qcow2")])
    assert Source.FILE not in used and Source.QEMU in used


def test_a_raw_disk_alone(tmp_path):
    disk = str(tmp_path / "disk.raw")
    with open(disk, "wb") as handle:
        handle.write(os.urandom(5 * MiB + 512))
        handle.truncate(9 * MiB + 512)
    assert assert_reads_as_qemu([(disk, "raw")], step=MiB) <= {Source.FILE, Source.ZERO}
