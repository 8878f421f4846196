"""Long runs, only with FIBACKUP_STRESS=1 (scripts/test.sh --stress)."""
from __future__ import annotations

import random

import pytest

from tests.lab import MiB, DiskDef, assert_same, restore_and_read


@pytest.mark.slow
def test_many_rounds_with_catch_ups_and_a_second_store(lab):
    rng = random.Random(20261123)
    dom = lab.domain(disks=[DiskDef("vda", "qcow2", 32 * MiB), DiskDef("vdb", "raw", 32 * MiB)])
    stores = {"main": lab.path("main store"), "other": lab.path("other store")}
    expected: dict[str, dict[str, dict[str, bytes]]] = {name: {} for name in stores}
    for _ in range(24):
        for _ in range(rng.randint(1, 4)):
            target = rng.choice(["vda", "vdb"])
            length = rng.choice([4096, 65536, MiB])
            offset = rng.randrange(0, 32 * MiB - length, 4096)
            dom.write(target, rng.randrange(1, 256), offset, length)
        choice = rng.random()
        if choice < 0.2:
            dom.snapshot(None)                       # a layer some store must catch up on
            continue
        name = "other" if choice < 0.35 else "main"
        point = dom.snapshot(stores[name]).json()[0]["point"]
        expected[name][point] = dom.expected_now()
    for name, points in expected.items():
        for point, content in points.items():
            assert_same(restore_and_read(lab, dom.name, stores[name], point), content,
                        f"{name}/{point}")
        assert "ok:" in lab.cli("verify", "-b", stores[name]).stdout
