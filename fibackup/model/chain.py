"""Backing chains, stored layers and the backup plan of a disk (pure, no I/O).

A disk's live chain is a list of layers, base first, active layer last.  A
snapshot freezes every layer of that list and puts a new empty overlay on top.
What a backup must copy is decided here, from facts the adapters gathered:

* a frozen live layer *is* a stored layer when its file identity (host, path,
  device, inode, size, mtime) equals the identity recorded when that stored
  layer was copied (or restored) -- never by file name alone;
* a live file that a block commit produced *is* the stacking of the files it
  merged (a recorded composition), so it maps onto the stored layers of those
  files, in order -- this keeps the backup incremental across a consolidation;
* the backup of a disk reuses the longest prefix of the live frozen chain that
  maps, layer by layer, onto a chain of stored layers (each stored layer's
  logical parent being the previous one), and copies the rest;
* when nothing can be reused, or the disk was resized, the disk starts a new
  generation: every frozen layer is copied.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Mapping, NamedTuple, Optional, Sequence

from fibackup.model.states import Method

if TYPE_CHECKING:
    import os


@dataclass(frozen=True)
class FileIdentity:
    """What identifies the content of a frozen image file without reading all of it:
    where it is, its inode, size and modification time, and a checksum of its
    first 64 KiB (for qcow2, the header with its backing file name)."""

    host: str
    path: str
    dev: int
    ino: int
    size: int
    mtime_ns: int
    head_digest: str = ""

    @property
    def stamp(self) -> FileStamp:
        return FileStamp(self.dev, self.ino, self.size, self.mtime_ns)


class FileStamp(NamedTuple):
    """Which file a name holds, from its ``stat``: device, inode, size, mtime.

    The one way fibackup asks "is this the same file": :attr:`inode` for "the same
    file" (another domain uses this image), the whole stamp for "the same file,
    unchanged since" (inodes are reused; a JSON list of four numbers in a journal).
    A :class:`FileIdentity` adds where it is and a checksum of its head."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, status: "os.stat_result") -> "FileStamp":
        return cls(status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)

    @property
    def inode(self) -> tuple[int, int]:
        """(device, inode): the file, whatever it holds now."""
        return self.dev, self.ino


@dataclass(frozen=True)
class LiveLayer:
    """One image file of a live backing chain."""

    path: str
    format: str


@dataclass(frozen=True)
class LiveDisk:
    """A disk of a domain as libvirt sees it: target name and chain (base first)."""

    target: str
    layers: tuple[LiveLayer, ...]

    @property
    def active(self) -> LiveLayer:
        return self.layers[-1]

    @property
    def base(self) -> LiveLayer:
        return self.layers[0]


@dataclass(frozen=True)
class StoredLayer:
    """A layer copy held by the backup store (see docs/FORMAT.md, layer records)."""

    id: str
    disk: str
    parent: Optional[str]
    image_format: str
    size: int
    virtual_size: int
    digest: str
    source: FileIdentity
    data_bytes: int = 0
    stands_for: Optional[str] = None
    """For a layer prune merged: the id of the top layer of the merged range.  The
    merged layer presents exactly that layer's view (stacked on its ancestors), so a
    layer whose logical parent is ``stands_for`` rests on the merged layer."""
    covers: tuple["StoredLayer", ...] = ()
    """For a merged layer: the layers it replaced (flattened, base first, merged
    layers among them included), kept so that live files copied into them still
    map onto the store and the next backup stays incremental."""

    def is_parent_of(self, layer: "StoredLayer") -> bool:
        """Whether ``layer`` may rest directly on this one."""
        return layer.parent is not None and layer.parent in (self.id, self.stands_for)

    def rests_on(self, below: Optional["StoredLayer"]) -> bool:
        """Whether this layer may lie directly on ``below`` (None: it is a base)."""
        return self.parent is None if below is None else below.is_parent_of(self)


NO_SOURCE = FileIdentity(host="", path="", dev=0, ino=0, size=0, mtime_ns=0,
                         head_digest="merged")
"""The source of a merged layer: no live file has it (inode 0)."""


@dataclass(frozen=True)
class FrozenLayer:
    """A frozen live layer about to be backed up, with its identity and size."""

    layer: LiveLayer
    identity: FileIdentity
    virtual_size: int


@dataclass
class DiskPlan:
    """What the backup of one disk reuses and what it copies."""

    target: str
    reuse: list[StoredLayer] = field(default_factory=list)
    copy: list[FrozenLayer] = field(default_factory=list)
    new_generation: bool = False
    reason: str = ""

    @property
    def parent_of_first_copy(self) -> Optional[str]:
        return self.reuse[-1].id if self.reuse else None


MAX_COMPOSITION_DEPTH = 300
"""Commits nest: each completed commit adds one level (a nightly commit, 300 nights).
Deeper, the disk gets a new full generation. Two Python frames per level."""


class LayerIndex:
    """Stored layers of one domain in one store, looked up by source identity.

    ``aliases`` say that a file (a restored copy) has the content of a stored
    layer; ``compositions`` say that a file (a commit's result) has the content
    of the stacking of other files, base first.
    """

    def __init__(self, layers: Iterable[StoredLayer],
                 aliases: Iterable[tuple[FileIdentity, str]] = (),
                 compositions: Mapping[FileIdentity, Sequence[FileIdentity]] | None = None) -> None:
        self._by_id: dict[str, StoredLayer] = {}
        self._by_identity: dict[FileIdentity, list[StoredLayer]] = {}
        self._compositions = dict(compositions or {})
        self._merged_into: dict[str, StoredLayer] = {}
        """Id of a layer a prune replaced -> the stored merged layer that holds it."""
        self._canonical: dict[str, str] = {}
        """Merged layer id -> the id it stands for (parents compare through it)."""
        layers = list(layers)
        real = {layer.id for layer in layers}
        for layer in layers:           # replaced layers first: on a tie a real copy wins
            for covered in layer.covers:
                if covered.id not in real and covered.id not in self._merged_into:
                    self._merged_into[covered.id] = layer
                    self._add(covered)
        for layer in layers:
            self._add(layer)
        for identity, layer_id in aliases:
            stored = self._by_id.get(layer_id)
            if stored is not None:
                self._by_identity.setdefault(identity, []).append(stored)

    def _add(self, layer: StoredLayer) -> None:
        self._by_id[layer.id] = layer
        self._by_identity.setdefault(layer.source, []).append(layer)
        if layer.stands_for:
            self._canonical[layer.id] = layer.stands_for

    def _same_parent(self, one: Optional[str], other: Optional[str]) -> bool:
        return self._canonical.get(one, one) == self._canonical.get(other, other) \
            if one is not None and other is not None else one is other

    def resolve(self, reuse: Sequence[StoredLayer]) -> list[StoredLayer]:
        """``reuse`` with the layers a prune merged replaced by their merged layer.

        A matched chain that ends inside a merged range cannot use it (the merged
        layer holds more): nothing is reused then, the disk gets a new generation.
        """
        replaced = [position for position, layer in enumerate(reuse)
                    if layer.id in self._merged_into]
        if not replaced:
            return list(reuse)
        last = replaced[-1]
        merged = self._merged_into[reuse[last].id]
        covered = {layer.id for layer in merged.covers}
        if reuse[last].id != merged.stands_for or \
                any(layer.id not in covered for layer in reuse[:last + 1]):
            return []
        return [merged, *reuse[last + 1:]]

    def has_disk(self, target: str) -> bool:
        return any(layer.disk == target for layer in self._by_id.values())

    def get(self, layer_id: str) -> Optional[StoredLayer]:
        return self._by_id.get(layer_id)

    def find_any(self, identity: FileIdentity) -> Optional[StoredLayer]:
        """Some stored copy of the file ``identity`` (its content, whatever its parent)."""
        matches = self._by_identity.get(identity)
        return matches[0] if matches else None

    def find(self, identity: FileIdentity, parent: Optional[str]) -> Optional[StoredLayer]:
        """The stored copy of the file ``identity`` whose logical parent is ``parent``."""
        for stored in reversed(self._by_identity.get(identity, ())):   # newest, real first
            if self._same_parent(stored.parent, parent):
                return stored
        return None

    def match(self, identity: FileIdentity, parent: Optional[str],
              depth: int = 0) -> Optional[list[StoredLayer]]:
        """The stored layers, resting on ``parent``, whose stacking is the file ``identity``.

        One stored copy of the file itself, or -- for a file a commit produced --
        the stored layers of the files it merged, in order; None when the store
        cannot prove the content.
        """
        stored = self.find(identity, parent)
        if stored is not None:
            return [stored]
        parts = self._compositions.get(identity)
        if not parts or depth >= MAX_COMPOSITION_DEPTH:
            return None
        return self.match_sequence(parts, parent, depth + 1)

    def match_prefix(self, identities: Sequence[FileIdentity]) -> list[list[StoredLayer]]:
        """For the longest stored prefix of a chain (base first), the stored layers of
        each file (one, or several for a commit's result); its length is how many of
        ``identities`` are stored.

        A file stored more than once (a new generation re-copied an unchanged base)
        has several candidates; the one that lets the most layers above it match is
        taken, the newest on a tie, so one extra copy never makes every later backup
        a full one.
        """
        best: dict[tuple[int, Optional[str]], list[list[StoredLayer]]] = {}

        def longest(position: int, parent: Optional[str]) -> list[list[StoredLayer]]:
            key = (position, parent)
            if key not in best:
                result: list[list[StoredLayer]] = []
                if position < len(identities):
                    for segment in self._candidates(identities[position], parent):
                        rest = longest(position + 1, segment[-1].id)
                        if len(rest) + 1 > len(result):
                            result = [segment, *rest]
                best[key] = result
            return best[key]

        return longest(0, None)

    def holder(self, layer: StoredLayer) -> StoredLayer:
        """The stored layer that holds ``layer``'s data: itself, or the merged layer that
        replaced it."""
        return self._merged_into.get(layer.id, layer)

    def covered(self, identities: Sequence[FileIdentity]) -> int:
        """How many files of a chain (base first) a backup would reuse rather than copy."""
        segments = self.match_prefix(identities)
        return len(segments) if self.resolve([layer for segment in segments
                                              for layer in segment]) else 0

    def _candidates(self, identity: FileIdentity, parent: Optional[str]) -> list[list[StoredLayer]]:
        """Every proof of the file's content resting on ``parent``: its stored copies,
        newest first, then the layers of the files a commit merged into it."""
        found = [[stored] for stored in reversed(self._by_identity.get(identity, ()))
                 if self._same_parent(stored.parent, parent)]
        parts = self._compositions.get(identity)
        if parts:
            composed = self.match_sequence(parts, parent, 1)
            if composed is not None:
                found.append(composed)
        return found

    def match_sequence(self, identities: Sequence[FileIdentity], parent: Optional[str],
                       depth: int = 0) -> Optional[list[StoredLayer]]:
        """Stored layers for a stack of files (base first) resting on ``parent``."""
        matched: list[StoredLayer] = []
        for identity in identities:
            segment = self.match(identity, parent, depth)
            if segment is None:
                return None
            matched.extend(segment)
            parent = segment[-1].id
        return matched


def plan_disk(target: str, frozen: Sequence[FrozenLayer], index: LayerIndex) -> DiskPlan:
    """Decide which frozen layers of a disk are already stored and which to copy."""
    if not frozen:
        raise ValueError(f"disk {target} has no frozen layer to back up")
    plan = DiskPlan(target=target)
    segments = index.match_prefix([item.identity for item in frozen])
    plan.reuse = index.resolve([layer for segment in segments for layer in segment])
    plan.copy = list(frozen[len(segments):]) if plan.reuse else list(frozen)
    if not plan.reuse:
        plan.new_generation = True
        plan.reason = ("its base is not a file this backup holds: it was changed, replaced "
                       "or consolidated since" if index.has_disk(target)
                       else "no layer of this disk is in the backup yet")
        return plan
    resized = _resized(plan.reuse[-1].virtual_size, plan.copy)
    if resized:
        return DiskPlan(target=target, copy=list(frozen), new_generation=True,
                        reason="the disk was resized since its last backup")
    return plan


def _resized(stored_virtual_size: int, to_copy: Sequence[FrozenLayer]) -> bool:
    return any(item.virtual_size != stored_virtual_size for item in to_copy)


def chain_from_ids(layer_ids: Sequence[str], index: Mapping[str, StoredLayer]) -> list[StoredLayer]:
    """Resolve ids to stored layers and check that each names the previous as parent."""
    chain: list[StoredLayer] = []
    for layer_id in layer_ids:
        stored = index.get(layer_id)
        if stored is None:
            raise KeyError(layer_id)
        if not stored.rests_on(chain[-1] if chain else None):
            raise ValueError(
                f"layer {layer_id} rests on {stored.parent or 'nothing'}, "
                f"but the chain puts it on {chain[-1].id if chain else 'nothing'}")
        chain.append(stored)
    return chain


# -- what a consolidation method does to a chain -----------------------------------------------

def moved_layers(disk: LiveDisk, method: str) -> list[LiveLayer]:
    """The layers whose data a consolidation job with ``method`` moves."""
    if method == Method.COMMIT:
        return list(disk.layers[1:-1])
    if method == Method.ACTIVE:
        return list(disk.layers[1:])
    return list(disk.layers[:-1])


def expected_chain(disk: LiveDisk, method: str) -> list[str]:
    """The chain (paths, base first) a completed job with ``method`` leaves."""
    if method == Method.COMMIT:
        return [disk.base.path, disk.active.path]
    if method == Method.ACTIVE:
        return [disk.base.path]
    return [disk.active.path]
