"""Restore points and --at selection (fibackup.model.points)."""
import pytest

from fibackup.errors import RestorePointNotFoundError
from fibackup.model.points import PointDisk, PointLayer, RestorePoint, select_point

UUID = "12345678-1234-1234-1234-123456789abc"


def layer(layer_id, data_bytes, new):
    return PointLayer(id=layer_id, image_format="qcow2", size=data_bytes + 4096,
                      virtual_size=1 << 30, digest="0" * 32, new=new, data_bytes=data_bytes)


def point(point_id, seq, time="2026-01-01T00:00:00Z", disks=None):
    if disks is None:
        disks = {"vda": PointDisk("vda", 1 << 30, (layer(f"{point_id}-a", 10, True),))}
    return RestorePoint(id=point_id, seq=seq, time=time, domain_name="web", domain_uuid=UUID,
                        host="h", disks=disks, domain_xml="<domain/>")


P1 = point("20260101-000000", 1, "2026-01-01T00:00:00Z")
P2 = point("20260102-000000", 2, "2026-01-02T00:00:00Z")
# Highest seq, but an older wall-clock time (clock went backwards).
P3 = point("20251231-000000", 3, "2025-12-31T00:00:00Z")


def test_select_by_id():
    assert select_point([P1, P2, P3], "20260102-000000") is P2


def test_select_by_seq_string():
    assert select_point([P1, P2, P3], "1") is P1
    assert select_point([P3, P1, P2], "3") is P3


@pytest.mark.parametrize("at", [None, "latest"])
def test_latest_is_highest_seq_regardless_of_order_and_time(at):
    assert select_point([P3, P1, P2], at) is P3
    assert select_point([P2, P3, P1], at) is P3


def test_unknown_id_raises_and_names_it():
    with pytest.raises(RestorePointNotFoundError, match="20300101-000000"):
        select_point([P1, P2], "20300101-000000")


def test_unknown_seq_raises():
    with pytest.raises(RestorePointNotFoundError, match="'7'"):
        select_point([P1, P2], "7")


@pytest.mark.parametrize("at", [None, "latest", "1", "20260101-000000"])
def test_empty_list_raises(at):
    with pytest.raises(RestorePointNotFoundError):
        select_point([], at)


def test_byte_counts_and_layer_count():
    disks = {
        "vda": PointDisk("vda", 1 << 30, (layer("a1", 1000, False), layer("a2", 200, False),
                                          layer("a3", 30, True))),
        "vdb": PointDisk("vdb", 1 << 30, (layer("b1", 4, True),)),
    }
    p = point("20260101-000000", 1, disks=disks)
    assert p.bytes_new == 34
    assert p.bytes_total == 1234
    assert p.layer_count == 4


def test_point_disk_generation_and_top():
    disk = PointDisk("vda", 1 << 30, (layer("a1", 1, False), layer("a2", 2, True)))
    assert disk.generation == "a1"
    assert disk.top.id == "a2"
