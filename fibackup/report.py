"""Human-facing progress and warning lines, on stderr so stdout stays parseable."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from fibackup.fsutil import human

PROGRESS_INTERVAL = 2.0


@dataclass
class Reporter:
    quiet: bool = False
    warnings: list[str] = field(default_factory=list)

    def info(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)

    def progress(self, label: str, total: int) -> Optional[Callable[[int], None]]:
        """A byte counter that prints ``label: NN% of SIZE`` at most every 2 s on a terminal."""
        if self.quiet or not sys.stderr.isatty() or total <= 0:
            return None
        state = {"done": 0, "shown": time.monotonic()}

        def advance(count: int) -> None:
            state["done"] += count
            now = time.monotonic()
            if now - state["shown"] >= PROGRESS_INTERVAL:
                state["shown"] = now
                percent = min(100, state["done"] * 100 // total)
                print(f"  {label}: {percent}% of {human(total)}", file=sys.stderr, flush=True)

        return advance
