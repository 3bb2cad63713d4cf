"""Annotations over real aiortc data channels: concurrent clients converge, a late joiner too, and
the room's state survives the room emptying (its encrypted log)."""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.client import MediaClient
from bot.testsource import ReplayAudioTrack
from core.imageref import ImageRef
from sfu.ice import IceSettings
from sfu.server import MediaSettings
from tests.fixtures.media import MediaHarness
from tests.fixtures.servers import eventually
from tests.test_annotations import CHAIR, KEY, RADIOLOGIST, TRAINEE, ClientState, server_shapes

RELIABLE = "consilium-reliable"
IMAGES = {"ct": ImageRef(frames=4, pixel_spacing_mm=(0.5, 0.5))}
OPS_PER_CLIENT = int(float(os.environ.get("CONSILIUM_SOAK_SECONDS", "8")) * 125)
"""Ops each of the three clients sends (1000 by default: 3000 in all)."""


@pytest.fixture
async def media(tmp_path: Path) -> AsyncIterator[MediaHarness]:
    """A MediaServer with an image lookup and an annotation log under `tmp_path`."""
    settings = MediaSettings(
        ice=IceSettings(host_addresses=("127.0.0.1",)),
        data_dir=tmp_path,
        room_key=lambda room_id: KEY,
        image_info=lambda room_id, image_id: IMAGES.get(image_id),
        annotation_ops_per_s=5000,
        annotation_burst=5000,
    )
    harness = MediaHarness(settings)
    await harness.server.start()
    try:
        yield harness
    finally:
        await harness.close()


def client_state(client: MediaClient) -> ClientState:
    """Apply what a client received, as a web client does: its last snapshot, then events."""
    messages = client.received()
    start = max(i for i, m in enumerate(messages) if m["type"] == "snapshot")
    state = ClientState(messages[start])
    for message in messages[start + 1 :]:
        if message["type"] == "event":
            state.apply(message)
    return state


def last_seq(client: MediaClient) -> int:
    messages = [m for m in client.received() if m["type"] in ("event", "snapshot")]
    return messages[-1]["seq"] if messages else -1


async def annotate(client: MediaClient, name: str, count: int, rng: random.Random) -> None:
    """Send `count` ops as fast as the channel takes them: adds, moves, deletes, clears."""
    mine: list[tuple[int, str]] = []
    for i in range(count):
        frame = rng.randrange(2)
        choice = rng.random()
        body: dict[str, Any]
        if not mine or choice < 0.5:
            shape_id = f"{name}-{i}"
            mine.append((frame, shape_id))
            kind = rng.choice(["arrow", "measure", "freehand", "ellipse"])
            points = [[rng.uniform(0, 512), rng.uniform(0, 512)] for _ in range(
                rng.randint(2, 20) if kind == "freehand" else 2)]  # fmt: skip
            body = {"kind": "add", "shape": {"id": shape_id, "type": kind, "points": points,
                                             "color": "#ff8800"}}  # fmt: skip
        elif choice < 0.8:
            frame, shape_id = rng.choice(mine)
            body = {"kind": "edit", "shape_id": shape_id, "color": f"#{rng.randrange(1 << 24):06x}"}
        elif choice < 0.97:
            frame, shape_id = mine.pop(rng.randrange(len(mine)))
            body = {"kind": "delete", "shape_id": shape_id}
        else:
            body = {"kind": "clear_own"}
            mine = [m for m in mine if m[0] != frame]
        client.send_json(RELIABLE, {"type": "op", "client_id": f"{name}:{i}", "image_id": "ct",
                                    "frame": frame, "op": body})  # fmt: skip
        if i % 20 == 0:
            await asyncio.sleep(0.005)  # let the others interleave, and the late joiner in


async def test_three_clients_and_a_late_joiner_converge(media: MediaHarness) -> None:
    rng = random.Random(os.environ.get("CONSILIUM_TEST_SEED", "annotations"))
    names = {"chair": CHAIR, "rad": RADIOLOGIST, "surgeon": RADIOLOGIST}
    clients = {n: await media.join(n, [], permissions=p) for n, p in names.items()}
    for client in clients.values():
        await client.sync()
    await eventually(lambda: all(c.received() for c in clients.values()), timeout=10)

    late: dict[str, MediaClient] = {}

    total = 3 * OPS_PER_CLIENT
    target = rng.randrange(1, total // 3)

    async def join_late() -> None:
        room = media.server.rooms["mdt-1"].annotations
        assert room is not None
        while room.seq < target:  # noqa: ASYNC110 (polls the server's sequence number)
            await asyncio.sleep(0.005)
        late["late"] = await media.join("late", [], permissions=RADIOLOGIST)
        await late["late"].sync()

    await asyncio.gather(
        *(annotate(c, n, OPS_PER_CLIENT, random.Random(f"{n}{rng.random()}"))
          for n, c in clients.items()),
        join_late(),
    )  # fmt: skip
    annotations = media.server.rooms["mdt-1"].annotations
    assert annotations is not None
    everyone = {**clients, **late}
    # Every op the clients sent reaches the server, though some may still sit in a client's SCTP
    # retransmission (loopback UDP drops packets under load): first the server reaches the
    # total, then every client. Comparing clients with the server's sequence number while it
    # still moves passes or fails by chance.
    await eventually(lambda: annotations.seq == total, 30)
    await eventually(lambda: all(last_seq(c) == total for c in everyone.values()), 30)
    refused = [m for c in everyone.values() for m in c.received() if m["type"] == "error"]
    assert not refused, refused[:3]
    assert annotations.seq == total
    expected = server_shapes(annotations)
    assert expected, "some shapes are left to compare"
    for name, client in everyone.items():
        state = client_state(client)
        assert state.shapes == expected, name
        snapshot = next(m for m in client.received() if m["type"] == "snapshot")
        seqs = [m["seq"] for m in client.received() if m["type"] == "event"]
        assert seqs == list(range(snapshot["seq"] + 1, annotations.seq + 1)), "no gap, no dup"
    late_snapshot = next(m for m in late["late"].received())
    assert target <= late_snapshot["seq"] <= annotations.seq


async def test_refusals_chat_and_receipts_over_the_channels(media: MediaHarness) -> None:
    rad = await media.join("rad", [ReplayAudioTrack()], permissions=RADIOLOGIST)
    trainee = await media.join("trainee", [], permissions=TRAINEE)
    nurse = await media.join("nurse", [], permissions=RADIOLOGIST)
    for client in (rad, trainee, nurse):
        await client.sync()
    await eventually(lambda: all(c.received() for c in (rad, trainee, nurse)), timeout=10)
    shape = {"id": "s1", "type": "arrow", "points": [[0, 0], [5, 5]], "color": "#ffffff"}
    trainee.send_json(RELIABLE, {"type": "op", "client_id": "t1", "image_id": "ct", "frame": 0,
                                 "op": {"kind": "add", "shape": shape}})  # fmt: skip
    trainee.send_data(RELIABLE, "not json")
    await eventually(lambda: len(trainee.received()) == 3, timeout=10)
    errors = trainee.received()[1:]
    assert [(e["type"], e["code"]) for e in errors] == [("error", "not_allowed"),
                                                         ("error", "bad_message")]  # fmt: skip
    assert errors[0]["client_id"] == "t1"

    rad.send_json(
        RELIABLE, {"type": "chat", "client_id": "m1", "text": "for you", "to": ["trainee"]}
    )
    await eventually(lambda: len(trainee.received()) == 4 and len(rad.received()) == 2, 10)
    chat = trainee.received()[-1]
    assert chat["kind"] == "chat" and chat["to"] == ["trainee"] and chat["author"] == "rad"
    nurse.send_json(RELIABLE, {"type": "receipt", "seq": chat["seq"], "state": "read"})
    trainee.send_json(RELIABLE, {"type": "receipt", "seq": chat["seq"], "state": "read"})
    await eventually(lambda: len(rad.received()) == 3 and len(nurse.received()) == 2, 10)
    assert nurse.received()[-1]["code"] == "not_allowed", "a receipt cannot be forged"
    receipt = rad.received()[-1]
    assert (receipt["kind"], receipt["author"], receipt["ref"], receipt["state"]) == (
        "receipt", "trainee", chat["seq"], "read")  # fmt: skip
    assert trainee.received()[-1] == receipt


class RecordingSink:
    """A sink that keeps the data-channel messages it is handed."""

    def __init__(self) -> None:
        self.data: list[tuple[str, str, str, str]] = []

    def on_track(self, track: Any) -> None: ...

    def on_rtp(self, track: Any, packet: bytes, arrival_ms: int, keyframe: bool) -> bool:
        return False

    def on_track_ended(self, track: Any) -> None: ...

    def on_data(self, room_id: str, participant_id: str, label: str, message: str) -> None:
        self.data.append((room_id, participant_id, label, message))


async def test_events_reach_the_sinks_and_survive_the_room_emptying(
    media: MediaHarness, tmp_path: Path
) -> None:
    rad = await media.join("rad", [], permissions=RADIOLOGIST)
    sink = RecordingSink()
    media.server.attach_sink("mdt-1", sink)
    await rad.sync()
    shape = {"id": "s1", "type": "measure", "points": [[0, 0], [30, 40]], "color": "#ffffff"}
    rad.send_json(RELIABLE, {"type": "op", "client_id": "c", "image_id": "ct", "frame": 1,
                             "op": {"kind": "add", "shape": shape}})  # fmt: skip
    rad.send_json(RELIABLE, {"type": "chat", "client_id": "m", "text": "Mrs Example 4417-XYZ"})
    await eventually(lambda: len(rad.received()) == 3, timeout=10)
    assert [json.loads(m) for *_, m in sink.data] == rad.received()[1:]
    assert all(entry[:3] == ("mdt-1", "rad", RELIABLE) for entry in sink.data)
    await media.leave("rad")
    assert "mdt-1" not in media.server.rooms
    stored = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]  # noqa: ASYNC240
    assert stored and all(b"4417-XYZ" not in data for data in stored)

    back = await media.join("back", [], permissions=RADIOLOGIST)
    await back.sync()
    await eventually(lambda: back.received(), timeout=10)
    snapshot = back.received()[0]
    assert snapshot["seq"] == 2
    assert snapshot["shapes"][0]["length_mm"] == pytest.approx(25.0)
    assert snapshot["chat"][0]["text"] == "Mrs Example 4417-XYZ"


async def test_a_closed_reliable_channel_is_noticed_and_a_new_one_catches_up(
    media: MediaHarness,
) -> None:
    """A participant whose ordered channel closes is told (over signalling) and marked out of
    step; a new channel's `sync` brings what it missed, and events flow to it again."""
    chair = await media.join("chair", [], permissions=CHAIR)
    rad = await media.join("rad", [], permissions=RADIOLOGIST)
    for client in (chair, rad):
        await client.sync()
    await eventually(lambda: all(c.received() for c in (chair, rad)), timeout=10)
    seen_by_server = media.server.participants["rad"]
    assert seen_by_server.synced

    rad.channels[RELIABLE].close()
    await eventually(lambda: RELIABLE not in seen_by_server.channels, 10)
    assert not seen_by_server.synced
    told = [m for pid, m in media.errors if pid == "rad"]
    assert [m["code"] for m in told] == ["data_channel_closed"]

    def add(client: MediaClient, shape_id: str) -> None:
        shape = {"id": shape_id, "type": "arrow", "points": [[0, 0], [9, 9]], "color": "#ffffff"}
        client.send_json(RELIABLE, {"type": "op", "client_id": shape_id, "image_id": "ct",
                                    "frame": 0, "op": {"kind": "add", "shape": shape}})  # fmt: skip

    add(chair, "while-away")
    room = media.server.rooms["mdt-1"].annotations
    assert room is not None
    await eventually(lambda: room.seq == 1, 10)

    # The client opens a new ordered channel (no renegotiation) and asks `sync`.
    channel = rad.publish_pc.createDataChannel(RELIABLE)
    rad.channels[RELIABLE] = channel
    channel.on("message", lambda message: rad._on_data(RELIABLE, message))
    await rad.sync()
    await eventually(lambda: [m["type"] for m in rad.received()].count("snapshot") == 2, 10)
    assert [s["id"] for s in client_state(rad).shapes.values()] == ["while-away"]
    add(chair, "after")
    await eventually(lambda: last_seq(rad) == 2, 10)
    assert {s["id"] for s in client_state(rad).shapes.values()} == {"while-away", "after"}
    assert seen_by_server.synced
