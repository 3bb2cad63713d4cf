"""The chat and annotations of a room survive the node hosting its media (issue 13, part 2):
two real `consilium serve` processes sharing a cluster key on one real redis-server, real aiortc
participants with real data channels. Node A, hosting the room's media, is SIGKILLed; B takes the
room's media over, and what was said before is in the snapshot B's SFU sends, the room's
sequence numbers going on from there. Redis holds the events sealed, never in the clear."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from tests.fixtures.media import Participant, join_over_ws
from tests.fixtures.servers import LOOPBACK_ICE, eventually, two_nodes

DEAD_AFTER_S = 4.0
ROOM = "mdt-1"
RELIABLE = "consilium-reliable"


def _snapshots(person: Participant) -> list[dict[str, Any]]:
    return [m for m in person.client.received(RELIABLE) if m["type"] == "snapshot"]


def _events(person: Participant) -> list[dict[str, Any]]:
    return [m for m in person.client.received(RELIABLE) if m["type"] == "event"]


async def test_chat_said_before_the_media_node_died_is_there_after(
    serve_process: Any, redis_url: str, tmp_path: Path, loopback_ice: None
) -> None:
    key = tmp_path / "cluster.key"
    key.write_bytes(b"q" * 32)
    env = {**LOOPBACK_ICE, "CONSILIUM_CLUSTER_KEY_FILE": str(key)}
    a, b, idp = two_nodes(serve_process, redis_url, tmp_path, env)
    started = time.monotonic()

    def token(sub: str, role: str = "specialist") -> str:
        return idp.mint(sub=sub, role=role, depts=["cardiology"], rooms=[ROOM])

    redis = aioredis.from_url(redis_url)
    people: list[Participant] = []
    async with aiohttp.ClientSession() as http:
        try:
            chair = await join_over_ws(http, a.url, token("dr-chair", "chair"), ROOM)
            people.append(chair)
            onb = await join_over_ws(http, b.url, token("dr-onb"), ROOM)
            people.append(onb)
            for person in people:
                await person.client.sync()
            await eventually(lambda: all(_snapshots(p) for p in people), 15)

            said = [(chair, "Lesion in segment 7, 14 mm"), (onb, "Agreed: biopsy first")]
            for person, text in said:
                person.client.send_json(RELIABLE, {"type": "chat", "text": text})
                await eventually(lambda t=text: any(e.get("text") == t for e in _events(onb)), 10)
            before = [(e["seq"], e["text"]) for e in _events(onb) if e["kind"] == "chat"]
            assert [t for _, t in before] == [t for _, t in said]

            # Sealed in Redis: the room's events are there, their words are not.
            raw = await redis.lrange("consilium:room:{mdt-1}:annotations", 0, -1)
            assert len(raw) >= 2
            assert not any(b"Lesion" in r or b"biopsy" in r for r in raw)

            await asyncio.sleep(max(0.0, started + DEAD_AFTER_S + 1.5 - time.monotonic()))
            a.stop(signal.SIGKILL)
            await eventually(lambda: onb.client.renewals == 1, DEAD_AFTER_S + 10, 0.05)
            known = len(_snapshots(onb))
            await onb.client.sync(30)
            await eventually(lambda: len(_snapshots(onb)) > known, 30)
            snapshot = _snapshots(onb)[-1]
            assert [(c["seq"], c["text"]) for c in snapshot["chat"]] == before
            assert snapshot["seq"] >= before[-1][0]

            # The room's sequence goes on from there on B.
            onb.client.send_json(RELIABLE, {"type": "chat", "text": "Scheduling it for Monday"})
            await eventually(lambda: any(e.get("text") == "Scheduling it for Monday"
                                         for e in _events(onb)), 10)  # fmt: skip
            (after,) = [e for e in _events(onb) if e.get("text") == "Scheduling it for Monday"]
            assert after["seq"] == snapshot["seq"] + 1
        finally:
            for person in people:
                await person.close()
            await redis.aclose()
