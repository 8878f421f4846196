"""What the commands print on stdout: JSON documents, tables and one-line results.

``tabulate`` and fibackup.fsutil (for ``human``) are imported when a table is drawn,
not when the CLI starts (docs/PERFORMANCE.md, "Start-up").
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    from fibackup.commands.listing import LayerStatus
    from fibackup.commands.verify import VerifyResult
    from fibackup.config import Config


def emit_json(document: object) -> None:
    print(json.dumps(document, indent=2, sort_keys=True))


def _table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    from tabulate import tabulate
    text: str = tabulate(rows, headers=headers)
    return text


def _human(size: Any) -> str:
    from fibackup.fsutil import human
    return human(size)


def print_disks(document: object, disks: Mapping[str, str], as_json: bool) -> None:
    """A restore's result: the JSON document, or one ``target: image`` line per disk."""
    if as_json:
        emit_json(document)
    else:
        for target, path in sorted(disks.items()):
            print(f"{target}: {path}")


def points_table(rows: Sequence[Mapping[str, Any]], several: bool) -> str:
    """``fibackup list``: one line per restore point; with several stores (object storage
    holding one per host), the store and host first."""
    table = [[*([row["store"], row["host"]] if several else []), row["domain"], row["seq"],
              row["id"], row["time"], ",".join(row["disks"]), row["layers"],
              _human(row["bytes_new"]), _human(row["bytes_total"]),
              "yes" if row["quiesced"] else "no"]
             for row in rows]
    return _table(table, [*(["store", "host"] if several else []), "domain", "seq", "id",
                          "time (UTC)", "disks", "layers", "new", "restore size", "quiesced"])


def chain_table(layers: Sequence["LayerStatus"], with_backup: bool) -> str:
    """``fibackup status``: one disk's live chain, top first; with -b, the stored layer
    each frozen one is (or NOT BACKED UP)."""
    headers = ["role", "format", "path"] + (["in backup"] if with_backup else [])
    rows = [[layer.role, layer.format, layer.path,
             "" if not with_backup else (layer.backed_up or
                                         ("-" if layer.role == "active" else "NOT BACKED UP"))]
            for layer in layers]
    return _table([row[:len(headers)] for row in rows], headers)


def keys_table(keys: Sequence[Any]) -> str:
    """``fibackup key list``: one line per wrapped key."""
    return _table([[key.id, key.host, key.created, "yes" if key.current else ""]
                   for key in keys], ["id", "host", "created (UTC)", "this passphrase"])


def pins_table(pins: Sequence[Any]) -> str:
    """``fibackup pin list``: one line per pin."""
    return _table([[pin.id, pin.domain_name, pin.seq, pin.point, pin.host, pin.time, pin.reason]
                   for pin in pins], ["pin", "domain", "seq", "point", "host", "since (UTC)",
                                      "reason"])


def settings_table(settings: "Config") -> str:
    """``fibackup config show``: each setting, its value and where it comes from."""
    return _table([[name, settings.shown(name), setting.source]
                   for name, setting in settings.effective().items()],
                  ["setting", "value", "from"])


def verify_summary(result: "VerifyResult") -> str:
    """What ``fibackup verify`` read: points, layers, files and bytes."""
    files = f"{result.files} file(s), " if result.files else ""
    return (f"{result.points} restore point(s), {result.layers} layer(s), {files}"
            f"{_human(result.bytes_read)} read")


def mounts_table(records: Sequence[Any]) -> str:
    return _table([(record.mountpoint, record.domain, record.point, record.state,
                    record.system or f"{len(record.shown)} filesystem(s)", record.pid)
                   for record in records],
                  ["mountpoint", "domain", "point", "state", "shows", "pid"])
