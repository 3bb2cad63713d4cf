"""Video frames received, counted from RTP without decoding: the frame rate and the freezes a
subscriber would see.

A load test cannot decode every stream it receives (twelve participants each receiving eleven
VP8 streams would need 132 decoders on the test machine), yet the figure that matters is what a
viewer sees: frames per second, and freezes. So a frame counts as received when its last packet
(the RTP marker bit) arrives, once per RTP timestamp (a resent last packet is not a second
frame), and a freeze is a gap of more than `FREEZE_GAP_S` between two received frames (the
issue's definition; a stream that stops is frozen from its last frame to the end of the window).

Only what arrives inside the measured window counts: it starts at `start` (after the joins and
the first keyframes) and ends when the figures are read.

Pure: arrival times are passed in; no clock, no I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

FREEZE_GAP_S = 0.5
"""A gap between two received frames longer than this is a freeze."""
RECENT_TIMESTAMPS = 64
"""RTP timestamps of counted frames remembered, so a resent last packet is not counted again."""


@dataclass(frozen=True, slots=True)
class FrameFigures:
    """What one video stream delivered over the window."""

    frames: int
    """Frames whose last packet arrived."""
    seconds: float
    """Length of the window."""
    freezes: int
    """Gaps between frames (or from the last frame to the window's end) above `FREEZE_GAP_S`."""
    frozen_s: float
    """Their total length."""

    @property
    def fps(self) -> float:
        """Frames per second over the window (0 for an empty window)."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0


@dataclass(slots=True)
class ReceivedFrames:
    """Counts one received video stream's frames and freezes inside the measured window."""

    start: float | None = None
    """When the window began (None: not yet; nothing counts)."""
    frames: int = 0
    freezes: int = 0
    frozen_s: float = 0.0
    last_frame_at: float | None = None
    """When the latest frame inside the window arrived."""
    _recent: deque[int] = field(default_factory=lambda: deque(maxlen=RECENT_TIMESTAMPS))

    def begin(self, now: float) -> None:
        """Start the window at `now` (a freeze may begin at its start)."""
        self.start = now
        self.frames = self.freezes = 0
        self.frozen_s = 0.0
        self.last_frame_at = now

    def on_packet(self, marker: bool, timestamp: int, now: float) -> None:
        """One RTP packet of the stream (after RTX unwrapping) arrived at `now`."""
        if not marker or self.start is None or timestamp in self._recent:
            return
        self._recent.append(timestamp)
        self._gap(now)
        self.frames += 1
        self.last_frame_at = now

    def figures(self, now: float) -> FrameFigures:
        """The window's figures, the window ending at `now`."""
        if self.start is None:
            return FrameFigures(0, 0.0, 0, 0.0)
        freezes, frozen_s = self.freezes, self.frozen_s
        if self.last_frame_at is not None and now - self.last_frame_at > FREEZE_GAP_S:
            freezes += 1
            frozen_s += now - self.last_frame_at
        return FrameFigures(self.frames, now - self.start, freezes, frozen_s)

    def _gap(self, now: float) -> None:
        if self.last_frame_at is not None and now - self.last_frame_at > FREEZE_GAP_S:
            self.freezes += 1
            self.frozen_s += now - self.last_frame_at
