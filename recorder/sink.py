"""The recording sink: the SFU's forwarded packets into encrypted segments, without transcoding.

`RecordingSink` implements `sfu.sinks.MediaSink`. On the forwarding path it only appends each
packet, as received, to its track's in-memory buffer (a record: arrival ms, length, RTP bytes)
and every 64 KiB hands the buffer to one background writer thread through a bounded queue; the
writer encrypts it into the stream's open segment (the segment cipher encrypts as it writes, so
plaintext never reaches a file) and, when the sink says so, closes the segment: final chunk,
fsync, manifest rewritten. If the writer falls behind past the queue's bound, buffers are dropped
and counted (`dropped_records`), never waited for: the forwarder must not block.

Each video stream begins at a keyframe: until the forwarder hands it a packet that starts one,
the sink drops the track's packets (counted in the manifest as `before_keyframe`) and answers
"waiting", which makes the SFU ask the publisher for a keyframe. That happens when the recording
starts, when a recorded track appears and when a participant's consent arrives (or is given
again after a withdrawal), so a camera that was already on is recorded from its next keyframe.
A gap in a recorded video's sequence numbers (packets lost on the way in) asks again, so the
video is whole from the next keyframe even when no subscriber asks (no one else in the room).

Segments close together in every stream every `segment_seconds` (and at each case marker, so a
case is whole segments), and one stream's alone when it reaches `segment_bytes` or its track
ends. A crash therefore loses at most each stream's unfinished segment; `recover_interrupted`
closes such a recording as `interrupted`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.canonical import stamp_ms_offset
from core.durable import fsync_directory
from core.media.track import TrackInfo
from recorder.chunked import ChunkedEncryptor
from recorder.diskspace import failure_code
from recorder.manifest import (
    EVENTS_STREAM,
    IMAGES_STREAM,
    RECORD_HEADER,
    CaseMarker,
    ConsentRecord,
    RecordedParticipant,
    RecordingManifest,
    SegmentEntry,
    TrackEntry,
    check_recording_id,
    segment_file_name,
    stream_context,
    write_manifest,
)
from recorder.segments import open_segment_writer

log = logging.getLogger("consilium.recorder")

HANDOFF_BYTES = 64 * 1024
"""A track's buffer goes to the writer thread when it holds this much (about 50 video packets)."""


class AuditCallback(Protocol):
    """Where the recorder reports what it did: `AuditLog.append` fits. Called from the writer
    thread, so it must be thread-safe (`AuditLog.append` is)."""

    def __call__(self, action: str, outcome: str = "info", /, **fields: Any) -> object:
        """Record one event."""


def utc_now() -> str:
    """The current UTC time as the manifest writes it."""
    return stamp_ms_offset(datetime.now(UTC))


@dataclass(frozen=True)
class RecordingSettings:
    """How a recording is cut into segments and how much the writer may lag."""

    segment_seconds: float = 10.0
    """Every stream's open segment closes this often: what a crash may cost."""
    segment_bytes: int = 8 * 1024 * 1024
    """A stream's segment closes early at this much plaintext."""
    max_queued_bytes: int = 32 * 1024 * 1024
    """Buffers waiting for the writer beyond this are dropped (counted), not waited for."""


class _Stream:
    """One stream's records not yet handed to the writer (forwarding-path state)."""

    __slots__ = (
        "awaiting_keyframe", "before_keyframe", "buffer", "first_ms", "last_ms", "name",
        "next_seq", "pending", "segment_bytes", "video",
    )  # fmt: skip

    def __init__(self, name: str, video: bool = False) -> None:
        self.name = name
        self.video = video
        """A video track: recorded from a keyframe on."""
        self.awaiting_keyframe = video
        """Packets are dropped until one starts a keyframe."""
        self.before_keyframe = 0
        """Packets dropped while awaiting a keyframe."""
        self.next_seq: int | None = None
        """The RTP sequence number a video stream expects next (a jump past it: packets lost)."""
        self.buffer = bytearray()
        self.pending = 0
        """Records in `buffer`."""
        self.first_ms = 0
        self.last_ms = 0
        self.segment_bytes = 0
        """Plaintext bytes of the open segment so far (0: no open segment)."""


@dataclass
class _Data:
    stream: str
    payload: bytes
    records: int
    first_ms: int
    last_ms: int


@dataclass
class _Close:
    streams: list[str]
    case: CaseMarker | None = None


@dataclass
class _Track:
    entry: TrackEntry


@dataclass
class _Stream_:
    """A stream without a track (the images stream) appears."""

    name: str


@dataclass
class _Meta:
    """A participant or a consent answer for the manifest."""

    entry: RecordedParticipant | ConsentRecord


@dataclass
class _Stop:
    before_keyframe: dict[str, int] = field(default_factory=dict)
    """Per video stream: packets dropped while awaiting a keyframe (for the manifest)."""
    failure: str = ""
    """Stopped because it could not go on (`disk_full`): the manifest says `failed`."""


_Item = _Data | _Close | _Track | _Stream_ | _Meta | _Stop


class _HashingFile:
    """A segment file being written: counts and hashes the ciphertext on its way to disk."""

    __slots__ = ("file", "hash", "size")

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.file.write(data)


@dataclass
class _OpenSegment:
    number: int
    path: Path
    out: _HashingFile
    encryptor: ChunkedEncryptor
    records: int = 0
    first_ms: int = 0
    last_ms: int = 0


class RecordingSink:
    """Records one room into `<recordings_dir>/<recording_id>/` (see `recorder/manifest.py`).

    Call `start()`, attach it to the room's `sinks`, then `stop()` (which waits for the writer's
    last fsync; from asyncio, run it in a thread if that wait matters). All methods but the
    writer thread's own are called from one thread, the SFU's event loop.
    """

    def __init__(
        self,
        recordings_dir: Path,
        recording_id: str,
        room_id: str,
        data_key: bytes,
        signing_key: Ed25519PrivateKey,
        *,
        audit: AuditCallback | None = None,
        settings: RecordingSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        recording_class: str = "mdt",
        record_everyone: bool = False,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.recording_id = check_recording_id(recording_id)
        self.room_id = room_id
        self.directory = recordings_dir / recording_id
        self.settings = settings or RecordingSettings()
        self.dropped_records = 0
        """Records dropped because the writer fell behind (read by the writer, for the manifest)."""
        self.faults = 0
        """Packets or events the sink itself failed on (a bug; only the first is logged)."""
        self.failure: BaseException | None = None
        """Why the writer stopped, if it failed (a full disk); the sink then records nothing."""
        self._on_failure = on_failure
        """Told (from the writer thread) when the writer fails, so the room hears at once."""
        self._data_key = data_key
        self._signing_key = signing_key
        self._audit = audit
        self._clock = clock
        self._t0 = 0.0
        self._segment_ms = int(self.settings.segment_seconds * 1000)
        self._next_boundary = self._segment_ms
        self._streams: dict[str, _Stream] = {}
        """By track id (and `EVENTS_STREAM` for events)."""
        self._track_count = 0
        self._owners: dict[str, str] = {}
        """Participant id of each recorded track, by track id."""
        self._recorded: set[str] = set()
        """Participants whose media is recorded (they consented); others' packets are dropped."""
        self._running = False
        self._stop_sent = False
        self._queue: deque[_Item] = deque()
        self._queued_bytes = 0
        self._wake = threading.Condition(threading.Lock())
        self._manifest = RecordingManifest(
            recording_id, room_id, started=utc_now(), recording_class=recording_class
        )
        self._open: dict[str, _OpenSegment] = {}
        self._record_everyone = record_everyone
        """Record every participant's media without a consent step (tests and tools only)."""
        self._thread = threading.Thread(
            target=self._write_loop, name=f"recorder-{recording_id}", daemon=True
        )
        self.last_manifest_sha256 = ""
        """SHA-256 of the manifest file as last written."""

    # --- the event loop's side -------------------------------------------------------------

    def start(self) -> str:
        """Create the recording's directory and first manifest, start the writer; returns the
        manifest's SHA-256 (also sent to the audit callback)."""
        self.directory.mkdir(parents=True, exist_ok=False, mode=0o700)
        fsync_directory(self.directory.parent)
        self._manifest.started = utc_now()
        self._streams[EVENTS_STREAM] = _Stream(EVENTS_STREAM)
        self._manifest.streams[EVENTS_STREAM] = []
        self.last_manifest_sha256 = self._write_manifest()
        self._t0 = self._clock()
        self._running = True
        self._thread.start()
        self._report("recording_started", manifest_sha256=self.last_manifest_sha256)
        return self.last_manifest_sha256

    def now_ms(self) -> int:
        """Milliseconds since the recording started: the timeline of every record."""
        return round((self._clock() - self._t0) * 1000)

    def on_track(self, track: TrackInfo) -> None:
        """A track appears: it gets its own stream (`track-<n>`)."""
        if not self._running or track.track_id in self._streams:
            return
        if not self._record_everyone and track.participant_id not in self._recorded:
            return
        name = f"track-{self._track_count}"
        self._track_count += 1
        self._streams[track.track_id] = _Stream(name, video=track.kind == "video")
        self._owners[track.track_id] = track.participant_id
        entry = TrackEntry.from_track(name, track)
        self._put_control(_Track(entry))
        self.meeting_event("track_started", track_id=track.track_id, stream=name)

    def on_rtp(self, track: TrackInfo, packet: bytes, arrival_ms: int, keyframe: bool) -> bool:
        """Buffer one packet as received (hot path: watched by `bench/recording.py`
        `record_cpu_s_per_s`). Never blocks, never raises. The record's time is the sink's own
        clock (ms since start), one timeline for every track and event; `arrival_ms` (the
        transport's clock) is not used. A video stream starts at a packet that starts a keyframe
        (`keyframe`, told by the SFU); before it the packet is dropped and True returned, so the
        SFU asks the publisher for a keyframe. True also after a gap in a video stream's
        sequence numbers (packets lost: the video is broken until the next keyframe)."""
        if not self._running:
            return False
        try:
            if not (self._record_everyone or track.participant_id in self._recorded):
                return False  # no consent (not yet, or withdrawn): their media is left out
            stream = self._streams.get(track.track_id)
            if stream is None:
                self.on_track(track)  # published before the recording started
                stream = self._streams[track.track_id]
            lost = False
            if stream.video:
                if stream.awaiting_keyframe:
                    if not keyframe:
                        stream.before_keyframe += 1
                        return True
                    stream.awaiting_keyframe = False
                    stream.next_seq = None
                # A gap: what follows cannot be decoded until the next keyframe. Nobody else
                # may ask for one (no subscriber, or none that lost the same packets), so ask.
                sequence = (packet[2] << 8) | packet[3]
                expected = stream.next_seq
                ahead = 0 if expected is None else (sequence - expected) & 0xFFFF
                if ahead < 0x8000:  # in order or after a gap (a late packet changes nothing)
                    lost = ahead > 0
                    stream.next_seq = (sequence + 1) & 0xFFFF
            now = round((self._clock() - self._t0) * 1000)
            if now >= self._next_boundary:
                self._boundary(now)
            self._append(stream, now, packet)
        except Exception:  # a recorder bug must never break forwarding
            self._fault("packet")
            return False
        return lost

    def on_track_ended(self, track: TrackInfo) -> None:
        """The track is gone: its open segment closes now (so it is safe on disk)."""
        stream = self._streams.get(track.track_id)
        if stream is None or not self._running:
            return
        self.meeting_event("track_ended", track_id=track.track_id, stream=stream.name)
        self._close([stream])

    def on_data(self, room_id: str, participant_id: str, label: str, message: str) -> None:
        """A stamped data-channel event (annotation op, chat): into the events stream."""
        self._event(
            {"type": "data", "participant": participant_id, "label": label, "message": message}
        )

    def meeting_event(self, event: str, **fields: Any) -> None:
        """A meeting event (someone joined, left, recording notice shown...) on the timeline."""
        self._event({"type": "meeting", "event": event, **fields})

    def add_participant(self, participant: RecordedParticipant) -> None:
        """Someone is present (listed in the manifest whether or not they are recorded)."""
        if not self._running:
            return
        self._put_control(_Meta(participant))
        self.meeting_event("participant_present", participant=participant.participant_id)

    def record_consent(self, consent: ConsentRecord) -> None:
        """Store a consent answer; from now on their media is recorded (granted) or left out
        (declined). A decliner's open segments close, so what is on disk stops there."""
        if not self._running:
            return
        self._put_control(_Meta(consent))
        self.meeting_event(
            "consent", participant=consent.participant_id, decision=consent.decision,
            method=consent.method,
        )  # fmt: skip
        if consent.decision == "granted":
            if consent.participant_id not in self._recorded:
                # Recorded again after a withdrawal: their video resumes at a keyframe.
                for track_id, owner in self._owners.items():
                    stream = self._streams[track_id]
                    if owner == consent.participant_id and stream.video:
                        stream.awaiting_keyframe = True
            self._recorded.add(consent.participant_id)
            return
        self._recorded.discard(consent.participant_id)
        mine = [
            self._streams[track_id]
            for track_id, owner in self._owners.items()
            if owner == consent.participant_id
        ]
        if mine:
            self._close(mine)

    def is_recorded(self, participant_id: str) -> bool:
        """Whether this participant's media goes into the recording now."""
        return self._record_everyone or participant_id in self._recorded

    def add_image(self, meta: dict[str, Any], frames: list[bytes]) -> None:
        """A shared image the meeting may draw on: each rendered frame into the images stream
        (encrypted like the media), so the archive shows the shapes on what they were drawn
        on. `meta` names it (`image_id`, `media_type`, `title`, `width`, `height`, ...)."""
        if not self._running:
            return
        try:
            stream = self._streams.get(IMAGES_STREAM)
            if stream is None:
                stream = self._streams[IMAGES_STREAM] = _Stream(IMAGES_STREAM)
                self._put_control(_Stream_(IMAGES_STREAM))
            now = self.now_ms()
            for index, data in enumerate(frames):
                header = json.dumps({**meta, "frame": index}, separators=(",", ":")).encode()
                self._append(stream, now, header + b"\n" + data)
            self._close([stream])
            self.meeting_event("image_recorded", image_id=meta.get("image_id"), frames=len(frames))
        except Exception:
            self._fault("image")

    def mark_case(self, label: str) -> int:
        """Start case `label`: every open segment closes, so the case begins whole segments.
        Returns its time (ms since start); the manifest's new hash goes to the audit callback."""
        if not self._running:
            raise RuntimeError(f"recording {self.recording_id} is not running")
        now = self.now_ms()
        marker = CaseMarker(label=label, at_ms=now)
        self._close(list(self._streams.values()), case=marker)
        self._next_boundary = now + self._segment_ms
        self.meeting_event("case_marked", label=label)
        return now

    def stop(self, timeout: float | None = 30.0, failure: str = "") -> RecordingManifest:
        """Close every segment, mark the recording complete, wait for the writer.

        With `failure` (a code: `disk_full`), it is closed the same way but marked `failed`
        (the disk watcher stops it while there is still room to close it cleanly). If the
        writer itself failed (`failure`), the segments completed before the failure are kept,
        the unfinished ones deleted, and the manifest says `failed` and where it stopped."""
        if self._thread.ident is None:
            return self._manifest  # never started
        if self._running:
            self.meeting_event("recording_failed" if failure else "recording_stopped")
            self._close(list(self._streams.values()))
            self._running = False
        if not self._stop_sent:  # also after a writer failure, so the thread ends
            self._stop_sent = True
            waited = {s.name: s.before_keyframe for s in self._streams.values() if s.video}
            self._put_control(_Stop(waited, failure))
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"recording {self.recording_id}: writer did not finish")
        return self._manifest

    @property
    def manifest(self) -> RecordingManifest:
        """The manifest as the writer last wrote it (read it after `stop`)."""
        return self._manifest

    def _event(self, body: dict[str, Any]) -> None:
        try:
            if not self._running:
                return
            now = self.now_ms()
            if now >= self._next_boundary:
                self._boundary(now)
            payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
            self._append(self._streams[EVENTS_STREAM], now, payload)
        except Exception:
            self._fault("event")

    def _fault(self, what: str) -> None:
        # Logged once, counted always: a bug hit per packet must not flood the log.
        self.faults += 1
        if self.faults == 1:
            log.exception("recording %s: %s not recorded", self.recording_id, what)

    def _append(self, stream: _Stream, now: int, payload: bytes) -> None:
        if stream.pending == 0:
            stream.first_ms = now
        stream.buffer += RECORD_HEADER.pack(now, len(payload))
        stream.buffer += payload
        stream.pending += 1
        stream.last_ms = now
        stream.segment_bytes += RECORD_HEADER.size + len(payload)
        if stream.segment_bytes >= self.settings.segment_bytes:
            self._close([stream])
        elif len(stream.buffer) >= HANDOFF_BYTES:
            self._hand_off(stream)

    def _hand_off(self, stream: _Stream) -> None:
        if not stream.pending:
            return
        item = _Data(
            stream.name, bytes(stream.buffer), stream.pending, stream.first_ms, stream.last_ms
        )
        stream.buffer.clear()
        records, stream.pending = stream.pending, 0
        if self._queued_bytes + len(item.payload) > self.settings.max_queued_bytes:
            self.dropped_records += records
            return
        with self._wake:
            self._queued_bytes += len(item.payload)
            self._queue.append(item)
            self._wake.notify()

    def _close(self, streams: list[_Stream], case: CaseMarker | None = None) -> None:
        names = []
        for stream in streams:
            self._hand_off(stream)
            if stream.segment_bytes:
                names.append(stream.name)
                stream.segment_bytes = 0
        if names or case is not None:
            self._put_control(_Close(names, case))

    def _boundary(self, now: int) -> None:
        # Every stream closes at the same instants: a crash costs each at most one period.
        self._next_boundary = now - (now % self._segment_ms) + self._segment_ms
        self._close(list(self._streams.values()))

    def _put_control(self, item: _Item) -> None:
        with self._wake:
            self._queue.append(item)
            self._wake.notify()

    def _report(self, action: str, outcome: str = "info", **fields: Any) -> None:
        if self._audit is None:
            return
        try:
            self._audit(action, outcome, room=self.room_id, recording=self.recording_id, **fields)
        except Exception:
            log.exception("recording %s: audit callback failed", self.recording_id)

    # --- the writer thread -----------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            with self._wake:
                while not self._queue:
                    self._wake.wait()
                item = self._queue.popleft()
                if isinstance(item, _Data):
                    self._queued_bytes -= len(item.payload)
            if self.failure is not None:
                if isinstance(item, _Stop):
                    self._finish_failed(item)
                    return
                continue
            try:
                if self._handle(item):
                    return
            except Exception as error:  # a full disk, a removed directory
                self.failure = error
                self._running = False
                log.exception("recording %s: writer failed", self.recording_id)
                if self._on_failure is not None:
                    try:
                        self._on_failure(error)
                    except Exception:
                        log.exception("recording %s: failure callback failed", self.recording_id)
                if isinstance(item, _Stop):
                    self._finish_failed(item)
                    return

    def _finish_failed(self, item: _Stop) -> None:
        """After the writer failed: keep the completed segments, delete the unfinished ones
        (never listed, so nothing refers to them, and on a full disk that gives back the room
        the manifest needs), and mark the manifest `failed`."""
        for segment in self._open.values():
            for step in (segment.out.file.close, segment.path.unlink):
                try:
                    step()  # closing flushes, which may fail again: the file goes anyway
                except OSError:
                    pass
        self._open.clear()
        for entry in self._manifest.tracks:
            entry.before_keyframe = item.before_keyframe.get(entry.stream, 0)
        self._mark_failed(item.failure or failure_code(self.failure))

    def _mark_failed(self, code: str) -> None:
        """Sign the manifest as `failed` with `code` and where the stored media ends (the last
        completed segment), and audit it; a manifest that cannot be written is left to
        recovery (`interrupted` at the next start) and the audit entry says so."""
        streams = self._manifest.streams.values()
        for segments in streams:
            if segments:
                segments[-1].final = True
        self._manifest.status = "failed"
        self._manifest.failure = code
        self._manifest.stopped_at_ms = max(
            (segment.last_ms for segments in streams for segment in segments), default=0
        )
        self._manifest.ended = utc_now()
        written: str | None = None
        try:
            written = self.last_manifest_sha256 = self._write_manifest()
        except OSError:
            log.exception("recording %s: failed manifest not written", self.recording_id)
        self._report(
            "recording_failed", "error", reason=code, stopped_at_ms=self._manifest.stopped_at_ms,
            manifest_sha256=written, manifest_written=written is not None,
        )  # fmt: skip

    def _handle(self, item: _Item) -> bool:
        if isinstance(item, _Data):
            segment = self._open.get(item.stream) or self._open_segment(item.stream)
            if not segment.records:
                segment.first_ms = item.first_ms
            segment.encryptor.write(item.payload)
            segment.records += item.records
            segment.last_ms = item.last_ms
        elif isinstance(item, _Track):
            self._manifest.tracks.append(item.entry)
            self._manifest.streams[item.entry.stream] = []
            (self.directory / item.entry.stream).mkdir(mode=0o700)
            self.last_manifest_sha256 = self._write_manifest()
        elif isinstance(item, _Stream_):
            self._manifest.streams.setdefault(item.name, [])
        elif isinstance(item, _Meta):
            if isinstance(item.entry, RecordedParticipant):
                known = {p.participant_id for p in self._manifest.participants}
                if item.entry.participant_id not in known:
                    self._manifest.participants.append(item.entry)
            else:
                self._manifest.consent.append(item.entry)
            self.last_manifest_sha256 = self._write_manifest()
        elif isinstance(item, _Close):
            for name in item.streams:
                self._close_segment(name)
            if item.case is not None:
                self._manifest.cases.append(item.case)
            self.last_manifest_sha256 = self._write_manifest()
            if item.case is not None:
                # The label may name a patient: the audit log gets only its position and time.
                self._report(
                    "recording_case_marked",
                    case=len(self._manifest.cases),
                    at_ms=item.case.at_ms,
                    manifest_sha256=self.last_manifest_sha256,
                )
        else:
            for entry in self._manifest.tracks:
                entry.before_keyframe = item.before_keyframe.get(entry.stream, 0)
            for name in list(self._open):
                self._close_segment(name)
            for segments in self._manifest.streams.values():
                if segments:
                    segments[-1].final = True
            if item.failure:
                self._mark_failed(item.failure)
                return True
            self._manifest.status = "complete"
            self._manifest.ended = utc_now()
            self.last_manifest_sha256 = self._write_manifest()
            self._report("recording_stopped", manifest_sha256=self.last_manifest_sha256)
            return True
        return False

    def _open_segment(self, stream: str) -> _OpenSegment:
        number = len(self._manifest.streams[stream])
        directory = self.directory / stream
        directory.mkdir(mode=0o700, exist_ok=True)
        path = directory / segment_file_name(number)
        out = _HashingFile(open(path, "xb"))  # closed in _close_segment
        track_id = self._manifest.track_of_stream(stream)
        context = stream_context(self.recording_id, track_id, number, stream)
        segment = _OpenSegment(number, path, out, open_segment_writer(out, self._data_key, context))
        self._open[stream] = segment
        return segment

    def _close_segment(self, stream: str) -> None:
        segment = self._open.pop(stream, None)
        if segment is None:
            return
        segment.encryptor.close()
        file = segment.out.file
        file.flush()
        os.fsync(file.fileno())
        file.close()
        fsync_directory(segment.path.parent)
        self._manifest.streams[stream].append(
            SegmentEntry(
                number=segment.number,
                sha256=segment.out.hash.hexdigest(),
                size=segment.out.size,
                first_ms=segment.first_ms,
                last_ms=segment.last_ms,
                records=segment.records,
            )
        )

    def _write_manifest(self) -> str:
        self._manifest.dropped_records = self.dropped_records
        self._manifest.updated = utc_now()
        return write_manifest(self.directory, self._manifest, self._signing_key)
