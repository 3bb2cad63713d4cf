"""What the recorder plugs into: every forwarded RTP packet and data-channel message.

The SFU calls each sink synchronously from the forwarding path, with the packet as the publisher
sent it (after RTX unwrapping), before any per-subscriber rewrite. With no sink attached the
forwarder skips the loop entirely, so nothing is copied when nobody records.

A sink is a subscriber like any other as far as video goes: it can only use a track from a
keyframe on. The forwarder tells it which packets start one (the same `core.media.keyframes`
check new subscribers start on), and a sink that answers "waiting for a keyframe" makes the
forwarder ask the publisher for one (PLI, rate-limited per publisher). Browsers send keyframes
only when asked, so this is what makes a camera that was on before the recording started appear
in it.
"""

from __future__ import annotations

from typing import Protocol

from core.media.track import TrackInfo


class MediaSink(Protocol):
    """A consumer of forwarded media (the recorder implements it)."""

    def on_track(self, track: TrackInfo) -> None:
        """A track starts being forwarded."""

    def on_rtp(self, track: TrackInfo, packet: bytes, arrival_ms: int, keyframe: bool) -> bool:
        """One RTP packet of `track`, as received; `keyframe`: it starts a video keyframe
        (always False for audio). Returns True when the sink waits for a keyframe of this video
        track (it starts recording it, or lost its place): the forwarder then asks the publisher
        for one. Must not block or raise."""

    def on_track_ended(self, track: TrackInfo) -> None:
        """The track is no longer published."""

    def on_data(self, room_id: str, participant_id: str, label: str, message: str) -> None:
        """One data-channel message relayed in the room."""
