"""The benchmark runs end to end from a clean checkout (--quick): every group produces
its rows and the JSON report.  No time is asserted: speed is judged by the full run
(scripts/bench.py, docs/PERFORMANCE.md), never by a test."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GROUPS = os.environ.get("FIBACKUP_BENCH_GROUPS", "copy,chains,snapshot,peers,s3,store")


@pytest.mark.libvirt
def test_quick_benchmark_runs_every_group(lab, tmp_path):
    report = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--quick",
                           "--only", GROUPS, "--json", str(report)],
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    document = json.loads(report.read_text())
    rows = document["rows"]
    assert {row["group"] for row in rows} == set(GROUPS.split(","))
    assert all(row["case"] != "group failed" for row in rows), rows
    assert all(row["ours_s"] >= 0 and row["baseline_s"] >= 0 for row in rows)
    assert document["machine"]["cpus"] >= 1
