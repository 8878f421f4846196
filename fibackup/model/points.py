"""Restore points and how a user's ``--at`` selects one (pure, no I/O)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Sequence

from fibackup.errors import RestorePointNotFoundError

if TYPE_CHECKING:
    from fibackup.model.chain import StoredLayer


@dataclass(frozen=True)
class PointLayer:
    """One stored layer as a restore point lists it (base first)."""

    id: str
    image_format: str
    size: int
    virtual_size: int
    digest: str
    new: bool
    data_bytes: int = 0
    """Bytes of data in the stored file (its size less holes and zero chunks)."""

    @classmethod
    def of(cls, stored: "StoredLayer", new: bool) -> "PointLayer":
        """How a restore point lists a stored layer (a format-3 record has no digest and
        no data of its own: "" and 0)."""
        return cls(stored.id, stored.image_format, stored.size, stored.virtual_size,
                   stored.digest, new=new, data_bytes=stored.data_bytes)


@dataclass(frozen=True)
class IndexRef:
    """A format-3 point's index of one disk (or file): which object holds it, and what
    it costs."""

    id: str
    """The index object's id (64 hex)."""
    data_bytes: int
    """Bytes of the view that are not zeros (what a restore writes)."""
    chunks: int
    """Chunks the index lists."""
    new_chunks: int = 0
    """Chunks this point stored first."""
    stored_bytes: int = 0
    """Bytes this point added to the store for it (new chunk objects and the index)."""


@dataclass(frozen=True)
class PointDisk:
    """A disk of a restore point: the stored layers whose stacking gives its view (format
    1/2), or the live layers it rests on and its index (format 3)."""

    target: str
    virtual_size: int
    layers: tuple[PointLayer, ...]
    source_path: str = ""
    index: Optional[IndexRef] = None
    """Format 3: the complete view of the disk at this point; ``layers`` then only
    record which frozen live files it was read from (their records prove the next
    backup may start from this index)."""

    @property
    def generation(self) -> str:
        """The id of the full base copy this disk's chain rests on."""
        return self.layers[0].id

    @property
    def top(self) -> PointLayer:
        return self.layers[-1]


FILE_ROLES = ("nvram", "tpm", "kernel", "initrd", "dtb")
"""Non-disk files saved with a restore point: the UEFI variable store, the swtpm
state of an emulated TPM, and the files of a direct kernel boot."""


@dataclass(frozen=True)
class PointFile:
    """A non-disk file of the domain as a restore point lists it."""

    role: str
    """One of FILE_ROLES (a newer fibackup may write others: they are not restored)."""
    path: str
    """Where the file was on the host (for ``tpm``: inside the swtpm state directory)."""
    id: str
    """The stored file's id: its digest (stored files are content-addressed)."""
    digest: str
    size: int
    mode: int
    """Permission bits of the original file."""
    name: str = ""
    """For ``tpm``: the path relative to the domain's swtpm state directory."""
    new: bool = False
    index: Optional[IndexRef] = None
    """Format 3: the file's content as an index of chunks (``id`` and ``digest`` are
    then the index's id)."""


@dataclass(frozen=True)
class RestorePoint:
    """The state of a domain's selected disks at one snapshot."""

    id: str
    seq: int
    time: str
    domain_name: str
    domain_uuid: str
    host: str
    disks: dict[str, PointDisk]
    domain_xml: str
    quiesced: bool = False
    skipped_disks: tuple[str, ...] = field(default=())
    files: tuple[PointFile, ...] = field(default=())
    revision: int = 0
    """0 as the snapshot wrote it; prune publishes revision 1, 2... of a point whose
    layers it merged (``<seq>.r<revision>.json``); the highest revision is the point."""
    format: int = 1
    """1 for format-1/2 manifests (stacked layer copies), 3 for indexes of chunks."""

    @property
    def bytes_new(self) -> int:
        """Bytes of data that this point stored for the first time (layers and files;
        format 3: the objects it added to the store, after compression)."""
        if self.format == 3:
            return sum(ref.stored_bytes for ref in self.indexes())
        return sum(layer.data_bytes for disk in self.disks.values()
                   for layer in disk.layers if layer.new) + \
            sum(item.size for item in self.files if item.new)

    @property
    def bytes_total(self) -> int:
        """Bytes of data that a restore of this point reads (layers and files; format 3:
        the logical size of the disks' and files' data)."""
        if self.format == 3:
            return sum(ref.data_bytes for ref in self.indexes())
        return sum(layer.data_bytes for disk in self.disks.values() for layer in disk.layers) + \
            sum(item.size for item in self.files)

    def indexes(self) -> list[IndexRef]:
        """Format 3: the index of every disk and file."""
        return [ref for ref in [*(disk.index for disk in self.disks.values()),
                                *(item.index for item in self.files)] if ref is not None]

    @property
    def layer_count(self) -> int:
        return sum(len(disk.layers) for disk in self.disks.values())


def select_point(points: Sequence[RestorePoint], at: Optional[str],
                 domain: str = "this domain") -> RestorePoint:
    """The point ``at`` names (an id, a sequence number, or ``latest``/None)."""
    if not points:
        raise RestorePointNotFoundError(
            f"the backup directory holds no restore point of {domain}; check the name and "
            "the directory with 'fibackup list -b DIR' (a backup is made by "
            "'fibackup snapshot -d DOMAIN -b DIR')")
    ordered = sorted(points, key=lambda point: point.seq)
    if at is None or at == "latest":
        return ordered[-1]
    for point in ordered:
        if point.id == at or str(point.seq) == at:
            return point
    available = ", ".join(point.id for point in ordered[-5:])
    raise RestorePointNotFoundError(
        f"no restore point '{at}' for domain {ordered[-1].domain_name}; "
        f"newest ones: {available} (see 'fibackup list')")
