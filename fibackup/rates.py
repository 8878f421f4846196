"""Bandwidth limits as people type them: ``200M``, ``1G``, ``500K``, ``200`` (MiB/s)."""
from __future__ import annotations

from fibackup.errors import UsageError

RATE_UNITS = {"B": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}
MIN_RATE = 64 * 1024
"""Below this a 4 MiB chunk takes over a minute: surely a typo for a larger unit."""


def parse_rate(text: str, option: str = "--bwlimit") -> int:
    """Bytes per second from ``200M``, ``1.5G``, ``500K``, ``65536B`` or ``200`` (MiB/s);
    ``option`` names where the text came from in the error message."""
    value = text.strip().upper().replace(" ", "").removesuffix("/S")
    if value.endswith("IB") or (value.endswith("B") and value[-2:-1] in ("K", "M", "G")):
        value = value[:-2] if value.endswith("IB") else value[:-1]
    unit = value[-1:] if value[-1:] in RATE_UNITS else "M"
    number = value[:-1] if value[-1:] in RATE_UNITS else value
    try:
        rate = float(number) * RATE_UNITS[unit]
    except ValueError:
        rate = float("nan")
    if not rate > 0 or rate == float("inf"):
        raise UsageError(f"{option} {text!r} is not a rate; use e.g. 200M (MiB/s), 1G or 500K")
    if rate < MIN_RATE:
        raise UsageError(f"{option} {text!r} is below 64K per second, which would take "
                         "minutes per 4 MiB chunk; a plain number means MiB/s (200 = 200M)")
    return int(rate)
