import os
import subprocess

import pytest

from tests.lab import Lab, GUEST_DIR


def pytest_collection_modifyitems(config, items):
    if os.environ.get("FIBACKUP_STRESS") == "1":
        return
    skip = pytest.mark.skip(reason="stress run: set FIBACKUP_STRESS=1 (scripts/test.sh --stress)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _libvirt_ready() -> bool:
    try:
        return subprocess.run(["virsh", "-q", "-c", "qemu:///system", "version"],
                              capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture
def lab():
    if not _libvirt_ready():
        pytest.fail("libvirtd is not running: run scripts/setup-host.sh (scripts/test.sh does)")
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def guest_lab(lab):
    for name in ("vmlinuz", "initrd.img"):
        if not os.path.exists(os.path.join(GUEST_DIR, name)):
            pytest.fail("the tiny guest is not built: run scripts/build-guest.sh")
    return lab
