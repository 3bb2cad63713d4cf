"""Room failover (issue 13, part 2), with two real `consilium serve` processes on one real
redis-server and real aiortc participants sending encoded media: a four-person room whose media
lives on node A, two people connected to A and two to B. Node A is killed (SIGKILL); B finds it
dead, claims the room's media, and B's two participants open new media sessions on B's SFU
(`media_moved`) without leaving the room, on the same signalling connections; A's two
participants, held for a resume (B's people see them reconnecting), resume on B as the same
participants, without the lobby, and open new media sessions there: everyone's video to
everyone comes back."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from signaling.audit import iter_entries
from tests.fixtures.media import Participant, join_over_ws, pid, video_frames_from
from tests.fixtures.metrics import samples
from tests.fixtures.servers import LOOPBACK_ICE, eventually, two_nodes

DEAD_AFTER_S = 4.0
"""`node_dead_after_s` (its default): a killed node is found sooner, by its connections."""
ROOM = "mdt-1"
MEDIA_NODE = "consilium:room:{mdt-1}:media-node"


async def test_killing_the_node_hosting_a_rooms_media_moves_it_and_media_comes_back(
    serve_process: Any, redis_url: str, tmp_path: Path, loopback_ice: None
) -> None:
    a, b, idp = two_nodes(serve_process, redis_url, tmp_path, LOOPBACK_ICE)
    started = time.monotonic()

    def token(sub: str, role: str = "specialist") -> str:
        return idp.mint(sub=sub, role=role, depts=["cardiology"], rooms=[ROOM])

    redis = aioredis.from_url(redis_url, decode_responses=True)
    people: list[Participant] = []
    async with aiohttp.ClientSession() as http:
        try:
            chair = await join_over_ws(http, a.url, token("dr-chair", "chair"), ROOM)
            people.append(chair)
            host = await redis.get(MEDIA_NODE)
            for url, sub in ((a.url, "dr-a2"), (b.url, "dr-b1"), (b.url, "dr-b2")):
                people.append(await join_over_ws(http, url, token(sub), ROOM))
            _, on_a, b1, b2 = people
            assert await redis.get(MEDIA_NODE) == host, "one node hosts the room's media"

            def everyone_sees_everyone() -> bool:
                return all(
                    video_frames_from(receiver, pid(sender), current=True) > 5
                    for receiver in people
                    for sender in people
                    if receiver is not sender
                )

            await eventually(everyone_sees_everyone, timeout=45, interval=0.2)
            b_ws = (b1.ws, b2.ws)

            # A node judges others only once its own heartbeats have gone through for longer
            # than the timeout (`LivenessWatch`): B, just started, has to be past that.
            await asyncio.sleep(max(0.0, started + DEAD_AFTER_S + 1.5 - time.monotonic()))
            a.stop(signal.SIGKILL)
            killed_at = time.monotonic()

            def both_moved() -> bool:
                return b1.client.renewals == 1 and b2.client.renewals == 1

            # A's two clients come back as the same participants, through B (a client tries
            # again at once: B waits for A to be found dead before it takes them over).
            lost_ids = (pid(chair), pid(on_a))
            for person, sub, role in ((chair, "dr-chair", "chair"), (on_a, "dr-a2", "specialist")):
                resumed = await person.resume(http, b.url, token(sub, role))
                assert resumed == {"type": "resumed", "participant_id": pid(person),
                                   "last_seq": 0, "replayed": False}  # fmt: skip
                assert {x["participant_id"] for x in person.joined["participants"]} == {
                    *lost_ids, pid(b1), pid(b2)}  # fmt: skip
            assert (pid(chair), pid(on_a)) == lost_ids

            await eventually(both_moved, timeout=DEAD_AFTER_S + 10, interval=0.05)
            moved_after = time.monotonic() - killed_at

            await eventually(everyone_sees_everyone, timeout=20, interval=0.05)
            back_after = time.monotonic() - killed_at
            print(f"\nmedia moved {moved_after:.2f} s and back for everyone {back_after:.2f} s"
                  " after the kill")  # fmt: skip

            # The same signalling connections on B; nobody left, nobody waited in the lobby.
            assert (b1.ws, b2.ws) == b_ws and not b1.ws.closed and not b2.ws.closed
            for person in (b1, b2):
                assert [m for m in person.messages if m["type"] == "participant_left"] == []
                reconnecting = [(m["participant_id"], m["reconnecting"]) for m in person.messages
                                if m["type"] == "participant_reconnecting"]  # fmt: skip
                for lost_id in lost_ids:
                    assert [r for i, r in reconnecting if i == lost_id] == [True, False]
                moved = [m for m in person.messages if m["type"] == "media_moved"]
                assert moved == [{"type": "media_moved", "reason": "node_lost"}]
            for person in people:
                assert not any(m["type"] == "lobby" for m in person.messages)
            assert await redis.get(MEDIA_NODE) == await _node_id(http, b.url)
            async with http.get(b.url + "/metrics") as r:
                metrics = await r.text()
            assert samples(metrics)["consilium_sfu_participants"] == 4
            lost = list(iter_entries(b.data_dir / "audit", action="node_lost"))
            assert len(lost) == 1
            fields = lost[0].fields
            assert (fields["participants"], fields["held_for_resume"], fields["rooms_moved"]) == (
                0, 2, 1), fields  # fmt: skip
            assert fields["found"] == "disconnected", "its connections told, before its heartbeat"
            resumes = list(iter_entries(b.data_dir / "audit", action="resume"))
            assert sorted(e.fields["participant"] for e in resumes) == sorted(lost_ids)
            assert {(e.outcome, e.fields["replayed"]) for e in resumes} == {("allow", False)}
        finally:
            for person in people:
                await person.close()
            await redis.aclose()


async def _node_id(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url + "/readyz") as r:
        return str(json.loads(await r.text()).get("node", ""))
