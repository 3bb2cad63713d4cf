"""The composition root and the messenger every part sends through: each part is complete when its
constructor returns, and the SFU's notifications reach the participant wherever they are."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from consilium.node import build_node
from core.errors import RateLimited
from sfu import events
from sfu.ice import uninstall
from signaling import cluster
from signaling import protocol as p
from signaling.connection import ConnectionState
from signaling.http.node import IMAGE_QUEUE_PER_WORKER, ImageWork
from signaling.messenger import Messenger
from tests.fixtures.servers import node_settings


@dataclass
class PublishedEvents:
    """The part of the state store the messenger uses: `publish`, recorded."""

    node_id: str = "node-a"
    published: list[dict[str, Any]] = field(default_factory=list)

    async def publish(self, event: dict[str, Any]) -> None:
        self.published.append(event)


@dataclass
class Socket:
    """A signalling connection as the messenger sees it: its state, and what it was sent."""

    state: ConnectionState = ConnectionState.JOINED
    sent: list[dict[str, Any]] = field(default_factory=list)

    def send(self, text: str) -> None:
        self.sent.append(json.loads(text))


def wire_of(message: p.Message) -> dict[str, Any]:
    """A server message as the client reads it."""
    return dict(json.loads(p.encode(message)))


def messenger_with(pid: str, conn: Socket) -> tuple[Messenger, PublishedEvents]:
    store = PublishedEvents()
    messenger = Messenger(store)  # type: ignore[arg-type]
    messenger.connections[pid] = conn  # type: ignore[assignment]
    return messenger, store


def test_build_node_wires_the_sfu_and_recorder_to_the_rooms_messenger(tmp_path: Path) -> None:
    node = build_node(node_settings(tmp_path / "data"))
    try:
        rooms = node.rooms
        assert rooms.media is not None and rooms.recorder is not None
        assert rooms.media.notify == rooms.messenger.notify
        assert rooms.recorder.media is rooms.media
        assert rooms.recorder.broadcast == rooms.messenger.announce
        assert rooms.recorder.notify == rooms.messenger.notify_message
        assert rooms.relay.messenger is rooms.messenger
        assert rooms.connections is rooms.messenger.connections
    finally:
        node.audit.close()
        uninstall()


def test_a_signalling_only_node_has_neither_sfu_nor_recorder(tmp_path: Path) -> None:
    node = build_node(node_settings(tmp_path / "data", media=False))
    try:
        assert node.rooms.media is None and node.rooms.recorder is None
    finally:
        node.audit.close()


def test_the_sfus_answer_reaches_a_joined_participant_on_this_node() -> None:
    conn = Socket()
    messenger, store = messenger_with("p1", conn)
    messenger.notify("p1", events.PublishAnswer(pc="publish", sdp="v=0"))
    assert conn.sent == [wire_of(p.Answer(sdp="v=0", pc="publish"))]
    assert store.published == []


def test_a_participant_waiting_in_the_lobby_gets_no_media_notification() -> None:
    conn = Socket(state=ConnectionState.WAITING)
    messenger, _ = messenger_with("p1", conn)
    messenger.notify("p1", events.PublishAnswer(pc="publish", sdp="v=0"))
    assert conn.sent == []


def test_a_recorder_notice_is_sent_as_the_server_message_it_is() -> None:
    conn = Socket()
    messenger, _ = messenger_with("p1", conn)
    messenger.notify_message("p1", p.Pong(id=7, server_time=1.0))
    assert conn.sent == [wire_of(p.Pong(id=7, server_time=1.0))]


async def test_a_notification_for_another_nodes_participant_goes_to_that_node() -> None:
    conn = Socket()
    messenger, store = messenger_with("p1", conn)
    messenger.guests["p1"] = "node-b"
    messenger.notify("p1", events.PublishAnswer(pc="publish", sdp="v=0"))
    await asyncio.sleep(0)
    assert conn.sent == []
    (wire,) = store.published
    out = cluster.from_wire(wire)
    assert isinstance(out, cluster.MediaOut)
    assert (out.node, out.pid) == ("node-b", "p1")
    # On node-b, the same notification reaches the participant.
    there = Socket()
    messenger_b, _ = messenger_with("p1", there)
    messenger_b.deliver(out.pid, out.msg)
    assert there.sent == [wire_of(p.Answer(sdp="v=0", pc="publish"))]


def test_an_unreadable_notification_from_another_node_is_dropped() -> None:
    conn = Socket()
    messenger, _ = messenger_with("p1", conn)
    messenger.deliver("p1", {"type": "no-such-notification"})
    assert conn.sent == []


async def test_an_announcement_is_one_room_message_to_every_node() -> None:
    messenger, store = messenger_with("p1", Socket())
    await messenger.announce("mdt-1", p.Pong(id=1, server_time=2.0), to="admitters")
    (wire,) = store.published
    event = cluster.from_wire(wire)
    assert isinstance(event, cluster.RoomMessage)
    assert (event.room, event.to, event.exclude) == ("mdt-1", "admitters", None)
    assert json.loads(event.msg) == wire_of(p.Pong(id=1, server_time=2.0))


async def test_image_work_beyond_what_may_wait_is_refused_and_the_rest_runs() -> None:
    work = ImageWork(1)
    release = threading.Event()
    waiting = [
        asyncio.ensure_future(work.run(release.wait, 10)) for _ in range(IMAGE_QUEUE_PER_WORKER)
    ]
    await asyncio.sleep(0)
    assert work.queued == IMAGE_QUEUE_PER_WORKER
    with pytest.raises(RateLimited):
        await work.run(release.wait, 10)
    release.set()
    assert await asyncio.gather(*waiting) == [True] * IMAGE_QUEUE_PER_WORKER
    assert work.queued == 0
    assert await work.run(sum, [1, 2]) == 3
    work.close()
