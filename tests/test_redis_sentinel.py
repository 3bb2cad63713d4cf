"""Redis without a single point of failure (issue 13, part 5): two real `consilium serve`
processes given three real Sentinels (`redis = "sentinel://..."`) carry a meeting on across the
loss of the Redis primary: a replica is promoted, the nodes reconnect to it, nobody is taken
for lost on the way, and a join the replica never received is written back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from signaling.audit import iter_entries
from signaling.devidp import DevelopmentIdP
from signaling.state.redis import RedisStore
from tests.fixtures.redis_sentinel import SentinelCluster
from tests.fixtures.redis_server import RedisProcess
from tests.fixtures.servers import close_code, next_message, no_message, two_nodes, ws_join

DEAD_AFTER_S = 2.0
"""`node_dead_after_s` (its lowest allowed value: a wrongful death would show soon)."""
ROOM = "mdt-1"
PARTICIPANTS = "consilium:room:{mdt-1}:participants"


def _token(idp: DevelopmentIdP, sub: str, role: str = "specialist") -> str:
    return idp.mint(sub=sub, role=role, depts=["cardiology"], rooms=[ROOM])


async def test_the_store_names_the_redis_server_behind_it_a_restart_is_another(
    restartable_redis: RedisProcess,
) -> None:
    store = RedisStore(restartable_redis.url, node_id="n1")
    try:
        first = await store.server_identity()
        assert first is not None
        assert await store.server_identity() == first
        restartable_redis.stop()
        restartable_redis.start()
        # An answer got within `max_age_s` will do (not asked again), a fresh one is asked for.
        assert await store.server_identity(max_age_s=60.0) == first
        assert await store.server_identity() not in (None, first)
    finally:
        await store.close()


async def test_a_meeting_carries_on_when_the_redis_primary_is_lost(
    redis_sentinels: SentinelCluster, serve_process: Any, tmp_path: Path
) -> None:
    # (The nodes stop before the Sentinels: fixtures end in the reverse order.)
    env = {"CONSILIUM_NODE_DEAD_AFTER_S": str(DEAD_AFTER_S)}
    a, b, idp = two_nodes(serve_process, redis_sentinels.url, tmp_path, env)
    async with aiohttp.ClientSession() as http:
        chair, joined_a = await ws_join(http, a.url, _token(idp, "dr-chair", "chair"), ROOM)
        spec, joined_b = await ws_join(http, b.url, _token(idp, "dr-heart"), ROOM)
        assert (joined_a["type"], joined_b["type"]) == ("joined", "joined")
        await next_message(chair, "participant_joined")
        await asyncio.sleep(DEAD_AFTER_S + 1.5)  # both nodes past their start-up wait
        redis_sentinels.replicated()
        # One more joins on A while the replica lags: the primary acknowledges it, and dies
        # before the replica has it.
        redis_sentinels.cut_replica()
        late, joined_late = await ws_join(http, a.url, _token(idp, "dr-late"), ROOM)
        assert joined_late["type"] == "joined"
        for ws in (chair, spec):
            await next_message(ws, "participant_joined")

        killed_at = time.monotonic()
        redis_sentinels.kill_primary()
        redis_sentinels.resume_replica()
        redis_sentinels.wait_for_promotion()
        print(
            f"\nthe replica promoted {time.monotonic() - killed_at:.1f} s after the primary's kill"
        )
        # Long enough for a node that took the other's missing connections or stale heartbeat
        # on the promoted replica for a death to act on it.
        for ws in (chair, spec, late):
            await no_message(ws, "participant_left", DEAD_AFTER_S + 4)
        for data_dir in (a.data_dir, b.data_dir):
            assert list(iter_entries(data_dir / "audit", action="node_lost")) == []
        host, port = redis_sentinels.primary_address()
        client = aioredis.Redis(host=host, port=port, decode_responses=True)
        try:
            # Node A wrote back the join the promoted replica never received.
            assert await client.hlen(PARTICIPANTS) == 3
            assert len(await client.smembers("consilium:nodes")) == 2
        finally:
            await client.aclose()

        # Events between the nodes flow through the new primary: a join on B is seen on A.
        lung, joined = await ws_join(http, b.url, _token(idp, "dr-lung"), ROOM)
        assert joined["type"] == "joined", joined
        subs = {p["sub"] for p in joined["participants"]}
        assert subs == {"dr-chair", "dr-heart", "dr-late", "dr-lung"}
        seen = await next_message(chair, "participant_joined", timeout=5)
        assert seen["participant"]["sub"] == "dr-lung"

        # A revocation made on A after the failover: B drops its holder at once, and neither
        # node lets them back in.
        admin = idp.mint(sub="it-1", role="admin", depts=["it"])
        r = await http.post(
            a.url + "/api/revocations", json={"sub": "dr-heart", "reason": "test"},
            headers={"Authorization": f"Bearer {admin}"},
        )  # fmt: skip
        assert r.status == 201
        assert await close_code(spec, timeout=5) == 4401
        for node in (a, b):
            refused, answer = await ws_join(http, node.url, _token(idp, "dr-heart"), ROOM)
            assert answer.get("code") == 4401 or await close_code(refused) == 4401, answer
            await refused.close()
        for ws in (chair, late, lung):
            await ws.close()
