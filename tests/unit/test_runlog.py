"""The per-run log file in DIR/logs: where, which mode, what it holds, never a failure."""
from __future__ import annotations

import io
import os
import re
import stat

import pytest

from fibackup import __version__
from fibackup.report import Reporter
from fibackup.runlog import LOG_DIR, RunLog
from fibackup.store.repo import BackupStore

LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (INFO|WARNING|ERROR) +\S.*")
ARGV = ["fibackup", "snapshot", "-d", "web", "-b", "/backup dir"]


def store_dir(tmp_path) -> str:
    root = str(tmp_path / "backup")
    BackupStore.open(root, create=True)
    return root


def logs(root: str) -> list[str]:
    return sorted(os.listdir(os.path.join(root, LOG_DIR)))


def run(root: str, *, code: int = 0) -> tuple[Reporter, io.StringIO]:
    stream = io.StringIO()
    report = Reporter(stream=stream)
    report.open_log(root, "snapshot", ARGV)
    report.info("web: snapshot 20260101-000000 taken")
    report.warn("web: a chain is long")
    report.error("web: it failed")
    report.record("the result")
    report.close(code)
    return report, stream


def test_log_file_holds_the_run(tmp_path):
    root = store_dir(tmp_path)
    _, stream = run(root, code=1)
    [name] = logs(root)
    assert re.fullmatch(rf"\d{{8}}-\d{{6}}-snapshot-{os.getpid()}\.log", name)
    path = os.path.join(root, LOG_DIR, name)
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    lines = open(path).read().splitlines()
    assert all(LINE.fullmatch(line) for line in lines), lines
    assert f"fibackup {__version__} started on host {os.uname().nodename}" in lines[0]
    assert lines[0].endswith("fibackup snapshot -d web -b '/backup dir'")
    texts = [line.split(None, 2)[1:] for line in lines[1:]]
    assert texts == [["INFO", "web: snapshot 20260101-000000 taken"],
                     ["WARNING", "web: a chain is long"], ["ERROR", "web: it failed"],
                     ["INFO", "the result"], ["ERROR", "finished: exit 1 (failure)"]]
    assert "the result" not in stream.getvalue()       # a result is for the log only


def test_quiet_runs_still_log_information(tmp_path):
    root = store_dir(tmp_path)
    stream = io.StringIO()
    report = Reporter(quiet=True, stream=stream)
    report.open_log(root, "verify", ["fibackup", "verify"])
    report.info("checked")
    report.close(0)
    assert stream.getvalue() == ""
    text = open(os.path.join(root, LOG_DIR, logs(root)[0])).read()
    assert "INFO    checked" in text and "finished: exit 0 (success)" in text


def test_lines_wait_until_the_directory_is_a_backup_directory(tmp_path):
    root = str(tmp_path / "new backup")
    report = Reporter(stream=io.StringIO())
    report.open_log(root, "snapshot", ARGV)
    report.info("before the store exists")
    assert not os.path.exists(root)
    BackupStore.open(root, create=True)                 # must not find logs/ in its way
    report.info("after")
    report.close(0)
    text = open(os.path.join(root, LOG_DIR, logs(root)[0])).read()
    assert "started" in text and "before the store exists" in text and "after" in text


def test_a_directory_that_never_becomes_one_gets_no_log(tmp_path):
    (tmp_path / "photos").mkdir()
    _, stream = run(str(tmp_path / "photos"))
    assert os.listdir(tmp_path / "photos") == []
    assert "run log" not in stream.getvalue()
    run(str(tmp_path / "missing"))
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("planted", ["link", "file"])
def test_a_log_that_cannot_be_written_only_warns_once(tmp_path, planted):
    root = store_dir(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    if planted == "link":
        os.symlink(outside, os.path.join(root, LOG_DIR))
    else:
        open(os.path.join(root, LOG_DIR), "w").close()
    report, stream = run(root)                          # raises nothing
    warnings = [line for line in stream.getvalue().splitlines() if "run log" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: cannot write the run log")
    assert "goes on without it" in warnings[0]
    assert os.listdir(outside) == []                    # never written through a link
    assert report.warnings == ["web: a chain is long"]


def test_a_write_error_midway_only_warns_once(tmp_path, monkeypatch):
    root = store_dir(tmp_path)
    stream = io.StringIO()
    report = Reporter(stream=stream)
    report.open_log(root, "restore", ["fibackup", "restore"])

    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("fibackup.runlog.write_all", full)
    for number in range(3):
        report.info(f"line {number}")
    report.close(0)
    assert stream.getvalue().count("No space left on device") == 1
    assert "line 2\n" in stream.getvalue()


def test_old_logs_of_the_same_command_are_removed(tmp_path):
    root = store_dir(tmp_path)
    os.mkdir(os.path.join(root, LOG_DIR), 0o700)
    old = [f"2025010{day}-020000-snapshot-{100 + day}.log" for day in range(1, 6)]
    others = ["20250101-020000-verify-7.log", "notes.txt"]
    for name in old + others:
        open(os.path.join(root, LOG_DIR, name), "w").close()
    log = RunLog(root, "snapshot", ["fibackup", "snapshot"], keep=3)
    log.close(0)
    assert logs(root) == sorted(old[-2:] + others + [log.name])
