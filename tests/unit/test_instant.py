"""Instant recovery's pure parts: explicit chains in XML and for qemu-img, the QEMU
user's access by mode bits, the record round trip."""
import json
import os
import stat
import xml.etree.ElementTree as ET

import pytest

from fibackup.errors import CorruptStoreError, ImageToolError
from fibackup.host import acl
from fibackup.host import instant as records
from fibackup.qemu.img import explicit_chain
from fibackup.virt import domxml

XML = """\
<domain type='kvm'>
  <name>web</name>
  <uuid>6f1c2a3b-4d5e-4f60-8172-93a4b5c6d7e8</uuid>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/img/web.raw'/>
      <backingStore type='file'><format type='raw'/><source file='/stale'/></backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/img/data.qcow2'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
  </devices>
</domain>
"""


def test_explicit_chain_in_xml_is_complete_read_only_and_not_relabelled():
    chain = [("/b/l/base.raw", "raw"), ("/b/l/mid.qcow2", "qcow2")]
    xml = domxml.set_explicit_chains(XML, {"vda": ("/to/vda.qcow2", chain)})
    disk = ET.fromstring(xml).find("./devices/disk")
    assert disk.find("source").get("file") == "/to/vda.qcow2"
    assert disk.find("driver").get("type") == "qcow2"
    assert len(disk.findall("backingStore")) == 1           # the stale one is gone
    node, seen = disk.find("backingStore"), []
    while node.find("source") is not None:
        seen.append((node.find("source").get("file"), node.find("format").get("type")))
        label = node.find("source/seclabel")
        assert (label.get("model"), label.get("relabel")) == ("dac", "no")
        node = node.find("backingStore")
    assert seen == list(reversed(chain))
    assert list(node) == [] and not node.attrib            # terminated: <backingStore/>
    # order inside <disk>: source, then backingStore, as libvirt writes it
    tags = [child.tag for child in disk]
    assert tags.index("backingStore") == tags.index("source") + 1
    spec = {s.target: s for s in domxml.disks(domxml.parse(xml))}["vda"]
    assert spec.backing_terminated and [layer.path for layer in spec.backing] == \
        ["/b/l/mid.qcow2", "/b/l/base.raw"]
    assert domxml.backing_files(xml, ["vda", "vdb"]) == {
        "vda": ["/b/l/mid.qcow2", "/b/l/base.raw"], "vdb": []}


def test_set_uuid_replaces_or_adds_it():
    xml = domxml.set_uuid(XML, "11111111-2222-4333-8444-555555555555")
    assert [e.text for e in ET.fromstring(xml).findall("uuid")] == [
        "11111111-2222-4333-8444-555555555555"]
    copy, _removed = domxml.as_copy(XML, "copy", ["vda"])
    assert ET.fromstring(domxml.set_uuid(copy, "u")).findtext("uuid") == "u"


def test_explicit_chain_for_qemu_img_never_reads_header_backing_names():
    spec = json.loads(explicit_chain([("/b/base.raw", "raw"), ("/b/mid.qcow2", "qcow2"),
                                      ("/to/top.qcow2", "qcow2")]).removeprefix("json:"))
    assert spec["file"]["filename"] == "/to/top.qcow2"
    assert spec["backing"]["file"]["filename"] == "/b/mid.qcow2"
    assert spec["backing"]["backing"] == {"driver": "raw",
                                          "file": {"driver": "file", "filename": "/b/base.raw"}}
    only = json.loads(explicit_chain([("/b/base.qcow2", "qcow2")]).removeprefix("json:"))
    assert only["backing"] is None                          # a qcow2 base: no backing at all
    with pytest.raises(ImageToolError):
        explicit_chain([("/b/base.raw", "raw"), ("/b/other.raw", "raw")])
    with pytest.raises(ImageToolError):
        explicit_chain([])


def test_qemu_user_from_qemu_conf():
    text = '#user = "root"\nuser = "libvirt-qemu"  # comment\ngroup = "kvm"\n'
    assert acl.configured_user(text) == "libvirt-qemu"
    assert acl.configured_user('# user = "qemu"\n') is None
    assert acl.configured_user('user = "a"\nuser = "+107"\n') == "+107"


def _stat(mode: int, uid: int = 0, gid: int = 0) -> os.stat_result:
    return os.stat_result((stat.S_IFREG | mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


def test_mode_bits_decide_who_may_read_and_search():
    qemu = acl.Account("libvirt-qemu", 64055, frozenset({107}))
    assert not acl.mode_allows(_stat(0o600), qemu, "r")
    assert not acl.mode_allows(_stat(0o700), qemu, "x")
    assert acl.mode_allows(_stat(0o604), qemu, "r")
    assert acl.mode_allows(_stat(0o711), qemu, "x")
    assert acl.mode_allows(_stat(0o640, gid=107), qemu, "r")
    assert not acl.mode_allows(_stat(0o604, gid=107), qemu, "r")   # group bits apply, not other
    assert acl.mode_allows(_stat(0o400, uid=64055), qemu, "r")
    assert not acl.mode_allows(_stat(0o044, uid=64055), qemu, "r")


def test_record_round_trip_and_malformed_records(tmp_path, monkeypatch):
    monkeypatch.setenv("FIBACKUP_STATE_DIR", str(tmp_path))
    layer = records.InstantLayer("20261201-000000-vda-000-abc", "/b/l/x.qcow2", "qcow2")
    record = records.InstantRecord(
        domain_uuid="11111111-2222-4333-8444-555555555555", domain_name="web-now",
        store_root="/b", store_id="s", source_uuid="u", source_name="web",
        point="20261201-000000", to="/to", qemu_user="libvirt-qemu",
        disks={"vda": records.InstantDisk("vda", "/to/vda.qcow2", (layer,))},
        grants=["/b", "/b/l/x.qcow2"])
    record.save()
    loaded = records.load(record.domain_uuid)
    assert loaded == record
    assert loaded.disks["vda"].chain == [("/b/l/x.qcow2", "qcow2"), ("/to/vda.qcow2", "qcow2")]
    assert [item.domain_name for item in records.all_records()] == ["web-now"]
    assert oct(os.stat(record.path).st_mode & 0o777) == "0o600"
    record.remove()
    assert records.load(record.domain_uuid) is None
    os.makedirs(records.records_dir(), exist_ok=True)
    with open(records.record_path("bad"), "w") as handle:
        handle.write('{"kind": "fibackup-instant", "version": 1}')
    with pytest.raises(CorruptStoreError, match="malformed"):
        records.load("bad")


def test_a_served_disk_is_an_nbd_backing_and_pauses_on_errors():
    socket = "/run/fibackup/instant/u/vda.sock"
    xml = domxml.set_explicit_chains(XML, {"vda": ("/to/vda.qcow2", [(socket, "nbd")])})
    xml = domxml.set_error_policy(xml, ["vda"], "stop")
    disk = ET.fromstring(xml).find("./devices/disk")
    backing = disk.find("backingStore")
    assert backing.get("type") == "network" and backing.find("format").get("type") == "raw"
    source = backing.find("source")
    assert source.get("protocol") == "nbd"
    assert (source.find("host").get("transport"), source.find("host").get("socket")) == \
        ("unix", socket)
    end = backing.find("backingStore")
    assert end is not None and list(end) == [] and not end.attrib     # terminated
    driver = disk.find("driver")
    assert (driver.get("error_policy"), driver.get("rerror_policy")) == ("stop", "stop")
    other = ET.fromstring(xml).findall("./devices/disk")[1].find("driver")
    assert other.get("error_policy") is None                           # vdb untouched
    assert domxml.backing_files(xml, ["vda"]) == {"vda": [socket]}


def test_a_served_record_round_trips_and_names_no_stored_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FIBACKUP_STATE_DIR", str(tmp_path))
    layer = records.InstantLayer("ab" * 32, "/run/fibackup/instant/u/vda.sock",
                                 records.SERVED_FORMAT)
    record = records.InstantRecord(
        domain_uuid="11111111-2222-4333-8444-555555555556", domain_name="web-now",
        store_root="s3://bk/web", store_id="s", source_uuid="u", source_name="web",
        point="20261201-000000", to="/to", qemu_user="libvirt-qemu",
        disks={"vda": records.InstantDisk("vda", "/to/vda.qcow2", (layer,))},
        served=records.ServedFrom("s3://bk/web", {"vda": 1 << 30}, "/etc/pass", "9c1d"))
    record.save()
    loaded = records.load(record.domain_uuid)
    assert loaded == record and loaded.served.pin == "9c1d"
    assert loaded.store_files() == set()                  # the socket is not a stored file
    with open(record.path) as handle:
        assert json.load(handle)["served"]["sizes"] == {"vda": 1 << 30}
