"""A recording outlives the node that recorded it (issue 13, part 2), with two real `consilium
serve` processes on one real redis-server and real aiortc participants sending encoded media: the
room's media and its recording are on node A, everyone has consented, and A is killed (SIGKILL).
B takes the room's media over and, with it, the room's consent as A kept it in Redis: nobody is
asked again, and the recording goes on at B as a continuation (a new recording whose signed
manifest names the one it continues, on which node, and why); `verify` on B passes and reports
the gap between the two, bounded by A's last keeping of the room's state."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp

from signaling.audit import iter_entries
from tests.fixtures.media import (
    Participant,
    join_over_ws,
    pid,
    record_with_consent,
    send,
    state,
    video_frames_from,
)
from tests.fixtures.servers import LOOPBACK_ICE, eventually, two_nodes

DEAD_AFTER_S = 4.0
"""`node_dead_after_s` (its default)."""
ROOM = "mdt-1"


async def test_a_recording_continues_on_the_node_that_takes_the_rooms_media_over(
    serve_process: Any, redis_url: str, tmp_path: Path, loopback_ice: None
) -> None:
    a, b, idp = two_nodes(serve_process, redis_url, tmp_path, LOOPBACK_ICE)
    started = time.monotonic()

    def token(sub: str, role: str = "specialist", rooms: list[str] | None = None) -> str:
        return idp.mint(sub=sub, role=role, depts=["cardiology"],
                        rooms=[ROOM] if rooms is None else rooms)  # fmt: skip

    people: list[Participant] = []
    async with aiohttp.ClientSession() as http:
        try:
            chair = await join_over_ws(http, a.url, token("dr-chair", "chair"), ROOM)
            people.append(chair)  # first: the room's media (and its recording) on A
            for sub in ("dr-b1", "dr-b2"):
                people.append(await join_over_ws(http, b.url, token(sub), ROOM))
            _, b1, b2 = people
            first = await record_with_consent(chair, b1, b2)
            await asyncio.sleep(max(2.0, started + DEAD_AFTER_S + 1.5 - time.monotonic()))
            asked = [sum(m["type"] == "consent_requested" for m in x.messages) for x in people]

            a.stop(signal.SIGKILL)
            killed_at = time.monotonic()
            await chair.resume(http, b.url, token("dr-chair", "chair"))

            def continued(person: Participant) -> bool:
                now = state(person)
                return bool(now.get("recording")) and now.get("recording_id") not in ("", first)

            await eventually(lambda: all(continued(x) for x in people), timeout=20)
            second = str(state(b1)["recording_id"])
            print(f"\nthe recording continued on B as {second}, "
                  f"{time.monotonic() - killed_at:.2f} s after the kill")  # fmt: skip
            # Consent stood: nobody was asked again, everyone's answer is there.
            assert [sum(m["type"] == "consent_requested" for m in x.messages)
                    for x in people] == asked  # fmt: skip
            for person in people:
                assert state(person)["consent"] == {pid(x): "granted" for x in people}

            def media_back() -> bool:
                return all(video_frames_from(r, pid(s), current=True) > 5
                           for r in people for s in people if r is not s)  # fmt: skip

            await eventually(media_back, timeout=20, interval=0.1)
            await asyncio.sleep(2.0)  # some of everyone's media in the continuation
            await send(chair, "stop_recording")
            await eventually(lambda: not state(b1).get("recording"), timeout=10)

            async with http.post(
                f"{b.url}/api/recordings/{second}/verify",
                headers={"Authorization": "Bearer " + token("archivist", "archivist", [])},
            ) as response:
                assert response.status == 200, await response.text()
                report = await response.json()
            assert report["ok"], report["problems"]
            continues = report["continues"]
            assert continues["recording_id"] == first and continues["reason"] == "node_lost"
            assert continues["node"] != await _node_id(http, b.url)
            # A kept the room's state every second: the gap is bounded by the time to find A
            # dead and open the continuation, not by a claim's 30 s.
            assert 0 < continues["gap_max_s"] < DEAD_AFTER_S + 6, continues
            print(f"verify on B: OK, continues {first}, a gap of at most"
                  f" {continues['gap_max_s']} s")  # fmt: skip
            assert report["records"], "media recorded in the continuation"
            entries = list(iter_entries(b.data_dir / "audit", action="recording_continued"))
            assert [(e.fields["continues"], e.fields["recording"]) for e in entries] == [
                (first, second)
            ]  # fmt: skip
        finally:
            for person in people:
                await person.close()


async def _node_id(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url + "/readyz") as r:
        return str((await r.json()).get("node", ""))
