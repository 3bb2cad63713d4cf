"""What the SFU's parts need of each other, as Protocols (so no part imports its owner).

A participant's media (`sfu.session`) needs a few things of its room (`sfu.room`), and the room
holds its participants: naming the room's side here, as a Protocol, lets each module import only
what it uses, with no circle between `room` and `session`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from aiortc import RTCPeerConnection
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters

from core.codes import ErrorCode
from sfu.events import Notification
from sfu.forwarder import PublishedTrack
from sfu.ice_restart import IceRestart
from sfu.sinks import MediaSink

Notify = Callable[[Notification], None]
"""Sends one notification (`sfu.events`) to this participant."""

ReportError = Callable[[ErrorCode, str, str], None]
"""Tells the participant a request failed: `(code, message, request)` (an `error` message)."""


class MediaError(Exception):
    """A media request that cannot be honoured (bad SDP, wrong state); the client is told."""


class SessionOwner(Protocol):
    """What a publish or subscribe session needs of its participant (`sfu.session`).

    One reference to the participant rather than a bound-method callback per need: every
    participant holds both sessions, media or not, and each bound method is an object of its
    own (bench/signaling.py's `kib_per_participant`).
    """

    def report_error(self, code: ErrorCode, message: str, request: str) -> None:
        """Tell the participant a request failed: `(code, message, request)` (an `error`)."""

    def session_opened(self, pc: RTCPeerConnection, which: str) -> None:
        """The `which` session's peer connection was created: the participant watches its
        state (and takes the publish session's data channels)."""

    def ice_restart_began(self, restart: IceRestart, which: str) -> None:
        """An ICE restart of the `which` session began: the room sees the participant's media
        as reconnecting until it is over (`IceRestart.ended`)."""


class ParticipantRoom(Protocol):
    """What a participant's media needs of its room."""

    room_id: str
    sinks: list[MediaSink]
    """The room's sinks (a recording): every published track is handed to them."""

    def choose_codec(self, kind: str, offered: list[RTCRtpCodecParameters]) -> str | None:
        """The codec this room uses for `kind` if the publisher offers it (else None)."""

    def codec_name(self, kind: str) -> str:
        """The codec this room sends for `kind`."""

    def codec_capability(self, kind: str) -> list[RTCRtpCodecCapability]:
        """Codec preferences for a subscribe transceiver: the room's codec and its RTX."""

    def track_published(self, track: PublishedTrack) -> None:
        """A new track: everyone else in the room receives it."""

    def track_ended(self, track: PublishedTrack) -> None:
        """A track is gone: the slots carrying it go idle."""

    def hear_audio(self, participant_id: str, level: int, muted: bool, now: float) -> None:
        """One audio packet's level byte (RFC 6464) from a publisher: the room's speaker."""

    def media_reconnecting(self, participant_id: str, reconnecting: bool) -> None:
        """Tell everyone else in the room that a participant's media is looking for a new
        network path (an ICE restart), or has one again (`events.MediaReconnecting`)."""

    def tell_newcomer(self, participant_id: str) -> None:
        """Tell a participant who just joined whose media in the room is reconnecting now."""

    async def remove(self, participant_id: str) -> None:
        """Drop a participant's media (their session failed)."""
