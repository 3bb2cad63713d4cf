"""The way to a room's media: SDP, ICE and media operations to the node hosting it, carried
out on that node's SFU and recorder.

A room's media lives on one node (the first to claim it, `MEDIA_CLAIM_TTL_S`). A participant
whose signalling connection is on another node has its operations relayed there as
`cluster.MediaRequest` events; the SFU's notifications go back through `signaling.messenger` (as
`cluster.MediaOut`). Carved out of `signaling/rooms.py`, which decides who is in a room; this
moves their media.
"""

from __future__ import annotations

import logging
from typing import Any

from msgspec import UNSET

from core.codes import ErrorCode
from recorder.manifest import RecordedParticipant
from sfu import events
from sfu.server import MediaServer
from sfu.types import MediaError
from signaling import cluster
from signaling import protocol as p
from signaling.annotation_mirror import AnnotationMirror
from signaling.connection import Connection
from signaling.membership import type_of
from signaling.messenger import Messenger
from signaling.recording_control import Recorder
from signaling.state.store import StateStore

log = logging.getLogger("consilium.rooms")

MEDIA_CLAIM_TTL_S = 30.0
"""How long a node's claim on a room's media lasts unless refreshed (a dead node's rooms
move to the next node that needs them after this)."""


class MediaRelay:
    """Carries media operations to the node hosting a room's media, and out on its SFU and
    recorder there."""

    def __init__(
        self,
        store: StateStore,
        messenger: Messenger,
        media: MediaServer | None,
        recorder: Recorder | None,
    ) -> None:
        self.store = store
        self.messenger = messenger
        """Sends the SFU's notifications on; knows which participants are another node's."""
        self.media = media
        """The node's SFU (None: signalling only)."""
        self.recorder = recorder
        """Records the rooms whose media this node hosts (None without `media`)."""
        self.annotations: AnnotationMirror | None = None
        """The rooms' annotation and chat events in the shared state (a cluster with
        `cluster_key_file`): a room whose media comes here takes them over."""

    async def message(
        self, conn: Connection, msg: p.Offer | p.Answer | p.Candidate | p.RestartIce | p.RenderSizes
    ) -> None:
        """SDP and ICE for the participant's sessions with the SFU hosting the room's media, and
        the sizes its page shows each received video at."""
        if isinstance(msg, p.RenderSizes):
            if self.media is not None and conn.media_node:  # a hint: no SFU, nothing to size
                await self.call(conn, "render_sizes", sizes=msg.sizes)
            return
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
        elif isinstance(msg, p.RestartIce):
            await self.call(conn, "restart_ice", pc=msg.pc)
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
                    self.messenger.guests[pid] = op.origin
                if self.recorder is not None:
                    # The room's media may come from a node lost or drained: its consent too.
                    await self.recorder.arrive(op.room)
                if self.annotations is not None and op.room not in media.rooms:
                    # ...and its shapes and chat, as the node(s) hosting it before stamped them.
                    media.seed_annotations(op.room, await self.annotations.history(op.room))
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
                self.messenger.guests.pop(pid, None)
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
                self.messenger.notify(pid, events.PublishAnswer(pc="publish", sdp=sdp))
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
            elif kind == "restart_ice":
                assert isinstance(op.pc, str)
                await media.restart_ice(pid, op.pc)
            elif kind == "mute":
                assert isinstance(op.kind, str) and isinstance(op.muted, bool)
                media.set_muted(pid, op.kind, op.muted)
            elif kind == "render_sizes":
                assert isinstance(op.sizes, dict)
                media.show(pid, {mid: (size[0], size[1]) for mid, size in op.sizes.items()})
            elif kind == "rec" and self.recorder is not None:
                assert isinstance(op.action, str) and isinstance(op.fields, dict)
                await self.recorder.handle(pid, op.action, op.fields)
        except MediaError as exc:
            self.messenger.notify(pid, events.MediaRefused(
                code=ErrorCode.BAD_MEDIA_REQUEST, message=_short(str(exc)), request=kind,
            ))  # fmt: skip

    async def refresh_claims(self) -> None:
        """Keep this node's claim on the rooms whose media it hosts (called periodically)."""
        if self.media is not None:
            for room_id in list(self.media.rooms):
                await self.store.claim_media_node(room_id, self.store.node_id, MEDIA_CLAIM_TTL_S)


def _short(text: str) -> str:
    return text if len(text) <= 200 else text[:197] + "..."
