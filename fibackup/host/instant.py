"""Instant-recovery records (docs/FORMAT.md, "Instant recovery").

``<state dir>/instant/<domain-uuid>.json`` exists while a domain runs from a
backup directory's stored layers: it names the store, the restore point, each
disk's overlay in ``--to`` and the stored layers below it, and the ACL entries
fibackup granted the QEMU user.  It is written (atomically) before anything is
granted, created or defined, so a run that dies leaves a record that the next
``restore --instant`` or ``--finalize`` uses to undo what it did.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from fibackup.errors import DomainStateError, InstantRecordError, StateDirError
from fibackup.fsutil import make_private_dirs, remove_quietly, write_file
from fibackup.host.state import state_dir
from fibackup.model.states import InstantStatus

RECORD_KIND = "fibackup-instant"
RECORD_VERSION = 1
STARTING, READY = InstantStatus.STARTING, InstantStatus.READY
"""``starting`` until the domain is defined and started, then ``ready``."""


@dataclass(frozen=True)
class InstantLayer:
    id: str
    path: str
    format: str


@dataclass(frozen=True)
class InstantDisk:
    target: str
    overlay: str
    layers: tuple[InstantLayer, ...]
    """Base first."""

    @property
    def chain(self) -> list[tuple[str, str]]:
        """``(path, format)`` of every layer, base first, the overlay last."""
        return [*((layer.path, layer.format) for layer in self.layers), (self.overlay, "qcow2")]


SERVED_FORMAT = "nbd"
"""The format of a served layer: ``path`` is the socket of an nbdkit serving the raw
disk of a format-3 point (fibackup/serve/daemons.py), ``id`` the index it serves."""


@dataclass
class ServedFrom:
    """What a domain running from served disks needs to bring its servers back."""

    location: str
    """The store (a directory or s3://...)."""
    sizes: dict[str, int]
    """Target -> virtual size of the served disk."""
    password_file: Optional[str] = None
    """The --password-file the recovery was started with (else the configuration's)."""
    pin: Optional[str] = None
    """The pin that keeps the point in the store while the domain runs from it."""

    def to_json(self) -> dict[str, Any]:
        return {"location": self.location, "sizes": dict(sorted(self.sizes.items())),
                "password_file": self.password_file, "pin": self.pin}

    @staticmethod
    def from_json(document: Any) -> "ServedFrom":
        return ServedFrom(str(document["location"]),
                          {str(key): int(value) for key, value in document["sizes"].items()},
                          None if document.get("password_file") is None
                          else str(document["password_file"]),
                          None if document.get("pin") is None else str(document["pin"]))


@dataclass
class InstantRecord:
    domain_uuid: str
    domain_name: str
    store_root: str
    store_id: str
    source_uuid: str
    source_name: str
    point: str
    to: str
    qemu_user: str
    disks: dict[str, InstantDisk]
    grants: list[str] = field(default_factory=list)
    """Paths fibackup gave the QEMU user an ACL entry on (shared with other records)."""
    status: str = STARTING
    """An :class:`~fibackup.model.states.InstantStatus` (as read: the file's string)."""
    created: str = ""
    served: Optional[ServedFrom] = None
    """Set when the disks rest on served format-3 disks (NBD), not on stored files."""

    @property
    def path(self) -> str:
        return record_path(self.domain_uuid)

    def store_files(self) -> set[str]:
        """The stored files the domain's chains name (none for served disks)."""
        return {layer.path for disk in self.disks.values() for layer in disk.layers
                if layer.format != SERVED_FORMAT}

    def save(self) -> None:
        try:
            make_private_dirs(records_dir())
            write_file(self.path, json.dumps(self.to_json(), indent=1).encode(), replace=True)
        except OSError as error:
            raise StateDirError(f"cannot write {self.path} ({error.strerror}); fibackup needs "
                                "a writable state directory") from None

    def remove(self) -> None:
        remove_quietly(self.path)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": RECORD_KIND, "version": RECORD_VERSION, "status": self.status,
            "created": self.created,
            "domain": {"uuid": self.domain_uuid, "name": self.domain_name},
            "store": {"root": self.store_root, "store_id": self.store_id},
            "source": {"uuid": self.source_uuid, "name": self.source_name},
            "point": self.point, "to": self.to, "qemu_user": self.qemu_user,
            "disks": {target: {"overlay": disk.overlay,
                               "layers": [layer.__dict__ for layer in disk.layers]}
                      for target, disk in sorted(self.disks.items())},
            "grants": sorted(self.grants),
            **({"served": self.served.to_json()} if self.served else {}),
        }

    @staticmethod
    def from_json(document: Any, path: str) -> "InstantRecord":
        try:
            if document.get("kind") != RECORD_KIND or document.get("version") != RECORD_VERSION:
                raise ValueError(f"not a fibackup instant-recovery record of version "
                                 f"{RECORD_VERSION}")
            disks = {str(target): InstantDisk(str(target), str(item["overlay"]), tuple(
                InstantLayer(str(layer["id"]), str(layer["path"]), str(layer["format"]))
                for layer in item["layers"])) for target, item in document["disks"].items()}
            return InstantRecord(
                domain_uuid=str(document["domain"]["uuid"]),
                domain_name=str(document["domain"]["name"]),
                store_root=str(document["store"]["root"]),
                store_id=str(document["store"]["store_id"]),
                source_uuid=str(document["source"]["uuid"]),
                source_name=str(document["source"]["name"]),
                point=str(document["point"]), to=str(document["to"]),
                qemu_user=str(document["qemu_user"]), disks=disks,
                grants=[str(item) for item in document.get("grants", [])],
                status=str(document["status"]), created=str(document.get("created", "")),
                served=ServedFrom.from_json(document["served"]) if "served" in document
                else None)
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise InstantRecordError(f"the instant-recovery record {path} is malformed ({error}); "
                                     "move it away after checking the domain by hand",
                                     path=path) from None


def refuse_instant(domain_uuid: str, domain_name: str, command: str) -> None:
    """``snapshot`` and ``consolidate`` leave a domain that runs from a backup directory
    alone: they would drop its explicit chain, and libvirt would then follow the stale
    backing names inside the stored layers (and relabel them)."""
    if os.path.exists(record_path(domain_uuid)):
        raise DomainStateError(
            f"domain '{domain_name}' runs from a backup directory (instant recovery); "
            f"'{command}' would break its chain: run 'fibackup restore --finalize "
            f"{domain_name}' first")


def records_dir() -> str:
    return os.path.join(state_dir(), "instant")


def record_path(domain_uuid: str) -> str:
    return os.path.join(records_dir(), f"{domain_uuid}.json")


def load(domain_uuid: str) -> Optional[InstantRecord]:
    return _read(record_path(domain_uuid))


def _read(path: str) -> Optional[InstantRecord]:
    try:
        with open(path, "rb") as handle:
            document = json.loads(handle.read().decode())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as error:
        raise InstantRecordError(f"the instant-recovery record {path} is damaged ({error}); "
                                 "move it away after checking the domain by hand",
                                 path=path) from None
    return InstantRecord.from_json(document, path)


def all_records() -> Iterator[InstantRecord]:
    try:
        names = sorted(os.listdir(records_dir()))
    except FileNotFoundError:
        return
    for name in names:
        if name.endswith(".json") and not name.startswith("."):
            record = _read(os.path.join(records_dir(), name))
            if record is not None:
                yield record
