"""Names fibackup gives to overlays, restore points and stored layers (pure)."""
from __future__ import annotations

import datetime as _dt
import os
import re
import secrets
from collections import Counter
from typing import Callable, Mapping

OVERLAY_MARK = ".bimg-"
TAG_FORMAT = "%Y%m%d-%H%M%S"
_TAG_RE = re.compile(r"^\d{8}-\d{6}(-\d+)?$")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
"""How every time fibackup writes is spelled: UTC, to the second (``2026-11-23T10:00:00Z``)."""


def utc_moment() -> _dt.datetime:
    """Now, in UTC (timezone-aware)."""
    return _dt.datetime.now(_dt.timezone.utc)


def utc_time(when: _dt.datetime | None = None) -> str:
    """``when`` (default: now) as fibackup writes times: :data:`TIME_FORMAT`, in UTC."""
    when = utc_moment() if when is None else when
    if when.tzinfo is not None:
        when = when.astimezone(_dt.timezone.utc)
    return when.strftime(TIME_FORMAT)


def parse_utc_time(text: str) -> _dt.datetime:
    """A time written by :func:`utc_time` (naive, in UTC); ValueError if it is not one."""
    return _dt.datetime.strptime(text, TIME_FORMAT)


def timestamp_tag(when: _dt.datetime) -> str:
    """The UTC timestamp tag ``YYYYmmdd-HHMMSS`` of a moment (no colon)."""
    if when.tzinfo is not None:
        when = when.astimezone(_dt.timezone.utc)
    return when.strftime(TAG_FORMAT)


def is_tag(text: str) -> bool:
    """Whether ``text`` looks like a restore point id / overlay tag."""
    return bool(_TAG_RE.match(text))


def unique_tag(base: str, taken: Callable[[str], bool]) -> str:
    """``base`` if free, else ``base-2``, ``base-3``... (two runs in one second)."""
    candidate = base
    counter = 1
    while taken(candidate):
        counter += 1
        candidate = f"{base}-{counter}"
    return candidate


def image_stem(filename: str) -> str:
    """An image's name without directory, extension or earlier ``.bimg-`` suffix.

    ``disk.qcow2`` -> ``disk``; ``disk.bimg-20260101-000000`` -> ``disk``;
    ``my.disk.img`` -> ``my.disk``.  Colons become ``_`` because QEMU reads
    ``x:`` in a backing file name as a protocol prefix.
    """
    name = os.path.basename(filename)
    mark = name.find(OVERLAY_MARK)
    if mark > 0:
        name = name[:mark]
    else:
        root, _ext = os.path.splitext(name)
        if root:
            name = root
    name = name.replace(":", "_")
    return name or "disk"


def overlay_path(image_path: str, tag: str) -> str:
    """The overlay ``<dir>/<stem>.bimg-<tag>`` for an image at ``image_path``."""
    directory = os.path.dirname(image_path)
    return os.path.join(directory, f"{image_stem(image_path)}{OVERLAY_MARK}{tag}")


def overlay_paths(actives: Mapping[str, str], tag: str) -> dict[str, str]:
    """Overlay paths for each disk target's active image, never two alike.

    Two disks whose images share a directory and stem (``vm.qcow2`` and
    ``vm.img``) get ``<stem>.<target>.bimg-<tag>`` instead of one shared name
    (with ``-2``, ``-3``... in the unlikely case that is taken too).
    """
    plain = {target: overlay_path(path, tag) for target, path in actives.items()}
    counts = Counter(plain.values())
    result: dict[str, str] = {}
    for target in sorted(actives):
        if counts[plain[target]] == 1:
            result[target] = plain[target]
    for target in sorted(actives):
        if target in result:
            continue
        directory = os.path.dirname(plain[target])
        stem = f"{image_stem(actives[target])}.{safe_component(target)}"
        candidate, counter = os.path.join(directory, f"{stem}{OVERLAY_MARK}{tag}"), 1
        while candidate in result.values():
            counter += 1
            candidate = os.path.join(directory, f"{stem}-{counter}{OVERLAY_MARK}{tag}")
        result[target] = candidate
    return {target: result[target] for target in actives}


def new_layer_id(tag: str, target: str, position: int) -> str:
    """A store-unique id for a layer copied in run ``tag`` (random suffix)."""
    return f"{tag}-{safe_component(target)}-{position:03d}-{secrets.token_hex(6)}"


def merged_layer_id(tag: str, target: str) -> str:
    """A store-unique id for a layer that prune run ``tag`` merged."""
    return f"{tag}-{safe_component(target)}-merged-{secrets.token_hex(6)}"


def safe_component(text: str) -> str:
    """``text`` reduced to characters that are safe in any file name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip(".").replace("..", "__")
    return cleaned or "_"
