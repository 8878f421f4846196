"""The copy engine's machinery: page cache policy, bandwidth limit, parallel disks, rates."""
from __future__ import annotations

import os
import threading
import time

import pytest

from fibackup.cli import parse_rate
from fibackup.commands.parallel import Cancelled, run_each
from fibackup.errors import UsageError
from fibackup.store import pagecache
from fibackup.store.chunks import CHUNK_SIZE, Throttle, scan_file

MiB = 1024 * 1024


def cached_pages(path: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        runs = pagecache.uncached_runs(fd, 0, size)
    finally:
        os.close(fd)
    assert runs is not None
    uncached = sum(min(end, size) - start for start, end in runs)
    return (size - uncached) // pagecache.PAGE


def evict(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        pagecache.drop(fd, 0, 0)
    finally:
        os.close(fd)


@pytest.fixture
def dense(tmp_path):
    path = str(tmp_path / "dense.img")
    with open(path, "wb") as handle:
        handle.write(os.urandom(16 * MiB))
    evict(path)
    return path


def test_copy_drops_only_the_source_pages_it_brought_in(dense, tmp_path):
    if cached_pages(dense) != 0:
        pytest.skip("this filesystem keeps pages cached after POSIX_FADV_DONTNEED")
    fd = os.open(dense, os.O_RDONLY)
    os.pread(fd, 2 * MiB, 6 * MiB)                    # the host's own hot range
    os.close(fd)
    hot = cached_pages(dense)
    assert hot >= (2 * MiB) // pagecache.PAGE
    copy = str(tmp_path / "copy")
    scan_file(dense, copy)
    assert cached_pages(dense) == hot                  # still cached, nothing more
    assert cached_pages(copy) == 0                     # the copy went to disk, not to cache
    with open(dense, "rb") as a, open(copy, "rb") as b:
        assert a.read() == b.read()


def test_zero_chunks_are_found_by_digest_and_confirmed(tmp_path):
    path = str(tmp_path / "zeros.img")
    with open(path, "wb") as handle:               # allocated zeros, then one byte of data
        handle.write(bytes(2 * CHUNK_SIZE))
        handle.write(b"\x01" + bytes(CHUNK_SIZE - 1))
    result = scan_file(path)
    assert [chunk.offset for chunk in result.chunks.chunks] == [2 * CHUNK_SIZE]


def test_throttle_paces_all_threads_together():
    throttle = Throttle(8 * MiB)
    start = time.monotonic()

    def consume() -> None:
        for _ in range(4):
            throttle.consume(MiB)

    threads = [threading.Thread(target=consume) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert time.monotonic() - start >= 0.9          # 8 MiB at 8 MiB/s, the first MiB free


def test_throttle_refuses_zero():
    with pytest.raises(ValueError):
        Throttle(0)


def test_run_each_keeps_item_order():
    def action(item: int, guard) -> int:
        time.sleep(0.02 * (3 - item))
        guard(None)(1)
        return item * 10
    assert run_each([1, 2, 3], action, jobs=3) == [10, 20, 30]


def test_run_each_stops_the_others_and_raises_the_real_error():
    started = threading.Event()
    progressed = []

    def action(item: str, guard) -> str:
        progress = guard(None)
        if item == "bad":
            started.wait(2)
            raise OSError(5, "disk error")
        started.set()
        for _ in range(500):
            progress(1)
            progressed.append(1)
            time.sleep(0.01)
        return item

    with pytest.raises(OSError, match="disk error"):
        run_each(["good", "bad"], action, jobs=2)
    assert len(progressed) < 500                     # stopped at a later chunk, not run to the end


def test_run_each_one_job_runs_in_order():
    seen = []
    run_each([1, 2, 3], lambda item, guard: seen.append(item), jobs=1)
    assert seen == [1, 2, 3]


def test_cancelled_alone_is_not_an_error_users_see():
    assert not issubclass(Cancelled, OSError)


@pytest.mark.parametrize("text, rate", [("200M", 200 * MiB), ("200", 200 * MiB),
                                        ("1G", 1024 * MiB), ("500K", 500 * 1024),
                                        ("1.5g", 1536 * MiB), ("100MiB/s", 100 * MiB),
                                        ("64MB", 64 * MiB)])
def test_parse_rate(text, rate):
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "0", "-5M", "fast", "12x", "nan", "inf"])
def test_parse_rate_refuses_nonsense(text):
    with pytest.raises(UsageError, match="--bwlimit"):
        parse_rate(text)
