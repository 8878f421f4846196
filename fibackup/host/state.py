"""The per-domain host state file (docs/FORMAT.md, "Host state").

``<state dir>/domains/<uuid>.json`` records what fibackup did on this host that
the backup directory cannot know: the overlays it created, and which restored
files are byte-identical copies of which stored layers (so that the backup of a
restored domain continues incrementally from the restored point).  The file is
replaced atomically; the state dir is ``$FIBACKUP_STATE_DIR`` or
``/var/lib/fibackup``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from fibackup.errors import CorruptStoreError
from fibackup.fsutil import write_file
from fibackup.model.chain import FileIdentity

STATE_KIND = "fibackup-host-state"
STATE_VERSION = 1


def state_dir() -> str:
    return os.environ.get("FIBACKUP_STATE_DIR") or "/var/lib/fibackup"


@dataclass(frozen=True)
class RestoredFile:
    store_id: str
    layer_id: str
    identity: FileIdentity


@dataclass
class HostState:
    domain_uuid: str
    restored: list[RestoredFile] = field(default_factory=list)
    overlays: list[dict[str, str]] = field(default_factory=list)

    @property
    def path(self) -> str:
        return state_path(self.domain_uuid)

    def aliases(self, store_id: str) -> list[tuple[FileIdentity, str]]:
        return [(item.identity, item.layer_id) for item in self.restored
                if item.store_id == store_id]

    def save(self) -> None:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        document = {
            "kind": STATE_KIND, "version": STATE_VERSION, "domain_uuid": self.domain_uuid,
            "restored": [{"store_id": item.store_id, "layer_id": item.layer_id,
                          "identity": item.identity.__dict__} for item in self.restored],
            "overlays": self.overlays,
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
        raise CorruptStoreError(f"host state file {path} is damaged ({error}); move it away "
                                "and run again (the next backup may then copy more)") from None
    if document.get("kind") != STATE_KIND or document.get("version") != STATE_VERSION:
        raise CorruptStoreError(f"{path} is not a fibackup host state file of version {STATE_VERSION}")
    try:
        restored = [RestoredFile(item["store_id"], item["layer_id"], FileIdentity(**item["identity"]))
                    for item in document.get("restored", [])]
    except (KeyError, TypeError) as error:
        raise CorruptStoreError(f"{path} has a malformed entry ({error})") from None
    return HostState(domain_uuid, restored, list(document.get("overlays", [])))
