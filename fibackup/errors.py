"""The exception hierarchy of fibackup.

Every error fibackup raises on purpose derives from :class:`FibackupError`.
Messages are complete sentences for a human at 3 a.m.: they name the problem
and, where there is one, the fix.  They need no prefix; the CLI prints
``fibackup: <message>`` and exits with the class's ``exit_code``.

Every error may carry fields for scripts (``path``, ``domain``, ``disk``,
``point``; set only when known): ``error.fields`` holds them, and ``--json``
puts them into the error document beside ``message``, ``kind`` (the class
name) and ``exit_code``.  A class that splits an older one subclasses it, so an
``except`` clause written for the older class still catches it.

Hierarchy::

    FibackupError                    exit 1
    ├── UsageError                   exit 2  bad combination of options or values
    ├── ConfigError                  exit 2  a configuration file is unreadable or invalid
    ├── DomainLockedError            exit 4  another fibackup run holds the domain
    ├── LibvirtError                         talking to libvirt failed
    │   ├── ConnectionFailedError            libvirtd unreachable
    │   ├── DomainNotFoundError
    │   ├── DomainStateError                 domain in the wrong state for this
    │   ├── UnsupportedDiskError             a disk fibackup cannot back up
    │   ├── SnapshotError                    libvirt/QEMU refused the snapshot
    │   │   └── NothingTakenError            ... before any disk moved to its overlay
    │   └── BlockJobError                    a block job (commit, pull) failed or was refused
    │       └── JobNotStartedError           libvirt refused to start it: nothing was written
    ├── ImageToolError                       qemu-img failed
    │   └── ImageToolTimeoutError            qemu-img ran out of its time and was stopped
    ├── StoreError                           the backup directory
    │   ├── StoreUnavailableError            missing, not a directory, not writable
    │   ├── NotEnoughSpaceError
    │   ├── CorruptStoreError                unreadable or inconsistent metadata
    │   │   ├── HostStateError               a host state file is damaged
    │   │   │   ├── JournalError             an intent journal is damaged
    │   │   │   └── InstantRecordError       an instant-recovery record is damaged
    │   │   └── DomainXMLError               a domain definition cannot be parsed
    │   ├── RestorePointNotFoundError
    │   ├── IntegrityError                   stored bytes differ from their checksums
    │   ├── StoreKeyError                    an encrypted store and no key, or the wrong one
    │   └── StoreLockedError         exit 4  another run holds the store's lock (garbage collection)
    ├── DestinationError                     restore target unusable or in the way
    │   └── MountpointError                  a mountpoint is busy, missing or not fibackup's
    ├── InconsistentChainError               live chain differs from what fibackup expects
    ├── ImageInUseError                      another domain uses an image fibackup would change
    ├── UnbackedLayerError                   consolidation would merge layers no backup holds
    ├── StateDirError                        host state directory not writable
    ├── ConsolidationFailedError             snapshot --consolidate: backup made, consolidation not
    ├── AccessGrantError                     QEMU cannot be given read access to stored layers
    ├── UntrustedDefinitionError             a stored domain definition reaches outside --to
    ├── ServeError                           a restore point's disks cannot be served (nbdkit)
    ├── ApplianceError                       libguestfs's appliance failed, or cannot read a guest filesystem
    │   └── GuestPathError                   no such path in the restore point's filesystems
    └── RepairNeededError                    an interrupted run left work only 'fibackup repair' may finish
"""
from __future__ import annotations

from typing import Optional

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_LOCKED = 4
EXIT_INTERRUPTED = 130
"""Ctrl-C (SIGINT), as a shell reports a process it interrupted: 128 + 2."""


FIELD_NAMES = ("path", "domain", "disk", "point")
"""The fields an error may carry, in the order the JSON error document lists them."""


class FibackupError(Exception):
    """Root of all errors fibackup raises on purpose.

    ``path``, ``domain``, ``disk`` and ``point`` are optional keyword fields: what the
    error is about, for scripts (``--json``); the message stays the human's text."""

    exit_code: int = EXIT_FAILURE

    def __init__(self, message: str = "", *, path: Optional[str] = None,
                 domain: Optional[str] = None, disk: Optional[str] = None,
                 point: Optional[str] = None) -> None:
        super().__init__(message)
        self.path = path
        self.domain = domain
        self.disk = disk
        self.point = point

    @property
    def fields(self) -> dict[str, str]:
        """The fields that are set, by name."""
        return {name: str(getattr(self, name)) for name in FIELD_NAMES
                if getattr(self, name, None) is not None}

    def to_json(self) -> dict[str, object]:
        """The ``error`` member of ``--json``'s document."""
        return {"message": str(self), "kind": type(self).__name__,
                "exit_code": self.exit_code, **self.fields}


class UsageError(FibackupError):
    """The command line asks for something impossible or contradictory."""

    exit_code = EXIT_USAGE


class ConfigError(FibackupError):
    """A configuration file is unreadable, not TOML, or holds an unknown key or a bad value;
    the message names the file (and the line or key) and the fix."""

    exit_code = EXIT_USAGE


class DomainLockedError(FibackupError):
    """Another fibackup run holds the domain's lock."""

    exit_code = EXIT_LOCKED


class LibvirtError(FibackupError):
    """libvirt refused or failed an operation."""


class ConnectionFailedError(LibvirtError):
    """libvirtd could not be reached."""


class DomainNotFoundError(LibvirtError):
    """No domain of that name is defined."""


class DomainStateError(LibvirtError):
    """The domain is in the wrong state (running, paused, ...) for the operation."""


class UnsupportedDiskError(LibvirtError):
    """A selected disk cannot be backed up by fibackup."""


class SnapshotError(LibvirtError):
    """libvirt or QEMU refused to create the external snapshot."""


class NothingTakenError(SnapshotError):
    """The snapshot failed before any disk moved to its overlay (``cause``: libvirt's
    reason, without the "no snapshot was taken" conclusion)."""

    def __init__(self, message: str, cause: str, *, domain: Optional[str] = None) -> None:
        super().__init__(message, domain=domain)
        self.cause = cause


class ImageToolError(FibackupError):
    """qemu-img failed."""


class ImageToolTimeoutError(ImageToolError):
    """qemu-img ran out of its time (``--timeout``) and was killed.  (Before 0.2 its JSON
    ``kind`` was ``Timeout``.)"""


class StoreError(FibackupError):
    """Something is wrong with the backup directory."""


class StoreUnavailableError(StoreError):
    """The backup directory is missing, not a directory, or not writable."""


class NotEnoughSpaceError(StoreError):
    """The target filesystem cannot hold what must be written."""


class CorruptStoreError(StoreError):
    """A manifest or layer record is unreadable or contradicts the store."""


class HostStateError(CorruptStoreError):
    """A file in the host state directory (``$FIBACKUP_STATE_DIR``) is damaged or of an
    unknown version; ``path`` names it.  (Before 0.2 this was a CorruptStoreError, which
    it still is, for old ``except`` clauses.)"""


class JournalError(HostStateError):
    """An intent journal left by an interrupted run cannot be read."""


class InstantRecordError(HostStateError):
    """An instant-recovery record cannot be read."""


class DomainXMLError(CorruptStoreError):
    """A domain definition (libvirt's or a stored one) is not well-formed XML."""


class RestorePointNotFoundError(StoreError):
    """No restore point matches the request."""


class IntegrityError(StoreError):
    """Stored bytes do not match their recorded checksums."""


class StoreKeyError(StoreError):
    """The store is encrypted (format 3) and no passphrase was given, or none of its
    wrapped keys opens with the one given; nothing was read or written."""


class StoreLockedError(StoreError):
    """Another run, on this host or another, holds a lock in the store that this run
    needs (a garbage collection, or the backups it waits for); ``path`` names the lock."""

    exit_code = EXIT_LOCKED


class DestinationError(FibackupError):
    """The restore destination is unusable or already holds files."""


class InconsistentChainError(FibackupError):
    """The live backing chain is not what fibackup expects."""


class StateDirError(FibackupError):
    """The host state directory (locks, state files) cannot be written."""


class BlockJobError(LibvirtError):
    """A block job (commit, active commit, pull) could not start, failed or did not end."""


class JobNotStartedError(BlockJobError):
    """libvirt refused to start the block job: nothing was written."""


class ImageInUseError(FibackupError):
    """Another defined domain uses an image that fibackup would write or delete."""


class UnbackedLayerError(FibackupError):
    """A consolidation would merge frozen layers that a backup directory does not hold."""


class ConsolidationFailedError(FibackupError):
    """``snapshot --consolidate``/``--max-chain``: the snapshot (and backup) succeeded, the
    consolidation after it did not; the message names the stored restore point."""


class RepairNeededError(FibackupError):
    """An interrupted run left work (a block job still running, a locked image) that the
    command will not wait for; the message names ``fibackup repair``."""


class UntrustedDefinitionError(FibackupError):
    """A domain definition read from a shared store (object storage, or a backup made on
    another host) holds raw QEMU options, host devices or paths outside ``--to``;
    restore defines it only with ``--trust-xml``."""


class AccessGrantError(FibackupError):
    """Instant recovery cannot let QEMU read the stored layers (no setfacl, no ACL support,
    a link in the backup directory, a directory above it QEMU cannot search)."""


class MountpointError(DestinationError):
    """``fibackup mount``/``umount``: the mountpoint is not an empty directory, is already
    a mount, or is not one of fibackup's mounts."""


class ServeError(FibackupError):
    """A restore point's disks cannot be served over NBD (nbdkit or its Python plugin is
    missing, or the server did not start); the message says what to install or read."""


class ApplianceError(FibackupError):
    """libguestfs's appliance did not start, or a guest filesystem cannot be read (damaged,
    encrypted, of a type the appliance lacks); guest filesystems are read only there."""


class GuestPathError(ApplianceError):
    """``restore-files``: a path is not in the restore point's filesystems."""
