"""Several domains in one run (--all, --all-running, repeated -d): one failing domain
never stops the others, and the exit code says how many succeeded; the quiesce
fallback without a guest agent."""
from __future__ import annotations

import os

import pytest

from tests.lab import PREFIX, DiskDef, assert_same, restore_and_read


def _only_lab_domains(lab) -> None:
    """--all acts on every domain of the host: never run it where real VMs live."""
    others = [dom.name() for dom in lab.conn.listAllDomains(0)
              if not dom.name().startswith(PREFIX)]
    if others:
        pytest.skip(f"other domains are defined on this host ({', '.join(others[:3])}); "
                    "--all would snapshot them")


def test_all_backs_up_every_domain_and_survives_a_broken_one(lab):
    _only_lab_domains(lab)
    good = [lab.domain(disks=[DiskDef("vda")]), lab.domain(disks=[DiskDef("vda")], start=False)]
    broken = lab.domain(disks=[DiskDef("vda")], start=False)
    os.unlink(broken.image_path(broken.disks[0]))          # its image is gone
    for dom in good:
        dom.write("vda", 0x31, 2 * 1024 * 1024, 65536)
    backup = lab.path("backup")
    result = lab.cli("snapshot", "--all", "-b", backup, "--json", expect=3)
    rows = {row["domain"]: row for row in result.json()}
    assert set(rows) >= {dom.name for dom in good + [broken]}
    assert "error" in rows[broken.name] and broken.name in result.stderr
    for dom in good:
        point = rows[dom.name]["point"]
        assert_same(restore_and_read(lab, dom.name, backup, point), dom.expected_now(), point)


def test_all_running_leaves_shut_off_domains_alone(lab):
    _only_lab_domains(lab)
    running = lab.domain(disks=[DiskDef("vda")])
    stopped = lab.domain(disks=[DiskDef("vda")], start=False)
    before = stopped.top("vda", inactive=True)
    result = lab.cli("snapshot", "--all-running", "--json")
    names = {row["domain"] for row in result.json()}
    assert running.name in names and stopped.name not in names
    assert stopped.top("vda", inactive=True) == before
    assert ".bimg-" in running.top("vda")


def test_every_domain_failing_exits_1_and_no_domain_is_a_usage_error(lab):
    missing = [f"{PREFIX}missing-{number}" for number in range(2)]
    result = lab.cli("snapshot", "-d", missing[0], "-d", missing[1], expect=1)
    assert all(name in result.stderr for name in missing)
    usage = lab.cli("snapshot", "-b", lab.path("backup"), expect=2)
    assert "--all" in usage.stderr and "-d NAME" in usage.stderr


def test_quiesce_fallback_without_agent_takes_a_crash_consistent_point(lab):
    dom = lab.domain(disks=[DiskDef("vda"), DiskDef("vdb", "raw")])   # firmware: no agent
    dom.write("vda", 0x44, 1024 * 1024, 65536)
    backup = lab.path("backup")
    result = lab.cli("snapshot", "-d", dom.name, "-b", backup, "--quiesce-fallback", "--json")
    row = result.json()[0]
    assert row["quiesced"] is False
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "crash-consistent" in warnings[0], result.stderr
    listed = lab.cli("list", "-b", backup, "--json").json()
    assert [item["quiesced"] for item in listed] == [False]
    assert_same(restore_and_read(lab, dom.name, backup, row["point"]), dom.expected_now(),
                row["point"])
    # no overlay of the failed quiesced attempt is left behind
    overlays = [name for name in os.listdir(dom.directory) if ".bimg-" in name]
    assert len(overlays) == 2, overlays
    # a shut-off domain needs no freezing: no warning, not quiesced
    dom.destroy()
    result = lab.cli("snapshot", "-d", dom.name, "--quiesce-fallback", "--json")
    assert result.json()[0]["quiesced"] is False and "warning:" not in result.stderr


def test_json_runs_print_errors_as_json_too(lab):
    missing = f"{PREFIX}missing"
    result = lab.cli("snapshot", "-d", missing, "--json", expect=1)
    error = result.json()["error"]
    assert error["kind"] == "DomainNotFoundError" and error["exit_code"] == 1
    assert missing in error["message"] and missing in result.stderr
    result = lab.cli("verify", "-b", lab.path("no backup here"), "--json", expect=1)
    assert result.json()["error"]["kind"] == "StoreUnavailableError"
    result = lab.cli("list", "-b", lab.path("no backup here"), "--json", expect=1)
    assert "backup directory" in result.json()["error"]["message"]
