"""What the SFU tells a participant, declared once: a tagged union on `type`.

The SFU hands these to signalling's `notify` (it never imports signalling); signalling turns each
into the WebSocket message of the same `type` (`signaling.protocol`), or carries it to the node
holding the participant's connection inside a `cluster.MediaOut` (as `msgspec.to_builtins` of the
event: the same dict, key for key, the SFU sent before these were typed).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from core.codes import ErrorCode


class SfuEvent(msgspec.Struct, tag_field="type", frozen=True, kw_only=True):
    """One notification from the SFU to one participant."""


class SubscribeOffer(SfuEvent, tag="offer", frozen=True):
    """The SFU offers the subscribe session (new or changed transceivers): the client answers."""

    pc: Literal["subscribe"]
    """Which session (the SFU only ever offers `subscribe`)."""
    sdp: str
    """The SFU's offer."""


class PublishAnswer(SfuEvent, tag="answer", frozen=True):
    """The SFU's answer to the client's offer on the publish session."""

    pc: Literal["publish"]
    """Which session the offer was for (only `publish` is client-offered)."""
    sdp: str
    """The SFU's answer."""


class SubscribedTrack(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Which participant's media one subscribe transceiver carries (`paused` only when true:
    the message is key for key what it was before pausing existed)."""

    mid: str
    """The transceiver's media id in the subscribe session."""
    participant_id: str
    """Whose media it carries."""
    kind: str
    """`audio` or `video`."""
    track_id: str
    """The published track's id."""
    source: str
    """What the publisher captures: `microphone`, `camera` or `screen`."""
    paused: bool = False
    """Nothing is sent on it for now: the subscriber's link cannot carry it beside the rest
    (`sfu.pausing`); it resumes by itself when the link allows."""


class Tracks(SfuEvent, tag="tracks", frozen=True):
    """The subscribe session's transceivers and whose media each carries now (sent after every
    answer; a transceiver missing from the list is idle)."""

    tracks: list[SubscribedTrack]
    """The busy transceivers."""


class MediaRefused(SfuEvent, tag="error", frozen=True):
    """A media request failed, or the media failed on its own (the connection stays open)."""

    code: ErrorCode
    """Why (`media_failed`, `not_allowed`, `codec_unsupported`, `data_channel_closed`,
    `bad_media_request`)."""
    message: str
    """For the log and the curious; the client picks its words by `code`."""
    request: str
    """What it answers: `offer`, `publish`, `subscribe`, `data`, or the media operation."""


class ActiveSpeaker(SfuEvent, tag="active_speaker", frozen=True):
    """The room's dominant speaker changed (`sfu.speaker`); sent to everyone in the room, and to
    each newcomer once."""

    participant_id: str | None
    """Who speaks now; None when the speaker stopped publishing audio and nobody else spoke."""


class MediaReconnecting(SfuEvent, tag="participant_reconnecting", frozen=True):
    """Someone's media is looking for a new network path (an ICE restart of one of their
    sessions: `sfu.ice_restart`), or has its path back; sent to everyone else in the room."""

    participant_id: str
    """Whose media."""
    reconnecting: bool
    """True from the first of their sessions' restarts; False once none is under way (each
    swapped to its new path, was given up with the old path kept, or they left)."""
    media: bool = True
    """Always true: the ICE side of `participant_reconnecting`, told apart from signalling's
    (a dropped WebSocket held for a resume), which says nothing of this."""


Notification = (
    SubscribeOffer | PublishAnswer | Tracks | MediaRefused | ActiveSpeaker | MediaReconnecting
)
"""Every notification the SFU sends."""
