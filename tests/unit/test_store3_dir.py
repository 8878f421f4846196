"""Format-3 stores in a real directory (tmp_path): chunks and indexes through a
ChunkStore, sealed documents, an encrypted store opened with the right and the wrong
passphrase, ingest()/write_out()/check_view()/check_chunks() on sparse files, and two
different chunks kept apart when the fast checksum collides.  No libvirt, no QEMU."""
import hashlib
import json
import os
import shutil

import pytest
import xxhash

from fibackup.errors import CorruptStoreError, IntegrityError, StoreKeyError
from fibackup.model.points import IndexRef
from fibackup.store import chunks as v1chunks
from fibackup.store.layout import MARKER
from fibackup.store.opening import NewStore
from fibackup.store.repo import BackupStore
from fibackup.store.v3 import files as v3files
from fibackup.store.v3.index import DiskIndex
from fibackup.fsutil import reading_file
from fibackup.store.v3 import ingest as v3ingest
from fibackup.store.v3.ingest import check_chunks, write_out
from fibackup.store.v3.keys import unwrap
from fibackup.store.v3.objects import (CHUNKS, INDEXES, SEALED_MAGIC, SealedBackend,
                                       sealed_backend)
from fibackup.store.v3.settings import StoreSettings
from tests.storelab import CHUNK3, chunk_store, flip_byte, make_view


def ingest(chunks, path, *args, **options):
    """ingest() of a plain file (a raw disk is its own view)."""
    with reading_file(str(path)) as view:
        return v3ingest.ingest(chunks, view, *args, **options)


def check_view(chunks, index, path, numbers):
    with reading_file(str(path)) as view:
        return v3ingest.check_view(chunks, index, view, numbers)

CS = CHUNK3
PASS = b"correct horse battery staple"

pytestmark = pytest.mark.usefixtures("fast_scrypt", "passphrase_sources")


@pytest.fixture(params=["plain", "encrypted"])
def chunks(request, tmp_path):
    return chunk_store(tmp_path / "store", encrypted=request.param == "encrypted", passphrase=PASS)


def object_path(chunks, kind, object_id):
    parts, name = chunks.place(kind, object_id)
    return chunks.backend.path(parts, name)


def stored_files(root):
    return sorted(os.path.relpath(os.path.join(directory, name), root)
                  for directory, _, names in os.walk(root) for name in names)


def read(path):
    with open(path, "rb") as handle:
        return handle.read()


def new_file(path):
    open(path, "xb").close()
    return str(path)


def text_chunk(seed, size=CS):
    return (f"chunk {seed} ".encode() * (size // 8 + 1))[:size]


# -- chunks and indexes in a directory ---------------------------------------------------

def test_chunks_are_stored_once_under_hex_names_and_read_back(chunks):
    data = {seed: text_chunk(seed) for seed in range(3)}
    data[3] = os.urandom(CS)
    ids = {seed: chunks.chunk_id(chunk) for seed, chunk in data.items()}
    for seed, chunk in data.items():
        assert chunks.put_chunk(ids[seed], chunk) > 0
        assert chunks.put_chunk(ids[seed], chunk) == 0                  # already there
    chunks.settle()
    assert sorted(chunks.object_ids(CHUNKS)) == sorted(ids.values())
    for seed, chunk in data.items():
        assert chunks.has(CHUNKS, ids[seed])
        assert chunks.get_chunk(ids[seed], len(chunk)) == chunk
    root = chunks.backend.path((CHUNKS,))
    for fan in os.listdir(root):
        assert len(fan) == 2 and set(fan) <= set("0123456789abcdef")
        for name in os.listdir(os.path.join(root, fan)):
            assert len(name) == 64 and set(name) <= set("0123456789abcdef")
            assert name.startswith(fan)
    if chunks.encrypted:
        assert ids[0] != hashlib.sha256(data[0]).digest()
        for path in stored_files(root):
            assert b"chunk" not in read(os.path.join(root, path))
    else:
        assert ids[0] == hashlib.sha256(data[0]).digest()


def test_a_missing_damaged_or_swapped_chunk_is_refused(chunks):
    first, second = text_chunk(1), os.urandom(CS)
    id_first, id_second = chunks.chunk_id(first), chunks.chunk_id(second)
    chunks.put_chunk(id_first, first)
    chunks.put_chunk(id_second, second)
    chunks.settle()                          # published: now the files are there to damage
    with pytest.raises(IntegrityError, match="missing"):
        chunks.get_chunk(chunks.chunk_id(b"never stored"))
    # chunk 1's object put in chunk 2's place
    second_path = object_path(chunks, CHUNKS, id_second)
    os.unlink(second_path)
    shutil.copyfile(object_path(chunks, CHUNKS, id_first), second_path)
    with pytest.raises(IntegrityError):
        chunks.get_chunk(id_second)
    # a flipped byte in the middle of chunk 1
    first_path = object_path(chunks, CHUNKS, id_first)
    flip_byte(first_path, os.path.getsize(first_path) // 2)
    with pytest.raises(IntegrityError):
        chunks.get_chunk(id_first)


def test_indexes_are_stored_by_their_content(chunks):
    chunk = text_chunk(0)
    chunk_id = chunks.chunk_id(chunk)
    index = DiskIndex(5 * CS + 3, CS, {0: chunk_id, 4: chunk_id})
    index_hex, written = chunks.put_index(index)
    assert written > 0 and len(index_hex) == 64
    assert chunks.put_index(DiskIndex(5 * CS + 3, CS, {4: chunk_id, 0: chunk_id})) == (index_hex, 0)
    assert chunks.get_index(index_hex) == index
    assert chunks.put_index(index.replaced({1: chunk_id}))[0] != index_hex
    assert list(chunks.object_ids(INDEXES)) != [] and list(chunks.object_ids(CHUNKS)) == []
    for bad in ("", "../" + index_hex[3:], index_hex.upper(), index_hex[:-1]):
        with pytest.raises(CorruptStoreError):
            chunks.get_index(bad)
    with pytest.raises(IntegrityError, match="missing"):
        chunks.get_index("0" * 64)


def test_an_index_of_another_chunk_size_is_refused(chunks):
    index_hex, _ = chunks.put_index(DiskIndex(4 * CS, CS // 2, {}))
    with pytest.raises(CorruptStoreError, match="chunks of"):
        chunks.get_index(index_hex)


def test_a_swapped_index_is_refused(chunks):
    one, _ = chunks.put_index(DiskIndex(4 * CS, CS, {}))
    two, _ = chunks.put_index(DiskIndex(8 * CS, CS, {}))
    chunks.settle()
    path_two = object_path(chunks, INDEXES, bytes.fromhex(two))
    os.unlink(path_two)
    shutil.copyfile(object_path(chunks, INDEXES, bytes.fromhex(one)), path_two)
    with pytest.raises(IntegrityError):
        chunks.get_index(two)


# -- the fast checksum forced to collide -------------------------------------------------

class _Colliding:
    """An xxhash hasher that gives every input the same digest."""

    def __init__(self, *args, **kwargs):
        pass

    def update(self, data):
        pass

    def copy(self):
        return self

    def digest(self):
        return bytes(16)

    def hexdigest(self):
        return "0" * 32

    def intdigest(self):
        return 0


@pytest.fixture
def colliding_xxhash(monkeypatch):
    """Every xxhash function (the module fibackup imports, so every user of it: the
    format-1 chunk lists in fibackup.store.chunks too) returns one constant."""
    for name in dir(xxhash):
        if not name.startswith("xxh"):
            continue
        if name.endswith("_intdigest"):
            monkeypatch.setattr(xxhash, name, lambda *args, **kwargs: 0)
        elif name.endswith("_hexdigest"):
            monkeypatch.setattr(xxhash, name, lambda *args, **kwargs: "0" * 32)
        elif name.endswith("_digest"):
            monkeypatch.setattr(xxhash, name, lambda *args, **kwargs: bytes(16))
        else:
            monkeypatch.setattr(xxhash, name, _Colliding)
    assert v1chunks.xxhash.xxh3_128(b"a").hexdigest() == v1chunks.xxhash.xxh3_128(b"b").hexdigest()
    assert xxhash.xxh3_64_intdigest(b"a") == xxhash.xxh3_64_intdigest(b"b")


def test_colliding_fast_checksum_still_stores_two_chunks_as_two(chunks, colliding_xxhash):
    first, second = text_chunk("a"), text_chunk("b")
    id_first, id_second = chunks.chunk_id(first), chunks.chunk_id(second)
    assert id_first != id_second
    assert chunks.put_chunk(id_first, first) > 0
    assert chunks.put_chunk(id_second, second) > 0
    assert sorted(chunks.object_ids(CHUNKS)) == sorted([id_first, id_second])
    assert chunks.get_chunk(id_first, CS) == first
    assert chunks.get_chunk(id_second, CS) == second


def test_colliding_fast_checksum_still_ingests_and_restores_two_chunks_as_two(
        chunks, colliding_xxhash, tmp_path):
    first, second = text_chunk("a"), os.urandom(CS)
    size = 4 * CS
    expected = make_view(tmp_path / "view", size, [(0, first), (CS, second), (3 * CS, first)])
    done = ingest(chunks, str(tmp_path / "view"), DiskIndex(size, CS), range(4))
    assert done.new_chunks == 2
    assert sorted(done.index.chunks) == [0, 1, 3]
    assert done.index.chunks[0] == done.index.chunks[3] != done.index.chunks[1]
    assert len(list(chunks.object_ids(CHUNKS))) == 2
    destination = new_file(tmp_path / "restored")
    write_out(chunks, done.index, destination)
    assert read(destination) == expected


# -- sealed documents ------------------------------------------------------------------

@pytest.fixture
def sealed(tmp_path):
    chunks = chunk_store(tmp_path / "store", encrypted=True, passphrase=PASS)
    backend = sealed_backend(chunks.backend, chunks)
    assert isinstance(backend, SealedBackend)
    for parts in (("domains", "u"), ("locks",), ("pins",), ("keys",)):
        backend.ensure_dir(parts)
    return backend


DOCUMENT = json.dumps({"kind": "secret manifest", "disk": "vda"}).encode()


@pytest.mark.parametrize("parts", [("domains", "u"), ("locks",), ("pins",)])
def test_documents_are_sealed_and_open_under_their_own_name(sealed, parts):
    sealed.write_new(parts, "a.json", DOCUMENT)
    on_disk = sealed.inner.read(parts, "a.json")
    assert on_disk.startswith(SEALED_MAGIC) and b"secret" not in on_disk
    assert sealed.read(parts, "a.json") == DOCUMENT


@pytest.mark.parametrize("to_parts, to_name", [
    (("domains", "u"), "b.json"), (("domains", "v"), "a.json"), (("locks",), "a.json"),
    (("pins",), "u"),
])
def test_a_sealed_document_copied_to_another_name_does_not_open(sealed, to_parts, to_name):
    sealed.write_new(("domains", "u"), "a.json", DOCUMENT)
    sealed.ensure_dir(to_parts)
    sealed.inner.write_new(to_parts, to_name, sealed.inner.read(("domains", "u"), "a.json"))
    with pytest.raises(CorruptStoreError, match="authentication"):
        sealed.read(to_parts, to_name)


def test_a_plaintext_document_in_an_encrypted_store_is_refused(sealed):
    sealed.inner.write_new(("domains", "u"), "a.json", DOCUMENT)
    with pytest.raises(CorruptStoreError, match="not sealed"):
        sealed.read(("domains", "u"), "a.json")
    sealed.inner.write_new(("domains", "u"), "b.json", SEALED_MAGIC + DOCUMENT)
    with pytest.raises(CorruptStoreError):
        sealed.read(("domains", "u"), "b.json")
    sealed.inner.write_new(("domains", "u"), "c.json", b"")
    with pytest.raises(CorruptStoreError):
        sealed.read(("domains", "u"), "c.json")


def test_a_damaged_sealed_document_is_refused(sealed):
    sealed.write_new(("domains", "u"), "a.json", DOCUMENT)
    path = sealed.inner.path(("domains", "u"), "a.json")
    for offset in (4, 20, os.path.getsize(path) - 1):
        flip_byte(path, offset)
        with pytest.raises(CorruptStoreError):
            sealed.read(("domains", "u"), "a.json")
        flip_byte(path, offset)
    assert sealed.read(("domains", "u"), "a.json") == DOCUMENT


def test_documents_outside_the_sealed_tops_pass_through(sealed, tmp_path):
    sealed.write_new(("keys",), "x.json", DOCUMENT)
    assert sealed.inner.read(("keys",), "x.json") == DOCUMENT == sealed.read(("keys",), "x.json")
    plain = chunk_store(tmp_path / "plain")
    assert sealed_backend(plain.backend, plain) is plain.backend


# -- an encrypted store, opened by BackupStore ----------------------------------------------

def password_file(tmp_path, name, passphrase):
    path = tmp_path / name
    path.write_bytes(passphrase + b"\n")
    return str(path)


@pytest.fixture
def encrypted_root(tmp_path):
    root = str(tmp_path / "backup")
    store = BackupStore.open(root, create=True,
                             new=NewStore(StoreSettings(chunk_size=CS, encrypted=True), PASS))
    assert store.version == 3 and store.chunked.encrypted
    return root


def test_the_marker_is_plain_json_that_names_the_cipher_and_holds_no_key(encrypted_root):
    text = read(os.path.join(encrypted_root, MARKER))
    marker = json.loads(text)
    assert marker["version"] == 3 and marker["kind"] == "fibackup-store"
    assert marker["encryption"] == {"cipher": "aes-256-gcm", "kdf": "scrypt"}
    assert marker["chunk_ids"] == "hmac-sha256" and marker["chunk_size"] == CS
    assert not {"wrapped", "salt", "nonce", "key", "master", "keys"} & set(marker)
    (name,) = os.listdir(os.path.join(encrypted_root, "keys"))
    key_document = json.loads(read(os.path.join(encrypted_root, "keys", name)))
    master = unwrap(key_document, PASS, marker["store_id"], name)
    assert master is not None
    for secret in (key_document["wrapped"], key_document["kdf"]["salt"], master.hex()):
        assert secret.encode() not in text
    assert master not in text and PASS not in text


def test_a_plain_format3_store_has_sha256_ids_and_no_keys(tmp_path):
    root = str(tmp_path / "backup")
    store = BackupStore.open(root, create=True, new=NewStore(StoreSettings(chunk_size=CS)))
    marker = json.loads(read(os.path.join(root, MARKER)))
    assert (marker["version"], marker["encryption"], marker["chunk_ids"]) == (3, None, "sha256")
    assert not os.path.exists(os.path.join(root, "keys"))
    assert store.chunked.keys() is None
    assert store.chunked.chunk_id(b"x") == hashlib.sha256(b"x").digest()


def test_a_wrong_passphrase_is_refused_on_first_use(encrypted_root, tmp_path, monkeypatch):
    earlier = BackupStore.open(encrypted_root)
    earlier.chunked.unlock_with(PASS)
    earlier.backend.ensure_dir(("domains", "u"))
    earlier.backend.write_new(("domains", "u"), "a.json", DOCUMENT)
    before = stored_files(encrypted_root)
    monkeypatch.setenv("FIBACKUP_PASSWORD_FILE", password_file(tmp_path, "wrong", b"not it"))
    store = BackupStore.open(encrypted_root)                     # opening needs no key yet
    with pytest.raises(StoreKeyError, match="opens none"):
        store.chunked.keys()
    with pytest.raises(StoreKeyError):
        store.chunked.put_chunk(b"\0" * 32, b"data")
    with pytest.raises(StoreKeyError):
        store.backend.read(("domains", "u"), "a.json")
    with pytest.raises(StoreKeyError):
        store.backend.write_new(("domains", "u"), "b.json", DOCUMENT)
    assert stored_files(encrypted_root) == before               # nothing was written


def test_no_passphrase_at_all_is_refused(encrypted_root):
    with pytest.raises(StoreKeyError, match="no passphrase"):
        BackupStore.open(encrypted_root).chunked.keys()


def test_the_right_passphrase_reads_what_another_run_wrote(encrypted_root, tmp_path, monkeypatch):
    monkeypatch.setenv("FIBACKUP_PASSWORD_FILE", password_file(tmp_path, "right", PASS))
    writer = BackupStore.open(encrypted_root)
    data = text_chunk("secret")
    chunk_id = writer.chunked.chunk_id(data)
    writer.chunked.put_chunk(chunk_id, data)
    writer.chunked.settle()                  # what a finished run leaves
    writer.backend.ensure_dir(("domains", "u"))
    writer.backend.write_new(("domains", "u"), "a.json", DOCUMENT)
    reader = BackupStore.open(encrypted_root)
    assert reader.chunked.chunk_id(data) == chunk_id
    assert reader.chunked.get_chunk(chunk_id, CS) == data
    assert reader.backend.read(("domains", "u"), "a.json") == DOCUMENT
    for path in stored_files(encrypted_root):
        assert b"secret" not in read(os.path.join(encrypted_root, path)), path
    fans = os.listdir(os.path.join(encrypted_root, CHUNKS))
    assert all(len(fan) == 2 and set(fan) <= set("0123456789abcdef") for fan in fans)
    for fan in fans:
        names = os.listdir(os.path.join(encrypted_root, CHUNKS, fan))
        assert names and all(len(n) == 64 and set(n) <= set("0123456789abcdef") for n in names)


def test_the_password_file_option_wins_over_the_environment(encrypted_root, tmp_path,
                                                            monkeypatch, passphrase_sources):
    monkeypatch.setenv("FIBACKUP_PASSWORD_FILE", password_file(tmp_path, "wrong", b"not it"))
    passphrase_sources.use(passphrase_sources.Sources(
        password_file=password_file(tmp_path, "right", PASS)))
    assert BackupStore.open(encrypted_root).chunked.keys() is not None


def test_a_second_key_opens_the_same_data(encrypted_root, tmp_path, monkeypatch):
    monkeypatch.setenv("FIBACKUP_PASSWORD_FILE", password_file(tmp_path, "right", PASS))
    store = BackupStore.open(encrypted_root)
    data = text_chunk("x")
    chunk_id = store.chunked.chunk_id(data)
    store.chunked.put_chunk(chunk_id, data)
    store.chunked.settle()
    store.chunked.add_key(b"second passphrase")
    assert len(os.listdir(os.path.join(encrypted_root, "keys"))) == 2
    other = BackupStore.open(encrypted_root)
    other.chunked.unlock_with(b"second passphrase")
    assert other.chunked.get_chunk(chunk_id) == data
    with pytest.raises(StoreKeyError):
        BackupStore.open(encrypted_root).chunked.unlock_with(b"third")


def test_an_encrypted_store_without_keys_is_refused(encrypted_root, tmp_path, monkeypatch):
    monkeypatch.setenv("FIBACKUP_PASSWORD_FILE", password_file(tmp_path, "right", PASS))
    shutil.rmtree(os.path.join(encrypted_root, "keys"))
    with pytest.raises(CorruptStoreError, match="holds no key"):
        BackupStore.open(encrypted_root).chunked.keys()


# -- ingest, write_out, check_view, check_chunks ------------------------------------------

SIZE = 10 * CS + 1000                       # ten chunks and a short last one
A, B, C = text_chunk("A"), os.urandom(CS), text_chunk("C")


@pytest.fixture
def view(tmp_path):
    """Chunk 0: A, 1: zeros, 2: B with its first bytes zero, 3: zeros, 4: A again,
    5: a few bytes of C, 6-9: zeros, 10 (1000 bytes): the end of C."""
    path = tmp_path / "view"
    expected = make_view(path, SIZE, [(0, A), (2 * CS + 100, B[100:]), (4 * CS, A),
                                      (5 * CS + 7, C[:50]), (10 * CS, C[:1000])])
    return str(path), expected


def test_ingest_stores_each_distinct_chunk_once_and_no_zeros(chunks, view):
    path, expected = view
    seen = []
    done = ingest(chunks, path, DiskIndex(SIZE, CS), range(11), progress=seen.append)
    assert sorted(done.index.chunks) == [0, 2, 4, 5, 10]
    assert done.index.chunks[0] == done.index.chunks[4]
    assert done.new_chunks == 4 and len(list(chunks.object_ids(CHUNKS))) == 4
    assert done.read_bytes == SIZE == sum(seen)
    assert done.stored_bytes == sum(os.path.getsize(object_path(chunks, CHUNKS, chunk_id))
                                    for chunk_id in done.index.ids())
    assert done.index.data_bytes == 4 * CS + 1000
    for zeros in (bytes(CS), bytes(1000)):
        assert not chunks.has(CHUNKS, chunks.chunk_id(zeros))
    for number, chunk_id in done.index.items():
        offset = number * CS
        assert chunks.get_chunk(chunk_id) == expected[offset:offset + done.index.length(number)]


def test_ingesting_the_same_data_again_stores_nothing(chunks, view):
    path, _ = view
    first = ingest(chunks, path, DiskIndex(SIZE, CS), range(11))
    files_before = stored_files(chunks.backend.root)
    again = ingest(chunks, path, DiskIndex(SIZE, CS), range(11))
    assert (again.new_chunks, again.stored_bytes) == (0, 0)
    assert again.index == first.index
    assert ingest(chunks, path, first.index, range(11)).new_chunks == 0
    assert stored_files(chunks.backend.root) == files_before


def test_ingest_of_some_chunks_keeps_the_others_of_the_base(chunks, view):
    path, expected = view
    first = ingest(chunks, path, DiskIndex(SIZE, CS), range(11))
    with open(path, "r+b") as handle:
        handle.seek(2 * CS + 5)
        handle.write(b"changed")                   # chunk 2 changes
        handle.seek(4 * CS)
        handle.write(bytes(CS))                    # chunk 4 is now zeros
        handle.seek(7 * CS)
        handle.write(b"new")                       # chunk 7 gets data
        handle.seek(0)
        handle.write(b"not read")                  # chunk 0 changes but is not re-read
    done = ingest(chunks, path, first.index, [2, 4, 7, 7, 9])
    assert done.read_bytes == 4 * CS and done.new_chunks == 2
    assert sorted(done.index.chunks) == [0, 2, 5, 7, 10]
    assert done.index.chunks[0] == first.index.chunks[0]
    assert done.index.chunks[2] != first.index.chunks[2]
    assert check_view(chunks, done.index, path, range(11)) == [0]


def test_write_out_reproduces_the_view_with_holes(chunks, view, tmp_path):
    path, expected = view
    done = ingest(chunks, path, DiskIndex(SIZE, CS), range(11))
    destination = new_file(tmp_path / "restored")
    assert write_out(chunks, done.index, destination) == done.index.data_bytes
    assert read(destination) == expected
    assert os.stat(destination).st_blocks * 512 <= 6 * CS           # 5 chunks hold data
    assert check_view(chunks, done.index, destination, range(11)) == []


def test_a_mostly_zero_file_restores_mostly_as_holes(chunks, tmp_path):
    size = 256 * CS                                   # 16 MiB, two chunks of data
    source = tmp_path / "big"
    expected = make_view(source, size, [(CS, b"x" * 10), (size - 5, b"tail!")])
    done = ingest(chunks, str(source), DiskIndex(size, CS), range(256))
    assert sorted(done.index.chunks) == [1, 255] and done.new_chunks == 2
    destination = new_file(tmp_path / "restored")
    write_out(chunks, done.index, destination)
    assert os.path.getsize(destination) == size
    assert read(destination) == expected
    assert os.stat(destination).st_blocks * 512 <= 2 * CS + 64 * 1024


def test_write_out_refuses_a_damaged_chunk(chunks, view, tmp_path):
    path, _ = view
    done = ingest(chunks, path, DiskIndex(SIZE, CS), range(11))
    damaged = done.index.chunks[2]
    target = object_path(chunks, CHUNKS, damaged)
    flip_byte(target, os.path.getsize(target) - 3)
    with pytest.raises(IntegrityError):
        write_out(chunks, done.index, new_file(tmp_path / "restored"))
    wanted = {chunk_id: done.index.length(number) for number, chunk_id in done.index.items()}
    problems = check_chunks(chunks, wanted)
    assert list(problems) == [damaged]
    os.unlink(target)
    assert "missing" in check_chunks(chunks, wanted)[damaged]


def test_check_view_names_the_chunks_that_differ(chunks, view):
    path, _ = view
    done = ingest(chunks, path, DiskIndex(SIZE, CS), range(11))
    assert check_view(chunks, done.index, path, range(11)) == []
    with open(path, "r+b") as handle:
        handle.seek(3 * CS + 1)
        handle.write(b"!")                         # a chunk the index says is zeros
        handle.seek(10 * CS + 999)
        handle.write(b"?")                         # the last byte of the short last chunk
    assert check_view(chunks, done.index, path, range(11)) == [3, 10]
    assert check_view(chunks, done.index, path, [0, 1, 2]) == []


def test_ingest_refuses_a_view_shorter_than_the_disk(chunks, tmp_path):
    path = tmp_path / "short"
    make_view(path, 2 * CS, [(0, b"data")])
    with pytest.raises(OSError, match="ended"):
        ingest(chunks, str(path), DiskIndex(3 * CS, CS), range(3))


def test_a_file_is_saved_and_restored_through_its_index(chunks, tmp_path):
    source = tmp_path / "nvram"
    expected = make_view(source, 3 * CS + 17, [(5, b"vars"), (3 * CS, b"end")])
    ref, new = v3files.save_file(chunks, str(source))
    assert new and ref.chunks == 2 and ref.data_bytes == CS + 17
    assert v3files.save_file(chunks, str(source)) == (
        IndexRef(ref.id, ref.data_bytes, ref.chunks, 0, 0), False)
    destination = str(tmp_path / "restored")
    v3files.restore_file(chunks, ref, len(expected), destination, "nvram")
    assert read(destination) == expected
    assert v3files.check_file(chunks, ref, len(expected), "nvram") == []
    with pytest.raises(CorruptStoreError):
        v3files.file_index(chunks, ref, len(expected) + 1, "nvram")
