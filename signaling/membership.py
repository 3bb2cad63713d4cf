"""Who may be in a room, and what follows when someone arrives, waits, is let in or leaves.

Pure (sans-IO): each rule takes what the executor read (the room, the identity, what an atomic
store operation returned) and returns effects, in the order they must happen; `signaling/rooms.py`
carries them out against the store, the audit log, the connections and the SFU. No rule here
awaits, reads a clock or touches a socket, so the lobby and admission rules are tested as plain
function calls (tests/test_membership.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from core.actions import Action
from core.codes import ErrorCode
from core.errors import ConsiliumError, PolicyDenied, RateLimited, Replaced
from signaling import cluster
from signaling import protocol as p
from signaling.errors import close_code_of
from signaling.identity import Identity
from signaling.policy import Policy, Refusal, RoomScope
from signaling.state.records import ParticipantRecord, RoomRecord

# -- effects ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """Send a message to the connection whose request or arrival is being handled."""

    message: p.Message


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send a message to the room's connections on every node (a `cluster.RoomMessage`)."""

    room: str
    message: p.Message
    to: str = "all"
    """`all`, `admitters`, or one participant id."""
    exclude: str | None = None
    """A participant id that does not get it."""


@dataclass(frozen=True, slots=True)
class Audit:
    """Append one entry to the audit log."""

    event: str
    outcome: str
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CloseRemote:
    """Close a participant's connection on whichever node holds it (a `cluster.CloseConnection`)."""

    room: str
    pid: str
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish any other node-to-node event."""

    event: cluster.NodeEvent


@dataclass(frozen=True, slots=True)
class SaveRoom:
    """Store the room record as given."""

    room: RoomRecord


@dataclass(frozen=True, slots=True)
class SaveParticipant:
    """Store the participant record as given (it is in the room already)."""

    room: str
    record: ParticipantRecord


@dataclass(frozen=True, slots=True)
class RememberAdmitted:
    """Remember (or forget) that a chair let `sub` into this room, for rejoins."""

    room: str
    sub: str
    admitted: bool


@dataclass(frozen=True, slots=True)
class OwnMedia:
    """Tell the SFU hosting the room's media to mute or unmute the sender's own track (when this
    node has an SFU and the sender's media is up)."""

    kind: str
    """`audio` or `video`."""
    muted: bool


@dataclass(frozen=True, slots=True)
class Refuse:
    """Close the arriving connection: the executor raises `error` (already audited) after the
    effects before it; the error carries the close code."""

    error: ConsiliumError


Effect = (
    Reply | Broadcast | Audit | CloseRemote | Publish | SaveRoom | SaveParticipant
    | RememberAdmitted | OwnMedia | Refuse
)  # fmt: skip
"""Everything a membership or moderation rule may ask the executor to do."""


@dataclass(frozen=True, slots=True)
class Actor:
    """The joined participant whose request is being handled (a chair, for moderation)."""

    sub: str
    participant_id: str
    room: str


# -- how the wire shows the store's records ----------------------------------------------------


def room_scope(room: RoomRecord | None, room_id: str) -> RoomScope:
    """What the policy needs to know of a room (an unopened room has no departments yet)."""
    if room is None:
        return RoomScope(room_id=room_id, departments=())
    return RoomScope(
        room_id=room.room_id, departments=tuple(room.departments), grants=tuple(room.grants)
    )


def participant_info(rec: ParticipantRecord, *, waiting: bool = False) -> p.ParticipantInfo:
    """A stored participant as the wire shows it."""
    return p.ParticipantInfo(
        participant_id=rec.participant_id,
        sub=rec.sub,
        name=rec.name,
        role=rec.role,
        depts=list(rec.depts),
        org=rec.org,
        audio_muted=rec.audio_muted,
        video_muted=rec.video_muted,
        waiting=waiting,
        reconnecting=rec.lost_at > 0,
    )


def room_state(room: RoomRecord) -> p.RoomState:
    """A stored room as the wire shows it."""
    return p.RoomState(
        room_id=room.room_id,
        departments=list(room.departments),
        lobby=room.lobby,
        locked=room.locked,
        title=room.title,
        cases=[p.RoomCase(case["case_id"], case.get("label", "")) for case in room.cases],
    )


# -- arriving ---------------------------------------------------------------------------------


class Arrival(StrEnum):
    """What happens to someone the policy lets join, given the room as it stands."""

    OPEN = "open"
    """A chair arrives at a room not open yet: open it (creating it if unscheduled)."""
    WAIT_FOR_CHAIR = "room_not_open"
    """Nobody has opened the room: wait in the lobby until a chair does."""
    LOCKED = "room_locked"
    """The room is locked: refused."""
    LOBBY = "lobby_enabled"
    """The room has a lobby: wait for a chair to admit."""
    ENTER = "enter"
    """Straight in."""


def skips_lobby(identity: Identity, room: RoomRecord, policy: Policy) -> bool:
    """Chairs skip the lobby; so does anyone already admitted to this room."""
    return identity.sub in room.admitted or policy.bypasses_lobby(identity)


def arrival(identity: Identity, room: RoomRecord | None, policy: Policy) -> Arrival:
    """Where someone allowed to join goes: open the room, wait, be refused, or enter.

    After `OPEN`, ask `admission` of the room just opened."""
    if room is None or not room.opened:
        return Arrival.OPEN if policy.may_open_room(identity) else Arrival.WAIT_FOR_CHAIR
    return admission(identity, room, policy)


def admission(identity: Identity, room: RoomRecord, policy: Policy) -> Arrival:
    """At an open room: locked rooms refuse all but chairs; a lobby holds all but chairs and
    those already admitted."""
    if room.locked and not policy.bypasses_lobby(identity):
        return Arrival.LOCKED
    if room.lobby and not skips_lobby(identity, room, policy):
        return Arrival.LOBBY
    return Arrival.ENTER


def refused(identity: Identity, room_id: str, peer: str, reason: str) -> Audit:
    """The audit entry of a refused join."""
    return Audit("join_refused", "deny", {
        "sub": identity.sub, "room": room_id, "reason": reason, "jti": identity.jti,
        "role": identity.role, "ip": peer,
    })  # fmt: skip


def opened(identity: Identity, room: RoomRecord) -> list[Effect]:
    """A chair arrives at a room created but not open: open it. The room's departments, when
    nobody scheduled any, become the chair's (opened ad hoc after others arrived)."""
    effects: list[Effect] = []
    if not room.opened:
        room = dataclasses.replace(room, opened=True)
        if not room.departments:
            room.departments = list(identity.depts)
        effects.append(SaveRoom(room))
    return [
        *effects,
        Audit("room_opened", "info", {"sub": identity.sub, "room": room.room_id}),
        Publish(cluster.RoomOpened(room=room.room_id)),
    ]


def new_room(identity: Identity, room_id: str, *, opened: bool, now: float) -> RoomRecord:
    """An unscheduled room: open (a chair arrived) or a placeholder others wait in."""
    return RoomRecord(
        room_id=room_id,
        departments=list(identity.depts) if opened else [],
        opened=opened,
        created_at=now,
    )


def participant(
    identity: Identity, participant_id: str, node: str, *, now: float
) -> ParticipantRecord:
    """The record of someone arriving (waiting or joined) on `node`, stamped with `now`."""
    return ParticipantRecord(
        participant_id=participant_id,
        sub=identity.sub,
        role=identity.role,
        name=identity.name,
        depts=list(identity.depts),
        org=identity.org,
        node=node,
        joined_at=now,
    )


def too_many_rooms(identity: Identity, room_id: str, peer: str) -> list[Effect]:
    """This node holds as many rooms as it may."""
    return [
        refused(identity, room_id, peer, "too_many_rooms"),
        Refuse(RateLimited("this server holds as many rooms as it may")),
    ]


def locked_out(identity: Identity, room_id: str, peer: str) -> list[Effect]:
    """The room is locked and this is not a chair."""
    return [
        refused(identity, room_id, peer, "room_locked"),
        Refuse(PolicyDenied("the room is locked")),
    ]


def room_full(identity: Identity, room_id: str, peer: str) -> list[Effect]:
    """The store refused one more participant (the bound is atomic there, across nodes)."""
    return [refused(identity, room_id, peer, "room_full"), Refuse(RateLimited("the room is full"))]


def policy_refused(
    identity: Identity, room_id: str, peer: str, reason: str, refusal: Refusal | None
) -> list[Effect]:
    """The policy refuses the join: the client is told the refusal's code (it says what to do),
    not the policy's detail, which goes to the audit log."""
    return [
        refused(identity, room_id, peer, reason),
        Refuse(PolicyDenied(f"{p.JOIN_REFUSED}: {refusal}")),
    ]


def wait(
    record: ParticipantRecord, reason: str, *, waiting_now: int, max_waiting: int, peer: str,
    identity: Identity, room_id: str,
) -> list[Effect]:  # fmt: skip
    """Put someone in the lobby (the executor stores `record` there first, then these): tell
    them, audit it, and if the room is open, knock at the chairs. A full lobby refuses."""
    if waiting_now >= max_waiting:
        return [
            refused(identity, room_id, peer, "lobby_full"),
            Refuse(RateLimited("the lobby is full")),
        ]
    effects: list[Effect] = [
        Reply(p.Lobby(room_id, reason, record.participant_id)),  # type: ignore[arg-type]
        Audit(
            "lobby_wait",
            "info",
            {
                "sub": identity.sub,
                "room": room_id,
                "reason": reason,
                "participant": record.participant_id,
            },
        ),
    ]
    if reason == Arrival.LOBBY:
        effects.append(knock(room_id, record))
    return effects


def moved_to_lobby(room_id: str, record: ParticipantRecord) -> list[Effect]:
    """Someone waiting for a chair now waits for admission (the room opened with a lobby)."""
    return [
        Reply(p.Lobby(room_id, Arrival.LOBBY, record.participant_id)),  # type: ignore[arg-type]
        knock(room_id, record),
    ]


def knock(room_id: str, record: ParticipantRecord) -> Broadcast:
    """Tell the room's admitters someone waits."""
    return Broadcast(room_id, p.Knock(participant_info(record, waiting=True)), to="admitters")


def entered(
    record: ParticipantRecord, identity: Identity, room_id: str, peer: str, admitted_by: str | None
) -> list[Effect]:
    """Someone is in (the executor has sent them `joined`): everyone else hears, the audit too."""
    return [
        Broadcast(room_id, p.ParticipantJoined(participant_info(record)),
                  exclude=record.participant_id),
        Audit("join", "allow", {
            "sub": identity.sub, "room": room_id, "jti": identity.jti, "role": identity.role,
            "participant": record.participant_id, "admitted_by": admitted_by, "ip": peer,
        }),
    ]  # fmt: skip


def room_opened_for(
    identity: Identity, room: RoomRecord, policy: Policy, peer: str
) -> Arrival | list[Effect]:
    """Someone waited for a chair, who opened the room: its departments are known only now, so
    decide again before letting anyone in. `LOBBY`, `ENTER`, or the refusal's effects (the
    executor takes them out of the lobby first)."""
    decision = policy.decide(identity, Action.JOIN_ROOM, room_scope(room, room.room_id))
    if not decision:
        return policy_refused(identity, room.room_id, peer, decision.reason, decision.refusal)
    if room.lobby and not skips_lobby(identity, room, policy):
        return Arrival.LOBBY
    return Arrival.ENTER


# -- replacing an older connection --------------------------------------------------------------


def replaced_in_room(room_id: str, sub: str, older_pid: str, removed: bool) -> list[Effect]:
    """A second connection of the same identity to the same room replaces the first (4409);
    the room hears the first left only if this node's removal was the one that took it out."""
    effects: list[Effect] = []
    if removed:
        effects.append(Broadcast(room_id, p.ParticipantLeft(older_pid, "replaced")))
    return [
        *effects,
        CloseRemote(room_id, older_pid, close_code_of(Replaced), "replaced"),
        Audit("replaced", "info", {"sub": sub, "room": room_id}),
    ]


def replaced_in_lobby(room_id: str, waiting_pid: str) -> list[Effect]:
    """The same identity was waiting in the lobby on another connection: that one goes."""
    return [
        Broadcast(room_id, p.LobbyLeft(waiting_pid, "left"), to="admitters"),
        CloseRemote(room_id, waiting_pid, close_code_of(Replaced), "replaced"),
    ]


# -- a chair answers the lobby ------------------------------------------------------------------


def admit(chair: Actor, participant_id: str, taken: ParticipantRecord | None) -> list[Effect]:
    """A chair admits someone; `taken` is what the lobby held under that id (None: nobody)."""
    if taken is None:
        return [Reply(p.Error(ErrorCode.NOT_FOUND, "nobody with that id is waiting", "admit"))]
    return [
        RememberAdmitted(chair.room, taken.sub, True),
        Audit(
            "admit",
            "allow",
            {
                "sub": taken.sub,
                "room": chair.room,
                "by": chair.sub,
                "participant": participant_id,
            },
        ),
        Broadcast(chair.room, p.LobbyLeft(participant_id, "admitted"), to="admitters"),
        Publish(cluster.Admitted(room=chair.room, pid=participant_id, by=chair.sub)),
    ]


def deny(chair: Actor, participant_id: str, taken: ParticipantRecord | None) -> list[Effect]:
    """A chair turns someone away from the lobby (closed with 4403)."""
    if taken is None:
        return [Reply(p.Error(ErrorCode.NOT_FOUND, "nobody with that id is waiting", "deny"))]
    return [
        # The chair's free text may name a patient: the audit keeps a code, not the text.
        Audit(
            "deny",
            "deny",
            {
                "sub": taken.sub,
                "room": chair.room,
                "by": chair.sub,
                "reason": "denied_by_chair",
            },
        ),
        Broadcast(chair.room, p.LobbyLeft(participant_id, "denied"), to="admitters"),
        CloseRemote(chair.room, participant_id, close_code_of(PolicyDenied), "denied"),
    ]


# -- leaving ----------------------------------------------------------------------------------


def left_lobby(room_id: str, participant_id: str, removed: bool) -> list[Effect]:
    """Someone waiting left (the admitters hear, unless someone else took them out first)."""
    if not removed:
        return []
    return [Broadcast(room_id, p.LobbyLeft(participant_id, "left"), to="admitters")]


def left_room(
    room_id: str, participant_id: str, sub: str, reason: str, removed: bool
) -> list[Effect]:
    """Someone in the room left; nothing to say if a chair or a replacement took them out."""
    if not removed:
        return []
    return [
        Broadcast(room_id, p.ParticipantLeft(participant_id, reason)),
        Audit(
            "leave",
            "info",
            {
                "sub": sub,
                "room": room_id,
                "reason": reason,
                "participant": participant_id,
            },
        ),
    ]


def room_done(
    room: RoomRecord | None, participants: Collection[object], waiting: Collection[object]
) -> bool:
    """An ad-hoc room (opened by a chair arriving, never scheduled) ends when empty."""
    return room is not None and not room.scheduled_by and not participants and not waiting


def set_own_media(
    room_id: str, record: ParticipantRecord | None, audio_muted: bool | None,
    video_muted: bool | None,
) -> list[Effect]:  # fmt: skip
    """Someone mutes or unmutes themselves (None: unchanged); `record` is them as stored (None:
    no longer in the room, nothing to do). The SFU hears both kinds, the room hears the change."""
    if record is None:
        return []
    changed = dataclasses.replace(
        record,
        audio_muted=record.audio_muted if audio_muted is None else audio_muted,
        video_muted=record.video_muted if video_muted is None else video_muted,
    )
    return [
        SaveParticipant(room_id, changed),
        OwnMedia("audio", changed.audio_muted),
        OwnMedia("video", changed.video_muted),
        Broadcast(room_id, p.ParticipantUpdated(participant_info(changed))),
    ]


# -- revocation and delivery ------------------------------------------------------------------


def revocation_covers(revocation: Mapping[str, Any], identity: Identity) -> bool:
    """Whether a revocation (as `cluster.Revoked` carries it) covers this identity's token."""
    if revocation.get("lifted"):
        return False
    if revocation.get("kind") == "jti":
        return identity.jti == revocation.get("value")
    return identity.sub == revocation.get("value")


def delivered_to(
    event: cluster.RoomMessage, participant_id: str, permissions: Collection[str]
) -> bool:
    """Whether a joined participant gets a room message."""
    if participant_id == event.exclude:
        return False
    if event.to == "all" or (event.to == "admitters" and Action.ADMIT in permissions):
        return True
    return event.to == participant_id


# -- requests in the room ---------------------------------------------------------------------

MESSAGE_ACTIONS: dict[type[p.Message], Action] = {
    p.Admit: Action.ADMIT,
    p.Deny: Action.ADMIT,
    p.UpdateRoom: Action.ADMIT,
    p.Mute: Action.MUTE_OTHERS,
    p.Remove: Action.REMOVE_PARTICIPANT,
    p.EndMeeting: Action.REMOVE_PARTICIPANT,
    p.RequestConsent: Action.START_RECORDING,
    p.VerbalConsent: Action.START_RECORDING,
    p.StartRecording: Action.START_RECORDING,
    p.MarkCase: Action.START_RECORDING,
    p.StopRecording: Action.STOP_RECORDING,
}
"""Actions a client message needs, checked against the permissions computed at join."""


def type_of(msg: p.Message) -> str:
    """A message's `type` on the wire."""
    return str(type(msg).__struct_config__.tag)


def screen(msg: p.Message, *, joined: bool) -> p.Error | None:
    """Refuse what no one may send at this point: `join` or `resume` again, or anything but ping
    and leave while waiting in the lobby. None: go on (to the permission check)."""
    if isinstance(msg, (p.Join, p.Resume)):
        return p.Error(ErrorCode.ALREADY_JOINED, "join is only the first message", type_of(msg))
    if not joined:
        return p.Error(ErrorCode.NOT_ADMITTED, "wait until you are admitted", type_of(msg))
    return None


def missing_action(msg: p.Message, permissions: Collection[str]) -> Action | None:
    """The action this message needs that the sender's permissions lack; None if allowed."""
    action = MESSAGE_ACTIONS.get(type(msg))
    if action is not None and action not in permissions:
        return action
    return None


def not_allowed(actor: Actor, msg: p.Message, action: Action, reason: str) -> list[Effect]:
    """A request the policy refuses: audited, and an `error` (the connection stays open)."""
    return [
        Audit(str(action), "deny", {"sub": actor.sub, "room": actor.room, "reason": reason}),
        Reply(p.Error(ErrorCode.NOT_ALLOWED, reason, type_of(msg))),
    ]
