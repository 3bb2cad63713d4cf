"""Playback: a recording's stream as a byte range for HTTP Range reads.

`TrackStream` addresses a stream's stored record stream (the concatenation of its segments'
plaintexts) by byte offset, opening only the chunks a range covers. Where each segment starts
and how long its plaintext is comes from the manifest's ciphertext sizes alone
(`segment_plaintext_length`, `stream_layout`), so a seek does not pay for the stream's length.
"""

from __future__ import annotations

import bisect
import functools
import os

from core.errors import IntegrityError, NotFound
from recorder.archive import Archive
from recorder.catalogue import ManifestCache, StreamLayout
from recorder.chunked import (
    C2SP_HEADER_SIZE,
    COBBLESTONE_256,
    SUITES,
    CipherSuite,
    SegmentIntegrityError,
)
from recorder.keyring import RecordingShredded
from recorder.manifest import RecordingManifest, SegmentEntry, segment_file_name, stream_context
from recorder.segments import SegmentHeader, open_segment_random_access


def _header_size(suite: CipherSuite) -> int:
    return _header_size_of(suite.name)


@functools.cache
def _header_size_of(suite_name: str) -> int:
    return len(SegmentHeader(suite=SUITES[suite_name]).encode())


def segment_plaintext_length(ciphertext_size: int, suite: CipherSuite = COBBLESTONE_256) -> int:
    """The plaintext bytes of a segment file of `ciphertext_size` bytes, without decrypting it.

    Container header, salt and commitment, then chunks of 16 KiB + tag, the last one shorter
    (at least a tag). `IntegrityError` for a size no segment of `suite` can have.
    """
    header = _header_size(suite) + C2SP_HEADER_SIZE
    full, rest = divmod(ciphertext_size - header, suite.sealed_chunk_size)
    if ciphertext_size < header or rest < suite.tag_size:
        raise IntegrityError(f"no {suite.name} segment is {ciphertext_size} bytes long")
    return full * (suite.sealed_chunk_size - suite.tag_size) + rest - suite.tag_size


def stream_layout(cache: ManifestCache, manifest: RecordingManifest, stream: str) -> StreamLayout:
    """Each segment's plaintext start and length in `stream`, from ciphertext sizes alone;
    computed once per manifest version, so a seek does not pay for the stream's length."""
    cached = cache.layout(manifest, stream)
    if cached is not None:
        return cached
    starts, lengths, total = [], [], 0
    for entry in manifest.streams[stream]:
        try:
            length = segment_plaintext_length(entry.size)
        except IntegrityError as error:
            where = f"{manifest.recording_id}/{stream}/{segment_file_name(entry.number)}"
            raise IntegrityError(f"{where}: {error}") from None
        starts.append(total)
        lengths.append(length)
        total += length
    cache.keep_layout(manifest, stream, (starts, lengths))
    return starts, lengths


class TrackStream:
    """One stream of a recording as a byte range for HTTP Range: the concatenation, in order,
    of its segments' plaintexts (the stored records: arrival ms, length, RTP bytes).

    `length` comes from the manifest's ciphertext sizes alone. `read` bisects the segments by
    plaintext offset and opens only the one or two segments and the chunks a range covers, so
    a seek costs the same an hour in as at the start. The segment's SHA-256 is not checked on
    a read (that would read the whole file): instead the file's size must be the manifest's,
    the container header and key commitment must match the recording, track and position, the
    final chunk must authenticate (the length), and every chunk read authenticates under
    AES-GCM. A fault raises `SegmentIntegrityError` naming the segment. `verify_recording` is
    the full check.
    """

    def __init__(self, archive: Archive, recording_id: str, stream: str) -> None:
        """Load the manifest and unwrap the data key; `NotFound`, `RecordingShredded`,
        `IntegrityError` (damaged manifest)."""
        manifest = archive.manifest(recording_id)
        if stream not in manifest.streams:
            raise NotFound(f"recording {recording_id} has no stream {stream!r}")
        self.recording_id = recording_id
        """The recording read."""
        self.stream = stream
        """The stream read: `track-<n>` or `events`."""
        self.track_id = manifest.track_of_stream(stream)
        """The track recorded in it (None: the events stream)."""
        self._keyring = archive.keyring
        self._directory = archive.recordings_dir / recording_id / stream
        self._data_key = archive.data_key(recording_id)
        self._segments = manifest.streams[stream]
        self._header_size = _header_size(COBBLESTONE_256)
        self._starts, self._lengths = stream_layout(archive.cache, manifest, stream)
        total = self._starts[-1] + self._lengths[-1] if self._starts else 0
        self.length = total
        """Plaintext bytes of the whole stream."""

    def _where(self, entry: SegmentEntry) -> str:
        return f"{self.recording_id}/{self.stream}/{segment_file_name(entry.number)}"

    def read(self, offset: int, size: int) -> bytes:
        """The bytes [offset, offset + size) of the stream, clipped to its end (b"" past it)."""
        if offset < 0 or size < 0:
            raise ValueError("offset and size must not be negative")
        end = min(offset + size, self.length)
        if offset >= end:
            return b""
        index = bisect.bisect_right(self._starts, offset) - 1
        parts = []
        position = offset
        while position < end:
            local = position - self._starts[index]
            count = min(end - position, self._lengths[index] - local)
            if count > 0:
                parts.append(self._read_segment(index, local, count))
                position += count
            index += 1
        return b"".join(parts)

    def _read_segment(self, index: int, offset: int, count: int) -> bytes:
        entry = self._segments[index]
        where = self._where(entry)
        context = stream_context(self.recording_id, self.track_id, entry.number, self.stream)
        try:
            file = open(self._directory / segment_file_name(entry.number), "rb")
        except FileNotFoundError:
            if self._keyring.is_shredded(self.recording_id):
                raise RecordingShredded(
                    f"recording {self.recording_id} was shredded while it was read",
                    recording_id=self.recording_id,
                ) from None
            raise SegmentIntegrityError(
                f"{where}: missing (listed in the manifest)", reason="truncated"
            ) from None
        with file:
            on_disk = os.fstat(file.fileno()).st_size
            if on_disk != entry.size:
                raise SegmentIntegrityError(
                    f"{where}: {on_disk} bytes on disk, the manifest lists {entry.size}",
                    reason="truncated" if on_disk < entry.size else "trailing_data",
                )
            try:
                reader = open_segment_random_access(file, self._data_key, context)
                if reader.chunk_offset(0) != self._header_size + C2SP_HEADER_SIZE:
                    raise SegmentIntegrityError(
                        f"container header is not {self._header_size} bytes", reason="format"
                    )
                if reader.size() != self._lengths[index]:
                    raise SegmentIntegrityError(
                        "its authenticated length differs from the manifest's", reason="chunk"
                    )
                return reader.read(offset, count)
            except SegmentIntegrityError as error:
                raise SegmentIntegrityError(
                    f"{where}: {error}", reason=error.reason, chunk=error.chunk
                ) from None
