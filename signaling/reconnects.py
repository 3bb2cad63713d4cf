"""Participants held while their connection is gone, and the `resume` that takes one over: the
executor of `signaling.resume` (whose rules it calls) beside `signaling.rooms`.

A held participant stays in the room and in the shared state, with their media sessions as they
are; what is sent to them is numbered and kept (`Connection.replay`). Holds live on the node that
held the connection: a `resume` that reaches another node while that node is alive is refused
(`unknown_participant`), and the client's join that follows replaces the held participant on
whichever node holds it, as any second connection of the same identity does. When the node was
lost, its participants are held in the shared state instead, and any node takes one over
(`Rooms.adopt`: no replay, a new `joined`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from core.errors import AuthenticationError
from signaling import protocol as p
from signaling import resume
from signaling.audit import AuditLog
from signaling.connection import Connection, ConnectionState
from signaling.identity import Identity
from signaling.messenger import Messenger
from signaling.oidc import identity_in_room
from signaling.settings import Settings
from signaling.state.store import StateStore
from signaling.tokens import TokenVerifier

log = logging.getLogger("consilium.rooms")


class Adopt(Protocol):
    """Takes over a participant whose node was lost (`Rooms.adopt`)."""

    async def __call__(
        self, conn: Connection, msg: p.Resume, identity: Identity, *, session: bool
    ) -> None: ...


class Reconnects:
    """Holds this node's participants whose connection dropped, and hands one to a `resume`."""

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        verifier: TokenVerifier,
        audit: AuditLog,
        messenger: Messenger,
        by_room: dict[str, set[Connection]],
        leave: Callable[[Connection, str], Coroutine[Any, Any, None]],
        adopt: Adopt | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.verifier = verifier
        self.audit = audit
        self.messenger = messenger
        self.connections = messenger.connections
        """This node's connections by participant id: a held one stays there."""
        self.by_room = by_room
        """`Rooms.by_room`: the connections per room, which a resume swaps."""
        self.leave = leave
        """`Rooms.disconnect`: how a held participant whose grace period ends leaves."""
        self.adopt = adopt
        """`Rooms.adopt`: how a resume of a participant whose node was lost is taken over."""
        self.timers: dict[Connection, asyncio.TimerHandle] = {}
        """The end of each held connection's grace period."""

    async def hold(self, conn: Connection, reason: str) -> bool:
        """Hold the participant of a connection that ended for `reason`, if the rules say so:
        the room sees them as reconnecting; True if held (they have not left)."""
        holdable = (
            conn.replay is not None
            and conn.held_since is None
            and self.connections.get(conn.participant_id) is conn
        )
        grace = self.settings.resume_grace_s
        if not holdable or not resume.holds(
            reason, joined=conn.state is ConnectionState.JOINED, grace_s=grace
        ):
            return False
        conn.held_since = time.monotonic()
        loop = asyncio.get_running_loop()
        self.timers[conn] = loop.call_later(grace, self._expire, conn, reason)
        sub = conn.identity.sub if conn.identity else None
        self.audit.append(
            "connection_held", "info", sub=sub, room=conn.room_id, reason=reason,
            participant=conn.participant_id, ip=conn.peer,
        )  # fmt: skip
        await self.messenger.announce(
            conn.room_id,
            p.ParticipantReconnecting(conn.participant_id, reconnecting=True),
            exclude=conn.participant_id,
        )
        return True

    def release(self, conn: Connection) -> None:
        """Forget a connection's hold (it leaves, or a resume took it over)."""
        timer = self.timers.pop(conn, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, conn: Connection, reason: str) -> None:
        """The grace period is over: the held participant leaves, for the reason it was held."""
        self.timers.pop(conn, None)
        task = asyncio.get_running_loop().create_task(self.leave(conn, reason))
        _expiring.add(task)
        task.add_done_callback(_expiring.discard)

    async def resume(
        self, conn: Connection, msg: p.Resume, *, signed_in: Identity | None = None
    ) -> None:
        """Handle a `resume` as a new connection's first message: take the held participant
        over and replay what they missed. `signed_in` (a sign-in session's identity) stands in
        for an empty token, as at `join`.

        Raises (audited) AuthenticationError for a bearer token that is invalid, expired or
        revoked, as a join does, and ResumeRefused when the rules refuse (4410).
        """
        where: dict[str, Any] = {"participant": msg.participant_id, "ip": conn.peer}
        try:
            if signed_in is not None and not msg.token:
                identity = signed_in
            else:
                identity = await self.verifier.verify(msg.token)
        except AuthenticationError as exc:
            reason = str(exc.details.get("reason", "invalid_token"))
            self.audit.append("resume", "deny", reason=reason, **where)
            raise
        revoked = await self.store.is_revoked(jti=identity.jti, sub=identity.sub)
        if revoked is not None:
            self.audit.append("resume", "deny", sub=identity.sub,
                              reason=f"revoked_{revoked.kind}", **where)  # fmt: skip
            raise AuthenticationError("this token or identity has been revoked", reason="revoked")
        held = self.connections.get(msg.participant_id)
        if held is None and self.adopt is not None:
            # Not held here: held in the shared state if their node was lost.
            session = signed_in is not None and not msg.token
            await self.adopt(conn, msg, identity, session=session)
            return
        hold: resume.Hold | None = None
        now = time.monotonic()
        if held is not None and held.state is ConnectionState.JOINED and held.identity:
            since = now if held.held_since is None else held.held_since
            hold = resume.Hold(held.participant_id, held.identity.sub, held.resume_token,
                               since=since, grace_s=self.settings.resume_grace_s)  # fmt: skip
        refusal = resume.decide(
            hold, held.replay if held is not None else None,
            participant_id=msg.participant_id, resume_token=msg.resume_token,
            sub=identity.sub, last_seq=msg.last_seq, now=now,
        )  # fmt: skip
        room = held.room_id if held is not None else None
        if refusal is not None:
            self.audit.append("resume", "deny", sub=identity.sub, room=room, reason=refusal,
                              **where)  # fmt: skip
            raise resume.ResumeRefused(refusal.value)
        assert held is not None
        self._take_over(conn, held, msg.last_seq)
        if signed_in is not None and not msg.token:
            # A sign-in session names no room; it resumes in the room it held (oidc).
            identity = identity_in_room(identity, conn.room_id)
        conn.identity = identity  # the token it resumed with: a renewed one is checked from now
        self.audit.append("resume", "allow", sub=identity.sub, room=room, **where)
        if held.held_since is not None:
            await self.messenger.announce(
                conn.room_id,
                p.ParticipantReconnecting(conn.participant_id, reconnecting=False),
                exclude=conn.participant_id,
            )

    def _take_over(self, conn: Connection, held: Connection, last_seq: int) -> None:
        """Move the participant from `held` to `conn`, then answer `resumed` and replay.

        No await from the swap to the last replayed message: nothing sent meanwhile can fall
        between the replay and what follows it.
        """
        self.release(held)
        conn.adopt(held)
        self.connections[conn.participant_id] = conn
        members = self.by_room.setdefault(conn.room_id, set())
        members.discard(held)
        members.add(conn)
        if held.held_since is None:
            # The old socket still looked alive (the server had not noticed the drop yet).
            held.close_soon(p.CloseCode.REPLACED, "resumed on another connection")
        replay = conn.replay
        assert replay is not None
        conn.write(p.encode(p.Resumed(conn.participant_id, last_seq=replay.last_seq)))
        for text in replay.after(last_seq):
            conn.write(text)


_expiring: set[asyncio.Task[None]] = set()
"""Leaves at the end of a grace period, running (the loop keeps only a weak reference)."""
