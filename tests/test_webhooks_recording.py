"""The recording webhooks end to end: a real node with its SFU, real aiortc participants
publishing over `/ws`; the radiologist declines the recording notice (`consent.refused`), the
chair records and stops (`recording.ready` once the recording is sealed); a loopback aiohttp
receiver checks each with the recipe from docs/operations.md."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

from bot.testsource import ReplayAudioTrack, ReplayVideoTrack
from recorder.manifest import read_manifest
from tests.fixtures.media import Participant, last, pid, send, state
from tests.fixtures.servers import RunningNode, eventually, node_settings, running_node
from tests.test_webhooks import SECRET, docs_recipe, receiver, subscription


async def join(node: RunningNode, sub: str, role: str = "specialist") -> Participant:
    ws, joined = await node.join(sub, role)
    assert joined["type"] == "joined", joined
    participant = Participant(ws, joined, [ReplayAudioTrack(), ReplayVideoTrack()])
    await participant.client.publish()
    return participant


async def test_consent_refused_and_recording_ready_reach_the_his(tmp_path: Path) -> None:
    verify_webhook = docs_recipe()
    async with receiver() as his:
        settings = node_settings(
            tmp_path / "data",
            ice_host_addresses=["127.0.0.1"],
            recording_segment_seconds=1.0,
            webhooks=subscription(tmp_path, his.url, "consent.refused", "recording.ready"),
        )
        async with running_node(settings) as node:
            chair = await join(node, "dr-chair", "chair")
            rad = await join(node, "dr-rad")
            try:
                await eventually(lambda: chair.client.stats.frames("video") > 3, 20)
                await send(chair, "request_consent")
                await eventually(lambda: last(rad, "consent_requested") is not None, 5)
                await send(chair, "consent", decision="granted")
                await send(rad, "consent", decision="declined")
                await eventually(lambda: len(his.deliveries) >= 1, 10)
                await eventually(
                    lambda: state(chair).get("consent", {}).get(pid(rad)) == "declined", 5
                )
                await send(chair, "start_recording")
                await eventually(lambda: state(chair).get("recording") is True, 5)
                recording_id = state(chair)["recording_id"]
                await asyncio.sleep(2.0)
                await send(chair, "stop_recording")
                await eventually(lambda: len(his.deliveries) >= 2, 15)
            finally:
                await chair.close()
                await rad.close()
    refused, ready = his.events()
    assert refused["type"] == "consent.refused" and refused["room"] == "mdt-1"
    assert refused["data"]["sub"] == "dr-rad" and refused["data"]["method"] == "client"
    assert ready["type"] == "recording.ready" and ready["data"]["recording"] == recording_id
    # Ready means sealed: the event names the manifest on disk, complete and signed.
    manifest, _, raw = read_manifest(tmp_path / "data" / "recordings" / recording_id)
    assert manifest.status == "complete"
    assert ready["data"]["manifest_sha256"] == hashlib.sha256(raw).hexdigest()
    for headers, body in his.deliveries:
        assert verify_webhook(SECRET, headers, body)
        assert b"Dr-Rad" not in body and b"Dr-Chair" not in body
    assert json.loads(his.deliveries[1][1])["id"] != refused["id"]
