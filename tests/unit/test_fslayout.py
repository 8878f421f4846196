"""Where guest filesystems appear under a mountpoint (fibackup/model/fslayout.py)."""
from __future__ import annotations

import pytest

from fibackup.model.fslayout import (GuestFilesystem, data_layout, guest_path, mountpoint_dirs,
                                     os_layout)


def test_each_filesystem_gets_a_directory_and_the_unreadable_ones_a_reason():
    placed, skipped = data_layout([
        GuestFilesystem("/dev/sdb", "xfs", disk="vdb"),
        GuestFilesystem("/dev/sda2", "ext4", disk="vda", partition=2),
        GuestFilesystem("/dev/sda1", "vfat", disk="vda", partition=1),
        GuestFilesystem("/dev/sda3", "swap", disk="vda", partition=3),
        GuestFilesystem("/dev/sda4", "crypto_LUKS", disk="vda", partition=4),
        GuestFilesystem("/dev/vg0/data", "ext4", volume=("vg0", "data")),
        GuestFilesystem("/dev/md0", "ext4"),
    ])
    assert [(item.device, item.path) for item in placed] == [
        ("/dev/sda1", "/vda/1"), ("/dev/sda2", "/vda/2"), ("/dev/sdb", "/vdb/disk"),
        ("/dev/md0", "/other/md0"), ("/dev/vg0/data", "/lvm/vg0/data")]
    assert {item.device: item.reason for item in skipped} == {
        "/dev/sda3": "swap space", "/dev/sda4": "encrypted (LUKS): not opened"}


def test_guest_chosen_names_never_become_paths_of_their_own():
    placed, _ = data_layout([GuestFilesystem("/dev/x/..", "ext4", volume=("..", "a/b"))])
    assert placed[0].path.count("/") == 3 and ".." not in placed[0].path.split("/")


def test_an_os_tree_mounts_parents_first_and_ignores_paths_that_climb():
    placed = os_layout({"/boot/efi": "/dev/sda1", "/": "/dev/sda3", "/boot": "/dev/sda2",
                        "/../etc": "/dev/sda4", "relative": "/dev/sda5"},
                       {"/dev/sda1": "vfat"})
    assert [(item.path, item.fstype) for item in placed] == [
        ("/", ""), ("/boot", ""), ("/boot/efi", "vfat")]


def test_mountpoint_dirs_are_made_parents_first():
    placed, _ = data_layout([GuestFilesystem("/dev/vg/lv", "ext4", volume=("vg", "lv")),
                             GuestFilesystem("/dev/sda1", "ext4", disk="vda", partition=1)])
    assert mountpoint_dirs(placed) == ["/lvm", "/vda", "/lvm/vg", "/vda/1", "/lvm/vg/lv"]


def test_restore_paths_may_not_climb_or_be_empty():
    assert guest_path("/etc//nginx/./conf") == ["etc", "nginx", "conf"]
    for bad in ("", "/", "../x", "a/../../b"):
        with pytest.raises(ValueError):
            guest_path(bad)


def test_place_device_from_names_and_when_to_ask():
    from fibackup.model.fslayout import place_device
    devices, targets = ["/dev/sda", "/dev/sdb"], ["vda", "vdb"]
    assert place_device("/dev/sdb2", "xfs", devices, targets, set()) == \
        GuestFilesystem("/dev/sdb2", "xfs", disk="vdb", partition=2)
    assert place_device("/dev/sda", "ext4", devices, targets, set()) == \
        GuestFilesystem("/dev/sda", "ext4", disk="vda", partition=None)
    assert place_device("/dev/vg0/data", "btrfs", devices, targets, {"/dev/vg0/data"}) == \
        GuestFilesystem("/dev/vg0/data", "btrfs", volume=("vg0", "data"))
    assert place_device("/dev/md127", "ext4", devices, targets, set()) is None
    assert place_device("/dev/sdc1", "ext4", devices, targets, set()) is None
    assert place_device("/dev/sda1", "ext4", devices, ["vda"], set()) is None
