"""The way to a room's media: SDP, ICE and media operations to the node hosting it, and the
SFU's notifications back to the participant's connection, wherever each lives.

A room's media lives on one node (the first to claim it, `MEDIA_CLAIM_TTL_S`). A participant
whose signalling connection is on another node has its operations relayed there as
`cluster.MediaRequest` events, and the SFU's notifications come back as `cluster.MediaOut`.
Carved out of `signaling/rooms.py`, which decides who is in a room; this moves their media.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
from msgspec import UNSET

from core.codes import ErrorCode
from recorder.manifest import RecordedParticipant
from sfu import events
from sfu.server import MediaServer
from sfu.types import MediaError
from signaling import cluster
from signaling import protocol as p
from signaling.connection import Connection, ConnectionState
from signaling.membership import type_of
from signaling.recording_control import Recorder
from signaling.state.store import StateStore

log = logging.getLogger("consilium.rooms")


class ServerText(events.SfuEvent, tag="message", frozen=True):
    """A server message signalling already encoded (the recorder's notices), sent on like the
    SFU's notifications: to the participant whose media this node hosts, wherever they are."""

    text: str
    """The encoded `signaling.protocol` message."""


Outgoing = events.Notification | ServerText
"""What goes to a participant through the node hosting its media (`cluster.MediaOut.msg`)."""

MEDIA_CLAIM_TTL_S = 30.0
"""How long a node's claim on a room's media lasts unless refreshed (a dead node's rooms
move to the next node that needs them after this)."""


class MediaRelay:
    """Carries media operations to the node hosting a room's media, and the SFU's
    notifications back to the participant's connection."""

    def __init__(
        self, store: StateStore, connections: dict[str, Connection], media: MediaServer | None
    ) -> None:
        self.store = store
        self.connections = connections
        """The node's connections by participant id (shared with `Rooms`)."""
        self.media = media
        """The node's SFU (None: signalling only)."""
        self.recorder: Recorder | None = None
        """Records the rooms whose media this node hosts (set with `media`)."""
        self.guests: dict[str, str] = {}
        """Participants whose media this node hosts for another node: id → their node."""

    async def message(self, conn: Connection, msg: p.Offer | p.Answer | p.Candidate) -> None:
        """SDP and ICE for the participant's sessions with the SFU hosting the room's media."""
        if self.media is None or not conn.media_node:
            request = type_of(msg)
            conn.send(
                p.encode(p.Error(ErrorCode.MEDIA_UNAVAILABLE, "this node has no SFU", request))
            )
            return
        if isinstance(msg, p.Candidate):
            await self.call(
                conn, "candidate", pc=msg.pc, candidate=msg.candidate,
                sdp_mid=msg.sdp_mid, sdp_mline_index=msg.sdp_mline_index,
            )  # fmt: skip
        elif isinstance(msg, p.Offer):
            await self.call(conn, "offer", pc=msg.pc, sdp=msg.sdp, screen=msg.screen[:8])
        else:
            await self.call(conn, "answer", pc=msg.pc, sdp=msg.sdp)

    async def call(self, conn: Connection, op: cluster.MediaOp, **fields: Any) -> None:
        """Run a media operation on the node hosting the room's media: here, or over an event.

        A room's media lives on one node (the first to claim it); a participant whose signalling
        connection is on another node has its SDP and ICE relayed there, and connects its media
        straight to that node (its ICE candidates are in that node's SDP).
        """
        request = cluster.MediaRequest(
            node=conn.media_node or "",
            op=op,
            pid=conn.participant_id,
            origin=self.store.node_id,
            **fields,
        )
        if conn.media_node == self.store.node_id:
            await self.run(request)
        else:
            await self.store.publish(cluster.to_wire(request))

    async def run(self, op: cluster.MediaRequest) -> None:
        """Carry out a media operation on this node's SFU (for a local or a remote participant)."""
        media = self.media
        if media is None:
            return
        pid, kind = op.pid, op.op
        try:
            if kind == "join":
                assert isinstance(op.room, str) and isinstance(op.user, str)
                assert isinstance(op.permissions, list)
                if op.origin != self.store.node_id:
                    self.guests[pid] = op.origin
                await media.join(
                    op.room, pid, frozenset(op.permissions),
                    audio_muted=op.audio_muted is True, video_muted=op.video_muted is True,
                    user=op.user,
                )  # fmt: skip
                if self.recorder is not None:
                    self.recorder.joined(op.room, RecordedParticipant(
                        participant_id=pid, sub=op.user, name=op.name or "",
                        role=op.role or "", depts=list(op.depts or ()), org=op.org or "",
                    ))  # fmt: skip
            elif kind == "leave":
                self.guests.pop(pid, None)
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
                assert isinstance(op.pc, str) and isinstance(op.sdp, str)
                sdp = await media.offer(pid, op.pc, op.sdp, screen=op.screen or ())
                self.notify(pid, events.PublishAnswer(pc="publish", sdp=sdp))
            elif kind == "answer":
                assert isinstance(op.pc, str) and isinstance(op.sdp, str)
                await media.answer(pid, op.pc, op.sdp)
            elif kind == "candidate":
                assert isinstance(op.pc, str) and isinstance(op.candidate, str)
                await media.candidate(
                    pid, op.pc, op.candidate,
                    None if op.sdp_mid is UNSET else op.sdp_mid,
                    None if op.sdp_mline_index is UNSET else op.sdp_mline_index,
                )  # fmt: skip
            elif kind == "mute":
                assert isinstance(op.kind, str) and isinstance(op.muted, bool)
                media.set_muted(pid, op.kind, op.muted)
            elif kind == "rec" and self.recorder is not None:
                assert isinstance(op.action, str) and isinstance(op.fields, dict)
                await self.recorder.handle(pid, op.action, op.fields)
        except MediaError as exc:
            self.notify(pid, events.MediaRefused(
                code=ErrorCode.BAD_MEDIA_REQUEST, message=_short(str(exc)), request=kind,
            ))  # fmt: skip

    def notify_message(self, participant_id: str, message: p.Message) -> None:
        """Send one server message to a participant whose media this node hosts."""
        self.notify(participant_id, ServerText(text=p.encode(message)))

    def notify(self, participant_id: str, message: Outgoing) -> None:
        """The SFU has something for a participant: send it (through its node if elsewhere)."""
        origin = self.guests.get(participant_id)
        if origin is not None:
            # Across nodes as the plain dict (`type` first, then the fields in declared order).
            out = cluster.MediaOut(
                node=origin, pid=participant_id, msg=msgspec.to_builtins(message)
            )
            task = asyncio.get_running_loop().create_task(self.store.publish(cluster.to_wire(out)))
            _pending.add(task)
            task.add_done_callback(_pending.discard)
            return
        self.send(participant_id, message)

    def deliver(self, participant_id: str, message: dict[str, Any]) -> None:
        """Send on a notification that came from the node hosting the participant's media
        (`cluster.MediaOut`); one this node cannot read is dropped."""
        try:
            event = msgspec.convert(message, Outgoing)
        except msgspec.ValidationError:
            log.warning("unreadable media notification", extra={"participant": participant_id})
            return
        self.send(participant_id, event)

    def send(self, participant_id: str, message: Outgoing) -> None:
        """Send the SFU's notification to a participant whose connection is on this node."""
        conn = self.connections.get(participant_id)
        if conn is None or conn.state is not ConnectionState.JOINED:
            return
        out: p.Message
        match message:
            case events.SubscribeOffer(pc=pc, sdp=sdp):
                out = p.Offer(sdp=sdp, pc=pc)
            case events.PublishAnswer(pc=pc, sdp=sdp):
                out = p.Answer(sdp=sdp, pc=pc)
            case events.Tracks(tracks=tracks):
                out = p.Tracks(msgspec.convert(msgspec.to_builtins(tracks), list[p.TrackInfo]))
            case events.MediaRefused(code=code, message=text, request=request):
                out = p.Error(code, text, request)
            case ServerText(text=text):  # already encoded (the recorder's notices)
                conn.send(text)
                return
        conn.send(p.encode(out))

    async def refresh_claims(self) -> None:
        """Keep this node's claim on the rooms whose media it hosts (called periodically)."""
        if self.media is not None:
            for room_id in list(self.media.rooms):
                await self.store.claim_media_node(room_id, self.store.node_id, MEDIA_CLAIM_TTL_S)


_pending: set[asyncio.Task[Any]] = set()


def _short(text: str) -> str:
    return text if len(text) <= 200 else text[:197] + "..."
