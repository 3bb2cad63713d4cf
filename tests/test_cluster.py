"""Two `consilium serve` processes sharing one real redis-server behave as one service."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from signaling.devidp import DEV_AUDIENCE, DEV_ISSUER, DevelopmentIdP
from tests.fixtures.media import join_over_ws
from tests.fixtures.metrics import samples
from tests.fixtures.redis_server import RedisProcess
from tests.fixtures.servers import (
    LOOPBACK_ICE,
    close_code,
    eventually,
    next_message,
    node_settings,
    running_node,
    two_nodes,
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


async def test_redis_outage_refuses_joins_with_4500_then_recovers(
    restartable_redis: RedisProcess, tmp_path: Path
) -> None:
    settings = node_settings(tmp_path / "d", redis=restartable_redis.url)
    async with running_node(settings) as node:
        http = await node.session()
        admin = {"Authorization": f"Bearer {node.token('it-1', 'admin', depts=['it'])}"}
        _, answer = await node.join("dr-chair", "chair", room="before")
        assert answer["type"] == "joined"
        assert (await http.get(node.url + "/readyz")).status == 200
        restartable_redis.stop()
        _, answer = await node.join("dr-two", "chair", room="during")
        assert answer == {"type": "closed", "code": 4500}
        # Not ready (the load balancer sends new clients elsewhere), though alive.
        r = await http.get(node.url + "/readyz")
        assert r.status == 503 and (await r.json())["shared_state"] == "unreachable"
        assert (await http.get(node.url + "/healthz")).status == 200
        # A revocation that cannot reach every node is refused, as such, not as a crash.
        r = await http.post(
            node.url + "/api/revocations", json={"sub": "dr-two", "reason": "t"}, headers=admin
        )
        assert r.status == 503 and (await r.json())["error"] == "unavailable"
        r = await http.get(node.url + "/api/revocations", headers=admin)
        assert r.status == 503 and (await r.json())["error"] == "unavailable"
        restartable_redis.start()
        for _ in range(50):
            _, answer = await node.join("dr-three", "chair", room="after")
            if answer["type"] == "joined":
                break
            await asyncio.sleep(0.2)
        assert answer["type"] == "joined"
        assert (await http.get(node.url + "/readyz")).status == 200


async def test_redis_restarted_without_persistence_forgets_nothing(
    restartable_redis: RedisProcess, tmp_path: Path
) -> None:
    url = restartable_redis.url
    async with running_node(node_settings(tmp_path / "a", redis=url)) as a:
        http = await a.session()
        chair, joined = await a.join("dr-chair", "chair")
        assert joined["type"] == "joined"
        admin = {"Authorization": f"Bearer {a.token('it-1', 'admin', depts=['it'])}"}
        r = await http.post(
            a.url + "/api/revocations", json={"sub": "dr-bad", "reason": "t"}, headers=admin
        )
        assert r.status == 201
        restartable_redis.stop()
        restartable_redis.start()  # comes back empty

        async def written_back() -> bool:
            probe = aioredis.Redis.from_url(url)
            try:
                return bool(await probe.hlen("consilium:room:{mdt-1}:participants")) and bool(
                    await probe.hlen("consilium:revocations")
                )
            finally:
                await probe.aclose()

        await eventually(written_back, timeout=15)
        # A node started now, with an empty data folder, trusting the same identity provider.
        trusting_a = {
            "jwks": str(a.idp.jwks_path),
            "jwt_issuer": DEV_ISSUER,
            "jwt_audience": DEV_AUDIENCE,
        }
        async with running_node(node_settings(tmp_path / "b", redis=url, **trusting_a)) as b:
            b.idp = a.idp
            _, refused = await b.join("dr-bad", "specialist")
            assert refused == {"type": "closed", "code": 4401}
            r = await http.get(b.url + "/api/revocations", headers=admin)
            assert [entry["value"] for entry in await r.json()] == ["dr-bad"]
            _, joined_b = await b.join("dr-heart", "specialist")
            assert joined_b["type"] == "joined"
            assert {p["sub"] for p in joined_b["participants"]} == {"dr-chair", "dr-heart"}
            seen = await next_message(chair, "participant_joined")
            assert seen["participant"]["sub"] == "dr-heart"


async def test_redis_with_append_only_persistence_keeps_rooms_scheduled_ahead(
    restartable_redis_aof: RedisProcess, tmp_path: Path
) -> None:
    """With AOF, as docs/operations.md asks IT to configure, a Redis restart keeps what no node
    can rebuild: a room scheduled for later with nobody in it yet (and the revocations)."""
    url = restartable_redis_aof.url
    async with running_node(node_settings(tmp_path / "a", redis=url)) as a:
        http = await a.session()
        chair = {"Authorization": f"Bearer {a.token('dr-chair', 'chair', rooms=['later'])}"}
        r = await http.post(
            a.url + "/api/rooms",
            json={"room_id": "later", "title": "Tumour board", "starts_at": time.time() + 3600},
            headers=chair,
        )
        assert r.status == 201, await r.text()
        admin = {"Authorization": f"Bearer {a.token('it-1', 'admin', depts=['it'])}"}
        r = await http.post(
            a.url + "/api/revocations", json={"sub": "dr-bad", "reason": "t"}, headers=admin
        )
        assert r.status == 201
        restartable_redis_aof.stop()
        restartable_redis_aof.start()
    # A node with an empty data folder: what it finds can only have come from Redis's own file.
    async with running_node(node_settings(tmp_path / "b", redis=url)) as b:
        http = await b.session()
        chair = {"Authorization": f"Bearer {b.token('dr-chair', 'chair', rooms=['later'])}"}
        r = await http.get(b.url + "/api/rooms/later", headers=chair)
        assert r.status == 200, await r.text()
        assert (await r.json())["room"]["title"] == "Tumour board"
        admin = {"Authorization": f"Bearer {b.token('it-1', 'admin', depts=['it'])}"}
        r = await http.get(b.url + "/api/revocations", headers=admin)
        assert [entry["value"] for entry in await r.json()] == ["dr-bad"]


async def test_media_of_a_room_spanning_two_nodes_flows_through_one_sfu(
    serve_process: Any, redis_url: str, tmp_path: Path, loopback_ice: None
) -> None:
    """Participants of one room whose signalling lands on different nodes exchange media: the
    room's media lives on the first node that claimed it; the other node relays SDP/ICE."""
    a, b, idp = two_nodes(serve_process, redis_url, tmp_path, LOOPBACK_ICE)

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
        return samples(await r.text())
