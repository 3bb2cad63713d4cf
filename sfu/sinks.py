"""What the recorder plugs into: every forwarded RTP packet and data-channel message.

The SFU calls each sink synchronously from the forwarding path, with the packet as the publisher
sent it (after RTX unwrapping), before any per-subscriber rewrite. With no sink attached the
forwarder skips the loop entirely, so nothing is copied when nobody records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class TrackInfo:
    """A published track as a sink sees it."""

    room_id: str
    """The room it is published in."""
    participant_id: str
    """Who publishes it."""
    track_id: str
    """Stable id of the track within the room (participant id + media id)."""
    kind: str
    """`audio` or `video`."""
    codec: str
    """MIME type, e.g. `video/VP8` or `audio/opus`."""
    clock_rate: int
    """RTP clock rate of the codec."""
    payload_type: int
    """Payload type of the packets as handed to the sink."""
    source: str = "camera"
    """`microphone`, `camera` or `screen`."""


class MediaSink(Protocol):
    """A consumer of forwarded media (the recorder implements it)."""

    def on_track(self, track: TrackInfo) -> None:
        """A track starts being forwarded."""

    def on_rtp(self, track: TrackInfo, packet: bytes, arrival_ms: int) -> None:
        """One RTP packet of `track`, as received. Must not block or raise."""

    def on_track_ended(self, track: TrackInfo) -> None:
        """The track is no longer published."""

    def on_data(self, room_id: str, participant_id: str, label: str, message: str) -> None:
        """One data-channel message relayed in the room."""
