"""The segment cipher: Wycheproof's Cobblestone-256 vectors, round trips, and each tamper class.

The vectors are applied to the C2SP layer the way ../shared/vectors/README.md says: streaming
(from a file, from a source that returns short reads, and from bytes), random access (whole
message and the final-chunk length check) and raw mode, plus re-encryption with the vector's
salt. The rest goes through our container (`open_segment_*`), as the recorder does.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import IntegrityError
from recorder.chunked import (
    C2SP_HEADER_SIZE,
    CHUNK_SIZE,
    COBBLESTONE_256,
    ChunkedEncryptor,
    SegmentIntegrityError,
)
from recorder.chunked_readers import ChunkedDecryptor, ChunkedRandomAccess
from recorder.segments import (
    SEGMENT_MAGIC,
    SegmentHeader,
    decrypt_segment,
    encrypt_segment,
    open_segment_random_access,
    open_segment_reader,
    open_segment_writer,
    segment_context,
)

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "wycheproof"
VECTOR_FILE = VECTORS / "c2sp_chunked_encryption_aes_256_gcm_test.json"
SEALED = CHUNK_SIZE + 16
KEY = bytes(range(32))
CONTEXT = segment_context("rec-2024-0042", "video-alice", 3)
CONTAINER_HEADER = len(SegmentHeader().encode())


def _vector_cases() -> list[Any]:
    if not VECTOR_FILE.is_file():
        reason = "Wycheproof chunked-encryption vectors: no ../shared/vectors in this checkout"
        return [pytest.param(None, id="no-vectors", marks=pytest.mark.skip(reason=reason))]
    suite = json.loads(VECTOR_FILE.read_text())
    assert suite["algorithm"] == "Cobblestone-256"
    cases = []
    for group in suite["testGroups"]:
        assert (group["aead"], group["sha"]) == ("AEAD_AES_256_GCM", "SHA-512")
        for test in group["tests"]:
            cases.append(pytest.param(test, id=f"{test['tcId']}-{test['comment']}"))
    assert suite["numberOfTests"] == len(cases) == 35
    return cases


VECTOR_CASES = _vector_cases()


class ShortReads(io.RawIOBase):
    """A source that returns at most `step` bytes per read, like a pipe."""

    def __init__(self, data: bytes, step: int = 1000) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        piece = self._data[self._pos : self._pos + min(self._step, len(buffer))]
        buffer[: len(piece)] = piece
        self._pos += len(piece)
        return len(piece)


def _ciphertext(test: dict[str, Any]) -> bytes:
    return zlib.decompress(bytes.fromhex(test["ct"]))


def _check_valid_message(test: dict[str, Any], message: bytes) -> None:
    assert len(message) == test["msgLength"]
    assert hashlib.sha512(message).hexdigest() == test["msgSha512"]


def _drain(decryptor: Iterator[bytes]) -> tuple[bytes, Exception | None]:
    """Everything the decryptor released, and the error it ended with (None for a clean end)."""
    released = []
    try:
        for chunk in decryptor:
            released.append(chunk)
    except SegmentIntegrityError as error:
        return b"".join(released), error
    return b"".join(released), None


def _check_stream(test: dict[str, Any], make: Any) -> None:
    flags = test["flags"]
    if "HeaderFailure" in flags:
        expected = ValueError if "InvalidKeySize" in flags else SegmentIntegrityError
        with pytest.raises(expected):
            make()
        return
    decryptor = make()
    released, error = _drain(decryptor)
    if test["result"] == "valid":
        assert error is None
        _check_valid_message(test, released)
        return
    assert error is not None
    if "PartialPlaintext" in flags:
        # Only the valid prefix may come out, and never more than it.
        _check_valid_message(test, released)
    else:
        assert released == b""
    # ... and it keeps failing rather than ending cleanly.
    for _ in range(2):
        with pytest.raises(SegmentIntegrityError):
            next(decryptor)


@pytest.mark.parametrize("test", VECTOR_CASES)
@pytest.mark.parametrize("source", ["file", "short-reads", "bytes"])
def test_vector_streaming(test: dict[str, Any], source: str) -> None:
    ct = _ciphertext(test)
    key, ctx = bytes.fromhex(test["key"]), bytes.fromhex(test["ctx"])
    wrap = {"file": io.BytesIO, "short-reads": ShortReads, "bytes": bytes}[source]
    _check_stream(test, lambda: ChunkedDecryptor(wrap(ct), key, ctx))


@pytest.mark.parametrize("test", VECTOR_CASES)
def test_vector_streaming_raw_mode(test: dict[str, Any]) -> None:
    if "HeaderFailure" in test["flags"]:
        pytest.skip("HeaderFailure vectors have no aeadKey/baseNonce: raw mode does not apply")
    body = _ciphertext(test)[C2SP_HEADER_SIZE:]
    aead_key, base_nonce = bytes.fromhex(test["aeadKey"]), bytes.fromhex(test["baseNonce"])
    _check_stream(test, lambda: ChunkedDecryptor.raw(io.BytesIO(body), aead_key, base_nonce))


def _check_random_access(test: dict[str, Any], make: Any) -> None:
    flags = test["flags"]
    if "HeaderFailure" in flags:
        expected = ValueError if "InvalidKeySize" in flags else SegmentIntegrityError
        with pytest.raises(expected):
            make()
        return
    if test["result"] == "valid":
        reader = make()
        size = reader.size()
        assert size == test["msgLength"]
        message = reader.read(0, size)
        _check_valid_message(test, message)
        # A seek into the middle gives the same bytes as the whole read.
        middle = size // 2
        assert reader.read(middle, 20000) == message[middle : middle + 20000]
        assert reader.read(size, 10) == b""
        return
    with pytest.raises(SegmentIntegrityError):
        make().read(0, 1 << 40)
    # Length authentication opens only the final chunk: it may pass where that chunk is valid.
    if "ValidFinalChunk" in flags:
        make().size()
    else:
        with pytest.raises(SegmentIntegrityError):
            make().size()


@pytest.mark.parametrize("test", VECTOR_CASES)
@pytest.mark.parametrize("source", ["file", "bytes"])
def test_vector_random_access(test: dict[str, Any], source: str) -> None:
    ct = _ciphertext(test)
    key, ctx = bytes.fromhex(test["key"]), bytes.fromhex(test["ctx"])
    wrap = io.BytesIO if source == "file" else bytes
    _check_random_access(test, lambda: ChunkedRandomAccess(wrap(ct), key, ctx))


@pytest.mark.parametrize("test", VECTOR_CASES)
def test_vector_random_access_raw_mode(test: dict[str, Any]) -> None:
    if "HeaderFailure" in test["flags"]:
        pytest.skip("HeaderFailure vectors have no aeadKey/baseNonce: raw mode does not apply")
    body = _ciphertext(test)[C2SP_HEADER_SIZE:]
    aead_key, base_nonce = bytes.fromhex(test["aeadKey"]), bytes.fromhex(test["baseNonce"])
    _check_random_access(test, lambda: ChunkedRandomAccess.raw(body, aead_key, base_nonce))


@pytest.mark.parametrize("test", VECTOR_CASES)
def test_vector_reencrypts_to_the_same_ciphertext(test: dict[str, Any]) -> None:
    if test["result"] != "valid":
        pytest.skip("only valid vectors carry a message to re-encrypt")
    ct = _ciphertext(test)
    key, ctx = bytes.fromhex(test["key"]), bytes.fromhex(test["ctx"])
    message = ChunkedDecryptor(ct, key, ctx).read_all()

    sink = io.BytesIO()
    with ChunkedEncryptor(sink, key, ctx, salt=ct[:24]) as encryptor:
        encryptor.write(message)
    assert sink.getvalue() == ct

    raw = io.BytesIO()
    aead_key, base_nonce = bytes.fromhex(test["aeadKey"]), bytes.fromhex(test["baseNonce"])
    with ChunkedEncryptor.raw(raw, aead_key, base_nonce) as encryptor:
        encryptor.write(message)
    assert raw.getvalue() == ct[C2SP_HEADER_SIZE:]


# Round trips through our container.

EDGE_SIZES = [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE, 7 * CHUNK_SIZE + 5]


def _write_in_pieces(message: bytes, pieces: list[int], context: bytes = CONTEXT) -> bytes:
    sink = io.BytesIO()
    writer = open_segment_writer(sink, KEY, context)
    position = 0
    for size in pieces:
        writer.write(message[position : position + size])
        position += size
    writer.write(message[position:])
    writer.close()
    return sink.getvalue()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.one_of(st.sampled_from(EDGE_SIZES), st.integers(0, 9 * CHUNK_SIZE)),
    pieces=st.lists(st.integers(0, 3 * CHUNK_SIZE), max_size=8),
    seed=st.binary(min_size=8, max_size=8),
)
def test_round_trip_any_size_any_write_pattern(size: int, pieces: list[int], seed: bytes) -> None:
    message = hashlib.shake_256(seed).digest(size)
    blob = _write_in_pieces(message, pieces)

    chunks = size // CHUNK_SIZE + 1
    assert len(blob) == CONTAINER_HEADER + C2SP_HEADER_SIZE + size + 16 * chunks
    assert decrypt_segment(blob, KEY, CONTEXT) == message
    assert b"".join(open_segment_reader(io.BytesIO(blob), KEY, CONTEXT)) == message
    assert b"".join(open_segment_reader(ShortReads(blob, 777), KEY, CONTEXT)) == message

    reader = open_segment_random_access(io.BytesIO(blob), KEY, CONTEXT)
    assert reader.size() == size
    for offset in (0, size // 3, size - 1, CHUNK_SIZE - 1, CHUNK_SIZE):
        if 0 <= offset:
            assert reader.read(offset, 20000) == message[offset : offset + 20000]


@pytest.mark.parametrize("size", EDGE_SIZES)
def test_round_trip_edge_sizes(size: int) -> None:
    message = os.urandom(size)
    blob = encrypt_segment(message, KEY, CONTEXT)
    assert decrypt_segment(blob, KEY, CONTEXT) == message
    assert open_segment_random_access(blob, KEY, CONTEXT).read(0, size + 1) == message


def test_many_chunks_round_trip_through_a_real_file(tmp_path: Path) -> None:
    message = os.urandom(300 * CHUNK_SIZE + 123)
    path = tmp_path / "segment.enc"
    with path.open("wb") as sink, open_segment_writer(sink, KEY, CONTEXT) as writer:
        for start in range(0, len(message), 5000):
            writer.write(message[start : start + 5000])
    with path.open("rb") as source:
        assert b"".join(open_segment_reader(source, KEY, CONTEXT)) == message
    with path.open("rb") as source:
        reader = open_segment_random_access(source, KEY, CONTEXT)
        assert reader.size() == len(message)
        assert reader.read(150 * CHUNK_SIZE - 10, 30) == message[150 * CHUNK_SIZE - 10 :][:30]


def test_encryption_is_randomised_per_segment() -> None:
    assert encrypt_segment(b"same", KEY, CONTEXT) != encrypt_segment(b"same", KEY, CONTEXT)


def test_writer_holds_at_most_one_chunk_of_plaintext() -> None:
    sink = io.BytesIO()
    writer = open_segment_writer(sink, KEY, CONTEXT)
    start = len(sink.getvalue())
    for _ in range(CHUNK_SIZE):
        writer.write(b"x")
    # The 16384th byte completed chunk 0: it is already sealed and written.
    assert len(sink.getvalue()) == start + SEALED
    writer.write(b"y" * (3 * CHUNK_SIZE + 5))
    assert len(sink.getvalue()) == start + 4 * SEALED
    writer.close()
    assert len(sink.getvalue()) == start + 4 * SEALED + 5 + 16


def test_an_interrupted_writer_leaves_a_truncated_segment() -> None:
    sink = io.BytesIO()
    with pytest.raises(RuntimeError), open_segment_writer(sink, KEY, CONTEXT) as writer:
        writer.write(os.urandom(CHUNK_SIZE + 100))
        raise RuntimeError("recorder crashed")
    with pytest.raises(SegmentIntegrityError, match="truncated") as caught:
        decrypt_segment(sink.getvalue(), KEY, CONTEXT)
    assert caught.value.reason == "truncated"


# Tamper classes: each detected, with a message saying what failed.

MESSAGE = bytes(range(256)) * (4 * CHUNK_SIZE // 256) + b"final bytes"
"""Four full chunks and a short final chunk."""


@pytest.fixture(scope="module")
def sealed() -> bytes:
    return encrypt_segment(MESSAGE, KEY, CONTEXT)


def _chunk_at(index: int) -> int:
    return CONTAINER_HEADER + C2SP_HEADER_SIZE + index * SEALED


def _all_readers_fail(blob: bytes, key: bytes = KEY, context: bytes = CONTEXT) -> list[Any]:
    """The error of each way to read `blob`: whole, streaming from a file, random access."""
    errors = []
    with pytest.raises(SegmentIntegrityError) as whole:
        decrypt_segment(blob, key, context)
    errors.append(whole.value)
    with pytest.raises(SegmentIntegrityError) as streamed:
        _consume(open_segment_reader(io.BytesIO(blob), key, context))
    errors.append(streamed.value)
    with pytest.raises(SegmentIntegrityError) as random:
        open_segment_random_access(io.BytesIO(blob), key, context).read(0, len(MESSAGE))
    errors.append(random.value)
    assert all(isinstance(error, IntegrityError) for error in errors)
    return errors


def _consume(chunks: Iterator[bytes]) -> None:
    for _ in chunks:
        pass


def test_flipped_bit_in_a_chunk_is_detected(sealed: bytes) -> None:
    blob = bytearray(sealed)
    blob[_chunk_at(2) + 1000] ^= 0x01
    for error in _all_readers_fail(bytes(blob)):
        assert (error.reason, error.chunk) == ("chunk", 2)
        assert "chunk 2 fails authentication" in str(error)


def test_flipped_bit_in_a_tag_is_detected(sealed: bytes) -> None:
    blob = bytearray(sealed)
    blob[_chunk_at(1) + SEALED - 1] ^= 0x80
    for error in _all_readers_fail(bytes(blob)):
        assert (error.reason, error.chunk) == ("chunk", 1)


@pytest.mark.parametrize("where", ["salt", "commitment"])
def test_flipped_bit_in_the_header_is_detected(sealed: bytes, where: str) -> None:
    blob = bytearray(sealed)
    blob[CONTAINER_HEADER + (3 if where == "salt" else 30)] ^= 0x04
    for error in _all_readers_fail(bytes(blob)):
        assert error.reason == "header"
        assert "key commitment" in str(error)


def test_modified_container_header_is_detected(sealed: bytes) -> None:
    blob = bytearray(sealed)
    blob[len(SEGMENT_MAGIC)] = 9
    for error in _all_readers_fail(bytes(blob)):
        assert error.reason == "format"
        assert "version 9" in str(error)
    renamed = sealed.replace(b"cobblestone-256", b"cobblestone-128", 1)
    for error in _all_readers_fail(renamed):
        assert error.reason == "format"
        assert "cobblestone-128" in str(error)


def test_reordered_chunks_are_detected(sealed: bytes) -> None:
    one, two = slice(_chunk_at(1), _chunk_at(2)), slice(_chunk_at(2), _chunk_at(3))
    blob = bytearray(sealed)
    blob[one], blob[two] = sealed[two], sealed[one]
    for error in _all_readers_fail(bytes(blob)):
        assert (error.reason, error.chunk) == ("chunk", 1)


def test_duplicated_chunk_is_detected(sealed: bytes) -> None:
    blob = bytearray(sealed)
    blob[_chunk_at(3) : _chunk_at(4)] = sealed[_chunk_at(0) : _chunk_at(1)]
    for error in _all_readers_fail(bytes(blob)):
        assert (error.reason, error.chunk) == ("chunk", 3)


@pytest.mark.parametrize("boundary", [0, 2, 4])
def test_truncation_at_a_chunk_boundary_is_detected(sealed: bytes, boundary: int) -> None:
    for error in _all_readers_fail(sealed[: _chunk_at(boundary)]):
        assert error.reason == "truncated"
        assert "truncated" in str(error) and "final chunk" in str(error)


@pytest.mark.parametrize("cut", [5, 8000, SEALED - 1])
def test_truncation_mid_chunk_is_detected(sealed: bytes, cut: int) -> None:
    errors = _all_readers_fail(sealed[: _chunk_at(1) + cut])
    for error in errors:
        assert error.reason in {"truncated", "chunk"}
        assert error.chunk == 1


def test_truncated_header_is_detected(sealed: bytes) -> None:
    for error in _all_readers_fail(sealed[: CONTAINER_HEADER + 40]):
        assert error.reason == "truncated"
        assert "header is 40 of 56 bytes" in str(error)


@pytest.mark.parametrize("extra", [1, 20, SEALED, SEALED + 3])
def test_trailing_data_is_detected(sealed: bytes, extra: int) -> None:
    for error in _all_readers_fail(sealed + os.urandom(extra)):
        assert error.reason == "trailing_data"
        assert "trailing data" in str(error)
        assert error.chunk == 4


def test_trailing_valid_chunk_is_detected(sealed: bytes) -> None:
    # A chunk sealed by the same key at the next position, appended after the final chunk.
    longer = encrypt_segment(MESSAGE + bytes(CHUNK_SIZE), KEY, CONTEXT)
    assert longer[: _chunk_at(0)] != sealed[: _chunk_at(0)]  # different salt: different keys
    for error in _all_readers_fail(sealed + longer[_chunk_at(5) :]):
        assert error.reason == "trailing_data"


@pytest.mark.parametrize(
    "elsewhere",
    [
        segment_context("rec-2024-0043", "video-alice", 3),
        segment_context("rec-2024-0042", "audio-alice", 3),
        segment_context("rec-2024-0042", "video-alice", 4),
    ],
    ids=["other-recording", "other-track", "other-position"],
)
def test_segment_spliced_from_elsewhere_is_refused(sealed: bytes, elsewhere: bytes) -> None:
    for error in _all_readers_fail(sealed, context=elsewhere):
        assert error.reason == "header"
        assert "wrong recording/track/segment" in str(error)


def test_chunk_spliced_from_another_segment_is_detected(sealed: bytes) -> None:
    other = encrypt_segment(MESSAGE, KEY, segment_context("rec-2024-0042", "video-alice", 4))
    blob = bytearray(sealed)
    blob[_chunk_at(1) : _chunk_at(2)] = other[_chunk_at(1) : _chunk_at(2)]
    for error in _all_readers_fail(bytes(blob)):
        assert (error.reason, error.chunk) == ("chunk", 1)


def test_wrong_key_is_refused_before_any_chunk(sealed: bytes) -> None:
    for error in _all_readers_fail(sealed, key=bytes(32)):
        assert error.reason == "header"
        assert "wrong data key" in str(error)


def test_key_of_the_wrong_size_is_a_caller_error(sealed: bytes) -> None:
    with pytest.raises(ValueError, match="32-byte key"):
        decrypt_segment(sealed, KEY[:16], CONTEXT)


def test_streaming_reader_keeps_failing(sealed: bytes) -> None:
    reader = open_segment_reader(sealed[: _chunk_at(2) + 100], KEY, CONTEXT)
    assert next(reader) == MESSAGE[:CHUNK_SIZE]
    assert next(reader) == MESSAGE[CHUNK_SIZE : 2 * CHUNK_SIZE]
    for _ in range(3):
        with pytest.raises(SegmentIntegrityError, match="chunk 2"):
            next(reader)
    # Also through the iterator a `for` loop gets, with the decryptor itself gone.
    chunks = iter(open_segment_reader(sealed[: _chunk_at(2) + 100], KEY, CONTEXT))
    assert len(next(chunks)) == len(next(chunks)) == CHUNK_SIZE
    for _ in range(3):
        with pytest.raises(SegmentIntegrityError, match="chunk 2"):
            next(chunks)


def test_random_access_reads_only_intact_chunks(sealed: bytes) -> None:
    blob = bytearray(sealed)
    blob[_chunk_at(3) + 7] ^= 0x10
    reader = open_segment_random_access(bytes(blob), KEY, CONTEXT)
    assert reader.size() == len(MESSAGE)
    assert reader.read(CHUNK_SIZE + 5, 100) == MESSAGE[CHUNK_SIZE + 5 : CHUNK_SIZE + 105]
    with pytest.raises(SegmentIntegrityError, match="chunk 3"):
        reader.read(3 * CHUNK_SIZE, 1)


def test_random_access_refuses_a_segment_still_being_written(tmp_path: Path) -> None:
    path = tmp_path / "growing.enc"
    with path.open("wb") as sink:
        writer = open_segment_writer(sink, KEY, CONTEXT)
        writer.write(MESSAGE[: 2 * CHUNK_SIZE])
        sink.write(b"")
        sink.flush()
        # Opened now, the object lacks its final chunk; the chunk completed later must not pass
        # as a short final chunk.
        with path.open("rb") as source:
            reader = open_segment_random_access(source, KEY, CONTEXT)
            writer.write(MESSAGE[2 * CHUNK_SIZE :])
            writer.close()
            sink.flush()
            with pytest.raises(SegmentIntegrityError, match="truncated"):
                reader.size()


def test_context_encoding_is_unambiguous() -> None:
    assert segment_context("ab", "c", 1) != segment_context("a", "bc", 1)
    assert segment_context("a", "b", 1) != segment_context("a", "b", 256)
    with pytest.raises(ValueError):
        segment_context("", "video", 0)
    with pytest.raises(ValueError):
        segment_context("rec", "video", -1)


def test_container_header_names_version_and_suite(sealed: bytes) -> None:
    assert sealed.startswith(SEGMENT_MAGIC + b"\x01\x0fcobblestone-256")
    header, length = SegmentHeader.parse(memoryview(sealed))
    assert (header.suite, header.version, length) == (COBBLESTONE_256, 1, CONTAINER_HEADER)
    # Inside, the bytes are plain C2SP: the C2SP reader opens them with the container header
    # prefixed to the context.
    inner = ChunkedDecryptor(sealed[CONTAINER_HEADER:], KEY, sealed[:CONTAINER_HEADER] + CONTEXT)
    assert inner.read_all() == MESSAGE


def test_not_a_segment_is_refused() -> None:
    with pytest.raises(SegmentIntegrityError, match="not a Consilium encrypted segment"):
        decrypt_segment(b"RIFF....WEBPVP8 ", KEY, CONTEXT)
