"""Draining a node (issue 13, part 3), with two real `consilium serve` processes on one real
redis-server and real aiortc participants: a four-person room whose media lives on node A, two
people connected to A and two to B. A is stopped the way a rolling upgrade does it, with SIGTERM
or with `consilium drain`: it turns unready at once, moves the room's media to B first (B's two
are told `media_moved`, reason `drain`, and reopen their sessions there), waits until its SFU is
empty, hands its own participants over (held in Redis for a resume elsewhere), closes their
connections with 1001 and exits cleanly; their clients resume through B as the same
participants. Nobody leaves, nobody is reported lost, the recording goes on at B as a
continuation with everyone's consent standing, and everyone receives everyone again."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from signaling.audit import iter_entries
from tests.fixtures.media import (
    Participant,
    join_over_ws,
    pid,
    record_with_consent,
    state,
    video_frames_from,
)
from tests.fixtures.servers import LOOPBACK_ICE, REPO, eventually, two_nodes

ROOM = "mdt-1"
MEDIA_NODE = "consilium:room:{mdt-1}:media-node"


def _readyz(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _watch_readiness(url: str, answers: list[str]) -> None:
    """Ask `/readyz` every 10 ms (in a thread: the test's loop stays free) until the node is
    gone; each answer as `<status> <status word>`, then `gone`."""
    while True:
        try:
            status, body = _readyz(url)
        except (urllib.error.URLError, OSError):
            answers.append("gone")
            return
        answers.append(f"{status} {body['status']}")
        time.sleep(0.01)


@pytest.mark.parametrize("how", ["sigterm", "command"])
async def test_draining_the_node_hosting_a_room_moves_it_and_nobody_is_lost(
    serve_process: Any, redis_url: str, tmp_path: Path, loopback_ice: None, how: str
) -> None:
    a, b, idp = two_nodes(serve_process, redis_url, tmp_path, LOOPBACK_ICE)

    def token(sub: str, role: str = "specialist") -> str:
        return idp.mint(sub=sub, role=role, depts=["cardiology"], rooms=[ROOM])

    redis = aioredis.from_url(redis_url, decode_responses=True)
    people: list[Participant] = []
    async with aiohttp.ClientSession() as http:
        try:
            for url, sub, role in ((a.url, "dr-chair", "chair"), (a.url, "dr-a2", "specialist"),
                                   (b.url, "dr-b1", "specialist"),
                                   (b.url, "dr-b2", "specialist")):  # fmt: skip
                people.append(await join_over_ws(http, url, token(sub, role), ROOM))
            on_a, b_people = people[:2], people[2:]
            node_a = (_readyz(a.url))[1]["node"]
            assert await redis.get(MEDIA_NODE) == node_a

            def everyone_sees(group: list[Participant], more: int = 5) -> bool:
                return all(
                    video_frames_from(r, pid(s)) > more for r in group for s in group if r is not s
                )

            await eventually(lambda: everyone_sees(people), timeout=45, interval=0.2)
            # Recorded, with everyone's consent, on A.
            first = await record_with_consent(*people)

            # What a load balancer sees of A from now on, every 10 ms until A is gone.
            answers: list[str] = []
            watcher = threading.Thread(target=_watch_readiness, args=(a.url, answers), daemon=True)
            watcher.start()
            await eventually(lambda: answers, timeout=5)
            if how == "sigterm":
                a.proc.send_signal(signal.SIGTERM)
            else:
                drained = subprocess.run(
                    [sys.executable, "-m", "consilium.cli", "drain", "--server", a.url],
                    capture_output=True, text=True, timeout=30, cwd=REPO,
                )  # fmt: skip
                assert drained.returncode == 0, drained.stderr
                assert "is draining" in drained.stdout

            # B's two reopen their media on B, without leaving the room; the recording goes on
            # there as a continuation, their consent standing.
            for person in b_people:
                moved = await eventually(
                    lambda p=person: [m for m in p.messages if m["type"] == "media_moved"], 15
                )
                assert moved == [{"type": "media_moved", "reason": "drain"}]
                await eventually(
                    lambda p=person: state(p).get("recording")
                    and state(p)["recording_id"] != first, 15
                )  # fmt: skip
            second = state(b_people[0])["recording_id"]
            node_b = (_readyz(b.url))[1]["node"]
            assert await redis.get(MEDIA_NODE) == node_b
            # A's own connections close with 1001 once the media moved, and A exits cleanly.
            for person in on_a:
                await eventually(lambda p=person: p.ws.closed, timeout=40)
                assert person.ws.close_code == 1001
            assert a.proc.wait(timeout=40) == 0
            watcher.join(timeout=5)
            # Ready, then unready (draining) while still answering, then gone: never ready again.
            assert answers[0] == "200 ready" and answers[-1] == "gone", answers
            seen = [answer for i, answer in enumerate(answers) if answers[i - 1 : i] != [answer]]
            assert seen == ["200 ready", "503 draining", "gone"], seen

            # A's two resume through B (what their client does on 1001), as the same people.
            for person, sub, role in zip(on_a, ("dr-chair", "dr-a2"), ("chair", "specialist"),
                                         strict=True):  # fmt: skip
                resumed = await person.resume(http, b.url, token(sub, role))
                assert (resumed["participant_id"], resumed["replayed"]) == (pid(person), False)
            counts = {
                (r, s): video_frames_from(r, pid(s)) for r in people for s in people if r is not s
            }
            await eventually(
                lambda: all(video_frames_from(r, pid(s)) > n + 5 for (r, s), n in counts.items()),
                timeout=30, interval=0.2,
            )  # fmt: skip

            for person in b_people:
                assert [m for m in person.messages if m["type"] == "participant_left"] == []
                reconnecting = [(m["participant_id"], m["reconnecting"]) for m in person.messages
                                if m["type"] == "participant_reconnecting"]  # fmt: skip
                for handed in on_a:
                    assert [r for i, r in reconnecting if i == pid(handed)] == [True, False]
            drained_entries = list(iter_entries(a.data_dir / "audit", action="node_drained"))
            assert len(drained_entries) == 1
            fields = drained_entries[0].fields
            assert (fields["rooms_moved"], fields["participants_left_behind"],
                    fields["handed_over"]) == (1, 0, 2), fields  # fmt: skip
            assert list(iter_entries(b.data_dir / "audit", action="node_lost")) == []
            continued = list(iter_entries(b.data_dir / "audit", action="recording_continued"))
            assert [(e.fields["continues"], e.fields["recording"], e.reason)
                    for e in continued] == [(first, second, "drain")]  # fmt: skip
            # Nobody was asked to consent again, the rejoined included (answers are theirs).
            for person in people:
                assert state(person)["consent"].get(pid(person)) == "granted"
            assert [sum(m["type"] == "consent_requested" for m in x.messages) for x in people] == [
                1,
                1,
                1,
                1,
            ], "asked once, before the recording, never again"
        finally:
            for person in people:
                await person.close()
            await redis.aclose()
