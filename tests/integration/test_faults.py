"""Fault injection against the real stack: fibackup SIGKILLs itself at every named step.

After each kill: ``fibackup repair``, then a normal run, must succeed; the domain
runs; every restore point (also one the killed run may have published) restores
byte-exact; ``verify`` passes; no journal, partial file, unlisted layer or stray
image remains.  CI runs a representative set; ``scripts/test.sh --stress`` runs
every step and seeded random kills during copies (marker ``slow``).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import libvirt
import pytest

from tests.lab import KILLED, DiskDef, History, MiB, assert_same, image_bytes

QUICK = pytest.param  # a step CI runs


def slow(*values):
    return pytest.param(*values, marks=pytest.mark.slow)


# -- helpers ----------------------------------------------------------------------------------

def _after_kill(history: History, normal: list[str]) -> str:
    """repair, then the normal run; returns repair's report."""
    report = history.repair()
    history.lab.cli(*normal)
    return report


# -- snapshot and backup ----------------------------------------------------------------------

SNAPSHOT_STEPS = [
    QUICK("snapshot.take"), QUICK("snapshot.take.after"), slow("snapshot.tidy-xml"),
    slow("snapshot.tidy-xml.after"), QUICK("backup.copy"), slow("backup.copy.after"),
    QUICK("store.image-published"), slow("backup.publish"), QUICK("backup.publish.after"),
]


@pytest.mark.parametrize("fault", SNAPSHOT_STEPS)
def test_snapshot_killed_at_step(lab, fault):
    history = History(lab)
    history.rounds(2)
    history.write()
    history.killed(fault, "snapshot", "-d", history.dom.name, "-b", history.backup)
    history.repair()
    history.adopt_points()
    history.write()
    history.snapshot()
    history.check()


@pytest.mark.parametrize("fault", [QUICK("backup.files"), slow("backup.files.after")])
def test_snapshot_killed_while_saving_boot_files(lab, fault):
    """A direct-boot domain: its kernel and initrd are saved with each point."""
    history = History(lab, guest_cmdline="")
    history.rounds(1)
    history.write()
    history.killed(fault, "snapshot", "-d", history.dom.name, "-b", history.backup)
    history.repair()
    history.adopt_points()
    history.write()
    history.snapshot()
    history.check()
    listed = lab.cli("list", "-b", history.backup, "--json").json()
    assert all({item["role"] for item in row["files"]} == {"kernel", "initrd"} for row in listed)


@pytest.mark.parametrize("seed", [QUICK(1), slow(2), slow(3), slow(4)])
def test_snapshot_killed_at_random_moment_of_a_large_copy(lab, seed):
    history = History(lab, disks=(DiskDef("vda", "raw", 64 * MiB),))
    for offset in range(0, 64, 8):
        history.dom.write("vda", 0x11 + offset, offset * MiB, 4 * MiB)
    limit = random.Random(seed).randrange(MiB, 32 * MiB)
    history.killed(f"copy-bytes:{limit}", "snapshot", "-d", history.dom.name, "-b",
                   history.backup)
    history.repair()
    history.adopt_points()
    history.write()
    history.snapshot()
    history.check()


# -- consolidation ----------------------------------------------------------------------------

CONSOLIDATE_STEPS = [
    QUICK("commit", "consolidate.job"), QUICK("commit", "consolidate.job.running"),
    QUICK("commit", "consolidate.job.after"), slow("commit", "consolidate.sync-xml"),
    slow("commit", "consolidate.sync-xml.after"), QUICK("commit", "consolidate.delete"),
    slow("commit", "consolidate.delete.after"),
    slow("active", "consolidate.job"), slow("active", "consolidate.job.running"),
    QUICK("active", "consolidate.job.ready"), slow("active", "consolidate.job.after"),
    slow("active", "consolidate.delete"),
    slow("pull", "consolidate.job.running"), QUICK("pull", "consolidate.job.after"),
    slow("pull", "consolidate.delete"),
]


@pytest.mark.parametrize("method,fault", CONSOLIDATE_STEPS)
def test_live_consolidation_killed_at_step(lab, method, fault):
    history = History(lab)
    history.rounds(3)
    history.killed(fault, "consolidate", "-d", history.dom.name, "--method", method)
    report = history.repair()
    if fault == "consolidate.job.ready":
        assert "pivoted, as the active commit intended" in report, report
    history.lab.cli("consolidate", "-d", history.dom.name, "--method", method)
    history.write()
    result = history.snapshot()
    if method == "commit":
        assert result["new_generation"] == [] or fault in ("consolidate.job",), result
    history.check()


OFFLINE_STEPS = [
    QUICK("commit", "consolidate.job"), QUICK("commit", "consolidate.rebase"),
    slow("commit", "consolidate.rebase.after"), QUICK("commit", "consolidate.redefine"),
    slow("commit", "consolidate.redefine.after"), slow("commit", "consolidate.job.after"),
    slow("commit", "consolidate.delete"),
    slow("active", "consolidate.redefine"), QUICK("active", "consolidate.job.after"),
    slow("pull", "consolidate.job"), slow("pull", "consolidate.redefine"),
    slow("pull", "consolidate.delete"),
]


@pytest.mark.parametrize("method,fault", OFFLINE_STEPS)
def test_offline_consolidation_killed_at_step(lab, method, fault):
    history = History(lab)
    history.rounds(3)
    history.dom.destroy()
    history.killed(fault, "consolidate", "-d", history.dom.name, "--method", method)
    history.repair()
    history.lab.cli("consolidate", "-d", history.dom.name, "--method", method)
    history.dom.start()
    history.write()
    history.snapshot()
    history.check()


def test_catch_up_backup_killed_inside_consolidation(lab):
    history = History(lab)
    history.rounds(2)
    history.write()
    history.dom.snapshot(None)        # a frozen layer no backup holds
    history.killed("backup.copy.after", "consolidate", "-d", history.dom.name, "-b",
                   history.backup)
    history.repair()
    history.adopt_points()
    history.lab.cli("consolidate", "-d", history.dom.name, "-b", history.backup)
    history.write()
    history.snapshot()
    history.check()


# -- restore ----------------------------------------------------------------------------------

RESTORE_STEPS = [
    QUICK("restore.stage"), slow("restore.stage.after"), QUICK("restore.publish"),
    slow("restore.publish.after"), QUICK("restore.define"), QUICK("restore.define.after"),
    slow("copy-bytes:600000"),
]


@pytest.mark.parametrize("fault", RESTORE_STEPS)
def test_restore_killed_at_step(lab, fault):
    history = History(lab)
    history.rounds(2)
    first = next(iter(history.points))
    copy = f"{history.dom.name}-copy"
    lab.forget_name(copy)
    target = lab.path("restored")
    history.pending = {}
    result = lab.cli("restore", "-d", history.dom.name, "-b", history.backup, "--to", target,
                     "--at", first, "--as", copy, expect=None, env={"FIBACKUP_FAULT": fault})
    assert result.code == KILLED, result.stderr
    history.repair()
    defined = lab.conn.lookupByName(copy) if copy in lab.conn.listDefinedDomains() else None
    leftovers = sorted(os.listdir(target)) if os.path.isdir(target) else []
    if defined is None:
        assert leftovers == [], f"an undefined restore left {leftovers}"
        lab.cli("restore", "-d", history.dom.name, "-b", history.backup, "--to", target,
                "--at", first, "--as", copy)
    disks = {disk.find("target").get("dev"): disk.find("source").get("file")
             for disk in _disks(lab.conn.lookupByName(copy))}
    assert_same({target_dev: image_bytes(path) for target_dev, path in disks.items()},
                history.points[first], "restored copy")
    history.check()


def _disks(dom):
    import xml.etree.ElementTree as ET
    return [disk for disk in ET.fromstring(dom.XMLDesc(0)).findall("./devices/disk")
            if disk.find("source") is not None]


# -- the next run repairs by itself -----------------------------------------------------------

def test_next_run_reconciles_without_repair(lab):
    history = History(lab)
    history.rounds(3)
    history.killed("consolidate.job.after", "consolidate", "-d", history.dom.name)
    history.write()
    result = lab.cli("snapshot", "-d", history.dom.name, "-b", history.backup, "--json")
    assert "'consolidate' run started" in result.stderr, result.stderr
    snapshot = result.json()[0]
    assert snapshot["new_generation"] == [], "the commit the dead run completed was recorded"
    history.points[snapshot["point"]] = history.dom.expected_now()
    history.check()


def test_a_job_still_running_is_named_and_repair_waits_for_it(lab):
    history = History(lab)
    history.rounds(3)
    history.killed("consolidate.job.running", "consolidate", "-d", history.dom.name,
                   "--bandwidth", "1")
    refused = lab.cli("snapshot", "-d", history.dom.name, "-b", history.backup, expect=None)
    if refused.code != 0:      # the 1 MiB/s job may already have finished
        assert refused.code == 1 and "fibackup repair -d" in refused.stderr, refused.stderr
        assert refused.stderr.count("\nfibackup:") + refused.stderr.startswith("fibackup:") == 1
    assert "completed" in history.repair() or refused.code == 0
    history.write()
    history.snapshot()
    history.check()


# -- the stack fails under fibackup -----------------------------------------------------------

def _stopped_run(lab, fault: str, *args: str) -> subprocess.Popen:
    """Start fibackup so that it stops itself (SIGSTOP) at ``fault``; wait until it has."""
    env = {**os.environ, "FIBACKUP_STATE_DIR": lab.state_dir, "FIBACKUP_FAULT": f"{fault}:stop"}
    proc = subprocess.Popen([sys.executable, "-m", "fibackup", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with open(f"/proc/{proc.pid}/stat") as handle:
            if handle.read().rsplit(")", 1)[1].split()[0] == "T":
                return proc
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"fibackup never reached {fault}")


def _resume(proc: subprocess.Popen) -> tuple[int, str]:
    os.kill(proc.pid, signal.SIGCONT)
    _out, err = proc.communicate(timeout=300)
    assert "Traceback" not in err, err
    return proc.returncode, err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("fibackup:")]


def test_libvirtd_killed_and_restarted_during_a_block_job(lab):
    history = History(lab)
    history.rounds(3)
    proc = _stopped_run(lab, "consolidate.job.running", "consolidate", "-d", history.dom.name,
                        "--bandwidth", "1")
    restart_libvirtd(lab)
    code, err = _resume(proc)
    assert code == 1 and len(_error_lines(err)) == 1, err
    assert "connection to libvirtd was lost" in err and "fibackup repair" in err, err
    assert history.dom.dom.isActive()
    history.repair()
    history.write()
    history.snapshot()
    history.check()


def test_qemu_killed_during_a_block_job(lab):
    history = History(lab)
    history.rounds(3)
    proc = _stopped_run(lab, "consolidate.job.running", "consolidate", "-d", history.dom.name,
                        "--bandwidth", "1")
    history.pending = history.dom.expected_now()
    with open(f"/run/libvirt/qemu/{history.dom.name}.pid") as handle:
        os.kill(int(handle.read().strip()), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while history.dom.dom.isActive() and time.monotonic() < deadline:
        time.sleep(0.1)
    code, err = _resume(proc)
    assert code == 1 and len(_error_lines(err)) == 1, err
    assert "stopped during the block job" in err and "fibackup repair" in err, err
    for target in history.dom.expected:    # the chain on disk is valid and shows the data
        subprocess.run(["qemu-img", "check", "-q", history.dom.top(target, inactive=True)],
                       check=True)
    history.dom.start()
    history.repair()
    # the commit wrote part of the data into the base, whose copy in the backup is now
    # stale: consolidating needs the backup to catch up first (-b), a new full generation
    lab.cli("consolidate", "-d", history.dom.name, expect=1)
    lab.cli("consolidate", "-d", history.dom.name, "-b", history.backup)
    history.adopt_points()
    history.write()
    history.snapshot()
    history.check()


def test_backup_directory_removed_mid_run(lab):
    history = History(lab)
    history.rounds(1)
    history.write()
    proc = _stopped_run(lab, "backup.copy", "snapshot", "-d", history.dom.name, "-b",
                        history.backup)
    shutil.rmtree(history.backup)
    code, err = _resume(proc)
    assert code == 1 and len(_error_lines(err)) == 1, err
    assert "disappeared" in err or "does not exist" in err, err
    assert not os.path.exists(history.backup), "the removed backup directory was recreated"
    assert history.dom.dom.isActive()
    history.points.clear()
    history.repair()
    history.snapshot()
    history.check()


def test_runs_on_different_domains_in_parallel(lab):
    first, second = History(lab), History(lab)
    first.backup = second.backup = lab.path("shared backup")
    for history in (first, second):
        history.rounds(1)
        history.write()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "fibackup", "snapshot", "-d", history.dom.name, "-b",
         history.backup, "--json"], env={**os.environ, "FIBACKUP_STATE_DIR": lab.state_dir},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for history in (first, second)]
    for history, proc in zip((first, second), procs):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        history.points[json.loads(out)[0]["point"]] = history.dom.expected_now()
    for history in (first, second):
        history.check()


def restart_libvirtd(lab) -> None:
    """SIGKILL libvirtd and start it again (as scripts/setup-host.sh does)."""
    subprocess.run(["pkill", "-KILL", "-x", "libvirtd"], check=False)
    deadline = time.monotonic() + 30
    while subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "libvirtd did not die"
        time.sleep(0.1)
    subprocess.run(["libvirtd", "-d"], check=True)
    while subprocess.run(["virsh", "-q", "-c", "qemu:///system", "version"],
                         capture_output=True).returncode != 0:
        assert time.monotonic() < deadline + 30, "libvirtd did not come back"
        time.sleep(0.2)
    lab.reconnect()


def test_a_job_fibackup_did_not_start_is_never_adopted(lab):
    history = History(lab)
    history.rounds(2)
    dom = history.dom.dom
    # A pull capped at 1 byte/s: QEMU copies one chunk, then holds the job for hours, so it
    # cannot finish on its own during the CLI runs below however busy the host (a MiB/s
    # cap finished within seconds in a stress run).  A pull never writes the base.
    dom.blockRebase("vda", None, 1, libvirt.VIR_DOMAIN_BLOCK_REBASE_BANDWIDTH_BYTES)
    try:
        refused = lab.cli("consolidate", "-d", history.dom.name, "--disk", "vda", expect=1)
        assert "already runs a block job" in refused.stderr, refused.stderr
        journal = os.path.join(lab.state_dir, "journal")
        assert not os.path.isdir(journal) or not os.listdir(journal), "no work was left open"
        assert "nothing to repair" in history.repair()
        assert dom.blockJobInfo("vda", 0), "the foreign job was left alone"
    finally:
        dom.blockJobAbort("vda", 0)
    deadline = time.monotonic() + 30
    while dom.blockJobInfo("vda", 0) and time.monotonic() < deadline:
        time.sleep(0.1)
    history.write()
    history.snapshot()
    history.check()


# -- format 3 ---------------------------------------------------------------------------------

STORE3_STEPS = [
    QUICK("backup.chunks"), slow("backup.chunks.after"), QUICK("store.image-published"),
    slow("backup.publish"), QUICK("backup.publish.after"), QUICK("copy-bytes:3145728"),
    slow("copy-bytes:1048576"), slow("backup.files"),
]


@pytest.mark.parametrize("fault", STORE3_STEPS)
def test_format3_snapshot_killed_at_step(lab, fault):
    """A killed backup into a format-3 store: repair stops the export it left running, no
    listed point lacks a chunk, and garbage collection removes what the run left."""
    history = History(lab)
    history.backup = lab.path("store3")
    lab.cli("init", "-b", history.backup, "--format", "3")
    history.rounds(2)
    history.write()
    history.killed(fault, "snapshot", "-d", history.dom.name, "-b", history.backup)
    history.repair()
    assert not [line for line in open("/proc/self/mounts") if "fibackup-view-" in line]
    history.adopt_points()
    history.write()
    history.snapshot()
    lab.cli("prune", "-b", history.backup, "-d", history.dom.name, "--keep", "100",
            "--no-libvirt")
    history.check()
