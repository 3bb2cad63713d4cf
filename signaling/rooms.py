"""Rooms, lobby and membership: what happens when someone joins, waits, is admitted or leaves.

State that several nodes share (rooms, participants, lobby, revocations) lives in the
`StateStore`; this node's live connections live here. Everything another node must act on travels
as an event through `StateStore.publish`, and every node (this one included) applies events in
`on_event`, so one node and many behave the same way.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import msgspec

from core.errors import (
    AuthenticationError,
    BadMessage,
    ConsiliumError,
    NotFound,
    PolicyDenied,
    RateLimited,
    Replaced,
)
from core.rooms import valid_room_id
from recorder.manifest import RecordedParticipant
from sfu.room import MediaServer
from sfu.session import MediaError
from signaling import protocol as p
from signaling.audit import AuditLog
from signaling.connection import Connection, ConnectionState
from signaling.identity import Identity
from signaling.logs import scrub
from signaling.policy import Policy, RoomScope
from signaling.recording import Recorder
from signaling.settings import Settings
from signaling.state import REVOKED_EVENT, ParticipantRecord, Revocation, RoomRecord, StateStore
from signaling.tokens import TokenVerifier

log = logging.getLogger("consilium.rooms")

MEDIA_CLAIM_TTL_S = 30.0
"""How long a node's claim on a room's media lasts unless refreshed (a dead node's rooms
move to the next node that needs them after this)."""

# Actions a client message needs, checked against the permissions computed at join.
_MESSAGE_ACTIONS: dict[type[p.Message], str] = {
    p.Admit: "admit",
    p.Deny: "admit",
    p.UpdateRoom: "admit",
    p.Mute: "mute_others",
    p.Remove: "remove_participant",
    p.RequestConsent: "start_recording",
    p.VerbalConsent: "start_recording",
    p.StartRecording: "start_recording",
    p.MarkCase: "start_recording",
    p.StopRecording: "stop_recording",
}

_RECORDING_MESSAGES = (
    p.RequestConsent, p.Consent, p.VerbalConsent, p.StartRecording, p.StopRecording, p.MarkCase,
)  # fmt: skip
"""Carried out by the recorder on the node hosting the room's media (signaling/recording.py)."""


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
    )


def room_state(room: RoomRecord) -> p.RoomState:
    """A stored room as the wire shows it."""
    return p.RoomState(
        room_id=room.room_id,
        departments=list(room.departments),
        lobby=room.lobby,
        locked=room.locked,
        title=room.title,
    )


class Rooms:
    """The rooms this node serves and the connections it holds in them."""

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        policy: Policy,
        verifier: TokenVerifier,
        audit: AuditLog,
        *,
        media: MediaServer | None = None,
        ice_servers: Callable[[Identity], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.policy = policy
        self.verifier = verifier
        self.audit = audit
        self.media = media
        """The node's SFU (None: signalling only)."""
        self.recorder: Recorder | None = None
        """Records the rooms whose media this node hosts (set with `media`)."""
        self.media_guests: dict[str, str] = {}
        """Participants whose media this node hosts for another node: id → their node."""
        self.ice_servers = ice_servers or (lambda identity: [])
        self.connections: dict[str, Connection] = {}
        """This node's connections by participant id (joined and waiting)."""
        self.by_room: dict[str, set[Connection]] = {}
        """This node's connections per room."""
        self.media_failures: dict[str, int] = dict.fromkeys(p.MEDIA_FAILURE_CAUSES, 0)
        """Media sessions clients reported as not connecting, by cause, since start."""
        store.subscribe(self.on_event)

    # -- joining ------------------------------------------------------------------------------

    async def join(self, conn: Connection, msg: p.Join) -> None:
        """Handle the first message: authenticate, authorise, then join or wait in the lobby.

        Raises a ConsiliumError (already audited) when the connection must be closed.
        """
        if not valid_room_id(msg.room):
            self.audit.append("join_refused", "deny", reason="bad_room_id", ip=conn.peer)
            raise BadMessage("room id must be 1-64 letters, digits, '.', '_' or '-'")
        try:
            identity = await self.verifier.verify(msg.token)
        except AuthenticationError as exc:
            self.audit.append(
                "join_refused",
                "deny",
                room=msg.room,
                reason=str(exc.details.get("reason", "invalid_token")),
                ip=conn.peer,
            )
            raise
        revoked = await self.store.is_revoked(jti=identity.jti, sub=identity.sub)
        if revoked is not None:
            self._refuse(identity, msg.room, conn, f"revoked_{revoked.kind}")
            raise AuthenticationError("this token or identity has been revoked", reason="revoked")

        room = await self.store.get_room(msg.room)
        decision = self.policy.decide(identity, "join_room", room_scope(room, msg.room))
        if not decision:
            self._refuse(identity, msg.room, conn, decision.reason)
            # The client is told the refusal's code (it says what to do), not the policy's detail.
            raise PolicyDenied(f"{p.JOIN_REFUSED}: {decision.refusal}")

        conn.identity = identity
        conn.room_id = msg.room
        conn.participant_id = secrets.token_urlsafe(12)
        await self._replace_older(identity, msg.room, conn.participant_id)

        if room is None or not room.opened:
            if self.policy.may_open_room(identity):
                room = await self._open_room(identity, msg.room, room, conn)
            else:
                if room is None:
                    room = await self._create_room(identity, msg.room, conn, opened=False)
                await self._wait(conn, room, "room_not_open")
                return
        if room.locked and not self.policy.bypasses_lobby(identity):
            self._refuse(identity, msg.room, conn, "room_locked")
            raise PolicyDenied("the room is locked")
        if room.lobby and not self._skips_lobby(identity, room):
            await self._wait(conn, room, "lobby_enabled")
            return
        await self._enter(conn, room, admitted_by=None)

    def _skips_lobby(self, identity: Identity, room: RoomRecord) -> bool:
        """Chairs skip the lobby; so does anyone already admitted to this room."""
        return identity.sub in room.admitted or self.policy.bypasses_lobby(identity)

    async def _set_admitted(self, room_id: str, sub: str, admitted: bool) -> None:
        """Remember (or forget) that a chair let `sub` into this room, for rejoins."""
        room = await self.store.get_room(room_id)
        if room is None or (sub in room.admitted) == admitted:
            return
        if admitted:
            room.admitted.append(sub)
        else:
            room.admitted.remove(sub)
        await self.store.save_room(room)

    def _refuse(self, identity: Identity, room_id: str, conn: Connection, reason: str) -> None:
        self.audit.append(
            "join_refused",
            "deny",
            sub=identity.sub,
            room=room_id,
            reason=reason,
            jti=identity.jti,
            role=identity.role,
            ip=conn.peer,
        )

    async def _open_room(
        self, identity: Identity, room_id: str, room: RoomRecord | None, conn: Connection
    ) -> RoomRecord:
        """A chair arrives: create the room if nobody scheduled it, and mark it open."""
        if room is None:
            room = await self._create_room(identity, room_id, conn, opened=True)
        if not room.opened:
            room.opened = True
            if not room.departments:
                # Opened ad hoc after others arrived: the room belongs to the chair's departments.
                room.departments = list(identity.depts)
            await self.store.save_room(room)
        self.audit.append("room_opened", "info", sub=identity.sub, room=room_id)
        await self.store.publish({"k": "room_opened", "room": room_id})
        return room

    async def _create_room(
        self, identity: Identity, room_id: str, conn: Connection, *, opened: bool
    ) -> RoomRecord:
        """Create an unscheduled room (open when a chair arrives, a placeholder otherwise)."""
        if room_id not in self.by_room and len(self.by_room) >= self.settings.max_rooms_per_node:
            self._refuse(identity, room_id, conn, "too_many_rooms")
            raise RateLimited("this server holds as many rooms as it may")
        room = RoomRecord(
            room_id=room_id,
            departments=list(identity.depts) if opened else [],
            opened=opened,
            created_at=time.time(),
        )
        if await self.store.create_room(room):
            return room
        existing = await self.store.get_room(room_id)
        if existing is None:
            raise NotFound("the room was closed while joining")
        return existing

    async def _replace_older(self, identity: Identity, room_id: str, new_pid: str) -> None:
        """A second connection of the same identity to the same room replaces the first (4409)."""
        older = await self.store.find_participant_by_sub(room_id, identity.sub)
        if older is not None and older.participant_id != new_pid:
            removed = await self.store.remove_participant(room_id, older.participant_id)
            if removed is not None:
                await self._broadcast(room_id, p.ParticipantLeft(older.participant_id, "replaced"))
            await self._close_remote(room_id, older.participant_id, Replaced.close_code, "replaced")
            self.audit.append("replaced", "info", sub=identity.sub, room=room_id)
        for waiting in await self.store.list_lobby(room_id):
            if waiting.sub == identity.sub and waiting.participant_id != new_pid:
                await self.store.remove_from_lobby(room_id, waiting.participant_id)
                await self._broadcast(
                    room_id, p.LobbyLeft(waiting.participant_id, "left"), to="admitters"
                )
                await self._close_remote(room_id, waiting.participant_id, 4409, "replaced")

    def _record(self, conn: Connection) -> ParticipantRecord:
        identity = conn.identity
        assert identity is not None
        return ParticipantRecord(
            participant_id=conn.participant_id,
            sub=identity.sub,
            role=identity.role,
            name=identity.name,
            depts=list(identity.depts),
            org=identity.org,
            node=self.store.node_id,
            joined_at=time.time(),
        )

    async def _wait(self, conn: Connection, room: RoomRecord | None, reason: str) -> None:
        """Put a connection in the lobby and tell it (and, if the room is open, the chair)."""
        identity = conn.identity
        assert identity is not None
        lobby = await self.store.list_lobby(conn.room_id)
        if len(lobby) >= self.settings.max_lobby_per_room:
            self._refuse(identity, conn.room_id, conn, "lobby_full")
            raise RateLimited("the lobby is full")
        record = self._record(conn)
        await self.store.add_to_lobby(conn.room_id, record)
        self._attach(conn, ConnectionState.WAITING)
        conn.waiting_reason = reason
        conn.send(p.encode(p.Lobby(conn.room_id, reason, conn.participant_id)))  # type: ignore[arg-type]
        self.audit.append(
            "lobby_wait",
            "info",
            sub=identity.sub,
            room=conn.room_id,
            reason=reason,
            participant=conn.participant_id,
        )
        if reason == "lobby_enabled":
            await self._broadcast(
                conn.room_id, p.Knock(participant_info(record, waiting=True)), to="admitters"
            )

    async def _enter(self, conn: Connection, room: RoomRecord, admitted_by: str | None) -> None:
        """Make a connection a participant of the room and tell everyone."""
        identity = conn.identity
        assert identity is not None
        record = self._record(conn)
        if not await self.store.add_participant(
            room.room_id, record, max_participants=self.settings.max_participants_per_room
        ):
            self._refuse(identity, room.room_id, conn, "room_full")
            raise RateLimited("the room is full")
        conn.permissions = self.policy.permissions(identity, room_scope(room, room.room_id))
        self._attach(conn, ConnectionState.JOINED)
        participants = await self.store.list_participants(room.room_id)
        lobby: list[p.ParticipantInfo] = []
        if "admit" in conn.permissions:
            lobby = [
                participant_info(w, waiting=True) for w in await self.store.list_lobby(room.room_id)
            ]
        # Media first: the client may offer as soon as it reads `joined`.
        if self.media is not None:
            conn.media_node = await self.store.claim_media_node(
                room.room_id, self.store.node_id, MEDIA_CLAIM_TTL_S
            )
            await self._media_call(
                conn,
                {
                    "op": "join",
                    "room": room.room_id,
                    "permissions": sorted(conn.permissions),
                    "audio_muted": record.audio_muted,
                    "video_muted": record.video_muted,
                    "user": identity.sub,
                    "name": record.name,
                    "role": record.role,
                    "depts": list(record.depts),
                    "org": record.org,
                },
            )
        conn.send(
            p.encode(
                p.Joined(
                    participant_id=conn.participant_id,
                    you=participant_info(record),
                    permissions=sorted(conn.permissions),
                    room=room_state(room),
                    participants=[participant_info(x) for x in participants],
                    lobby=lobby,
                    ice_servers=self.ice_servers(identity),
                )
            )
        )
        await self._broadcast(
            room.room_id, p.ParticipantJoined(participant_info(record)), exclude=conn.participant_id
        )
        if self.media is not None:
            # Where the room's recording stands, and the notice if it asks for consent.
            await self._media_call(conn, {"op": "rec", "action": "hello", "fields": {}})
        self.audit.append(
            "join",
            "allow",
            sub=identity.sub,
            room=room.room_id,
            jti=identity.jti,
            role=identity.role,
            participant=conn.participant_id,
            admitted_by=admitted_by,
            ip=conn.peer,
        )

    def _attach(self, conn: Connection, state: ConnectionState) -> None:
        conn.state = state
        self.connections[conn.participant_id] = conn
        self.by_room.setdefault(conn.room_id, set()).add(conn)

    # -- messages in the room ------------------------------------------------------------------

    async def handle(self, conn: Connection, msg: p.Message) -> None:
        """Act on one message from a joined or waiting connection."""
        if isinstance(msg, p.Ping):
            conn.send(p.encode(p.Pong(id=msg.id, server_time=time.time())))
            return
        if isinstance(msg, p.Leave):
            # The handler cleans up, then closes: nothing waits for the close handshake.
            conn.finish(1000, "left")
            return
        if isinstance(msg, p.Join):
            conn.send(p.encode(p.Error("already_joined", "join is only the first message", "join")))
            return
        if conn.state is not ConnectionState.JOINED:
            conn.send(
                p.encode(p.Error("not_admitted", "wait until you are admitted", _type_of(msg)))
            )
            return
        action = _MESSAGE_ACTIONS.get(type(msg))
        if action is not None and action not in conn.permissions:
            identity = conn.identity
            assert identity is not None
            room = await self.store.get_room(conn.room_id)
            decision = self.policy.decide(identity, action, room_scope(room, conn.room_id))
            self.audit.append(
                action, "deny", sub=identity.sub, room=conn.room_id, reason=decision.reason
            )
            conn.send(p.encode(p.Error("not_allowed", decision.reason, _type_of(msg))))
            return
        if isinstance(msg, p.Admit):
            await self._admit(conn, msg.participant_id)
        elif isinstance(msg, p.Deny):
            await self._deny(conn, msg.participant_id, msg.reason)
        elif isinstance(msg, p.Mute):
            await self._mute(conn, msg.participant_id, msg.kind)
        elif isinstance(msg, p.Remove):
            await self._remove(conn, msg.participant_id, msg.reason)
        elif isinstance(msg, p.SetMedia):
            await self._set_media(conn, msg)
        elif isinstance(msg, p.UpdateRoom):
            await self._update_room(conn, msg)
        elif isinstance(msg, (p.Offer, p.Answer, p.Candidate)):
            await self._media_message(conn, msg)
        elif isinstance(msg, p.MediaFailed):
            self._media_failed(conn, msg)
        elif isinstance(msg, _RECORDING_MESSAGES):
            if self.media is None or not conn.media_node:
                request = _type_of(msg)
                conn.send(
                    p.encode(p.Error("recording_unavailable", "this node has no SFU", request))
                )
                return
            fields = msgspec.structs.asdict(msg)
            await self._media_call(conn, {"op": "rec", "action": _type_of(msg), "fields": fields})

    def _media_failed(self, conn: Connection, msg: p.MediaFailed) -> None:
        """Count and log a client's failed media session for IT: the participant id, the node
        and what the browser gathered, never a name, a `sub` or a room's title."""
        self.media_failures[msg.cause] += 1
        log.warning(
            "media session did not connect: %s (%s session; the browser gathered %s candidates; "
            "TURN servers offered: %s): check that UDP to the SFU's ports is open, or configure "
            "TURN",
            msg.cause,
            msg.pc,
            ", ".join(sorted(set(msg.candidates))) or "no",
            "yes" if self.settings.turn_urls else "no",
            extra={"participant": conn.participant_id, "media_node": conn.media_node},
        )

    async def _media_message(self, conn: Connection, msg: p.Offer | p.Answer | p.Candidate) -> None:
        """SDP and ICE for the participant's sessions with the SFU hosting the room's media."""
        if self.media is None or not conn.media_node:
            request = _type_of(msg)
            conn.send(p.encode(p.Error("media_unavailable", "this node has no SFU", request)))
            return
        if isinstance(msg, p.Candidate):
            await self._media_call(conn, {"op": "candidate", "pc": msg.pc,
                                          "candidate": msg.candidate, "sdp_mid": msg.sdp_mid,
                                          "sdp_mline_index": msg.sdp_mline_index})  # fmt: skip
        else:
            op: dict[str, Any] = {"op": _type_of(msg), "pc": msg.pc, "sdp": msg.sdp}
            if isinstance(msg, p.Offer):
                op["screen"] = msg.screen[:8]
            await self._media_call(conn, op)

    async def _media_call(self, conn: Connection, op: dict[str, Any]) -> None:
        """Run a media operation on the node hosting the room's media: here, or over an event.

        A room's media lives on one node (the first to claim it); a participant whose signalling
        connection is on another node has its SDP and ICE relayed there, and connects its media
        straight to that node (its ICE candidates are in that node's SDP).
        """
        op = {**op, "pid": conn.participant_id, "origin": self.store.node_id}
        if conn.media_node == self.store.node_id:
            await self._media_op(op)
        else:
            await self.store.publish({"k": "media", "node": conn.media_node, **op})

    async def _media_op(self, op: dict[str, Any]) -> None:
        """Carry out a media operation on this node's SFU (for a local or a remote participant)."""
        media = self.media
        if media is None:
            return
        pid, kind = op["pid"], op["op"]
        try:
            if kind == "join":
                if op["origin"] != self.store.node_id:
                    self.media_guests[pid] = op["origin"]
                await media.join(
                    op["room"], pid, frozenset(op["permissions"]),
                    audio_muted=op["audio_muted"], video_muted=op["video_muted"], user=op["user"],
                )  # fmt: skip
                if self.recorder is not None:
                    self.recorder.joined(op["room"], RecordedParticipant(
                        participant_id=pid, sub=op["user"], name=op.get("name", ""),
                        role=op.get("role", ""), depts=list(op.get("depts", ())),
                        org=op.get("org", ""),
                    ))  # fmt: skip
            elif kind == "leave":
                self.media_guests.pop(pid, None)
                participant = media.participants.get(pid)
                await media.leave(pid)
                if self.recorder is not None:
                    await self.recorder.left(pid)
                if participant is not None and participant.room.room_id not in media.rooms:
                    try:
                        await self.store.release_media_node(
                            participant.room.room_id, self.store.node_id
                        )
                    except Exception:
                        # Best effort: an unreleased claim lapses by itself (MEDIA_CLAIM_TTL_S).
                        log.warning("could not release the media claim", exc_info=True)
            elif kind == "offer":
                sdp = await media.offer(pid, op["pc"], op["sdp"], screen=op.get("screen", ()))
                self.media_notify(pid, {"type": "answer", "pc": op["pc"], "sdp": sdp})
            elif kind == "answer":
                await media.answer(pid, op["pc"], op["sdp"])
            elif kind == "candidate":
                await media.candidate(
                    pid, op["pc"], op["candidate"], op["sdp_mid"], op["sdp_mline_index"]
                )
            elif kind == "mute":
                media.set_muted(pid, op["kind"], op["muted"])
            elif kind == "rec" and self.recorder is not None:
                await self.recorder.handle(pid, op["action"], op["fields"])
        except MediaError as exc:
            self.media_notify(pid, {"type": "error", "code": "bad_media_request",
                                    "message": _short(str(exc)), "request": kind})  # fmt: skip

    def notify_message(self, participant_id: str, message: p.Message) -> None:
        """Send one server message to a participant whose media this node hosts."""
        self.media_notify(participant_id, {"type": "message", "text": p.encode(message)})

    def media_notify(self, participant_id: str, message: dict[str, Any]) -> None:
        """The SFU has something for a participant: send it (through its node if elsewhere)."""
        origin = self.media_guests.get(participant_id)
        if origin is not None:
            task = asyncio.get_running_loop().create_task(
                self.store.publish(
                    {"k": "media_out", "node": origin, "pid": participant_id, "msg": message}
                )
            )
            _pending.add(task)
            task.add_done_callback(_pending.discard)
            return
        self._deliver_media(participant_id, message)

    def _deliver_media(self, participant_id: str, message: dict[str, Any]) -> None:
        conn = self.connections.get(participant_id)
        if conn is None or conn.state is not ConnectionState.JOINED:
            return
        kind = message.get("type")
        out: p.Message
        if kind == "offer":
            out = p.Offer(sdp=message["sdp"], pc=message["pc"])
        elif kind == "answer":
            out = p.Answer(sdp=message["sdp"], pc=message["pc"])
        elif kind == "tracks":
            out = p.Tracks([p.TrackInfo(**t) for t in message["tracks"]])
        elif kind == "error":
            out = p.Error(message["code"], message["message"], message.get("request", ""))
        elif kind == "message":  # already encoded (the recorder's notices)
            conn.send(message["text"])
            return
        else:
            return
        conn.send(p.encode(out))

    async def refresh_media_claims(self) -> None:
        """Keep this node's claim on the rooms whose media it hosts (called periodically)."""
        if self.media is not None:
            for room_id in list(self.media.rooms):
                await self.store.claim_media_node(room_id, self.store.node_id, MEDIA_CLAIM_TTL_S)

    async def _admit(self, chair: Connection, participant_id: str) -> None:
        record = await self.store.remove_from_lobby(chair.room_id, participant_id)
        if record is None:
            chair.send(p.encode(p.Error("not_found", "nobody with that id is waiting", "admit")))
            return
        assert chair.identity is not None
        await self._set_admitted(chair.room_id, record.sub, True)
        self.audit.append(
            "admit",
            "allow",
            sub=record.sub,
            room=chair.room_id,
            by=chair.identity.sub,
            participant=participant_id,
        )
        await self._broadcast(
            chair.room_id, p.LobbyLeft(participant_id, "admitted"), to="admitters"
        )
        await self.store.publish(
            {"k": "admit", "room": chair.room_id, "pid": participant_id, "by": chair.identity.sub}
        )

    async def _deny(self, chair: Connection, participant_id: str, reason: str) -> None:
        record = await self.store.remove_from_lobby(chair.room_id, participant_id)
        if record is None:
            chair.send(p.encode(p.Error("not_found", "nobody with that id is waiting", "deny")))
            return
        assert chair.identity is not None
        self.audit.append(
            "deny",
            "deny",
            sub=record.sub,
            room=chair.room_id,
            by=chair.identity.sub,
            # The chair's free text may name a patient: the audit keeps a code, not the text.
            reason="denied_by_chair",
        )
        await self._broadcast(chair.room_id, p.LobbyLeft(participant_id, "denied"), to="admitters")
        await self._close_remote(chair.room_id, participant_id, 4403, "denied")

    async def _mute(self, chair: Connection, participant_id: str, kind: str) -> None:
        record = await self.store.get_participant(chair.room_id, participant_id)
        if record is None:
            chair.send(p.encode(p.Error("not_found", "no such participant", "mute")))
            return
        if kind in ("audio", "both"):
            record.audio_muted = True
        if kind in ("video", "both"):
            record.video_muted = True
        await self.store.update_participant(chair.room_id, record)
        assert chair.identity is not None
        self.audit.append(
            "mute", "allow", sub=record.sub, room=chair.room_id, by=chair.identity.sub, kind=kind
        )
        # The media side (issue 4) listens for this event and stops forwarding the track.
        await self.store.publish(
            {"k": "mute", "room": chair.room_id, "pid": participant_id, "kind": kind}
        )
        await self._broadcast(
            chair.room_id, p.ParticipantUpdated(participant_info(record), by=chair.participant_id)
        )

    async def _remove(self, chair: Connection, participant_id: str, reason: str) -> None:
        record = await self.store.remove_participant(chair.room_id, participant_id)
        if record is None:
            chair.send(p.encode(p.Error("not_found", "no such participant", "remove")))
            return
        assert chair.identity is not None
        await self._set_admitted(chair.room_id, record.sub, False)
        self.audit.append(
            "remove",
            "allow",
            sub=record.sub,
            room=chair.room_id,
            by=chair.identity.sub,
            reason="removed_by_chair",
        )
        await self._broadcast(chair.room_id, p.ParticipantLeft(participant_id, "removed"))
        await self._close_remote(chair.room_id, participant_id, 4403, "removed")

    async def _set_media(self, conn: Connection, msg: p.SetMedia) -> None:
        record = await self.store.get_participant(conn.room_id, conn.participant_id)
        if record is None:
            return
        if msg.audio_muted is not None:
            record.audio_muted = msg.audio_muted
        if msg.video_muted is not None:
            record.video_muted = msg.video_muted
        await self.store.update_participant(conn.room_id, record)
        if self.media is not None and conn.media_node:
            await self._media_call(conn, {"op": "mute", "kind": "audio",
                                          "muted": record.audio_muted})  # fmt: skip
            await self._media_call(conn, {"op": "mute", "kind": "video",
                                          "muted": record.video_muted})  # fmt: skip
        await self._broadcast(conn.room_id, p.ParticipantUpdated(participant_info(record)))

    async def _update_room(self, chair: Connection, msg: p.UpdateRoom) -> None:
        room = await self.store.get_room(chair.room_id)
        if room is None:
            return
        if msg.lobby is not None:
            room.lobby = msg.lobby
        if msg.locked is not None:
            room.locked = msg.locked
        await self.store.save_room(room)
        assert chair.identity is not None
        self.audit.append(
            "room_updated",
            "info",
            sub=chair.identity.sub,
            room=room.room_id,
            lobby=room.lobby,
            locked=room.locked,
        )
        await self._broadcast(room.room_id, p.RoomUpdated(room_state(room)))

    # -- leaving -------------------------------------------------------------------------------

    async def disconnect(self, conn: Connection, reason: str) -> None:
        """Clean up after a connection closed, however it closed."""
        previous = conn.state
        conn.state = ConnectionState.CLOSED
        if not conn.participant_id or self.connections.get(conn.participant_id) is not conn:
            return
        del self.connections[conn.participant_id]
        members = self.by_room.get(conn.room_id)
        if members is not None:
            members.discard(conn)
            if not members:
                del self.by_room[conn.room_id]
        identity = conn.identity
        assert identity is not None
        if previous is ConnectionState.WAITING:
            if await self.store.remove_from_lobby(conn.room_id, conn.participant_id) is not None:
                await self._broadcast(
                    conn.room_id, p.LobbyLeft(conn.participant_id, "left"), to="admitters"
                )
        else:
            if self.media is not None and conn.media_node:
                await self._media_call(conn, {"op": "leave"})
            if await self.store.remove_participant(conn.room_id, conn.participant_id) is None:
                await self._close_room_if_done(conn.room_id)
                return
            await self._broadcast(conn.room_id, p.ParticipantLeft(conn.participant_id, reason))
            self.audit.append(
                "leave",
                "info",
                sub=identity.sub,
                room=conn.room_id,
                reason=reason,
                participant=conn.participant_id,
            )
        await self._close_room_if_done(conn.room_id)

    async def _close_room_if_done(self, room_id: str) -> None:
        """An ad-hoc room (opened by a chair arriving, never scheduled) ends when empty."""
        room = await self.store.get_room(room_id)
        if room is None or room.scheduled_by:
            return
        if not await self.store.list_participants(room_id) and not await self.store.list_lobby(
            room_id
        ):
            await self.store.delete_room(room_id)
            self.audit.append("room_closed", "info", room=room_id)

    # -- revocation ----------------------------------------------------------------------------

    async def revoke(self, revocation: Revocation) -> None:
        """Record a revocation; every node (this one too) drops the connections it covers.

        Audited first, so a revocation is never in force without its entry; if storing it then
        fails, a `revoke_failed` entry says so."""
        about: dict[str, Any] = {
            "sub": revocation.value if revocation.kind == "sub" else None,
            "kind": revocation.kind,
            "jti": revocation.value if revocation.kind == "jti" else None,
        }
        self.audit.append("revoke", "allow", by=revocation.by,
                          reason=scrub(revocation.reason)[:200] or None, **about)  # fmt: skip
        try:
            await self.store.revoke(revocation)
        except Exception as exc:
            self.audit.append("revoke_failed", "error", reason=type(exc).__name__, **about)
            raise

    async def sweep_revoked(self) -> int:
        """Drop every local connection whose token or identity is revoked; how many were.

        Events drop connections at once; this periodic sweep covers a node that missed an
        event (a Redis reconnect), so no revoked connection outlives a sweep interval.
        """
        dropped = 0
        for conn in list(self.connections.values()):
            identity = conn.identity
            if identity is None:
                continue
            if await self.store.is_revoked(jti=identity.jti, sub=identity.sub) is not None:
                await self._drop(conn, 4401, "revoked")
                dropped += 1
        return dropped

    # -- what the REST API asks of a room -------------------------------------------------------

    async def current_participant(self, room_id: str, sub: str) -> ParticipantRecord | None:
        """The participant of `room_id` with this `sub` who is in the room now (joined, not
        waiting in the lobby), on any node; None otherwise."""
        return await self.store.find_participant_by_sub(room_id, sub)

    async def announce(self, room_id: str, message: p.Message) -> None:
        """Send a server message to everyone joined in the room, on every node (what a REST
        request changed in the room, e.g. `image_shared`)."""
        await self._broadcast(room_id, message)

    # -- events from any node ------------------------------------------------------------------

    async def _broadcast(
        self, room_id: str, message: p.Message, *, to: str = "all", exclude: str | None = None
    ) -> None:
        """Send to everyone in the room on every node (`to`: all, admitters, or one id).

        Awaited in order, so every participant sees a room's events in the order they happened.
        """
        text = p.encode(message)
        await self.store.publish(
            {"k": "room", "room": room_id, "to": to, "exclude": exclude, "msg": text}
        )

    async def _close_remote(
        self, room_id: str, participant_id: str, code: int, reason: str
    ) -> None:
        await self.store.publish(
            {"k": "close", "room": room_id, "pid": participant_id, "code": code, "reason": reason}
        )

    async def on_event(self, event: dict[str, Any]) -> None:
        """Apply an event published by any node to this node's connections."""
        try:
            kind = event.get("k")
            if kind == "room":
                self._deliver(event)
            elif kind == "close":
                conn = self.connections.get(event["pid"])
                if conn is not None and conn.room_id == event["room"]:
                    await self._drop(conn, int(event["code"]), str(event["reason"]))
            elif kind == "admit":
                conn = self.connections.get(event["pid"])
                if conn is not None and conn.state is ConnectionState.WAITING:
                    await self._admitted(conn, str(event["by"]))
            elif event.get("type") == REVOKED_EVENT:
                revocation = event["revocation"]
                field = "jti" if revocation["kind"] == "jti" else "sub"
                for conn in list(self.connections.values()):
                    identity = conn.identity
                    if identity is not None and getattr(identity, field) == revocation["value"]:
                        await self._drop(conn, 4401, "revoked")
            elif kind == "mute":
                # The muted participant's node stops forwarding (within this event's delivery).
                if self.media is not None and event["pid"] in self.media.participants:
                    kinds = ("audio", "video") if event["kind"] == "both" else (event["kind"],)
                    for media_kind in kinds:
                        self.media.set_muted(event["pid"], media_kind, True)
            elif kind == "media" and event["node"] == self.store.node_id:
                await self._media_op(event)
            elif kind == "media_out" and event["node"] == self.store.node_id:
                self._deliver_media(event["pid"], event["msg"])
            elif kind == "room_opened":
                await self._room_opened(str(event["room"]))
        except Exception:
            log.exception("event failed", extra={"event_kind": event.get("k")})

    def _deliver(self, event: dict[str, Any]) -> None:
        members = self.by_room.get(event["room"])
        if not members:
            return
        to, exclude, text = event["to"], event.get("exclude"), event["msg"]
        for conn in members:
            if conn.state is not ConnectionState.JOINED or conn.participant_id == exclude:
                continue
            if to == "all" or (to == "admitters" and "admit" in conn.permissions):
                conn.send(text)
            elif to == conn.participant_id:
                conn.send(text)

    async def _drop(self, conn: Connection, code: int, reason: str) -> None:
        """Clean up after `conn` now, and close it in the background.

        Events are handled one at a time per node: waiting here for a client's close handshake
        would hold up every room's events on this node (a rejoin seen seconds late).
        """
        await self.disconnect(conn, reason)
        conn.close_soon(code, reason)

    async def _admitted(self, conn: Connection, by: str) -> None:
        room = await self.store.get_room(conn.room_id)
        if room is None:
            await self._drop(conn, 4403, "room closed")
            return
        try:
            await self._enter(conn, room, admitted_by=by)
        except ConsiliumError as exc:
            await self._drop(conn, exc.close_code, exc.message)

    async def _room_opened(self, room_id: str) -> None:
        room = await self.store.get_room(room_id)
        if room is None:
            return
        for conn in list(self.by_room.get(room_id, ())):
            if conn.state is not ConnectionState.WAITING or conn.waiting_reason != "room_not_open":
                continue
            identity = conn.identity
            assert identity is not None
            # The room's departments are known only now: decide again before letting anyone in.
            decision = self.policy.decide(identity, "join_room", room_scope(room, room_id))
            if not decision:
                await self.store.remove_from_lobby(room_id, conn.participant_id)
                self._refuse(identity, room_id, conn, decision.reason)
                await self._drop(
                    conn, PolicyDenied.close_code, f"{p.JOIN_REFUSED}: {decision.refusal}"
                )
                continue
            if room.lobby and not self._skips_lobby(identity, room):
                conn.waiting_reason = "lobby_enabled"
                conn.send(p.encode(p.Lobby(room_id, "lobby_enabled", conn.participant_id)))
                await self._broadcast(
                    room_id,
                    p.Knock(participant_info(self._record(conn), waiting=True)),
                    to="admitters",
                )
                continue
            await self.store.remove_from_lobby(room_id, conn.participant_id)
            try:
                await self._enter(conn, room, admitted_by=None)
            except ConsiliumError as exc:
                await self._drop(conn, exc.close_code, exc.message)

    # -- shutdown ------------------------------------------------------------------------------

    async def close_all(self, code: int = 1001, reason: str = "server shutting down") -> None:
        """Close every local connection (at shutdown) and forget them in the shared state."""
        connections = list(self.connections.values())
        for conn in connections:
            await self.disconnect(conn, reason)
        await asyncio.gather(*(conn.close(code, reason) for conn in connections))


_pending: set[asyncio.Task[Any]] = set()


def _short(text: str) -> str:
    return text if len(text) <= 200 else text[:197] + "..."


def _type_of(msg: p.Message) -> str:
    return str(type(msg).__struct_config__.tag)
