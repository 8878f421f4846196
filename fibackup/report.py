"""What a run tells its human: lines and progress bars on stderr, and the run's log file.

stdout stays for results (tables, ``--json``).  Every stderr message is one line
(line breaks and control characters inside a message are flattened) with a
stable prefix: nothing for information, ``warning: ``, ``fibackup: `` for errors.
Under systemd, when stderr is the journal stream (``$JOURNAL_STREAM`` names it),
each line starts with its sd-daemon level, ``<6>``, ``<4>`` or ``<3>``, which
journald strips and records as the priority.  Progress bars are drawn only on a
terminal (progress.py), never with ``--quiet`` or ``--json``.

With a backup directory, every line (information too, even under ``--quiet``)
also goes to the run's log in ``DIR/logs`` (runlog.py), without the prefixes.
"""
from __future__ import annotations

import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence, TextIO

from fibackup.progress import Bar, Console
from fibackup.runlog import RunLog

PREFIXES = {"info": "", "warning": "warning: ", "error": "fibackup: "}
JOURNAL_LEVELS = {"info": "<6>", "warning": "<4>", "error": "<3>"}
"""sd-daemon(3) priorities: LOG_INFO, LOG_WARNING, LOG_ERR."""

_BREAKS = re.compile(r"\s*[\r\n]+\s*")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass
class Reporter:
    quiet: bool = False
    """Only warnings and errors on stderr (the log still gets every line)."""
    bars: bool = True
    """Progress bars allowed (off for --json); drawn only when stderr is a terminal."""
    warnings: list[str] = field(default_factory=list)
    stream: Optional[TextIO] = None
    """Where lines go [default: sys.stderr at the time the Reporter is made]."""
    log: Optional[RunLog] = None

    def __post_init__(self) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        self.console = Console(stream, live=self.bars and not self.quiet and _is_tty(stream))
        self.levels = journal_stream(stream)
        self._log_failed = False

    def info(self, message: str) -> None:
        self._line("info", message, show=not self.quiet)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self._line("warning", message)

    def error(self, message: str, prefix: Optional[str] = None) -> None:
        """An error line, ``fibackup: `` first unless another ``prefix`` is given."""
        self._line("error", message, prefix=prefix)

    def record(self, message: str) -> None:
        """A result the run prints on stdout (or as JSON): for the log only."""
        self._log("info", one_line(message))

    @contextmanager
    def progress(self, label: str, total: int) -> Iterator[Optional[Bar]]:
        """A progress bar for the ``with`` block: call it with each count of bytes done
        (or ``.update(done, total)``).  None (pass it on: copies take None) when no bar
        is drawn.  A block that ends normally leaves a summary line on the terminal."""
        if not self.console.live:
            yield None
            return
        bar = self.console.start(label, total)
        completed = False
        try:
            yield bar
            completed = True
        finally:
            self.console.stop(bar, completed)

    def open_log(self, backup_dir: str, command: str, argv: Sequence[str]) -> None:
        """Log this run into ``backup_dir/logs`` (from now on, and its start line)."""
        self.log = RunLog(backup_dir, command, argv)
        self._log_problem(self.log.problem)

    def close(self, code: int) -> None:
        """The run ended with exit ``code``: the log gets its outcome and is closed."""
        if self.log is not None:
            self._log_problem(self.log.close(code))

    def _line(self, level: str, message: str, show: bool = True,
              prefix: Optional[str] = None) -> None:
        text = one_line(message)
        self._log(level, text)
        if show:
            self._show(level, (PREFIXES[level] if prefix is None else prefix) + text)

    def _show(self, level: str, line: str) -> None:
        self.console.line((JOURNAL_LEVELS[level] if self.levels else "") + line)

    def _log(self, level: str, text: str) -> None:
        if self.log is not None:
            self._log_problem(self.log.write(level, text))

    def _log_problem(self, problem: Optional[str]) -> None:
        """A log that cannot be written is a warning (once), never a failure."""
        if problem is not None and not self._log_failed:
            self._log_failed = True
            self._show("warning", PREFIXES["warning"] + one_line(problem))


def one_line(message: str) -> str:
    """``message`` as one line: line breaks become spaces, control characters (ANSI
    escapes too) are written as ``\\xNN`` so they reach no terminal or journal."""
    flat = _BREAKS.sub(" ", message.strip())
    return _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", flat)


def journal_stream(stream: TextIO) -> bool:
    """Whether ``stream`` is systemd's journal stream: ``$JOURNAL_STREAM`` holds its
    ``device:inode`` (a stderr redirected elsewhere by the service does not match)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        info = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
