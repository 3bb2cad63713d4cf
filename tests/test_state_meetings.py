"""The meeting book in both state stores: idempotent creates and versioned replaces are atomic,
and every node sees the same meetings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from signaling import meetings as m
from signaling.state.memory import MemoryStore
from signaling.state.redis import RedisStore
from signaling.state.store import StateStore

OpenNode = Callable[[str], Awaitable[StateStore]]
NOW = datetime(2030, 3, 5, 6, 0, tzinfo=UTC).timestamp()


def record(meeting_id: str, title: str = "Tumour board") -> m.MeetingRecord:
    start = datetime(2030, 3, 5, 8, 0, tzinfo=UTC)
    request = m.MeetingRequest(
        title=title,
        starts_at=start,
        ends_at=start + timedelta(hours=1),
        participants=[m.Invitee("dr-chen", "chair")],
    )
    return m.new_record(meeting_id, request, scheduled_by="his", now=NOW)


@pytest.fixture(params=["memory", "redis"])
async def open_node(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenNode]:
    """Opens started stores of one kind; the Redis ones share one Redis, the memory store is
    one node's alone (so `other` is the same store there)."""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    opened: list[StateStore] = []
    memory: StateStore | None = None

    async def open_(node_id: str) -> StateStore:
        nonlocal memory
        if url is None:
            if memory is None:
                memory = MemoryStore(revocations_path=None, node_id=node_id)
                await memory.start()
                opened.append(memory)
            return memory
        store = RedisStore(url, node_id=node_id)
        await store.start()
        opened.append(store)
        return store

    yield open_
    for store in opened:
        await store.close()


async def test_concurrent_creates_with_one_key_store_one_meeting(open_node: OpenNode) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    attempts = [
        (a if i % 2 else b).meetings.create(record(f"m-{i}"), ["key:his:appt-1"]) for i in range(8)
    ]
    results = await asyncio.gather(*attempts)
    winners = [i for i, found in enumerate(results) if found is None]
    assert len(winners) == 1
    # Every loser is told the winner's meeting.
    assert {found.meeting_id for found in results if found is not None} == {f"m-{winners[0]}"}
    assert await a.meetings.count() == 1


async def test_any_one_of_a_creates_keys_finds_it(open_node: OpenNode) -> None:
    store = await open_node("node-a")
    assert await store.meetings.create(record("m-1"), ["key:his:k1", "ext:his:APPT-1"]) is None
    found = await store.meetings.create(record("m-2"), ["ext:his:APPT-1"])
    assert found is not None and found.meeting_id == "m-1"
    # A create without keys is never a replay.
    assert await store.meetings.create(record("m-3"), []) is None
    assert await store.meetings.count() == 2


async def test_a_replace_on_a_version_another_node_changed_is_refused(
    open_node: OpenNode,
) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    await a.meetings.create(record("m-1"), [])
    read_a, read_b = await a.meetings.get("m-1"), await b.meetings.get("m-1")
    assert read_a is not None and read_b is not None
    moved = msgspec.structs.replace(read_a, version=2, request=record("m-1", "Moved").request)
    assert await a.meetings.replace(moved, read_a.version)
    late = msgspec.structs.replace(read_b, version=2, request=record("m-1", "Other").request)
    assert not await b.meetings.replace(late, read_b.version)
    stored = await b.meetings.get("m-1")
    assert stored is not None and stored.request.title == "Moved" and stored.version == 2
    assert not await a.meetings.replace(record("gone"), 1)
    assert await a.meetings.get("gone") is None


async def test_every_node_lists_the_same_meetings(open_node: OpenNode) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    await a.meetings.create(record("m-1"), [])
    await b.meetings.create(record("m-2"), [])
    for store in (a, b):
        assert sorted(r.meeting_id for r in await store.meetings.list()) == ["m-1", "m-2"]
    # What a caller holds is its own copy.
    held = await a.meetings.get("m-1")
    assert held is not None
    held.links.append(m.IssuedLink("x", "y", 1.0))
    again = await a.meetings.get("m-1")
    assert again is not None and again.links == []


async def test_a_deleted_meeting_frees_its_keys(open_node: OpenNode) -> None:
    a, b = await open_node("node-a"), await open_node("node-b")
    first = msgspec.structs.replace(record("m-1"), keys=["key:his:k1"])
    assert await a.meetings.create(first, first.keys) is None
    await b.meetings.delete(first)
    assert await a.meetings.get("m-1") is None and await a.meetings.count() == 0
    # The key books anew once its meeting is gone.
    assert await a.meetings.create(record("m-2"), ["key:his:k1"]) is None
