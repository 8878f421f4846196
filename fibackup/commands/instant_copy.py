"""``restore --instant`` from a store QEMU cannot run from in place (format 3, whose
points are chunks, not image files): the point's disks are restored into ``--to``
first (every chunk checked), the domain is defined under ``--as`` and started.  It
then runs from its own files: there is nothing to finalize.  Serving a format-3
point without copying it is later work (docs/INSTANT.md)."""
from __future__ import annotations

from typing import Callable

from fibackup.commands.instant import InstantOptions
from fibackup.commands.parallel import IOOptions
from fibackup.errors import StoreUnavailableError
from fibackup.commands.restore import RestoreOptions, RestoreResult, restore
from fibackup.report import Reporter
from fibackup.store.repo import BackupStore
from fibackup.virt.libvirt_api import Connection


def runs_in_place(backup_dir: str) -> bool:
    """Whether QEMU can run a point of this store straight from its files (a location
    that holds no store is left to instant recovery's own checks and messages)."""
    try:
        return BackupStore.open(backup_dir).chunks is None
    except StoreUnavailableError:
        return True


def restore_and_start(options: InstantOptions, connect: Callable[[], Connection],
                      report: Reporter) -> RestoreResult:
    report.info(f"{options.backup_dir} is a format-3 store (chunks): instant recovery restores "
                f"the disks into {options.to} first, then starts '{options.as_name}' from "
                "them (nothing to finalize afterwards)")
    result = restore(RestoreOptions(domain=options.domain, backup_dir=options.backup_dir,
                                    to=options.to, at=options.at, disks=options.disks,
                                    define=True, as_name=options.as_name,
                                    space_check=options.space_check,
                                    io=IOOptions(reflink=False), trust_xml=options.trust_xml),
                     connect, report)
    domain = connect().find_domain(options.as_name)
    if domain is not None:
        domain.handle.create()
        report.info(f"domain '{options.as_name}' started from restore point {result.point.id}")
    return result
