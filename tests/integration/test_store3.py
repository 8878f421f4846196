"""Format-3 stores (chunks, compressed, deduplicated, optionally encrypted) against the real
libvirtd, QEMU and Ceph RGW: every point restores exactly what the guest had."""
from __future__ import annotations

import os
import time

import pytest

from tests.lab import MiB, DiskDef, assert_same, backup_history


@pytest.fixture(params=["dir-plain", "dir-encrypted", "s3-plain", "s3-encrypted"])
def store3(request, lab):
    """(location, env) of a new format-3 store: directory or S3, plain or encrypted."""
    where, kind = request.param.split("-")
    if where == "dir":
        location = lab.path("store3")
    else:
        bucket = request.getfixturevalue("s3_bucket")
        location = f"s3://{bucket}/store3"
    env = {}
    args = ["init", "-b", location, "--format", "3", "--json"]
    if kind == "encrypted":
        secret = lab.path("passphrase")
        with open(secret, "w") as handle:
            handle.write("correct horse battery staple\n")
        env["FIBACKUP_PASSWORD_FILE"] = secret
        args.append("--encrypt")
    made = lab.cli(*args, env=env).json()
    assert made["format"] == 3 and made["encrypted"] == (kind == "encrypted")
    return location, env


def test_points_restore_exact_and_increments_read_only_changes(lab, store3):
    location, env = store3
    dom = lab.domain(disks=(DiskDef("vda", "qcow2", 32 * MiB), DiskDef("vdb", "raw", 16 * MiB)))
    points = {}
    for round_number in range(3):
        dom.write("vda", 0x40 + round_number, (1 + round_number) * MiB, MiB)
        dom.write("vdb", 0x50 + round_number, (3 + 2 * round_number) * MiB, 512 * 1024)
        result = lab.cli("snapshot", "-d", dom.name, "-b", location, "--json", env=env).json()[0]
        points[result["point"]] = dom.expected_now()
        if round_number:               # incremental: only the chunks written are read
            assert result["bytes_copied"] <= 4 * 4 * MiB, result
    listed = lab.cli("list", "-b", location, "--json", env=env).json()
    assert [row["id"] for row in listed] == list(points)
    assert listed[1]["bytes_new"] < listed[0]["bytes_new"]
    assert [row["format"] for row in listed] == [3, 3, 3]
    for point_id, expected in points.items():
        restored = restore_and_read_env(lab, dom.name, location, point_id, env)
        assert_same(restored, expected, point_id)
    assert "ok:" in lab.cli("verify", "-b", location, env=env).stdout
    stats = lab.cli("stats", "-b", location, "--json", env=env).json()
    assert stats["points"] == 3 and stats["format"] == 3
    # three points of 48 MiB of disks share most chunks: stored once
    assert stats["logical_bytes"] == sum(row["bytes_total"] for row in listed)
    assert stats["dedup_ratio"] > 1.5 and stats["stored_bytes"] < stats["unique_bytes"]


def restore_and_read_env(lab, name, location, at, env):
    from tests.lab import image_bytes
    import uuid
    to = lab.path(f"restore-{at}-{uuid.uuid4().hex[:6]}")
    result = lab.cli("restore", "-d", name, "-b", location, "--to", to, "--at", at,
                     "--no-define", "--json", env=env).json()
    return {target: image_bytes(path, "qcow2") for target, path in result["disks"].items()}


def _store_bytes(location):
    total = 0
    for directory, _dirs, names in os.walk(location):
        total += sum(os.path.getsize(os.path.join(directory, name)) for name in names)
    return total


@pytest.mark.parametrize("store3", ["dir-plain", "s3-encrypted"], indirect=True)
def test_prune_deletes_points_then_unneeded_chunks_only(lab, store3):
    location, env = store3
    dom = lab.domain(disks=(DiskDef("vda", "qcow2", 24 * MiB),))
    points = {}
    for round_number in range(4):
        # each round overwrites the same 2 MiB: older points' chunks become garbage
        dom.write("vda", 0x30 + round_number, 4 * MiB, 2 * MiB)
        dom.write("vda", 0x50 + round_number, (8 + round_number) * MiB, 64 * 1024)
        result = lab.cli("snapshot", "-d", dom.name, "-b", location, "--json", env=env).json()[0]
        points[result["point"]] = dom.expected_now()
    before = _store_bytes(location) if not location.startswith("s3://") else None
    pruned = lab.cli("prune", "-b", location, "-d", dom.name, "--keep", "2", "--no-libvirt",
                     "--json", env=env).json()
    ids = list(points)
    assert pruned[0]["dropped"] == ids[:2] and pruned[0]["kept"] == ids[2:]
    assert pruned[0]["freed_bytes"] > 0
    if before is not None:
        assert _store_bytes(location) < before
    listed = lab.cli("list", "-b", location, "--json", env=env).json()
    assert [row["id"] for row in listed] == ids[2:]
    for point_id in ids[2:]:
        assert_same(restore_and_read_env(lab, dom.name, location, point_id, env),
                    points[point_id], point_id)
    # the next backup is still incremental on the kept history, and exact
    dom.write("vda", 0x77, 12 * MiB, MiB)
    result = lab.cli("snapshot", "-d", dom.name, "-b", location, "--json", env=env).json()[0]
    assert_same(restore_and_read_env(lab, dom.name, location, result["point"], env),
                dom.expected_now(), "after prune")
    assert "ok:" in lab.cli("verify", "-b", location, env=env).stdout


@pytest.mark.parametrize("store3", ["dir-encrypted"], indirect=True)
def test_encrypted_store_without_the_key_says_so_and_writes_nothing(lab, store3):
    location, env = store3
    dom = lab.domain(disks=(DiskDef("vda", "qcow2", 16 * MiB),))
    lab.cli("snapshot", "-d", dom.name, "-b", location, "--json", env=env)
    listed = lab.cli("list", "-b", location, expect=1)
    assert "encrypted" in listed.stderr and "no passphrase" in listed.stderr
    assert len(listed.stderr.strip().splitlines()) == 1
    wrong = lab.path("wrong")
    with open(wrong, "w") as handle:
        handle.write("not it\n")
    to = lab.path("restore-wrong")
    failed = lab.cli("restore", "-d", dom.name, "-b", location, "--to", to, "--no-define",
                     expect=1, env={"FIBACKUP_PASSWORD_FILE": wrong})
    assert "opens none of its" in failed.stderr
    assert not os.path.exists(to) or not os.listdir(to)
    # nothing in the store's files reveals the domain's name or its paths
    for directory, _dirs, names in os.walk(location):
        for name in names:
            with open(os.path.join(directory, name), "rb") as handle:
                data = handle.read()
            if name != "fibackup-store.json":
                assert dom.name.encode() not in data, os.path.join(directory, name)


def _race(lab, location, env, rounds):
    """A backup of B that reuses a chunk A stored (dedup across domains) runs slowly while A
    overwrites that chunk, backs up and is pruned to one point with garbage collection: the
    chunk is then needed only by B's point being made.  Every point left restores exactly."""
    import threading
    disks = (DiskDef("vda", "qcow2", 24 * MiB),)
    a, b = lab.domain(disks=disks), lab.domain(disks=disks)
    expected_b, expected_a, errors = {}, {}, []

    def snapshot(dom, *extra):
        return lab.cli("snapshot", "-d", dom.name, "-b", location, "--json", *extra,
                       env=env).json()[0]["point"]

    def back_up_b(round_number):
        try:
            point = snapshot(b, "--bwlimit", "4M")        # about 4 s for the 16 MiB it reads
            expected_b[point] = b.expected_now()
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    for round_number in range(rounds):
        shared = 0x21 + 2 * round_number
        a.write("vda", shared, 0, 4 * MiB)                # chunk 0 of A ...
        expected_a[snapshot(a)] = a.expected_now()
        b.write("vda", shared, 0, 4 * MiB)                # ... is chunk 0 of B: B reuses it
        for chunk in range(1, 4):
            b.write("vda", 0x80 + 4 * round_number + chunk, chunk * 4 * MiB, 4 * MiB)
        thread = threading.Thread(target=back_up_b, args=(round_number,))
        thread.start()
        time.sleep(0.8)                                   # B has looked at chunk 0 by now
        a.write("vda", shared + 1, 0, 4 * MiB)            # A no longer holds it ...
        expected_a[snapshot(a)] = a.expected_now()
        lab.cli("prune", "-b", location, "-d", a.name, "--keep", "1", "--no-libvirt",
                env=env)                                  # ... and its old points go
        thread.join()
        assert not errors, errors
    assert "ok:" in lab.cli("verify", "-b", location, env=env).stdout
    listed = lab.cli("list", "-b", location, "--json", env=env).json()
    left_a = [row["id"] for row in listed if row["domain"] == a.name]
    assert left_a == [list(expected_a)[-1]]
    for point_id in left_a:
        assert_same(restore_and_read_env(lab, a.name, location, point_id, env),
                    expected_a[point_id], f"A {point_id}")
    for point_id, expected in expected_b.items():
        assert_same(restore_and_read_env(lab, b.name, location, point_id, env), expected,
                    f"B {point_id}")


@pytest.mark.parametrize("store3", ["dir-plain"], indirect=True)
def test_gc_never_deletes_what_a_concurrent_backup_reuses(lab, store3):
    _race(lab, *store3, rounds=2)


@pytest.mark.slow
@pytest.mark.parametrize("store3", ["dir-plain", "dir-encrypted", "s3-plain", "s3-encrypted"],
                         indirect=True)
def test_gc_race_many_rounds(lab, store3):
    _race(lab, *store3, rounds=10)


def test_a_new_location_becomes_a_format3_store_and_init_refuses_an_existing_one(lab):
    import json
    dom = lab.domain(disks=(DiskDef("vda", "qcow2", 16 * MiB),))
    location = lab.path("fresh")
    plain = {"FIBACKUP_CONFIG": "/dev/null"}              # no configuration: the defaults
    result = lab.cli("snapshot", "-d", dom.name, "-b", location, "--json", env=plain).json()[0]
    with open(os.path.join(location, "fibackup-store.json")) as handle:
        marker = json.load(handle)
    assert marker["version"] == 3 and marker["encryption"] is None
    assert marker["compression"] == "zstd:2" and marker["chunk_size"] == 4 * MiB
    assert_same(restore_and_read_env(lab, dom.name, location, result["point"], plain),
                dom.expected_now(), "first point")
    again = lab.cli("init", "-b", location, expect=2, env=plain)
    assert "already" in again.stderr


@pytest.mark.parametrize("store3", ["dir-encrypted"], indirect=True)
def test_keys_add_list_remove(lab, store3):
    location, env = store3
    second = lab.path("second passphrase")
    with open(second, "w") as handle:
        handle.write("another one\n")
    added = lab.cli("key", "add", "-b", location, "--new-password-file", second, "--json",
                    env=env).json()["added"]
    keys = lab.cli("key", "list", "-b", location, "--json", env=env).json()
    assert len(keys) == 2 and [key["current"] for key in keys].count(True) == 1
    with_second = {"FIBACKUP_PASSWORD_FILE": second}
    by_second = lab.cli("key", "list", "-b", location, "--json", env=with_second).json()
    assert [key["id"] for key in by_second if key["current"]] == [added]
    first = next(key["id"] for key in keys if key["current"])
    lab.cli("key", "remove", "-b", location, first, env=with_second)
    assert "opens none" in lab.cli("list", "-b", location, expect=1, env=env).stderr
    lab.cli("list", "-b", location, env=with_second)
    last = lab.cli("key", "remove", "-b", location, added, expect=2, env=with_second)
    assert "only key" in last.stderr


def test_copy_upgrades_format1_to_encrypted_s3_resumably_and_stays_incremental(lab, s3_bucket):
    """Format 1 (a directory, after a prune merged layers) -> format 3 encrypted on S3, then
    the next backup into the copy is incremental and every point restores exactly."""
    old = lab.path("format1")
    dom = lab.domain(disks=(DiskDef("vda", "qcow2", 24 * MiB), DiskDef("vdb", "raw", 16 * MiB)))
    points = backup_history(dom, old, 4)
    lab.cli("prune", "-b", old, "-d", dom.name, "--keep", "3", "--no-libvirt")
    del points[list(points)[0]]
    secret = lab.path("pass")
    with open(secret, "w") as handle:
        handle.write("offsite secret\n")
    env = {"FIBACKUP_PASSWORD_FILE": secret}
    target = f"s3://{s3_bucket}/offsite"
    lab.cli("init", "-b", target, "--format", "3", "--encrypt", env=env)
    first = lab.cli("copy", "--from", old, "--to", target, "-d", dom.name, "--at",
                    list(points)[0], "--json", env=env).json()
    assert len(first["copied"]) == 1
    everything = lab.cli("copy", "--from", old, "--to", target, "--json", env=env).json()
    assert len(everything["copied"]) == 2 and len(everything["skipped"]) == 1
    again = lab.cli("copy", "--from", old, "--to", target, "--json", env=env).json()
    assert again["copied"] == [] and again["new_chunks"] == 0
    for point_id, expected in points.items():
        assert_same(restore_and_read_env(lab, dom.name, target, point_id, env), expected,
                    point_id)
    dom.write("vda", 0x7a, 2 * MiB, MiB)
    made = lab.cli("snapshot", "-d", dom.name, "-b", target, "--json", env=env)
    assert "every chunk holding data is read" not in made.stderr
    # incremental: one 4 MiB chunk of vda changed, nothing of vdb is read
    assert made.json()[0]["new_generation"] == [] and made.json()[0]["bytes_copied"] <= 4 * MiB, made.stderr
    point = made.json()[0]["point"]
    assert_same(restore_and_read_env(lab, dom.name, target, point, env), dom.expected_now(),
                "after copy")
    listed = lab.cli("list", "-b", target, "--json", env=env).json()
    assert listed[-1]["bytes_new"] < listed[0]["bytes_new"]


@pytest.mark.parametrize("store3", ["dir-encrypted"], indirect=True)
def test_a_rolled_back_store_is_reported(lab, store3):
    """Replaying an older state of the store (every object genuine, only newer ones gone)
    is seen: this host remembers the newest point it published there."""
    import shutil
    location, env = store3
    dom = lab.domain(disks=(DiskDef("vda", "qcow2", 16 * MiB),))
    lab.cli("snapshot", "-d", dom.name, "-b", location, env=env)
    old = lab.path("old state")
    shutil.copytree(location, old, symlinks=True)
    dom.write("vda", 0x66, MiB, MiB)
    lab.cli("snapshot", "-d", dom.name, "-b", location, env=env)
    shutil.rmtree(location)
    shutil.move(old, location)
    checked = lab.cli("verify", "-b", location, expect=1, env=env)
    assert "rolled back" in checked.stderr
    made = lab.cli("snapshot", "-d", dom.name, "-b", location, env=env)
    assert "rolled back" in made.stderr


@pytest.mark.parametrize("store3", ["dir-plain"], indirect=True)
def test_a_damaged_or_swapped_chunk_is_named_and_never_restored(lab, store3):
    location, env = store3
    dom = lab.domain(disks=(DiskDef("vda", "qcow2", 16 * MiB),))
    first = lab.cli("snapshot", "-d", dom.name, "-b", location, "--json", env=env).json()[0]
    dom.write("vda", 0x42, 8 * MiB, 4 * MiB)
    second = lab.cli("snapshot", "-d", dom.name, "-b", location, "--json", env=env).json()[0]
    chunks = sorted(os.path.join(directory, name)
                    for directory, _dirs, names in os.walk(os.path.join(location, "chunks"))
                    for name in names)
    assert len(chunks) >= 2
    # swap two valid chunks: each is authentic, but under the other's name
    a, b = chunks[0], chunks[1]
    os.rename(a, a + ".x")
    os.rename(b, a)
    os.rename(a + ".x", b)
    checked = lab.cli("verify", "-b", location, expect=1, env=env)
    damaged = [line for line in checked.stderr.splitlines() if line.startswith("DAMAGED")]
    assert damaged and all("does not hold the data its id names" in line for line in damaged)
    assert {first["point"], second["point"]} & {line.split("/")[1].split(",")[0]
                                               for line in damaged}
    for point in (first["point"], second["point"]):
        to = lab.path(f"restore {point}")
        failed = lab.cli("restore", "-d", dom.name, "-b", location, "--to", to, "--at", point,
                         "--no-define", expect=None, env=env)
        if failed.code == 0:            # this point needs neither chunk: it must be exact
            continue
        assert "does not hold the data its id names" in failed.stderr
        assert not os.path.exists(to) or not os.listdir(to)


@pytest.mark.parametrize("store3", ["dir-encrypted"], indirect=True)
def test_a_pinned_point_survives_prune_until_unpinned(lab, store3):
    location, env = store3
    dom = lab.domain(disks=(DiskDef("vda", "qcow2", 16 * MiB),))
    points = {}
    for round_number in range(3):
        dom.write("vda", 0x30 + round_number, 4 * MiB, 4 * MiB)
        made = lab.cli("snapshot", "-d", dom.name, "-b", location, "--json", env=env).json()[0]
        points[made["point"]] = dom.expected_now()
    first = list(points)[0]
    pin = lab.cli("pin", "add", "-b", location, "-d", dom.name, "--at", first, "--reason",
                  "legal hold", "--json", env=env).json()["pin"]
    listed = lab.cli("pin", "list", "-b", location, "--json", env=env).json()
    assert [(item["id"], item["point"], item["reason"]) for item in listed] == \
        [(pin, first, "legal hold")]
    pruned = lab.cli("prune", "-b", location, "-d", dom.name, "--keep", "1", "--no-libvirt",
                     "--json", env=env).json()[0]
    assert pruned["kept"] == [first, list(points)[-1]]
    assert_same(restore_and_read_env(lab, dom.name, location, first, env), points[first],
                "pinned")
    lab.cli("pin", "remove", "-b", location, pin, env=env)
    pruned = lab.cli("prune", "-b", location, "-d", dom.name, "--keep", "1", "--no-libvirt",
                     "--json", env=env).json()[0]
    assert pruned["dropped"] == [first]
    assert "ok:" in lab.cli("verify", "-b", location, env=env).stdout


@pytest.mark.parametrize("store3", ["dir-plain"], indirect=True)
@pytest.mark.parametrize("method", ["commit", "active"])
def test_consolidation_keeps_format3_backups_exact_and_small(lab, store3, method):
    """After a commit the next backup stays incremental; after an active commit it reads
    every chunk again (a new generation) but stores only what changed."""
    location, env = store3
    dom = lab.domain(disks=(DiskDef("vda", "qcow2", 32 * MiB),))
    points = {}

    def backup():
        made = lab.cli("snapshot", "-d", dom.name, "-b", location, "--json", env=env).json()[0]
        points[made["point"]] = dom.expected_now()
        return made

    for round_number in range(2):
        dom.write("vda", 0x30 + round_number, (4 + 4 * round_number) * MiB, 4 * MiB)
        backup()
    lab.cli("consolidate", "-d", dom.name, "-b", location, "--method", method, env=env)
    before = lab.cli("stats", "-b", location, "--json", env=env).json()["stored_bytes"]
    dom.write("vda", 0x55, 20 * MiB, 4 * MiB)
    made = backup()
    stored = lab.cli("stats", "-b", location, "--json", env=env).json()["stored_bytes"] - before
    if method == "commit":
        assert made["bytes_copied"] <= 2 * 4 * MiB, made
    assert stored <= 2 * 4 * MiB + 64 * 1024, stored        # the new chunk (+ its index)
    for point_id, expected in points.items():
        assert_same(restore_and_read_env(lab, dom.name, location, point_id, env), expected,
                    point_id)


@pytest.mark.parametrize("store3", ["s3-encrypted"], indirect=True)
def test_instant_recovery_from_format3_serves_the_point_then_finalize_copies_it(lab, store3):
    from tests.lab import image_bytes, PREFIX
    import uuid as uuidlib
    location, env = store3
    dom = lab.domain(disks=(DiskDef("vda", "qcow2", 16 * MiB),))
    dom.write("vda", 0x5a, 2 * MiB, MiB)
    point = lab.cli("snapshot", "-d", dom.name, "-b", location, "--json", env=env).json()[0]
    expected = dom.expected_now()
    name = f"{PREFIX}{uuidlib.uuid4().hex[:8]}"
    lab.forget_name(name)
    to = lab.path("instant")
    started = lab.cli("restore", "-d", dom.name, "-b", location, "--instant", "--as", name,
                      "--to", to, "--json", env=env)
    assert "served from" in started.stderr
    assert lab.conn.lookupByName(name).isActive()
    assert os.path.getsize(started.json()["disks"]["vda"]) < MiB     # nothing copied
    done = lab.cli("restore", "--finalize", name, "--json", env=env).json()
    lab.conn.lookupByName(name).destroy()
    assert_same({target: image_bytes(path, "qcow2") for target, path in done["disks"].items()},
                expected, point["point"])
