"""Resuming a dropped signalling connection, over real WebSockets against a running node."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import aiohttp

from signaling.devidp import DEV_AUDIENCE, DEV_ISSUER
from signaling.state.records import Revocation
from tests.fixtures.servers import (
    RunningNode,
    close_code,
    eventually,
    next_message,
    node_settings,
    running_node,
)
from tests.test_signaling import audit_actions


def _cut(ws: aiohttp.ClientWebSocketResponse) -> None:
    """The network went away under a client: its TCP connection ends with no close frame."""
    transport = ws._conn.transport if ws._conn is not None else None
    assert transport is not None
    transport.abort()


async def _resume(
    node: RunningNode, sub: str, joined: dict[str, Any], last_seq: int, **kw: Any
) -> tuple[aiohttp.ClientWebSocketResponse, aiohttp.WSMessage]:
    """Open a new socket whose first message is `resume`; the socket and the first answer."""
    ws = await node.connect()
    token = kw.pop("token", None) or node.token(sub)
    await ws.send_json({
        "type": "resume", "token": token, "participant_id": joined["participant_id"],
        "resume_token": kw.pop("resume_token", joined["resume_token"]), "last_seq": last_seq,
    })  # fmt: skip
    return ws, await ws.receive(timeout=5.0)


async def _drain(ws: aiohttp.ClientWebSocketResponse, quiet_s: float = 0.3) -> list[dict[str, Any]]:
    """Every message until the socket is quiet for `quiet_s`."""
    seen: list[dict[str, Any]] = []
    with contextlib.suppress(AssertionError, TimeoutError):
        while True:
            seen.append(await next_message(ws, timeout=quiet_s))
    return seen


async def test_a_dropped_participant_resumes_with_what_they_missed_in_order(
    dev_node: RunningNode,
) -> None:
    chair, chair_joined = await dev_node.join("dr-chair", "chair")
    spec, joined = await dev_node.join("dr-heart", "specialist")
    assert joined["resume_token"]
    pid = joined["participant_id"]
    await next_message(chair, "participant_joined")
    # The specialist processes what comes before the drop: their count goes on from there.
    await chair.send_json({"type": "set_media", "audio_muted": True})
    before = await _drain(spec)
    assert [m["type"] for m in before] == ["participant_updated"]
    _cut(spec)
    held = await next_message(chair, "participant_reconnecting")
    assert held == {"type": "participant_reconnecting", "participant_id": pid,
                    "reconnecting": True}  # fmt: skip
    # Meanwhile: the chair mutes them, and someone joins.
    await chair.send_json({"type": "mute", "participant_id": pid, "kind": "video"})
    _third, third = await dev_node.join("dr-lung", "specialist")
    ws, first = await _resume(dev_node, "dr-heart", joined, last_seq=len(before))
    assert first.type is aiohttp.WSMsgType.TEXT, (first, ws.close_code)
    resumed = first.json()
    assert resumed["type"] == "resumed" and resumed["participant_id"] == pid
    missed = await _drain(ws)
    assert resumed["last_seq"] == len(before) + len(missed)
    kinds = [(m["type"], m.get("participant", {}).get("participant_id")) for m in missed]
    assert kinds == [("participant_updated", pid), ("participant_joined", third["participant_id"])]
    assert missed[0]["participant"]["video_muted"] is True
    back = await next_message(chair, "participant_reconnecting")
    assert back["reconnecting"] is False and back["participant_id"] == pid
    # Still in the room under the same id: the chair's mute reaches the resumed socket.
    await chair.send_json({"type": "mute", "participant_id": pid, "kind": "audio"})
    after = await next_message(ws, "participant_updated")
    assert after["participant"]["participant_id"] == pid
    chair_saw = await _drain(chair)
    assert "participant_left" not in [m["type"] for m in chair_saw]
    assert ("resume", None) in audit_actions(dev_node, sub="dr-heart")
    assert ("connection_held", "connection_lost") in audit_actions(dev_node, sub="dr-heart")
    assert chair_joined["type"] == "joined"


async def test_a_resume_of_a_socket_the_server_still_thinks_alive_takes_it_over(
    dev_node: RunningNode,
) -> None:
    """A network switch the server has not noticed yet: the old socket is closed (4409) and
    the new one goes on, with nothing lost and nobody told the participant left."""
    chair, _ = await dev_node.join("dr-chair", "chair")
    old, joined = await dev_node.join("dr-heart", "specialist")
    await next_message(chair, "participant_joined")
    ws, first = await _resume(dev_node, "dr-heart", joined, last_seq=0)
    assert first.json()["type"] == "resumed"
    assert await close_code(old) == 4409
    await chair.send_json({"type": "set_media", "video_muted": True})
    await next_message(ws, "participant_updated")
    assert "participant_left" not in [m["type"] for m in await _drain(chair)]


async def test_a_resume_after_the_grace_period_is_refused_and_the_participant_left(
    tmp_path: Path,
) -> None:
    async with running_node(node_settings(tmp_path / "d", resume_grace_s=0.5)) as node:
        chair, _ = await node.join("dr-chair", "chair")
        spec, joined = await node.join("dr-heart", "specialist")
        await next_message(chair, "participant_joined")
        _cut(spec)
        await next_message(chair, "participant_reconnecting")
        left = await next_message(chair, "participant_left")
        assert left == {"type": "participant_left", "participant_id": joined["participant_id"],
                        "reason": "connection_lost"}  # fmt: skip
        ws, _first = await _resume(node, "dr-heart", joined, last_seq=0)
        assert ws.close_code == 4410 or await close_code(ws) == 4410
        assert ("resume", "unknown_participant") in audit_actions(node, sub="dr-heart")


async def test_a_resume_past_the_grace_period_before_the_timer_is_refused_as_late(
    dev_node: RunningNode,
) -> None:
    chair, _ = await dev_node.join("dr-chair", "chair")
    spec, joined = await dev_node.join("dr-heart", "specialist")
    _cut(spec)
    await next_message(chair, "participant_reconnecting")
    assert dev_node.node is not None
    held = dev_node.node.rooms.connections[joined["participant_id"]]
    assert held.held_since is not None
    held.held_since -= 60  # as if held a minute ago and the timer was late
    _ws, first = await _resume(dev_node, "dr-heart", joined, last_seq=0)
    assert first.type is aiohttp.WSMsgType.CLOSE and first.data == 4410
    assert first.extra == "grace_period_over"


async def test_a_resume_with_a_wrong_resume_token_or_another_identity_is_refused(
    dev_node: RunningNode,
) -> None:
    chair, _ = await dev_node.join("dr-chair", "chair")
    spec, joined = await dev_node.join("dr-heart", "specialist")
    _cut(spec)
    await next_message(chair, "participant_reconnecting")
    _ws, first = await _resume(dev_node, "dr-heart", joined, last_seq=0, resume_token="guess")
    assert (first.type, first.data, first.extra) == (
        aiohttp.WSMsgType.CLOSE, 4410, "bad_resume_token"
    )  # fmt: skip
    _ws, first = await _resume(dev_node, "dr-other", joined, last_seq=0)
    assert (first.data, first.extra) == (4410, "other_identity")
    # Refusals leave the participant held: the right client may still resume.
    ws, first = await _resume(dev_node, "dr-heart", joined, last_seq=0)
    assert first.json()["type"] == "resumed"
    deny = [r for a, r in audit_actions(dev_node) if a == "resume"]
    assert deny == ["bad_resume_token", "other_identity", None]
    assert ws.closed is False


async def test_a_resume_whose_gap_the_buffer_no_longer_covers_is_refused(
    dev_node: RunningNode,
) -> None:
    chair, _ = await dev_node.join("dr-chair", "chair")
    spec, joined = await dev_node.join("dr-heart", "specialist")
    assert dev_node.node is not None
    held = dev_node.node.rooms.connections[joined["participant_id"]]
    assert held.replay is not None
    held.replay.max_messages = 3
    _cut(spec)
    await next_message(chair, "participant_reconnecting")
    for n in range(5):
        await chair.send_json({"type": "set_media", "audio_muted": n % 2 == 0})
    await eventually(lambda: held.replay is not None and held.replay.last_seq >= 5)
    _ws, first = await _resume(dev_node, "dr-heart", joined, last_seq=0)
    assert (first.data, first.extra) == (4410, "messages_lost")
    ws, first = await _resume(dev_node, "dr-heart", joined, last_seq=2)
    assert first.json()["type"] == "resumed"
    assert [m["participant"].get("audio_muted", False) for m in await _drain(ws)] == [
        True,
        False,
        True,
    ]


async def test_a_resume_with_a_revoked_token_is_refused_as_a_join_is(
    dev_node: RunningNode,
) -> None:
    chair, _ = await dev_node.join("dr-chair", "chair")
    spec, joined = await dev_node.join("dr-heart", "specialist")
    _cut(spec)
    await next_message(chair, "participant_reconnecting")
    assert dev_node.node is not None
    await dev_node.node.rooms.revoke(
        Revocation(kind="sub", value="dr-heart", reason="lost laptop", by="it", at=time.time())
    )
    left = await next_message(chair, "participant_left")
    assert left["reason"] == "revoked"
    _ws, first = await _resume(dev_node, "dr-heart", joined, last_seq=0)
    assert first.data == 4401
    assert ("resume", "revoked_sub") in audit_actions(dev_node, sub="dr-heart")


async def test_a_join_of_the_same_identity_replaces_a_held_participant(
    dev_node: RunningNode,
) -> None:
    """The client's fallback after a refused resume: a plain join takes the identity's place."""
    chair, _ = await dev_node.join("dr-chair", "chair")
    spec, joined = await dev_node.join("dr-heart", "specialist")
    _cut(spec)
    await next_message(chair, "participant_reconnecting")
    _again, rejoined = await dev_node.join("dr-heart", "specialist")
    assert rejoined["type"] == "joined"
    left = await next_message(chair, "participant_left")
    assert left["participant_id"] == joined["participant_id"]
    await asyncio.sleep(0.2)
    assert dev_node.node is not None
    assert joined["participant_id"] not in dev_node.node.rooms.connections
    assert not dev_node.node.rooms.reconnects.timers


async def test_with_two_nodes_a_resume_on_the_other_node_is_refused_and_the_rejoin_replaces(
    redis_url: str, tmp_path: Path
) -> None:
    """Holds live on the node that held the connection: a resume that reaches another node is
    refused cleanly (4410, unknown_participant), and the join that follows there replaces the
    held participant on the first node (the room sees one leave, by `replaced`)."""
    async with running_node(node_settings(tmp_path / "a", redis=redis_url)) as a:
        trusting_a = {
            "jwks": str(a.idp.jwks_path), "jwt_issuer": DEV_ISSUER, "jwt_audience": DEV_AUDIENCE,
        }  # fmt: skip
        async with running_node(node_settings(tmp_path / "b", redis=redis_url, **trusting_a)) as b:
            b.idp = a.idp
            chair, _ = await a.join("dr-chair", "chair")
            spec, joined = await a.join("dr-heart", "specialist")
            await next_message(chair, "participant_joined")
            _cut(spec)
            await next_message(chair, "participant_reconnecting")
            _ws, first = await _resume(b, "dr-heart", joined, last_seq=0)
            assert (first.data, first.extra) == (4410, "unknown_participant")
            _again, rejoined = await b.join("dr-heart", "specialist")
            assert rejoined["type"] == "joined"
            left = await next_message(chair, "participant_left")
            assert left["participant_id"] == joined["participant_id"]
            assert left["reason"] == "replaced"
            assert a.node is not None
            await eventually(lambda: joined["participant_id"] not in a.node.rooms.connections)
            assert not a.node.rooms.reconnects.timers


async def test_a_resume_with_an_expired_token_is_refused_as_a_join_is(
    dev_node: RunningNode,
) -> None:
    chair, _ = await dev_node.join("dr-chair", "chair")
    spec, joined = await dev_node.join("dr-heart", "specialist")
    _cut(spec)
    await next_message(chair, "participant_reconnecting")
    expired = dev_node.idp.mint(
        sub="dr-heart", role="specialist", depts=["cardiology"], rooms=["mdt-1"], ttl_s=-600
    )
    _ws, first = await _resume(dev_node, "dr-heart", joined, last_seq=0, token=expired)
    assert first.data == 4401
    assert [r for a, r in audit_actions(dev_node) if a == "resume"] == ["expired"]
