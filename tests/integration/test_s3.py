"""The backup store on S3-compatible object storage, against a real Ceph RGW.

The scenarios of test_backup_restore.py that take ``backup_location`` run on both
stores; these are the ones only object storage has: damage in a bucket, a
connection cut in the middle of an upload, several hosts' prefixes written at
once, the errors a user meets, a shared bucket's domain definition, and prune
staging its merges locally.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.lab import (TEST_CONFIG, MiB, DiskDef, assert_same, backup_history, image_bytes,
                       restore_and_read)


def _objects(client, bucket: str, prefix: str = "") -> list[str]:
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", ())]
    return keys


def _fibackup(lab, *args: str, env=None) -> subprocess.Popen:
    environment = {**os.environ, "FIBACKUP_STATE_DIR": lab.state_dir,
                   "FIBACKUP_CONFIG": TEST_CONFIG, **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "fibackup", *args], env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _one_line_error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fibackup: "), result.stderr
    return lines[0]


def test_damaged_object_caught_by_verify_and_restore(lab, rgw, s3_bucket):
    dom = lab.domain()
    backup = f"s3://{s3_bucket}/hv1"
    points = backup_history(dom, backup, 2)
    second = list(points)[1]
    client = rgw.client()
    # one byte of data in the newest vda layer flips (bit rot, a bad copy)
    layer = next(key for key in sorted(_objects(client, s3_bucket, "hv1/domains/"))
                 if key.endswith(".qcow2") and "-vda-001-" in key)
    data = bytearray(client.get_object(Bucket=s3_bucket, Key=layer)["Body"].read())
    record = json.loads(client.get_object(Bucket=s3_bucket, Key=layer[:-len(".qcow2")] + ".json")
                        ["Body"].read())
    offset = record["checksum"]["chunks"][0][0] + 100
    data[offset] ^= 0x40
    client.put_object(Bucket=s3_bucket, Key=layer, Body=bytes(data))

    verify = lab.cli("verify", "-b", backup, expect=1)
    assert "DAMAGED" in verify.stderr and layer.rsplit("/", 1)[1] in verify.stderr
    to = lab.path("refused")
    refused = lab.cli("restore", "-d", dom.name, "-b", backup, "--to", to, "--at", second,
                      "--no-define", expect=1)
    assert "damaged" in refused.stderr and "nothing was restored" in refused.stderr
    assert [name for name in os.listdir(to) if not name.startswith(".")] == []
    # the first point does not use that layer and still restores exactly
    first = list(points)[0]
    assert_same(restore_and_read(lab, dom.name, backup, first), points[first], "first point")


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()[0] == "T"


def test_connection_cut_mid_upload_leaves_no_point(lab, rgw, s3_bucket):
    """radosgw stops while a multipart upload is half done: the run fails with one line,
    no restore point is listed, and the next run (gateway back) backs up exactly."""
    dom = lab.domain(disks=[DiskDef("vda", "raw", 96 * MiB)])
    for index in range(12):                         # data in every part of the upload
        dom.write("vda", 0x30 + index, index * 8 * MiB, 2 * MiB)
    backup = f"s3://{s3_bucket}/hv1"
    run = _fibackup(lab, "snapshot", "-d", dom.name, "-b", backup,
                    env={"FIBACKUP_FAULT": "s3.part-uploaded:stop"})
    deadline = time.monotonic() + 120
    while not _stopped(run.pid):
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.1)
    rgw.stop_gateway()
    try:
        os.kill(run.pid, signal.SIGCONT)
        _out, err = run.communicate(timeout=240)
    finally:
        rgw.start_gateway()
    assert run.returncode == 1, err
    assert "cannot reach the S3 endpoint" in err and "Traceback" not in err, err
    assert lab.cli("list", "-b", backup, "--json").json() == []
    assert not [key for key in _objects(rgw.client(), s3_bucket, "hv1/domains/")
                if key.endswith(".raw")]
    dom.write("vda", 0x77, 41 * MiB, MiB)
    result = dom.snapshot(backup).json()[0]
    assert_same(restore_and_read(lab, dom.name, backup, result["point"]), dom.expected_now(),
                "after the cut")
    assert "ok: 1 restore point(s)" in lab.cli("verify", "-b", backup).stdout
    repaired = lab.cli("repair", "-d", dom.name, "-b", backup, "--json").json()
    assert repaired is not None
    uploads = rgw.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    assert uploads == []


def test_two_hosts_prefixes_in_parallel_and_bucket_listing(lab, rgw, s3_bucket):
    doms = [lab.domain(), lab.domain()]
    locations = [f"s3://{s3_bucket}/site/hv-a", f"s3://{s3_bucket}/site/hv-b"]
    for index, dom in enumerate(doms):
        dom.write("vda", 0x50 + index, 2 * MiB, MiB)
        dom.write("vdb", 0x60 + index, 5 * MiB, MiB)
    runs = [_fibackup(lab, "snapshot", "-d", dom.name, "-b", where, "--json")
            for dom, where in zip(doms, locations)]
    outputs = [run.communicate(timeout=300) for run in runs]
    for run, (_out, err) in zip(runs, outputs):
        assert run.returncode == 0, err
    points = [json.loads(out)[0]["point"] for out, _err in outputs]

    rows = lab.cli("list", "-b", f"s3://{s3_bucket}/", "--json").json()
    assert sorted((row["store"], row["domain"]) for row in rows) == sorted(
        zip(locations, (dom.name for dom in doms)))
    assert all(row["host"] == os.uname().nodename for row in rows)
    table = lab.cli("list", "-b", f"s3://{s3_bucket}").stdout
    assert "host" in table.splitlines()[0]
    for dom, where in zip(doms, locations):
        assert where in table and dom.name in table
    for dom, where, point in zip(doms, locations, points):
        assert_same(restore_and_read(lab, dom.name, where, point), dom.expected_now(), where)


def test_clear_errors(lab, rgw, s3_bucket):
    location = f"s3://{s3_bucket}/hv1"
    missing = lab.cli("list", "-b", location, expect=1)
    assert "not a fibackup backup directory" in _one_line_error(missing)
    nobucket = lab.cli("list", "-b", "s3://fibtest-no-such-bucket/x", expect=1)
    assert "does not exist" in _one_line_error(nobucket)
    denied = lab.cli("list", "-b", location, expect=1,
                     env={"AWS_SECRET_ACCESS_KEY": "wrong-secret"})
    assert "access denied" in _one_line_error(denied)
    unreachable = lab.cli("list", "-b", location, expect=1,
                          env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert "cannot reach the S3 endpoint" in _one_line_error(unreachable)
    shim = lab.path("no-boto3")
    os.makedirs(os.path.join(shim, "boto3"))
    with open(os.path.join(shim, "boto3", "__init__.py"), "w") as handle:
        handle.write("raise ImportError('No module named boto3')\n")
    absent = lab.cli("list", "-b", location, expect=1, env={"PYTHONPATH": shim})
    assert "pip install 'fibackup[s3]'" in _one_line_error(absent)
    instant = lab.cli("restore", "-d", "x", "-b", location, "--instant", "--as", "y",
                      "--to", lab.path("i"), expect=2)
    assert "object storage" in _one_line_error(instant)
    prune = lab.cli("prune", "--all", "-b", location, "--keep", "1", expect=1)
    assert "not a fibackup backup directory" in _one_line_error(prune)   # an empty prefix


def test_stored_definition_is_untrusted(lab, rgw, s3_bucket):
    dom = lab.domain()                      # its serial console logs to a file beside it
    backup = f"s3://{s3_bucket}/hv1"
    point = next(iter(backup_history(dom, backup, 1)))
    copy_name = dom.name + "-copy"
    lab.forget_name(copy_name)
    to = lab.path("copy")
    args = ["restore", "-d", dom.name, "-b", backup, "--to", to, "--as", copy_name]
    other = {"FIBACKUP_STATE_DIR": lab.path("another host")}   # restoring on another host
    refused = lab.cli(*args, expect=1, env=other)
    assert "console.log" in _one_line_error(refused) and "--trust-xml" in refused.stderr
    assert [name for name in os.listdir(to) if not name.startswith(".")] == []
    shown = lab.cli(*args, "--show-xml", env=other).stdout
    assert f"<name>{copy_name}</name>" in shown and os.path.join(to, "vda-") in shown

    # a hostile manifest: raw QEMU options in the definition
    client = rgw.client()
    key = next(key for key in _objects(client, s3_bucket, "hv1/domains/")
               if "/points/" in key)
    manifest = json.loads(client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    manifest["domain_xml"] = manifest["domain_xml"].replace(
        "<domain ", "<domain xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0' ", 1
    ).replace("</domain>", "<qemu:commandline><qemu:arg value='-S'/></qemu:commandline>"
              "</domain>")
    client.put_object(Bucket=s3_bucket, Key=key, Body=json.dumps(manifest).encode())
    hostile = lab.cli(*args, "--trust-xml", "--show-xml").stdout
    assert "commandline" in hostile
    refused = lab.cli(*args, expect=1)          # on this host too: it never stored that
    assert "<qemu:commandline>" in _one_line_error(refused)

    manifest["domain_xml"] = manifest["domain_xml"].split("<qemu:commandline>")[0] + "</domain>"
    client.put_object(Bucket=s3_bucket, Key=key, Body=json.dumps(manifest).encode())
    result = lab.cli(*args, "--trust-xml", "--json").json()
    assert result["defined"] == copy_name
    copy = lab.conn.lookupByName(copy_name)
    assert image_bytes(result["disks"]["vda"], "qcow2") == dom.expected_now()["vda"]
    assert to in copy.XMLDesc(0)
    assert point == result["point"]


def test_consolidate_catches_up_into_s3(lab, rgw, s3_bucket):
    dom = lab.domain()
    backup = f"s3://{s3_bucket}/hv1"
    backup_history(dom, backup, 1)
    dom.write("vda", 0x21, 3 * MiB, MiB)
    dom.snapshot(None)                              # a frozen layer the bucket lacks
    dom.write("vdb", 0x22, 6 * MiB, MiB)
    lab.cli("consolidate", "-d", dom.name, "-b", backup)
    listed = lab.cli("list", "-b", backup, "--json").json()
    assert len(listed) == 2                         # the catch-up made a point
    assert_same(restore_and_read(lab, dom.name, backup, listed[-1]["id"]), dom.expected_now(),
                "caught up before the commit")
    dom.write("vda", 0x23, 9 * MiB, MiB)
    lab.cli("consolidate", "-d", dom.name)          # checks the bucket (host state) first
    result = dom.snapshot(backup).json()[0]
    assert_same(restore_and_read(lab, dom.name, backup, result["point"]), dom.expected_now(),
                "after the commit")


def test_definition_written_on_another_host_is_untrusted(lab):
    """A definition is trusted only when this host recorded storing exactly it: restored
    on another host (a shared or copied directory) it gets the same check as object
    storage, and editing the manifest's host name does not change that."""
    dom = lab.domain()                      # its serial console logs to a file beside it
    backup = lab.path("backup")
    point = next(iter(backup_history(dom, backup, 1)))
    copy_name = dom.name + "-copy"
    lab.forget_name(copy_name)
    args = ["restore", "-d", dom.name, "-b", backup, "--to", lab.path("copy"), "--as", copy_name]
    other = {"FIBACKUP_STATE_DIR": lab.path("another host")}
    refused = lab.cli(*args, expect=1, env=other)
    assert "console.log" in _one_line_error(refused)

    points_dir = os.path.join(backup, "domains", dom.dom.UUIDString(), "points")
    (name,) = os.listdir(points_dir)
    with open(os.path.join(points_dir, name)) as handle:
        manifest = json.load(handle)
    manifest["domain_xml"] = manifest["domain_xml"].replace(
        "</devices>", "<serial type='file'><source path='/etc/cron.d/x'/></serial></devices>")
    os.chmod(os.path.join(points_dir, name), 0o600)
    with open(os.path.join(points_dir, name), "w") as handle:
        json.dump(manifest, handle)                 # the host name still says this host
    refused = lab.cli(*args, expect=1)              # this host never stored that definition
    assert "not one this host recorded storing" in _one_line_error(refused)
    assert lab.cli(*args, "--trust-xml", "--json").json()["point"] == point


def test_prune_on_object_storage_stages_merges_locally_and_stays_exact(lab, rgw, s3_bucket):
    dom = lab.domain()
    backup = f"s3://{s3_bucket}/hv1"
    points = backup_history(dom, backup, 5)
    ids = list(points)
    client = rgw.client()
    scratch = lab.path("scratch")
    os.makedirs(scratch)
    killed = lab.cli("prune", "-b", backup, "-d", dom.name, "--keep", "3", "--scratch", scratch,
                     env={"FIBACKUP_FAULT": "prune.drop"}, expect=None)
    assert killed.code == -signal.SIGKILL
    for keep in (3, 1):
        result = lab.cli("prune", "-b", backup, "-d", dom.name, "--keep", str(keep),
                         "--scratch", scratch, "--json").json()[0]
        assert result["kept"] == ids[-keep:]
        listed = lab.cli("list", "-b", backup, "-d", dom.name, "--json").json()
        assert [row["id"] for row in listed] == ids[-keep:]
        for row in listed:
            assert_same(restore_and_read(lab, dom.name, backup, row["id"]), points[row["id"]],
                        f"keep {keep}: {row['id']}")
        assert lab.cli("verify", "-b", backup, "-d", dom.name).code == 0
    assert os.listdir(scratch) == []                     # the staging copies are gone
    keys = _objects(client, s3_bucket, "hv1/domains/")
    layers = {key.rsplit("/", 1)[1].rsplit(".", 1)[0] for key in keys if "/layers/" in key}
    assert len(layers) == 2                              # one merged layer per disk
    assert [key for key in keys if "/points/" in key] and \
        len([key for key in keys if "/points/" in key]) == 1
    points.update(backup_history(dom, backup, 1, start_pattern=0x60))   # the next backup: incremental
    newest = lab.cli("list", "-b", backup, "-d", dom.name, "--json").json()[-1]
    assert newest["bytes_new"] < 4 * MiB
    assert_same(restore_and_read(lab, dom.name, backup, newest["id"]), points[newest["id"]],
                "after prune")
