"""Store JSON documents, read defensively (fibackup.store.format)."""
import copy
import json

import pytest
import xxhash

from fibackup.errors import CorruptStoreError
from fibackup.model.chain import FileIdentity, StoredLayer
from fibackup.model.points import PointDisk, PointLayer, RestorePoint
from fibackup.store import format as fmt
from fibackup.store.chunks import Chunk, ChunkList
from tests.storelab import ORIGIN, sample_point, point_doc, via_bytes

CHUNK = 4 * 1024 * 1024


def hexof(data: bytes) -> str:
    return xxhash.xxh3_128(data).hexdigest()


def sample_record() -> fmt.LayerRecord:
    chunks = ChunkList(size=CHUNK * 2 + 1000, chunk_size=CHUNK, chunks=(
        Chunk(0, CHUNK, hexof(b"a")), Chunk(2 * CHUNK, 1000, hexof(b"b"))))
    layer = StoredLayer(
        id="20260101-000000-vda-001-abcdef", disk="vda", parent="20251231-000000-vda-000-123456",
        image_format="qcow2", size=chunks.size, virtual_size=10 << 30, digest=chunks.digest,
        source=FileIdentity(host="h", path="/img/d.qcow2", dev=1, ino=2, size=chunks.size,
                            mtime_ns=1_700_000_000_123_456_789),
        data_bytes=chunks.data_bytes)
    return fmt.LayerRecord(layer=layer, chunks=chunks, stored_at="2026-01-01T00:00:00Z")


def layer_doc():
    return via_bytes(fmt.layer_record_to_dict(sample_record()))


def refuse_layer(document):
    with pytest.raises(CorruptStoreError) as caught:
        fmt.layer_record_from_dict(document, ORIGIN)
    assert ORIGIN in str(caught.value)
    return str(caught.value)


def refuse_point(document):
    with pytest.raises(CorruptStoreError) as caught:
        fmt.point_from_dict(document, ORIGIN)
    assert ORIGIN in str(caught.value)
    return str(caught.value)


def with_chunks(document, entries):
    """The layer document with another chunk list and the digest that matches it."""
    document = copy.deepcopy(document)
    checksum = document["checksum"]
    checksum["chunks"] = entries
    try:
        chunks = tuple(Chunk(*entry) for entry in entries)
    except TypeError:  # not three fields: the digest cannot be made to match
        return document
    checksum["digest"] = ChunkList(document["size"], checksum["chunk_size"], chunks).digest
    return document


# -- round trips -----------------------------------------------------------------

def test_layer_record_round_trip():
    record = sample_record()
    assert fmt.layer_record_from_dict(layer_doc(), ORIGIN) == record


def test_layer_record_without_parent_round_trip():
    record = sample_record()
    base = fmt.LayerRecord(
        layer=StoredLayer(**{**record.layer.__dict__, "parent": None}),
        chunks=record.chunks, stored_at=record.stored_at)
    assert fmt.layer_record_from_dict(via_bytes(fmt.layer_record_to_dict(base)), ORIGIN) == base


def test_point_round_trip():
    point = sample_point()
    assert fmt.point_from_dict(point_doc(), ORIGIN) == point


def test_point_document_carries_byte_counts():
    document = point_doc()
    assert document["bytes_new"] == 70
    assert document["bytes_total"] == 50 + 70 + 50


def test_dumps_is_utf8_json_with_newline():
    data = fmt.dumps({"name": "é"})
    assert data.endswith(b"\n")
    assert json.loads(data.decode("utf-8")) == {"name": "é"}


# -- hostile documents: common -------------------------------------------------

@pytest.mark.parametrize("data", [
    b"",
    b'{"kind": "fibackup-point", "version"',
    b"\xff\xfe not utf-8",
    b"{'single': 'quotes'}",
])
def test_invalid_json(data):
    with pytest.raises(CorruptStoreError, match="some-record.json"):
        fmt.loads(data, ORIGIN)


@pytest.mark.parametrize("data", [b"[]", b"1", b'"text"', b"null"])
def test_non_object_json(data):
    with pytest.raises(CorruptStoreError, match="some-record.json"):
        fmt.loads(data, ORIGIN)


def test_truncated_real_document():
    data = fmt.dumps(fmt.point_to_dict(sample_point()))
    with pytest.raises(CorruptStoreError, match="some-record.json"):
        fmt.loads(data[: len(data) // 2], ORIGIN)


def test_wrong_kind():
    document = layer_doc()
    document["kind"] = fmt.POINT_KIND
    refuse_layer(document)
    refuse_point(layer_doc())


def test_missing_kind():
    document = point_doc()
    del document["kind"]
    refuse_point(document)


def test_version_2_is_only_for_what_prune_writes():
    document = point_doc()
    document["version"] = 2
    refuse_point(document)                      # a revised manifest has a revision
    document = layer_doc()
    document["version"] = 2
    refuse_layer(document)                      # a version 2 record is a merged layer
    document = point_doc()
    document["revision"] = 1
    refuse_point(document)                      # and a revision needs version 2


@pytest.mark.parametrize("version", [4, 99])
def test_future_version_says_upgrade(version):
    document = point_doc()
    document["version"] = version
    assert "upgrade" in refuse_point(document)
    document = layer_doc()
    document["version"] = version
    assert "upgrade" in refuse_layer(document)


@pytest.mark.parametrize("version", [None, 0, "1"])
def test_bad_version(version):
    document = point_doc()
    document["version"] = version
    refuse_point(document)


# -- hostile documents: layer records -------------------------------------------

@pytest.mark.parametrize("layer_id", [
    "../escape", "../../etc/passwd", "a/b", "/abs", ".hidden", "..", "a..b", "", "x" * 201,
    "with space", "nul\x00byte",
])
def test_layer_id_that_could_name_another_path(layer_id):
    document = layer_doc()
    document["id"] = layer_id
    refuse_layer(document)


@pytest.mark.parametrize("parent", ["../x", "a/b", ".x", 7])
def test_bad_parent_id(parent):
    document = layer_doc()
    document["parent"] = parent
    refuse_layer(document)


@pytest.mark.parametrize("image_format", ["vmdk", "QCOW2", "", "../raw", None])
def test_unknown_image_format(image_format):
    document = layer_doc()
    document["image_format"] = image_format
    refuse_layer(document)


@pytest.mark.parametrize("entry", [
    [CHUNK * 3, 1, "a" * 32],            # beyond the end of the file
    [CHUNK * 2, CHUNK, "a" * 32],        # last chunk longer than the file
    [-1, 10, "a" * 32],                  # negative, not aligned
    [0, 0, "a" * 32],                    # empty chunk
    [0, -5, "a" * 32],                   # negative length
    [0, CHUNK + 1, "a" * 32],            # longer than a chunk
    [1, 10, "a" * 32],                   # not aligned
    [CHUNK // 2, 10, "a" * 32],          # not aligned
])
def test_chunk_entry_outside_the_file_or_unaligned(entry):
    refuse_layer(with_chunks(layer_doc(), [entry]))


@pytest.mark.parametrize("entry", [
    [0, 10, "A" * 32],                   # upper-case hex
    [0, 10, "a" * 31],                   # too short
    [0, 10, "a" * 33],                   # too long
    [0, 10, "g" * 32],                   # not hex
    [0, 10, 12345],                      # not a string
    [0, 10],                             # two fields
    [0, 10, "a" * 32, "extra"],          # four fields
    {"offset": 0},                       # not a list
    [True, 10, "a" * 32],                # bool offset
    [0, True, "a" * 32],                 # bool length
    [0.0, 10, "a" * 32],                 # float offset
    ["0", 10, "a" * 32],                 # string offset
])
def test_malformed_chunk_entry(entry):
    refuse_layer(with_chunks(layer_doc(), [entry]))


def test_digest_not_matching_chunk_list():
    document = layer_doc()
    document["checksum"]["digest"] = "0" * 32
    assert "digest" in refuse_layer(document)


def test_chunk_list_edited_without_digest():
    document = layer_doc()
    document["checksum"]["chunks"][0][2] = "f" * 32
    refuse_layer(document)


def test_size_edited_without_digest():
    document = layer_doc()
    document["size"] += 1
    refuse_layer(document)


def test_unknown_checksum_algorithm():
    document = layer_doc()
    document["checksum"]["algorithm"] = "md5"
    refuse_layer(document)


@pytest.mark.parametrize("key", ["size", "virtual_size"])
def test_bool_where_int_expected_in_layer(key):
    document = layer_doc()
    document[key] = True
    refuse_layer(document)


def test_bool_chunk_size():
    document = layer_doc()
    document["checksum"]["chunk_size"] = True
    refuse_layer(document)


@pytest.mark.parametrize("key", ["dev", "ino", "size", "mtime_ns"])
def test_bool_where_int_expected_in_source_identity(key):
    document = layer_doc()
    document["source"][key] = False
    refuse_layer(document)


@pytest.mark.parametrize("key", ["id", "disk", "size", "virtual_size", "source", "checksum",
                                 "image_format"])
def test_missing_layer_field(key):
    document = layer_doc()
    del document[key]
    refuse_layer(document)


@pytest.mark.parametrize("key, value", [
    ("size", "123"), ("size", 1.5), ("virtual_size", None), ("source", []), ("checksum", "x"),
    ("disk", 3),
])
def test_wrong_type_in_layer(key, value):
    document = layer_doc()
    document[key] = value
    refuse_layer(document)


@pytest.mark.parametrize("transform", ["compression", "encryption"])
@pytest.mark.parametrize("value", ["zstd", "aes-256-gcm", {"algorithm": "x"}, True, 0])
def test_unknown_compression_or_encryption(transform, value):
    document = layer_doc()
    document[transform] = value
    message = refuse_layer(document)
    assert transform in message


def test_negative_aligned_chunk_offset():
    refuse_layer(with_chunks(layer_doc(), [[-CHUNK, 10, "a" * 32]]))


@pytest.mark.parametrize("chunk_size, entries", [
    (0, [[0, 10, "a" * 32]]),
    (0, []),
    (-CHUNK, []),
])
def test_chunk_size_not_positive(chunk_size, entries):
    document = layer_doc()
    document["checksum"]["chunk_size"] = chunk_size
    refuse_layer(with_chunks(document, entries))


# -- hostile documents: restore points ------------------------------------------

@pytest.mark.parametrize("uuid", [
    "not-a-uuid", "", "0A1B2C3D-4E5F-4A6B-8C7D-9E0F1A2B3C4D", "../../etc",
    "0a1b2c3d4e5f4a6b8c7d9e0f1a2b3c4d", "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d/..",
])
def test_point_uuid_not_a_uuid(uuid):
    document = point_doc()
    document["domain"]["uuid"] = uuid
    refuse_point(document)


@pytest.mark.parametrize("point_id", ["../x", "a/b", ".x", ""])
def test_bad_point_id(point_id):
    document = point_doc()
    document["id"] = point_id
    refuse_point(document)


@pytest.mark.parametrize("layer_id", ["../x", "a/b", ".x", "/etc/passwd"])
def test_bad_layer_id_in_point(layer_id):
    document = point_doc()
    document["disks"]["vda"]["layers"][0]["id"] = layer_id
    refuse_point(document)


def test_point_layer_unknown_format():
    document = point_doc()
    document["disks"]["vda"]["layers"][1]["image_format"] = "vmdk"
    refuse_point(document)


def test_bool_seq():
    document = point_doc()
    document["seq"] = True
    refuse_point(document)


@pytest.mark.parametrize("key", ["size", "virtual_size", "data_bytes"])
def test_bool_where_int_expected_in_point_layer(key):
    document = point_doc()
    document["disks"]["vda"]["layers"][0][key] = True
    refuse_point(document)


def test_bool_disk_virtual_size():
    document = point_doc()
    document["disks"]["vdb"]["virtual_size"] = False
    refuse_point(document)


def test_empty_disks():
    document = point_doc()
    document["disks"] = {}
    refuse_point(document)


def test_disk_without_layers():
    document = point_doc()
    document["disks"]["vda"]["layers"] = []
    refuse_point(document)


@pytest.mark.parametrize("mutate", [
    lambda d: d.__setitem__("disks", []),
    lambda d: d["disks"].__setitem__("vda", "string"),
    lambda d: d["disks"]["vda"].__setitem__("layers", {}),
    lambda d: d["disks"]["vda"]["layers"].__setitem__(0, "L1"),
    lambda d: d.__setitem__("domain", "web"),
    lambda d: d["domain"].pop("name"),
    lambda d: d.pop("domain_xml"),
    lambda d: d.pop("time"),
    lambda d: d.__setitem__("seq", "3"),
])
def test_malformed_point(mutate):
    document = point_doc()
    mutate(document)
    refuse_point(document)


def test_disk_target_that_could_name_a_path_is_refused():
    from fibackup.store import format as fmt_module
    from fibackup.errors import CorruptStoreError as Corrupt
    import pytest as _pytest
    layer = PointLayer("a-1", "raw", 1, 1, "0" * 32, True, 1)
    point = RestorePoint("20260101-000000", 1, "2026-01-01T00:00:00Z", "d",
                         "12345678-1234-1234-1234-123456789abc", "h",
                         {"../../escaped": PointDisk("../../escaped", 1, (layer,))}, "<domain/>")
    with _pytest.raises(Corrupt, match="disk target"):
        fmt_module.point_from_dict(fmt_module.point_to_dict(point), "points/00000001.json")
