"""The stored domain definition as untrusted input (fibackup/virt/trust.py)."""
from __future__ import annotations

from fibackup.virt.trust import untrusted_parts

TO = "/srv/restore"


def _domain(devices: str = "", os_extra: str = "", extra: str = "", ns: str = "") -> str:
    return (f"<domain type='kvm'{ns}><name>web</name><memory>65536</memory>"
            f"<os><type arch='x86_64'>hvm</type>{os_extra}</os>"
            "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
            f"<disk type='file' device='disk'><source file='{TO}/vda-1.qcow2'/>"
            f"<target dev='vda'/></disk>{devices}</devices>{extra}</domain>")


def test_plain_definition_inside_to_is_accepted():
    xml = _domain(os_extra="<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd"
                           f"</loader><nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>{TO}/nv.fd"
                           f"</nvram><kernel>{TO}/vmlinuz</kernel>",
                  devices="<serial type='pty'><target port='0'/></serial>"
                          "<interface type='network'><source network='default'/></interface>")
    assert untrusted_parts(xml, TO) == []


def test_qemu_commandline_is_refused():
    xml = _domain(ns=" xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'",
                  extra="<qemu:commandline><qemu:arg value='-chardev'/>"
                        "<qemu:arg value='file,path=/etc/cron.d/x'/></qemu:commandline>")
    problems = untrusted_parts(xml, TO)
    assert problems == ["<qemu:commandline> (raw QEMU options)"]


def test_host_devices_and_shared_directories_are_refused():
    xml = _domain(devices="<hostdev mode='subsystem' type='pci'><source><address domain='0' "
                          "bus='1' slot='0' function='0'/></source></hostdev>"
                          "<interface type='hostdev'><source><address type='pci' bus='2'/>"
                          "</source></interface>"
                          f"<filesystem type='mount'><source dir='{TO}/share'/>"
                          "<target dir='tag'/></filesystem>")
    problems = untrusted_parts(xml, TO)
    assert any(p.startswith("<hostdev>") for p in problems)
    assert any(p.startswith("<interface type='hostdev'>") for p in problems)
    assert any(p.startswith("<filesystem>") for p in problems)


def test_paths_outside_to_are_refused():
    xml = _domain(devices="<serial type='file'><source path='/etc/cron.d/evil'/>"
                          "<log file='/root/.ssh/authorized_keys'/></serial>"
                          "<disk type='block' device='disk'><source dev='/dev/sda'/>"
                          "<target dev='vdb'/></disk>"
                          f"<disk type='file' device='cdrom'><source file='{TO}/../etc/shadow'/>"
                          "<target dev='hdc'/></disk>",
                  os_extra="<kernel>/boot/vmlinuz</kernel>"
                           "<loader>/tmp/evil.fd</loader>")
    problems = untrusted_parts(xml, TO)
    for path in ("/etc/cron.d/evil", "/root/.ssh/authorized_keys", "/dev/sda",
                 f"{TO}/../etc/shadow", "/boot/vmlinuz", "/tmp/evil.fd"):
        assert any(path in problem for problem in problems), (path, problems)


def test_emulator_must_be_a_system_binary():
    xml = _domain().replace("/usr/bin/qemu-system-x86_64", "/var/tmp/qemu")
    assert untrusted_parts(xml, TO) == ["<emulator>/var/tmp/qemu</emulator> (outside --to)"]
    dotted = _domain().replace("/usr/bin/qemu-system-x86_64", "/usr/bin/../../tmp/qemu")
    assert untrusted_parts(dotted, TO)


def test_to_prefix_is_not_inside():
    xml = _domain(devices="<serial type='file'><source path='/srv/restore-other/log'/></serial>")
    assert untrusted_parts(xml, TO) == [
        "<source path='/srv/restore-other/log'> (outside --to)"]


def test_what_reviewers_found_getting_through_is_refused():
    cases = {
        "<memory model='nvdimm'><source><path>/etc/shadow</path></source></memory>": "memory",
        "<rng model='virtio'><backend model='random'>/etc/shadow</backend></rng>": "/etc/shadow",
        "<smartcard mode='host'/>": "smartcard",
        "<input type='passthrough' bus='virtio'><source evdev='/dev/input/event0'/></input>":
            "input",
        "<disk type='volume' device='disk'><source pool='p' volume='v'/>"
        "<target dev='vdz'/></disk>": "disk type='volume'",
        "<disk type='network' device='disk'><source protocol='rbd' name='pool/img'/>"
        "<target dev='vdy'/></disk>": "disk type='network'",
        "<interface type='direct'><source dev='eth0' mode='passthrough'/></interface>":
            "interface type='direct'",
        "<shmem name='x'/>": "shmem",
        "<redirdev bus='usb' type='tcp'><source mode='connect' host='h' service='1'/></redirdev>":
            "redirdev",
        "<serial type='file'><source path=' /etc/x'/></serial>": "/etc/x",
    }
    for device, expected in cases.items():
        problems = untrusted_parts(_domain(devices=device), TO)
        assert any(expected in problem for problem in problems), (device, problems)
    assert untrusted_parts(_domain(os_extra="<acpi><table type='slic'>/etc/shadow</table></acpi>"),
                           TO)
    assert untrusted_parts(_domain(extra="<seclabel type='none'/>"), TO)
    assert untrusted_parts(_domain(os_extra="<loader readonly='no' type='pflash'>"
                                            "/usr/share/OVMF/OVMF_CODE_4M.fd</loader>"), TO)
    assert untrusted_parts(_domain().replace("/usr/bin/qemu-system-x86_64", "/usr/bin/python3"),
                           TO)


def test_files_named_as_allowed_are_accepted_and_nothing_else():
    chain = "/backup/domains/u/layers/l1.qcow2"
    xml = _domain(devices=f"<disk type='file' device='disk'><source file='{chain}'/>"
                          "<target dev='vdb'/></disk>")
    assert untrusted_parts(xml, TO, allowed=[chain]) == []
    assert untrusted_parts(xml, TO, allowed=[chain + "x"]) != []
