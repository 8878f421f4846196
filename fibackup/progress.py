"""Progress bars on stderr: whole lines above, one status line redrawn in place below.

A :class:`Console` owns the stream.  Message lines (``Console.line``) are
written whole; while tasks run, a terminal also shows one status line holding
every running task's bar (several disks copy in parallel threads: they share
that one line instead of fighting over the cursor).  The status line is erased
before a message line is written and drawn again after it, all under one lock,
so threads never garble each other's output.

The per-chunk cost of a task is an addition, a clock read and a comparison:
the line is redrawn at most every ``REDRAW_INTERVAL`` seconds, by whichever
thread finds it due and the lock free (a busy lock means someone else draws).
Nothing of this is used when the stream is not a terminal.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from typing import Callable, Optional, Protocol, Sequence, TextIO

from fibackup.fsutil import human

REDRAW_INTERVAL = 0.1
"""Seconds between redraws: at most 10 a second, invisible next to a copy's work."""
BAR_MIN = 10
BAR_MAX = 30
RATE_AFTER = 1.0
"""Seconds before a rate (and so an ETA) is shown: earlier ones are noise."""


class JobProgress(Protocol):
    """What a block job reports: libvirt's ``cur`` and ``end`` (``end`` may still grow)."""

    def update(self, done: int, total: int) -> None: ...


class Bar:
    """One task's counter; call it with the bytes just processed (cheap: once per chunk)."""

    __slots__ = ("console", "label", "total", "done", "started")

    def __init__(self, console: "Console", label: str, total: int, started: float) -> None:
        self.console = console
        self.label = label
        self.total = max(0, total)
        self.done = 0
        self.started = started

    def __call__(self, count: int) -> None:
        self.done += count
        if self.console.clock() >= self.console.due:
            self.console.tick()

    def update(self, done: int, total: int) -> None:
        """Absolute progress (a block job's cur/end): the total may change as it runs."""
        self.done, self.total = done, max(0, total)
        if self.console.clock() >= self.console.due:
            self.console.tick()


class Console:
    """A stream written line by line; with ``live``, plus a status line of progress bars."""

    def __init__(self, stream: TextIO, live: bool, clock: Callable[[], float] = time.monotonic,
                 interval: float = REDRAW_INTERVAL,
                 width: Optional[Callable[[], int]] = None) -> None:
        self.stream = stream
        self.live = live
        self.clock = clock
        self.interval = interval
        self.width = width or (lambda: terminal_width(stream))
        self.lock = threading.Lock()
        self.bars: list[Bar] = []
        self.due = float("inf")
        """When the status line may be redrawn next (never while no bar runs)."""
        self.shown = 0
        """Characters of the status line now on screen (0: none)."""

    def line(self, text: str) -> None:
        """Write one whole line (the status line, if any, stays below it)."""
        with self.lock:
            self._erase()
            self.stream.write(text + "\n")
            self._draw()
            self.stream.flush()

    def start(self, label: str, total: int) -> Bar:
        bar = Bar(self, label, total, self.clock())
        with self.lock:
            self.bars.append(bar)
            self._draw()
            self.stream.flush()
        return bar

    def stop(self, bar: Bar, completed: bool) -> None:
        """Take ``bar`` off the status line; a completed task leaves its summary line."""
        with self.lock:
            if bar in self.bars:
                self.bars.remove(bar)
            self._erase()
            if completed:
                self.stream.write(render_final(bar, self.clock()) + "\n")
            self._draw()
            self.stream.flush()

    def tick(self) -> None:
        """Redraw if due; a thread that finds another drawing skips (it drew just now)."""
        if not self.lock.acquire(blocking=False):
            return
        try:
            if self.clock() >= self.due:
                self._draw()
                self.stream.flush()
        finally:
            self.lock.release()

    def _draw(self) -> None:
        if not self.live or not self.bars:
            self._erase()
            self.due = float("inf")
            return
        now = self.clock()
        self.due = now + self.interval
        text = render_status(self.bars, now, self.width())
        self.stream.write("\r" + text + " " * (self.shown - len(text)))
        self.shown = len(text)

    def _erase(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * self.shown + "\r")
            self.shown = 0


def terminal_width(stream: TextIO) -> int:
    """Columns of the terminal behind ``stream`` (not stdout's: that may be a pipe); a
    terminal that does not know its size (0 columns) counts as $COLUMNS or 80."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        columns = 0
    return columns if columns > 0 else shutil.get_terminal_size().columns


def render_status(bars: Sequence[Bar], now: float, width: int) -> str:
    """The status line: one bar for one task; for several, each task's percentage and
    one bar over all of them.  Never wider than ``width - 1`` (a full line would wrap)."""
    done = sum(min(bar.done, bar.total) if bar.total else bar.done for bar in bars)
    total = sum(bar.total for bar in bars)
    if len(bars) == 1:
        head = bars[0].label
    else:
        head = "  ".join(f"{bar.label} {_percent(bar.done, bar.total)}" for bar in bars)
    rate = sum(_rate(bar, now) for bar in bars)
    tail = f" {_percent(done, total)} {human(done)} of {human(total)}  {_speed(rate)}"
    tail += f"  ETA {_clock(_eta(done, total, rate))}"
    room = width - 1 - len(head) - len(tail) - 3
    if room >= BAR_MIN:
        return f"{head} [{_graphic(done, total, min(room, BAR_MAX))}]{tail}"
    return _cut(head + tail, width - 1)


def render_final(bar: Bar, now: float) -> str:
    """What a completed task leaves on screen: how much, how long, how fast."""
    elapsed = max(0.0, now - bar.started)
    speed = bar.done / elapsed if elapsed > 0 else 0.0
    return f"{bar.label}: {human(bar.done)} in {_clock(elapsed)} ({human(speed)}/s)"


def _percent(done: int, total: int) -> str:
    return f"{min(100, done * 100 // total):3d}%" if total > 0 else "  ?%"


def _rate(bar: Bar, now: float) -> float:
    elapsed = now - bar.started
    return bar.done / elapsed if elapsed >= RATE_AFTER else 0.0


def _speed(rate: float) -> str:
    return f"{human(rate)}/s" if rate > 0 else "-/s"


def _eta(done: int, total: int, rate: float) -> Optional[float]:
    if rate <= 0 or total <= 0:
        return None
    return max(0, total - done) / rate


def _clock(seconds: Optional[float]) -> str:
    if seconds is None:
        return "--:--"
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _graphic(done: int, total: int, width: int) -> str:
    filled = min(width, done * width // total) if total > 0 else 0
    return "#" * filled + "." * (width - filled)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(0, width - 3)] + "..."
