"""The copy engine's machinery: page cache policy, bandwidth limit, parallel disks, rates."""
from __future__ import annotations

import os
import threading
import time

import pytest

from fibackup.rates import parse_rate
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
        for _ in range(8):
            throttle.consume(MiB)

    threads = [threading.Thread(target=consume) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert time.monotonic() - start >= 0.9          # 16 MiB at 8 MiB/s, one second's credit


def test_throttle_stop_wakes_sleepers_at_once():
    throttle = Throttle(64 * 1024)
    throttle.consume(64 * 1024)                        # the credit is spent
    timer = threading.Timer(0.2, throttle.stop)
    timer.start()
    start = time.monotonic()
    throttle.consume(64 * MiB)                         # would sleep ~17 minutes
    assert time.monotonic() - start < 5
    timer.join()


def test_throttle_idle_time_earns_one_second_at_most():
    throttle = Throttle(MiB)
    throttle.consume(MiB)
    time.sleep(0.3)                                    # idle: at most BURST of credit
    start = time.monotonic()
    throttle.consume(2 * MiB)
    assert time.monotonic() - start >= 0.5


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
                                        ("64MB", 64 * MiB), ("65536B", 65536),
                                        ("100 M", 100 * MiB), ("2KB", None)])
def test_parse_rate(text, rate):
    if rate is None:
        with pytest.raises(UsageError, match="below 64K"):
            parse_rate(text)
    else:
        assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "0", "-5M", "fast", "12x", "nan", "inf", "1000B",
                                  "1e-9", "0.0000001"])
def test_parse_rate_refuses_nonsense(text):
    with pytest.raises(UsageError, match="--bwlimit"):
        parse_rate(text)


class _FailingLibc:
    """sync_file_range reporting a write error, as the kernel does once per file."""

    def __init__(self, error: int) -> None:
        self.error = error

    def sync_file_range(self, fd, offset, length, flags) -> int:
        import ctypes
        if flags & pagecache.SYNC_FILE_RANGE_WAIT_AFTER:
            ctypes.set_errno(self.error)
            return -1
        return 0


def _fail_write_behind(monkeypatch, error: int) -> None:
    original = pagecache.WriteBehind.__init__

    def init(self, fd: int) -> None:
        original(self, fd)
        self.libc = _FailingLibc(error)

    monkeypatch.setattr(pagecache.WriteBehind, "__init__", init)
    monkeypatch.setattr(pagecache.WriteBehind, "LAG", 1)


def test_write_error_seen_by_write_behind_fails_the_copy(dense, tmp_path, monkeypatch):
    import errno
    _fail_write_behind(monkeypatch, errno.EIO)
    with pytest.raises(OSError) as caught:
        scan_file(dense, str(tmp_path / "copy"))
    assert caught.value.errno == errno.EIO


def test_write_behind_unsupported_falls_back_to_fsync(dense, tmp_path, monkeypatch):
    import errno
    _fail_write_behind(monkeypatch, errno.ESPIPE)
    copy = str(tmp_path / "copy")
    assert scan_file(dense, copy).ok
    with open(dense, "rb") as a, open(copy, "rb") as b:
        assert a.read() == b.read()
