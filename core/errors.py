"""Errors as types: a stable code, a message and details, nothing about how they travel.

Which WebSocket close code and HTTP status an error gets is the edge's business, decided in one
table keyed on the code (`signaling.errors`).
"""

from __future__ import annotations

from typing import Any


class ConsiliumError(Exception):
    """Base of every error that reaches a client: a stable code, a message, details."""

    code = "server_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        """The JSON error body: `{"error": code, "message": text}` (plus details, if any)."""
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        body.update(self.details)
        return body


class BadMessage(ConsiliumError):
    """The request or message is malformed or violates its schema."""

    code = "bad_message"


class AuthenticationError(ConsiliumError):
    """No valid identity: missing, malformed, expired, revoked or untrusted token."""

    code = "not_authenticated"


class PolicyDenied(ConsiliumError):
    """The identity is known but the policy does not allow the action."""

    code = "not_allowed"


class NotFound(ConsiliumError):
    """The addressed object (room, participant, recording) does not exist."""

    code = "not_found"


class TimedOut(ConsiliumError):
    """The peer did not do what it had to in time (join, keepalive)."""

    code = "timed_out"


class Replaced(ConsiliumError):
    """A newer connection of the same identity to the same room took this one's place."""

    code = "replaced"


class Conflict(ConsiliumError):
    """The request conflicts with existing state (e.g. a room id already scheduled)."""

    code = "conflict"


class PreconditionFailed(ConsiliumError):
    """A conditional request's precondition does not hold (an `If-Match` naming an old version)."""

    code = "precondition_failed"


class PayloadTooLarge(ConsiliumError):
    """A message or request body exceeds its bound."""

    code = "too_large"


class RateLimited(ConsiliumError):
    """A rate or capacity bound was exceeded (messages/s, joins/min, participants, rooms)."""

    code = "rate_limited"


class Unavailable(ConsiliumError):
    """A service the request needs (the shared state, Redis) is out of reach for now: retry."""

    code = "unavailable"


class ServerError(ConsiliumError):
    """An unexpected failure on our side; details are logged, not sent."""

    code = "server_error"


class ConfigError(Exception):
    """Settings or a policy table that cannot be used; raised at start, never to a client."""


class IntegrityError(Exception):
    """Stored data (audit log, archive) fails verification."""
