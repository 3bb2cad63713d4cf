"""`restart_ice` over the WebSocket of a real node: the SFU offers the subscribe session again
with new ICE credentials (and nothing else changes); asked too early, it answers an error and
the room goes on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.testsource import ReplayAudioTrack, ReplayVideoTrack
from sfu.ice_restart import remote_credentials
from tests.fixtures.media import Participant, error_for, send
from tests.fixtures.servers import RunningNode, eventually, node_settings, running_node
from tests.test_sfu_ice_restart import answer_restarts, packets_received


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[RunningNode]:
    async with running_node(
        node_settings(tmp_path / "data", ice_host_addresses=["127.0.0.1"])
    ) as n:
        yield n


async def join(node: RunningNode, sub: str, role: str) -> Participant:
    ws, joined = await node.join(sub, role)
    assert joined["type"] == "joined", joined
    participant = Participant(ws, joined, [ReplayAudioTrack(), ReplayVideoTrack()])
    await participant.client.publish()
    return participant


def subscribe_offers(participant: Participant) -> list[str]:
    return [m["sdp"] for m in participant.messages
            if m["type"] == "offer" and m.get("pc") == "subscribe"]  # fmt: skip


async def test_restart_ice_brings_a_subscribe_offer_with_new_credentials(
    node: RunningNode,
) -> None:
    chair = await join(node, "dr-chair", "chair")
    specialist = await join(node, "dr-specialist", "specialist")
    answer_restarts(specialist.client)
    try:
        await eventually(lambda: specialist.client.stats.frames("video") > 10, timeout=20)
        offers = len(subscribe_offers(specialist))
        await send(specialist, "restart_ice", pc="subscribe")
        await eventually(lambda: len(subscribe_offers(specialist)) > offers, timeout=10)
        before, after = subscribe_offers(specialist)[offers - 1], subscribe_offers(specialist)[-1]
        assert remote_credentials(after) != remote_credentials(before)
        assert remote_credentials(after) is not None
        # The same session goes on: media keeps arriving, no error, nobody left.
        received = await packets_received(specialist.client.subscribe_pc)

        async def flowing() -> bool:
            return await packets_received(specialist.client.subscribe_pc) > received + 50

        await eventually(flowing, timeout=10)
        assert not [m for m in specialist.messages if m["type"] in ("error", "participant_left")]
        # The chair was told the specialist's media was reconnecting, then that it is back.
        pid = specialist.joined["participant_id"]

        def told_chair() -> list[dict[str, object]]:
            return [m for m in chair.messages if m["type"] == "participant_reconnecting"]

        await eventually(lambda: len(told_chair()) == 2, timeout=10)
        assert told_chair() == [
            {"type": "participant_reconnecting", "participant_id": pid, "reconnecting": value,
             "media": True}
            for value in (True, False)
        ]  # fmt: skip
        assert not [m for m in specialist.messages if m["type"] == "participant_reconnecting"]
    finally:
        await specialist.close()
        await chair.close()


async def test_restart_ice_before_any_subscribe_session_is_refused_and_the_room_goes_on(
    node: RunningNode,
) -> None:
    chair = await join(node, "dr-chair", "chair")  # alone: nothing to receive yet
    try:
        await send(chair, "restart_ice", pc="subscribe")
        error = await error_for(chair, "restart_ice")
        assert error["code"] == "bad_media_request"
        await send(chair, "ping", id=7)
        await eventually(lambda: any(m["type"] == "pong" for m in chair.messages))
    finally:
        await chair.close()
