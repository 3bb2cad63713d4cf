"""Signed webhooks, the rules without the I/O: which audited events become which webhook event,
the JSON body, the signature a subscriber checks, and when a failed delivery is tried again.

Events come from the audit log (`event_for`): each happening the HIS cares about (a meeting
opened or closed, someone joining or leaving, a recording sealed, consent refused) is already
one audit entry, written once, on the node where it happened. So each webhook event is sent
exactly once in a cluster, by that node, and its id is derived from the entry's hash (a
retry carries the same id; an auditor can find the entry).

A delivery is a POST of the event's JSON with three headers (`ID_HEADER`, `TIMESTAMP_HEADER`,
`SIGNATURE_HEADER`): the signature is ``v1=`` and the hex HMAC-SHA256, keyed with the
subscriber's secret, of ``timestamp + "." + body`` (the timestamp is Unix seconds as sent in
its header, the body the exact bytes); while a secret is being replaced, one such signature per
secret, separated by spaces. `verify` is the subscriber's side; docs/operations.md
carries the same recipe in a dozen lines of Python.

Pure: `now` and the random draw for jitter are passed in.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import msgspec

from signaling.auditformat import AuditEntry

ID_HEADER = "Consilium-Webhook-Id"
"""The event's id (``evt_`` and 32 hex digits): the same on every attempt; deduplicate on it."""
TIMESTAMP_HEADER = "Consilium-Webhook-Timestamp"
"""Unix time in seconds when this attempt was signed."""
SIGNATURE_HEADER = "Consilium-Webhook-Signature"
"""``v1=<hex HMAC-SHA256 of timestamp + "." + body>``, one per secret, space-separated."""
REPLAY_WINDOW_S = 300
"""A subscriber refuses a delivery whose timestamp is further than this from its clock."""

EVENT_TYPES = (
    "meeting.started",
    "meeting.ended",
    "participant.joined",
    "participant.left",
    "recording.ready",
    "consent.refused",
)
"""Every webhook event type, as subscribers name them."""

MAX_ATTEMPTS = 10
"""Attempts per event and subscriber before it is dead-lettered (about 20 minutes of retries)."""
FIRST_RETRY_S = 1.0
"""The wait after the first failure; it doubles with each attempt..."""
MAX_RETRY_S = 300.0
"""...up to this."""


class WebhookEvent(msgspec.Struct, frozen=True, kw_only=True):
    """The JSON body of a delivery. Identifiers only: directory subject ids, room, participant
    and recording ids, codes; never a name or anything about a patient."""

    id: str
    """``evt_`` and the first 32 hex digits of the audit entry's hash."""
    type: str
    """One of `EVENT_TYPES`."""
    time: str
    """When it happened (UTC, ISO 8601 with milliseconds), as in the audit log."""
    room: str
    """The room (meeting) id."""
    node: str
    """The node it happened on."""
    data: dict[str, Any]
    """The event's identifiers (see the table in docs/operations.md)."""


@dataclass(frozen=True, slots=True)
class Subscriber:
    """One receiver of webhooks (a `webhooks` setting)."""

    url: str
    """Where events are POSTed (https, or http on loopback)."""
    secrets: tuple[bytes, ...]
    """The HMAC keys shared with the receiver: one, or the new and the old while replacing it."""
    events: frozenset[str]
    """The event types it wants."""


# audit action -> (webhook type, the entry's fields the event carries, outcome required)
_FROM_AUDIT: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "room_opened": ("meeting.started", ("sub",), None),
    "room_closed": ("meeting.ended", ("sub", "reason"), None),
    "join": ("participant.joined", ("sub", "participant", "role", "admitted_by"), "allow"),
    "leave": ("participant.left", ("sub", "participant", "reason"), None),
    "recording_stopped": ("recording.ready", ("recording", "manifest_sha256"), None),
    "recording_consent": ("consent.refused", ("sub", "recording", "method", "by"), "deny"),
}


def event_for(entry: AuditEntry, node: str) -> WebhookEvent | None:
    """The webhook event an audit entry is, or None if it is none (or has no room)."""
    rule = _FROM_AUDIT.get(entry.action)
    if rule is None or entry.room is None:
        return None
    kind, keys, outcome = rule
    if outcome is not None and entry.outcome != outcome:
        return None
    known = {"sub": entry.sub, "reason": entry.reason, **entry.fields}
    data = {key: known[key] for key in keys if known.get(key) is not None}
    return WebhookEvent(
        id=f"evt_{entry.hash[:32]}", type=kind, time=entry.ts, room=entry.room, node=node,
        data=data,
    )  # fmt: skip


def encode(event: WebhookEvent) -> bytes:
    """The body sent, byte for byte (the signature is over these bytes)."""
    return msgspec.json.encode(event)


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The `SIGNATURE_HEADER` value for one attempt."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def headers(event_id: str, secrets: tuple[bytes, ...], now_s: float, body: bytes) -> dict[str, str]:
    """The headers of one attempt, signed at `now_s` with each secret."""
    timestamp = int(now_s)
    return {
        "Content-Type": "application/json",
        ID_HEADER: event_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: " ".join(sign(secret, timestamp, body) for secret in secrets),
    }


def verify(secret: bytes, timestamp: str, signature: str, body: bytes, now_s: float) -> bool:
    """The receiver's check: one of the signatures is by `secret` and the timestamp is within
    the window."""
    if not timestamp.isdigit() or abs(now_s - int(timestamp)) > REPLAY_WINDOW_S:
        return False
    expected = sign(secret, int(timestamp), body)
    return any(hmac.compare_digest(expected, given) for given in signature.split())


def retryable(status: int | None) -> bool:
    """Whether a failed attempt is tried again: no answer (timeout, connection refused or
    reset: `status` None), a 5xx, 408 or 429; never another 4xx (the receiver refused it)."""
    return status is None or status >= 500 or status in (408, 429)


def delivered(status: int) -> bool:
    """Whether the receiver took the event (any 2xx)."""
    return 200 <= status < 300


def retry_delay(attempt: int, draw: float) -> float | None:
    """Seconds to wait after failed attempt `attempt` (from 1), or None when it was the last.
    Exponential with "equal jitter": half the step fixed, half drawn (`draw` in [0, 1)), so
    that receivers coming back are not hit by every node at once."""
    if attempt >= MAX_ATTEMPTS:
        return None
    step = min(FIRST_RETRY_S * 2 ** (attempt - 1), MAX_RETRY_S)
    return step / 2 + step / 2 * draw
