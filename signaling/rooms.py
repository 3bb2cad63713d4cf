"""Rooms, lobby and membership carried out: the executor of `membership` and `moderation`.

The rules (who joins, who waits, what a chair's admit, deny, mute or remove does) are pure
functions in `signaling/membership.py` and `signaling/moderation.py`; this module reads what they
need, calls them, and carries out the effects they return against the store, the audit log, this
node's connections, the SFU and the recorder.

State that several nodes share (rooms, participants, lobby, revocations) lives in the
`StateStore`; this node's live connections live here. Everything another node must act on travels
as a `signaling.cluster` event through `StateStore.publish`, and every node (this one included)
applies events in `on_event`, so one node and many behave the same way.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any, assert_never

import msgspec

from core.actions import Action
from core.codes import ErrorCode
from core.errors import (
    AuthenticationError,
    BadMessage,
    ConsiliumError,
    NotFound,
)
from core.rooms import valid_room_id
from sfu.server import MediaServer
from signaling import cluster, ending, moderation, resume
from signaling import meeting_end as me
from signaling import membership as m
from signaling import protocol as p
from signaling.audit import AuditLog
from signaling.connection import Connection, ConnectionState
from signaling.errors import close_code_of
from signaling.identity import Identity
from signaling.liveness import NODE_LOST, choose_media_node
from signaling.logs import scrub
from signaling.media_relay import MEDIA_CLAIM_TTL_S, MediaRelay
from signaling.membership import participant_info, room_scope, room_state
from signaling.messenger import Messenger
from signaling.oidc import identity_in_room
from signaling.policy import Policy
from signaling.reconnects import Reconnects
from signaling.recording_control import Recorder
from signaling.resume import ReplayBuffer
from signaling.settings import Settings
from signaling.state.records import ParticipantRecord, Revocation, RoomRecord
from signaling.state.store import StateStore
from signaling.tokens import TokenVerifier

log = logging.getLogger("consilium.rooms")

NODE_STOPPED = "node_stopped"
"""Why a participant handed over by a draining node leaves, if they do not resume elsewhere."""
OWN_CHECK_S = 2.0
"""How often a node compares its participants with the shared state (`Rooms.check_own`)."""
LOST_SWEEP_S = 5.0
"""How often a node looks for lost nodes' participants whom nobody let go (`Rooms.sweep_lost`)."""

_background: set[asyncio.Task[None]] = set()
"""Work started from timers, running (the loop keeps only a weak reference)."""

_RECORDING_MESSAGES = (
    p.RequestConsent, p.Consent, p.VerbalConsent, p.StartRecording, p.StopRecording, p.MarkCase,
)  # fmt: skip
"""Carried out by the recorder on the node hosting the room's media (recording_control.py)."""


class Rooms:
    """The rooms this node serves and the connections it holds in them."""

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        policy: Policy,
        verifier: TokenVerifier,
        audit: AuditLog,
        messenger: Messenger,
        *,
        media: MediaServer | None = None,
        recorder: Recorder | None = None,
        ice_servers: Callable[[Identity], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.policy = policy
        self.verifier = verifier
        self.audit = audit
        self.ice_servers = ice_servers or (lambda identity: [])
        self.messenger = messenger
        """Sends to a room on every node, and the SFU's notifications to a participant."""
        self.connections = messenger.connections
        """This node's connections by participant id (joined and waiting): the messenger's."""
        self.relay = MediaRelay(store, messenger, media, recorder)
        """Moves media operations to the room's media node (the SFU and recorder act there)."""
        self.by_room: dict[str, set[Connection]] = {}
        """This node's connections per room."""
        self.media_failures: dict[str, int] = dict.fromkeys(p.MEDIA_FAILURE_CAUSES, 0)
        """Media sessions clients reported as not connecting, by cause, since start."""
        self.draining = False
        """Stopping (`signaling.http.drain`): no room's media is taken here any more."""
        self.nodes_lost = 0
        """Dead nodes this node cleaned up after (`reap_node` found something), since start."""
        self.rooms_moved: dict[str, int] = {"node_lost": 0, "drain": 0}
        """Rooms whose media this node sent to another node, by why (`cluster.MediaMoved`)."""
        self.connections_moved: dict[str, int] = {"node_lost": 0, "drain": 0}
        """This node's connections whose media moved to another node, by why."""
        self.drained = False
        self._missing: set[str] = set()
        """Participants of this node's found missing from the shared state at the last
        `check_own` (closed if still missing at the next, from the same Redis server)."""
        self._server: str | None = None
        """The Redis server `check_own` last looked at (`StateStore.server_identity`)."""
        """The drain has run (it runs once: on SIGTERM, or before the stop it led to)."""
        self.reconnects = Reconnects(
            settings, store, verifier, audit, messenger, self.by_room, self.disconnect, self.adopt
        )
        """Participants held while their connection is gone, for a `resume`."""
        store.subscribe(self.on_event)

    @property
    def media(self) -> MediaServer | None:
        """The node's SFU (None: signalling only)."""
        return self.relay.media

    @property
    def recorder(self) -> Recorder | None:
        """Records the rooms whose media this node hosts (None without `media`)."""
        return self.relay.recorder

    async def refresh_media_claims(self) -> None:
        """Keep this node's claim on the rooms whose media it hosts (called periodically)."""
        await self.relay.refresh_claims()

    # -- carrying out effects -------------------------------------------------------------------

    async def _apply(self, effects: Iterable[m.Effect], conn: Connection | None = None) -> None:
        """Carry out effects in order; `conn` is the connection a `Reply` goes to. A `Refuse`
        raises its error (the effects before it, its audit entry among them, are done)."""
        for effect in effects:
            if isinstance(effect, m.Reply):
                if conn is not None:
                    conn.send(p.encode(effect.message))
            elif isinstance(effect, m.Broadcast):
                await self.messenger.announce(
                    effect.room, effect.message, to=effect.to, exclude=effect.exclude
                )
            elif isinstance(effect, m.Audit):
                self.audit.append(effect.event, effect.outcome, **effect.fields)
            elif isinstance(effect, m.CloseRemote):
                await self._close_remote(effect.room, effect.pid, effect.code, effect.reason)
            elif isinstance(effect, m.Publish):
                await self._publish(effect.event)
            elif isinstance(effect, m.SaveRoom):
                await self.store.save_room(effect.room)
            elif isinstance(effect, m.SaveParticipant):
                await self.store.update_participant(effect.room, effect.record)
            elif isinstance(effect, m.RememberAdmitted):
                await self._set_admitted(effect.room, effect.sub, effect.admitted)
            elif isinstance(effect, m.OwnMedia):
                if conn is not None and self.media is not None and conn.media_node:
                    await self.relay.call(conn, "mute", kind=effect.kind, muted=effect.muted)
            elif isinstance(effect, m.Refuse):
                raise effect.error
            else:
                assert_never(effect)

    # -- joining ------------------------------------------------------------------------------

    async def join(
        self, conn: Connection, msg: p.Join, *, signed_in: Identity | None = None
    ) -> None:
        """Handle the first message: authenticate, authorise, then join or wait in the lobby.

        `signed_in`: the identity of the browser's sign-in session (`signaling.oidc`), taken
        when the join's token is empty; every check after that is the token's.
        Raises a ConsiliumError (already audited) when the connection must be closed.
        """
        if not valid_room_id(msg.room):
            self.audit.append("join_refused", "deny", reason="bad_room_id", ip=conn.peer)
            raise BadMessage("room id must be 1-64 letters, digits, '.', '_' or '-'")
        try:
            if signed_in is not None and not msg.token:
                identity = identity_in_room(signed_in, msg.room)
            else:
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
            await self._apply([m.refused(identity, msg.room, conn.peer, f"revoked_{revoked.kind}")])
            raise AuthenticationError("this token or identity has been revoked", reason="revoked")

        over = me.refusal(await self.store.meetings.get(msg.room))
        if over is not None:
            await self._apply([m.refused(identity, msg.room, conn.peer, over.code)])
            raise over

        room = await self.store.get_room(msg.room)
        decision = self.policy.decide(identity, Action.JOIN_ROOM, room_scope(room, msg.room))
        if not decision:
            await self._apply(
                m.policy_refused(identity, msg.room, conn.peer, decision.reason, decision.refusal)
            )

        conn.identity = identity
        conn.room_id = msg.room
        conn.participant_id = secrets.token_urlsafe(12)
        await self._replace_older(identity, msg.room, conn.participant_id)

        arrival = m.arrival(identity, room, self.policy)
        if arrival is m.Arrival.OPEN:
            room = await self._open_room(identity, msg.room, room, conn)
            arrival = m.admission(identity, room, self.policy)
        elif arrival is m.Arrival.WAIT_FOR_CHAIR and room is None:
            room = await self._create_room(identity, msg.room, conn, opened=False)
        assert room is not None
        if arrival is m.Arrival.LOCKED:
            await self._apply(m.locked_out(identity, msg.room, conn.peer))
        elif arrival in (m.Arrival.WAIT_FOR_CHAIR, m.Arrival.LOBBY):
            await self._wait(conn, arrival)
        else:
            await self._enter(conn, room, admitted_by=None)

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

    async def _open_room(
        self, identity: Identity, room_id: str, room: RoomRecord | None, conn: Connection
    ) -> RoomRecord:
        """A chair arrives: create the room if nobody scheduled it, and mark it open."""
        if room is None:
            room = await self._create_room(identity, room_id, conn, opened=True)
        effects = m.opened(identity, room)
        await self._apply(effects)
        saved = [e.room for e in effects if isinstance(e, m.SaveRoom)]
        return saved[0] if saved else room

    async def _create_room(
        self, identity: Identity, room_id: str, conn: Connection, *, opened: bool
    ) -> RoomRecord:
        """Create an unscheduled room (open when a chair arrives, a placeholder otherwise)."""
        if room_id not in self.by_room and len(self.by_room) >= self.settings.max_rooms_per_node:
            await self._apply(m.too_many_rooms(identity, room_id, conn.peer))
        room = m.new_room(identity, room_id, opened=opened, now=time.time())
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
            await self._apply(
                m.replaced_in_room(room_id, identity.sub, older.participant_id, removed is not None)
            )
        for waiting in await self.store.list_lobby(room_id):
            if waiting.sub == identity.sub and waiting.participant_id != new_pid:
                await self.store.remove_from_lobby(room_id, waiting.participant_id)
                await self._apply(m.replaced_in_lobby(room_id, waiting.participant_id))

    def _record(self, conn: Connection) -> ParticipantRecord:
        identity = conn.identity
        assert identity is not None
        return m.participant(identity, conn.participant_id, self.store.node_id, now=time.time())

    async def _wait(self, conn: Connection, reason: str) -> None:
        """Put a connection in the lobby and tell it (and, if the room is open, the chair)."""
        identity = conn.identity
        assert identity is not None
        lobby = await self.store.list_lobby(conn.room_id)
        record = self._record(conn)
        effects = m.wait(
            record, reason, waiting_now=len(lobby), max_waiting=self.settings.max_lobby_per_room,
            peer=conn.peer, identity=identity, room_id=conn.room_id,
        )  # fmt: skip
        if not any(isinstance(e, m.Refuse) for e in effects):
            await self.store.add_to_lobby(conn.room_id, record)
            self._attach(conn, ConnectionState.WAITING)
            conn.waiting_reason = reason
        await self._apply(effects, conn)

    async def _enter(self, conn: Connection, room: RoomRecord, admitted_by: str | None) -> None:
        """Make a connection a participant of the room and tell everyone."""
        identity = conn.identity
        assert identity is not None
        record = self._record(conn)
        if self.settings.resume_grace_s > 0:
            conn.resume_token = secrets.token_urlsafe(24)
            record.resume_digest = resume.token_digest(conn.resume_token)
        if not await self.store.add_participant(
            room.room_id, record, max_participants=self.settings.max_participants_per_room
        ):
            await self._apply(m.room_full(identity, room.room_id, conn.peer))
        conn.permissions = self.policy.permissions(identity, room_scope(room, room.room_id))
        await self._seat(conn, room, record)
        announced, audited = m.entered(record, identity, room.room_id, conn.peer, admitted_by)
        await self._apply([announced])
        if self.media is not None:
            # Where the room's recording stands, and the notice if it asks for consent.
            await self.relay.call(conn, "rec", action="hello", fields={})
        await self._apply([audited])

    async def _seat(
        self,
        conn: Connection,
        room: RoomRecord,
        record: ParticipantRecord,
        *,
        off_old_sfu: bool = False,
        resumed: str = "",
    ) -> None:
        """Make the connection the participant's (`JOINED`), join them to the room's SFU
        (`off_old_sfu`: first off the SFU that kept their sessions, for a participant taken
        over from another node), then send `resumed` (if given) and `joined`, and after them
        what the room and the SFU sent meanwhile (`Connection.withheld`): nothing reaches the
        client before `joined`. What is sent after it is numbered for a resume
        (`Connection.replay`)."""
        conn.withheld = []
        self._attach(conn, ConnectionState.JOINED)
        try:
            # Media first: the client may offer as soon as it reads `joined`.
            if self.media is not None:
                conn.media_node = await self._media_node_for(room.room_id)
                if off_old_sfu:
                    await self.relay.call(conn, "leave")
                await self._join_media(conn, record)
            joined = await self._joined_message(conn, room, record)
        except BaseException:
            conn.withheld = None  # what fails is told as it would have been
            raise
        withheld, conn.withheld = conn.withheld, None
        if resumed:
            conn.write(resumed)
        conn.send(joined)
        if conn.resume_token:
            conn.replay = ReplayBuffer()
        for text in withheld:
            conn.send(text)

    async def _joined_message(
        self, conn: Connection, room: RoomRecord, record: ParticipantRecord
    ) -> str:
        """`joined`: who they are, the room and everyone in it now (then, with a resume token,
        what follows is numbered: `Connection.replay`)."""
        identity = conn.identity
        assert identity is not None
        participants = await self.store.list_participants(room.room_id)
        lobby: list[p.ParticipantInfo] = []
        if Action.ADMIT in conn.permissions:
            lobby = [
                participant_info(w, waiting=True) for w in await self.store.list_lobby(room.room_id)
            ]
        return p.encode(
            p.Joined(
                participant_id=conn.participant_id,
                you=participant_info(record),
                permissions=sorted(conn.permissions),
                room=room_state(room),
                participants=[participant_info(x) for x in participants],
                lobby=lobby,
                ice_servers=self.ice_servers(identity),
                ice_transport_policy=self.settings.ice_transport_policy,
                resume_token=conn.resume_token,
            )
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
        refused = m.screen(msg, joined=conn.state is ConnectionState.JOINED)
        if refused is not None:
            conn.send(p.encode(refused))
            return
        identity = conn.identity
        assert identity is not None
        actor = m.Actor(sub=identity.sub, participant_id=conn.participant_id, room=conn.room_id)
        action = m.missing_action(msg, conn.permissions)
        if action is not None:
            room = await self.store.get_room(conn.room_id)
            decision = self.policy.decide(identity, action, room_scope(room, conn.room_id))
            await self._apply(m.not_allowed(actor, msg, action, decision.reason), conn)
            return
        if isinstance(msg, p.EndMeeting):
            await ending.end_for_everyone(self.store, self.audit, self.relay, conn, now=time.time())
            return
        effects: list[m.Effect] | None = None
        if isinstance(msg, p.Admit):
            taken = await self.store.remove_from_lobby(conn.room_id, msg.participant_id)
            effects = m.admit(actor, msg.participant_id, taken)
        elif isinstance(msg, p.Deny):
            taken = await self.store.remove_from_lobby(conn.room_id, msg.participant_id)
            effects = m.deny(actor, msg.participant_id, taken)
        elif isinstance(msg, p.Mute):
            record = await self.store.get_participant(conn.room_id, msg.participant_id)
            effects = moderation.mute(actor, record, msg.kind)
        elif isinstance(msg, p.Remove):
            removed = await self.store.remove_participant(conn.room_id, msg.participant_id)
            effects = moderation.remove(actor, msg.participant_id, removed)
        elif isinstance(msg, p.UpdateRoom):
            room = await self.store.get_room(conn.room_id)
            effects = moderation.update_room(actor, room, lobby=msg.lobby, locked=msg.locked)
        elif isinstance(msg, p.SetMedia):
            me = await self.store.get_participant(conn.room_id, conn.participant_id)
            effects = m.set_own_media(conn.room_id, me, msg.audio_muted, msg.video_muted)
        if effects is not None:
            await self._apply(effects, conn)
        elif isinstance(msg, (p.Offer, p.Answer, p.Candidate, p.RestartIce, p.RenderSizes)):
            await self.relay.message(conn, msg)
        elif isinstance(msg, p.MediaFailed):
            self._media_failed(conn, msg)
        elif isinstance(msg, _RECORDING_MESSAGES):
            if self.media is None or not conn.media_node:
                request = m.type_of(msg)
                conn.send(p.encode(p.Error(ErrorCode.RECORDING_UNAVAILABLE,
                                           "this node has no SFU", request)))  # fmt: skip
                return
            fields = msgspec.structs.asdict(msg)
            await self.relay.call(conn, "rec", action=m.type_of(msg), fields=fields)

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

    # -- leaving -------------------------------------------------------------------------------

    async def disconnect(self, conn: Connection, reason: str) -> None:
        """Clean up after a connection closed, however it closed: a participant whose network
        ended it is held for a resume instead (`Reconnects.hold`). A participant the shared
        state no longer has as this node's (`_taken_from_us`) is only dropped here."""
        if await self._taken_from_us(conn):
            self.reconnects.release(conn)
            conn.state = ConnectionState.CLOSED
            self._detach(conn)
            return
        if await self.reconnects.hold(conn, reason):
            return
        self.reconnects.release(conn)
        previous = conn.state
        conn.state = ConnectionState.CLOSED
        if not self._detach(conn):
            return
        identity = conn.identity
        assert identity is not None
        if previous is ConnectionState.WAITING:
            taken = await self.store.remove_from_lobby(conn.room_id, conn.participant_id)
            await self._apply(m.left_lobby(conn.room_id, conn.participant_id, taken is not None))
        else:
            if self.media is not None and conn.media_node:
                await self.relay.call(conn, "leave")
            removed = await self.store.remove_participant(conn.room_id, conn.participant_id)
            await self._apply(
                m.left_room(conn.room_id, conn.participant_id, identity.sub, reason,
                            removed is not None)
            )  # fmt: skip
        await self._close_room_if_done(conn.room_id)

    def _detach(self, conn: Connection) -> bool:
        """Forget a connection here; False if it was not (or no longer) its participant's."""
        if not conn.participant_id or self.connections.get(conn.participant_id) is not conn:
            return False
        del self.connections[conn.participant_id]
        members = self.by_room.get(conn.room_id)
        if members is not None:
            members.discard(conn)
            if not members:
                del self.by_room[conn.room_id]
        return True

    async def _taken_from_us(self, conn: Connection) -> bool:
        """Whether a joined connection's participant is another node's now: this node was taken
        for dead meanwhile (a stalled process), and they are held for a resume elsewhere or were
        taken over there. Their record, their media and the room's view of them are not this
        node's to change any more."""
        if conn.state is not ConnectionState.JOINED or not conn.participant_id:
            return False
        record = await self.store.get_participant(conn.room_id, conn.participant_id)
        return record is not None and (record.node != self.store.node_id or record.lost_at > 0)

    async def check_own(self) -> None:
        """This node's joined participants as the shared state has them (periodic): when this
        node was taken for dead (a stalled process: its heartbeat ran out while its connections
        lived on), one held for a resume elsewhere is this node's again (the room told they are
        back); one taken over by another node (their client resumed there) or let go meanwhile
        is closed here (`replaced`, or `going away`: their client joins again). A record found
        missing is closed only if still missing at the next look, from the same Redis server: a
        restarted Redis that lost data, or a replica promoted before it had the last writes,
        gets this node's records back from it (`StateStore`'s rebuild) meanwhile."""
        own = self.store.node_id
        # As the liveness watch last asked it (every quarter second), not asked again.
        server = await self.store.server_identity(max_age_s=OWN_CHECK_S / 4)
        missing = self._missing if server == self._server else set()
        self._missing, self._server = set(), server
        for room_id, members in list(self.by_room.items()):
            joined = [c for c in members if c.state is ConnectionState.JOINED and not c.closing]
            if not joined:
                continue
            records = {r.participant_id: r for r in await self.store.list_participants(room_id)}
            for conn in joined:
                if (
                    conn.held_since is not None
                    or self.connections.get(conn.participant_id) is not conn
                ):
                    continue
                record = records.get(conn.participant_id)
                if record is not None and record.node == own and not record.lost_at:
                    continue
                if record is not None and record.node == own:
                    record.lost_at, record.lost_media, record.lost_reason = 0.0, False, ""
                    await self.store.update_participant(room_id, record)
                    log.warning(
                        "taken for dead, yet alive: a participant held for a resume elsewhere "
                        "is this node's again",
                        extra={"room": room_id, "participant": conn.participant_id},
                    )
                    await self.messenger.announce(
                        room_id, p.ParticipantReconnecting(conn.participant_id, reconnecting=False),
                        exclude=conn.participant_id,
                    )  # fmt: skip
                elif record is not None:
                    conn.close_soon(p.CloseCode.REPLACED, "resumed on another node")
                elif conn.participant_id not in missing:
                    self._missing.add(conn.participant_id)  # look again next time
                else:
                    log.warning(
                        "taken for dead, yet alive: a participant let go meanwhile is closed",
                        extra={"room": room_id, "participant": conn.participant_id},
                    )
                    conn.close_soon(p.CloseCode.GOING_AWAY,
                                    "this node was taken for dead: join again")  # fmt: skip

    async def _join_media(self, conn: Connection, record: ParticipantRecord) -> None:
        """Join the participant to the SFU of its room's media node (`conn.media_node`)."""
        identity = conn.identity
        assert identity is not None
        await self.relay.call(
            conn,
            "join",
            room=conn.room_id,
            permissions=sorted(conn.permissions),
            audio_muted=record.audio_muted,
            video_muted=record.video_muted,
            user=identity.sub,
            name=record.name,
            role=record.role,
            depts=list(record.depts),
            org=record.org,
        )

    async def _close_room_if_done(self, room_id: str) -> None:
        """The room ends if empty and its kind says so (`ending.close_if_done`)."""
        grace_s = self.settings.meeting_end_grace_min * 60.0
        await ending.close_if_done(
            self.store, self.audit, room_id, grace_s=grace_s, now=time.time()
        )

    # -- a node that died ---------------------------------------------------------------------

    async def reap_node(self, node_id: str, found: str = "heartbeat") -> tuple[int, int]:
        """Clean up after a dead node (`signaling.liveness`; `found`: how, `heartbeat` run out
        or `disconnected`): its participants leave their rooms (everyone told, reason
        `node_lost`; media this node hosted for them closed), its lobby entries go (the
        admitters told), and the rooms whose media it hosted move to the least loaded live
        node (`_move_media`). (participants, lobby entries) removed by this call: another node
        doing the same at once removes the rest, each entry once."""
        left = waiting = moved = held = 0
        live = await self.store.live_nodes()
        for room in await self.store.list_rooms():
            room_id = room.room_id
            touched = False
            holder = await self.store.media_node_of(room_id)
            for record in await self.store.list_participants(room_id):
                if record.node != node_id or record.lost_at:
                    continue
                if record.resume_digest and self.settings.resume_grace_s > 0:
                    # Held for their client's `resume` on another node (`adopt`).
                    await self._hold_lost(room_id, record, lost_media=holder in (node_id, None))
                    held += 1
                    continue
                removed = await self.store.remove_participant(room_id, record.participant_id)
                if self.media is not None:
                    await self.media.leave(record.participant_id)
                left += removed is not None
                touched = True
                await self._apply(m.left_room(room_id, record.participant_id, record.sub,
                                              NODE_LOST, removed is not None))  # fmt: skip
            for record in await self.store.list_lobby(room_id):
                if record.node != node_id:
                    continue
                taken = await self.store.remove_from_lobby(room_id, record.participant_id)
                waiting += taken is not None
                touched = True
                await self._apply(m.left_lobby(room_id, record.participant_id, taken is not None))
            await self.store.release_media_node(room_id, node_id)
            if touched:
                await self._close_room_if_done(room_id)
            if holder in (node_id, None):
                moved += await self._move_media(room_id, node_id, live)
        if left or waiting or moved or held:
            self.nodes_lost += 1
            self.audit.append("node_lost", "error", node=node_id, participants=left,
                              lobby=waiting, rooms_moved=moved, held_for_resume=held,
                              found=found, by=self.store.node_id)  # fmt: skip
        return left, waiting

    # -- taking over a lost node's participants -------------------------------------------------

    async def _hold_lost(
        self, room_id: str, record: ParticipantRecord, *, lost_media: bool, reason: str = NODE_LOST
    ) -> None:
        """Hold a lost node's participant for `resume_grace_s`: the room sees them as
        reconnecting, and their client may resume on any node (`adopt`); then they leave
        (`_let_go`). Their media stays where it is meanwhile (gone if `lost_media`)."""
        record.lost_at = time.time()
        record.lost_media = lost_media
        record.lost_reason = reason
        await self.store.update_participant(room_id, record)
        pid = record.participant_id
        await self.messenger.announce(
            room_id, p.ParticipantReconnecting(pid, reconnecting=True), exclude=pid
        )
        loop = asyncio.get_running_loop()
        loop.call_later(self.settings.resume_grace_s, self._spawn,
                        self._let_go(room_id, pid, record.lost_at))  # fmt: skip

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _let_go(self, room_id: str, participant_id: str, lost_at: float) -> None:
        """The grace period of a lost node's participant is over: unless their client resumed
        on a node meanwhile, they leave the room (reason `node_lost`, everyone told)."""
        try:
            record = await self.store.get_participant(room_id, participant_id)
            if record is None or record.lost_at != lost_at:
                return  # resumed, gone, or held again by a later finding
            removed = await self.store.remove_participant(room_id, participant_id)
            if self.media is not None:
                await self.media.leave(participant_id)
            reason = record.lost_reason or NODE_LOST
            await self._apply(m.left_room(room_id, participant_id, record.sub, reason,
                                          removed is not None))  # fmt: skip
            await self._close_room_if_done(room_id)
        except Exception:
            log.exception("could not let a lost node's participant go",
                          extra={"room": room_id, "participant": participant_id})  # fmt: skip

    async def sweep_lost(self) -> None:
        """Let go of the lost node's participants whose grace period ended long ago: the node
        that held them for a resume died too (its `_let_go` never ran). Periodic."""
        late = time.time() - self.settings.resume_grace_s - LOST_SWEEP_S
        for room in await self.store.list_rooms():
            for record in await self.store.list_participants(room.room_id):
                if record.lost_at and record.lost_at < late:
                    await self._let_go(room.room_id, record.participant_id, record.lost_at)

    async def _find_lost(self, participant_id: str) -> tuple[str, ParticipantRecord] | None:
        """Where the shared state keeps a participant a `resume` names, once their node is found
        lost: a resume may come sooner than the finding (`node_dead_after_s`), so while their
        node looks gone (no connection to the shared state, or no heartbeat) the record is
        asked again until then. None: not there, or their node is alive."""
        deadline = time.monotonic() + self.settings.node_dead_after_s + 1.0
        found = None
        for room_id in [r.room_id for r in await self.store.list_rooms()]:
            record = await self.store.get_participant(room_id, participant_id)
            if record is not None:
                found = (room_id, record)
                break
        # Their room stays theirs: only their record is asked again.
        while found is not None:
            room_id, record = found
            if record.lost_at or record.node == self.store.node_id:
                return found
            if time.monotonic() >= deadline or await self._looks_alive(record.node):
                return None
            await asyncio.sleep(0.1)
            again = await self.store.get_participant(room_id, participant_id)
            found = None if again is None else (room_id, again)
        return None

    async def _looks_alive(self, node_id: str) -> bool:
        """Whether a node both heartbeats and holds a connection to the shared state (a killed
        node's connections close at once; its heartbeat runs for seconds). False when the
        shared state does not list connections: only the finding decides then."""
        connected = await self.store.connected_nodes()
        return (
            connected is not None
            and node_id in connected
            and (node_id in await self.store.live_nodes())
        )

    async def adopt(
        self, conn: Connection, msg: p.Resume, identity: Identity, *, session: bool
    ) -> None:
        """A `resume` of a participant this node does not hold: take them over if their node
        was lost (`resume.decide_adoption`). They keep their participant id, their place in the
        room and its consent answers, without the lobby; nothing is replayed (it went with
        their node): `resumed` (`replayed` false), a new `joined`, and their client opens new
        media sessions. `session`: the identity is a sign-in session's (it names no room).

        Raises (audited) ResumeRefused when the rules refuse (4410)."""
        where: dict[str, Any] = {"participant": msg.participant_id, "ip": conn.peer}
        found = await self._find_lost(msg.participant_id)
        lost = None
        if found is not None and found[1].lost_at:
            record = found[1]
            lost = resume.Lost(record.participant_id, record.sub, record.resume_digest,
                               record.lost_at, self.settings.resume_grace_s)  # fmt: skip
        refusal = resume.decide_adoption(
            lost, participant_id=msg.participant_id, resume_token=msg.resume_token,
            sub=identity.sub, now=time.time(),
        )  # fmt: skip
        room = None if found is None else await self.store.get_room(found[0])
        if refusal is None and room is None:
            refusal = resume.ResumeRefusal.UNKNOWN
        if refusal is not None:
            room_id = found[0] if found else None
            self.audit.append("resume", "deny", sub=identity.sub, room=room_id, reason=refusal,
                              **where)  # fmt: skip
            raise resume.ResumeRefused(refusal.value)
        assert found is not None and room is not None
        room_id, record = found
        lost_node, lost_media = record.node, record.lost_media
        conn.participant_id = record.participant_id
        conn.room_id = room_id
        conn.identity = identity_in_room(identity, room_id) if session else identity
        conn.resume_token = secrets.token_urlsafe(24)
        record.node = self.store.node_id
        record.lost_at, record.lost_media, record.lost_reason = 0.0, False, ""
        record.resume_digest = resume.token_digest(conn.resume_token)
        await self.store.update_participant(room_id, record)
        conn.permissions = self.policy.permissions(conn.identity, room_scope(room, room_id))
        # Off the SFU that kept their sessions (their answers to consent stay with the room),
        # then on again, as this node's: their client opens new ones.
        resumed = p.encode(p.Resumed(conn.participant_id, last_seq=0, replayed=False))
        await self._seat(conn, room, record, off_old_sfu=not lost_media, resumed=resumed)
        self.audit.append("resume", "allow", sub=identity.sub, room=room_id, replayed=False,
                          lost_node=lost_node, **where)  # fmt: skip
        await self.messenger.announce(
            room_id, p.ParticipantReconnecting(conn.participant_id, reconnecting=False),
            exclude=conn.participant_id,
        )  # fmt: skip
        if self.media is not None:
            await self.relay.call(conn, "rec", action="hello", fields={})

    async def _move_media(self, room_id: str, dead: str, live: dict[str, int | None]) -> int:
        """The room's media was on `dead` (its claim named it, or had run out): unless the
        room is empty now, claim it for the live node with an SFU and the least load
        (`liveness.choose_media_node`), and tell every node to move its connections whose
        media was on `dead` there (`cluster.MediaMoved`)
        (1: the room moved; 0: it had nobody left, or no live node has an SFU.)"""
        if not await self.store.list_participants(room_id):
            # Nobody left to continue with: the next meeting here starts afresh.
            await self.store.keep_consent(room_id, None, 0)
            return 0
        chosen = choose_media_node(live, dead)
        if chosen is None:
            log.error("no live node has an SFU: the room's media cannot move",
                      extra={"room": room_id, "node": dead})  # fmt: skip
            return 0
        holder = await self.store.claim_media_node(room_id, chosen, MEDIA_CLAIM_TTL_S)
        await self._publish(cluster.MediaMoved(room=room_id, gone=dead, to=holder))
        self.rooms_moved["node_lost"] += 1
        return 1

    async def _media_moved(self, event: cluster.MediaMoved) -> None:
        """Move this node's connections in the room whose media was on the dead node to the
        node that claimed it: each joins that node's SFU, and its client is told to open new
        media sessions (`media_moved`; a participant held for a resume gets it in the replay).
        A connection already moved (a second node's event) is left alone."""
        moved = 0
        for conn in list(self.by_room.get(event.room, ())):
            if conn.state is not ConnectionState.JOINED or conn.media_node != event.gone:
                continue
            record = await self.store.get_participant(event.room, conn.participant_id)
            if record is None:
                continue
            if event.why == "drain":
                await self.relay.call(conn, "leave")  # off the draining node's SFU
            conn.media_node = event.to
            await self._join_media(conn, record)
            conn.send(p.encode(p.MediaMoved(reason=event.why)))
            # Where the room's recording stands there (it continues a recording that ran on
            # the node the media left), and their part in it.
            await self.relay.call(conn, "rec", action="hello", fields={})
            self.connections_moved[event.why] += 1
            moved += 1
        if moved:
            log.warning(
                "room media moved after its node was lost" if event.why == "node_lost"
                else "room media moved off a draining node",
                extra={"room": event.room, "node": event.gone, "to": event.to, "moved": moved},
            )  # fmt: skip

    # -- draining (a planned stop) --------------------------------------------------------------

    async def move_hosted_media(self) -> int:
        """Drain (`signaling.http.drain`): move the media of every room this node's SFU hosts to
        the least loaded other live node with an SFU, the way a dead node's rooms move
        (`cluster.MediaMoved`, why `drain`), and take no new room's media from now on
        (`draining`). The rooms moved; none when no other node has an SFU."""
        self.draining = True
        media = self.media
        if media is None:
            return 0
        own = self.store.node_id
        others = {node: load for node, load in (await self.store.live_nodes()).items()
                  if node != own}  # fmt: skip
        moved = 0
        for room_id, room in list(media.rooms.items()):
            chosen = choose_media_node(others, own)
            if chosen is None:
                log.error("draining: no other live node has an SFU; the rooms' media stays")
                return moved
            if self.recorder is not None:
                # What the next node takes over, marked as a drain's (its recording continues).
                await self.recorder.hand_off(room_id)
            await self.store.release_media_node(room_id, own)
            holder = await self.store.claim_media_node(room_id, chosen, MEDIA_CLAIM_TTL_S)
            await self._publish(cluster.MediaMoved(room=room_id, gone=own, to=holder,
                                                   why="drain"))  # fmt: skip
            # The next room goes where the load is least, counting this one's people.
            others[holder] = (others.get(holder) or 0) + len(room.participants)
            self.rooms_moved["drain"] += 1
            moved += 1
        return moved

    async def hand_over(self) -> int:
        """The drain's last step, before this node closes its own connections (1001): hold
        its joined participants in the shared state for a resume on another node, as if the
        node had been lost (their media already moved there): their clients resume through
        another node as the same participants (`adopt`), and the room sees them reconnecting,
        not leaving. Those who do not resume are let go by the other nodes (`sweep_lost`).
        How many were handed over (none without a resume grace period)."""
        own = self.store.node_id
        if self.settings.resume_grace_s <= 0 or not set(await self.store.live_nodes()) - {own}:
            return 0  # no other node to resume on: they leave, as at any stop
        handed = 0
        for conn in list(self.connections.values()):
            if conn.state is not ConnectionState.JOINED or conn.closing or not conn.resume_token:
                continue
            record = await self.store.get_participant(conn.room_id, conn.participant_id)
            if record is None or record.node != own or record.lost_at:
                continue
            await self._hold_lost(conn.room_id, record, lost_media=False, reason=NODE_STOPPED)
            handed += 1
        return handed

    async def _media_node_for(self, room_id: str) -> str:
        """The node to host a room's media when someone joins: the node holding it, else this
        one (a draining node claims it for the least loaded other node instead)."""
        own = self.store.node_id
        claimant = own
        if self.draining:
            others = {n: load for n, load in (await self.store.live_nodes()).items() if n != own}
            claimant = choose_media_node(others, own) or own
        return await self.store.claim_media_node(room_id, claimant, MEDIA_CLAIM_TTL_S)

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
        await self.messenger.announce(room_id, message)

    # -- events from any node ------------------------------------------------------------------

    async def _close_remote(
        self, room_id: str, participant_id: str, code: int, reason: str
    ) -> None:
        await self._publish(
            cluster.CloseConnection(room=room_id, pid=participant_id, code=code, reason=reason)
        )

    async def _publish(self, event: cluster.NodeEvent) -> None:
        """Send a node-to-node event to every node (this one included)."""
        await self.store.publish(cluster.to_wire(event))

    async def on_event(self, wire: dict[str, Any]) -> None:
        """Apply an event published by any node to this node's connections."""
        try:
            event = cluster.from_wire(wire)
            if isinstance(event, cluster.RoomMessage):
                self._deliver(event)
            elif isinstance(event, cluster.CloseConnection):
                conn = self.connections.get(event.pid)
                if conn is not None and conn.room_id == event.room:
                    await self._drop(conn, event.code, event.reason)
            elif isinstance(event, cluster.Admitted):
                conn = self.connections.get(event.pid)
                if conn is not None and conn.state is ConnectionState.WAITING:
                    await self._admitted(conn, event.by)
            elif isinstance(event, cluster.Revoked):
                for conn in list(self.connections.values()):
                    identity = conn.identity
                    if identity is not None and m.revocation_covers(event.revocation, identity):
                        await self._drop(conn, 4401, "revoked")
            elif isinstance(event, cluster.MuteMedia):
                # The muted participant's node stops forwarding (within this event's delivery).
                if self.media is not None and event.pid in self.media.participants:
                    kinds = ("audio", "video") if event.kind == "both" else (event.kind,)
                    for media_kind in kinds:
                        self.media.set_muted(event.pid, media_kind, True)
            elif isinstance(event, cluster.MediaRequest) and event.node == self.store.node_id:
                await self.relay.run(event)
            elif isinstance(event, cluster.MediaOut) and event.node == self.store.node_id:
                self.messenger.deliver(event.pid, event.msg)
            elif isinstance(event, cluster.RoomOpened):
                await self._room_opened(event.room)
            elif isinstance(event, cluster.MediaMoved):
                await self._media_moved(event)
            elif isinstance(event, cluster.MeetingEnded):
                for conn in list(self.by_room.get(event.room, ())):
                    await self._drop(conn, p.CloseCode.MEETING_ENDED, event.reason)
        except Exception:
            log.exception("event failed", extra={"event_kind": wire.get("k")})

    def _deliver(self, event: cluster.RoomMessage) -> None:
        members = self.by_room.get(event.room)
        if not members:
            return
        for conn in members:
            if conn.state is not ConnectionState.JOINED:
                continue
            if m.delivered_to(event, conn.participant_id, conn.permissions):
                conn.send(event.msg)

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
            await self._drop(conn, close_code_of(exc), exc.message)

    async def _room_opened(self, room_id: str) -> None:
        room = await self.store.get_room(room_id)
        if room is None:
            return
        for conn in list(self.by_room.get(room_id, ())):
            if conn.state is not ConnectionState.WAITING or conn.waiting_reason != "room_not_open":
                continue
            identity = conn.identity
            assert identity is not None
            verdict = m.room_opened_for(identity, room, self.policy, conn.peer)
            if isinstance(verdict, list):
                await self.store.remove_from_lobby(room_id, conn.participant_id)
                try:
                    await self._apply(verdict)
                except ConsiliumError as exc:
                    await self._drop(conn, close_code_of(exc), exc.message)
                continue
            if verdict is m.Arrival.LOBBY:
                conn.waiting_reason = m.Arrival.LOBBY
                await self._apply(m.moved_to_lobby(room_id, self._record(conn)), conn)
                continue
            await self.store.remove_from_lobby(room_id, conn.participant_id)
            try:
                await self._enter(conn, room, admitted_by=None)
            except ConsiliumError as exc:
                await self._drop(conn, close_code_of(exc), exc.message)

    # -- shutdown ------------------------------------------------------------------------------

    async def close_all(self, code: int = 1001, reason: str = "server shutting down") -> None:
        """Close every local connection (at shutdown) and forget them in the shared state."""
        connections = list(self.connections.values())
        for conn in connections:
            await self.disconnect(conn, reason)
        await asyncio.gather(*(conn.close(code, reason) for conn in connections))
