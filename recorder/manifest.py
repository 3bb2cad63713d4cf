"""The recording's manifest: what was recorded, where each segment is, and a signature over it all.

One JSON document per recording, `<recording dir>/manifest.json`, rewritten atomically (temp file,
fsync, rename, directory fsync) each time a segment closes, so after a crash it lists exactly the
segments that are complete on disk. It names the tracks, the ordered segments of every stream
(with the SHA-256 of each ciphertext file, its size, first/last arrival time and record count),
the case markers and the consent records, and is signed with the node's Ed25519 audit key over
its canonical JSON (sorted keys, no spaces), so editing any field is detected by `verify`.

On disk, per recording:

    <recording id>/manifest.json
    <recording id>/<stream>/<segment number, 6 digits>.seg

where a stream is `track-<n>` (one per recorded track, in the order they appeared), `events`
(data-channel and meeting events) or `images` (the shared images the annotations are drawn
on). Each segment is the segment cipher's container (`recorder/segments.py`) under
`segment_context(recording id, stream context, number)`; its plaintext is a sequence of
records `arrival ms (u32, big-endian) || length (u32) || bytes`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from core.canonical import canonical_json, stamp_ms_offset
from core.durable import write_atomically
from core.errors import IntegrityError
from core.media.track import TrackInfo
from recorder.segments import segment_context

MANIFEST_NAME = "manifest.json"
"""The manifest's file name in a recording's directory."""
MANIFEST_FORMAT = "consilium-recording/1"
"""Names the layout and record format; a reader refuses any other."""
EVENTS_STREAM = "events"
"""The stream of data-channel (annotation, chat) and meeting events."""
IMAGES_STREAM = "images"
"""The stream of the shared images the annotations are drawn on: one record per frame, a JSON
line (image id, frame, media type, title, size, pixel spacing) then the rendered image bytes."""
STREAMS_WITHOUT_TRACK = (EVENTS_STREAM, IMAGES_STREAM)
SEGMENT_SUFFIX = ".seg"
"""Ends every segment file's name."""


class AuditCallback(Protocol):
    """Where the recorder reports what it did: `AuditLog.append` fits. Called from the writer
    thread, so it must be thread-safe (`AuditLog.append` is)."""

    def __call__(self, action: str, outcome: str = "info", /, **fields: Any) -> object:
        """Record one event."""


def utc_now() -> str:
    """The current UTC time as the manifest writes it."""
    return stamp_ms_offset(datetime.now(UTC))


RecordingStatus = Literal["recording", "complete", "interrupted", "failed"]
"""`recording` while the sink runs (or after a crash, until recovery), `complete` after a clean
stop, `interrupted` when recovery closed it after a crash, `failed` when it stopped by itself
(a full disk: see `failure` and `stopped_at_ms`)."""

RECORD_HEADER = struct.Struct(">II")
"""Before each record: its arrival time (ms since the recording started) and its length."""

_RECORDING_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_recording_id(recording_id: str) -> str:
    """Refuse an id that is not usable as a directory name (the caller's bug, not data)."""
    if not _RECORDING_ID.fullmatch(recording_id):
        raise ValueError(f"not a usable recording id: {recording_id!r}")
    return recording_id


def segment_file_name(number: int) -> str:
    """The file name of segment `number` of a stream."""
    return f"{number:06d}{SEGMENT_SUFFIX}"


def stream_context(
    recording_id: str, track_id: str | None, number: int, stream: str = EVENTS_STREAM
) -> bytes:
    """The segment cipher's context of one segment: recording id, the track id (None: the
    stream without a track named by `stream`, events or images) and the segment's number, so a
    segment moved to another recording, track, stream or position fails its commitment check."""
    name = stream if track_id is None else f"track:{track_id}"
    return segment_context(recording_id, name, number)


def encode_record(arrival_ms: int, payload: bytes) -> bytes:
    """One record as stored: header and bytes."""
    return RECORD_HEADER.pack(arrival_ms, len(payload)) + payload


def iter_records(chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """The records (arrival ms, bytes) of a segment's plaintext, given in any pieces.

    Raises `IntegrityError` if the plaintext does not end on a record boundary (which an
    authenticated segment never does, unless it was written by something else).
    """
    pending = b""
    size = RECORD_HEADER.size
    for chunk in chunks:
        data = pending + chunk if pending else chunk
        pos = 0
        end = len(data)
        while end - pos >= size:
            arrival, length = RECORD_HEADER.unpack_from(data, pos)
            if end - pos - size < length:
                break
            yield arrival, data[pos + size : pos + size + length]
            pos += size + length
        pending = data[pos:]
    if pending:
        raise IntegrityError(f"segment ends inside a record ({len(pending)} bytes left over)")


@dataclass
class TrackEntry:
    """One recorded track: the `TrackInfo` the SFU forwarded it with, less the room (the
    manifest's), plus where it is stored and what was left out. Flat, because these are the
    manifest's JSON field names on disk."""

    stream: str
    """Its stream (directory) in the recording: `track-<n>`."""
    track_id: str
    """The SFU's track id (participant id + media id)."""
    participant_id: str
    """Who published it."""
    kind: str
    """`audio` or `video`."""
    codec: str
    """MIME type, e.g. `video/VP8`."""
    clock_rate: int
    """RTP clock rate of the codec."""
    payload_type: int
    """Payload type of the stored packets."""
    source: str
    """`microphone`, `camera` or `screen`."""
    before_keyframe: int = 0
    """Video packets received while the recording waited for this track's first keyframe (and
    after a consent renewed), left out because nothing before a keyframe decodes. Many of them
    and no records: the publisher never answered the keyframe requests, the video is lost."""

    @classmethod
    def from_track(cls, stream: str, track: TrackInfo) -> TrackEntry:
        """The entry of `track`, recorded in `stream`."""
        return cls(
            stream=stream,
            track_id=track.track_id,
            participant_id=track.participant_id,
            kind=track.kind,
            codec=track.codec,
            clock_rate=track.clock_rate,
            payload_type=track.payload_type,
            source=track.source,
        )


@dataclass
class SegmentEntry:
    """One closed segment of a stream."""

    number: int
    """Its position in the stream, from 0 (bound into its cipher context)."""
    sha256: str
    """Hex SHA-256 of the ciphertext file."""
    size: int
    """Bytes of the ciphertext file."""
    first_ms: int
    """Arrival time of its first record, ms since the recording started."""
    last_ms: int
    """Arrival time of its last record."""
    records: int
    """Records (RTP packets or events) in it."""
    final: bool = False
    """The stream's last segment (set at a clean stop, or by crash recovery)."""


@dataclass
class CaseMarker:
    """A case of the MDT agenda: it starts a new segment in every stream."""

    label: str
    """What the chair called it ("case 3")."""
    at_ms: int
    """When it was marked, ms since the recording started."""


@dataclass
class RecordedParticipant:
    """Someone who was in the room while it was recorded (recorded or not: see `consent`)."""

    participant_id: str
    """Their connection's participant id (tracks and events name it)."""
    sub: str
    """Their identity (the token subject)."""
    name: str
    """Display name as the token stated it."""
    role: str
    """Their role in the meeting."""
    depts: list[str]
    """Their departments."""
    org: str = ""
    """Their institution."""
    joined_ms: int = 0
    """When they were first present, ms since the recording started."""


@dataclass
class ConsentRecord:
    """One participant's answer to the recording notice."""

    participant_id: str
    """Whose answer it is."""
    sub: str
    """Their identity."""
    decision: Literal["granted", "declined"]
    """Whether they agreed to be recorded."""
    method: Literal["client", "verbal"]
    """`client`: they answered the notice themselves; `verbal`: the chair recorded their spoken
    consent for them."""
    at: str
    """UTC time of the answer, ISO 8601."""
    at_ms: int
    """The same, ms since the recording started (0 when given before it started)."""
    notice_version: str
    """Version of the notice text they were shown (or read aloud)."""
    recorded_by: str = ""
    """For a verbal consent: the participant id of the chair who recorded it."""


@dataclass(frozen=True)
class Continuation:
    """A recording that carries on another one, whose node stopped recording it: lost (its
    process died) or drained (a planned stop moved the room's media). The media between the
    two is missing: `verify` reports the gap."""

    recording_id: str
    """The recording this one continues (in the archive of `node`)."""
    node: str
    """The node that recorded it."""
    reason: Literal["node_lost", "drain"]
    last_seen: str
    """UTC time the room's recording state was last confirmed on that node, ISO 8601: what it
    recorded ended at or after this (node lost), at most a few seconds later."""


@dataclass
class RecordingManifest:
    """Everything that says what a recording holds; signed as a whole."""

    recording_id: str
    """The recording's id (its directory name and its keyring entry)."""
    room_id: str
    """The room it was recorded in."""
    started: str
    """UTC start time, ISO 8601."""
    status: RecordingStatus = "recording"
    """See `RecordingStatus`."""
    ended: str | None = None
    """UTC end time (clean stop), or the last manifest write before a crash; None while on."""
    updated: str | None = None
    """UTC time of this manifest's last write."""
    tracks: list[TrackEntry] = field(default_factory=list)
    """The recorded tracks, in the order they appeared."""
    streams: dict[str, list[SegmentEntry]] = field(default_factory=dict)
    """Each stream's closed segments, in order."""
    cases: list[CaseMarker] = field(default_factory=list)
    """Case markers, in order."""
    participants: list[RecordedParticipant] = field(default_factory=list)
    """Everyone present while it was recorded, in the order they appeared."""
    consent: list[ConsentRecord] = field(default_factory=list)
    """Every consent answer, in order (a later answer of the same participant replaces an
    earlier one from its time on)."""
    recording_class: str = "mdt"
    """The retention class (settings say how long each class is kept)."""
    dropped_records: int = 0
    """Records the sink had to drop (its writer fell behind); 0 in a healthy recording."""
    notes: list[str] = field(default_factory=list)
    """What crash recovery did, in words."""
    failure: str = ""
    """Why a `failed` recording stopped: `disk_full` or `write_failed`."""
    stopped_at_ms: int | None = None
    """Where a `failed` recording's stored media ends (ms since start: the end of its last
    completed segment); nothing after it was kept."""
    continues: Continuation | None = None
    """The recording this one continues on another node (issue 13), if any."""
    format: str = MANIFEST_FORMAT
    """See `MANIFEST_FORMAT`."""

    def track(self, track_id: str) -> TrackEntry | None:
        """The entry of a recorded track, by the SFU's track id."""
        return next((t for t in self.tracks if t.track_id == track_id), None)

    def track_of_stream(self, stream: str) -> str | None:
        """The track id recorded in `stream` (None for the events and images streams)."""
        entry = next((t for t in self.tracks if t.stream == stream), None)
        if entry is None:
            if stream in STREAMS_WITHOUT_TRACK:
                return None
            raise IntegrityError(f"manifest lists stream {stream!r} but no track for it")
        return entry.track_id

    def body(self) -> dict[str, Any]:
        """The signed content, as JSON values. The failure fields appear only in a failed
        recording's manifest, so manifests written before they existed still verify."""
        body = asdict(self)
        if not self.failure:
            del body["failure"]
        if self.stopped_at_ms is None:
            del body["stopped_at_ms"]
        if self.continues is None:
            del body["continues"]
        for track in body["tracks"]:  # likewise a track's count of packets before a keyframe
            if not track["before_keyframe"]:
                del track["before_keyframe"]
        return body

    def canonical(self) -> bytes:
        """What is signed: canonical JSON of `body`."""
        return canonical_json(self.body())

    def to_json(self, signing_key: Ed25519PrivateKey) -> bytes:
        """The signed manifest file's bytes."""
        public = signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        document = self.body()
        document["signature"] = {
            "alg": "Ed25519",
            "public_key": base64.b64encode(public).decode(),
            "value": base64.b64encode(signing_key.sign(self.canonical())).decode(),
        }
        return json.dumps(document, indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> tuple[RecordingManifest, bytes]:
        """Parse a manifest file: the manifest and its signature (not checked here)."""
        try:
            document = json.loads(raw)
            signature = base64.b64decode(document.pop("signature")["value"], validate=True)
            if document.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"unknown format {document.get('format')!r}")
            manifest = cls(
                **{
                    **document,
                    "tracks": [TrackEntry(**t) for t in document["tracks"]],
                    "streams": {
                        name: [SegmentEntry(**s) for s in segments]
                        for name, segments in document["streams"].items()
                    },
                    "cases": [CaseMarker(**c) for c in document["cases"]],
                    "participants": [
                        RecordedParticipant(**p) for p in document.get("participants", [])
                    ],
                    "consent": [ConsentRecord(**c) for c in document.get("consent", [])],
                    "continues": (
                        Continuation(**document["continues"]) if document.get("continues") else None
                    ),
                }
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise IntegrityError(f"manifest is malformed: {error}") from None
        return manifest, signature

    def check_signature(self, signature: bytes, public_key: Ed25519PublicKey) -> None:
        """Raise `IntegrityError` unless `signature` is the key's signature of this manifest."""
        try:
            public_key.verify(signature, self.canonical())
        except (InvalidSignature, ValueError):  # ValueError: NaN, or not UTF-8, in the manifest
            raise IntegrityError(
                "manifest signature is not valid: the manifest was edited, or signed by another key"
            ) from None


def read_manifest(directory: Path) -> tuple[RecordingManifest, bytes, bytes]:
    """A recording's manifest, its signature and the file's raw bytes (for its hash)."""
    try:
        raw = (directory / MANIFEST_NAME).read_bytes()
    except FileNotFoundError:
        raise IntegrityError(f"recording {directory.name}: no {MANIFEST_NAME}") from None
    manifest, signature = RecordingManifest.from_json(raw)
    return manifest, signature, raw


def load_manifest(directory: Path, public_key: Ed25519PublicKey) -> RecordingManifest:
    """A recording's manifest, after checking its signature."""
    manifest, signature, _ = read_manifest(directory)
    manifest.check_signature(signature, public_key)
    return manifest


def write_manifest(
    directory: Path, manifest: RecordingManifest, signing_key: Ed25519PrivateKey
) -> str:
    """Sign and write the manifest atomically; returns the SHA-256 (hex) of the file written."""
    data = manifest.to_json(signing_key)
    write_atomically(directory / MANIFEST_NAME, data)
    return hashlib.sha256(data).hexdigest()
