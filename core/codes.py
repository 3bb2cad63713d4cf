"""The in-room error codes, named once: the `code` of an `error` message on the WebSocket.

An `error` is a recoverable refusal (the connection stays open); the client picks its words by the
code, so the values are a contract with the web client's catalogues and `docs/protocol.md`.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Why the server refused one request in the room; the value is what the wire carries."""

    ALREADY_JOINED = "already_joined"
    """`join` came again on a connection that already joined (it is only the first message)."""
    NOT_ADMITTED = "not_admitted"
    """A request from someone still waiting in the lobby."""
    NOT_ALLOWED = "not_allowed"
    """The policy refuses this request to this role in this room."""
    NOT_FOUND = "not_found"
    """The request names somebody who is not there (not waiting, not in the room)."""
    MEDIA_UNAVAILABLE = "media_unavailable"
    """SDP or ICE sent to a node with no SFU."""
    BAD_MEDIA_REQUEST = "bad_media_request"
    """The SFU could not carry out an SDP or ICE request (a malformed offer, an unknown session)."""
    DATA_CHANNEL_CLOSED = "data_channel_closed"
    """The SFU saw the participant's ordered data channel close; the client opens a new one."""
    RECORDING_UNAVAILABLE = "recording_unavailable"
    """A recording request to a node with no SFU (so no recorder)."""
    RECORDING_RUNNING = "recording_running"
    """Start asked while the room is already being recorded."""
    NOT_RECORDING = "not_recording"
    """Stop or a case mark asked while the room is not being recorded."""
    CONSENT_MISSING = "consent_missing"
    """Start asked before everyone present answered the recording notice."""
    RECORDING_FAILED = "recording_failed"
    """The recording request failed on the server (logged there)."""
