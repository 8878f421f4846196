"""File-level restore against the real libvirtd, QEMU, nbdkit, libguestfs and Ceph RGW:
``fibackup mount`` and ``restore-files`` show every point's files exactly as they were
(content, modes, owners, times, links, xattrs, holes), from a directory and from an
encrypted S3 store while prune runs elsewhere; hostile filesystems neither crash nor
hang.  Appliance launches (~15 s each under TCG) are shared: the history is built
once per module."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests import guestlab
from tests.guestlab import Entry, compare_tree, posix_tree, vfat_tree, write_tree
from tests.lab import MiB, DiskDef, Lab

SECTOR = 512
PARTITIONS = [("ext4", 2048, 100351), ("xfs", 100352, 755711), ("vfat", 755712, 821247)]


def build_first(g, btrfs: bool) -> dict[str, guestlab.Tree]:
    g.part_init("/dev/sda", "gpt")
    for _fstype, start, end in PARTITIONS:
        g.part_add("/dev/sda", "p", start, end)
    g.part_add("/dev/sda", "p", 821248, -34)
    for number, (fstype, _start, _end) in enumerate(PARTITIONS, start=1):
        g.mkfs(fstype, f"/dev/sda{number}")
    g.pvcreate("/dev/sda4")
    g.pvcreate("/dev/sdb")
    g.vgcreate("vg0", ["/dev/sda4", "/dev/sdb"])
    g.lvcreate("span", "vg0", 200)                 # more than sda4 holds: spans both disks
    g.mkfs("ext4", "/dev/vg0/span")
    trees = {"vda/1": posix_tree("one"), "vda/2": posix_tree("xfs one"),
             "vda/3": vfat_tree("one"), "lvm/vg0/span": posix_tree("lv one")}
    devices = {"vda/1": "/dev/sda1", "vda/2": "/dev/sda2", "vda/3": "/dev/sda3",
               "lvm/vg0/span": "/dev/vg0/span"}
    if btrfs:
        g.lvcreate("bt", "vg0", 140)
        g.mkfs("btrfs", "/dev/vg0/bt")
        trees["lvm/vg0/bt"] = posix_tree("btrfs one")
        devices["lvm/vg0/bt"] = "/dev/vg0/bt"
    for where, tree in trees.items():
        g.mount(devices[where], "/")
        write_tree(g, "/", tree)
        g.umount_all()
    return trees


def change_second(g, trees: dict[str, guestlab.Tree]) -> dict[str, guestlab.Tree]:
    trees = {where: dict(tree) for where, tree in trees.items()}
    devices = {"vda/1": "/dev/sda1", "lvm/vg0/span": "/dev/vg0/span"}
    for where, device in devices.items():
        g.mount(device, "/")
        guestlab.remove_path(g, "/", "relative")
        changes = {"hello.txt": Entry("file", b"hello two\n", 0o640, 7, 8, 1_710_000_000),
                   "new file.txt": Entry("file", b"new in two" * 1000, 0o644, 0, 0,
                                         1_720_000_000)}
        guestlab.remove_path(g, "/", "hello.txt")
        write_tree(g, "/", changes)
        del trees[where]["relative"]
        trees[where].update(changes)
        g.umount_all()
    return trees


class History:
    """One data domain (GPT ext4 + xfs + vfat + an LVM volume spanning both disks) and
    two points of it in a format-3 directory store."""

    def __init__(self) -> None:
        self.lab = Lab()
        self.dom = self.lab.domain(disks=(DiskDef("vda", "raw", 512 * MiB, model=False),
                                          DiskDef("vdb", "qcow2", 256 * MiB, model=False)),
                                   start=False)
        self.store = self.lab.path("store")
        self.lab.cli("init", "-b", self.store, "--format", "3")
        g = guestlab.open_disks([self.live("vda"), self.live("vdb")])
        self.btrfs = bool(g.filesystem_available("btrfs"))
        first = build_first(g, self.btrfs)
        g.shutdown()
        g.close()
        self.points = [self.snapshot()]
        self.trees = [first]
        g = guestlab.open_disks([self.live("vda"), self.live("vdb")])
        self.trees.append(change_second(g, first))
        g.shutdown()
        g.close()
        self.points.append(self.snapshot())

    def live(self, target: str) -> tuple[str, str]:
        disk = self.dom.live_xml_inactive_disk(target)
        return disk.find("source").get("file"), disk.find("driver").get("type")

    def snapshot(self) -> str:
        return self.lab.cli("snapshot", "-d", self.dom.name, "-b", self.store,
                            "--json").json()[0]["point"]

    def mountpoint(self, name: str) -> str:
        path = self.lab.path(name)
        os.makedirs(path)
        return path


@pytest.fixture(scope="module")
def history():
    made = History()
    try:
        yield made
    finally:
        for record in made.lab.cli("mount", "--list", "--json").json():
            made.lab.cli("umount", record["mountpoint"], expect=None)
        made.lab.close()


def compare_point(base: str, trees: dict[str, guestlab.Tree]) -> None:
    for where, tree in trees.items():
        compare_tree(os.path.join(base, where), tree, posix=where != "vda/3")


def test_mount_shows_each_point_as_it_was_and_umount_undoes_everything(history):
    lab = history.lab
    for number, (point, trees) in enumerate(zip(history.points, history.trees)):
        mountpoint = history.mountpoint(f"mnt {number}")
        shown = lab.cli("mount", "-d", history.dom.name, "-b", history.store, "--at", point,
                        mountpoint, "--json").json()
        assert shown["state"] == "mounted" and shown["system"] is None
        assert {item["path"] for item in shown["shown"]} == {f"/{where}" for where in trees}
        compare_point(mountpoint, trees)
        listed = lab.cli("mount", "--list", "--json").json()
        assert [record["mountpoint"] for record in listed] == [os.path.realpath(mountpoint)]
        pins = lab.cli("pin", "list", "-b", history.store, "--json").json()
        assert [pin["point"] for pin in pins] == [point]
        with pytest.raises(OSError):                        # read-only
            open(os.path.join(mountpoint, "vda/1/hello.txt"), "wb")
        busy = lab.cli("mount", "-d", history.dom.name, "-b", history.store, mountpoint,
                       expect=1)
        assert "already mounted" in busy.stderr
        lab.cli("umount", mountpoint)
        assert not os.path.ismount(mountpoint) and os.listdir(mountpoint) == []
        assert lab.cli("mount", "--list", "--json").json() == []
        assert lab.cli("pin", "list", "-b", history.store, "--json").json() == []
    assert os.listdir(os.path.join(lab.state_dir, "mounts")) == []


def test_restore_files_keeps_content_modes_owners_times_links_xattrs_and_holes(history):
    lab = history.lab
    to = lab.path("files out")
    paths = ["vda/1/dir with space", "vda/1/hello.txt", "vda/1/shadow",
             "lvm/vg0/span/sparse.bin", "vda/2/relative"]
    done = lab.cli("restore-files", "-d", history.dom.name, "-b", history.store, "--at",
                   history.points[0], *[arg for path in paths for arg in ("--path", path)],
                   "--to", to, "--json").json()
    assert done["point"] == history.points[0] and len(done["copied"]) == 5
    first = history.trees[0]
    expected = {name: entry for name, entry in first["vda/1"].items()
                if name.split("/")[0] in ("dir with space", "hello.txt", "shadow")}
    expected["sparse.bin"] = first["lvm/vg0/span"]["sparse.bin"]
    expected["relative"] = first["vda/2"]["relative"]
    compare_tree(to, expected)
    assert os.readlink(os.path.join(to, "shadow")) == "/etc/shadow"     # a link, not the file
    sparse = os.stat(os.path.join(to, "sparse.bin"))
    assert sparse.st_blocks * 512 < 1024 * 1024 < sparse.st_size       # the hole stayed one
    again = lab.cli("restore-files", "-d", history.dom.name, "-b", history.store,
                    "--path", "vda/1/hello.txt", "--to", to, expect=1)
    assert "exists; nothing is overwritten" in again.stderr
    missing = lab.cli("restore-files", "-d", history.dom.name, "-b", history.store,
                      "--path", "vda/1/no such file", "--to", lab.path("other"), "--json",
                      expect=1).json()
    assert missing["error"]["kind"] == "GuestPathError"
    assert "vda/1" in missing["error"]["message"] and "lvm/vg0/span" in missing["error"]["message"]
    assert lab.cli("mount", "--list", "--json").json() == []


def test_bad_mount_requests_are_refused_before_anything_starts(history, tmp_path):
    lab = history.lab
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    refused = lab.cli("mount", "-d", history.dom.name, "-b", history.store, str(full),
                      "--json", expect=1).json()
    assert refused["error"]["kind"] == "MountpointError" and "not empty" in refused["error"]["message"]
    old = lab.path("format1")
    lab.cli("init", "-b", old, "--format", "1")
    empty = tmp_path / "empty"
    empty.mkdir()
    usage = lab.cli("mount", "-d", history.dom.name, "-b", old, str(empty), expect=2)
    assert "format-1 store" in usage.stderr
    assert "not a fibackup mount" in lab.cli("umount", str(empty), expect=1).stderr


def test_an_encrypted_s3_store_serves_a_pinned_point_while_prune_runs_elsewhere(history,
                                                                                s3_bucket):
    lab = history.lab
    secret = lab.path("s3 passphrase")
    with open(secret, "w") as handle:
        handle.write("a passphrase for the files test\n")
    env = {"FIBACKUP_PASSWORD_FILE": secret}
    location = f"s3://{s3_bucket}/files"
    lab.cli("init", "-b", location, "--format", "3", "--encrypt", env=env)
    lab.cli("copy", "--from", history.store, "--to", location, env=env)
    mountpoint = history.mountpoint("mnt s3")
    no_key = lab.cli("mount", "-d", history.dom.name, "-b", location, mountpoint, expect=None)
    assert no_key.code != 0 and "--password-file" in no_key.stderr
    lab.cli("--password-file", secret, "mount", "-d", history.dom.name, "-b", location,
            "--at", "1", mountpoint)
    try:
        pruned = lab.cli("prune", "-b", location, "-d", history.dom.name, "--keep", "1",
                         "--json", env=env)
        assert history.points[0] in pruned.stdout          # kept: named as pinned
        compare_point(mountpoint, history.trees[0])
    finally:
        lab.cli("umount", mountpoint)
    lab.cli("prune", "-b", location, "-d", history.dom.name, "--keep", "1", env=env)
    listed = lab.cli("list", "-b", location, "--json", env=env).json()
    assert [row["id"] for row in listed] == [history.points[1]]


def build_os_disk(g) -> dict[str, guestlab.Tree]:
    """A Linux root the way inspection knows one: /etc/os-release and an fstab that
    mounts a second partition at /boot (as /dev/vda2, the guest's name)."""
    g.part_init("/dev/sda", "mbr")
    g.part_add("/dev/sda", "p", 2048, 40959)
    g.part_add("/dev/sda", "p", 40960, -1)
    g.mkfs("ext4", "/dev/sda1")
    g.mkfs("ext4", "/dev/sda2")
    g.mount("/dev/sda2", "/")
    root = {"etc": Entry("dir", mode=0o755), "bin": Entry("dir", mode=0o755),
            "etc/os-release": Entry("file", b'NAME="Debian GNU/Linux"\nID=debian\n'
                                            b'VERSION_ID="12"\nPRETTY_NAME="Debian 12"\n'),
            "etc/fstab": Entry("file", b"/dev/vda2 / ext4 defaults 0 1\n"
                                       b"/dev/vda1 /boot ext4 defaults 0 2\n"),
            "etc/hostname": Entry("file", b"restored-host\n", 0o644, 0, 0, 1_690_000_000),
            "bin/sh": Entry("file", b"\x7fELF not really", 0o755),
            "boot": Entry("dir", mode=0o755),
            "home": Entry("dir", mode=0o755),
            "home/ann": Entry("dir", mode=0o700, uid=1000, gid=1000),
            "home/ann/notes.txt": Entry("file", b"ann's notes", 0o600, 1000, 1000)}
    write_tree(g, "/", root)
    g.mkdir_p("/boot")
    g.mount("/dev/sda1", "/boot")
    boot = {"vmlinuz-test": Entry("file", b"kernel bytes" * 100, 0o600)}
    write_tree(g, "/boot", boot)
    g.umount_all()
    return {"": root, "boot": boot}


def test_a_point_holding_an_os_shows_its_tree_as_the_guest_mounts_it(history):
    lab = history.lab
    dom = lab.domain(disks=(DiskDef("vda", "qcow2", 96 * MiB, model=False),), start=False)
    g = guestlab.open_disks([(dom.image_path(dom.disks[0]), "qcow2")])
    trees = build_os_disk(g)
    g.close()
    store = lab.path("os store")
    lab.cli("init", "-b", store, "--format", "3")
    lab.cli("snapshot", "-d", dom.name, "-b", store)
    mountpoint = history.mountpoint("mnt os")
    shown = lab.cli("mount", "-d", dom.name, "-b", store, mountpoint, "--json").json()
    try:
        assert shown["system"] and "Debian" in shown["system"], shown
        assert [item["path"] for item in shown["shown"]] == ["/", "/boot"]
        root = {path: entry for path, entry in trees[""].items()}
        compare_tree(mountpoint, root, exact_names=False)
        compare_tree(os.path.join(mountpoint, "boot"), trees["boot"])
        os.kill(shown["pid"], 9)                 # a keeper killed: nothing may linger
        deadline = time.monotonic() + 30
        while lab.cli("mount", "--list", "--json").json()[0]["state"] != "stale":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert lab.cli("pin", "list", "-b", store, "--json").json() != []
    finally:
        lab.cli("umount", mountpoint)
    assert not os.path.ismount(mountpoint) and os.listdir(mountpoint) == []
    assert lab.cli("mount", "--list", "--json").json() == []
    assert lab.cli("pin", "list", "-b", store, "--json").json() == []
    assert subprocess.run(["pgrep", "-f", f"nbdkit.*{store}"]).returncode == 1
    assert shown["sockets"] and not os.path.exists(shown["sockets"])
    to = lab.path("os files")
    lab.cli("restore-files", "-d", dom.name, "-b", store, "--path", "/etc/hostname",
            "--path", "/home/ann", "--to", to)
    compare_tree(to, {"hostname": trees[""]["etc/hostname"], "ann": trees[""]["home/ann"],
                      "ann/notes.txt": trees[""]["home/ann/notes.txt"]})


def test_a_damaged_filesystem_is_skipped_with_its_reason_and_nothing_hangs(history):
    lab = history.lab
    dom = lab.domain(disks=(DiskDef("vda", "raw", 64 * MiB, model=False),), start=False)
    image = dom.image_path(dom.disks[0])
    g = guestlab.open_disks([(image, "raw")])
    g.part_init("/dev/sda", "gpt")
    g.part_add("/dev/sda", "p", 2048, 61439)
    g.part_add("/dev/sda", "p", 61440, -34)
    g.mkfs("ext4", "/dev/sda1")
    g.mkfs("ext4", "/dev/sda2")
    g.mount("/dev/sda2", "/")
    good = {"intact.txt": Entry("file", b"still here", 0o644)}
    write_tree(g, "/", good)
    g.close()
    with open(image, "r+b") as handle:        # garbage over the first one's superblocks
        for offset in range(0, 29 * MiB, 1 * MiB):
            handle.seek(2048 * SECTOR + offset)
            handle.write(os.urandom(64 * 1024))
    store = lab.path("damaged store")
    lab.cli("init", "-b", store, "--format", "3")
    lab.cli("snapshot", "-d", dom.name, "-b", store)
    mountpoint = history.mountpoint("mnt damaged")
    started = time.monotonic()
    shown = lab.cli("mount", "-d", dom.name, "-b", store, mountpoint, "--json").json()
    try:
        assert time.monotonic() - started < 300
        assert [item["path"] for item in shown["shown"]] == ["/vda/2"]
        compare_tree(os.path.join(mountpoint, "vda/2"), good)
        assert [item["device"] for item in shown["skipped"]] == ["/dev/sda1"], shown
    finally:
        lab.cli("umount", mountpoint)
