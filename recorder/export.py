"""Export a recording (or one case of it) to a standard file a normal player opens.

The stored RTP packets are depacketized back into the frames the senders encoded
(`recorder.depacketize`) and remuxed with PyAV as they are: no decode, no re-encode, so the
exported pictures and sound are bit for bit what the participants sent. The container is
**WebM** (VP8 and Opus, what browsers send and every player opens); when an H.264 track is
present it is **Matroska** (`.mkv`, the same container without WebM's codec restriction), since
Matroska takes Annex-B H.264 with its SPS/PPS directly and needs no second remux path.

Each recorded track becomes its own stream (several participants: several video and audio
streams), titled with the participant's name, role and source. All tracks share the recording's
millisecond timeline: a track's first frame is placed at its arrival time, and every later
frame at the spacing of its RTP timestamps (exact, unlike arrival times, which carry network
jitter). An export starts at the given time, or at a case marker (`case=N`, from its marker to
the next, or the end); video starts at its first keyframe there, so the file decodes from its
first frame.

Beside the media goes a sidecar JSON (`<out>.annotations.json` unless told otherwise): the
stamped annotation and chat events in the exported range, each with its time relative to the
export's start, the meeting events, the case markers and the consent records.

Before anything is read the manifest's signature is checked and the SHA-256 and size of every
segment in range are compared with it; each segment then authenticates as it decrypts. Any
failure raises `IntegrityError` naming what failed, and no output file is left behind.
"""

from __future__ import annotations

import contextlib
import fractions
import hashlib
import heapq
import json
import os
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import av
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core.errors import IntegrityError
from core.media.payloads import vp8_picture_size
from recorder.depacketize import (
    AssemblerStats,
    Frame,
    FrameAssembler,
    decoded_size,
    depacketizer_for,
)
from recorder.manifest import (
    EVENTS_STREAM,
    RecordingManifest,
    SegmentEntry,
    TrackEntry,
    load_manifest,
    segment_file_name,
)
from recorder.verify import iter_packets

ANNOTATIONS_FORMAT = "consilium-annotations/1"
"""Names the sidecar JSON's layout; bump it when a field changes meaning."""
MEDIA_TIME_BASE = fractions.Fraction(1, 1000)
"""Timestamps of every exported stream: milliseconds, Matroska's own default resolution."""
PROGRESS_EVERY = 500
"""Records read between two progress reports."""

ProgressCallback = Callable[[int, int], None]
"""Called with (done, total) as an export or bundle proceeds."""


@dataclass
class ExportedStream:
    """One stream of the exported file."""

    index: int
    """Its index in the file."""
    track_id: str
    """The recorded track it comes from."""
    participant_id: str
    """Who published it."""
    kind: str
    """`audio` or `video`."""
    codec: str
    """Codec name in the file (`vp8`, `h264`, `opus`)."""
    title: str
    """The stream's title tag."""
    frames: int = 0
    """Frames written."""
    first_ms: int = 0
    """Its first frame's time, ms from the export's start."""
    last_ms: int = 0
    """Its last frame's end, ms from the export's start."""
    width: int | None = None
    """Picture width (video)."""
    height: int | None = None
    """Picture height (video)."""
    stats: AssemblerStats = field(default_factory=AssemblerStats)
    """Packets seen, lost and dropped on the way."""


@dataclass
class ExportResult:
    """What `export_recording` wrote."""

    path: Path
    """The media file."""
    annotations_path: Path
    """The sidecar JSON."""
    container: str
    """`webm` or `matroska`."""
    recording_id: str
    """The recording exported."""
    start_ms: int
    """Start of the exported range on the recording's timeline."""
    end_ms: int | None
    """End of the range (exclusive), None: to the end of the recording."""
    case: int | None
    """The case exported (1-based, as the audit log numbers them), None for a time range."""
    duration_ms: int
    """Length of the media file: the latest end of any stream."""
    streams: list[ExportedStream]
    """The file's streams, in order."""
    events: int
    """Annotation and chat events written to the sidecar."""
    lost_video: list[str] = field(default_factory=list)
    """Video tracks with packets in range but no keyframe that starts them: not in the file
    (`verify_recording` reports such a track as a problem)."""


@dataclass(order=True)
class _Timed:
    pts: int
    stream: int
    duration: int = field(compare=False)
    frame: Frame = field(compare=False)


def export_recording(
    directory: Path,
    data_key: bytes,
    out_path: Path,
    *,
    public_key: Ed25519PublicKey,
    case: int | None = None,
    start_ms: int | None = None,
    end_ms: int | None = None,
    annotations_path: Path | None = None,
    progress: ProgressCallback | None = None,
    track_ids: Collection[str] | None = None,
) -> ExportResult:
    """Remux the recording in `directory` (or its case `case`, 1-based, or the range
    `start_ms`..`end_ms` of its timeline) into `out_path`, and its events into the sidecar.
    `track_ids`: only these tracks (the archive's player shows one camera, or each video of a
    grid in its own element); None: every track.

    Raises `IntegrityError` if the manifest's signature or any segment in range fails, and
    `ValueError` for a case, range or track the recording does not have.
    """
    manifest = _checked_manifest(directory, public_key)
    start, end = _export_range(manifest, case, start_ms, end_ms)
    if track_ids is not None:
        unknown = set(track_ids) - {t.track_id for t in manifest.tracks}
        if unknown:
            raise ValueError(f"the recording has no track {sorted(unknown)[0]!r}")
    tracks = [
        t
        for t in manifest.tracks
        if (track_ids is None or t.track_id in track_ids)
        and _in_range(manifest.streams.get(t.stream, []), start, end)
    ]
    _check_segment_files(directory, manifest, start, end)
    total = sum(
        s.records
        for name, segments in manifest.streams.items()
        for s in segments
        if _overlaps(s, start, end)
    )
    counter = _Progress(progress, total)
    sidecar = annotations_path or out_path.with_name(out_path.name + ".annotations.json")
    container = "matroska" if any(t.codec.lower() == "video/h264" for t in tracks) else "webm"
    temp = out_path.with_name(f".{out_path.name}.partial")
    try:
        lost_video: list[str] = []
        streams = _write_media(directory, data_key, manifest, tracks, start, end, temp,
                               container, counter, lost_video)  # fmt: skip
        events = _write_sidecar(directory, data_key, manifest, start, end, case, out_path,
                                sidecar, counter)  # fmt: skip
        os.replace(temp, out_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    counter.finish()
    return ExportResult(
        path=out_path,
        annotations_path=sidecar,
        container=container,
        recording_id=manifest.recording_id,
        start_ms=start,
        end_ms=end,
        case=case,
        duration_ms=max((s.last_ms for s in streams), default=0),
        streams=streams,
        events=events,
        lost_video=lost_video,
    )


def export_annotations(
    directory: Path,
    data_key: bytes,
    out_path: Path,
    *,
    public_key: Ed25519PublicKey,
    case: int | None = None,
    start_ms: int | None = None,
    end_ms: int | None = None,
) -> int:
    """Only the sidecar JSON of a case or range (what `export_recording` writes beside the
    media), without touching the media streams; returns the number of annotation and chat
    events written. The events stream's segments in range are checked like an export's."""
    manifest = _checked_manifest(directory, public_key)
    start, end = _export_range(manifest, case, start_ms, end_ms)
    events_only = RecordingManifest(
        manifest.recording_id, manifest.room_id, manifest.started,
        streams={EVENTS_STREAM: manifest.streams.get(EVENTS_STREAM, [])},
    )  # fmt: skip
    _check_segment_files(directory, events_only, start, end)
    media_name = out_path.name.removesuffix(".annotations.json")
    return _write_sidecar(directory, data_key, manifest, start, end, case, Path(media_name),
                          out_path, _Progress(None, 0))  # fmt: skip


def _checked_manifest(directory: Path, public_key: Ed25519PublicKey) -> RecordingManifest:
    """The manifest in `directory`, its signature checked and naming that directory."""
    manifest = load_manifest(directory, public_key)
    if manifest.recording_id != directory.name:
        raise IntegrityError(
            f"manifest is of recording {manifest.recording_id}, found in directory {directory.name}"
        )
    return manifest


class _Progress:
    def __init__(self, callback: ProgressCallback | None, total: int) -> None:
        self.callback = callback
        self.total = total
        self.done = 0
        self._reported = 0

    def step(self) -> None:
        self.done += 1
        if self.callback is not None and self.done - self._reported >= PROGRESS_EVERY:
            self._reported = self.done
            self.callback(min(self.done, self.total), self.total)

    def finish(self) -> None:
        if self.callback is not None:
            self.callback(self.total, self.total)


def _export_range(
    manifest: RecordingManifest, case: int | None, start_ms: int | None, end_ms: int | None
) -> tuple[int, int | None]:
    if case is not None:
        if start_ms is not None or end_ms is not None:
            raise ValueError("export either a case or a time range, not both")
        if not 1 <= case <= len(manifest.cases):
            raise ValueError(
                f"recording {manifest.recording_id} has {len(manifest.cases)} case(s), "
                f"not case {case}"
            )
        marker = manifest.cases[case - 1]
        following = manifest.cases[case] if case < len(manifest.cases) else None
        return marker.at_ms, following.at_ms if following is not None else None
    start = start_ms or 0
    if start < 0 or (end_ms is not None and end_ms <= start):
        raise ValueError(f"not a usable range: {start_ms}..{end_ms} ms")
    return start, end_ms


def _overlaps(segment: SegmentEntry, start: int, end: int | None) -> bool:
    return segment.last_ms >= start and (end is None or segment.first_ms < end)


def _in_range(segments: list[SegmentEntry], start: int, end: int | None) -> bool:
    return any(_overlaps(s, start, end) for s in segments)


def _check_segment_files(
    directory: Path, manifest: RecordingManifest, start: int, end: int | None
) -> None:
    """Every segment in range is the file the signed manifest lists (hash and size)."""
    for stream, segments in manifest.streams.items():
        for entry in segments:
            if not _overlaps(entry, start, end):
                continue
            where = f"{stream}/{segment_file_name(entry.number)}"
            digest = hashlib.sha256()
            size = 0
            try:
                with open(directory / stream / segment_file_name(entry.number), "rb") as file:
                    while chunk := file.read(1 << 20):
                        digest.update(chunk)
                        size += len(chunk)
            except FileNotFoundError:
                raise IntegrityError(f"{where}: missing (listed in the manifest)") from None
            if size != entry.size or digest.hexdigest() != entry.sha256:
                raise IntegrityError(
                    f"{where}: SHA-256 does not match the manifest ({size} bytes, "
                    f"{entry.size} listed)"
                )


def _title(manifest: RecordingManifest, track: TrackEntry) -> str:
    person = next(
        (p for p in manifest.participants if p.participant_id == track.participant_id), None
    )
    who = f"{person.name} ({person.role})" if person is not None else track.participant_id
    return f"{who} – {track.source}"


def _frames(
    directory: Path,
    data_key: bytes,
    track: TrackEntry,
    start: int,
    end: int | None,
    assembler: FrameAssembler,
    counter: _Progress,
) -> Iterator[Frame]:
    for record in iter_packets(directory, data_key, track.track_id, start):
        if end is not None and record.arrival_ms >= end:
            break
        counter.step()
        yield from assembler.push(record.data, record.arrival_ms)
    yield from assembler.flush()


def _timed(
    frames: Iterator[Frame], index: int, track: TrackEntry, start: int, out: ExportedStream
) -> Iterator[_Timed]:
    """Frames on the export's timeline (ms), each with its duration (to the next frame)."""
    origin: Frame | None = None
    previous: _Timed | None = None
    last_timestamp = -1
    for frame in frames:
        if origin is None:
            origin = frame
        if frame.timestamp <= last_timestamp:
            out.stats.dropped_frames += 1  # the sender's clock went back: not placeable
            continue
        last_timestamp = frame.timestamp
        offset = origin.arrival_ms - start
        pts = offset + round((frame.timestamp - origin.timestamp) * 1000 / track.clock_rate)
        if previous is not None:
            if pts <= previous.pts:
                pts = previous.pts + 1
            previous.duration = pts - previous.pts
            yield previous
        previous = _Timed(pts, index, 0, frame)
    if previous is not None:
        previous.duration = max(1, round(20 if track.kind == "audio" else 1000 / 30))
        yield previous


def _write_media(
    directory: Path,
    data_key: bytes,
    manifest: RecordingManifest,
    tracks: list[TrackEntry],
    start: int,
    end: int | None,
    path: Path,
    container: str,
    counter: _Progress,
    lost_video: list[str],
) -> list[ExportedStream]:
    sources: list[Iterator[_Timed]] = []
    firsts: list[_Timed | None] = []
    streams: list[ExportedStream] = []
    for track in tracks:
        assembler = FrameAssembler(depacketizer_for(track.codec), payload_type=track.payload_type)
        codec = track.codec.split("/", 1)[1].lower()
        out = ExportedStream(len(streams), track.track_id, track.participant_id, track.kind,
                             codec, _title(manifest, track), stats=assembler.stats)  # fmt: skip
        timed = _timed(
            _frames(directory, data_key, track, start, end, assembler, counter),
            out.index, track, start, out,
        )  # fmt: skip
        first = next(timed, None)
        if first is None:  # nothing decodable in range: no empty stream
            if track.kind == "video" and assembler.stats.packets:
                lost_video.append(track.track_id)
            continue
        streams.append(out)
        sources.append(timed)
        firsts.append(first)
    with av.open(str(path), "w", format=container) as output:
        output.metadata["title"] = f"Consilium recording {manifest.recording_id}"
        output.metadata["comment"] = f"room {manifest.room_id}, started {manifest.started}"
        mux_streams = []
        for out, first in zip(streams, firsts, strict=True):
            assert first is not None
            mux_streams.append(_add_stream(output, out, first.frame))
        merged = heapq.merge(
            *(_chain(first, rest) for first, rest in zip(firsts, sources, strict=True))
        )
        for item in merged:
            out = streams[item.stream]
            packet = av.Packet(item.frame.data)
            packet.stream = mux_streams[item.stream]
            packet.time_base = MEDIA_TIME_BASE
            packet.pts = packet.dts = item.pts
            packet.duration = item.duration
            packet.is_keyframe = item.frame.keyframe
            output.mux(packet)
            if not out.frames:
                out.first_ms = item.pts
            out.frames += 1
            out.last_ms = item.pts + item.duration
    return streams


def _chain(first: _Timed | None, rest: Iterator[_Timed]) -> Iterator[_Timed]:
    if first is not None:
        yield first
    yield from rest


def _add_stream(output: av.container.OutputContainer, out: ExportedStream, first: Frame) -> Any:
    if out.kind == "audio":
        # Opened as an encoder only so that libopus writes the OpusHead (channel count, sample
        # rate, pre-skip) the container's CodecPrivate needs; no frame is ever encoded.
        stream: Any = output.add_stream("libopus", rate=48000, layout="stereo")
    else:
        size = (
            vp8_picture_size(first.data)
            if out.codec == "vp8"
            else decoded_size(f"video/{out.codec}", first.data)
        )
        out.width, out.height = size or (0, 0)
        stream = output.add_mux_stream(out.codec, width=out.width, height=out.height)
    stream.time_base = MEDIA_TIME_BASE
    stream.metadata["title"] = out.title
    stream.metadata["participant"] = out.participant_id
    stream.metadata["track"] = out.track_id
    return stream


def _write_sidecar(
    directory: Path,
    data_key: bytes,
    manifest: RecordingManifest,
    start: int,
    end: int | None,
    case: int | None,
    media: Path,
    path: Path,
    counter: _Progress,
) -> int:
    events: list[dict[str, Any]] = []
    meeting: list[dict[str, Any]] = []
    if manifest.streams.get(EVENTS_STREAM):
        for record in iter_packets(directory, data_key, None, start):
            if end is not None and record.arrival_ms >= end:
                break
            counter.step()
            try:
                body = json.loads(record.data)
            except ValueError as error:
                raise IntegrityError(
                    f"events record at {record.arrival_ms} ms is not JSON: {error}"
                ) from None
            timing = {"at_ms": record.arrival_ms, "offset_ms": record.arrival_ms - start}
            if body.get("type") == "data":
                message: Any = body.get("message")
                with contextlib.suppress(TypeError, ValueError):
                    message = json.loads(message)
                events.append({**timing, "participant": body.get("participant"),
                               "label": body.get("label"), "message": message})  # fmt: skip
            else:
                meeting.append({**timing, **{k: v for k, v in body.items() if k != "type"}})
    marker_label = manifest.cases[case - 1].label if case is not None else None
    document = {
        "format": ANNOTATIONS_FORMAT,
        "recording_id": manifest.recording_id,
        "room_id": manifest.room_id,
        "started": manifest.started,
        "export": {
            "media": media.name,
            "start_ms": start,
            "end_ms": end,
            "case": None if case is None else {"number": case, "label": marker_label},
        },
        "cases": [
            {"number": i + 1, "label": c.label, "at_ms": c.at_ms, "offset_ms": c.at_ms - start}
            for i, c in enumerate(manifest.cases)
        ],
        "consent": [asdict(c) for c in manifest.consent],
        "participants": [asdict(p) for p in manifest.participants],
        "events": events,
        "meeting_events": meeting,
    }
    temp = path.with_name(f".{path.name}.partial")
    temp.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temp, path)
    return len(events)
