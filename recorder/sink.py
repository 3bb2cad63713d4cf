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

This module is the forwarding path's side; the rules of when a stream starts, hands off and
closes are `recorder.rotation` (pure, `now` passed in), and the writer thread is
`recorder.segment_writer`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.durable import fsync_directory
from core.media.track import TrackInfo
from recorder.manifest import (
    EVENTS_STREAM,
    IMAGES_STREAM,
    AuditCallback,
    CaseMarker,
    ConsentRecord,
    Continuation,
    RecordedParticipant,
    RecordingManifest,
    TrackEntry,
    check_recording_id,
    utc_now,
)
from recorder.rotation import HANDOFF_BYTES, SegmentClock, StreamBuffer
from recorder.segment_writer import (
    AddMeta,
    AddStream,
    AddTrack,
    CloseSegments,
    Records,
    SegmentWriter,
    StopWriting,
    WriterItem,
)

log = logging.getLogger("consilium.recorder")


@dataclass(frozen=True)
class RecordingSettings:
    """How a recording is cut into segments and how much the writer may lag."""

    segment_seconds: float = 10.0
    """Every stream's open segment closes this often: what a crash may cost."""
    segment_bytes: int = 8 * 1024 * 1024
    """A stream's segment closes early at this much plaintext."""
    max_queued_bytes: int = 32 * 1024 * 1024
    """Buffers waiting for the writer beyond this are dropped (counted), not waited for."""


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
        continues: Continuation | None = None,
        record_everyone: bool = False,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.recording_id = check_recording_id(recording_id)
        self.room_id = room_id
        self.directory = recordings_dir / recording_id
        self.settings = settings or RecordingSettings()
        self.faults = 0
        """Packets or events the sink itself failed on (a bug; only the first is logged)."""
        self._on_failure = on_failure
        """Told (from the writer thread) when the writer fails, so the room hears at once."""
        self._audit = audit
        self._clock = clock
        self._t0 = 0.0
        self._segment_clock = SegmentClock(int(self.settings.segment_seconds * 1000))
        self._streams: dict[str, StreamBuffer] = {}
        """By track id (and `EVENTS_STREAM` for events)."""
        self._track_count = 0
        self._owners: dict[str, str] = {}
        """Participant id of each recorded track, by track id."""
        self._recorded: set[str] = set()
        """Participants whose media is recorded (they consented); others' packets are dropped."""
        self._running = False
        self._stop_sent = False
        self._record_everyone = record_everyone
        """Record every participant's media without a consent step (tests and tools only)."""
        manifest = RecordingManifest(
            recording_id, room_id, started=utc_now(), recording_class=recording_class,
            continues=continues,
        )  # fmt: skip
        self._writer = SegmentWriter(
            self.directory, manifest, data_key, signing_key,
            max_queued_bytes=self.settings.max_queued_bytes, report=self._report,
            on_failure=self._writer_failed,
        )  # fmt: skip

    @property
    def dropped_records(self) -> int:
        """Records dropped because the writer fell behind (counted in the manifest)."""
        return self._writer.dropped_records

    @property
    def bytes_written(self) -> int:
        """Segment bytes written to disk so far (the node's metrics)."""
        return self._writer.bytes_written

    @property
    def failure(self) -> BaseException | None:
        """Why the writer stopped, if it failed (a full disk); the sink then records nothing."""
        return self._writer.failure

    @property
    def last_manifest_sha256(self) -> str:
        """SHA-256 of the manifest file as last written."""
        return self._writer.last_manifest_sha256

    # --- the event loop's side -------------------------------------------------------------

    def start(self) -> str:
        """Create the recording's directory and first manifest, start the writer; returns the
        manifest's SHA-256 (also sent to the audit callback)."""
        self.directory.mkdir(parents=True, exist_ok=False, mode=0o700)
        fsync_directory(self.directory.parent)
        self._writer.manifest.started = utc_now()
        self._streams[EVENTS_STREAM] = StreamBuffer(EVENTS_STREAM)
        self._writer.manifest.streams[EVENTS_STREAM] = []
        self._writer.write_manifest()
        self._t0 = self._clock()
        self._running = True
        self._writer.start()
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
        self._streams[track.track_id] = StreamBuffer(name, video=track.kind == "video")
        self._owners[track.track_id] = track.participant_id
        entry = TrackEntry.from_track(name, track)
        self._put_control(AddTrack(entry))
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
                kept, lost = stream.admit_video((packet[2] << 8) | packet[3], keyframe)
                if not kept:
                    return True  # before its first keyframe: ask for one
            now = round((self._clock() - self._t0) * 1000)
            if self._segment_clock.due(now):
                self._close(list(self._streams.values()))
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
        self._put_control(AddMeta(participant))
        self.meeting_event("participant_present", participant=participant.participant_id)

    def record_consent(self, consent: ConsentRecord) -> None:
        """Store a consent answer; from now on their media is recorded (granted) or left out
        (declined). A decliner's open segments close, so what is on disk stops there."""
        if not self._running:
            return
        self._put_control(AddMeta(consent))
        self.meeting_event(
            "consent", participant=consent.participant_id, decision=consent.decision,
            method=consent.method,
        )  # fmt: skip
        if consent.decision == "granted":
            if consent.participant_id not in self._recorded:
                # Recorded again after a withdrawal: their video resumes at a keyframe.
                for track_id, owner in self._owners.items():
                    if owner == consent.participant_id:
                        self._streams[track_id].await_keyframe()
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
                stream = self._streams[IMAGES_STREAM] = StreamBuffer(IMAGES_STREAM)
                self._put_control(AddStream(IMAGES_STREAM))
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
        self._segment_clock.restart(now)
        self.meeting_event("case_marked", label=label)
        return now

    def stop(self, timeout: float | None = 30.0, failure: str = "") -> RecordingManifest:
        """Close every segment, mark the recording complete, wait for the writer.

        With `failure` (a code: `disk_full`), it is closed the same way but marked `failed`
        (the disk watcher stops it while there is still room to close it cleanly). If the
        writer itself failed (`failure`), the segments completed before the failure are kept,
        the unfinished ones deleted, and the manifest says `failed` and where it stopped."""
        if not self._writer.started:
            return self._writer.manifest  # never started
        if self._running:
            self.meeting_event("recording_failed" if failure else "recording_stopped")
            self._close(list(self._streams.values()))
            self._running = False
        if not self._stop_sent:  # also after a writer failure, so the thread ends
            self._stop_sent = True
            waited = {s.name: s.before_keyframe for s in self._streams.values() if s.video}
            self._put_control(StopWriting(waited, failure))
        if not self._writer.join(timeout):
            raise TimeoutError(f"recording {self.recording_id}: writer did not finish")
        return self._writer.manifest

    @property
    def manifest(self) -> RecordingManifest:
        """The manifest as the writer last wrote it (read it after `stop`)."""
        return self._writer.manifest

    def _event(self, body: dict[str, Any]) -> None:
        try:
            if not self._running:
                return
            now = self.now_ms()
            if self._segment_clock.due(now):
                self._close(list(self._streams.values()))
            payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
            self._append(self._streams[EVENTS_STREAM], now, payload)
        except Exception:
            self._fault("event")

    def _fault(self, what: str) -> None:
        # Logged once, counted always: a bug hit per packet must not flood the log.
        self.faults += 1
        if self.faults == 1:
            log.exception("recording %s: %s not recorded", self.recording_id, what)

    def _append(self, stream: StreamBuffer, now: int, payload: bytes) -> None:
        step = stream.append(now, payload, self.settings.segment_bytes, HANDOFF_BYTES)
        if step == "close":
            self._close([stream])
        elif step == "hand_off":
            self._hand_off(stream)

    def _hand_off(self, stream: StreamBuffer) -> None:
        taken = stream.take()
        if taken is not None:
            payload, records = taken
            self._writer.offer(
                Records(stream.name, payload, records, stream.first_ms, stream.last_ms)
            )

    def _close(self, streams: list[StreamBuffer], case: CaseMarker | None = None) -> None:
        names = []
        for stream in streams:
            self._hand_off(stream)
            if stream.end_segment():
                names.append(stream.name)
        if names or case is not None:
            self._put_control(CloseSegments(names, case))

    def _put_control(self, item: WriterItem) -> None:
        self._writer.put(item)

    def _writer_failed(self, error: BaseException) -> None:
        """From the writer thread: stop taking packets, and tell the room at once."""
        self._running = False
        if self._on_failure is not None:
            try:
                self._on_failure(error)
            except Exception:
                log.exception("recording %s: failure callback failed", self.recording_id)

    def _report(self, action: str, outcome: str = "info", **fields: Any) -> None:
        if self._audit is None:
            return
        try:
            self._audit(action, outcome, room=self.room_id, recording=self.recording_id, **fields)
        except Exception:
            log.exception("recording %s: audit callback failed", self.recording_id)
