"""Stored non-disk files (NVRAM, TPM state, kernel/initrd): format, store, XML, tidy."""
import copy
import os
import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest

from fibackup.commands import domfiles
from fibackup.errors import CorruptStoreError, IntegrityError
from fibackup.model.points import PointFile
from fibackup.report import Reporter
from fibackup.store import format as fmt
from fibackup.store.tidy import tidy_domain
from fibackup.virt import domxml
from tests.storelab import ORIGIN, UUID, make_point, point_doc, sample_point, store_layer, via_bytes

UEFI_XML = """\
<domain type='kvm'>
  <name>web</name>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>
    <nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>/var/lib/libvirt/qemu/nvram/web_VARS.fd</nvram>
    <kernel>/boot/vmlinuz</kernel>
    <initrd>/boot/initrd.img</initrd>
  </os>
  <devices>
    <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>
  </devices>
</domain>"""


def entry(role="nvram", file_id="a" * 32, name="", size=10, path="/nvram/web_VARS.fd"):
    return PointFile(role=role, path=path, id=file_id, digest=file_id, size=size, mode=0o600,
                     name=name, new=True)


# -- manifest and record format ------------------------------------------------------

def test_point_files_round_trip():
    point = replace(sample_point(), files=(entry(), entry("tpm", "b" * 32, "tpm2/tpm2-00.permall")))
    assert fmt.point_from_dict(via_bytes(fmt.point_to_dict(point)), ORIGIN) == point


def test_manifest_without_files_key_has_no_files():
    document = point_doc()
    del document["files"]
    assert fmt.point_from_dict(document, ORIGIN).files == ()


@pytest.mark.parametrize("name", ["../../etc/shadow", "/etc/shadow", "tpm2//x", ".hidden", ""])
def test_tpm_file_name_outside_its_directory_is_corrupt(name):
    document = fmt.point_to_dict(replace(sample_point(), files=(entry("tpm", name="x"),)))
    document["files"][0]["name"] = name
    with pytest.raises(CorruptStoreError):
        fmt.point_from_dict(document, ORIGIN)


@pytest.mark.parametrize("key,value", [("id", "../x"), ("digest", "zz"), ("size", -1),
                                       ("mode", "0600"), ("role", "a/b")])
def test_bad_file_entry_is_corrupt(key, value):
    document = fmt.point_to_dict(replace(sample_point(), files=(entry(),)))
    document["files"][0][key] = value
    with pytest.raises(CorruptStoreError):
        fmt.point_from_dict(document, ORIGIN)


def test_file_listed_twice_is_corrupt():
    document = fmt.point_to_dict(replace(sample_point(), files=(entry(), entry(file_id="c" * 32))))
    with pytest.raises(CorruptStoreError, match="twice"):
        fmt.point_from_dict(document, ORIGIN)


def test_file_record_must_be_named_by_its_digest(store, tmp_path):
    path = tmp_path / "VARS.fd"
    path.write_bytes(b"uefi" * 1000)
    record, _new = store.store_file(UUID, str(path))
    document = fmt.file_record_to_dict(record)
    assert fmt.file_record_from_dict(copy.deepcopy(document), ORIGIN) == record
    document["id"] = "f" * 32
    with pytest.raises(CorruptStoreError, match="not its digest"):
        fmt.file_record_from_dict(document, ORIGIN)


# -- the store -----------------------------------------------------------------------

def stored_entry(store, path, role="kernel"):
    record, new = store.store_file(UUID, str(path))
    return PointFile(role=role, path=str(path), id=record.id, digest=record.digest,
                     size=record.size, mode=0o644, new=new)


def test_identical_content_is_stored_once(store, tmp_path):
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(os.urandom(5 * 1024 * 1024))
    first = stored_entry(store, kernel)
    again = stored_entry(store, kernel)
    assert first.new and not again.new and first.id == again.id
    files = os.listdir(os.path.join(store.domain_dir(UUID), "files"))
    assert sorted(files) == [f"{first.id}.data", f"{first.id}.json"]


def test_restore_file_is_exact_and_damage_is_caught(store, tmp_path):
    nvram = tmp_path / "VARS.fd"
    nvram.write_bytes(b"\xff" * 4096 + os.urandom(8192) + b"\x00" * 4096)
    item = stored_entry(store, nvram, "nvram")
    out = tmp_path / "restored.fd"
    store.restore_file(UUID, item, str(out))
    assert out.read_bytes() == nvram.read_bytes()
    assert store.check_file(UUID, item) == []
    data = store.file_path(UUID, item.id)
    with open(data, "r+b") as handle:             # flip a bit: the byte there is random,
        handle.seek(5000)                           # so writing a fixed one left it as it
        byte = handle.read(1)                       # was once in 256 runs
        handle.seek(5000)
        handle.write(bytes([byte[0] ^ 1]))
    assert "damaged" in store.check_file(UUID, item)[0]
    with pytest.raises(IntegrityError, match="damaged"):
        store.restore_file(UUID, item, str(tmp_path / "again.fd"))
    assert not (tmp_path / "again.fd").exists()


def test_listing_that_disagrees_with_the_record_is_refused(store, tmp_path):
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k" * 100)
    item = replace(stored_entry(store, kernel), size=99)
    assert "record says" in store.check_file(UUID, item)[0]
    with pytest.raises(IntegrityError):
        store.restore_file(UUID, item, str(tmp_path / "out"))


def test_tidy_removes_incomplete_unlisted_files_only(store, source, tmp_path):
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k" * 100)
    listed = stored_entry(store, kernel)
    store.publish_point(replace(make_point([store_layer(store, source)]), files=(listed,)))
    files_dir = os.path.join(store.domain_dir(UUID), "files")
    debris = [os.path.join(files_dir, name) for name in
              (".file.data.partial-1234abcd", "1" * 32 + ".data", "2" * 32 + ".json")]
    for path in debris:
        with open(path, "wb") as handle:
            handle.write(b"x")
    os.unlink(os.path.join(files_dir, f"{listed.id}.json"))   # damage: verify's to report
    assert sorted(tidy_domain(store, UUID)) == sorted(debris)
    assert os.listdir(files_dir) == [f"{listed.id}.data"]


def test_save_files_skips_missing_and_retries_a_file_that_changes(store, tmp_path,
                                                                  monkeypatch):
    nvram = tmp_path / "VARS.fd"
    nvram.write_bytes(b"v" * 1000)
    calls = []
    original = domfiles._unchanged

    def changing_once(path, before):
        check = original(path, before)

        def maybe_change():
            calls.append(path)
            if len(calls) == 1:
                with open(path, "ab") as handle:
                    handle.write(b"more")
            check()
        return maybe_change

    monkeypatch.setattr(domfiles, "_unchanged", changing_once)
    saved = domfiles.save_files(store, UUID, "web", [
        domfiles.SourceFile("nvram", str(nvram)),
        domfiles.SourceFile("kernel", str(tmp_path / "missing"))], Reporter(quiet=True))
    assert [item.role for item in saved] == ["nvram"] and len(calls) == 2
    assert saved[0].size == 1004 and saved[0].mode == 0o644      # umask 022 (test_store)


# -- domain XML ----------------------------------------------------------------------

def test_boot_files_and_tpm_are_found_loader_is_not():
    root = domxml.parse(UEFI_XML)
    assert domxml.boot_files(root) == {"nvram": "/var/lib/libvirt/qemu/nvram/web_VARS.fd",
                                       "kernel": "/boot/vmlinuz", "initrd": "/boot/initrd.img"}
    assert domxml.has_tpm_emulator(root)
    assert not domxml.has_tpm_emulator(domxml.parse("<domain><devices><tpm><backend "
                                                    "type='passthrough'/></tpm></devices></domain>"))


def test_nvram_with_source_element_and_network_nvram():
    source = domxml.parse("<domain><os><nvram type='file'><source file='/n/vars.fd'/></nvram>"
                          "</os></domain>")
    assert domxml.boot_files(source) == {"nvram": "/n/vars.fd"}
    network = domxml.parse("<domain><os><nvram type='network'><source protocol='iscsi' "
                           "name='x'/></nvram></os></domain>")
    assert domxml.boot_files(network) == {}


def test_repoint_boot_files_and_copy_gets_its_nvram_back():
    xml = domxml.repoint_boot_files(UEFI_XML, {"nvram": "/r/nvram.fd", "kernel": "/r/k"})
    os_element = ET.fromstring(xml).find("os")
    assert os_element.findtext("nvram") == "/r/nvram.fd"
    assert os_element.find("nvram").get("template") == "/usr/share/OVMF/OVMF_VARS_4M.fd"
    assert os_element.findtext("kernel") == "/r/k" and os_element.findtext("initrd") == "/boot/initrd.img"
    assert os_element.findtext("loader") == "/usr/share/OVMF/OVMF_CODE_4M.fd"
    copied, _ = domxml.as_copy(UEFI_XML, "web-copy", [])
    again = ET.fromstring(domxml.repoint_boot_files(copied, {"nvram": "/r/n.fd"}))
    assert again.findtext("os/nvram") == "/r/n.fd"


def test_restored_names_stay_inside_the_destination():
    point = sample_point()
    nvram = entry(path="/var/lib/libvirt/qemu/nvram/web VARS.fd")
    tpm = entry("tpm", name="tpm2/tpm2-00.permall", path="/var/lib/libvirt/swtpm/u/tpm2/x")
    assert domfiles.restored_name(point, nvram) == f"nvram-{point.id}-web_VARS.fd"
    assert domfiles.restored_name(point, tpm) == f"tpm-{point.id}/tpm2/tpm2-00.permall"
    assert domfiles.boot_paths(point, [nvram, tpm], "/to") == \
        {"nvram": f"/to/nvram-{point.id}-web_VARS.fd"}
