"""Instant recovery from format-3 stores: the domain runs on overlays whose backing is
the point's disk served by nbdkit (restore --instant), against the real libvirtd,
QEMU, nbdkit and Ceph RGW.

The served bytes must be exactly the point's; the point stays pinned while the
domain runs from it; --finalize pulls the data live (or offline) and leaves no
server, socket, pin or record; after a "reboot" (servers killed, /run emptied)
repair brings the servers back; when the store stops answering the guest pauses
(rerror_policy=stop), never reads wrong bytes, and goes on once it answers again.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import signal
import subprocess
import time
import xml.etree.ElementTree as ET

import libvirt
import pytest

from fibackup.serve import daemons
from tests.lab import PREFIX, MiB, DiskDef, LabDomain, image_bytes


def _new_name(lab) -> str:
    import uuid as uuidlib
    name = f"{PREFIX}{uuidlib.uuid4().hex[:8]}"
    lab.forget_name(name)
    return name


def _init(lab, location: str, encrypted: bool) -> dict[str, str]:
    env: dict[str, str] = {}
    args = ["init", "-b", location, "--format", "3"]
    if encrypted:
        secret = lab.path("passphrase")
        with open(secret, "w") as handle:
            handle.write("served and sealed\n")
        env["FIBACKUP_PASSWORD_FILE"] = secret
        args.append("--encrypt")
    lab.cli(*args, env=env)
    return env


def _served_backing(xml: str) -> dict[str, tuple[str, str, str]]:
    """Target -> (socket of its NBD backing, error_policy, rerror_policy)."""
    found = {}
    for disk in ET.fromstring(xml).findall("./devices/disk"):
        backing = disk.find("backingStore")
        if backing is None or backing.get("type") != "network":
            continue
        host = backing.find("source/host")
        driver = disk.find("driver")
        found[disk.find("target").get("dev")] = (
            host.get("socket"), driver.get("error_policy"), driver.get("rerror_policy"))
    return found


def _servers(record_uuid: str) -> list[int]:
    pids = []
    for pidfile in glob.glob(os.path.join(daemons.domain_dir(record_uuid), "*.pid")):
        with open(pidfile) as handle:
            pids.append(int(handle.read().strip()))
    return pids


def _nbdkits_for(record_uuid: str) -> list[str]:
    """nbdkit processes whose command line names the domain's socket directory."""
    out = subprocess.run(["pgrep", "-a", "nbdkit"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if record_uuid in line]


def _pins(lab, location: str, env: dict[str, str]) -> list[dict]:
    return lab.cli("pin", "list", "-b", location, "--json", env=env).json()


def test_served_instant_from_a_directory_store_finalize_live_and_after_a_reboot(lab):
    location = lab.path("store3")
    env = _init(lab, location, encrypted=False)
    dom = lab.domain(disks=(DiskDef("vda", "qcow2", 24 * MiB), DiskDef("vdb", "raw", 16 * MiB)))
    dom.write("vda", 0x31, 1 * MiB, 2 * MiB)
    dom.write("vdb", 0x32, 5 * MiB, MiB)
    first = lab.cli("snapshot", "-d", dom.name, "-b", location, "--json", env=env).json()[0]
    point_one = dom.expected_now()
    dom.write("vda", 0x33, 9 * MiB, MiB)                 # after point 1: not served
    lab.cli("snapshot", "-d", dom.name, "-b", location, env=env)

    name, to = _new_name(lab), lab.path("served to")
    started = lab.cli("restore", "-d", dom.name, "-b", location, "--instant", "--as", name,
                      "--to", to, "--at", first["point"], "--json", env=env).json()
    copy = lab.conn.lookupByName(name)
    assert copy.isActive() and started["instant"] is True and started["served"] is True
    record_uuid = copy.UUIDString()
    # the definition: each disk's backing is its served raw disk; QEMU pauses on errors
    for flags in (0, libvirt.VIR_DOMAIN_XML_INACTIVE):
        backing = _served_backing(copy.XMLDesc(flags))
        assert sorted(backing) == ["vda", "vdb"]
        for target, (socket, policy, rpolicy) in backing.items():
            assert socket == daemons.place(record_uuid, target).socket
            assert (policy, rpolicy) == ("stop", "stop")
    # only root and QEMU reach the sockets
    directory = daemons.domain_dir(record_uuid)
    info = os.stat(directory)
    assert info.st_uid == 0 and info.st_mode & 0o7777 in (0o710, 0o700)
    for target in ("vda", "vdb"):
        sock = os.stat(daemons.place(record_uuid, target).socket)
        assert sock.st_mode & 0o777 == 0o600
    assert len(_servers(record_uuid)) == 2
    # the point is pinned: prune keeps it while the domain runs from it
    pins = _pins(lab, location, env)
    assert [pin["point"] for pin in pins] == [first["point"]]
    lab.cli("prune", "-d", dom.name, "-b", location, "--keep", "1", env=env)
    listed = lab.cli("list", "-d", dom.name, "-b", location, "--json", env=env).json()
    assert first["point"] in json.dumps(listed)
    # the guest sees exactly point 1 (read through the same served disks, beside QEMU)
    for target in ("vda", "vdb"):
        socket = daemons.place(record_uuid, target).socket
        served = image_bytes(f"nbd+unix:///?socket={socket}", "raw")
        assert served == bytes(point_one[target]), target
    # writes land in the overlays; finalize pulls live and takes the servers down
    instant = LabDomain(lab, name, to, list(dom.disks),
                        expected={target: bytearray(data) for target, data in point_one.items()})
    instant.write("vda", 0x7A, 3 * MiB, MiB)
    done = lab.cli("restore", "--finalize", name, "--json", env=env).json()
    assert done["method"] == "pull" and copy.isActive()
    assert _served_backing(copy.XMLDesc(0)) == {}
    assert _served_backing(copy.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) == {}
    assert not os.path.exists(directory) and _nbdkits_for(record_uuid) == []
    assert _pins(lab, location, env) == []
    assert os.listdir(os.path.join(lab.state_dir, "instant")) == []
    copy.destroy()
    for target, path in done["disks"].items():
        assert image_bytes(path, "qcow2") == bytes(instant.expected_now()[target]), target


def test_served_instant_after_a_reboot_repair_serves_again_and_offline_finalize(lab):
    location = lab.path("store3")
    env = _init(lab, location, encrypted=True)
    dom = lab.domain(disks=(DiskDef("vda", "qcow2", 16 * MiB),))
    dom.write("vda", 0x41, 2 * MiB, 3 * MiB)
    lab.cli("snapshot", "-d", dom.name, "-b", location, env=env)
    expected = bytes(dom.expected_now()["vda"])
    name, to = _new_name(lab), lab.path("served to")
    no_key = lab.cli("restore", "-d", dom.name, "-b", location, "--instant", "--as", name,
                     "--to", to, expect=None)
    assert no_key.code != 0 and "never prompting" in no_key.stderr
    assert _pins(lab, location, env) == []
    lab.cli("restore", "-d", dom.name, "-b", location, "--instant", "--as", name,
            "--to", to, env=env)
    copy = lab.conn.lookupByName(name)
    record_uuid = copy.UUIDString()
    # a server that dies under a running guest: QEMU does not reconnect; repair says so
    for pid in _servers(record_uuid):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while copy.state()[0] != libvirt.VIR_DOMAIN_PAUSED and time.monotonic() < deadline:
        time.sleep(0.2)                                 # the firmware reads the disk
    told = lab.cli("repair", "-d", name, "--json", env=env)
    assert "lost its served disks: restart it" in told.stdout
    assert "virsh destroy" in told.stderr and len(_servers(record_uuid)) == 1
    copy.destroy()
    # a reboot: the servers die and /run is empty again
    for pid in _servers(record_uuid):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _nbdkits_for(record_uuid) and time.monotonic() < deadline:
        time.sleep(0.1)
    daemons.remove_dir(record_uuid)
    repaired = lab.cli("repair", "-d", name, "--json", env=env).json()
    assert "started the servers of vda again" in json.dumps(repaired)
    assert len(_servers(record_uuid)) == 1
    copy.create()                                      # it boots from the served disk again
    copy.destroy()
    # offline finalize: the data comes through the served disk into the overlay
    done = lab.cli("restore", "--finalize", name, "--json", env=env).json()
    assert done["method"] == "rebase"
    assert not os.path.exists(daemons.domain_dir(record_uuid))
    assert _nbdkits_for(record_uuid) == []
    assert _pins(lab, location, env) == []
    assert image_bytes(done["disks"]["vda"], "qcow2") == expected


def test_served_instant_refusals_leave_nothing_and_a_vanished_domain_is_released(lab):
    location = lab.path("store3")
    env = _init(lab, location, encrypted=False)
    dom = lab.domain(disks=(DiskDef("vda", "qcow2", 16 * MiB),))
    point = lab.cli("snapshot", "-d", dom.name, "-b", location, "--json", env=env).json()[0]
    records = os.path.join(lab.state_dir, "instant")
    to = lab.path("served to")
    taken = lab.cli("restore", "-d", dom.name, "-b", location, "--instant", "--as", dom.name,
                    "--to", to, expect=None, env=env)
    assert taken.code != 0 and "already exists" in taken.stderr
    os.makedirs(to, exist_ok=True)
    in_the_way = os.path.join(to, f"vda-{point['point']}.qcow2")
    with open(in_the_way, "w") as handle:
        handle.write("mine")
    refused = lab.cli("restore", "-d", dom.name, "-b", location, "--instant", "--as",
                      _new_name(lab), "--to", to, expect=None, env=env)
    assert refused.code != 0 and "already exist" in refused.stderr
    with open(in_the_way) as handle:
        assert handle.read() == "mine"
    assert _pins(lab, location, env) == []
    assert not os.path.isdir(records) or os.listdir(records) == []
    os.unlink(in_the_way)
    # a domain removed by hand: finalize releases its servers and its pin
    name = _new_name(lab)
    started = lab.cli("restore", "-d", dom.name, "-b", location, "--instant", "--as", name,
                      "--to", to, "--json", env=env).json()
    copy = lab.conn.lookupByName(name)
    copy.destroy()
    copy.undefine()
    assert len(_pins(lab, location, env)) == 1
    gone = lab.cli("restore", "--finalize", name, "--json", env=env).json()
    assert gone["method"] == "gone"
    assert _pins(lab, location, env) == []
    assert not os.path.exists(daemons.domain_dir(started["uuid"]))
    assert _nbdkits_for(started["uuid"]) == []
    # ... and the next --instant releases one undefined by hand, too
    name = _new_name(lab)
    first = lab.cli("restore", "-d", dom.name, "-b", location, "--instant", "--as", name,
                    "--to", lab.path("first to"), "--json", env=env).json()
    lab.conn.lookupByName(name).destroy()
    lab.conn.lookupByName(name).undefine()
    name = _new_name(lab)
    lab.cli("restore", "-d", dom.name, "-b", location, "--instant", "--as", name,
            "--to", lab.path("second to"), env=env)
    assert _nbdkits_for(first["uuid"]) == [] and len(_pins(lab, location, env)) == 1
    lab.cli("restore", "--finalize", name, env=env)
    assert _pins(lab, location, env) == []


@pytest.mark.guest
def test_guest_runs_from_encrypted_s3_pauses_while_the_rgw_is_down_and_goes_on(guest_lab,
                                                                              rgw, s3_bucket):
    lab = guest_lab
    location = f"s3://{s3_bucket}/served"
    env = _init(lab, location, encrypted=True)
    dom = lab.domain(disks=[DiskDef("vda", "qcow2", 16 * MiB)],
                     guest_cmdline=f"fib.hashbytes={16 * MiB}")
    dom.write("vda", 0x24, 4 * MiB, MiB)
    point = lab.cli("snapshot", "-d", dom.name, "-b", location, "--json",
                    env=env).json()[0]["point"]
    want = hashlib.md5(dom.expected_now()["vda"]).hexdigest()
    dom.write("vda", 0x25, 5 * MiB, MiB)               # after the point: not served
    lab.cli("snapshot", "-d", dom.name, "-b", location, env=env)
    name = _new_name(lab)
    began = time.monotonic()
    lab.cli("restore", "-d", dom.name, "-b", location, "--instant", "--as", name,
            "--to", lab.path("now"), "--at", point, env=env)
    rgw.stop_gateway()
    try:
        copy = lab.conn.lookupByName(name)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            state, reason = copy.state()
            if state == libvirt.VIR_DOMAIN_PAUSED:
                break
            time.sleep(0.5)
        assert (state, reason) == (libvirt.VIR_DOMAIN_PAUSED,
                                   libvirt.VIR_DOMAIN_PAUSED_IOERROR), (state, reason)
        console_path = f"{dom.directory}/{name}.console.log"
        with open(console_path, errors="replace") as handle:
            assert "FIBACKUP-DISK vda" not in handle.read()
        logs = "".join(open(path, errors="replace").read() for path in
                       glob.glob(os.path.join(daemons.domain_dir(copy.UUIDString()), "*.log")))
        assert "fibackup: refused a read" in logs, logs[-2000:]
    finally:
        rgw.start_gateway()
    repaired = lab.cli("repair", "-d", name, "--json", env=env).json()
    assert "resumed the guest" in json.dumps(repaired)
    deadline, console = time.monotonic() + 180, ""
    while time.monotonic() < deadline and "FIBACKUP-DISKS-DONE" not in console:
        if copy.state()[0] == libvirt.VIR_DOMAIN_PAUSED:     # a read failed before the RGW
            lab.cli("repair", "-d", name, env=env)          # answered again: retry it
        time.sleep(0.5)
        with open(console_path, errors="replace") as handle:
            console = handle.read()
    seen = dict(re.findall(r"FIBACKUP-DISK (vd\w) ([0-9a-f]{32})", console))
    assert seen == {"vda": want}, console[-2000:]
    print(f"served from S3 to guest ready (with the outage): {time.monotonic() - began:.1f} s")
    done = lab.cli("restore", "--finalize", name, "--json", env=env).json()
    assert done["method"] == "pull" and copy.isActive()
    assert _pins(lab, location, env) == []
