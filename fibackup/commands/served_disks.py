"""The served disks of an instant-recovery domain that runs from a format-3 store
(fibackup/commands/instant_served.py): bringing their nbdkit servers up (at the
start, and again after a reboot or a crash: ``repair``, an offline ``--finalize``)
and taking them down with the point's pin (``--finalize``, a failed start, a
domain that is gone), and ``repair`` of such a domain (its servers back, the guest
resumed after the store failed).  The servers themselves: fibackup/serve/daemons.py."""
from __future__ import annotations

from typing import Optional

from fibackup.errors import FibackupError, LibvirtError
from fibackup.host import acl
from fibackup.host import instant as records
from fibackup.host.instant import SERVED_FORMAT, InstantRecord
from fibackup.report import Reporter
from fibackup.serve import daemons
from fibackup.serve.source import ServedDisk
from fibackup.store.repo import BackupStore
from fibackup.store.v3.pins import remove_pin
from fibackup.virt.libvirt_api import Domain, libvirt, libvirt_message


def served_disks(record: InstantRecord) -> dict[str, ServedDisk]:
    """Target -> the served disk it rests on (empty for a record of stored files)."""
    if record.served is None:
        return {}
    return {target: ServedDisk(record.served.location, layer.id, record.served.sizes[target])
            for target, disk in sorted(record.disks.items())
            for layer in disk.layers if layer.format == SERVED_FORMAT}


def down(record: InstantRecord) -> list[str]:
    """The targets whose server does not run."""
    return [target for target in served_disks(record)
            if daemons.pid_of(daemons.place(record.domain_uuid, target)) is None]


def bring_up(record: InstantRecord, account: Optional[acl.Account]) -> list[str]:
    """Start the server of every served disk that does not run; the targets started."""
    assert record.served is not None or not served_disks(record)
    started = []
    for target, disk in served_disks(record).items():
        where = daemons.place(record.domain_uuid, target)
        if daemons.pid_of(where) is None:
            daemons.start(disk, where, account,
                          record.served.password_file if record.served else None)
            started.append(target)
    return started


def take_down(record: InstantRecord, report: Reporter) -> None:
    """Stop the servers, remove their directory, and remove the point's pin (a pin that
    cannot be removed now is reported with the command that removes it)."""
    for target in served_disks(record):
        daemons.stop(daemons.place(record.domain_uuid, target))
    daemons.remove_dir(record.domain_uuid)
    served = record.served
    if served is None or served.pin is None:
        return
    try:
        remove_pin(BackupStore.open(served.location).backend, served.pin)
    except FibackupError as error:
        report.warn(f"the pin {served.pin} that kept restore point {record.point} of "
                    f"'{record.source_name}' for '{record.domain_name}' stays in "
                    f"{served.location} ({error}); remove it with 'fibackup pin remove "
                    f"{served.pin} -b {served.location}' once the store answers")
        return
    served.pin = None


def repair_served(domain: Domain, report: Reporter) -> list[str]:
    """``repair`` of a domain that runs from served disks: bring back the servers that do
    not run (after a reboot or a crash), and resume the guest if an I/O error of the
    store paused it (the servers answer again; a read that still fails pauses it again)."""
    record = records.load(domain.uuid)
    if record is None or record.served is None:
        return []
    actions = []
    started = bring_up(record, acl.qemu_account())
    if started:
        actions.append(f"started the servers of {', '.join(started)} again")
        report.info(f"{domain.name}: the servers of its disks {', '.join(started)} run again "
                    f"(from {record.served.location})")
    if started and domain.is_active():
        # QEMU's NBD client does not reconnect (libvirt 9.0 cannot ask it to)
        actions.append("the running guest lost its served disks: restart it")
        report.warn(f"{domain.name} ran while the servers of {', '.join(started)} were gone: "
                    "QEMU does not reconnect to a restarted server, so the guest stays paused "
                    f"on I/O errors; restart it ('virsh destroy {domain.name}; virsh start "
                    f"{domain.name}': like a power cut, its writes so far are in the overlays)")
        return actions
    state, reason = domain.handle.state()
    if state == libvirt.VIR_DOMAIN_PAUSED and reason == libvirt.VIR_DOMAIN_PAUSED_IOERROR:
        try:
            domain.handle.resume()
        except libvirt.libvirtError as error:
            raise LibvirtError(f"libvirt could not resume '{domain.name}', paused by an I/O "
                               f"error of its served disks: {libvirt_message(error)}") from None
        actions.append("resumed the guest paused by an I/O error of the store")
        report.info(f"{domain.name}: resumed (an I/O error of {record.served.location} had "
                    "paused it; if the store still fails it pauses again)")
    return actions
