"""Media through `/ws`: real aiortc participants, the node's SFU, signalling messages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from signaling.devidp import DevelopmentIdP
from tests.fixtures.media import Participant, join_over_ws
from tests.fixtures.metrics import samples
from tests.fixtures.servers import RunningNode, eventually, node_settings, running_node


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


async def test_four_party_room_runs_without_any_codec_on_the_server(
    serve_process: Any, tmp_path: Path, loopback_ice: None
) -> None:
    """The SFU forwards encoded media: while a 4-party room runs, the server process creates
    no encoder and no decoder (its codec factories are counted and exported as metrics)."""
    serve = serve_process(env={"CONSILIUM_ICE_HOST_ADDRESSES": "127.0.0.1"})
    idp = DevelopmentIdP.load_or_create(serve.data_dir)
    async with aiohttp.ClientSession() as http:
        people = []
        try:
            for i in range(4):
                token = idp.mint(sub=f"dr-{i}", role="chair", depts=["cardiology"], rooms=["mdt"])
                people.append(await join_over_ws(http, serve.url, token, "mdt"))

            def everyone_sees_everyone() -> bool:
                return all(
                    sum(1 for t in p.client.stats.tracks.values()
                        if t.kind == "video" and t.frames > 5) == 3
                    for p in people
                )  # fmt: skip

            await eventually(everyone_sees_everyone, timeout=40)
            async with http.get(serve.url + "/metrics") as r:
                metrics = samples(await r.text())
        finally:
            for p in people:
                await p.close()
    assert float(metrics["consilium_sfu_forwarded_packets"]) > 100
    assert float(metrics["consilium_sfu_codec_encoders_created"]) == 0
    assert float(metrics["consilium_sfu_codec_decoders_created"]) == 0


async def test_removed_participant_media_stops_within_a_second(media_node: RunningNode) -> None:
    chair = await _join(media_node, "dr-chair")
    spec = await _join(media_node, "dr-spec", "specialist")
    try:
        await eventually(lambda: chair.client.stats.frames("audio") > 5, timeout=20)
        await chair.ws.send_json(
            {"type": "remove", "participant_id": spec.joined["participant_id"]}
        )
        assert media_node.node is not None and media_node.node.rooms.media is not None
        sfu = media_node.node.rooms.media
        await eventually(lambda: spec.joined["participant_id"] not in sfu.participants, 1.0)
        await asyncio.sleep(0.3)
        before = chair.client.stats.frames("audio")
        await asyncio.sleep(1.0)
        assert chair.client.stats.frames("audio") == before
    finally:
        await chair.close()
        await spec.close()


async def test_a_malformed_ice_candidate_is_answered_and_the_connection_kept(
    media_node: RunningNode,
) -> None:
    sender = await _join(media_node, "dr-x")
    try:
        for candidate, mid, index in (
            ("candidate:1 1", "0", 0),  # too few fields: aiortc's parser asserts
            ("candidate:1 1 udp 1 10.0.0.1 5 typ", "0", 0),
            ("candidate:1 1 udp 1 10.0.0.1 5 typ host", None, None),  # no mid, no index
            ("candidate:1 1 udp x 10.0.0.1 5 typ host", "0", 0),
        ):
            await sender.ws.send_json({"type": "candidate", "pc": "publish",
                                       "candidate": candidate, "sdp_mid": mid,
                                       "sdp_mline_index": index})  # fmt: skip
            await eventually(lambda: any(m["type"] == "error" for m in sender.messages))
            error = next(m for m in sender.messages if m["type"] == "error")
            sender.messages.remove(error)
            assert error["code"] == "bad_media_request" and error["request"] == "candidate"
        assert not sender.ws.closed
        await sender.ws.send_json({"type": "ping", "id": 7})
        await eventually(lambda: any(m["type"] == "pong" for m in sender.messages), timeout=5)
    finally:
        await sender.close()
