"""A thin adapter over libvirt-python: connection, domains, snapshots, definitions."""
from __future__ import annotations

import os
import threading
from typing import Optional

from fibackup.config import DEFAULT_URI
from fibackup.errors import (ConnectionFailedError, DomainNotFoundError, LibvirtError,
                             SnapshotError)

try:
    import libvirt as libvirt  # (re-exported: "from fibackup.virt.libvirt_api import libvirt")
except ImportError:  # pragma: no cover - reported when a command needs libvirt
    libvirt = None

def default_uri() -> str:
    return os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI


def _ignore_errors(_context: object, _error: object) -> None:
    """libvirt prints every error to stderr by default; fibackup reports them itself."""


def silence_library_errors() -> None:
    """Keep libvirt's default error handler from printing ("libvirt: QEMU Driver error :
    Domain not found") on the user's terminal: every error still reaches fibackup as a
    libvirtError, which it reports in its own words.  Done when this module is imported;
    a program using the libvirt module directly (the test lab) calls it as well."""
    if libvirt is not None:
        libvirt.registerErrorHandler(_ignore_errors, None)


silence_library_errors()


_event_loop_started = False


def _start_event_loop() -> None:
    """libvirt's default event loop in a daemon thread (block job events need it);
    it must be registered before the first connection is opened."""
    global _event_loop_started
    if _event_loop_started:
        return
    libvirt.virEventRegisterDefaultImpl()

    def run() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()

    threading.Thread(target=run, name="libvirt-events", daemon=True).start()
    _event_loop_started = True


def connect(uri: Optional[str] = None) -> "Connection":
    if libvirt is None:
        raise ConnectionFailedError("libvirt-python is not installed; run scripts/setup-host.sh "
                                    "or 'pip install libvirt-python'")
    silence_library_errors()
    _start_event_loop()
    target = uri or default_uri()
    try:
        return Connection(libvirt.open(target), target)
    except libvirt.libvirtError as error:
        raise ConnectionFailedError(
            f"cannot connect to libvirt at {target} ({libvirt_message(error)}); is libvirtd running? "
            "(start it with 'libvirtd -d' or scripts/setup-host.sh, or pass --connect)") from None


def libvirt_message(error: Exception) -> str:
    """libvirt's own text of an error, without a prefix."""
    text = error.get_error_message() if hasattr(error, "get_error_message") else str(error)
    return (text or str(error)).strip()


class Connection:
    def __init__(self, handle: "libvirt.virConnect", uri: str) -> None:
        self.handle = handle
        self.uri = uri

    def domain(self, name: str) -> "Domain":
        try:
            return Domain(self.handle.lookupByName(name))
        except libvirt.libvirtError as error:
            if error.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise DomainNotFoundError(
                    f"domain '{name}' is not defined on {self.uri}; 'virsh list --all' shows "
                    "the defined domains") from None
            raise LibvirtError(f"cannot look up domain '{name}': {libvirt_message(error)}; is libvirtd "
                               "still running?") from None

    def find_domain(self, name: str) -> Optional["Domain"]:
        try:
            return self.domain(name)
        except DomainNotFoundError:
            return None

    def domain_by_uuid(self, uuid: str) -> Optional["Domain"]:
        try:
            return Domain(self.handle.lookupByUUIDString(uuid))
        except libvirt.libvirtError:
            return None

    def other_domains(self, uuid: str) -> list["Domain"]:
        """Every defined or running domain except the one with ``uuid``."""
        try:
            handles = self.handle.listAllDomains(0)
        except libvirt.libvirtError as error:
            raise LibvirtError(f"cannot list the domains on {self.uri}: "
                               f"{libvirt_message(error)}") from None
        return [Domain(handle) for handle in handles if handle.UUIDString() != uuid]

    def domain_names(self, running_only: bool) -> list[str]:
        """Names of every defined (persistent) domain, or of every running one."""
        flags = libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE if running_only else \
            libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT
        try:
            return sorted(handle.name() for handle in self.handle.listAllDomains(flags))
        except libvirt.libvirtError as error:
            raise LibvirtError(f"cannot list the domains on {self.uri}: "
                               f"{libvirt_message(error)}") from None

    def define(self, xml: str) -> "Domain":
        try:
            return Domain(self.handle.defineXML(xml))
        except libvirt.libvirtError as error:
            raise LibvirtError(f"libvirt refused the domain definition: {libvirt_message(error)}; "
                               "restore with --no-define and define the domain by hand") from None

    def close(self) -> None:
        try:
            self.handle.close()
        except libvirt.libvirtError:
            pass


class Domain:
    def __init__(self, handle: "libvirt.virDomain") -> None:
        self.handle = handle

    @property
    def name(self) -> str:
        return str(self.handle.name())

    @property
    def uuid(self) -> str:
        return str(self.handle.UUIDString())

    def is_active(self) -> bool:
        return bool(self.handle.isActive())

    def is_persistent(self) -> bool:
        return bool(self.handle.isPersistent())

    def state_name(self) -> str:
        state = self.handle.state()[0]
        names = {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_PAUSED: "paused",
                 libvirt.VIR_DOMAIN_SHUTOFF: "shut off", libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
                 libvirt.VIR_DOMAIN_CRASHED: "crashed", libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended"}
        return names.get(state, "in an unknown state")

    def live_xml(self) -> str:
        return str(self.handle.XMLDesc(0))

    def inactive_xml(self) -> str:
        """The persistent definition (the live one for a transient domain)."""
        if not self.is_persistent():
            return self.live_xml()
        return str(self.handle.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))

    def current_xml(self) -> str:
        """What describes the disks now: live XML if running, else persistent."""
        return self.live_xml() if self.is_active() else self.inactive_xml()

    def block_job_running(self, target: str) -> bool:
        try:
            return bool(self.handle.blockJobInfo(target, 0))
        except libvirt.libvirtError as error:
            raise LibvirtError(f"cannot ask libvirt about block jobs on disk {target} of "
                               f"'{self.name}': {libvirt_message(error)}") from None

    def mirror_ready(self, target: str) -> bool:
        """The live XML says the disk's mirror (active commit) is ready to pivot."""
        from fibackup.virt import domxml
        return domxml.mirror_ready(self.live_xml(), target)

    def redefine(self, xml: str) -> None:
        """Replace the persistent definition (also while the domain runs)."""
        try:
            self.handle.connect().defineXML(xml)
        except libvirt.libvirtError as error:
            raise LibvirtError(f"libvirt refused the new definition of '{self.name}': "
                               f"{libvirt_message(error)}") from None

    def snapshot(self, xml: str, quiesce: bool) -> None:
        """Create an external disk-only snapshot without libvirt metadata, atomically."""
        flags = (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
                 | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
                 | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC)
        if quiesce:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE
        try:
            self.handle.snapshotCreateXML(xml, flags)
        except libvirt.libvirtError as error:
            raise SnapshotError(_snapshot_message(self.name, error, quiesce)) from None


def _snapshot_message(name: str, error: Exception, quiesce: bool) -> str:
    text = libvirt_message(error)
    if quiesce and ("agent" in text.lower()):
        return (f"cannot quiesce domain '{name}': {text}; install and start qemu-guest-agent in "
                "the guest with an org.qemu.guest_agent.0 channel, or run without --quiesce")
    if "Permission denied" in text:
        return (f"libvirt could not create the snapshot of '{name}': {text}; check that the "
                "qemu user can write the image directory (and AppArmor/SELinux policy)")
    return (f"libvirt refused the snapshot of domain '{name}': {text} (see "
            f"'virsh domblklist {name}' and libvirtd's log)")
