"""A real backup tampered with, permissions whatever the umask, and names with spaces,
quotes and non-ASCII letters, against the real libvirtd and QEMU.

The rule: a restore never silently gives wrong bytes, never reads outside the
backup directory and never writes outside --to."""
from __future__ import annotations

import json
import os
import shutil
import stat
import uuid

import pytest

from tests.lab import MiB, DiskDef, assert_same, image_bytes, restore_and_read


def fibackup_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("fibackup:")]


def backed_up(lab, name="backup"):
    """A running domain with one qcow2 disk and two restore points in ``name``."""
    dom = lab.domain(disks=[DiskDef("vda")])
    backup = lab.path(name)
    dom.snapshot(backup)
    dom.write("vda", 0x31, MiB, 64 * 1024)
    point = dom.snapshot(backup).json()[0]["point"]
    return dom, backup, point


def domain_dir(backup: str, dom) -> str:
    return os.path.join(backup, "domains", dom.dom.UUIDString())


def listing(directory: str) -> list[str]:
    return sorted(os.listdir(directory))


def tree(lab) -> set[str]:
    """Every path in the lab but its host state (which a restore may journal to) and the
    run logs of backup directories (where every restore logs itself)."""
    return {os.path.join(directory, name) for directory, dirs, files in os.walk(lab.root)
            for name in dirs + files if not run_log(os.path.join(directory, name))} - {
        lab.state_dir} - {path for path in modes(lab.state_dir)}


def run_log(path: str) -> bool:
    """Whether ``path`` is a backup directory's logs/ or in it."""
    above, _, _ = path.partition(os.sep + "logs")
    return above != path and os.path.exists(os.path.join(above, "fibackup-store.json"))


def failed_restore(lab, dom, backup, *args: str):
    """A restore that must fail and write nothing: not outside --to, not in it."""
    to = lab.path(f"to {uuid.uuid4().hex[:6]}", "restored")
    before = tree(lab)
    result = lab.cli("restore", "-d", dom.name, "-b", backup, "--to", to, "--no-define", *args,
                     expect=1)
    assert sorted(tree(lab) - before - {to, os.path.dirname(to)}) == []
    assert len(fibackup_lines(result)) == 1, result.stderr
    return result


def refused(lab, dom, backup, at: str, must_name: str, why: str) -> None:
    """Restoring point ``at`` and verify both fail and name ``must_name`` and ``why``."""
    result = failed_restore(lab, dom, backup, "--at", at)
    assert must_name in result.stderr and why in result.stderr, result.stderr
    result = lab.cli("verify", "-b", backup, expect=1)
    assert must_name in result.stderr and why in result.stderr, result.stderr


def test_links_in_the_backup_directory_are_never_followed(lab):
    dom, backup, point = backed_up(lab)
    layers = os.path.join(domain_dir(backup, dom), "layers")
    base = sorted(name for name in listing(layers) if "-vda-000-" in name)
    image = next(name for name in base if not name.endswith(".json"))
    record = next(name for name in base if name.endswith(".json"))
    cases = {"layer image": os.path.join("layers", image),
             "layer record": os.path.join("layers", record),
             "layers directory": "layers", "points directory": "points",
             "manifest": os.path.join("points", "00000002.json"), "domain directory": ""}
    for number, (case, inside) in enumerate(cases.items()):
        copy = lab.path(f"hostile {number}")
        shutil.copytree(backup, copy, symlinks=True)
        victim = os.path.join(domain_dir(copy, dom), inside).rstrip(os.sep)
        outside = lab.path(f"outside {number}")
        os.mkdir(outside)
        moved = os.path.join(outside, os.path.basename(victim))
        shutil.move(victim, moved)
        os.symlink(moved, victim)     # the same bytes: only refusing the link keeps us inside
        try:
            refused(lab, dom, copy, point, victim, "symbolic link")
        except AssertionError as error:
            raise AssertionError(f"{case}: {error}") from None
    # the untouched backup restores
    dom.destroy()
    assert_same(restore_and_read(lab, dom.name, backup, "latest"), dom.expected_now(), "intact")


def edit_manifest(backup: str, dom, seq: int, change) -> str:
    path = os.path.join(domain_dir(backup, dom), "points", f"{seq:08d}.json")
    with open(path) as handle:
        document = json.load(handle)
    change(document)
    with open(path, "w") as handle:
        json.dump(document, handle)
    return path


def test_hostile_manifests_never_lead_outside(lab):
    dom, backup, point = backed_up(lab)
    dom.destroy()
    first = dict(restore_and_read(lab, dom.name, backup, "1"))

    def escaping_target(document):
        document["disks"]["../../../escaped"] = document["disks"].pop("vda")

    def escaping_layer(document):
        document["disks"]["vda"]["layers"][0]["id"] = "../../../../../etc/passwd"

    for change in (escaping_target, escaping_layer):
        copy = lab.path(f"hostile {change.__name__}")
        shutil.copytree(backup, copy)
        manifest = edit_manifest(copy, dom, 2, change)
        result = failed_restore(lab, dom, copy, "--at", point)
        assert manifest in result.stderr and "not valid" in result.stderr, result.stderr
        listed = lab.cli("list", "-b", copy, "--json")         # the other point still shows
        assert [row["seq"] for row in listed.json()] == [1] and manifest in listed.stderr
        assert manifest in lab.cli("verify", "-b", copy, expect=1).stderr
        assert_same(restore_and_read(lab, dom.name, copy, "1"), first, change.__name__)


def test_layer_of_another_domain_is_refused(lab):
    dom, backup, point = backed_up(lab)
    other = lab.domain(disks=[DiskDef("vda")])
    other_point = other.snapshot(backup).json()[0]["point"]
    dom.destroy()
    listed = lab.cli("list", "-b", backup, "-d", other.name, "--json").json()
    assert listed[0]["id"] == other_point
    with open(os.path.join(domain_dir(backup, other), "points", "00000001.json")) as handle:
        foreign = json.load(handle)["disks"]["vda"]["layers"]

    def borrow(document):
        document["disks"]["vda"]["layers"] = foreign
    edit_manifest(backup, dom, 2, borrow)
    missing = os.path.join(domain_dir(backup, dom), "layers", f"{foreign[0]['id']}.json")
    refused(lab, dom, backup, point, missing, "missing")


def test_damaged_layer_record_is_named_and_other_points_stay_listed(lab):
    dom, backup, point = backed_up(lab)
    dom.destroy()
    layers = os.path.join(domain_dir(backup, dom), "layers")
    newest = sorted(name for name in listing(layers) if "-vda-001-" in name and
                    name.endswith(".json"))[0]
    record = os.path.join(layers, newest)
    with open(record, "r+b") as handle:
        handle.truncate(40)
    refused(lab, dom, backup, point, record, "not valid JSON")
    assert len(lab.cli("list", "-b", backup, "--json").json()) == 2
    restore_and_read(lab, dom.name, backup, "1")         # the first point needs no such layer


def modes(root: str) -> dict[str, tuple[str, int]]:
    """Every file and directory under ``root`` (itself included): kind and mode bits."""
    found = {root: ("dir", stat.S_IMODE(os.lstat(root).st_mode))}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            kind = "dir" if stat.S_ISDIR(info.st_mode) else (
                "file" if stat.S_ISREG(info.st_mode) else "other")
            found[path] = (kind, stat.S_IMODE(info.st_mode))
    return found


def wrong_modes(root: str) -> list[str]:
    wanted = {"dir": 0o700, "file": 0o600}
    return [f"{path}: {kind} {mode:o}" for path, (kind, mode) in modes(root).items()
            if wanted.get(kind) != mode]


@pytest.fixture
def umask_000():
    old = os.umask(0)          # the CLI runs as a child: it inherits this umask
    try:
        yield
    finally:
        os.umask(old)


def test_backup_and_host_state_are_private_whatever_the_umask(lab, umask_000):
    dom = lab.data_domain(16 * MiB, 2 * MiB)
    backup = lab.path("backup")
    dom.snapshot(backup)
    dom.snapshot(backup)
    kinds = [kind for kind, _mode in modes(backup).values()]
    # the marker, 2 x (image, record, manifest), 2 run logs, the domain's .lock; the root,
    # domains, <uuid>, layers, points, logs
    assert (kinds.count("file"), kinds.count("dir")) == (10, 6)
    assert wrong_modes(backup) == []
    state = [problem for problem in wrong_modes(lab.state_dir)
             if not problem.startswith(f"{lab.state_dir}: ")]
    assert state == [] and len(modes(lab.state_dir)) > 3
    dom.destroy()
    to = lab.path("restored")
    lab.cli("restore", "-d", dom.name, "-b", backup, "--to", to, "--no-define")
    assert [problem for problem in wrong_modes(to) if not problem.startswith(f"{to}: ")] == []


def test_state_dir_itself_is_private_whatever_the_umask(lab, umask_000):
    lab.data_domain(16 * MiB, 2 * MiB).snapshot(lab.path("backup"))
    assert modes(lab.state_dir)[lab.state_dir] == ("dir", 0o700)


AWKWARD = "Ünï 'q\" x"


def test_names_with_spaces_quotes_and_non_ascii_letters(lab):
    dom = lab.domain(disks=[DiskDef("vda"), DiskDef("vdb", "raw")], start=False,
                     dirname=f"images {AWKWARD}")
    name = f"{dom.name} {AWKWARD}"
    dom.dom.rename(name)
    dom.name = name
    dom.start()
    dom.write("vda", 0x51, 2 * MiB, 128 * 1024)
    backup = lab.path(f"backup {AWKWARD}")
    first = dom.snapshot(backup).json()[0]["point"]
    expected_first = dom.expected_now()
    dom.write("vdb", 0x52, 3 * MiB, 64 * 1024)
    second = dom.snapshot(backup).json()[0]["point"]
    listed = lab.cli("list", "-b", backup, "--json").json()
    assert [(row["domain"], row["id"]) for row in listed] == [(name, first), (name, second)]
    assert "ok: 2 restore point(s)" in lab.cli("verify", "-b", backup, "-d", name).stdout
    copy_name = f"fibtest-cöpy {uuid.uuid4().hex[:6]} 'y\" ž"
    lab.forget_name(copy_name)
    to = lab.path(f"restored {AWKWARD}", "dir 'z\" ß")
    result = lab.cli("restore", "-d", name, "-b", backup, "--to", to, "--as", copy_name,
                     "--json").json()
    assert result["defined"] == copy_name
    assert all(os.path.dirname(path) == to for path in result["disks"].values())
    assert_same({target: image_bytes(path, "qcow2") for target, path in result["disks"].items()},
                dom.expected_now(), "copy")
    lab.conn.lookupByName(copy_name).create()                 # QEMU opens the restored chain
    lab.conn.lookupByName(copy_name).destroy()
    dom.destroy()
    to = lab.path(f"in place {AWKWARD}")
    result = lab.cli("restore", "-d", name, "-b", backup, "--to", to, "--at", first,
                     "--json").json()
    assert result["defined"] == name and dom.top("vda", inactive=True) == result["disks"]["vda"]
    dom.start()
    assert_same({target: image_bytes(path, "qcow2") for target, path in result["disks"].items()},
                expected_first, "first point, in place")
