"""A published track, as the SFU forwards it and the recorder stores it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TrackInfo:
    """A published track as a sink (the recorder) sees it."""

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
    layers: tuple[str, ...] = ()
    """Simulcast layers by RID, lowest first; empty for a track sent as one stream."""
