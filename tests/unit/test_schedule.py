"""scripts/fibackup.service and .timer are valid systemd units (systemd-analyze verify)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))), "scripts")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_nightly_units_verify(tmp_path):
    fibackup = os.path.join(os.path.dirname(sys.executable), "fibackup")
    environment = tmp_path / "fibackup.env"
    environment.write_text("FIBACKUP_BACKUP_DIR=/backup\nFIBACKUP_ARGS=--max-chain 8\n")
    for name in ("fibackup.service", "fibackup.timer"):
        text = open(os.path.join(SCRIPTS, name)).read()
        text = text.replace("/usr/local/bin/fibackup", fibackup)
        text = text.replace("/etc/default/fibackup", str(environment))
        (tmp_path / name).write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "fibackup.timer"),
                           str(tmp_path / "fibackup.service")], capture_output=True, text=True)
    complaints = [line for line in (done.stdout + done.stderr).splitlines()
                  if "fibackup" in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


def test_service_runs_the_nightly_snapshot():
    text = open(os.path.join(SCRIPTS, "fibackup.service")).read()
    start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert "snapshot --all-running" in start and "--quiesce-fallback" in start
    assert "-b ${FIBACKUP_BACKUP_DIR}" in start
