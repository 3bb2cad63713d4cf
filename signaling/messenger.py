"""Where this node's server messages to participants leave it: to one participant whose media this
node hosts (the SFU's notifications, the recorder's notices), wherever their signalling connection
is, or to everyone in a room, on every node.

Built first, before the SFU, the recorder and `Rooms`, which all send through it: each of them is
complete when its constructor returns (no callback is wired in afterwards).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec

from sfu import events
from signaling import cluster
from signaling import protocol as p
from signaling.connection import Connection, ConnectionState
from signaling.state.store import StateStore

log = logging.getLogger("consilium.rooms")


class ServerText(events.SfuEvent, tag="message", frozen=True):
    """A server message signalling already encoded (the recorder's notices), sent on like the
    SFU's notifications: to the participant whose media this node hosts, wherever they are."""

    text: str
    """The encoded `signaling.protocol` message."""


Outgoing = events.Notification | ServerText
"""What goes to a participant through the node hosting its media (`cluster.MediaOut.msg`)."""


class Messenger:
    """Sends server messages to participants: one whose media this node hosts (through the node
    holding their connection), or a whole room (on every node)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.connections: dict[str, Connection] = {}
        """This node's connections by participant id (joined and waiting); `Rooms` adds and
        removes them."""
        self.guests: dict[str, str] = {}
        """Participants whose media this node hosts for another node: id → their node."""

    async def announce(
        self, room_id: str, message: p.Message, *, to: str = "all", exclude: str | None = None
    ) -> None:
        """Send to everyone in the room on every node (`to`: all, admitters, or one id).

        Awaited in order, so every participant sees a room's events in the order they happened.
        """
        text = p.encode(message)
        event = cluster.RoomMessage(room=room_id, to=to, exclude=exclude, msg=text)
        await self.store.publish(cluster.to_wire(event))

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
            case events.ActiveSpeaker(participant_id=speaker):
                out = p.ActiveSpeaker(participant_id=speaker)
            case events.MediaReconnecting(participant_id=who, reconnecting=reconnecting):
                out = p.ParticipantReconnecting(who, reconnecting=reconnecting, media=True)
            case ServerText(text=text):  # already encoded (the recorder's notices)
                conn.send(text)
                return
        conn.send(p.encode(out))


_pending: set[asyncio.Task[Any]] = set()
"""Publications to other nodes in flight (the loop keeps only a weak reference to a task)."""
