"""Short-lived records in the shared state (sign-in sessions, started sign-ins): memory and
Redis alike, seen by every node, taken once, gone when they expire."""

from __future__ import annotations

import asyncio

from signaling.state.redis import RedisStore
from tests.test_state import OpenNode, open_node, two_redis_nodes  # noqa: F401 - fixtures

SESSION = {"session_id": "abc", "identity": {"sub": "alice"}, "expires_at": 1.5}


async def test_a_record_round_trips_and_is_deleted(open_node: OpenNode) -> None:  # noqa: F811
    store = await open_node("node-a")
    await store.put_expiring("session:abc", SESSION, 60)
    assert await store.get_expiring("session:abc") == SESSION
    assert await store.get_expiring("session:abc") == SESSION  # a read does not consume it
    await store.delete_expiring("session:abc")
    assert await store.get_expiring("session:abc") is None


async def test_a_record_expires(open_node: OpenNode) -> None:  # noqa: F811
    store = await open_node("node-a")
    await store.put_expiring("signin:state", SESSION, 0.05)
    await asyncio.sleep(0.2)
    assert await store.get_expiring("signin:state") is None
    assert await store.take_expiring("signin:state") is None


async def test_of_two_nodes_taking_one_record_only_one_gets_it(
    two_redis_nodes: tuple[RedisStore, RedisStore],  # noqa: F811
) -> None:
    a, b = two_redis_nodes
    await a.put_expiring("signin:state", SESSION, 60)
    assert await b.get_expiring("signin:state") == SESSION
    taken = await asyncio.gather(
        a.take_expiring("signin:state"),
        b.take_expiring("signin:state"),
    )
    assert sorted(t is None for t in taken) == [False, True]
