"""C2SP chunked decryption: the readers of `recorder.chunked`'s format.

`ChunkedDecryptor` reads in order, `ChunkedRandomAccess` reads any range (chunk `k` at
56 + k * (16384 + 16), so a seek opens only the chunks it covers). Both check the key commitment
before any chunk is opened, and tell a truncated object, a modified chunk and bytes appended
after the final chunk apart. Sans-IO in the sense that matters: they read from whatever
file-like object or bytes they are given, with no event loop; a failure is a
`SegmentIntegrityError` naming what failed. The hot loops are watched by `bench/recording.py`
(`cipher_mb_s` against `raw_aesgcm_mb_s`).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag

from recorder.chunked import (
    AEAD,
    C2SP_HEADER_SIZE,
    CHUNK_SIZE,
    COBBLESTONE_256,
    MAX_CHUNKS,
    Buffer,
    CipherSuite,
    SegmentIntegrityError,
    as_bytes_view,
    open_c2sp_header,
)


class BinarySource(Protocol):
    """Where ciphertext comes from, read in order: a file opened "rb", a BytesIO."""

    def readinto(self, buffer: bytearray | memoryview, /) -> int | None:
        """Fill `buffer` from the current position; 0 at the end."""
        ...


class SeekableSource(BinarySource, Protocol):
    """A source that can also seek: a regular file, a BytesIO."""

    def seek(self, offset: int, whence: int = 0, /) -> int:
        """Move the position; `whence` as in `io`."""
        ...


class SequentialReader:
    """Reads ciphertext in order from a bytes object (zero copy) or a blocking file."""

    __slots__ = ("_buffer", "_file", "_pos", "_view")

    def __init__(self, source: BinarySource | Buffer, buffer_size: int) -> None:
        if isinstance(source, bytes | bytearray | memoryview):
            self._view: memoryview | None = as_bytes_view(source)
            self._file: BinarySource | None = None
        else:
            self._view = None
            self._file = source
        self._pos = 0
        self._buffer = memoryview(bytearray(buffer_size))

    def take(self, n: int) -> memoryview:
        """The next `n` bytes, fewer only at the end; valid until the next call."""
        if self._view is not None:
            piece = self._view[self._pos : self._pos + n]
            self._pos += len(piece)
            return piece
        assert self._file is not None
        target = self._buffer[:n]
        return target[: _read_full(self._file, target)]

    def rest_in_memory(self) -> memoryview | None:
        """All remaining bytes, if the source is bytes (then consumed); None for a file."""
        if self._view is None:
            return None
        rest = self._view[self._pos :]
        self._pos = len(self._view)
        return rest


class RandomReader:
    """Reads ciphertext at any offset of a bytes object (zero copy) or a seekable file."""

    __slots__ = ("_buffer", "_file", "_view", "size")

    def __init__(self, source: SeekableSource | Buffer, buffer_size: int) -> None:
        if isinstance(source, bytes | bytearray | memoryview):
            self._view: memoryview | None = as_bytes_view(source)
            self._file: SeekableSource | None = None
            self.size = len(self._view)
        else:
            self._view = None
            self._file = source
            self.size = source.seek(0, os.SEEK_END)
        self._buffer = memoryview(bytearray(buffer_size))

    def pread(self, offset: int, n: int) -> memoryview:
        """`n` bytes at `offset` (fewer at the end); valid until the next call."""
        if self._view is not None:
            return self._view[offset : offset + n]
        assert self._file is not None
        self._file.seek(offset)
        target = self._buffer[:n]
        return target[: _read_full(self._file, target)]


def _read_full(file: Any, target: memoryview) -> int:
    """Fill `target` from `file`; fewer bytes only at its end. A pipe or socket may return
    less than asked before its end, so a short read alone never means the end (which is how
    the final chunk is recognised)."""
    got = 0
    while got < len(target):
        count = file.readinto(target[got:])
        if not count:
            break
        got += count
    return got


def _find_sealed_prefix(aead: AEAD, nonce: bytes, block: memoryview, tag_size: int) -> int | None:
    """The length of a validly sealed chunk at the start of `block`, if there is one.

    Only called after `block` failed to open, to tell "bytes were appended after the final
    chunk" from "the chunk was modified": up to 16 K trial decryptions (tens of ms), on the
    failure path only, and their plaintext is discarded.
    """
    for length in range(len(block) - 1, tag_size - 1, -1):
        try:
            aead.decrypt(nonce, block[:length], None)
        except InvalidTag:
            continue
        return length
    return None


class ChunkedDecryptor:
    """Streaming C2SP chunked decryption: an iterator of plaintext chunks, each authenticated.

    The header's commitment is checked on construction, before any chunk is opened. A chunk is
    only returned after it authenticated; once a chunk fails, every later `next` raises the same
    `SegmentIntegrityError` (never a clean end). Empty final chunks yield nothing.
    `source` is a blocking binary file or a bytes-like object (read without copying).
    """

    __slots__ = ("_aead", "_chunks", "_failed", "_suite")

    def __init__(
        self,
        source: BinarySource | Buffer,
        input_key: Buffer,
        context: Buffer = b"",
        *,
        suite: CipherSuite = COBBLESTONE_256,
    ) -> None:
        """Read the header and check the key commitment; raises `SegmentIntegrityError`."""
        reader = SequentialReader(source, suite.sealed_chunk_size)
        keys = open_c2sp_header(reader.take(C2SP_HEADER_SIZE), suite, input_key, context)
        self._setup(reader, suite, keys.key, keys.base_nonce)

    @classmethod
    def raw(
        cls,
        source: BinarySource | Buffer,
        aead_key: Buffer,
        base_nonce: Buffer,
        *,
        suite: CipherSuite = COBBLESTONE_256,
    ) -> ChunkedDecryptor:
        """The spec's raw mode (hazmat): no header, the AEAD key and base nonce given directly."""
        decryptor = cls.__new__(cls)
        reader = SequentialReader(source, suite.sealed_chunk_size)
        decryptor._setup(reader, suite, bytes(aead_key), bytes(base_nonce))
        return decryptor

    def _setup(
        self, reader: SequentialReader, suite: CipherSuite, key: bytes, base_nonce: bytes
    ) -> None:
        suite.check_key(key)
        if len(base_nonce) != suite.nonce_size:
            raise ValueError(f"{suite.name} needs a {suite.nonce_size}-byte base nonce")
        self._aead = suite.new_aead(key)
        self._suite = suite
        self._failed = _StickyFailure()
        # Hot path, watched by bench/recording.py (cipher_mb_s vs raw_aesgcm_mb_s). The loop is
        # a generator (locals, not attributes), iterated through a C-level chain: no Python
        # frame per chunk beyond the generator's own. A generator that raised would end cleanly
        # on the next call, so the chain continues into `_StickyFailure`, which raises the
        # recorded failure on that call and every later one.
        self._chunks = itertools.chain(
            self._open_chunks(reader, int.from_bytes(base_nonce, "big")), self._failed
        )

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def __next__(self) -> bytes:
        return next(self._chunks)

    def _fail(self, error: SegmentIntegrityError) -> SegmentIntegrityError:
        self._failed.failure = error
        return error

    def _open_chunks(self, reader: SequentialReader, base: int) -> Iterator[bytes]:
        decrypt = self._aead.decrypt
        nonce_size = self._suite.nonce_size
        sealed = self._suite.sealed_chunk_size
        counter = 0
        # A full-size block is never the final chunk: it opens as chunk `counter` or fails.
        # The loop is written twice, for bytes (slices, no call per chunk) and for files, since
        # per-chunk calls are what separates cipher_mb_s from raw_aesgcm_mb_s.
        memory = reader.rest_in_memory()
        if memory is not None:
            full = min(len(memory) // sealed, MAX_CHUNKS)
            for counter in range(full):
                block = memory[counter * sealed : (counter + 1) * sealed]
                nonce = (base ^ counter).to_bytes(nonce_size, "big")
                try:
                    plaintext = decrypt(nonce, block, None)
                except InvalidTag:
                    raise self._fail(self._diagnose(counter, nonce, block)) from None
                yield plaintext
            counter = full
            block = memory[full * sealed :]
        else:
            while counter < MAX_CHUNKS and len(block := reader.take(sealed)) == sealed:
                nonce = (base ^ counter).to_bytes(nonce_size, "big")
                try:
                    plaintext = decrypt(nonce, block, None)
                except InvalidTag:
                    raise self._fail(self._diagnose(counter, nonce, block)) from None
                yield plaintext
                counter += 1
        if counter >= MAX_CHUNKS:
            raise self._fail(
                SegmentIntegrityError("segment exceeds 2**38 chunks", reason="chunk", chunk=counter)
            )
        if len(block) < self._suite.tag_size:
            raise self._fail(_missing_final_chunk(counter, len(block)))
        nonce = (base ^ counter).to_bytes(nonce_size, "big")
        try:
            plaintext = decrypt(nonce, block, None)
        except InvalidTag:
            raise self._fail(self._diagnose(counter, nonce, block)) from None
        if plaintext:
            yield plaintext

    def _diagnose(self, counter: int, nonce: bytes, block: memoryview) -> SegmentIntegrityError:
        found = _find_sealed_prefix(self._aead, nonce, block, self._suite.tag_size)
        if found is not None:
            # A short block ended the source; a full one may have more behind it.
            more = " or more" if len(block) == self._suite.sealed_chunk_size else ""
            return SegmentIntegrityError(
                f"segment has trailing data: {len(block) - found} bytes{more} after its final "
                f"chunk {counter}",
                reason="trailing_data",
                chunk=counter,
            )
        return _chunk_failure(counter)

    def read_all(self) -> bytes:
        """The whole message; raises `SegmentIntegrityError` (no partial result) on any fault."""
        return b"".join(self)


class _StickyFailure:
    """The tail of a decryptor's chunk iterator: the recorded failure again, else the clean end."""

    __slots__ = ("failure",)

    def __init__(self) -> None:
        self.failure: SegmentIntegrityError | None = None

    def __iter__(self) -> _StickyFailure:
        return self

    def __next__(self) -> bytes:
        if self.failure is not None:
            raise self.failure
        raise StopIteration


def _chunk_failure(counter: int) -> SegmentIntegrityError:
    return SegmentIntegrityError(
        f"chunk {counter} fails authentication: modified, reordered, or taken from another segment",
        reason="chunk",
        chunk=counter,
    )


def _missing_final_chunk(counter: int, length: int) -> SegmentIntegrityError:
    if length == 0:
        where = f"after chunk {counter - 1}" if counter else "after its header"
        return SegmentIntegrityError(
            f"segment truncated: it ends {where}, without its short final chunk",
            reason="truncated",
            chunk=counter,
        )
    return SegmentIntegrityError(
        f"segment truncated: its final chunk {counter} is {length} bytes, shorter than a tag",
        reason="truncated",
        chunk=counter,
    )


class ChunkedRandomAccess:
    """Random-access C2SP chunked decryption over a seekable file or a bytes-like object.

    The commitment is checked on construction. `size()` authenticates the message length by
    opening only the final chunk (once); `read` and `iter_range` open only the chunks a range
    covers, so the cost of a seek does not grow with the object's length.
    """

    __slots__ = (
        "_aead",
        "_base",
        "_cached",
        "_final_chunk",
        "_final_length",
        "_length_error",
        "_nonce_size",
        "_sealed",
        "_size",
        "_source",
        "_start",
        "_tag_size",
    )

    def __init__(
        self,
        source: SeekableSource | Buffer,
        input_key: Buffer,
        context: Buffer = b"",
        *,
        suite: CipherSuite = COBBLESTONE_256,
        offset: int = 0,
    ) -> None:
        """Read the header at `offset` and check the key commitment."""
        reader = RandomReader(source, suite.sealed_chunk_size)
        header = reader.pread(offset, C2SP_HEADER_SIZE)
        keys = open_c2sp_header(header, suite, input_key, context)
        self._setup(reader, suite, keys.key, keys.base_nonce, offset + C2SP_HEADER_SIZE)

    @classmethod
    def raw(
        cls,
        source: SeekableSource | Buffer,
        aead_key: Buffer,
        base_nonce: Buffer,
        *,
        suite: CipherSuite = COBBLESTONE_256,
    ) -> ChunkedRandomAccess:
        """The spec's raw mode (hazmat): no header, the AEAD key and base nonce given directly."""
        random_access = cls.__new__(cls)
        reader = RandomReader(source, suite.sealed_chunk_size)
        random_access._setup(reader, suite, bytes(aead_key), bytes(base_nonce), 0)
        return random_access

    def _setup(
        self, reader: RandomReader, suite: CipherSuite, key: bytes, base_nonce: bytes, start: int
    ) -> None:
        suite.check_key(key)
        if len(base_nonce) != suite.nonce_size:
            raise ValueError(f"{suite.name} needs a {suite.nonce_size}-byte base nonce")
        self._source = reader
        self._aead = suite.new_aead(key)
        self._base = int.from_bytes(base_nonce, "big")
        self._nonce_size = suite.nonce_size
        self._tag_size = suite.tag_size
        self._sealed = suite.sealed_chunk_size
        self._start = start
        full, rest = divmod(reader.size - start, self._sealed)
        self._final_chunk = full
        self._final_length = rest
        self._size: int | None = None
        self._cached: tuple[int, bytes] | None = None
        # The ciphertext length alone can already prove truncation: kept, and raised by size().
        self._length_error = _missing_final_chunk(full, rest) if rest < self._tag_size else None
        if full >= MAX_CHUNKS:
            self._length_error = SegmentIntegrityError(
                "segment exceeds 2**38 chunks", reason="chunk", chunk=full
            )

    @property
    def chunk_count(self) -> int:
        """Chunks the ciphertext length implies, the final one included (not yet authenticated)."""
        return self._final_chunk + 1

    def size(self) -> int:
        """The plaintext length, authenticated by opening the final chunk."""
        if self._size is None:
            if self._length_error is not None:
                raise self._length_error
            final = self._chunk(self._final_chunk)
            self._size = self._final_chunk * CHUNK_SIZE + len(final)
        return self._size

    def chunk_offset(self, index: int) -> int:
        """Where chunk `index` starts in the source: after the header, 16 KiB + tag apart."""
        return self._start + index * self._sealed

    def _chunk(self, index: int) -> bytes:
        cached = self._cached
        if cached is not None and cached[0] == index:
            return cached[1]
        # Read exactly the length the object had when opened: a file still growing (a segment
        # being recorded) must not pass a chunk completed since as the short final chunk.
        wanted = self._sealed if index < self._final_chunk else self._final_length
        block = self._source.pread(self.chunk_offset(index), wanted)
        nonce = (self._base ^ index).to_bytes(self._nonce_size, "big")
        try:
            plaintext = self._aead.decrypt(nonce, block, None)
        except InvalidTag:
            raise self._diagnose(index) from None
        # GCM authenticates the length, but a final chunk honestly sealed at this index can only
        # stand in for a full one if the file shrank since it was opened: refuse it.
        if len(block) != wanted:
            raise _chunk_failure(index)
        self._cached = (index, plaintext)
        return plaintext

    def _diagnose(self, index: int) -> SegmentIntegrityError:
        # Only the end of the object can hold appended bytes: its last block, or the block before
        # it when what was appended pushed the length past a chunk boundary. Failures elsewhere
        # are reported at once, without trial decryptions.
        for candidate in (index, index - 1) if index == self._final_chunk else (index,):
            if candidate < max(0, self._final_chunk - 1):
                continue
            block = self._source.pread(self.chunk_offset(candidate), self._sealed)
            nonce = (self._base ^ candidate).to_bytes(self._nonce_size, "big")
            found = _find_sealed_prefix(self._aead, nonce, block, self._tag_size)
            if found is not None:
                extra = self._source.size - self.chunk_offset(candidate) - found
                return SegmentIntegrityError(
                    f"segment has trailing data: {extra} bytes after its final chunk {candidate}",
                    reason="trailing_data",
                    chunk=candidate,
                )
        return _chunk_failure(index)

    def iter_range(self, offset: int, length: int) -> Iterator[bytes]:
        """The plaintext of [offset, offset + length), clipped to the end, chunk by chunk."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        end = min(offset + length, self.size())
        position = offset
        while position < end:
            index, start = divmod(position, CHUNK_SIZE)
            piece = self._chunk(index)
            stop = min(CHUNK_SIZE, start + end - position)
            yield piece[start:stop] if start or stop != len(piece) else piece
            position += stop - start

    def read(self, offset: int, length: int) -> bytes:
        """The plaintext of [offset, offset + length), clipped to the end of the message."""
        return b"".join(self.iter_range(offset, length))
