"""Configuration file precedence against the real libvirtd: the file's backup_dir and
connect are used, a flag beats the file, and the file beats LIBVIRT_DEFAULT_URI.

Every run names its file with FIBACKUP_CONFIG, so the host's /etc is never read."""
from __future__ import annotations

import os
import uuid

from tests.lab import MiB, DiskDef, assert_same, image_bytes

GOOD_URI = "qemu:///system"
BOGUS_URI = "qemu:///nonexistent"
"""libvirt refuses it at once: "unexpected qemu URI path"."""


def write_config(lab, text: str) -> str:
    path = lab.path(f"config {uuid.uuid4().hex[:6]}.toml")
    with open(path, "w") as handle:
        handle.write(text)
    return path


def toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def one_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("fibackup:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def restore_without_b(lab, name: str, point: str, env: dict[str, str]) -> dict[str, bytes]:
    to = lab.path(f"restore {uuid.uuid4().hex[:6]}")
    result = lab.cli("restore", "-d", name, "--to", to, "--at", point, "--no-define", "--json",
                     env=env).json()
    return {target: image_bytes(path, "qcow2") for target, path in result["disks"].items()}


def overlays(dom) -> list[str]:
    return [name for name in os.listdir(dom.directory) if ".bimg-" in name]


def test_backup_dir_and_connect_come_from_the_file_and_flags_override_it(lab):
    dom = lab.domain(disks=[DiskDef("vda")])
    dom.write("vda", 0x11, 0, 4 * MiB)
    from_file = lab.path("backup from file")
    config = write_config(lab, f"connect = {toml_string(GOOD_URI)}\n"
                               f"backup_dir = {toml_string(from_file)}\n")
    # the file's connect beats LIBVIRT_DEFAULT_URI: with the bogus one nothing would connect
    env = {"FIBACKUP_CONFIG": config, "LIBVIRT_DEFAULT_URI": BOGUS_URI}

    first = lab.cli("snapshot", "-d", dom.name, "--json", env=env).json()[0]["point"]
    first_data = dom.expected_now()
    assert [row["id"] for row in lab.cli("list", "--json", env=env).json()] == [first]
    lab.cli("verify", "-d", dom.name, env=env)
    assert_same(restore_without_b(lab, dom.name, first, env), first_data, "point from the file's dir")

    # -b beats the file's backup_dir
    dom.write("vda", 0x22, 4 * MiB, 2 * MiB)
    from_flag = lab.path("backup from flag")
    second = lab.cli("snapshot", "-d", dom.name, "-b", from_flag, "--json",
                     env=env).json()[0]["point"]
    assert [row["id"] for row in lab.cli("list", "--json", env=env).json()] == [first]
    assert [row["id"] for row in lab.cli("list", "-b", from_flag, "--json", env=env).json()] \
        == [second]
    assert_same(restore_without_b(lab, dom.name, first, env), first_data, "file's dir untouched")
    to = lab.path("restore from flag")
    restored = lab.cli("restore", "-d", dom.name, "-b", from_flag, "--to", to, "--at", second,
                       "--no-define", "--json", env=env).json()["disks"]
    assert_same({target: image_bytes(path, "qcow2") for target, path in restored.items()},
                dom.expected_now(), "point in the flag's dir")

    # --no-backup: only the snapshot, although the file names a backup_dir
    dom.write("vda", 0x33, 8 * MiB, 1 * MiB)
    taken = lab.cli("snapshot", "-d", dom.name, "--no-backup", "--json", env=env).json()[0]
    assert taken["point"] is None
    assert len(lab.cli("list", "--json", env=env).json()) == 1

    shown = lab.cli("config", "show", "--json", env=env).json()
    assert shown["files"] == [{"path": config, "read": True}]
    assert shown["settings"]["connect"] == {"value": GOOD_URI, "source": config}
    assert shown["settings"]["backup_dir"] == {"value": from_file, "source": config}
    assert shown["settings"]["snapshot"]["jobs"] == {"value": 2, "source": "default"}


def test_connect_flag_beats_file_beats_environment(lab):
    dom = lab.domain(disks=[DiskDef("vda")], start=False)
    bogus_file = write_config(lab, f"connect = {toml_string(BOGUS_URI)}\n")
    empty_file = write_config(lab, "# nothing\n")

    # the file beats a good LIBVIRT_DEFAULT_URI: fibackup goes to the file's bogus URI
    env = {"FIBACKUP_CONFIG": bogus_file, "LIBVIRT_DEFAULT_URI": GOOD_URI}
    refused = lab.cli("status", "-d", dom.name, expect=1, env=env)
    assert f"cannot connect to libvirt at {BOGUS_URI}" in one_line(refused)
    # a flag beats the file
    lab.cli("status", "-d", dom.name, "--connect", GOOD_URI, env=env)
    # without connect in the file, LIBVIRT_DEFAULT_URI beats the default
    env = {"FIBACKUP_CONFIG": empty_file, "LIBVIRT_DEFAULT_URI": BOGUS_URI}
    refused = lab.cli("status", "-d", dom.name, expect=1, env=env)
    assert f"cannot connect to libvirt at {BOGUS_URI}" in one_line(refused)
    shown = lab.cli("config", "show", "--json", env=env).json()
    assert shown["settings"]["connect"] == {"value": BOGUS_URI, "source": "LIBVIRT_DEFAULT_URI"}
    # and neither: qemu:///system
    lab.cli("status", "-d", dom.name, env={"FIBACKUP_CONFIG": empty_file})
    text = lab.cli("config", "show", env={"FIBACKUP_CONFIG": empty_file}).stdout
    assert f"read: {empty_file}" in text and "qemu:///system" in text


def test_quiesce_from_the_file_and_no_quiesce_overrides_it(lab):
    dom = lab.domain(disks=[DiskDef("vda")])  # no guest agent: quiescing must fail
    dom.write("vda", 0x44, 0, 2 * MiB)
    backup = lab.path("backup")
    config = write_config(lab, f"backup_dir = {toml_string(backup)}\n"
                               '[snapshot]\nquiesce = "require"\n')
    env = {"FIBACKUP_CONFIG": config}
    refused = lab.cli("snapshot", "-d", dom.name, expect=1, env=env)
    assert "agent" in one_line(refused)
    assert overlays(dom) == []
    point = lab.cli("snapshot", "-d", dom.name, "--no-quiesce", "--json",
                    env=env).json()[0]["point"]
    row = lab.cli("list", "--json", env=env).json()[0]
    assert row["id"] == point and row["quiesced"] is False
    assert_same(restore_without_b(lab, dom.name, point, env), dom.expected_now(), "unquiesced")
    contradiction = lab.cli("snapshot", "-d", dom.name, "--no-quiesce", "--quiesce", expect=2,
                            env=env)
    assert "--no-quiesce contradicts" in one_line(contradiction)


def test_a_bad_file_stops_every_command_before_anything_changes(lab):
    dom = lab.domain(disks=[DiskDef("vda")], start=False)
    config = write_config(lab, '[snapshot]\njobs = 0\n')
    env = {"FIBACKUP_CONFIG": config}
    for args in (("snapshot", "-d", dom.name, "-b", lab.path("backup")),
                 ("list", "-b", lab.path("backup")), ("config", "show")):
        result = lab.cli(*args, expect=2, env=env)
        assert one_line(result) == (f"fibackup: {config}: [snapshot] jobs = 0 is not valid; "
                                    "use a whole number from 1 to 64")
    assert overlays(dom) == [] and not os.path.exists(lab.path("backup"))
    missing = lab.cli("list", expect=2)  # the lab's FIBACKUP_CONFIG is /dev/null: no backup_dir
    assert "-b DIR, or set backup_dir" in one_line(missing)
