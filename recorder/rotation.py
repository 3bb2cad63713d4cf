"""When a recording's streams start, hand off and close their segments: the sink's rules, pure.

No I/O, no clock: `now` (ms since the recording started) is passed in, and each rule answers
what the sink must do next (hand the buffer to the writer, close the segment, ask for a
keyframe). `recorder.sink.RecordingSink` carries these out on the forwarding path.

- A video stream starts at a keyframe: packets before one are dropped (and counted); a gap in
  its sequence numbers means the video is broken until the next one (`StreamBuffer.admit_video`).
- A stream's buffer goes to the writer every `handoff_bytes`; its segment closes alone when it
  reaches `segment_bytes` (`StreamBuffer.append`).
- Every stream's segment closes together every `segment_ms` (`SegmentClock`), and the period
  restarts at each case marker, so a case is whole segments.
"""

from __future__ import annotations

from typing import Literal

from recorder.manifest import RECORD_HEADER

HANDOFF_BYTES = 64 * 1024
"""A track's buffer goes to the writer thread when it holds this much (about 50 video packets)."""

NextStep = Literal["keep", "hand_off", "close"]
"""After a record is appended: keep buffering, hand the buffer to the writer, or close the
stream's segment (which hands the buffer off first)."""


class StreamBuffer:
    """One stream's records not yet handed to the writer (forwarding-path state), and the rules
    of when its video starts and its segment closes alone."""

    __slots__ = (
        "awaiting_keyframe", "before_keyframe", "buffer", "first_ms", "last_ms", "name",
        "next_seq", "pending", "segment_bytes", "video",
    )  # fmt: skip

    def __init__(self, name: str, video: bool = False) -> None:
        self.name = name
        """The stream's directory name: `track-<n>`, `events` or `images`."""
        self.video = video
        """A video track: recorded from a keyframe on."""
        self.awaiting_keyframe = video
        """Packets are dropped until one starts a keyframe."""
        self.before_keyframe = 0
        """Packets dropped while awaiting a keyframe."""
        self.next_seq: int | None = None
        """The RTP sequence number a video stream expects next (a jump past it: packets lost)."""
        self.buffer = bytearray()
        """Records (arrival ms, length, bytes) not yet handed to the writer."""
        self.pending = 0
        """Records in `buffer`."""
        self.first_ms = 0
        """Time of the first record in `buffer`."""
        self.last_ms = 0
        """Time of the last record in `buffer`."""
        self.segment_bytes = 0
        """Plaintext bytes of the open segment so far (0: no open segment)."""

    def admit_video(self, sequence: int, keyframe: bool) -> tuple[bool, bool]:
        """Whether a video packet (RTP `sequence`, starting a keyframe or not) is recorded, and
        whether packets were lost before it (the video is then broken until the next
        keyframe: the sink asks for one). A packet before the first keyframe is not recorded,
        and counts as waiting for one."""
        if self.awaiting_keyframe:
            if not keyframe:
                self.before_keyframe += 1
                return False, True
            self.awaiting_keyframe = False
            self.next_seq = None
        # A gap: what follows cannot be decoded until the next keyframe. Nobody else may ask
        # for one (no subscriber, or none that lost the same packets), so the sink asks.
        expected = self.next_seq
        ahead = 0 if expected is None else (sequence - expected) & 0xFFFF
        lost = False
        if ahead < 0x8000:  # in order or after a gap (a late packet changes nothing)
            lost = ahead > 0
            self.next_seq = (sequence + 1) & 0xFFFF
        return True, lost

    def await_keyframe(self) -> None:
        """Record the video again from its next keyframe (its owner consented again)."""
        if self.video:
            self.awaiting_keyframe = True

    def append(
        self, now: int, payload: bytes, segment_bytes: int, handoff_bytes: int = HANDOFF_BYTES
    ) -> NextStep:
        """Buffer one record at `now`; what to do next, given the segment and hand-off sizes."""
        # Hot path (per recorded packet), watched by bench/recording.py record_cpu_s_per_s.
        if self.pending == 0:
            self.first_ms = now
        self.buffer += RECORD_HEADER.pack(now, len(payload))
        self.buffer += payload
        self.pending += 1
        self.last_ms = now
        self.segment_bytes += RECORD_HEADER.size + len(payload)
        if self.segment_bytes >= segment_bytes:
            return "close"
        if len(self.buffer) >= handoff_bytes:
            return "hand_off"
        return "keep"

    def take(self) -> tuple[bytes, int] | None:
        """The buffered records and their count, leaving the buffer empty; None if empty."""
        if not self.pending:
            return None
        records, self.pending = self.pending, 0
        payload = bytes(self.buffer)
        self.buffer.clear()
        return payload, records

    def end_segment(self) -> bool:
        """Whether the stream had an open segment (one to close); it has none after this."""
        had = self.segment_bytes > 0
        self.segment_bytes = 0
        return had


class SegmentClock:
    """When every stream's open segment closes together: every `segment_ms` of the recording's
    timeline, the period restarting at each case marker (a crash costs each stream at most one
    period)."""

    __slots__ = ("next_boundary", "segment_ms")

    def __init__(self, segment_ms: int) -> None:
        self.segment_ms = segment_ms
        """The period, ms."""
        self.next_boundary = segment_ms
        """When the segments next close, ms since the start."""

    def due(self, now: int) -> bool:
        """Whether the segments must close at `now`; if so the next boundary is armed (the
        next multiple of the period after `now`)."""
        if now < self.next_boundary:
            return False
        self.next_boundary = now - (now % self.segment_ms) + self.segment_ms
        return True

    def restart(self, now: int) -> None:
        """The segments closed at `now` (a case marker): the next close is a period later."""
        self.next_boundary = now + self.segment_ms
