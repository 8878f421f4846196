"""Format-3 pieces without a store: disk indexes, the chunk codec, keys and chunk ids,
sealing, marker settings (fibackup.store.v3).  The directory store, ingest and the
collision of the fast checksum are in test_store3_dir.py."""
import base64
import hashlib
import json
import os
import struct
import uuid

import pytest
import zstandard

from fibackup.errors import CorruptStoreError, IntegrityError, UsageError
from fibackup.store.v3 import keys
from fibackup.store.v3.codec import FLAG_SEALED, FLAG_ZSTD, MAGIC, ChunkCodec, Compression
from fibackup.store.v3.index import DiskIndex, chunk_numbers
from fibackup.store.v3.keys import ChunkIds, Sealer, StoreKeys
from fibackup.store.v3.settings import StoreSettings, parse_size
from tests.storelab import CHUNK3

CS = CHUNK3
STORE = "6f1c2a3b-4d5e-4f60-8172-93a4b5c6d7e8"
PASS = b"correct horse battery staple"


def some_id(seed):
    return hashlib.sha256(str(seed).encode()).digest()


def store_keys(master=None, store_id=STORE):
    return StoreKeys.derive(master if master is not None else os.urandom(32), store_id)


def codec(sealed, compression="zstd:3", chunk_size=CS, keys_=None):
    if sealed and keys_ is None:
        keys_ = store_keys()
    return ChunkCodec(keys_ if sealed else None, Compression.parse(compression), chunk_size)


def compressible(size=CS):
    return (b"the quick brown fox jumps over the lazy dog %d\n" * (size // 40 + 1))[:size]


def flipped(blob, offset, mask=0xFF):
    changed = bytearray(blob)
    changed[offset] ^= mask
    return bytes(changed)


# -- indexes -------------------------------------------------------------------------------

def raw_index(virtual_size, chunk_size, entries, count=None, magic=b"FBI3"):
    """Index bytes written by hand (so that a test can write what encode() never would)."""
    header = struct.pack("<4sQIQ", magic, virtual_size, chunk_size,
                         len(entries) if count is None else count)
    return header + b"".join(struct.pack("<Q32s", number, chunk_id)
                             for number, chunk_id in entries)


@pytest.mark.parametrize("virtual_size, numbers", [
    (0, []),
    (CS, []),
    (CS, [0]),
    (10 * CS + 123, [0, 3, 10]),                 # the last chunk is short and listed
    (1 << 40, [0, (1 << 40) // CS - 1]),         # a 1 TiB disk, first and last chunk
])
def test_index_round_trips(virtual_size, numbers):
    index = DiskIndex(virtual_size, CS, {number: some_id(number) for number in numbers})
    data = index.encode()
    assert len(data) == 24 + 40 * len(numbers)
    again = DiskIndex.decode(data, "index")
    assert again == index
    assert list(again.items()) == [(number, some_id(number)) for number in numbers]


def test_index_encoding_does_not_depend_on_insertion_order():
    forward = DiskIndex(8 * CS, CS, {1: some_id(1), 5: some_id(5), 7: some_id(7)})
    backward = DiskIndex(8 * CS, CS, {7: some_id(7), 5: some_id(5), 1: some_id(1)})
    assert forward.encode() == backward.encode()


def test_index_sizes_count_the_short_last_chunk():
    index = DiskIndex(2 * CS + 10, CS, {0: some_id(0), 2: some_id(2)})
    assert index.chunk_count == 3
    assert [index.length(n) for n in range(3)] == [CS, CS, 10]
    assert index.data_bytes == CS + 10
    assert index.ids() == {some_id(0), some_id(2)}
    assert DiskIndex(2 * CS, CS).chunk_count == 2 and DiskIndex(0, CS).chunk_count == 0


def test_decode_refuses_every_truncation_and_any_extra_byte():
    data = DiskIndex(4 * CS, CS, {0: some_id(0), 2: some_id(2), 3: some_id(3)}).encode()
    for cut in range(len(data)):
        with pytest.raises(CorruptStoreError):
            DiskIndex.decode(data[:cut], "index")
    with pytest.raises(CorruptStoreError):
        DiskIndex.decode(data + b"\0", "index")


@pytest.mark.parametrize("data", [
    raw_index(4 * CS, CS, [(2, some_id(2)), (1, some_id(1))]),              # out of order
    raw_index(4 * CS, CS, [(1, some_id(1)), (1, some_id(9))]),              # duplicate
    raw_index(4 * CS, CS, [(4, some_id(4))]),                               # beyond the disk
    raw_index(2 * CS + 1, CS, [(0, some_id(0)), (3, some_id(3))]),          # past the short last
    raw_index(0, CS, [(0, some_id(0))]),                                    # an empty disk
    raw_index(4 * CS, CS, [(1 << 63, some_id(0))]),
    raw_index(4 * CS, CS, [(0, some_id(0))], count=2),                      # count lies
    raw_index(4 * CS, CS, [(0, some_id(0)), (1, some_id(1))], count=1),
    raw_index(4 * CS, CS, [], count=1 << 60),
    raw_index(4 * CS, CS, [(0, some_id(0))], magic=b"FBI2"),                # bad magic
    raw_index(4 * CS, CS, [(0, some_id(0))], magic=b"FBC3"),                # a chunk's magic
    raw_index(4 * CS, 0, []),                                               # chunk size 0
], ids=["out-of-order", "duplicate", "beyond", "past-short-last", "empty-disk", "huge-number",
        "count-more", "count-less", "count-absurd", "magic-v2", "magic-chunk", "chunk-size-0"])
def test_decode_refuses_hostile_indexes(data):
    with pytest.raises(CorruptStoreError):
        DiskIndex.decode(data, "index")


def test_decode_takes_the_short_last_chunk():
    index = DiskIndex.decode(raw_index(2 * CS + 1, CS, [(2, some_id(2))]), "index")
    assert index.chunks == {2: some_id(2)} and index.length(2) == 1


def test_replaced_adds_replaces_and_removes_without_changing_the_original():
    original = DiskIndex(4 * CS + 7, CS, {0: some_id(0), 2: some_id(2)})
    changed = original.replaced({0: some_id(10), 1: some_id(1), 2: None, 3: None, 4: some_id(4)})
    assert changed.chunks == {0: some_id(10), 1: some_id(1), 4: some_id(4)}
    assert (changed.virtual_size, changed.chunk_size) == (4 * CS + 7, CS)
    assert original.chunks == {0: some_id(0), 2: some_id(2)}
    assert original.replaced({}) == original
    assert DiskIndex.decode(changed.encode(), "index") == changed


@pytest.mark.parametrize("number", [-1, 5, 1 << 40])
def test_replaced_refuses_numbers_outside_the_disk(number):
    with pytest.raises(ValueError):
        DiskIndex(4 * CS + 7, CS).replaced({number: some_id(0)})
    with pytest.raises(ValueError):
        DiskIndex(4 * CS + 7, CS).replaced({number: None})


@pytest.mark.parametrize("extents, virtual_size, expected", [
    ([(0, 1)], 4 * CS, {0}),
    ([(CS - 1, 1)], 4 * CS, {0}),
    ([(CS - 1, 2)], 4 * CS, {0, 1}),                       # crosses one boundary
    ([(CS, CS)], 4 * CS, {1}),                             # exactly one chunk
    ([(CS, CS + 1)], 4 * CS, {1, 2}),
    ([(1, 3 * CS)], 4 * CS, {0, 1, 2, 3}),
    ([(0, 4 * CS)], 4 * CS, {0, 1, 2, 3}),
    ([(0, 0), (CS, -5)], 4 * CS, set()),                   # empty ranges touch nothing
    ([(0, 1), (CS // 2, CS), (3 * CS, 1)], 4 * CS, {0, 1, 3}),   # overlapping: their union
    ([(2 * CS + 9, 1)], 2 * CS + 10, {2}),                 # the short last chunk
    ([(2 * CS, 100 * CS)], 2 * CS + 10, {2}),              # a range past the end is cut
    ([(CS, 1 << 50)], 2 * CS + 10, {1, 2}),
    ([(5 * CS, CS)], 2 * CS + 10, set()),                  # wholly past the end
    ([], 4 * CS, set()),
])
def test_chunk_numbers(extents, virtual_size, expected):
    assert chunk_numbers(extents, CS, virtual_size) == expected


# -- the chunk codec -----------------------------------------------------------------------

def encoded(chunk_codec, data):
    chunk_id = chunk_codec.ids.of(data)
    return chunk_id, chunk_codec.encode(chunk_id, data)


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
@pytest.mark.parametrize("kind", ["compressible", "incompressible", "short", "big-random",
                                  "no-compression"])
def test_codec_round_trips(sealed, kind):
    chunk_size = CS
    compression = "zstd:3"
    if kind == "compressible":
        data = compressible()
    elif kind == "incompressible":
        data = os.urandom(CS)
    elif kind == "short":                       # a last chunk: shorter than the chunk size
        data = compressible(1000)
    elif kind == "big-random":                  # big enough that only a sample is tried
        chunk_size = 1024 * 1024
        data = os.urandom(chunk_size)
    else:
        data, compression = compressible(), "none"
    chunk_codec = codec(sealed, compression, chunk_size)
    chunk_id, blob = encoded(chunk_codec, data)
    assert blob[:4] == MAGIC
    flags = blob[4]
    squeezed = kind in ("compressible", "short")
    assert bool(flags & FLAG_ZSTD) == squeezed
    assert bool(flags & FLAG_SEALED) == sealed
    assert flags & ~(FLAG_ZSTD | FLAG_SEALED) == 0
    if squeezed:
        assert len(blob) < len(data) // 4
    elif not sealed:
        assert blob == MAGIC + bytes([0]) + data          # stored raw, as it is
    else:
        assert len(blob) == 5 + 12 + len(data) + 16       # raw, sealed: nonce and tag
        assert data[:64] not in blob
    assert chunk_codec.decode(chunk_id, blob, "chunk") == data
    assert chunk_codec.decode(chunk_id, blob, "chunk", length=len(data)) == data


def test_sealing_the_same_chunk_twice_gives_other_bytes():
    chunk_codec = codec(True)
    data = compressible()
    chunk_id = chunk_codec.ids.of(data)
    first, second = chunk_codec.encode(chunk_id, data), chunk_codec.encode(chunk_id, data)
    assert first != second                               # a fresh nonce each time
    assert chunk_codec.decode(chunk_id, first, "a") == chunk_codec.decode(chunk_id, second, "b")


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
@pytest.mark.parametrize("data", [compressible(2000), os.urandom(2000)],
                         ids=["compressed", "raw"])
def test_decode_refuses_a_changed_byte_anywhere(sealed, data):
    chunk_codec = codec(sealed)
    chunk_id, blob = encoded(chunk_codec, data)
    for offset in range(len(blob)):
        with pytest.raises(IntegrityError):
            chunk_codec.decode(chunk_id, flipped(blob, offset), "chunk")


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
def test_decode_never_returns_other_data_whatever_bit_flips(sealed):
    """Sealed: every flipped bit is refused.  Plain: a bit zstd ignores (an unused bit of
    its frame header) may be flipped, but what comes back is still exactly the chunk."""
    chunk_codec = codec(sealed)
    data = compressible(3000)
    chunk_id, blob = encoded(chunk_codec, data)
    accepted = []
    for offset in range(len(blob)):
        for bit in range(8):
            try:
                back = chunk_codec.decode(chunk_id, flipped(blob, offset, 1 << bit), "chunk")
            except IntegrityError:
                continue
            assert back == data
            accepted.append((offset, bit))
    assert not sealed or not accepted
    assert len(accepted) <= 8


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
@pytest.mark.parametrize("data", [compressible(), os.urandom(CS)], ids=["compressed", "raw"])
def test_decode_refuses_a_truncated_object(sealed, data):
    chunk_codec = codec(sealed)
    chunk_id, blob = encoded(chunk_codec, data)
    cuts = sorted(set(range(0, 40)) | set(range(len(blob) - 40, len(blob))))
    for cut in cuts:
        with pytest.raises(IntegrityError):
            chunk_codec.decode(chunk_id, blob[:cut], "chunk")


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
def test_decode_refuses_a_chunk_under_another_chunks_id(sealed):
    chunk_codec = codec(sealed)
    id_a, blob_a = encoded(chunk_codec, compressible())
    id_b, blob_b = encoded(chunk_codec, os.urandom(CS))
    for chunk_id, blob in ((id_b, blob_a), (id_a, blob_b)):
        with pytest.raises(IntegrityError):
            chunk_codec.decode(chunk_id, blob, "chunk")


def test_decode_refuses_a_chunk_of_another_store():
    data = compressible()
    ours, theirs = codec(True), codec(True)
    chunk_id, blob = encoded(theirs, data)
    with pytest.raises(IntegrityError):
        ours.decode(chunk_id, blob, "chunk")
    with pytest.raises(IntegrityError):
        ours.decode(ours.ids.of(data), blob, "chunk")


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
def test_decode_refuses_another_length(sealed):
    chunk_codec = codec(sealed)
    data = compressible()
    chunk_id, blob = encoded(chunk_codec, data)
    for length in (0, len(data) - 1, len(data) + 1):
        with pytest.raises(IntegrityError):
            chunk_codec.decode(chunk_id, blob, "chunk", length=length)


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
@pytest.mark.parametrize("flags", [0x04, 0x80, 0xFF, FLAG_ZSTD | 0x08])
def test_decode_refuses_flags_this_store_does_not_write(sealed, flags):
    chunk_codec = codec(sealed)
    chunk_id, blob = encoded(chunk_codec, compressible())
    with pytest.raises(IntegrityError, match="flags"):
        chunk_codec.decode(chunk_id, blob[:4] + bytes([flags | (blob[4] & FLAG_SEALED)])
                           + blob[5:], "chunk")


def test_plain_and_sealed_stores_refuse_each_others_chunks():
    plain, sealed = codec(False), codec(True)
    data = compressible()
    chunk_id, plain_blob = encoded(plain, data)
    with pytest.raises(IntegrityError, match="flags"):
        sealed.decode(sealed.ids.of(data), plain_blob, "chunk")
    sealed_id, sealed_blob = encoded(sealed, data)
    with pytest.raises(IntegrityError, match="flags"):
        plain.decode(sealed_id, sealed_blob, "chunk")
    # the sealed bit cleared by hand: the plain reading finds no chunk of that id
    unsealed = sealed_blob[:4] + bytes([sealed_blob[4] & ~FLAG_SEALED]) + sealed_blob[5:]
    with pytest.raises(IntegrityError):
        plain.decode(sealed_id, unsealed, "chunk")
    with pytest.raises(IntegrityError):
        plain.decode(chunk_id, unsealed, "chunk")


@pytest.mark.parametrize("blob", [b"", b"FBC", b"FBC2\x01abc", b"XXXX\x00" + bytes(100),
                                  b"\x28\xb5\x2f\xfd" + bytes(20)])
def test_decode_refuses_what_is_no_chunk(blob):
    chunk_codec = codec(False)
    with pytest.raises(IntegrityError):
        chunk_codec.decode(some_id(0), blob, "chunk")


def zstd_object(chunk_codec, keys_, chunk_id, frame):
    """A chunk object holding ``frame`` as its payload, sealed as the codec would."""
    flags = FLAG_ZSTD | (FLAG_SEALED if keys_ is not None else 0)
    header = MAGIC + bytes([flags])
    if keys_ is None:
        return header + frame
    return header + Sealer(keys_).seal(frame, header + chunk_id)


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
@pytest.mark.parametrize("case", ["over-chunk", "no-content-size", "not-zstd", "smaller-codec"])
def test_decode_refuses_zstd_frames_that_would_overflow_a_chunk(sealed, case):
    keys_ = store_keys() if sealed else None
    chunk_codec = codec(sealed, keys_=keys_)
    big = bytes(CS + 1)                                   # one byte more than a chunk
    if case == "over-chunk":
        data = big
        frame = zstandard.ZstdCompressor(write_content_size=True).compress(big)
    elif case == "no-content-size":
        data = compressible()
        frame = zstandard.ZstdCompressor(write_content_size=False).compress(data)
    elif case == "not-zstd":
        data = compressible()
        frame = os.urandom(200)
    else:                                                # a codec of smaller chunks reads it
        data = compressible()
        frame = zstandard.ZstdCompressor(write_content_size=True).compress(data)
        chunk_codec = codec(sealed, chunk_size=CS // 2, keys_=keys_)
    chunk_id = chunk_codec.ids.of(data)
    with pytest.raises(IntegrityError):
        chunk_codec.decode(chunk_id, zstd_object(chunk_codec, keys_, chunk_id, frame), "chunk")


@pytest.mark.parametrize("spec, level", [("zstd", 2), ("ZSTD:1", 1), (" zstd:19 ", 19),
                                         ("none", None), ("zstd:07", 7)])
def test_compression_specs(spec, level):
    assert Compression.parse(spec).level == level
    assert Compression.parse(Compression.parse(spec).spec) == Compression.parse(spec)


@pytest.mark.parametrize("spec", ["zstd:0", "zstd:20", "zstd:-1", "gzip", "zstd:", "", "zstd:3x"])
def test_compression_specs_refused(spec):
    with pytest.raises(UsageError):
        Compression.parse(spec)


# -- keys and chunk ids --------------------------------------------------------------------

def test_plain_ids_are_sha256():
    ids = ChunkIds(None)
    assert not ids.keyed and ids.algorithm == "sha256"
    assert ids.of(b"abc") == hashlib.sha256(b"abc").digest()
    assert ids.of(memoryview(b"abc")) == ids.of(b"abc")


def test_keyed_ids_depend_on_the_master_key_and_the_store():
    master = os.urandom(32)
    data = compressible()
    ours = ChunkIds(store_keys(master))
    assert ours.keyed and ours.algorithm == "hmac-sha256"
    assert ours.of(data) == ChunkIds(store_keys(master)).of(data)        # same store, same id
    assert len(ours.of(data)) == 32
    assert ours.of(data) != hashlib.sha256(data).digest()
    assert ours.of(data) != ChunkIds(store_keys(os.urandom(32))).of(data)
    assert ours.of(data) != ChunkIds(store_keys(master, str(uuid.uuid4()))).of(data)
    assert ours.of(data) != ours.of(data[:-1])


def test_derived_keys_are_distinct():
    derived = store_keys(bytes(32))
    assert derived.id_key != derived.data_key
    assert bytes(32) not in (derived.id_key, derived.data_key)
    assert store_keys(bytes(32)) == derived


@pytest.fixture
def wrapped(fast_scrypt):
    master = keys.new_master_key()
    return master, keys.wrap(master, PASS, STORE, "k1", "host", "2026-01-01T00:00:00Z")


def test_wrap_and_unwrap_round_trip(wrapped):
    master, document = wrapped
    assert len(master) == 32
    assert keys.unwrap(document, PASS, STORE, "key") == master
    assert keys.unwrap(json.loads(json.dumps(document)), PASS, STORE, "key") == master
    text = json.dumps(document)
    for form in (master.hex(), base64.b64encode(master).decode(), PASS.decode()):
        assert form not in text
    assert (document["kind"], document["version"], document["cipher"], document["kdf"]["name"]
            ) == ("fibackup-key", 3, "aes-256-gcm", "scrypt")


def test_the_default_scrypt_cost_is_stored_and_unwraps():
    master = keys.new_master_key()
    document = keys.wrap(master, PASS, STORE, "k1", "host", "now")
    assert (document["kdf"]["n"], document["kdf"]["r"], document["kdf"]["p"]) == (2 ** 15, 8, 1)
    assert keys.unwrap(document, PASS, STORE, "key") == master


@pytest.mark.parametrize("passphrase", [b"wrong", PASS + b" ", PASS.upper(), b""])
def test_a_wrong_passphrase_unwraps_nothing(wrapped, passphrase):
    assert keys.unwrap(wrapped[1], passphrase, STORE, "key") is None


def test_a_key_document_opens_only_for_its_own_store_and_key_id(wrapped):
    master, document = wrapped
    assert keys.unwrap(document, PASS, str(uuid.uuid4()), "key") is None
    assert keys.unwrap({**document, "id": "k2"}, PASS, STORE, "key") is None
    other = keys.wrap(master, PASS, STORE, "k2", "host", "now")
    for field in ("nonce", "wrapped"):          # parts of another copy of the same key
        assert keys.unwrap({**document, field: other[field]}, PASS, STORE, "key") is None


def test_a_wrapped_key_of_the_wrong_length_is_refused(fast_scrypt):
    document = keys.wrap(bytes(16), PASS, STORE, "k1", "host", "now")
    with pytest.raises(CorruptStoreError, match="length"):
        keys.unwrap(document, PASS, STORE, "key")


def kdf_with(document, **changes):
    return {**document, "kdf": {**document["kdf"], **changes}}


@pytest.mark.parametrize("changes", [
    {"n": 2 ** 23}, {"n": 2 ** 40}, {"n": 1}, {"n": 0}, {"n": -1024},
    {"n": 3}, {"n": 2 ** 15 + 1},                      # not a power of two
    {"n": 2 ** 22, "r": 32},                           # 16 GiB: r counts in the memory
    {"n": 2 ** 21, "r": 17},
    {"r": 0}, {"r": 33}, {"p": 0}, {"p": 17},
    {"n": True}, {"n": "1024"}, {"n": 1024.0}, {"r": None}, {"p": [1]},
], ids=lambda changes: ",".join(f"{k}={v!r}" for k, v in changes.items()))
def test_absurd_scrypt_parameters_are_refused_before_scrypt_runs(wrapped, monkeypatch, changes):
    def no_scrypt(*args):
        raise AssertionError("scrypt ran")
    monkeypatch.setattr(keys, "_kek", no_scrypt)
    with pytest.raises(CorruptStoreError, match="scrypt parameters"):
        keys.unwrap(kdf_with(wrapped[1], **changes), PASS, STORE, "key")


@pytest.mark.parametrize("mangle", [
    lambda d: {**d, "kind": "fibackup-store"},
    lambda d: {**d, "version": 2},
    lambda d: {**d, "cipher": "chacha20-poly1305"},
    lambda d: {**d, "kdf": "scrypt"},
    lambda d: kdf_with(d, name="argon2id"),
    lambda d: {k: v for k, v in d.items() if k != "id"},
    lambda d: {**d, "id": 7},
    lambda d: kdf_with(d, salt="not base64!"),
    lambda d: kdf_with(d, salt=None),
    lambda d: {**d, "nonce": "é"},
    lambda d: {k: v for k, v in d.items() if k != "wrapped"},
], ids=["kind", "version", "cipher", "kdf-type", "kdf-name", "no-id", "id-type", "salt",
        "no-salt", "nonce", "no-wrapped"])
def test_malformed_key_documents_are_refused(wrapped, mangle):
    with pytest.raises(CorruptStoreError):
        keys.unwrap(mangle(wrapped[1]), PASS, STORE, "key")


def test_a_nonce_of_another_length_unwraps_nothing(wrapped):
    document = {**wrapped[1], "nonce": base64.b64encode(bytes(5)).decode()}
    assert keys.unwrap(document, PASS, STORE, "key") is None


def test_sealed_data_opens_only_with_its_own_associated_data_and_key():
    derived = store_keys()
    sealer = Sealer(derived)
    blob = sealer.seal(b"secret document", b"domains/a.json")
    assert b"secret" not in blob
    assert sealer.open(blob, b"domains/a.json", "doc") == b"secret document"
    assert Sealer(store_keys(bytes(32))).seal(b"x", b"a") != Sealer(store_keys(bytes(32))).seal(
        b"x", b"a")
    for aad in (b"domains/b.json", b"", b"domains/a.json "):
        with pytest.raises(CorruptStoreError):
            sealer.open(blob, aad, "doc")
    with pytest.raises(CorruptStoreError):
        Sealer(store_keys()).open(blob, b"domains/a.json", "doc")
    for cut in (0, 10, 27, len(blob) - 1):
        with pytest.raises(CorruptStoreError):
            sealer.open(blob[:cut], b"domains/a.json", "doc")


# -- marker settings -----------------------------------------------------------------------

@pytest.mark.parametrize("settings", [
    StoreSettings(), StoreSettings(encrypted=True),
    StoreSettings(chunk_size=CS, compression=Compression(None)),
    StoreSettings(chunk_size=64 * 1024 * 1024, compression=Compression(19), encrypted=True),
])
def test_settings_round_trip_through_the_marker(settings):
    marker = settings.to_marker()
    assert StoreSettings.from_marker(json.loads(json.dumps(marker)), "marker") == settings
    assert marker["chunk_ids"] == ("hmac-sha256" if settings.encrypted else "sha256")


@pytest.mark.parametrize("changes", [
    {"chunk_size": 3 * CS}, {"chunk_size": CS // 2}, {"chunk_size": 128 * 1024 * 1024},
    {"chunk_size": "4M"}, {"chunk_size": True}, {"compression": "lz4"}, {"compression": 3},
    {"encryption": {"cipher": "aes-128-gcm", "kdf": "scrypt"}}, {"encryption": "yes"},
    {"chunk_ids": "sha256"},                            # an encrypted store must use HMAC ids
    {"encryption": None},                               # ... and a plain one SHA-256
])
def test_settings_refuse_what_they_do_not_know(changes):
    marker = {**StoreSettings(encrypted=True).to_marker(), **changes}
    with pytest.raises(CorruptStoreError):
        StoreSettings.from_marker(marker, "marker")


@pytest.mark.parametrize("text, value", [("4M", 4 << 20), ("1MiB", 1 << 20), ("64k", 65536),
                                         ("65536", 65536), ("64MB", 64 << 20)])
def test_chunk_sizes_as_users_write_them(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["3M", "32K", "128M", "1G", "4 M", "four", ""])
def test_chunk_sizes_refused(text):
    with pytest.raises(UsageError):
        parse_size(text)
