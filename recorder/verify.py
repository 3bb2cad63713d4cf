"""Checking a recording end to end, and reading its packets back.

`verify_recording` proves a recording is what its signed manifest says: the signature holds;
every stream's segment files are exactly those listed (none missing, none extra, none swapped);
each file's SHA-256 and size match; each decrypts and authenticates in full under its context
(recording id, track, position), so a segment spliced from another recording, truncated or
flipped is named; and its records agree with the manifest's counts and times. Every video track
must hold a keyframe that decodes (a recording that lost its video is not intact): one whose
packets all came before any keyframe, or whose keyframes never decode, is reported. It reports
every problem it finds, each naming the file and what failed; `interrupted` recordings verify,
and say so.

`iter_packets` streams a track's records from a given time, starting at the segment that holds
it (found in the manifest, without reading earlier segments).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core.canonical import parse_stamp
from core.errors import IntegrityError
from recorder.chunked import SegmentIntegrityError
from recorder.depacketize import Frame, FrameAssembler, decoded_size, depacketizer_for
from recorder.manifest import (
    EVENTS_STREAM,
    SEGMENT_SUFFIX,
    Continuation,
    RecordingManifest,
    RecordingStatus,
    SegmentEntry,
    TrackEntry,
    iter_records,
    load_manifest,
    read_manifest,
    segment_file_name,
    stream_context,
)
from recorder.segments import open_segment_reader

KEYFRAMES_TRIED = 3
"""A video track whose first this many keyframes do not decode is reported as lost (checking
every one would decode the whole track)."""


class RecordingIntegrityError(IntegrityError):
    """A recording failed verification; the message lists what failed."""


@dataclass
class VerifyReport:
    """The outcome of `verify_recording`."""

    recording_id: str
    """The recording checked."""
    status: RecordingStatus | None = None
    """The manifest's status (`interrupted` after a crash), None if it could not be read."""
    segments_checked: int = 0
    """Segment files that decrypted and matched the manifest."""
    records: dict[str, int] = field(default_factory=dict)
    """Records read per stream."""
    problems: list[str] = field(default_factory=list)
    """Every failure found, one sentence each; empty when the recording is intact."""

    @property
    def ok(self) -> bool:
        """Whether nothing failed."""
        return not self.problems

    failure: str = ""
    """Why a `failed` recording stopped by itself (`disk_full`, `write_failed`)."""
    stopped_at_ms: int | None = None
    """Where a `failed` recording's stored media ends (ms since its start)."""
    continues: Continuation | None = None
    """The recording on another node this one continues, after a gap (issue 13)."""
    started: str = ""
    """The manifest's UTC start time."""

    @property
    def gap_max_s(self) -> float | None:
        """For a continuation: the longest the media between the two recordings can have been
        missing (from the earlier node's last confirmed state to this one's start)."""
        if self.continues is None or not self.started:
            return None
        gap = parse_stamp(self.started) - parse_stamp(self.continues.last_seen)
        seconds = gap.total_seconds()
        return round(max(0.0, seconds), 3)

    @property
    def failed(self) -> bool:
        """Whether the recording stopped by itself (what it holds up to `stopped_at_ms` can
        still be intact: this is not "complete")."""
        return self.status == "failed"

    @property
    def interrupted(self) -> bool:
        """Whether the recording was closed by crash recovery (it can still be intact)."""
        return self.status == "interrupted"

    def check(self) -> VerifyReport:
        """Raise `RecordingIntegrityError` naming every problem, if there is one."""
        if self.problems:
            raise RecordingIntegrityError(
                f"recording {self.recording_id} failed verification: " + "; ".join(self.problems)
            )
        return self


def verify_recording(
    directory: Path, data_key: bytes, public_key: Ed25519PublicKey
) -> VerifyReport:
    """Check every segment of the recording in `directory` and its manifest's signature."""
    report = VerifyReport(recording_id=directory.name)
    try:
        manifest, signature, _ = read_manifest(directory)
    except IntegrityError as error:
        report.problems.append(str(error))
        return report
    report.status = manifest.status
    report.failure, report.stopped_at_ms = manifest.failure, manifest.stopped_at_ms
    report.continues, report.started = manifest.continues, manifest.started
    try:
        manifest.check_signature(signature, public_key)
    except IntegrityError as error:
        report.problems.append(str(error))
        return report  # nothing it says can be trusted
    if manifest.recording_id != directory.name:
        report.problems.append(
            f"manifest is of recording {manifest.recording_id}, found in directory {directory.name}"
        )
    if manifest.status == "recording":
        report.problems.append(
            "recording was not closed (still running, or a crash not yet recovered)"
        )
    _check_stream_directories(directory, manifest, report)
    for stream, segments in manifest.streams.items():
        _verify_stream(directory, manifest, stream, segments, data_key, report)
    if report.ok:  # a keyframe is only looked for in streams that authenticated
        for track in manifest.tracks:
            if track.kind == "video":
                _check_video_starts(directory, data_key, track, report)
    return report


def _check_video_starts(
    directory: Path, data_key: bytes, track: TrackEntry, report: VerifyReport
) -> None:
    """A video track holds a keyframe that decodes, or its video is lost."""
    where = f"{track.stream} ({track.source} of {track.participant_id})"
    if not report.records.get(track.stream):
        if track.before_keyframe:
            report.problems.append(
                f"{where}: {track.before_keyframe} video packets arrived but no keyframe: "
                "the video was not recorded"
            )
        return
    try:
        depacketizer = depacketizer_for(track.codec)
    except ValueError as error:
        report.problems.append(f"{where}: {error}")
        return
    assembler = FrameAssembler(depacketizer, payload_type=track.payload_type)

    def frames() -> Iterator[Frame]:
        for record in iter_packets(directory, data_key, track.track_id):
            yield from assembler.push(record.data, record.arrival_ms)
        yield from assembler.flush()

    tried = 0
    for frame in frames():
        if frame.keyframe:
            if decoded_size(track.codec, frame.data) is not None:
                return
            tried += 1
            if tried == KEYFRAMES_TRIED:
                break
    report.problems.append(f"{where}: no keyframe that decodes: the video cannot be played")


def _check_stream_directories(
    directory: Path, manifest: RecordingManifest, report: VerifyReport
) -> None:
    for path in sorted(directory.iterdir()):
        if path.is_dir() and path.name not in manifest.streams:
            report.problems.append(f"{path.name}/: a stream directory the manifest does not list")


def _verify_stream(
    directory: Path,
    manifest: RecordingManifest,
    stream: str,
    segments: list[SegmentEntry],
    data_key: bytes,
    report: VerifyReport,
) -> None:
    try:
        track_id = manifest.track_of_stream(stream)
    except IntegrityError as error:
        report.problems.append(str(error))
        return
    listed = {segment_file_name(s.number) for s in segments}
    stream_dir = directory / stream
    present = (
        {p.name for p in stream_dir.iterdir() if p.name.endswith(SEGMENT_SUFFIX)}
        if stream_dir.is_dir()
        else set()
    )
    for name in sorted(present - listed):
        report.problems.append(f"{stream}/{name}: a segment file the manifest does not list")
    by_hash = {s.sha256: s.number for s in segments}
    total = 0
    for position, entry in enumerate(segments):
        where = f"{stream}/{segment_file_name(entry.number)}"
        if entry.number != position:
            report.problems.append(f"{where}: listed at position {position} of the stream")
            continue
        if entry.final != (position == len(segments) - 1 and manifest.status != "recording"):
            report.problems.append(f"{where}: final mark is wrong in the manifest")
        path = stream_dir / segment_file_name(entry.number)
        try:
            ciphertext = path.read_bytes()
        except FileNotFoundError:
            report.problems.append(f"{where}: missing (listed in the manifest)")
            continue
        digest = hashlib.sha256(ciphertext).hexdigest()
        if digest != entry.sha256:
            other = by_hash.get(digest)
            hint = (
                f"; it is segment {other}'s file (segments swapped or moved)"
                if other is not None
                else ""
            )
            detail = _decrypt_failure(
                ciphertext, data_key, manifest, track_id, entry.number, stream
            )
            report.problems.append(
                f"{where}: SHA-256 does not match the manifest ({len(ciphertext)} bytes, "
                f"{entry.size} listed){hint}{detail}"
            )
            continue
        try:
            records, first, last = _count_records(
                ciphertext,
                data_key,
                stream_context(manifest.recording_id, track_id, entry.number, stream),
            )
        except IntegrityError as error:
            report.problems.append(f"{where}: does not decrypt: {error}")
            continue
        if (records, first, last) != (entry.records, entry.first_ms, entry.last_ms):
            report.problems.append(
                f"{where}: holds {records} records from {first} to {last} ms, the manifest "
                f"says {entry.records} from {entry.first_ms} to {entry.last_ms} ms"
            )
            continue
        total += records
        report.segments_checked += 1
    report.records[stream] = total


def _decrypt_failure(
    ciphertext: bytes,
    data_key: bytes,
    manifest: RecordingManifest,
    track_id: str | None,
    number: int,
    stream: str,
) -> str:
    """Why a file whose hash is wrong does not decrypt, if it does not (for the message)."""
    try:
        _count_records(
            ciphertext, data_key, stream_context(manifest.recording_id, track_id, number, stream)
        )
    except IntegrityError as error:
        return f"; it does not decrypt at this position: {error}"
    return ""


def _count_records(ciphertext: bytes, data_key: bytes, context: bytes) -> tuple[int, int, int]:
    count = first = last = 0
    for arrival, _ in iter_records(open_segment_reader(ciphertext, data_key, context)):
        if not count:
            first = arrival
        last = arrival
        count += 1
    return count, first, last


@dataclass(frozen=True, slots=True)
class RecordedPacket:
    """One stored record: an RTP packet as received (or an event's JSON)."""

    arrival_ms: int
    """When it arrived, ms since the recording started (the playout index)."""
    data: bytes
    """The RTP header and payload exactly as forwarded (or the event's UTF-8 JSON)."""


def iter_packets(
    directory: Path,
    data_key: bytes,
    track_id: str | None,
    start_ms: int = 0,
    *,
    public_key: Ed25519PublicKey | None = None,
    without_track: str = EVENTS_STREAM,
) -> Iterator[RecordedPacket]:
    """A track's records from `start_ms` on (`track_id` None: the stream `without_track`, the
    events stream unless told the images stream).

    Starts at the first segment whose last record is at or after `start_ms`, chosen from the
    manifest (a bisection over a list of a few hundred entries per hour), so only that segment
    and later ones are read and decrypted. Each segment is authenticated as it streams: a
    tampered one raises `SegmentIntegrityError` where it fails. With `public_key` the manifest's
    signature is checked first.
    """
    if public_key is not None:
        manifest = load_manifest(directory, public_key)
    else:
        manifest = read_manifest(directory)[0]
    if track_id is None:
        stream = without_track
    else:
        entry = manifest.track(track_id)
        if entry is None:
            raise KeyError(f"recording {manifest.recording_id} has no track {track_id!r}")
        stream = entry.stream
    segments = manifest.streams.get(stream, [])
    low, high = 0, len(segments)
    while low < high:
        middle = (low + high) // 2
        if segments[middle].last_ms < start_ms:
            low = middle + 1
        else:
            high = middle
    for entry_ in segments[low:]:
        context = stream_context(manifest.recording_id, track_id, entry_.number, stream)
        with open(directory / stream / segment_file_name(entry_.number), "rb") as file:
            try:
                for arrival, data in iter_records(open_segment_reader(file, data_key, context)):
                    if arrival >= start_ms:
                        yield RecordedPacket(arrival, bytes(data))
            except SegmentIntegrityError as error:
                raise SegmentIntegrityError(
                    f"{stream}/{segment_file_name(entry_.number)}: {error}",
                    reason=error.reason,
                    chunk=error.chunk,
                ) from None
