"""Sparse-aware hashing copy and verification (fibackup.store.chunks)."""
import functools
import os

import pytest
import xxhash

from fibackup.store.chunks import CHUNK_SIZE, Chunk, ChunkList, file_digest, scan_file

MiB = 1024 * 1024
SIZE = 64 * MiB

# (offset, bytes): one at the start, one not chunk aligned and spanning a chunk
# boundary, one in the middle, one ending exactly at the end of the file.
PATCHES = [
    (0, b"boot sector" * 10),
    (5 * MiB + 123, os.urandom(8192)),
    (2 * CHUNK_SIZE - 100, b"X" * 200),
    (SIZE - 4000, os.urandom(4000)),
]


def make_sparse(path, size=SIZE, patches=PATCHES):
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset, data in patches:
            handle.seek(offset)
            handle.write(data)
    return path


@functools.lru_cache(maxsize=4)
def expected_bytes(size=SIZE, patches=tuple(PATCHES)):
    data = bytearray(size)
    for offset, chunk in patches:
        data[offset:offset + len(chunk)] = chunk
    return bytes(data)


def read(path):
    with open(path, "rb") as handle:
        return handle.read()


def allocated(path):
    return os.stat(path).st_blocks * 512


def flip_byte(path, offset):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        value = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([value[0] ^ 0xFF]))


@pytest.fixture
def sparse(tmp_path):
    return make_sparse(str(tmp_path / "src.img"))


@pytest.fixture
def listed(sparse):
    return scan_file(sparse).chunks


def test_copy_is_byte_identical(sparse, tmp_path):
    dst = str(tmp_path / "dst.img")
    result = scan_file(sparse, dst)
    assert result.ok
    assert os.path.getsize(dst) == SIZE
    assert read(dst) == expected_bytes()


def test_copy_keeps_holes(sparse, tmp_path):
    dst = str(tmp_path / "dst.img")
    scan_file(sparse, dst)
    assert allocated(dst) < 1 * MiB


def test_copy_result_equals_plain_scan(sparse, tmp_path):
    copied = scan_file(sparse, str(tmp_path / "dst.img")).chunks
    assert copied == scan_file(sparse).chunks


def test_copy_destination_is_private(sparse, tmp_path):
    dst = str(tmp_path / "dst.img")
    scan_file(sparse, dst)
    assert os.stat(dst).st_mode & 0o077 == 0


def test_only_chunks_with_data_are_listed(listed):
    assert listed.size == SIZE
    assert listed.chunk_size == CHUNK_SIZE
    offsets = [chunk.offset for chunk in listed.chunks]
    expected = sorted({(offset + delta) // CHUNK_SIZE * CHUNK_SIZE
                       for offset, data in PATCHES for delta in (0, len(data) - 1)})
    assert offsets == expected
    assert all(chunk.length == CHUNK_SIZE for chunk in listed.chunks)
    assert listed.data_bytes == len(expected) * CHUNK_SIZE


def test_chunk_hex_is_xxh3_128_of_its_bytes(listed):
    data = expected_bytes()
    for chunk in listed.chunks:
        piece = data[chunk.offset:chunk.offset + chunk.length]
        assert chunk.digest == xxhash.xxh3_128(piece).hexdigest()


def test_file_digest_as_documented(listed):
    text = "".join(f"{c.offset} {c.length} {c.digest}\n" for c in listed.chunks)
    text += f"size {SIZE}\n"
    expected = xxhash.xxh3_128(text.encode()).hexdigest()
    assert listed.digest == expected
    assert file_digest(SIZE, listed.chunks) == expected


def test_digest_depends_on_size():
    assert file_digest(10, ()) != file_digest(11, ())


def test_short_last_chunk(tmp_path):
    size = CHUNK_SIZE + 1000
    patches = ((size - 10, b"0123456789"),)
    path = make_sparse(str(tmp_path / "odd.img"), size, patches)
    chunks = scan_file(path).chunks.chunks
    assert chunks == (Chunk(CHUNK_SIZE, 1000,
                            xxhash.xxh3_128(expected_bytes(size, patches)[CHUNK_SIZE:]).hexdigest()),)


def test_explicit_zeros_list_no_chunk_and_copy_is_sparse(tmp_path):
    src = str(tmp_path / "zeros.img")
    with open(src, "wb") as handle:
        handle.write(bytes(8 * MiB))
        handle.flush()
        os.fsync(handle.fileno())
    dst = str(tmp_path / "copy.img")
    result = scan_file(src, dst)
    assert result.chunks.chunks == ()
    assert result.chunks.data_bytes == 0
    assert os.path.getsize(dst) == 8 * MiB
    assert allocated(dst) == 0
    assert read(dst) == bytes(8 * MiB)


def test_empty_file(tmp_path):
    src = str(tmp_path / "empty.img")
    open(src, "wb").close()
    dst = str(tmp_path / "copy.img")
    result = scan_file(src, dst)
    assert result.ok
    assert result.chunks == ChunkList(0, CHUNK_SIZE, ())
    assert os.path.getsize(dst) == 0


def test_verify_identical_file_is_ok(sparse, listed, tmp_path):
    dst = str(tmp_path / "dst.img")
    scan_file(sparse, dst)
    result = scan_file(dst, expected=listed)
    assert result.ok
    assert result.mismatches == []
    assert not result.size_mismatch


def test_verify_reports_only_the_chunk_of_a_flipped_byte(sparse, listed):
    flip_byte(sparse, 5 * MiB + 200)
    result = scan_file(sparse, expected=listed)
    assert not result.ok
    assert result.mismatches == [CHUNK_SIZE]


def test_verify_goes_on_after_first_damage(sparse, listed):
    flip_byte(sparse, 10)
    flip_byte(sparse, SIZE - 1)
    result = scan_file(sparse, expected=listed)
    assert result.mismatches == [0, SIZE - CHUNK_SIZE]


def test_verify_reports_data_where_list_says_zeros(sparse, listed):
    with open(sparse, "r+b") as handle:
        handle.seek(30 * MiB + 7)
        handle.write(b"intruder")
    result = scan_file(sparse, expected=listed)
    assert result.mismatches == [30 * MiB // CHUNK_SIZE * CHUNK_SIZE]


def test_verify_reports_listed_chunk_that_became_a_hole(sparse, listed, tmp_path):
    # Same size, but the first chunk's data is gone (all holes / zeros).
    holey = make_sparse(str(tmp_path / "holey.img"), SIZE, PATCHES[1:])
    result = scan_file(holey, expected=listed)
    assert result.mismatches == [0]


def test_verify_reports_size_mismatch(sparse, listed):
    with open(sparse, "r+b") as handle:
        handle.truncate(SIZE + 4096)
    result = scan_file(sparse, expected=listed)
    assert result.size_mismatch
    assert not result.ok


def test_copy_with_expected_stops_at_first_mismatch(sparse, listed, tmp_path):
    flip_byte(sparse, 10)
    flip_byte(sparse, SIZE - 1)
    result = scan_file(sparse, str(tmp_path / "dst.img"), expected=listed)
    assert not result.ok
    assert result.mismatches == [0]


def test_copy_with_expected_reports_size_mismatch(sparse, listed, tmp_path):
    with open(sparse, "r+b") as handle:
        handle.truncate(SIZE - CHUNK_SIZE)
    result = scan_file(sparse, str(tmp_path / "dst.img"), expected=listed)
    assert result.size_mismatch
    assert not result.ok


def test_copy_with_matching_expected_is_ok(sparse, listed, tmp_path):
    dst = str(tmp_path / "dst.img")
    result = scan_file(sparse, dst, expected=listed)
    assert result.ok
    assert read(dst) == expected_bytes()


def test_small_chunk_size(sparse, tmp_path):
    small = 64 * 1024
    dst = str(tmp_path / "dst.img")
    result = scan_file(sparse, dst, chunk_size=small)
    listed = result.chunks
    assert listed.chunk_size == small
    data = expected_bytes()
    assert read(dst) == data
    assert all(chunk.offset % small == 0 for chunk in listed.chunks)
    for chunk in listed.chunks:
        piece = data[chunk.offset:chunk.offset + chunk.length]
        assert chunk.digest == xxhash.xxh3_128(piece).hexdigest()
    zeros = bytes(small)
    every = [offset for offset in range(0, SIZE, small) if data[offset:offset + small] != zeros]
    assert [chunk.offset for chunk in listed.chunks] == every
    # A check uses the chunk size of the expected list.
    flip_byte(dst, 5 * MiB + 200)
    assert scan_file(dst, expected=listed).mismatches == [(5 * MiB + 200) // small * small]


def test_existing_destination_is_never_overwritten(sparse, tmp_path):
    dst = tmp_path / "dst.img"
    dst.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        scan_file(sparse, str(dst))
    assert dst.read_bytes() == b"precious"


def test_progress_reports_data_bytes(sparse):
    seen = []
    result = scan_file(sparse, progress=seen.append)
    assert seen
    assert 0 < sum(seen) <= result.chunks.data_bytes
