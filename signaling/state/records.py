"""The shared state's records: a room, a participant (joined or waiting), a revocation.

Pure: plain dataclasses with their JSON-ready dicts and copies, no I/O. The stores copy records
in and out with `copy_room` and `copy_participant` (a caller mutating a returned record changes
nothing until it saves it); the membership and moderation rules read them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal


def _known_fields(cls: type, d: Mapping[str, Any]) -> dict[str, Any]:
    # Keys unknown to this version (written by a newer node during a rolling upgrade) are dropped.
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass(slots=True)
class RoomRecord:
    """A scheduled or open consultation room, as every node sees it."""

    room_id: str
    """Stable room identifier (from the scheduler or the token's room grant)."""
    departments: list[str]
    """Departments the consultation belongs to (policy scoping)."""
    lobby: bool = False
    """Lobby on: everyone but the chair waits to be admitted."""
    locked: bool = False
    """Locked: nobody new may join or wait in the lobby."""
    title: str = ""
    """Free text from the scheduler; never patient-identifying."""
    grants: list[str] = field(default_factory=list)
    """Who may join besides token room grants: `sub:x`, `dept:y` or `org:z`."""
    scheduled_by: str = ""
    """`sub` of whoever scheduled the room."""
    opened: bool = False
    """A chair is or was in the room, or it was opened explicitly."""
    created_at: float = 0.0
    """Creation time, seconds since the epoch."""
    starts_at: float | None = None
    """Scheduled start, seconds since the epoch, if any."""
    admitted: list[str] = field(default_factory=list)
    """`sub`s a chair admitted from the lobby: they rejoin (after a network blip, or from a
    second device) without waiting again, until removed or the room closes."""
    cases: list[dict[str, str]] = field(default_factory=list)
    """A scheduled meeting's case list (`case_id` and `label` each), set by the scheduling API
    (`signaling.meetings`); never patient-identifying."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RoomRecord:
        """The record `to_dict` produced (unknown keys ignored)."""
        kwargs = _known_fields(cls, d)
        for name in ("departments", "grants"):
            if name in kwargs:
                kwargs[name] = list(kwargs[name])
        if "cases" in kwargs:
            kwargs["cases"] = [dict(case) for case in kwargs["cases"]]
        return cls(**kwargs)


@dataclass(slots=True)
class ParticipantRecord:
    """One connection in a room or its lobby."""

    participant_id: str
    """Random, one per connection."""
    sub: str
    """The identity's subject."""
    role: str
    """The identity's role (chair, specialist, ...)."""
    name: str
    """Display name."""
    depts: list[str]
    """The identity's departments."""
    org: str
    """The identity's institution."""
    node: str
    """Id of the node holding the connection."""
    joined_at: float
    """When the connection joined (or entered the lobby), seconds since the epoch."""
    audio_muted: bool = False
    """Microphone muted (by the participant or the chair)."""
    video_muted: bool = False
    """Camera off (by the participant or the chair)."""
    resume_digest: str = ""
    """SHA-256 (hex) of the resume token the participant was given at `joined` (empty: the
    node held no one for a resume). Lets another node take the participant over after their
    node was lost (`signaling.resume.decide_adoption`); the token itself is not stored."""
    lost_at: float = 0.0
    """When their node was found lost, seconds since the epoch (0: not lost). The participant
    is then held for `resume_grace_s`, for a `resume` on another node, before they leave."""
    lost_media: bool = False
    """Their media sessions went with their node (it hosted the room's media)."""
    lost_reason: str = ""
    """Why they are held (`participant_left`'s reason if they do not resume): `node_lost`, or
    `node_stopped` (their node drained and handed them over)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ParticipantRecord:
        """The record `to_dict` produced (unknown keys ignored)."""
        kwargs = _known_fields(cls, d)
        if "depts" in kwargs:
            kwargs["depts"] = list(kwargs["depts"])
        return cls(**kwargs)


@dataclass(slots=True)
class Revocation:
    """A revoked token (`jti`) or a whole revoked identity (`sub`)."""

    kind: Literal["jti", "sub"]
    """What `value` names: one token or every token of a subject."""
    value: str
    """The revoked `jti` or `sub`."""
    reason: str
    """Why, for the audit trail and the operator."""
    by: str
    """`sub` of whoever revoked it."""
    at: float
    """When, seconds since the epoch."""
    expires_at: float | None = None
    """When it stops mattering (a jti: when the token expires); None for never."""
    lifted: bool = False
    """Withdrawn (a SCIM re-activation lifts the revocation a deactivation made): kept as the
    latest record of its key, so that every copy (journals, Redis, each node) forgets the
    revocation it supersedes, and revokes nothing."""

    @property
    def key(self) -> str:
        """`kind:value`, the revocation's identity in every index."""
        return f"{self.kind}:{self.value}"

    def expired(self, now: float) -> bool:
        """Whether it no longer applies at `now`."""
        return self.expires_at is not None and self.expires_at <= now

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy. `lifted` only when set: a revocation's bytes (journal line,
        Redis value, event) are what every node version has always written."""
        d = dataclasses.asdict(self)
        if not self.lifted:
            del d["lifted"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Revocation:
        """The record `to_dict` produced; ValueError if it names no valid kind and value."""
        kwargs = _known_fields(cls, d)
        if kwargs.get("kind") not in ("jti", "sub"):
            raise ValueError(f"revocation kind must be 'jti' or 'sub', not {kwargs.get('kind')!r}")
        if not isinstance(kwargs.get("value"), str) or not kwargs["value"]:
            raise ValueError("revocation value must be a non-empty string")
        return cls(**kwargs)


def copy_room(room: RoomRecord) -> RoomRecord:
    """A copy sharing no list with `room`."""
    return dataclasses.replace(
        room,
        departments=list(room.departments),
        grants=list(room.grants),
        cases=[dict(case) for case in room.cases],
    )


def copy_participant(p: ParticipantRecord) -> ParticipantRecord:
    """A copy sharing no list with `p`."""
    return dataclasses.replace(p, depts=list(p.depts))
