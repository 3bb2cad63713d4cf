"""Media through `/ws`: real aiortc participants, the node's SFU, signalling messages."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from sfu.client import MediaClient
from tests.fixtures.servers import RunningNode, eventually, node_settings, running_node


class Participant:
    """A participant joined over the WebSocket, with its media client."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, joined: dict[str, Any]) -> None:
        self.ws = ws
        self.joined = joined
        self.messages: list[dict[str, Any]] = []
        self.client = MediaClient(self._send, [AudioStreamTrack(), VideoStreamTrack()])
        self.reader = asyncio.ensure_future(self._read())

    async def _send(self, message: dict[str, Any]) -> None:
        await self.ws.send_json(message)

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            self.messages.append(data)
            if data["type"] in ("offer", "answer", "tracks"):
                await self.client.handle(data)

    async def close(self) -> None:
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader
        await self.client.close()


@pytest.fixture
async def media_node(tmp_path: Path) -> AsyncIterator[RunningNode]:
    settings = node_settings(tmp_path / "data", ice_host_addresses=["127.0.0.1"])
    async with running_node(settings) as node:
        yield node


async def _join(node: RunningNode, sub: str, role: str = "chair") -> Participant:
    ws, joined = await node.join(sub, role)
    assert joined["type"] == "joined", joined
    participant = Participant(ws, joined)
    await participant.client.publish()
    return participant


async def test_participants_exchange_media_through_signalling(media_node: RunningNode) -> None:
    a = await _join(media_node, "dr-a")
    b = await _join(media_node, "dr-b", "specialist")
    try:
        await eventually(
            lambda: a.client.stats.frames("video") > 5 and b.client.stats.frames("video") > 5,
            timeout=20,
        )
        await eventually(lambda: b.client.stats.frames("audio") > 5, timeout=10)
        tracks = [m for m in b.messages if m["type"] == "tracks"][-1]["tracks"]
        assert {t["participant_id"] for t in tracks} == {a.joined["participant_id"]}
        assert {t["kind"] for t in tracks} == {"audio", "video"}
    finally:
        await a.close()
        await b.close()


async def test_chair_mute_stops_forwarding_within_a_second(media_node: RunningNode) -> None:
    chair = await _join(media_node, "dr-chair")
    spec = await _join(media_node, "dr-spec", "specialist")
    try:
        await eventually(lambda: chair.client.stats.frames("audio") > 5, timeout=20)
        await chair.ws.send_json(
            {"type": "mute", "participant_id": spec.joined["participant_id"], "kind": "audio"}
        )
        await asyncio.sleep(1.0)
        before = chair.client.stats.frames("audio")
        await asyncio.sleep(1.0)
        assert chair.client.stats.frames("audio") == before, "muted audio still forwarded"
        assert spec.client.stats.frames("audio") > 0
    finally:
        await chair.close()
        await spec.close()


async def test_bad_sdp_is_a_recoverable_error(media_node: RunningNode) -> None:
    ws, _ = await media_node.join("dr-x", "chair")
    await ws.send_json({"type": "offer", "pc": "publish", "sdp": "v=0\r\nnonsense"})
    reply = json.loads((await ws.receive(timeout=5)).data)
    while reply["type"] != "error":
        reply = json.loads((await ws.receive(timeout=5)).data)
    assert reply["code"] == "bad_media_request"
    await ws.send_json({"type": "ping", "id": 1})
    while reply["type"] != "pong":
        reply = json.loads((await ws.receive(timeout=5)).data)
