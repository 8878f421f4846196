import os
import subprocess

import pytest

from tests.lab import TEST_CONFIG, Lab, GUEST_DIR

# fibackup started by a test inherits this: the host's configuration files never apply
os.environ.setdefault("FIBACKUP_CONFIG", TEST_CONFIG)


@pytest.hookimpl(tryfirst=True)       # before -m deselects by marker
def pytest_collection_modifyitems(config, items):
    # Every test that uses the lab (directly or through guest_lab, backup_location, ...)
    # needs libvirtd and QEMU: mark it, so that -m "not libvirt" runs the pure tests alone.
    for item in items:
        if "lab" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.libvirt)
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


@pytest.fixture(scope="session")
def rgw():
    """A real Ceph RGW on loopback (scripts/setup-s3.sh), started once per session."""
    try:
        import boto3  # noqa: F401
    except ImportError:
        pytest.fail("boto3 is missing: install fibackup's [s3] extra (scripts/setup-s3.sh does)")
    from tests import s3lab
    with s3lab.running() as gateway:
        yield gateway


@pytest.fixture
def s3_bucket(rgw):
    """A new, empty bucket of the RGW, removed with everything in it afterwards."""
    name = rgw.new_bucket()
    try:
        yield name
    finally:
        rgw.remove_bucket(name)


@pytest.fixture(params=["dir", "s3"])
def backup_location(request, lab):
    """``location(name)``: a backup directory in the lab, or a prefix of a test bucket;
    the scenarios that take it run against both stores."""
    if request.param == "dir":
        return lab.path
    bucket = request.getfixturevalue("s3_bucket")
    return lambda name: f"s3://{bucket}/{name.replace(' ', '-')}"
