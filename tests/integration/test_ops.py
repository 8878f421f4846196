"""What an operator sees: the run log in DIR/logs, plain stderr without a terminal,
progress bars with one (a real pseudo-terminal), journald levels; the data still
restores byte for byte."""
from __future__ import annotations

import os
import pty
import re
import shlex
import stat
import subprocess
import sys
import threading

from tests.lab import MiB, DiskDef, assert_same, restore_and_read

BAR = re.compile(r"\[[#.]{10,}\]")
SUMMARY = r"{label}: [\d.]+ (B|KiB|MiB) in \d+:\d\d \([\d.]+ (B|KiB|MiB|GiB)/s\)"


def run_logs(backup: str, command: str) -> list[str]:
    directory = os.path.join(backup, "logs")
    names = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    return [os.path.join(directory, name) for name in names if f"-{command}-" in name]


def log_texts(path: str) -> list[str]:
    """Each line as ``LEVEL text`` (the UTC time checked and dropped)."""
    texts = []
    for line in open(path).read().splitlines():
        moment, level, text = line.split(None, 2)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", moment), line
        texts.append(f"{level} {text}")
    return texts


def in_terminal(lab, *args: str) -> tuple[int, str]:
    """Run fibackup with its stderr on a pseudo-terminal; its exit code and what the
    terminal received."""
    master, slave = pty.openpty()
    env = {**os.environ, "FIBACKUP_STATE_DIR": lab.state_dir, "COLUMNS": "100"}
    process = subprocess.Popen([sys.executable, "-m", "fibackup", *args], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=slave, env=env)
    os.close(slave)
    received: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:                     # EIO: every writer closed the terminal
                return
            if not data:
                return
            received.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    code = process.wait(timeout=600)
    reader.join(timeout=30)
    os.close(master)
    output = b"".join(received).decode()
    assert "Traceback" not in output, output
    return code, output


def test_run_log_and_plain_stderr(lab):
    dom = lab.domain(disks=[DiskDef("vda"), DiskDef("vdb", "raw")], start=False)
    backup = lab.path("backup")
    dom.write("vda", 0x51, MiB, MiB)
    result = lab.cli("snapshot", "-d", dom.name, "-b", backup)      # no --json: human lines
    expected = dom.expected_now()
    assert "\r" not in result.stderr and "\x1b" not in result.stderr
    [path] = run_logs(backup, "snapshot")
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    texts = log_texts(path)
    assert texts[0].startswith("INFO fibackup ") and " started on host " in texts[0]
    assert texts[0].endswith(shlex.join(["fibackup", "snapshot", "-d", dom.name, "-b", backup]))
    printed = result.stderr.splitlines()
    assert any("restore point" in line for line in printed) and len(printed) >= 3
    for line in printed:                        # every line the run printed, with its level
        level = "WARNING" if line.startswith("warning: ") else "INFO"
        assert f"{level} {line.removeprefix('warning: ')}" in texts, (line, texts)
    assert texts[-1] == "INFO finished: exit 0 (success)"
    # list writes no log; restore and verify do, and the data is still exact
    lab.cli("list", "-b", backup)
    assert len(os.listdir(os.path.join(backup, "logs"))) == 1
    assert_same(restore_and_read(lab, dom.name, backup, "1"), expected, "point 1")
    [restore_log] = run_logs(backup, "restore")
    restored = log_texts(restore_log)
    assert any(text.startswith("INFO restored vda: ") for text in restored), restored
    assert "ok: 1 restore point(s)" in lab.cli("verify", "-b", backup).stdout
    assert "INFO ok: 1 restore point(s), 2 layer(s)" in " ".join(
        log_texts(run_logs(backup, "verify")[0]))


def test_failed_run_is_logged_and_journald_gets_levels(lab):
    dom = lab.domain(disks=[DiskDef("vda")], start=False)
    backup = lab.path("backup")
    dom.snapshot(backup)
    stderr_path = lab.path("stderr")
    with open(stderr_path, "w") as stderr:
        info = os.fstat(stderr.fileno())
        env = {**os.environ, "FIBACKUP_STATE_DIR": lab.state_dir,
               "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
        code = subprocess.run([sys.executable, "-m", "fibackup", "verify", "-b", backup, "-d",
                               "no-such-domain"], stderr=stderr, stdout=subprocess.DEVNULL,
                              env=env, timeout=120).returncode
    assert code == 1
    [line] = open(stderr_path).read().splitlines()
    assert line.startswith("<3>fibackup: ") and "no-such-domain" in line
    texts = log_texts(run_logs(backup, "verify")[0])
    assert texts[1] == f"ERROR {line.removeprefix('<3>fibackup: ')}"
    assert texts[-1] == "ERROR finished: exit 1 (failure)"


def test_progress_bars_on_a_terminal(lab):
    dom = lab.domain(disks=[DiskDef("vda"), DiskDef("vdb", "raw")], start=False)
    backup = lab.path("backup")
    dom.write("vda", 0x61, 2 * MiB, 4 * MiB)
    code, shown = in_terminal(lab, "snapshot", "-d", dom.name, "-b", backup)
    assert code == 0 and BAR.search(shown), shown
    for target in ("vda", "vdb"):               # copied in parallel, each leaves a summary
        assert re.search(SUMMARY.format(label=rf"{target} \S+"), shown), shown
    code, quiet = in_terminal(lab, "snapshot", "-d", dom.name, "-b", backup, "-q")
    assert code == 0 and not BAR.search(quiet) and "\r" not in quiet.replace("\r\n", "\n")
    # a live block job draws from libvirt's cur/end
    dom.start()
    try:
        dom.write("vda", 0x62, 8 * MiB, 2 * MiB)
        dom.snapshot(backup)
        code, shown = in_terminal(lab, "consolidate", "-d", dom.name, "-b", backup)
        assert code == 0 and BAR.search(shown), shown
        assert re.search(SUMMARY.format(label="vda commit"), shown), shown
        dom.write("vda", 0x63, 12 * MiB, MiB)
        point = dom.snapshot(backup).json()[0]["point"]
        expected = dom.expected_now()
    finally:
        dom.destroy()
    code, shown = in_terminal(lab, "verify", "-b", backup)
    assert code == 0 and re.search(SUMMARY.format(label="verify"), shown), shown
    assert_same(restore_and_read(lab, dom.name, backup, point), expected, point)
