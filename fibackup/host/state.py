"""The per-domain host state file (docs/FORMAT.md, "Host state").

``<state dir>/domains/<uuid>.json`` records what fibackup did on this host that
the backup directory cannot know: the overlays it created, the backup
directories the domain was backed up to, which restored files are
byte-identical copies of which stored layers, and each consolidation (which
files a commit merged into which result), so that the next backup continues
incrementally wherever that can be proven.  The file is replaced atomically;
the state dir is ``$FIBACKUP_STATE_DIR`` or ``/var/lib/fibackup``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from fibackup.errors import HostStateError
from fibackup.fsutil import make_private_dirs, write_file
from fibackup.model.chain import FileIdentity
from fibackup.model.states import Outcome

STATE_KIND = "fibackup-host-state"
STATE_VERSION = 1
MAX_CONSOLIDATIONS = 1000
MAX_DEFINITIONS = 1000


def definition_digest(xml: str) -> str:
    import xxhash
    return xxhash.xxh3_128(xml.encode()).hexdigest()
"""Older consolidation records are dropped; a store last written before them
then gets a new full generation (never a wrong delta)."""


def state_dir() -> str:
    return os.environ.get("FIBACKUP_STATE_DIR") or "/var/lib/fibackup"


def runtime_dir() -> str:
    """Where this host's servers keep their sockets (short paths: a Unix socket's is at
    most 107 bytes); gone after a reboot, as the servers are."""
    return os.environ.get("FIBACKUP_RUN_DIR") or "/run/fibackup"


@dataclass(frozen=True)
class RestoredFile:
    store_id: str
    layer_id: str
    identity: FileIdentity


@dataclass(frozen=True)
class Consolidation:
    """One consolidation of one disk.

    ``method`` is a :class:`~fibackup.model.states.Method`, ``outcome`` an
    :class:`~fibackup.model.states.Outcome`: ``merged`` (the job completed),
    ``aborted`` (timeout or abort: the base may be partly written) or ``failed``
    (both kept as read: the file's strings).  For a completed
    commit, ``result`` is the identity of the base afterwards and ``parts`` the
    identities of the files merged into it, base first: the base then has the
    content of their stacking.
    """

    disk: str
    method: str
    time: str
    outcome: str
    base: str
    merged: tuple[str, ...] = ()
    result: Optional[FileIdentity] = None
    parts: tuple[FileIdentity, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"disk": self.disk, "method": self.method, "time": self.time,
                "outcome": self.outcome, "base": self.base, "merged": list(self.merged),
                "result": self.result.__dict__ if self.result else None,
                "parts": [part.__dict__ for part in self.parts]}

    @staticmethod
    def from_json(item: dict[str, Any]) -> "Consolidation":
        return Consolidation(
            disk=str(item["disk"]), method=str(item["method"]), time=str(item["time"]),
            outcome=str(item["outcome"]), base=str(item["base"]),
            merged=tuple(str(path) for path in item.get("merged", [])),
            result=FileIdentity(**item["result"]) if item.get("result") else None,
            parts=tuple(FileIdentity(**part) for part in item.get("parts", [])))


@dataclass
class HostState:
    domain_uuid: str
    restored: list[RestoredFile] = field(default_factory=list)
    overlays: list[dict[str, str]] = field(default_factory=list)
    stores: dict[str, str] = field(default_factory=dict)
    """Backup directories this domain was backed up to: store id -> path."""
    consolidations: list[Consolidation] = field(default_factory=list)
    definitions: list[str] = field(default_factory=list)
    """xxh3-128 digests of the domain definitions this host put into restore points:
    only those are defined by a restore without checking them (virt/trust.py)."""
    written: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Store id -> the newest point this host published there ({"point", "seq",
    "time"}): a store that no longer holds it was rolled back (:func:`rollback`)."""

    @property
    def path(self) -> str:
        return state_path(self.domain_uuid)

    def remember_definition(self, xml: str) -> bool:
        """Note a definition this host stored; whether that changed anything."""
        digest = definition_digest(xml)
        if digest in self.definitions:
            return False
        self.definitions.append(digest)
        del self.definitions[:-MAX_DEFINITIONS]
        return True

    def stored_definition(self, xml: str) -> bool:
        return definition_digest(xml) in self.definitions

    def aliases(self, store_id: str) -> list[tuple[FileIdentity, str]]:
        return [(item.identity, item.layer_id) for item in self.restored
                if item.store_id == store_id]

    def compositions(self) -> dict[FileIdentity, tuple[FileIdentity, ...]]:
        """Files a completed commit produced -> the files it merged, base first."""
        return {item.result: item.parts for item in self.consolidations
                if item.outcome == Outcome.MERGED and item.result is not None and item.parts}

    def created_overlay(self, path: str) -> bool:
        return any(item.get("path") == path for item in self.overlays)

    def forget_overlays(self, paths: set[str]) -> None:
        self.overlays = [item for item in self.overlays if item.get("path") not in paths]

    def record(self, consolidation: Consolidation) -> None:
        self.consolidations.append(consolidation)
        del self.consolidations[:-MAX_CONSOLIDATIONS]

    def last_consolidation(self, disk: str) -> Optional[Consolidation]:
        for item in reversed(self.consolidations):
            if item.disk == disk:
                return item
        return None

    def save(self) -> None:
        make_private_dirs(os.path.dirname(self.path))
        document = {
            "kind": STATE_KIND, "version": STATE_VERSION, "domain_uuid": self.domain_uuid,
            "restored": [{"store_id": item.store_id, "layer_id": item.layer_id,
                          "identity": item.identity.__dict__} for item in self.restored],
            "overlays": self.overlays,
            "stores": self.stores,
            "consolidations": [item.to_json() for item in self.consolidations],
            "definitions": self.definitions,
            "written": self.written,
        }
        write_file(self.path, json.dumps(document, indent=1).encode(), replace=True)


def state_path(domain_uuid: str) -> str:
    return os.path.join(state_dir(), "domains", f"{domain_uuid}.json")


def load(domain_uuid: str) -> HostState:
    path = state_path(domain_uuid)
    try:
        with open(path, "rb") as handle:
            document: dict[str, Any] = json.loads(handle.read().decode())
    except FileNotFoundError:
        return HostState(domain_uuid)
    except (ValueError, UnicodeDecodeError) as error:
        raise HostStateError(f"host state file {path} is damaged ({error}); move it away "
                             "and run again (the next backup may then copy more)",
                             path=path) from None
    if document.get("kind") != STATE_KIND or document.get("version") != STATE_VERSION:
        raise HostStateError(f"{path} is not a fibackup host state file of version {STATE_VERSION}",
                             path=path)
    try:
        restored = [RestoredFile(item["store_id"], item["layer_id"], FileIdentity(**item["identity"]))
                    for item in document.get("restored", [])]
        consolidations = [Consolidation.from_json(item)
                          for item in document.get("consolidations", [])]
        stores = _string_map(document.get("stores", {}), "stores")
        overlays = [_string_map(item, "overlays") for item in _list(document.get("overlays", []))]
        definitions = [str(item) for item in _list(document.get("definitions", []))]
        written = {str(key): {"point": str(value["point"]), "seq": int(value["seq"]),
                              "time": str(value.get("time", ""))}
                   for key, value in dict(document.get("written", {})).items()}
    except (KeyError, TypeError, ValueError) as error:
        raise HostStateError(f"{path} has a malformed entry ({error})", path=path) from None
    return HostState(domain_uuid, restored, overlays, stores, consolidations, definitions,
                     written)


# -- what the commands record (each loads, changes and saves the file) -----------------------

def remember_overlays(domain_uuid: str, overlays: dict[str, str], tag: str) -> None:
    """Note the overlays snapshot ``tag`` created (only those are ever deleted)."""
    state = load(domain_uuid)
    new = [{"disk": target, "path": path, "tag": tag} for target, path in overlays.items()
           if not state.created_overlay(path)]
    if new:
        state.overlays.extend(new)
        state.save()


def remember_store(domain_uuid: str, store_id: str, root: str,
                   point: Optional[tuple[str, int, str]] = None) -> None:
    """Note a backup directory the domain was backed up to: consolidation checks that
    every one holds what it would merge away; ``point`` (id, seq, time) is the point
    this host just published there."""
    state = load(domain_uuid)
    written = {"point": point[0], "seq": point[1], "time": point[2]} if point else None
    if state.stores.get(store_id) != root or (written and state.written.get(store_id) != written):
        state.stores[store_id] = root
        if written:
            state.written[store_id] = written
        state.save()


def rollback(state: HostState, store_id: str, root: str,
             points: Sequence[tuple[str, int]]) -> Optional[str]:
    """What is wrong when the store no longer holds the newest point this host published
    there ((id, seq) of the domain's points now): a rollback, or points removed by hand
    (prune always keeps the newest)."""
    written = state.written.get(store_id)
    if written is None or (written["point"], written["seq"]) in set(points):
        return None
    newest = max(points, key=lambda item: item[1]) if points else None
    holds = f"its newest is #{newest[1]} ({newest[0]})" if newest else "it holds none"
    return (f"{root} no longer holds restore point #{written['seq']} ({written['point']}) "
            f"that this host stored there on {written['time']}; {holds}. The store was rolled "
            "back to an older state, or points were deleted by hand: check it before you "
            "trust it")


def remember_restored(domain_uuid: str, restored: list[RestoredFile]) -> None:
    """Note restored files that are byte-identical copies of stored layers (each replaces
    what was noted for its path before)."""
    state = load(domain_uuid)
    for item in restored:
        state.restored = [old for old in state.restored if old.identity.path != item.identity.path]
        state.restored.append(item)
    state.save()


def record_consolidation(domain_uuid: str, consolidation: Consolidation) -> None:
    """Record a consolidation; the same run's record for the disk is replaced, not doubled
    (repair may record what an interrupted run already had)."""
    state = load(domain_uuid)
    last = state.last_consolidation(consolidation.disk)
    if last is not None and (last.time, last.method) == (consolidation.time,
                                                         consolidation.method):
        state.consolidations.remove(last)
    state.record(consolidation)
    state.save()


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, found {type(value).__name__}")
    return value


def _string_map(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(key, str) and isinstance(item, str)
                                              for key, item in value.items()):
        raise TypeError(f"'{what}' must map names to strings")
    return dict(value)
