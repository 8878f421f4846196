"""Builders shared by the unit tests of the store (no libvirt): a source image, stored
layers and restore points of one domain, the documents of the format tests, and the
paths and entries the hostile-store and verify tests tamper with.

Their fixtures (``store``, ``source``, ``state_dir``) are in tests/unit/conftest.py."""
import dataclasses
import os
import uuid

from fibackup.fsutil import file_identity
from fibackup.model.points import PointDisk, PointLayer, RestorePoint
from fibackup.store import format as fmt
from fibackup.store.backend import DirectoryBackend
from fibackup.store.v3.codec import Compression
from fibackup.store.v3.objects import ChunkStore
from fibackup.store.v3.settings import StoreSettings

MiB = 1024 * 1024
UUID = "6f1c2a3b-4d5e-4f60-8172-93a4b5c6d7e8"
OTHER_UUID = "00000000-1111-4222-8333-444455556666"
SOURCE_SIZE = 12 * MiB

BASE = "20260101-000000-vda-000-aaaaaa"
TOP = "20260102-000000-vda-001-bbbbbb"

ORIGIN = "/backup/domains/x/layers/some-record.json"
FORMAT_UUID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"    # the domain of sample_point()


# -- a domain's stored layers and points --------------------------------------------------

def make_source(path, patches=((0, b"header"), (5 * MiB + 77, b"data" * 1000),
                               (SOURCE_SIZE - 8, b"trailer!"))):
    with open(path, "wb") as handle:
        handle.truncate(SOURCE_SIZE)
        for offset, data in patches:
            handle.seek(offset)
            handle.write(data)
    return str(path)


def store_layer(store, source, layer_id="20260101-000000-vda-000-aaaaaa", parent=None,
                image_format="raw"):
    return store.store_layer(UUID, layer_id, source, image_format, virtual_size=SOURCE_SIZE,
                             parent=parent, disk="vda", identity=file_identity(source))


def make_point(layers, seq=1, point_id="20260101-000000"):
    point_layers = tuple(
        PointLayer(id=layer.id, image_format=layer.image_format, size=layer.size,
                   virtual_size=layer.virtual_size, digest=layer.digest, new=True,
                   data_bytes=layer.data_bytes)
        for layer in layers)
    return RestorePoint(id=point_id, seq=seq, time="2026-01-01T00:00:00Z", domain_name="web",
                        domain_uuid=UUID, host="h",
                        disks={"vda": PointDisk("vda", SOURCE_SIZE, point_layers, "/img/d")},
                        domain_xml="<domain><name>web</name></domain>")


def all_files(root):
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            yield os.path.join(directory, name), True
        for name in files:
            yield os.path.join(directory, name), False


def write_stray(path, data):
    """A file fibackup did not write (damaged, half-written or foreign)."""
    with open(path, "wb") as handle:
        handle.write(data)


def flip_byte(path, offset):
    os.chmod(path, 0o600)
    with open(path, "r+b") as handle:
        handle.seek(offset)
        value = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([value[0] ^ 0x01]))


def foreign_layer(store, source):
    """A base layer stored for another domain (OTHER_UUID)."""
    return store.store_layer(OTHER_UUID, BASE, source, "raw", virtual_size=SOURCE_SIZE,
                             parent=None, disk="vda", identity=file_identity(source))


# -- paths and entries a test tampers with -------------------------------------------------

def record_path(store, layer_id):
    return os.path.join(store.domain_dir(UUID), "layers", f"{layer_id}.json")


def manifest_path(store, seq=1, uuid=UUID):
    return os.path.join(store.domain_dir(uuid), "points", f"{seq:08d}.json")


def with_entries(point, *entries, target="vda"):
    """``point`` with other manifest entries for one disk (the disk sized as its top)."""
    disk = dataclasses.replace(point.disks[target], layers=entries,
                               virtual_size=entries[-1].virtual_size)
    return dataclasses.replace(point, disks={**point.disks, target: disk})


# -- documents of the format tests -------------------------------------------------------

def sample_point() -> RestorePoint:
    layers = (
        PointLayer(id="L1", image_format="raw", size=100, virtual_size=1 << 30, digest="1" * 32,
                   new=False, data_bytes=50),
        PointLayer(id="L2", image_format="qcow2", size=200, virtual_size=1 << 30, digest="2" * 32,
                   new=True, data_bytes=70),
    )
    return RestorePoint(
        id="20260101-000000", seq=3, time="2026-01-01T00:00:00Z", domain_name="web",
        domain_uuid=FORMAT_UUID, host="h",
        disks={"vda": PointDisk("vda", 1 << 30, layers, source_path="/img/web.qcow2"),
               "vdb": PointDisk("vdb", 1 << 30, layers[:1])},
        domain_xml="<domain><name>web & co</name></domain>", quiesced=True,
        skipped_disks=("hdc",))


def via_bytes(document):
    return fmt.loads(fmt.dumps(document), ORIGIN)


def point_doc():
    return via_bytes(fmt.point_to_dict(sample_point()))


# -- format 3 ------------------------------------------------------------------------------

CHUNK3 = 64 * 1024
"""The chunk size of the format-3 unit tests (the smallest a marker allows)."""


def chunk_store(root, encrypted=False, compression="zstd:3", passphrase=b"pw"):
    """A new format-3 ChunkStore in the directory ``root`` (an encrypted one has its
    first key and is unlocked; use the ``fast_scrypt`` fixture)."""
    os.makedirs(root, exist_ok=True)
    settings = StoreSettings(chunk_size=CHUNK3, compression=Compression.parse(compression),
                             encrypted=encrypted)
    chunks = ChunkStore(DirectoryBackend(str(root)), str(uuid.uuid4()), settings)
    if encrypted:
        chunks.add_key(passphrase)
        chunks.unlock_with(passphrase)
    return chunks


def make_view(path, size, patches):
    """A sparse file of ``size`` bytes holding ``patches`` ((offset, bytes)...); its bytes."""
    data = bytearray(size)
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset, chunk in patches:
            handle.seek(offset)
            handle.write(chunk)
            data[offset:offset + len(chunk)] = chunk
    return bytes(data)
