"""A participant whose node was lost resumes on another node (issue 13, part 2), with two real
`consilium serve` processes on one real redis-server: node A is killed (SIGKILL); B finds it dead
and holds A's participant in the shared state for `resume_grace_s` (the room sees them
reconnecting) instead of removing them; their client's `resume` on B takes them over as the same
participant (no lobby, nothing replayed: `resumed` with `replayed` false, then a new `joined`),
and they stay after the grace period. A resume that reaches B while A is alive, or with the
wrong secret or identity, is refused (4410). tests/test_cluster_failover.py has the same with
real media."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import aiohttp

from signaling.audit import iter_entries
from signaling.devidp import DevelopmentIdP
from tests.fixtures.servers import next_message, no_message, two_nodes, ws_join

DEAD_AFTER_S = 2.0
"""`node_dead_after_s` here (its lowest allowed value: a quick test)."""
RESUME_GRACE_S = 4.0
"""`resume_grace_s` here."""
ROOM = "mdt-1"


def _token(idp: DevelopmentIdP, sub: str, role: str = "specialist") -> str:
    return idp.mint(sub=sub, role=role, depts=["cardiology"], rooms=[ROOM])


async def _resume(
    http: aiohttp.ClientSession, url: str, token: str, joined: dict[str, Any], **changes: str
) -> tuple[aiohttp.ClientWebSocketResponse, aiohttp.WSMessage]:
    """A `resume` of the participant `joined` names, on the node at `url`: the socket and the
    server's first answer (a close frame when refused)."""
    ws = await http.ws_connect(url.replace("http", "ws") + "/ws")
    resume = {"type": "resume", "token": token, "participant_id": joined["participant_id"],
              "resume_token": joined["resume_token"], "last_seq": 0, **changes}  # fmt: skip
    await ws.send_json(resume)
    return ws, await ws.receive(timeout=DEAD_AFTER_S + 10)


async def test_a_lost_nodes_participant_resumes_on_another_node_as_the_same_participant(
    serve_process: Any, redis_url: str, tmp_path: Path
) -> None:
    env = {"CONSILIUM_NODE_DEAD_AFTER_S": str(DEAD_AFTER_S),
           "CONSILIUM_RESUME_GRACE_S": str(RESUME_GRACE_S)}  # fmt: skip
    a, b, idp = two_nodes(serve_process, redis_url, tmp_path, env)
    chair_token = _token(idp, "dr-chair", "chair")
    async with aiohttp.ClientSession() as http:
        chair, joined = await ws_join(http, a.url, chair_token, ROOM)
        spec, _ = await ws_join(http, b.url, _token(idp, "dr-heart"), ROOM)
        await next_message(chair, "participant_joined")
        chair_id = joined["participant_id"]

        # A is alive: its participant is its own to hold, and a resume on B is refused.
        _ws, first = await _resume(http, b.url, chair_token, joined)
        assert (first.type, first.data, first.extra) == (
            aiohttp.WSMsgType.CLOSE, 4410, "unknown_participant"
        )  # fmt: skip

        a.stop(signal.SIGKILL)
        held = await next_message(spec, "participant_reconnecting", timeout=DEAD_AFTER_S + 8)
        assert held == {"type": "participant_reconnecting", "participant_id": chair_id,
                        "reconnecting": True}  # fmt: skip

        # The wrong secret, or someone else's token: refused, the participant still held.
        _ws, first = await _resume(http, b.url, chair_token, joined, resume_token="guess")
        assert (first.data, first.extra) == (4410, "bad_resume_token")
        _ws, first = await _resume(http, b.url, _token(idp, "dr-other", "chair"), joined)
        assert (first.data, first.extra) == (4410, "other_identity")

        ws, first = await _resume(http, b.url, chair_token, joined)
        assert json.loads(first.data) == {"type": "resumed", "participant_id": chair_id,
                                          "last_seq": 0, "replayed": False}  # fmt: skip
        again = await next_message(ws, timeout=5)
        assert again["type"] == "joined" and again["participant_id"] == chair_id
        assert {x["sub"] for x in again["participants"]} == {"dr-chair", "dr-heart"}
        assert "admit" in again["permissions"], "still the chair: no lobby, the same rights"
        assert again["resume_token"] not in ("", joined["resume_token"]), "a new secret"
        back = await next_message(spec, "participant_reconnecting", timeout=5)
        assert back["participant_id"] == chair_id and back["reconnecting"] is False

        # The grace period passes: taken over, the chair stays; the room goes on through B.
        await ws.send_json({"type": "update_room", "lobby": True})
        assert (await next_message(spec, "room_updated", timeout=5))["room"]["lobby"] is True
        await no_message(spec, "participant_left", RESUME_GRACE_S + 2)
        # The old secret is spent: only the new one resumes.
        _ws, first = await _resume(http, b.url, chair_token, joined)
        assert (first.data, first.extra) == (4410, "bad_resume_token")

        resumes = list(iter_entries(b.data_dir / "audit", action="resume"))
        assert [(e.outcome, e.reason) for e in resumes] == [
            ("deny", "unknown_participant"), ("deny", "bad_resume_token"),
            ("deny", "other_identity"), ("allow", None), ("deny", "bad_resume_token"),
        ]  # fmt: skip
        allowed = resumes[3].fields
        node_a = a.url.removeprefix("http://").split("/")[0]
        assert allowed["replayed"] is False and allowed["lost_node"].endswith(node_a[-6:])
        for socket in (ws, spec):
            await socket.close()


async def test_a_stalled_node_taken_for_dead_takes_its_participant_back(
    serve_process: Any, redis_url: str, tmp_path: Path
) -> None:
    """Node A's process stops (SIGSTOP: its connections stay open, its heartbeat runs out) long
    enough for B to take it for dead and hold its participant for a resume elsewhere; then it
    runs again (SIGCONT). The participant never left: A finds them held as lost and makes them
    its own again (the room sees them back), and their connection to A goes on."""
    env = {"CONSILIUM_NODE_DEAD_AFTER_S": str(DEAD_AFTER_S),
           "CONSILIUM_RESUME_GRACE_S": str(RESUME_GRACE_S)}  # fmt: skip
    a, b, idp = two_nodes(serve_process, redis_url, tmp_path, env)
    async with aiohttp.ClientSession() as http:
        chair, joined = await ws_join(http, a.url, _token(idp, "dr-chair", "chair"), ROOM)
        spec, _ = await ws_join(http, b.url, _token(idp, "dr-heart"), ROOM)
        await next_message(chair, "participant_joined")
        chair_id = joined["participant_id"]

        a.proc.send_signal(signal.SIGSTOP)
        try:
            held = await next_message(spec, "participant_reconnecting", timeout=DEAD_AFTER_S + 8)
            assert (held["participant_id"], held["reconnecting"]) == (chair_id, True)
        finally:
            a.proc.send_signal(signal.SIGCONT)
        back = await next_message(spec, "participant_reconnecting", timeout=RESUME_GRACE_S)
        assert (back["participant_id"], back["reconnecting"]) == (chair_id, False)
        # The chair's connection to A still works, as the chair's.
        await chair.send_json({"type": "update_room", "lobby": True})
        assert (await next_message(spec, "room_updated", timeout=5))["room"]["lobby"] is True
        await no_message(spec, "participant_left", RESUME_GRACE_S + 1)
        for socket in (chair, spec):
            await socket.close()
