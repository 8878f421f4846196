"""Reading and rewriting libvirt domain XML (fibackup.virt.domxml)."""
import xml.etree.ElementTree as ET

import pytest

from fibackup.errors import CorruptStoreError
from fibackup.model.chain import LiveLayer
from fibackup.virt import domxml

LIVE_XML = """\
<domain type='kvm' id='7'>
  <name>web</name>
  <uuid>6f1c2a3b-4d5e-4f60-8172-93a4b5c6d7e8</uuid>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/img/web.bimg-20260102-000000' index='3'/>
      <backingStore type='file' index='2'>
        <format type='qcow2'/>
        <source file='/img/web.bimg-20260101-000000'/>
        <backingStore type='file' index='1'>
          <format type='raw'/>
          <source file='/img/web.raw'/>
          <backingStore/>
        </backingStore>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
"""

INACTIVE_XML = """\
<domain type='kvm'>
  <name>web</name>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/img/web.bimg-20260102-000000'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
"""


def disk_xml(target, disk_type="file", device="disk", source="file", fmt="qcow2", extra=""):
    if source == "file":
        source_el = f"<source file='/img/{target}.{fmt}'/>"
    elif source == "dev":
        source_el = f"<source dev='/dev/sd{target}'/>"
    elif source == "network":
        source_el = ("<source protocol='rbd' name='pool/image'>"
                     "<host name='ceph' port='6789'/></source>")
    elif source == "volume":
        source_el = "<source pool='default' volume='vol.qcow2'/>"
    else:
        source_el = ""
    return (f"<disk type='{disk_type}' device='{device}'>"
            f"<driver name='qemu' type='{fmt}'/>{source_el}"
            f"<target dev='{target}' bus='virtio'/>{extra}</disk>")


def domain_with(*disks):
    return f"<domain><name>d</name><devices>{''.join(disks)}</devices></domain>"


def specs_of(*disks):
    return domxml.disks(domxml.parse(domain_with(*disks)))


def only_disk(xml):
    [spec] = domxml.disks(domxml.parse(xml))
    return spec


# -- parsing -----------------------------------------------------------------------

def test_live_xml_backing_chain():
    spec = only_disk(LIVE_XML)
    assert spec.target == "vda"
    assert spec.device == "disk"
    assert spec.source_type == "file"
    assert spec.source == "/img/web.bimg-20260102-000000"
    assert spec.format == "qcow2"
    assert spec.backing == (LiveLayer("/img/web.bimg-20260101-000000", "qcow2"),
                            LiveLayer("/img/web.raw", "raw"))
    assert spec.backing_terminated is True
    assert not (spec.readonly or spec.shareable or spec.transient or spec.encrypted)


def test_inactive_xml_without_backing_store_is_not_terminated():
    spec = only_disk(INACTIVE_XML)
    assert spec.backing == ()
    assert spec.backing_terminated is False


def test_empty_backing_store_right_away_is_terminated():
    spec = only_disk(domain_with(disk_xml("vda", fmt="raw", extra="<backingStore/>")))
    assert spec.backing == ()
    assert spec.backing_terminated is True


def test_chain_without_final_empty_backing_store_is_not_terminated():
    xml = domain_with(disk_xml("vda", extra=(
        "<backingStore type='file'><format type='qcow2'/>"
        "<source file='/img/base.qcow2'/></backingStore>")))
    spec = only_disk(xml)
    assert spec.backing == (LiveLayer("/img/base.qcow2", "qcow2"),)
    assert spec.backing_terminated is False


def test_network_backing_layer_is_marked():
    xml = domain_with(disk_xml("vda", extra=(
        "<backingStore type='network'><format type='raw'/>"
        "<source protocol='nbd' name='export'/></backingStore>")))
    spec = only_disk(xml)
    assert spec.backing == (LiveLayer("export", "network:network"),)
    selection = domxml.select_disks([spec], [], [])
    assert selection.selected == ()
    assert [target for target, _ in selection.refused] == ["vda"]


def test_driver_without_type_defaults_to_raw():
    spec = only_disk("<domain><devices><disk type='file' device='disk'>"
                     "<source file='/img/a'/><target dev='vda'/></disk></devices></domain>")
    assert spec.format == "raw"


def test_domain_name_and_targets():
    assert domxml.domain_name(domxml.parse(LIVE_XML)) == "web"
    assert domxml.disk_targets(domain_with(disk_xml("vda"), disk_xml("vdb"))) == ["vda", "vdb"]


@pytest.mark.parametrize("xml", ["", "<domain>", "not xml at all", "<a></b>"])
def test_unparsable_xml(xml):
    with pytest.raises(CorruptStoreError):
        domxml.parse(xml)


# -- selection ---------------------------------------------------------------------

def targets(pairs):
    return [target for target, _ in pairs]


def test_plain_file_disks_are_selected():
    specs = specs_of(disk_xml("vda"), disk_xml("vdb", fmt="raw"))
    selection = domxml.select_disks(specs, [], [])
    assert [spec.target for spec in selection.selected] == ["vda", "vdb"]
    assert selection.skipped == () and selection.refused == ()


@pytest.mark.parametrize("disk, words", [
    (disk_xml("hdc", device="cdrom", fmt="raw"), "cdrom"),
    (disk_xml("fda", device="floppy", fmt="raw"), "floppy"),
    (disk_xml("vdb", extra="<readonly/>"), "read-only"),
    (disk_xml("hdd", device="cdrom", fmt="raw", source="none"), "cdrom"),
    (disk_xml("vdc", source="none"), "empty"),
])
def test_harmless_disks_are_skipped(disk, words):
    selection = domxml.select_disks(specs_of(disk_xml("vda"), disk), [], [])
    assert [spec.target for spec in selection.selected] == ["vda"]
    assert len(selection.skipped) == 1
    assert words in selection.skipped[0][1]
    assert selection.refused == ()


@pytest.mark.parametrize("disk, words", [
    (disk_xml("sdb", disk_type="block", source="dev", fmt="raw"), "block"),
    (disk_xml("vdb", extra="<shareable/>"), "shareable"),
    (disk_xml("sdc", disk_type="block", device="lun", source="dev", fmt="raw"), "LUN"),
    (disk_xml("vdb", extra="<transient/>"), "transient"),
    (disk_xml("vdb", extra="<encryption format='luks'><secret type='passphrase' "
                           "uuid='0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d'/></encryption>"),
     "encrypted"),
    (disk_xml("vdb", fmt="vmdk"), "vmdk"),
])
def test_unsupported_disks_are_refused_with_reason(disk, words):
    selection = domxml.select_disks(specs_of(disk_xml("vda"), disk), [], [])
    assert [spec.target for spec in selection.selected] == ["vda"]
    assert len(selection.refused) == 1
    assert words in selection.refused[0][1]
    assert selection.skipped == ()


def test_encryption_inside_source_is_refused():
    disk = ("<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            "<source file='/img/x.qcow2'><encryption format='luks'/></source>"
            "<target dev='vdb'/></disk>")
    selection = domxml.select_disks(specs_of(disk), [], [])
    assert targets(selection.refused) == ["vdb"]


@pytest.mark.parametrize("disk", [
    disk_xml("vdb", disk_type="network", source="network", fmt="raw"),
    disk_xml("vdb", disk_type="volume", source="volume"),
])
def test_network_and_volume_disks_are_refused(disk):
    selection = domxml.select_disks(specs_of(disk_xml("vda"), disk), [], [])
    assert targets(selection.refused) == ["vdb"]
    assert selection.skipped == ()


def test_include_limits_the_selection():
    specs = specs_of(disk_xml("vda"), disk_xml("vdb"), disk_xml("vdc", extra="<shareable/>"))
    selection = domxml.select_disks(specs, ["vdb"], [])
    assert [spec.target for spec in selection.selected] == ["vdb"]
    assert selection.skipped == () and selection.refused == ()


def test_exclude_skips_even_unsupported_disks():
    specs = specs_of(disk_xml("vda"), disk_xml("vdb", extra="<shareable/>"))
    selection = domxml.select_disks(specs, [], ["vdb"])
    assert [spec.target for spec in selection.selected] == ["vda"]
    assert targets(selection.skipped) == ["vdb"]
    assert "exclude" in selection.skipped[0][1]
    assert selection.refused == ()


def test_explicitly_included_harmless_disk_is_a_usage_error():
    from fibackup.errors import UsageError
    specs = specs_of(disk_xml("vda"), disk_xml("hdc", device="cdrom", fmt="raw"))
    with pytest.raises(UsageError, match="drop --disk hdc"):
        domxml.select_disks(specs, ["vda", "hdc"], [])


# -- snapshot XML --------------------------------------------------------------------

def test_snapshot_xml_external_for_selected_no_for_others():
    xml = domxml.snapshot_xml({"vda": "/img/web.bimg-20260103-000000"}, ["vda", "vdb", "hdc"])
    root = ET.fromstring(xml)
    assert root.tag == "domainsnapshot"
    disks = {disk.get("name"): disk for disk in root.findall("./disks/disk")}
    assert list(disks) == ["vda", "vdb", "hdc"]
    assert disks["vda"].get("snapshot") == "external"
    assert disks["vda"].find("source").get("file") == "/img/web.bimg-20260103-000000"
    assert disks["vda"].find("driver").get("type") == "qcow2"
    for other in ("vdb", "hdc"):
        assert disks[other].get("snapshot") == "no"
        assert disks[other].find("source") is None


def test_snapshot_xml_source_is_absolute():
    xml = domxml.snapshot_xml({"vda": "/img/a.bimg-20260103-000000"}, ["vda"])
    source = ET.fromstring(xml).find("./disks/disk/source").get("file")
    assert source.startswith("/")


def test_snapshot_xml_survives_quote_and_ampersand():
    path = "/img/it's \"mine\" & <yours>/disk.bimg-20260103-000000"
    xml = domxml.snapshot_xml({"vda": path}, ["vda"])
    assert ET.fromstring(xml).find("./disks/disk/source").get("file") == path


# -- repointing ----------------------------------------------------------------------

def test_repoint_disks_sets_source_and_format_and_drops_backing_store():
    xml = domxml.repoint_disks(LIVE_XML, {"vda": ("/restore/web.qcow2", "qcow2")})
    root = ET.fromstring(xml)
    disk = root.find("./devices/disk")
    assert disk.get("type") == "file"
    assert disk.find("source").attrib == {"file": "/restore/web.qcow2"}
    assert disk.find("driver").get("type") == "qcow2"
    assert disk.find("driver").get("name") == "qemu"
    assert disk.find("backingStore") is None
    spec = only_disk(xml)
    assert spec.source == "/restore/web.qcow2"
    assert spec.backing == ()


def test_repoint_disks_changes_format_and_leaves_other_disks():
    xml = domain_with(disk_xml("vda"), disk_xml("vdb", fmt="raw"))
    specs = {spec.target: spec for spec in domxml.disks(domxml.parse(
        domxml.repoint_disks(xml, {"vda": ("/r/a & b.raw", "raw")})))}
    assert specs["vda"].source == "/r/a & b.raw"
    assert specs["vda"].format == "raw"
    assert specs["vdb"].source == "/img/vdb.raw"


def test_repoint_block_disk_becomes_file_disk():
    xml = domain_with(disk_xml("sdb", disk_type="block", source="dev", fmt="raw"))
    spec = only_disk(domxml.repoint_disks(xml, {"sdb": ("/r/sdb.qcow2", "qcow2")}))
    assert spec.source_type == "file"
    assert spec.source == "/r/sdb.qcow2"
    assert spec.format == "qcow2"


def test_repoint_disk_without_source_or_driver():
    xml = ("<domain><devices><disk type='file' device='disk'><target dev='vda'/></disk>"
           "</devices></domain>")
    spec = only_disk(domxml.repoint_disks(xml, {"vda": ("/r/a.qcow2", "qcow2")}))
    assert spec.source == "/r/a.qcow2"
    assert spec.format == "qcow2"


def test_strip_backing_stores():
    xml, changed = domxml.strip_backing_stores(LIVE_XML, ["vda"])
    assert changed
    assert only_disk(xml).backing_terminated is False
    xml, changed = domxml.strip_backing_stores(INACTIVE_XML, ["vda"])
    assert not changed


# -- copies --------------------------------------------------------------------------

COPY_SOURCE = f"""\
<domain type='kvm'>
  <name>web</name>
  <uuid>6f1c2a3b-4d5e-4f60-8172-93a4b5c6d7e8</uuid>
  <title>Web server</title>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>
    <nvram>/var/lib/libvirt/qemu/nvram/web_VARS.fd</nvram>
  </os>
  <devices>
    {disk_xml("vda")}
    {disk_xml("vdb")}
    {disk_xml("hdc", device="cdrom", fmt="raw")}
    {disk_xml("vdd", extra="<readonly/>")}
    <interface type='network'>
      <mac address='52:54:00:12:34:56'/>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:ab:cd:ef'/>
      <source bridge='br0'/>
    </interface>
    <serial type='file'>
      <source path='/var/log/vm/web-serial.log'/>
      <target port='0'/>
    </serial>
    <console type='pty'>
      <log file='/var/log/vm/web-console.log' append='on'/>
      <target type='serial' port='0'/>
    </console>
    <serial type='pty'>
      <target port='1'/>
    </serial>
  </devices>
</domain>
"""


def test_as_copy_renames_and_forgets_identity():
    xml, _ = domxml.as_copy(COPY_SOURCE, "web-copy", ["vda"])
    root = ET.fromstring(xml)
    assert root.findtext("name") == "web-copy"
    assert root.find("uuid") is None
    assert root.find("title") is None
    assert root.findall(".//mac") == []
    assert len(root.findall("./devices/interface")) == 2


def test_as_copy_keeps_only_kept_writable_disks():
    xml, removed = domxml.as_copy(COPY_SOURCE, "web-copy", ["vda"])
    assert removed == ["vdb"]
    assert domxml.disk_targets(xml) == ["vda", "hdc", "vdd"]


def test_as_copy_drops_nvram_keeps_loader():
    xml, _ = domxml.as_copy(COPY_SOURCE, "web-copy", ["vda", "vdb"])
    os_element = ET.fromstring(xml).find("os")
    assert os_element.find("nvram") is None
    assert os_element.find("loader") is not None


def test_as_copy_renames_chardev_log_files():
    xml, _ = domxml.as_copy(COPY_SOURCE, "web-copy", ["vda", "vdb"])
    devices = ET.fromstring(xml).find("devices")
    assert devices.find("serial/source").get("path") == "/var/log/vm/web-copy.web-serial.log"
    assert devices.find("console/log").get("file") == "/var/log/vm/web-copy.web-console.log"
    pty_serial = devices.findall("serial")[1]
    assert pty_serial.find("source") is None


def test_as_copy_without_name_element_adds_one():
    xml, removed = domxml.as_copy("<domain><devices/></domain>", "copy", [])
    assert ET.fromstring(xml).findtext("name") == "copy"
    assert removed == []
