"""C2SP chunked encryption (c2sp.org/chunked-encryption), instantiated as Cobblestone-256: the
layer of the segment cipher that is byte for byte the published format, so Wycheproof's vectors
apply to it unchanged (with `.raw(...)` for the vectors' raw mode).

    key || base nonce || commitment = HKDF-Expand(SHA-512, prk = input key,
        info = "c2sp.org/chunked-encryption@v1+" || "AEAD_AES_256_GCM" || 0x00 || salt || context)

with a random 24-byte salt; the ciphertext is salt || commitment (56 bytes) followed by the
message in 16 KiB chunks, each sealed by AES-256-GCM under the base nonce XORed with the chunk
number, the last chunk always shorter than 16 KiB (empty if the message fills its chunks). Chunk
`k` sits at offset 56 + k * (16384 + 16), so any chunk decrypts on its own (seek). The commitment
catches a wrong key or context before any chunk is opened; the nonce catches reordering; the
short final chunk catches truncation and trailing data.

This module is the construction: the suites, the key derivation, the header check and the
writer, `ChunkedEncryptor`. The readers (`ChunkedDecryptor` in order, `ChunkedRandomAccess` at
any range) are `recorder.chunked_readers`. Our container around it (magic, version, suite name)
and the context binding are `recorder.segments`. Sans-IO in the sense that matters: it writes to
whatever file-like object it is given, with no event loop; a failure is a
`SegmentIntegrityError` naming what failed. The hot loop is watched by `bench/recording.py`
(`cipher_mb_s` against `raw_aesgcm_mb_s`).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from core.errors import IntegrityError

Buffer = bytes | bytearray | memoryview
"""Any contiguous bytes the AEAD accepts without a copy."""

CHUNK_SIZE = 16384
"""Plaintext bytes in every chunk but the last (which is always shorter)."""
SALT_SIZE = 24
"""The random salt at the start of every C2SP ciphertext."""
COMMITMENT_SIZE = 32
"""The key commitment after the salt."""
C2SP_HEADER_SIZE = SALT_SIZE + COMMITMENT_SIZE
"""Salt and commitment: 56 bytes before chunk 0."""
MAX_CHUNKS = 1 << 38
"""The spec's limit on the chunk counter (4 PiB of message)."""
C2SP_LABEL = b"c2sp.org/chunked-encryption@v1+"
"""Prefix of the HKDF-Expand info, fixed by the spec."""

IntegrityFailure = Literal["format", "header", "truncated", "chunk", "trailing_data"]
"""What a `SegmentIntegrityError` found: an unreadable container, a commitment mismatch (wrong
key or context, modified header), a short object, a chunk that does not authenticate, or bytes
after the final chunk."""


class SegmentIntegrityError(IntegrityError):
    """An encrypted segment fails verification; the message says where and how."""

    def __init__(self, message: str, *, reason: IntegrityFailure, chunk: int | None = None) -> None:
        super().__init__(message)
        self.reason: IntegrityFailure = reason
        """The failure class, for callers that act on it (verify reports, tests)."""
        self.chunk = chunk
        """The chunk number involved, when one is."""


class AEAD(Protocol):
    """The AEAD operations the cipher uses: those of `cryptography`'s AESGCM."""

    def encrypt(self, nonce: Buffer, data: Buffer, associated_data: Buffer | None, /) -> bytes:
        """Seal `data`; returns ciphertext || tag."""
        ...

    def decrypt(self, nonce: Buffer, data: Buffer, associated_data: Buffer | None, /) -> bytes:
        """Open ciphertext || tag; raises `InvalidTag` if it does not authenticate."""
        ...


@dataclass(frozen=True)
class CipherSuite:
    """One instantiation of chunked encryption: the hash for HKDF-Expand and the AEAD."""

    name: str
    """The suite's name in our container header, e.g. "cobblestone-256"."""
    aead_name: bytes
    """The AEAD's name in the IANA AEAD registry; part of the HKDF-Expand info."""
    hash: hashes.HashAlgorithm
    """The HKDF-Expand hash."""
    key_size: int
    """Bytes of the input key and of the AEAD key."""
    nonce_size: int
    """Bytes of the AEAD nonce."""
    tag_size: int
    """Bytes of the AEAD tag after each chunk's ciphertext."""
    new_aead: Callable[[bytes], AEAD]
    """Builds the AEAD from a key."""

    @property
    def sealed_chunk_size(self) -> int:
        """Ciphertext bytes of a full chunk: 16 KiB plus the tag."""
        return CHUNK_SIZE + self.tag_size

    def check_key(self, key: Buffer) -> None:
        """Refuse an input key of the wrong size (a caller's bug, not a data fault)."""
        if len(key) != self.key_size:
            raise ValueError(f"{self.name} needs a {self.key_size}-byte key, got {len(key)} bytes")


COBBLESTONE_256 = CipherSuite(
    name="cobblestone-256",
    aead_name=b"AEAD_AES_256_GCM",
    hash=hashes.SHA512(),
    key_size=32,
    nonce_size=12,
    tag_size=16,
    new_aead=AESGCM,
)
"""C2SP chunked encryption with HKDF-Expand(SHA-512) and AES-256-GCM."""

SUITES: dict[str, CipherSuite] = {COBBLESTONE_256.name: COBBLESTONE_256}
"""Every suite a segment may name. A new suite is one more entry (and its vectors)."""


@dataclass(frozen=True)
class MessageKeys:
    """What HKDF-Expand derives for one message."""

    key: bytes
    """The AEAD key."""
    base_nonce: bytes
    """The nonce of chunk 0; chunk k uses it XOR k."""
    commitment: bytes
    """The 32-byte key commitment stored after the salt."""


def derive_message_keys(
    suite: CipherSuite, input_key: Buffer, salt: Buffer, context: Buffer
) -> MessageKeys:
    """HKDF-Expand the input key, salt and context into the message's key, nonce, commitment."""
    suite.check_key(input_key)
    if len(salt) != SALT_SIZE:
        raise ValueError(f"the salt is {SALT_SIZE} bytes, got {len(salt)}")
    info = b"".join((C2SP_LABEL, suite.aead_name, b"\x00", salt, context))
    length = suite.key_size + suite.nonce_size + COMMITMENT_SIZE
    okm = HKDFExpand(suite.hash, length, info).derive(bytes(input_key))
    nonce_end = suite.key_size + suite.nonce_size
    return MessageKeys(okm[: suite.key_size], okm[suite.key_size : nonce_end], okm[nonce_end:])


class BinarySink(Protocol):
    """Where ciphertext goes: a file opened "wb", a BytesIO, a socket wrapper.

    `write` must take all the bytes (buffered files do); the object passed is never reused by
    the writer, so a sink may keep it without copying.
    """

    def write(self, data: bytes, /) -> object:
        """Take all of `data`."""
        ...


def as_bytes_view(data: Buffer) -> memoryview:
    """`data` as a flat view of unsigned bytes, without a copy."""
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _truncated_header(got: int) -> SegmentIntegrityError:
    return SegmentIntegrityError(
        f"segment truncated: its header is {got} of {C2SP_HEADER_SIZE} bytes",
        reason="truncated",
    )


def _commitment_mismatch() -> SegmentIntegrityError:
    return SegmentIntegrityError(
        "segment header does not match: wrong data key, wrong recording/track/segment "
        "(context), or a modified header (key commitment check failed)",
        reason="header",
    )


def open_c2sp_header(
    header: memoryview, suite: CipherSuite, input_key: Buffer, context: Buffer
) -> MessageKeys:
    """Check the salt and commitment of a C2SP ciphertext; the message keys if they match."""
    suite.check_key(input_key)
    if len(header) < C2SP_HEADER_SIZE:
        raise _truncated_header(len(header))
    keys = derive_message_keys(suite, input_key, header[:SALT_SIZE], context)
    if not hmac.compare_digest(keys.commitment, header[SALT_SIZE:C2SP_HEADER_SIZE]):
        raise _commitment_mismatch()
    return keys


class ChunkedEncryptor:
    """Streaming C2SP chunked encryption into a sink.

    `write` takes any sizes; whole chunks are sealed straight from the caller's buffer and
    written at once, so at most one chunk of plaintext is ever held. `close` seals the short
    final chunk. Leaving a `with` block by an exception does not: the object then lacks its
    final chunk and every reader reports it truncated, never as a shorter valid message.
    The sink is the caller's; it is neither flushed nor closed here.
    """

    __slots__ = (
        "_aead",
        "_base",
        "_buffer",
        "_closed",
        "_counter",
        "_fill",
        "_nonce_size",
        "_sink",
        "_written",
    )

    def __init__(
        self,
        sink: BinarySink,
        input_key: Buffer,
        context: Buffer = b"",
        *,
        suite: CipherSuite = COBBLESTONE_256,
        salt: Buffer | None = None,
    ) -> None:
        """Derive the message keys from a fresh random salt (or `salt`, for test vectors) and
        write the 56-byte header."""
        salt = os.urandom(SALT_SIZE) if salt is None else bytes(salt)
        keys = derive_message_keys(suite, input_key, salt, context)
        self._setup(sink, suite, keys.key, keys.base_nonce)
        sink.write(salt + keys.commitment)

    @classmethod
    def raw(
        cls,
        sink: BinarySink,
        aead_key: Buffer,
        base_nonce: Buffer,
        *,
        suite: CipherSuite = COBBLESTONE_256,
    ) -> ChunkedEncryptor:
        """The spec's raw mode (hazmat): no header, the AEAD key and base nonce given directly.

        For the test vectors; recordings use the keyed constructor.
        """
        encryptor = cls.__new__(cls)
        encryptor._setup(sink, suite, bytes(aead_key), bytes(base_nonce))
        return encryptor

    def _setup(self, sink: BinarySink, suite: CipherSuite, key: bytes, base_nonce: bytes) -> None:
        suite.check_key(key)
        if len(base_nonce) != suite.nonce_size:
            raise ValueError(f"{suite.name} needs a {suite.nonce_size}-byte base nonce")
        self._sink = sink
        self._aead = suite.new_aead(key)
        self._base = int.from_bytes(base_nonce, "big")
        self._nonce_size = suite.nonce_size
        self._buffer = bytearray(CHUNK_SIZE)
        self._fill = 0
        self._counter = 0
        self._written = 0
        self._closed = False

    @property
    def plaintext_length(self) -> int:
        """Plaintext bytes written so far."""
        return self._written

    def write(self, data: Buffer) -> int:
        """Encrypt `data` (any length); returns its length. Full chunks go to the sink now."""
        # Hot path, watched by bench/recording.py (cipher_mb_s vs raw_aesgcm_mb_s): per chunk one
        # nonce, one memoryview slice, one encrypt and one sink.write; no plaintext copy unless a
        # chunk straddles two calls.
        if self._closed:
            raise ValueError("write to a closed chunked encryptor")
        view = as_bytes_view(data)
        total = len(view)
        self._written += total
        pos = 0
        fill = self._fill
        if fill:
            pos = min(CHUNK_SIZE - fill, total)
            self._buffer[fill : fill + pos] = view[:pos]
            fill += pos
            if fill < CHUNK_SIZE:
                self._fill = fill
                return total
            self._seal_next(self._buffer)
        whole = (total - pos) // CHUNK_SIZE
        counter = self._counter
        if counter + whole >= MAX_CHUNKS:
            raise OverflowError("chunked encryption is limited to 2**38 chunks (4 PiB)")
        encrypt = self._aead.encrypt
        sink_write = self._sink.write
        base = self._base
        nonce_size = self._nonce_size
        for _ in range(whole):
            end = pos + CHUNK_SIZE
            sink_write(encrypt((base ^ counter).to_bytes(nonce_size, "big"), view[pos:end], None))
            counter += 1
            pos = end
        self._counter = counter
        rest = total - pos
        if rest:
            self._buffer[:rest] = view[pos:]
        self._fill = rest
        return total

    def _seal_next(self, plaintext: Buffer) -> None:
        counter = self._counter
        if counter >= MAX_CHUNKS:
            raise OverflowError("chunked encryption is limited to 2**38 chunks (4 PiB)")
        nonce = (self._base ^ counter).to_bytes(self._nonce_size, "big")
        self._sink.write(self._aead.encrypt(nonce, plaintext, None))
        self._counter = counter + 1

    def close(self) -> None:
        """Seal and write the final chunk (shorter than 16 KiB, possibly empty). Idempotent."""
        if self._closed:
            return
        self._seal_next(memoryview(self._buffer)[: self._fill])
        self._buffer[:] = bytes(CHUNK_SIZE)
        self._fill = 0
        self._closed = True

    def abandon(self) -> None:
        """Stop without the final chunk: what was written stays detectably incomplete."""
        self._buffer[:] = bytes(CHUNK_SIZE)
        self._fill = 0
        self._closed = True

    def __enter__(self) -> ChunkedEncryptor:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abandon()
