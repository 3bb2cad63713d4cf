"""Two `consilium serve` processes sharing one real redis-server behave as one service."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

from signaling.devidp import DEV_AUDIENCE, DEV_ISSUER, DevelopmentIdP
from tests.fixtures.media import join_over_ws
from tests.fixtures.servers import (
    close_code,
    eventually,
    free_port,
    next_message,
    node_settings,
    running_node,
)


async def _join(
    http: aiohttp.ClientSession, url: str, token: str, room: str = "mdt-1"
) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    ws = await http.ws_connect(url.replace("http", "ws") + "/ws")
    await ws.send_json({"type": "join", "token": token, "room": room})
    return ws, await next_message(ws)


async def test_two_nodes_share_rooms_lobby_and_revocations(
    serve_process: Any, redis_url: str, tmp_path: Path
) -> None:
    a = serve_process("--redis", redis_url, data_dir=tmp_path / "a")
    idp = DevelopmentIdP.load_or_create(a.data_dir)
    b = serve_process(
        "--redis", redis_url, data_dir=tmp_path / "b",
        env={"CONSILIUM_JWKS": str(idp.jwks_path), "CONSILIUM_JWT_ISSUER": DEV_ISSUER,
             "CONSILIUM_JWT_AUDIENCE": DEV_AUDIENCE},
    )  # fmt: skip

    def token(sub: str, role: str, **kw: Any) -> str:
        kw.setdefault("depts", ["cardiology"])
        kw.setdefault("rooms", ["mdt-1"])
        return idp.mint(sub=sub, role=role, **kw)

    async with aiohttp.ClientSession() as http:
        chair, joined = await _join(http, a.url, token("dr-chair", "chair"))
        assert joined["type"] == "joined"

        spec, joined_b = await _join(http, b.url, token("dr-heart", "specialist"))
        assert joined_b["type"] == "joined"
        assert {p["sub"] for p in joined_b["participants"]} == {"dr-chair", "dr-heart"}
        seen = await next_message(chair, "participant_joined")
        assert seen["participant"]["sub"] == "dr-heart"

        # Lobby across nodes: the chair on A admits someone waiting on B.
        await chair.send_json({"type": "update_room", "lobby": True})
        await next_message(chair, "room_updated")
        guest, waiting = await _join(http, b.url, token("dr-lung", "specialist"))
        assert waiting["type"] == "lobby"
        knock = await next_message(chair, "knock")
        await chair.send_json(
            {"type": "admit", "participant_id": knock["participant"]["participant_id"]}
        )
        assert (await next_message(guest, "joined"))["you"]["sub"] == "dr-lung"

        # A second connection of the same identity on the other node replaces the first.
        _, again = await _join(http, a.url, token("dr-lung", "specialist"))
        assert again["type"] == "joined"
        assert await close_code(guest) == 4409

        # Revocation on A drops the connection held by B within 2 s.
        admin = idp.mint(sub="it-1", role="admin", depts=["it"])
        started = time.monotonic()
        r = await http.post(
            a.url + "/api/revocations", json={"sub": "dr-heart", "reason": "test"},
            headers={"Authorization": f"Bearer {admin}"},
        )  # fmt: skip
        assert r.status == 201
        assert await close_code(spec, timeout=2) == 4401
        assert time.monotonic() - started < 2
        refused, answer = await _join_or_close(http, b.url, token("dr-heart", "specialist"))
        assert answer == 4401
        await refused.close()


async def _join_or_close(
    http: aiohttp.ClientSession, url: str, token: str
) -> tuple[aiohttp.ClientWebSocketResponse, int | None]:
    ws = await http.ws_connect(url.replace("http", "ws") + "/ws")
    await ws.send_json({"type": "join", "token": token, "room": "mdt-1"})
    return ws, await close_code(ws)


async def test_redis_outage_refuses_joins_with_4500_then_recovers(tmp_path: Path) -> None:
    executable = shutil.which("redis-server")
    assert executable, "redis-server is installed by scripts/test"
    port = free_port()
    args = [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(tmp_path)]  # fmt: skip

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return proc
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    redis_proc = start()
    settings = node_settings(tmp_path / "d", redis=f"redis://127.0.0.1:{port}/0")
    try:
        async with running_node(settings) as node:
            _, answer = await node.join("dr-chair", "chair", room="before")
            assert answer["type"] == "joined"
            redis_proc.terminate()
            redis_proc.wait()
            _, answer = await node.join("dr-two", "chair", room="during")
            assert answer == {"type": "closed", "code": 4500}
            redis_proc = start()
            for _ in range(50):
                _, answer = await node.join("dr-three", "chair", room="after")
                if answer["type"] == "joined":
                    break
                await asyncio.sleep(0.2)
            assert answer["type"] == "joined"
    finally:
        redis_proc.terminate()
        redis_proc.wait()


async def test_media_of_a_room_spanning_two_nodes_flows_through_one_sfu(
    serve_process: Any, redis_url: str, tmp_path: Path, loopback_ice: None
) -> None:
    """Participants of one room whose signalling lands on different nodes exchange media: the
    room's media lives on the first node that claimed it; the other node relays SDP/ICE."""
    ice = {"CONSILIUM_ICE_HOST_ADDRESSES": "127.0.0.1"}
    a = serve_process("--redis", redis_url, data_dir=tmp_path / "a", env=ice)
    idp = DevelopmentIdP.load_or_create(a.data_dir)
    b = serve_process(
        "--redis", redis_url, data_dir=tmp_path / "b",
        env={**ice, "CONSILIUM_JWKS": str(idp.jwks_path), "CONSILIUM_JWT_ISSUER": DEV_ISSUER,
             "CONSILIUM_JWT_AUDIENCE": DEV_AUDIENCE},
    )  # fmt: skip

    def token(sub: str) -> str:
        return idp.mint(sub=sub, role="chair", depts=["cardiology"], rooms=["span"])

    async with aiohttp.ClientSession() as http:
        first = await join_over_ws(http, a.url, token("dr-a"), "span")
        second = await join_over_ws(http, b.url, token("dr-b"), "span")
        try:
            await eventually(
                lambda: (
                    first.client.stats.frames("video") > 5
                    and second.client.stats.frames("video") > 5
                ),
                timeout=30,
            )
            metrics_a = await _metrics(http, a.url)
            metrics_b = await _metrics(http, b.url)
            assert metrics_a["consilium_sfu_participants"] == 2
            assert metrics_b["consilium_sfu_participants"] == 0
        finally:
            await first.close()
            await second.close()


async def _metrics(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with http.get(url + "/metrics") as r:
        return {k: float(v) for k, v in (line.split(" ") for line in (await r.text()).splitlines())}
