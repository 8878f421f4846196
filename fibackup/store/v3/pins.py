"""Pins: restore points of a format-3 store that prune and garbage collection must keep
while something uses them (a served point of instant recovery, which can last weeks;
a legal hold), on any host.

A pin is a document ``pins/<16 hex>.json`` (sealed in an encrypted store) written
once: which domain and point, the indexes that point needs, which host and process
made it, when, and why.  Prune keeps a pinned point; garbage collection counts the
indexes a pin names as referenced even when the manifest is gone.  A pin is removed
by what made it, or by hand (``fibackup pin remove``) once it is stale.
"""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass

from fibackup.errors import CorruptStoreError
from fibackup.fsutil import host_name
from fibackup.model.naming import utc_time
from fibackup.model.points import RestorePoint
from fibackup.store.backend import Backend, json_names

PINS = "pins"
PIN_KIND = "fibackup-pin"


@dataclass(frozen=True)
class Pin:
    name: str
    domain_uuid: str
    domain_name: str
    point: str
    seq: int
    indexes: tuple[str, ...]
    host: str
    pid: int
    time: str
    reason: str

    @property
    def id(self) -> str:
        return self.name[:-len(".json")]

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "domain": self.domain_name, "uuid": self.domain_uuid,
                "point": self.point, "seq": self.seq, "host": self.host, "pid": self.pid,
                "time": self.time, "reason": self.reason}


def add_pin(backend: Backend, point: RestorePoint, reason: str) -> str:
    """Pin ``point``; the pin's id."""
    name = f"{secrets.token_hex(8)}.json"
    document = {"kind": PIN_KIND, "version": 3, "domain": {"uuid": point.domain_uuid,
                                                           "name": point.domain_name},
                "point": point.id, "seq": point.seq,
                "indexes": sorted({ref.id for ref in point.indexes()}),
                "host": host_name(), "pid": os.getpid(), "time": utc_time(), "reason": reason}
    backend.ensure_dir((PINS,))
    backend.write_new((PINS,), name, json.dumps(document, sort_keys=True).encode())
    return name[:-len(".json")]


def pins(backend: Backend) -> list[Pin]:
    """Every pin of the store (an unreadable one stops the caller: it is never ignored)."""
    found = []
    for name in json_names(backend, (PINS,)):
        path = backend.path((PINS,), name)
        try:
            document = json.loads(backend.read((PINS,), name))
            domain = document["domain"]
            found.append(Pin(name, str(domain["uuid"]), str(domain["name"]),
                             str(document["point"]), int(document["seq"]),
                             tuple(str(index) for index in document["indexes"]),
                             str(document["host"]), int(document["pid"]),
                             str(document["time"]), str(document.get("reason", ""))))
        except FileNotFoundError:
            continue
        except (ValueError, KeyError, TypeError, CorruptStoreError) as error:
            raise CorruptStoreError(f"the pin {path} cannot be read ({error}); prune and "
                                    "garbage collection stop until it is removed or "
                                    "repaired", path=path) from None
        if document.get("kind") != PIN_KIND:
            raise CorruptStoreError(f"{path} is not a pin", path=path)
    return found


def remove_pin(backend: Backend, pin_id: str) -> bool:
    """Remove a pin; False when there is none of that id."""
    name = f"{pin_id}.json"
    if name not in {pin.name for pin in pins(backend)}:
        return False
    backend.remove((PINS,), name)
    return True
