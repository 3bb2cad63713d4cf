"""The signalling WebSocket end to end, against a real in-process node."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
import time
from pathlib import Path

import aiohttp
import pytest

from signaling.audit import iter_entries
from tests.fixtures.servers import (
    RunningNode,
    close_code,
    eventually,
    next_message,
    node_settings,
    running_node,
)


def audit_actions(node: RunningNode, **filters: str) -> list[tuple[str, str | None]]:
    """(action, reason) of every audit entry matching the filters."""
    return [(e.action, e.reason) for e in iter_entries(node.data_dir / "audit", **filters)]


async def test_chair_opens_room_and_specialist_joins(dev_node: RunningNode) -> None:
    chair, joined = await dev_node.join("dr-chair", "chair")
    assert joined["type"] == "joined"
    assert "admit" in joined["permissions"] and "mute_others" in joined["permissions"]
    assert joined["room"]["room_id"] == "mdt-1"

    _spec, joined2 = await dev_node.join("dr-heart", "specialist")
    assert joined2["type"] == "joined"
    assert {p["sub"] for p in joined2["participants"]} == {"dr-chair", "dr-heart"}
    assert "admit" not in joined2["permissions"]
    seen = await next_message(chair, "participant_joined")
    assert seen["participant"]["sub"] == "dr-heart"
    assert ("join", None) in audit_actions(dev_node, sub="dr-heart")


async def test_first_message_must_be_join(dev_node: RunningNode) -> None:
    ws = await dev_node.connect()
    await ws.send_json({"type": "ping"})
    assert await close_code(ws) == 4401


@pytest.mark.parametrize(
    "payload",
    [b"\x00\x01binary", "not json", json.dumps({"type": "nonsense"}), json.dumps([1, 2])],
)
async def test_garbage_first_message_is_unauthenticated(
    dev_node: RunningNode, payload: bytes | str
) -> None:
    ws = await dev_node.connect()
    if isinstance(payload, bytes):
        await ws.send_bytes(payload)
    else:
        await ws.send_str(payload)
    assert await close_code(ws) == 4401


async def test_invalid_token_is_refused_and_audited(dev_node: RunningNode) -> None:
    ws = await dev_node.connect()
    await ws.send_json({"type": "join", "token": "eyJhbGciOiJub25lIn0.e30.", "room": "mdt-1"})
    assert await close_code(ws) == 4401
    refusals = [a for a in audit_actions(dev_node, action="join_refused")]
    assert refusals and refusals[-1][1]


async def test_expired_token_is_refused(dev_node: RunningNode) -> None:
    ws = await dev_node.connect()
    token = dev_node.token("dr-late", "specialist", ttl_s=-120)
    await ws.send_json({"type": "join", "token": token, "room": "mdt-1"})
    assert await close_code(ws) == 4401


async def test_room_not_granted_is_not_allowed(dev_node: RunningNode) -> None:
    ws = await dev_node.connect()
    token = dev_node.token("dr-x", "chair", rooms=["other-room"])
    await ws.send_json({"type": "join", "token": token, "room": "mdt-1"})
    assert await close_code(ws) == 4403
    assert any(r and "room_not_granted" in r for _, r in audit_actions(dev_node, sub="dr-x"))


@pytest.mark.parametrize("role", ["archivist", "admin", "auditor"])
async def test_non_clinical_roles_never_join_a_live_room(dev_node: RunningNode, role: str) -> None:
    await dev_node.join("dr-chair", "chair")
    other = await dev_node.connect()
    await other.send_json(
        {"type": "join", "token": dev_node.token(f"u-{role}", role), "room": "mdt-1"}
    )
    assert await close_code(other) == 4403
    reasons = [r for _, r in audit_actions(dev_node, sub=f"u-{role}")]
    assert any(r and "separation_of_duties" in r for r in reasons)


async def test_clinical_role_without_mfa_is_refused(dev_node: RunningNode) -> None:
    ws = await dev_node.connect()
    token = dev_node.token("dr-nomfa", "chair", amr=["pwd"])
    await ws.send_json({"type": "join", "token": token, "room": "mdt-1"})
    assert await close_code(ws) == 4403
    assert any(r and "mfa" in r for _, r in audit_actions(dev_node, sub="dr-nomfa"))


async def test_other_department_needs_a_grant(dev_node: RunningNode) -> None:
    await dev_node.join("dr-chair", "chair")
    _, answer = await dev_node.join("dr-onc", "specialist", depts=["oncology"])
    assert answer == {"type": "closed", "code": 4403}
    granted = dev_node.node
    assert granted is not None
    room = await granted.store.get_room("mdt-1")
    assert room is not None
    room.grants = ["sub:dr-onc"]
    await granted.store.save_room(room)
    _, answer = await dev_node.join("dr-onc", "specialist", depts=["oncology"])
    assert answer["type"] == "joined"


async def test_foreign_origin_is_refused_at_upgrade(dev_node: RunningNode) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await dev_node.connect(headers={"Origin": "https://evil.example"})
    assert info.value.status == 403
    ws = await dev_node.connect(headers={"Origin": dev_node.url})
    await ws.send_json({"type": "ping"})
    assert await close_code(ws) == 4401


async def test_oversized_message_closes_with_bad_message(dev_node: RunningNode) -> None:
    ws, _ = await dev_node.join("dr-chair", "chair")
    await ws.send_str("x" * (2 * 1024 * 1024))
    assert await close_code(ws) == 4400
    assert ("bad_message", "message_too_large") in audit_actions(dev_node, sub="dr-chair")
    # The node keeps serving everyone else.
    _, answer = await dev_node.join("dr-next", "chair", room="mdt-2")
    assert answer["type"] == "joined"


@pytest.mark.parametrize(
    "payload", ["{not json", json.dumps({"type": "teleport"}), json.dumps({"type": "mute"})]
)
async def test_bad_message_after_join_closes_4400(dev_node: RunningNode, payload: str) -> None:
    ws, _ = await dev_node.join("dr-chair", "chair")
    await ws.send_str(payload)
    assert await close_code(ws) == 4400


async def test_binary_frame_after_join_closes_4400(dev_node: RunningNode) -> None:
    ws, _ = await dev_node.join("dr-chair", "chair")
    await ws.send_bytes(b"\x01\x02")
    assert await close_code(ws) == 4400
    assert ("bad_message", "binary_frame") in audit_actions(dev_node, sub="dr-chair")


async def test_ping_pong(dev_node: RunningNode) -> None:
    ws, _ = await dev_node.join("dr-chair", "chair")
    await ws.send_json({"type": "ping", "id": 7})
    pong = await next_message(ws, "pong")
    assert pong["id"] == 7 and abs(pong["server_time"] - time.time()) < 5


async def test_message_flood_is_rate_limited(dev_node: RunningNode) -> None:
    ws, _ = await dev_node.join("dr-chair", "chair")
    for i in range(500):
        await ws.send_json({"type": "ping", "id": i})
    assert await close_code(ws) == 4429
    assert ("rate_limited", "messages_per_second") in audit_actions(dev_node, sub="dr-chair")


async def test_second_connection_replaces_the_first(dev_node: RunningNode) -> None:
    first, _ = await dev_node.join("dr-chair", "chair")
    _second, answer = await dev_node.join("dr-chair", "chair")
    assert answer["type"] == "joined"
    assert await close_code(first) == 4409
    assert [p["sub"] for p in answer["participants"]] == ["dr-chair"]


async def test_lobby_knock_admit_and_deny(dev_node: RunningNode) -> None:
    chair, _ = await dev_node.join("dr-chair", "chair")
    await chair.send_json({"type": "update_room", "lobby": True})
    assert (await next_message(chair, "room_updated"))["room"]["lobby"] is True

    guest, waiting = await dev_node.join("dr-heart", "specialist")
    assert waiting["type"] == "lobby" and waiting["reason"] == "lobby_enabled"
    knock = await next_message(chair, "knock")
    assert knock["participant"]["sub"] == "dr-heart"
    # Waiting people cannot act in the room.
    await guest.send_json({"type": "set_media", "audio_muted": True})
    assert (await next_message(guest, "error"))["code"] == "not_admitted"

    await chair.send_json(
        {"type": "admit", "participant_id": knock["participant"]["participant_id"]}
    )
    admitted = await next_message(guest, "joined")
    assert admitted["participant_id"] == knock["participant"]["participant_id"]

    other, waiting2 = await dev_node.join("dr-lung", "specialist")
    assert waiting2["type"] == "lobby"
    knock2 = await next_message(chair, "knock")
    await chair.send_json(
        {"type": "deny", "participant_id": knock2["participant"]["participant_id"]}
    )
    assert await close_code(other) == 4403
    assert ("admit", None) in audit_actions(dev_node, sub="dr-heart")
    assert any(a == "deny" for a, _ in audit_actions(dev_node, sub="dr-lung"))


async def test_chair_mutes_and_removes(dev_node: RunningNode) -> None:
    chair, _ = await dev_node.join("dr-chair", "chair")
    spec, joined = await dev_node.join("dr-heart", "specialist")
    pid = joined["participant_id"]
    await chair.send_json({"type": "mute", "participant_id": pid, "kind": "audio"})
    update = await next_message(spec, "participant_updated")
    assert update["participant"]["audio_muted"] is True
    await chair.send_json({"type": "remove", "participant_id": pid, "reason": "disruptive"})
    assert await close_code(spec) == 4403
    left = await next_message(chair, "participant_left")
    assert left == {"type": "participant_left", "participant_id": pid, "reason": "removed"}
    actions = audit_actions(dev_node, sub="dr-heart")
    assert ("mute", None) in actions and ("remove", "removed_by_chair") in actions
    assert "disruptive" not in (dev_node.data_dir / "audit" / "audit-000001.jsonl").read_text()


async def test_join_timeout_closes_4408(tmp_path) -> None:
    settings = node_settings(tmp_path / "d", join_timeout_s=0.3)
    async with running_node(settings) as node:
        ws = await node.connect()
        assert await close_code(ws, timeout=3) == 4408


async def test_missed_keepalive_closes_4408(tmp_path) -> None:
    settings = node_settings(tmp_path / "d", keepalive_timeout_s=0.3)
    async with running_node(settings) as node:
        ws, _ = await node.join("dr-chair", "chair")
        assert await close_code(ws, timeout=3) == 4408


async def test_join_attempts_per_ip_are_bounded(tmp_path) -> None:
    settings = node_settings(tmp_path / "d", join_attempts_per_ip_per_min=3)
    async with running_node(settings) as node:
        for _ in range(3):
            await node.connect()
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await node.connect()
        assert info.value.status == 429


async def test_many_silent_connections_do_not_stop_others(tmp_path) -> None:
    settings = node_settings(
        tmp_path / "d",
        join_timeout_s=1.0,
        join_attempts_per_ip_per_min=10_000,
        max_pending_connections=1000,
    )
    async with running_node(settings) as node:
        silent = await asyncio.gather(*(node.connect() for _ in range(500)))
        _, answer = await node.join("dr-chair", "chair")
        assert answer["type"] == "joined"
        codes = await asyncio.gather(*(close_code(ws, timeout=10) for ws in silent))
        assert set(codes) == {4408}


async def test_revocation_closes_live_connections(dev_node: RunningNode) -> None:
    chair, _ = await dev_node.join("dr-chair", "chair")
    spec, _ = await dev_node.join("dr-heart", "specialist")
    http = await dev_node.session()
    admin = dev_node.token("it-admin", "admin", rooms=[], depts=["it"])
    started = time.monotonic()
    r = await http.post(
        dev_node.url + "/api/revocations",
        json={"sub": "dr-heart", "reason": "lost laptop"},
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert r.status == 201, await r.text()
    assert await close_code(spec, timeout=2) == 4401
    assert time.monotonic() - started < 2
    # Refused from then on.
    again, _ = await dev_node.join("dr-heart", "specialist")
    assert await close_code(again) == 4401
    assert ("revoke", "lost laptop") in audit_actions(dev_node, sub="dr-heart")
    left = await next_message(chair, "participant_left")
    assert left["reason"] == "revoked"


async def test_revoke_one_token_by_jti(dev_node: RunningNode) -> None:
    import jwt

    token = dev_node.token("dr-heart", "chair")
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    ws = await dev_node.connect()
    await ws.send_json({"type": "join", "token": token, "room": "mdt-1"})
    await next_message(ws, "joined")
    http = await dev_node.session()
    admin = dev_node.token("it-admin", "admin", rooms=[], depts=["it"])
    r = await http.post(
        dev_node.url + "/api/revocations",
        json={"jti": jti},
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert r.status == 201
    assert await close_code(ws, timeout=2) == 4401
    # A fresh token of the same person still works.
    _, answer = await dev_node.join("dr-heart", "chair")
    assert answer["type"] == "joined"


async def test_chair_cannot_revoke(dev_node: RunningNode) -> None:
    http = await dev_node.session()
    r = await http.post(
        dev_node.url + "/api/revocations",
        json={"sub": "x"},
        headers={"Authorization": f"Bearer {dev_node.token('dr-chair', 'chair')}"},
    )
    assert r.status == 403
    body = await r.json()
    assert body["error"] == "not_allowed" and body["message"]


async def test_api_errors_are_json(dev_node: RunningNode) -> None:
    http = await dev_node.session()
    r = await http.get(dev_node.url + "/api/nothing-here")
    assert r.status == 404 and (await r.json())["error"] == "not_found"
    r = await http.post(dev_node.url + "/api/revocations", json={"sub": "x"})
    assert r.status == 401 and (await r.json())["error"] == "not_authenticated"
    admin = dev_node.token("it-admin", "admin", rooms=[], depts=["it"])
    r = await http.post(
        dev_node.url + "/api/revocations",
        data="{nope",
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert r.status == 400 and (await r.json())["error"] == "bad_message"
    r = await http.post(
        dev_node.url + "/api/revocations",
        json={"sub": "a", "jti": "b"},
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert r.status == 400


async def test_only_auditor_reads_audit_over_api(dev_node: RunningNode) -> None:
    await dev_node.join("dr-chair", "chair")
    http = await dev_node.session()
    for role in ("admin", "chair", "archivist"):
        token = dev_node.token(f"u-{role}", role, rooms=[], depts=["it"])
        r = await http.get(
            dev_node.url + "/api/audit", headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status == 403, role
    auditor = dev_node.token("u-aud", "auditor", rooms=[], depts=["compliance"])
    r = await http.get(
        dev_node.url + "/api/audit?action=join", headers={"Authorization": f"Bearer {auditor}"}
    )
    assert r.status == 200
    entries = (await r.json())["entries"]
    assert entries and all(e["action"] == "join" for e in entries)
    assert all("token" not in json.dumps(e).lower() for e in entries)


async def test_security_headers_on_pages(dev_node: RunningNode) -> None:
    http = await dev_node.session()
    r = await http.get(dev_node.url + "/")
    assert r.status == 200
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in r.headers["Content-Security-Policy"]
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    r = await http.get(dev_node.url + "/../pyproject.toml")
    assert r.status == 404
    r = await http.get(dev_node.url + "/healthz")
    assert (await r.json())["status"] == "ok"


async def test_leaving_empties_and_closes_an_adhoc_room(dev_node: RunningNode) -> None:
    chair, _ = await dev_node.join("dr-chair", "chair")
    await chair.send_json({"type": "leave"})
    assert await close_code(chair) == 1000
    assert dev_node.node is not None
    store = dev_node.node.store
    await eventually(lambda: _room_gone(store))


async def _room_gone(store) -> bool:  # type: ignore[no-untyped-def]
    return await store.get_room("mdt-1") is None


async def test_sweep_drops_a_revoked_connection_whose_event_was_missed(
    dev_node: RunningNode,
) -> None:
    from signaling.state.records import Revocation

    ws, _ = await dev_node.join("dr-chair", "chair")
    assert dev_node.node is not None
    store = dev_node.node.store
    # As if the event never reached this node (e.g. during a Redis reconnect): the revocation
    # is in the node's copy of the list, but no event is delivered.
    store._revocations.add(
        Revocation(kind="sub", value="dr-chair", reason="t", by="it", at=time.time(),
                   expires_at=None)
    )  # fmt: skip
    assert await close_code(ws, timeout=3) == 4401


async def test_joined_hands_out_stun_and_time_limited_turn_credentials(tmp_path: Path) -> None:
    settings = node_settings(
        tmp_path / "d",
        stun_urls=["stun:turn.hospital.test:3478"],
        turn_urls=["turn:turn.hospital.test:3478?transport=udp"],
        turn_secret="coturn-secret",
    )
    async with running_node(settings) as node:
        _, joined = await node.join("dr-chair", "chair")
    servers = joined["ice_servers"]
    assert {"urls": ["stun:turn.hospital.test:3478"]} in servers
    turn = next(s for s in servers if "username" in s)
    expiry, _, user = turn["username"].partition(":")
    assert user == "dr-chair" and int(expiry) > time.time() + 3600
    assert turn["credential"] and turn["credential"] != "coturn-secret"


async def test_leaving_is_cleaned_up_without_waiting_for_the_close_handshake(
    dev_node: RunningNode,
) -> None:
    """A `leave` from a client that does not answer the close frame (it never reads again):
    the others see it leave at once, and the same person joins again 0.2 s later and is seen."""
    chair, _ = await dev_node.join("dr-chair", "chair")
    spec, _ = await dev_node.join("dr-heart", "specialist")
    await next_message(chair, "participant_joined")
    started = time.monotonic()
    await spec.send_json({"type": "leave"})  # and never read the server's close frame
    left = await next_message(chair, "participant_left", timeout=1.5)
    assert left.get("reason", "left") == "left" and time.monotonic() - started < 1.5

    await asyncio.sleep(0.2)
    _, again = await dev_node.join("dr-heart", "specialist")
    assert again["type"] == "joined"
    assert {p["sub"] for p in again["participants"]} == {"dr-chair", "dr-heart"}
    seen = await next_message(chair, "participant_joined")
    assert seen["participant"]["participant_id"] == again["participant_id"]
    assert dev_node.node is not None
    store = dev_node.node.store
    # Past any close handshake the old socket could still be in, both are in the room.
    await asyncio.sleep(3)
    assert {p.sub for p in await store.list_participants("mdt-1")} == {"dr-chair", "dr-heart"}


async def test_a_client_that_vanished_leaves_the_room_when_its_keepalive_is_missed(
    tmp_path: Path,
) -> None:
    settings = node_settings(tmp_path / "d", keepalive_timeout_s=0.5)
    async with running_node(settings) as node:
        chair, _ = await node.join("dr-chair", "chair")
        _spec, _ = await node.join("dr-heart", "specialist")
        started = time.monotonic()
        # The chair keeps pinging; the specialist's client is gone (it neither sends nor reads).
        while time.monotonic() - started < 3:
            await chair.send_json({"type": "ping", "id": 1})
            with contextlib.suppress(AssertionError, TimeoutError):
                left = await next_message(chair, "participant_left", timeout=0.2)
                break
        else:
            raise AssertionError("the vanished client is still in the room after 3 s")
        # The keepalive (0.5 s) and the clean-up, not a 10 s close handshake after it.
        assert left["reason"] == "timed_out" and time.monotonic() - started < 2.5


async def test_a_client_that_pings_but_never_reads_is_dropped_when_its_queue_is_full(
    tmp_path: Path,
) -> None:
    """A real client that sends pings but never reads: dropped (4408) once its bounded queue is
    full, long before megabytes pile up, and audited as dropped (slow consumer), not as left."""
    settings = node_settings(tmp_path / "d", messages_per_s=5000, message_burst=5000)
    async with running_node(settings) as node:
        chair, _ = await node.join("dr-chair", "chair")
        reader = await _raw_websocket(node)
        token = node.token("dr-slow", "specialist")
        reader.sendall(_client_frame(json.dumps({"type": "join", "token": token, "room": "mdt-1"})))
        joined = await next_message(chair, "participant_joined")
        slow_id = joined["participant"]["participant_id"]
        assert node.node is not None
        rooms = node.node.rooms
        updates, sent_bytes = 0, 0
        lefts: list[dict[str, object]] = []
        while slow_id in rooms.connections:
            assert sent_bytes < 2_000_000, "megabytes queued for a client that does not read"
            for _ in range(50):
                muted = updates % 2 == 0
                await chair.send_json({"type": "set_media", "audio_muted": muted})
                updates += 1
            reader.sendall(_client_frame(json.dumps({"type": "ping", "id": updates})))
            # Every update is broadcast to both; the chair reads its own copies.
            while True:
                try:
                    msg = await chair.receive(timeout=0.05)
                except TimeoutError:
                    break
                assert msg.type is aiohttp.WSMsgType.TEXT, (msg, chair.close_code)
                data = json.loads(msg.data)
                if data["type"] == "participant_updated":
                    sent_bytes += len(msg.data)
                elif data["type"] == "participant_left":
                    lefts.append(data)
        (left,) = lefts or [await next_message(chair, "participant_left")]
        assert left == {"type": "participant_left", "participant_id": slow_id,
                        "reason": "slow_consumer"}  # fmt: skip
        assert ("dropped", "slow_consumer") in audit_actions(node, sub="dr-slow")
        assert ("leave", "left") not in audit_actions(node, sub="dr-slow")
        reader.close()


async def _raw_websocket(node: RunningNode) -> socket.socket:
    """A WebSocket opened over a plain socket, with a small receive buffer, that the test never
    reads from (aiohttp's client would read into its own buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    port = int(node.url.rsplit(":", 1)[1])
    await asyncio.to_thread(sock.connect, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += await asyncio.to_thread(sock.recv, 1)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return sock


def _client_frame(text: str) -> bytes:
    """One masked text frame (RFC 6455 §5.2), as a client sends it."""
    payload = text.encode()
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = bytes([0x81, 0x80 | n])
    elif n < 65536:
        header = bytes([0x81, 0x80 | 126]) + struct.pack("!H", n)
    else:
        header = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", n)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def test_a_connection_lost_without_a_close_is_not_reported_as_a_shutdown(
    tmp_path: Path,
) -> None:
    # A short grace period: the participant is held for a resume first, then leaves.
    async with running_node(node_settings(tmp_path / "data", resume_grace_s=0.5)) as dev_node:
        chair, _ = await dev_node.join("dr-chair", "chair")
        sock = await _raw_websocket(dev_node)
        token = dev_node.token("dr-gone", "specialist")
        frame = _client_frame(json.dumps({"type": "join", "token": token, "room": "mdt-1"}))
        sock.sendall(frame)
        await next_message(chair, "participant_joined")
        # The tab crashed: a TCP reset, no close frame.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        await next_message(chair, "participant_reconnecting")
        left = await next_message(chair, "participant_left")
        assert left["reason"] == "connection_lost"
        assert ("leave", "connection_lost") in audit_actions(dev_node, sub="dr-gone")
