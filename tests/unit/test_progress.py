"""Progress bars and stderr lines: rendered to a fake terminal, with a fake clock."""
from __future__ import annotations

import io
import os
import threading

import pytest

from fibackup.progress import Bar, Console, render_final, render_status
from fibackup.report import Reporter, journal_stream, one_line

MiB = 1024 * 1024


class FakeTTY(io.StringIO):
    """A terminal as far as fibackup can tell: isatty() says so."""

    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def screen(output: str) -> tuple[list[str], str]:
    """What a terminal shows after ``output``: the finished lines and the current one
    (``\\r`` returns to column 0 and the next characters overwrite)."""
    lines: list[str] = []
    current: list[str] = []
    column = 0
    for char in output:
        if char == "\n":
            lines.append("".join(current).rstrip())
            current, column = [], 0
        elif char == "\r":
            column = 0
        else:
            if column < len(current):
                current[column] = char
            else:
                current.append(char)
            column += 1
    return lines, "".join(current).rstrip()


def console(clock: Clock, width: int = 100) -> tuple[Console, FakeTTY]:
    stream = FakeTTY()
    return Console(stream, live=True, clock=clock, width=lambda: width), stream


def test_bar_redraws_at_most_every_interval():
    clock = Clock()
    out, stream = console(clock)
    bar = out.start("vda base.qcow2", 100 * MiB)
    drawn = stream.getvalue().count("\r")
    for _ in range(1000):                       # a burst of chunks within one interval
        bar(4096)
    assert stream.getvalue().count("\r") == drawn
    clock.now += 0.05
    bar(4096)
    assert stream.getvalue().count("\r") == drawn
    clock.now += 0.06
    bar(4096)
    assert stream.getvalue().count("\r") == drawn + 1
    _, status = screen(stream.getvalue())
    assert status.startswith("vda base.qcow2 [") and "%" in status and "ETA" in status


def test_status_line_shows_percent_bytes_rate_and_eta():
    clock = Clock()
    bar = Bar(console(clock)[0], "vda", 100 * MiB, started=clock.now)
    bar.done = 25 * MiB
    text = render_status([bar], clock.now + 5, 100)
    assert "[" in text and " 25% " in text
    assert "25.0 MiB of 100.0 MiB" in text and "5.0 MiB/s" in text and "ETA 0:15" in text


def test_status_line_never_wraps():
    clock = Clock()
    bars = [Bar(console(clock)[0], f"vd{letter} a-rather-long-layer-name.qcow2", 10 * MiB,
                started=clock.now) for letter in "abcd"]
    for width in (10, 40, 80, 200):
        assert len(render_status(bars, clock.now + 3, width)) <= width - 1


def test_parallel_tasks_share_one_line_and_leave_final_lines():
    clock = Clock()
    out, stream = console(clock, width=120)
    first, second = out.start("vda", 8 * MiB), out.start("vdb", 8 * MiB)
    clock.now += 1
    first(8 * MiB)
    clock.now += 0.2                            # the next redraw is due
    second(2 * MiB)
    _, status = screen(stream.getvalue())
    assert "vda 100%" in status and "vdb  25%" in status and " 62% " in status
    out.line("web: copying vdc")
    out.stop(first, completed=True)
    clock.now += 1
    out.stop(second, completed=False)           # failed: no summary line
    lines, status = screen(stream.getvalue())
    assert lines == ["web: copying vdc", "vda: 8.0 MiB in 0:01 (6.7 MiB/s)"]   # 1.2 s
    assert status == ""                         # the status line is gone when no task runs


def test_final_line():
    clock = Clock()
    bar = Bar(console(clock)[0], "vda 3", 4 * MiB, started=clock.now)
    bar(4 * MiB)
    assert render_final(bar, clock.now + 2) == "vda 3: 4.0 MiB in 0:02 (2.0 MiB/s)"


def test_block_job_progress_is_absolute_and_its_end_may_grow():
    clock = Clock()
    out, stream = console(clock)
    bar = out.start("vda commit", 0)
    assert "?%" in screen(stream.getvalue())[1]
    clock.now += 1
    bar.update(50 * MiB, 100 * MiB)
    assert " 50% " in screen(stream.getvalue())[1]
    clock.now += 1
    bar.update(60 * MiB, 200 * MiB)             # an active commit: the guest keeps writing
    assert " 30% " in screen(stream.getvalue())[1]


def test_threads_never_garble_lines():
    out = Console(FakeTTY(), live=True, interval=0.0, width=lambda: 80)
    messages = [f"thread {number} message {index}" for number in range(4) for index in range(50)]

    def work(number: int) -> None:
        bar = out.start(f"vd{'abcd'[number]}", 50 * 4096)
        for index in range(50):
            bar(4096)
            out.line(f"thread {number} message {index}")
        out.stop(bar, completed=True)

    threads = [threading.Thread(target=work, args=(number,)) for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines, status = screen(out.stream.getvalue())
    assert sorted(line for line in lines if line.startswith("thread")) == sorted(messages)
    finals = [line for line in lines if not line.startswith("thread")]
    assert sorted(line.split(":")[0] for line in finals) == ["vda", "vdb", "vdc", "vdd"]
    assert status == ""


def test_reporter_on_a_terminal_draws_bars_and_lines():
    stream = FakeTTY()
    report = Reporter(stream=stream)
    with report.progress("vda", MiB) as bar:
        assert bar is not None
        report.info("copying")
        bar(MiB)
    lines, status = screen(stream.getvalue())
    assert lines[0] == "copying" and lines[1].startswith("vda: 1.0 MiB in ")
    assert status == ""


@pytest.mark.parametrize("quiet, bars", [(True, True), (False, False)])
def test_no_bars_with_quiet_or_json(quiet, bars):
    stream = FakeTTY()
    report = Reporter(quiet=quiet, bars=bars, stream=stream)
    with report.progress("vda", MiB) as bar:
        assert bar is None
        report.warn("careful")
    assert stream.getvalue() == "warning: careful\n"


def test_not_a_terminal_gets_plain_single_lines():
    stream = io.StringIO()
    report = Reporter(stream=stream)
    with report.progress("vda", MiB) as bar:
        assert bar is None                      # nothing to call per chunk
        report.info("first\nsecond\r\n  third")
        report.warn("disk \x1b[31mred\x1b[0m")
        report.error("it failed")
    assert stream.getvalue() == ("first second third\n"
                                 "warning: disk \\x1b[31mred\\x1b[0m\n"
                                 "fibackup: it failed\n")
    assert "\r" not in stream.getvalue()


def test_one_line():
    assert one_line("a\n\nb \n c\t\x07") == "a b c\t\\x07"


def test_journald_level_prefixes(tmp_path, monkeypatch):
    with open(tmp_path / "journal", "w+") as stream:
        info = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        assert journal_stream(stream)
        report = Reporter(stream=stream)
        report.info("one")
        report.warn("two")
        report.error("three")
        stream.seek(0)
        assert stream.read() == "<6>one\n<4>warning: two\n<3>fibackup: three\n"


def test_journal_stream_must_be_this_stderr(tmp_path, monkeypatch):
    with open(tmp_path / "other", "w+") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", "1:2")
        assert not journal_stream(stream)        # stderr redirected away from the journal
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert not journal_stream(stream)
    assert not journal_stream(io.StringIO())
