"""The in-room error codes, named once: the `code` of an `error` message on the WebSocket.

An `error` is a recoverable refusal (the connection stays open); the client picks its words by the
code, so the values are a contract with the web client's catalogues and `docs/protocol.md`.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Why the server refused one request in the room; the value is what the wire carries.
    `meaning` documents each (docs/protocol.md is generated from it)."""

    ALREADY_JOINED = "already_joined"
    NOT_ADMITTED = "not_admitted"
    NOT_ALLOWED = "not_allowed"
    NOT_FOUND = "not_found"
    MEDIA_UNAVAILABLE = "media_unavailable"
    BAD_MEDIA_REQUEST = "bad_media_request"
    MEDIA_FAILED = "media_failed"
    CODEC_UNSUPPORTED = "codec_unsupported"
    RECEIVE_CODEC_UNSUPPORTED = "receive_codec_unsupported"
    DATA_CHANNEL_CLOSED = "data_channel_closed"
    RECORDING_UNAVAILABLE = "recording_unavailable"
    RECORDING_RUNNING = "recording_running"
    NOT_RECORDING = "not_recording"
    CONSENT_MISSING = "consent_missing"
    RECORDING_FAILED = "recording_failed"

    @property
    def meaning(self) -> str:
        """When the server answers this code (docs/protocol.md)."""
        return _MEANINGS[self]


_MEANINGS: dict[ErrorCode, str] = {
    ErrorCode.ALREADY_JOINED: "`join` (or `resume`) came again on a connection that already "
    "joined (it is only the first message)",
    ErrorCode.NOT_ADMITTED: "a request from someone still waiting in the lobby",
    ErrorCode.NOT_ALLOWED: "the policy refuses this request to this role in this room (the "
    "refusal is audited)",
    ErrorCode.NOT_FOUND: "the request names somebody who is not there (not waiting, not in the "
    "room)",
    ErrorCode.MEDIA_UNAVAILABLE: "SDP or ICE sent to a node with no SFU",
    ErrorCode.BAD_MEDIA_REQUEST: "the SFU could not carry out an SDP or ICE request (a malformed "
    "offer, an unknown session)",
    ErrorCode.MEDIA_FAILED: "(request `publish` or `subscribe`) the SFU saw that media session "
    "fail or close (its network died) and dropped the participant's media",
    ErrorCode.CODEC_UNSUPPORTED: "(request `offer`) a published track offers none of the room's "
    "codecs; that track is not received (the others are)",
    ErrorCode.RECEIVE_CODEC_UNSUPPORTED: "(request `answer`) the browser's subscribe answer "
    "rejected the media of a kind (port 0: it cannot decode the room's codec for it, e.g. H.264 "
    "in a Firefox without its OpenH264 plugin); the rest of the answer is applied, and no media "
    "of that kind is offered to this participant again",
    ErrorCode.DATA_CHANNEL_CLOSED: "(request `data`) the SFU saw the participant's ordered data "
    "channel close; the client opens a new one (which asks `sync`), or joins again",
    ErrorCode.RECORDING_UNAVAILABLE: "a recording request to a node with no SFU (so no recorder)",
    ErrorCode.RECORDING_RUNNING: "start asked while the room is already being recorded",
    ErrorCode.NOT_RECORDING: "stop or a case mark asked while the room is not being recorded",
    ErrorCode.CONSENT_MISSING: "start asked before everyone present answered the recording notice",
    ErrorCode.RECORDING_FAILED: "the recording request failed on the server (logged there)",
}
