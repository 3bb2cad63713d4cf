"""What the edge answers for an error: its WebSocket close code and its HTTP status, in one table.

The errors themselves (`core.errors`, and the ones `imaging` and `recorder` declare on top of
them) carry a code and a message only. `ANSWERS` maps a code to the close code and HTTP status it
gets; an error whose own code is not in the table answers as the nearest class above it that is
(`ImageTooLarge` as `PayloadTooLarge`: 413), so a new error needs a row only when it answers
differently from its parent. `docs/protocol.md` lists the table (generated).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import ConsiliumError
from signaling.protocol import CloseCode


@dataclass(frozen=True)
class Answer:
    """How the edge ends a request or a connection that failed with one error code."""

    close_code: CloseCode
    """The WebSocket close code (documented in `signaling.protocol.CLOSE_CODES`)."""
    http_status: int
    """The status of the JSON error response (`{"error": code, "message": text}`)."""


ANSWERS: dict[str, Answer] = {
    "server_error": Answer(CloseCode.SERVER_ERROR, 500),
    "bad_message": Answer(CloseCode.BAD_MESSAGE, 400),
    "not_authenticated": Answer(CloseCode.NOT_AUTHENTICATED, 401),
    "not_allowed": Answer(CloseCode.NOT_ALLOWED, 403),
    "not_found": Answer(CloseCode.NOT_FOUND, 404),
    "timed_out": Answer(CloseCode.TIMED_OUT, 408),
    "replaced": Answer(CloseCode.REPLACED, 409),
    # Raised by a `resume` (signaling.resume): the held participant is gone for this client.
    "resume_refused": Answer(CloseCode.RESUME_REFUSED, 410),
    "conflict": Answer(CloseCode.REPLACED, 409),
    # Raised by a join to a meeting that has ended (signaling.meeting_end): gone for good.
    "meeting_ended": Answer(CloseCode.MEETING_ENDED, 410),
    "too_large": Answer(CloseCode.BAD_MESSAGE, 413),
    # Raised by the scheduling API: an update whose If-Match names an older version.
    "precondition_failed": Answer(CloseCode.REPLACED, 412),
    "rate_limited": Answer(CloseCode.RATE_LIMITED, 429),
    "unavailable": Answer(CloseCode.SERVER_ERROR, 503),
    # Raised by imaging: content we cannot read is not a malformed request (415), and a DICOM
    # with burned-in identifiers is well-formed but needs the uploader's confirmation (422).
    "unsupported_image": Answer(CloseCode.BAD_MESSAGE, 415),
    "burned_in_annotation": Answer(CloseCode.BAD_MESSAGE, 422),
    # Raised by the recorder: a shredded recording is gone for good, not merely unknown.
    "shredded": Answer(CloseCode.NOT_FOUND, 410),
}
"""Error code -> close code and HTTP status; each class falls back to its parent's row."""


def answer_of(error: ConsiliumError | type[ConsiliumError]) -> Answer:
    """The row of the error (or error class): its own code's, else the nearest parent's."""
    cls = error if isinstance(error, type) else type(error)
    for klass in cls.__mro__:
        code = klass.__dict__.get("code")
        if isinstance(code, str) and code in ANSWERS:
            return ANSWERS[code]
    # Unreachable for a ConsiliumError (its base's code has a row); a guard, not a rule.
    return ANSWERS[ConsiliumError.code]


def close_code_of(error: ConsiliumError | type[ConsiliumError]) -> CloseCode:
    """The WebSocket close code a connection that failed with this error is closed with."""
    return answer_of(error).close_code


def http_status_of(error: ConsiliumError | type[ConsiliumError]) -> int:
    """The HTTP status of the JSON error response for this error."""
    return answer_of(error).http_status
