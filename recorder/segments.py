"""The segment cipher: C2SP chunked encryption (Cobblestone-256) inside a small versioned container.

Every encrypted object of a recording (a track's media segment, the annotation log, an image) is
written in the format of c2sp.org/chunked-encryption, instantiated as Cobblestone-256:

    key || base nonce || commitment = HKDF-Expand(SHA-512, prk = input key,
        info = "c2sp.org/chunked-encryption@v1+" || "AEAD_AES_256_GCM" || 0x00 || salt || context)

with a random 24-byte salt; the ciphertext is salt || commitment (56 bytes) followed by the
message in 16 KiB chunks, each sealed by AES-256-GCM under the base nonce XORed with the chunk
number, the last chunk always shorter than 16 KiB (empty if the message fills its chunks). Chunk
`k` sits at offset 56 + k * (16384 + 16), so any chunk decrypts on its own (seek). The commitment
catches a wrong key or context before any chunk is opened; the nonce catches reordering; the
short final chunk catches truncation and trailing data.

Three layers, each usable on its own:
- the C2SP layer (`recorder.chunked`: `ChunkedEncryptor`, `ChunkedDecryptor`,
  `ChunkedRandomAccess`), byte for byte the published format, so Wycheproof's vectors apply to
  it unchanged (with `.raw(...)` for the vectors' raw mode);
- the context binding (`segment_context`): recording id, track and segment number go into the
  C2SP context, so a segment spliced in from another recording, track or position fails its
  commitment check;
- our container (`SegmentHeader`; `open_segment_writer`, `open_segment_reader`,
  `open_segment_random_access`, `encrypt_segment`, `decrypt_segment`): magic, format version and
  cipher suite name in front of the C2SP bytes, so another suite (SM4/SM3) can be added without a
  format break. The container header is also prefixed to the C2SP context, which authenticates it.

Everything here is sans-IO in the sense that matters: it reads from and writes to whatever
file-like object or bytes it is given, with no event loop; a failure is a `SegmentIntegrityError`
naming what failed. The hot loops are watched by `bench/recording.py` (`cipher_mb_s` against
`raw_aesgcm_mb_s`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from recorder.chunked import (
    COBBLESTONE_256,
    SUITES,
    BinarySink,
    Buffer,
    ChunkedEncryptor,
    CipherSuite,
    SegmentIntegrityError,
    as_bytes_view,
)
from recorder.chunked_readers import (
    BinarySource,
    ChunkedDecryptor,
    ChunkedRandomAccess,
    RandomReader,
    SeekableSource,
    SequentialReader,
)

SEGMENT_MAGIC = b"CNSLSEG"
"""First bytes of every Consilium encrypted object."""
SEGMENT_VERSION = 1
"""The container format this code writes."""
_SUITE_NAME = re.compile(rb"[a-z0-9][a-z0-9._-]{0,63}")


@dataclass(frozen=True)
class SegmentHeader:
    """Our container header: magic, format version, suite name; the C2SP bytes follow it.

    Layout: "CNSLSEG" | version (1 byte) | suite name length (1 byte) | suite name (ASCII).
    The encoded header is prefixed to the C2SP context, so changing it fails the commitment.
    """

    suite: CipherSuite = COBBLESTONE_256
    """The cipher suite of the C2SP part."""
    version: int = SEGMENT_VERSION
    """The container format version."""

    def encode(self) -> bytes:
        """The header's bytes."""
        name = self.suite.name.encode("ascii")
        return SEGMENT_MAGIC + bytes((self.version, len(name))) + name

    @classmethod
    def parse(cls, prefix: memoryview) -> tuple[SegmentHeader, int]:
        """The header at the start of `prefix` and its length; `SegmentIntegrityError` if not."""
        fixed = len(SEGMENT_MAGIC) + 2
        if len(prefix) < fixed or bytes(prefix[: len(SEGMENT_MAGIC)]) != SEGMENT_MAGIC:
            raise SegmentIntegrityError(
                "not a Consilium encrypted segment (bad magic or truncated)", reason="format"
            )
        version, name_length = prefix[len(SEGMENT_MAGIC)], prefix[len(SEGMENT_MAGIC) + 1]
        if version != SEGMENT_VERSION:
            raise SegmentIntegrityError(
                f"unsupported segment format version {version} (this build reads "
                f"{SEGMENT_VERSION})",
                reason="format",
            )
        name = bytes(prefix[fixed : fixed + name_length])
        if len(name) != name_length or not _SUITE_NAME.fullmatch(name):
            raise SegmentIntegrityError(
                "segment header truncated or its suite name malformed", reason="format"
            )
        suite = SUITES.get(name.decode("ascii"))
        if suite is None:
            raise SegmentIntegrityError(
                f"segment uses cipher suite {name.decode('ascii')!r}, which this build lacks "
                f"(it has {', '.join(sorted(SUITES))})",
                reason="format",
            )
        return cls(suite=suite, version=version), fixed + name_length


_MAX_HEADER = len(SEGMENT_MAGIC) + 2 + 255
_CONTEXT_LABEL = b"consilium.org/recording-segment@v1"


def segment_context(recording_id: str, track: str, segment: int) -> bytes:
    """The C2SP context binding a segment to its recording, track and position.

    Fields are length-prefixed, so no two (recording, track, segment) triples encode alike;
    a segment moved to another recording, track or number fails its commitment check.
    `track` names any stream of the recording ("video-<participant>", "annotations", ...).
    """
    if not 0 <= segment < 1 << 32:
        raise ValueError(f"segment number out of range: {segment}")
    parts = [_CONTEXT_LABEL, b"\x00"]
    for field in (recording_id, track):
        encoded = field.encode("utf-8")
        if not encoded or len(encoded) > 0xFFFF:
            raise ValueError(f"context field must be 1..65535 bytes: {field!r}")
        parts += (len(encoded).to_bytes(2, "big"), encoded)
    parts.append(segment.to_bytes(4, "big"))
    return b"".join(parts)


def open_segment_writer(
    sink: BinarySink,
    data_key: Buffer,
    context: Buffer,
    *,
    suite: CipherSuite = COBBLESTONE_256,
) -> ChunkedEncryptor:
    """Write our container header, then return the C2SP encryptor for the segment's content.

    `context` is normally `segment_context(recording_id, track, segment)`.
    """
    header = SegmentHeader(suite=suite).encode()
    sink.write(header)
    return ChunkedEncryptor(sink, data_key, header + bytes(context), suite=suite)


def open_segment_reader(
    source: BinarySource | Buffer, data_key: Buffer, context: Buffer
) -> ChunkedDecryptor:
    """Read our container header, then return the streaming C2SP decryptor of the rest."""
    if isinstance(source, bytes | bytearray | memoryview):
        view = as_bytes_view(source)
        header, length = SegmentHeader.parse(view[:_MAX_HEADER])
        encoded = bytes(view[:length])
        return ChunkedDecryptor(
            view[length:], data_key, encoded + bytes(context), suite=header.suite
        )
    reader = SequentialReader(source, _MAX_HEADER)
    fixed = reader.take(len(SEGMENT_MAGIC) + 2)
    prefix = bytes(fixed)
    if len(prefix) == len(SEGMENT_MAGIC) + 2:
        prefix += bytes(reader.take(prefix[-1]))
    header, length = SegmentHeader.parse(memoryview(prefix))
    return ChunkedDecryptor(source, data_key, prefix[:length] + bytes(context), suite=header.suite)


def open_segment_random_access(
    source: SeekableSource | Buffer, data_key: Buffer, context: Buffer
) -> ChunkedRandomAccess:
    """Read our container header, then return the random-access C2SP decryptor of the rest."""
    reader = RandomReader(source, _MAX_HEADER)
    header, length = SegmentHeader.parse(reader.pread(0, _MAX_HEADER))
    encoded = bytes(reader.pread(0, length))
    return ChunkedRandomAccess(
        source, data_key, encoded + bytes(context), suite=header.suite, offset=length
    )


class _ChunkList:
    """A sink that keeps the encryptor's output objects as they come (no copy)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        # list.append itself: no Python frame per chunk.
        self.write: Callable[[bytes], object] = self.parts.append


def encrypt_segment(
    plaintext: Buffer, data_key: Buffer, context: Buffer, *, suite: CipherSuite = COBBLESTONE_256
) -> bytes:
    """A whole segment in memory: container header, C2SP header, chunks."""
    sink = _ChunkList()
    with open_segment_writer(sink, data_key, context, suite=suite) as writer:
        writer.write(plaintext)
    return b"".join(sink.parts)


def decrypt_segment(ciphertext: Buffer, data_key: Buffer, context: Buffer) -> bytes:
    """The plaintext of a whole segment in memory; `SegmentIntegrityError` on any fault."""
    return open_segment_reader(ciphertext, data_key, context).read_all()
