"""Human-facing progress and warning lines, on stderr so stdout stays parseable."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field


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
