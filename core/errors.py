"""Errors as types, and the one place that maps them to WebSocket close codes and HTTP statuses."""

from __future__ import annotations

from typing import Any


class ConsiliumError(Exception):
    """Base of every error that reaches a client: a stable code, a close code, an HTTP status."""

    code = "server_error"
    close_code = 4500
    http_status = 500

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
    close_code = 4400
    http_status = 400


class AuthenticationError(ConsiliumError):
    """No valid identity: missing, malformed, expired, revoked or untrusted token."""

    code = "not_authenticated"
    close_code = 4401
    http_status = 401


class PolicyDenied(ConsiliumError):
    """The identity is known but the policy does not allow the action."""

    code = "not_allowed"
    close_code = 4403
    http_status = 403


class NotFound(ConsiliumError):
    """The addressed object (room, participant, recording) does not exist."""

    code = "not_found"
    close_code = 4404
    http_status = 404


class TimedOut(ConsiliumError):
    """The peer did not do what it had to in time (join, keepalive)."""

    code = "timed_out"
    close_code = 4408
    http_status = 408


class Replaced(ConsiliumError):
    """A newer connection of the same identity to the same room took this one's place."""

    code = "replaced"
    close_code = 4409
    http_status = 409


class Conflict(ConsiliumError):
    """The request conflicts with existing state (e.g. a room id already scheduled)."""

    code = "conflict"
    close_code = 4409
    http_status = 409


class PayloadTooLarge(ConsiliumError):
    """A message or request body exceeds its bound."""

    code = "too_large"
    close_code = 4400
    http_status = 413


class RateLimited(ConsiliumError):
    """A rate or capacity bound was exceeded (messages/s, joins/min, participants, rooms)."""

    code = "rate_limited"
    close_code = 4429
    http_status = 429


class Unavailable(ConsiliumError):
    """A service the request needs (the shared state, Redis) is out of reach for now: retry."""

    code = "unavailable"
    close_code = 4500
    http_status = 503


class ServerError(ConsiliumError):
    """An unexpected failure on our side; details are logged, not sent."""

    code = "server_error"
    close_code = 4500
    http_status = 500


class ConfigError(Exception):
    """Settings or a policy table that cannot be used; raised at start, never to a client."""


class IntegrityError(Exception):
    """Stored data (audit log, archive) fails verification."""
