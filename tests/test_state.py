"""The state store: every behaviour holds for the memory store and the Redis store alike."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from core.errors import IntegrityError, NotFound, Unavailable
from signaling.cluster import REVOKED_EVENT
from signaling.state.memory import MemoryStore
from signaling.state.opening import open_store
from signaling.state.records import (
    ParticipantRecord,
    Revocation,
    RoomRecord,
    copy_participant,
    copy_room,
)
from signaling.state.redis import (
    RedisStore,
    decode_participants,
    decode_room,
    encode_participant,
    encode_room,
)
from signaling.state.revocations import (
    REVOCATIONS_FILE,
    RevocationIndex,
    append_revocations,
    load_revocation_log,
    read_revocation_log,
)
from signaling.state.store import StateStore
from tests.fixtures.redis_server import RedisProcess

OpenNode = Callable[..., Awaitable[StateStore]]


def room(room_id: str = "mdt-1", **kw: Any) -> RoomRecord:
    kw.setdefault("created_at", time.time())
    return RoomRecord(room_id=room_id, departments=["cardiology"], **kw)


def person(pid: str, *, sub: str = "", node: str = "node-a", at: float = 0.0) -> ParticipantRecord:
    return ParticipantRecord(
        participant_id=pid,
        sub=sub or f"sub-{pid}",
        role="specialist",
        name=f"Dr {pid}",
        depts=["cardiology"],
        org="hospital",
        node=node,
        joined_at=at or time.time(),
    )


def revocation(kind: Any, value: str, *, expires_at: float | None = None) -> Revocation:
    return Revocation(
        kind=kind,
        value=value,
        reason="lost badge",
        by="admin",
        at=time.time(),
        expires_at=expires_at,
    )


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {within} s")
        await asyncio.sleep(0.02)


@pytest.fixture(params=["memory", "redis"])
async def open_node(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenNode]:
    """Opens started stores of one kind that share state (memory: the same revocation file)."""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    opened: list[StateStore] = []

    async def open_(node_id: str | None = None) -> StateStore:
        store: StateStore
        if url is None:
            store = MemoryStore(revocations_path=tmp_path / REVOCATIONS_FILE, node_id=node_id)
        else:
            store = RedisStore(url, node_id=node_id)
        await store.start()
        opened.append(store)
        return store

    yield open_
    for store in opened:
        await store.close()


@pytest.fixture
async def store(open_node: OpenNode) -> StateStore:
    return await open_node("node-a")


@pytest.fixture
async def two_redis_nodes(redis_url: str) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    a, b = RedisStore(redis_url, node_id="node-a"), RedisStore(redis_url, node_id="node-b")
    await a.start()
    await b.start()
    yield a, b
    await a.close()
    await b.close()


# rooms


async def test_only_one_of_concurrent_creates_wins(store: StateStore) -> None:
    attempts = [room(title=f"attempt {i}") for i in range(10)]
    results = await asyncio.gather(*(store.create_room(r) for r in attempts))
    assert sorted(results) == [False] * 9 + [True]
    stored = await store.get_room("mdt-1")
    assert stored is not None
    assert stored.title == attempts[results.index(True)].title
    assert await store.count_rooms() == 1


async def test_room_round_trips_with_every_field(store: StateStore) -> None:
    scheduled = RoomRecord(
        room_id="tumour-board",
        departments=["oncology", "radiology"],
        lobby=True,
        locked=True,
        title="Thursday tumour board",
        grants=["sub:dr-li", "dept:pathology", "org:partner"],
        scheduled_by="dr-wang",
        opened=True,
        created_at=1000.5,
        starts_at=2000.0,
    )
    assert await store.create_room(scheduled)
    assert await store.get_room("tumour-board") == scheduled
    assert await store.list_rooms() == [scheduled]
    assert await store.get_room("elsewhere") is None


async def test_saved_room_replaces_the_record_and_copies_do_not_leak(store: StateStore) -> None:
    original = room()
    await store.create_room(original)
    original.title = "changed after create"
    fetched = await store.get_room("mdt-1")
    assert fetched is not None and fetched.title == ""
    fetched.grants.append("org:anyone")
    fetched.locked = True
    assert await store.get_room("mdt-1") == room(created_at=original.created_at)
    await store.save_room(fetched)
    saved = await store.get_room("mdt-1")
    assert saved is not None and saved.locked and saved.grants == ["org:anyone"]


async def test_rooms_are_listed_oldest_first_and_counted(store: StateStore) -> None:
    for i, room_id in enumerate(["c", "a", "b"]):
        await store.create_room(RoomRecord(room_id=room_id, departments=[], created_at=i))
    assert [r.room_id for r in await store.list_rooms()] == ["c", "a", "b"]
    assert await store.count_rooms() == 3


async def test_deleting_a_room_clears_its_participants_and_lobby(store: StateStore) -> None:
    await store.create_room(room())
    await store.add_participant("mdt-1", person("p1"), max_participants=5)
    await store.add_to_lobby("mdt-1", person("p2"))
    await store.delete_room("mdt-1")
    assert await store.get_room("mdt-1") is None
    assert await store.count_rooms() == 0
    assert await store.create_room(room())
    assert await store.list_participants("mdt-1") == []
    assert await store.list_lobby("mdt-1") == []


async def test_room_ids_cannot_reach_another_rooms_participants(store: StateStore) -> None:
    await store.create_room(room("x"))
    await store.add_participant("x", person("p1"), max_participants=5)
    assert await store.create_room(room("x}:participants"))
    assert await store.create_room(room("x:participants"))
    assert [p.participant_id for p in await store.list_participants("x")] == ["p1"]


# participants


async def test_capacity_holds_under_concurrent_joins(store: StateStore) -> None:
    await store.create_room(room())
    joins = [store.add_participant("mdt-1", person(f"p{i}"), max_participants=5) for i in range(20)]
    results = await asyncio.gather(*joins)
    assert results.count(True) == 5
    assert len(await store.list_participants("mdt-1")) == 5


async def test_rejoining_with_the_same_participant_id_takes_no_second_seat(
    store: StateStore,
) -> None:
    await store.create_room(room())
    assert await store.add_participant("mdt-1", person("p1"), max_participants=1)
    assert await store.add_participant("mdt-1", person("p1"), max_participants=1)
    assert not await store.add_participant("mdt-1", person("p2"), max_participants=1)


async def test_joining_a_missing_room_is_not_found(store: StateStore) -> None:
    with pytest.raises(NotFound):
        await store.add_participant("gone", person("p1"), max_participants=5)
    with pytest.raises(NotFound):
        await store.add_to_lobby("gone", person("p1"))


async def test_participants_are_listed_in_joining_order_and_removed_once(
    store: StateStore,
) -> None:
    await store.create_room(room())
    for pid, at in [("late", 30.0), ("early", 10.0), ("middle", 20.0)]:
        await store.add_participant("mdt-1", person(pid, at=at), max_participants=5)
    assert [p.participant_id for p in await store.list_participants("mdt-1")] == [
        "early",
        "middle",
        "late",
    ]
    removed = await store.remove_participant("mdt-1", "middle")
    assert removed == person("middle", at=20.0)
    assert await store.remove_participant("mdt-1", "middle") is None
    assert await store.get_participant("mdt-1", "middle") is None
    assert await store.get_participant("mdt-1", "early") == person("early", at=10.0)


async def test_find_participant_by_sub(store: StateStore) -> None:
    await store.create_room(room())
    await store.add_participant("mdt-1", person("p1", sub="dr-li"), max_participants=5)
    await store.add_participant("mdt-1", person("p2", sub="dr-wang"), max_participants=5)
    found = await store.find_participant_by_sub("mdt-1", "dr-wang")
    assert found is not None and found.participant_id == "p2"
    assert await store.find_participant_by_sub("mdt-1", "nobody") is None


async def test_update_participant_mutes_but_does_not_bring_back_a_leaver(
    store: StateStore,
) -> None:
    await store.create_room(room())
    p = person("p1", at=5.0)
    await store.add_participant("mdt-1", p, max_participants=5)
    p.audio_muted = True
    await store.update_participant("mdt-1", p)
    stored = await store.get_participant("mdt-1", "p1")
    assert stored is not None and stored.audio_muted and not stored.video_muted
    await store.remove_participant("mdt-1", "p1")
    await store.update_participant("mdt-1", p)
    assert await store.get_participant("mdt-1", "p1") is None


# lobby


async def test_lobby_add_list_and_remove(store: StateStore) -> None:
    await store.create_room(room(lobby=True))
    await store.add_to_lobby("mdt-1", person("second", at=2.0))
    await store.add_to_lobby("mdt-1", person("first", at=1.0))
    assert [p.participant_id for p in await store.list_lobby("mdt-1")] == ["first", "second"]
    assert await store.list_participants("mdt-1") == []
    assert await store.remove_from_lobby("mdt-1", "first") == person("first", at=1.0)
    assert await store.remove_from_lobby("mdt-1", "first") is None
    assert [p.participant_id for p in await store.list_lobby("mdt-1")] == ["second"]


# revocations


async def test_revoked_token_is_refused_by_jti(store: StateStore) -> None:
    await store.revoke(revocation("jti", "token-1"))
    found = await store.is_revoked(jti="token-1", sub="dr-li")
    assert found is not None and found.kind == "jti" and found.reason == "lost badge"
    assert await store.is_revoked(jti="token-2", sub="dr-li") is None


async def test_revoked_identity_is_refused_with_any_token(store: StateStore) -> None:
    await store.revoke(revocation("sub", "dr-li"))
    found = await store.is_revoked(jti="any-token", sub="dr-li")
    assert found is not None and found.kind == "sub"
    assert await store.is_revoked(jti="any-token", sub="dr-wang") is None


async def test_expired_jti_revocation_is_ignored(store: StateStore) -> None:
    await store.revoke(revocation("jti", "old-token", expires_at=time.time() - 1))
    await store.revoke(revocation("jti", "live-token", expires_at=time.time() + 3600))
    assert await store.is_revoked(jti="old-token", sub="dr-li") is None
    assert await store.is_revoked(jti="live-token", sub="dr-li") is not None
    assert [r.value for r in await store.list_revocations()] == ["live-token"]


async def test_revocations_survive_a_restart(open_node: OpenNode) -> None:
    first = await open_node("node-a")
    await first.revoke(revocation("sub", "dr-li"))
    await first.revoke(revocation("jti", "token-1", expires_at=time.time() + 3600))
    await first.close()
    second = await open_node("node-a")
    assert await second.is_revoked(jti="", sub="dr-li") is not None
    assert await second.is_revoked(jti="token-1", sub="someone") is not None
    assert {r.key for r in await second.list_revocations()} == {"sub:dr-li", "jti:token-1"}


async def test_revoke_is_announced_to_subscribers(store: StateStore) -> None:
    seen: list[dict[str, Any]] = []
    store.subscribe(seen.append)
    await store.revoke(revocation("sub", "dr-li"))

    async def announced() -> bool:
        return any(e["type"] == REVOKED_EVENT for e in seen)

    await eventually(announced)
    assert Revocation.from_dict(seen[0]["revocation"]).key == "sub:dr-li"


# events


async def test_events_reach_own_node_in_order_despite_a_failing_handler(
    store: StateStore,
) -> None:
    seen: list[int] = []

    def broken(event: dict[str, Any]) -> None:
        raise RuntimeError("handler bug")

    async def record(event: dict[str, Any]) -> None:
        seen.append(event["n"])

    store.subscribe(broken)
    store.subscribe(record)
    for n in range(20):
        await store.publish({"type": "test", "n": n})

    async def all_seen() -> bool:
        return len(seen) == 20

    await eventually(all_seen)
    assert seen == list(range(20))


async def test_publish_does_not_call_handlers_before_returning(store: StateStore) -> None:
    seen: list[dict[str, Any]] = []
    store.subscribe(seen.append)
    await store.publish({"type": "test"})
    assert seen == []  # delivered on the store's own task, never re-entering the publisher


async def test_publish_refuses_what_is_not_json(store: StateStore) -> None:
    with pytest.raises(TypeError):
        await store.publish({"type": "test", "when": object()})


# node cleanup


async def test_purge_node_removes_only_that_nodes_entries(store: StateStore) -> None:
    await store.create_room(room("r1"))
    await store.create_room(room("r2"))
    await store.add_participant("r1", person("a1", node="node-a"), max_participants=5)
    await store.add_participant("r1", person("b1", node="node-b"), max_participants=5)
    await store.add_participant("r2", person("a2", node="node-a"), max_participants=5)
    await store.add_to_lobby("r2", person("a3", node="node-a"))
    await store.add_to_lobby("r2", person("b2", node="node-b"))
    assert await store.purge_node("node-a") == 3
    assert [p.participant_id for p in await store.list_participants("r1")] == ["b1"]
    assert await store.list_participants("r2") == []
    assert [p.participant_id for p in await store.list_lobby("r2")] == ["b2"]
    assert await store.purge_node("node-a") == 0


async def test_a_node_whose_heartbeat_runs_out_is_dead_until_forgotten(store: StateStore) -> None:
    assert await store.dead_nodes() == []
    await store.heartbeat("node-a", 0.3)
    await store.heartbeat("node-b", 30)
    assert await store.dead_nodes() == []
    await asyncio.sleep(0.4)
    assert await store.dead_nodes() == ["node-a"]
    await store.heartbeat("node-a", 30)  # back (a restart under the same id)
    assert await store.dead_nodes() == []
    await store.heartbeat("node-a", 0.1)
    await asyncio.sleep(0.2)
    assert await store.dead_nodes() == ["node-a"]
    await store.forget_node("node-a")
    assert await store.dead_nodes() == []
    await store.forget_node("node-b")  # stopped cleanly: never listed as dead
    await asyncio.sleep(0.1)
    assert await store.dead_nodes() == []


async def test_live_nodes_carry_the_load_their_heartbeat_reported(store: StateStore) -> None:
    await store.heartbeat("node-a", 30, 4)
    await store.heartbeat("node-b", 30)  # no SFU
    await store.heartbeat("node-c", 0.1, 0)
    await asyncio.sleep(0.2)
    assert await store.live_nodes() == {"node-a": 4, "node-b": None}
    await store.heartbeat("node-a", 30, 7)
    assert (await store.live_nodes())["node-a"] == 7
    await store.forget_node("node-a")
    assert "node-a" not in await store.live_nodes()


async def test_the_media_node_of_a_room_is_its_live_claim(store: StateStore) -> None:
    assert await store.media_node_of("mdt-1") is None
    assert await store.claim_media_node("mdt-1", "node-a", 0.2) == "node-a"
    assert await store.media_node_of("mdt-1") == "node-a"
    await asyncio.sleep(0.3)
    assert await store.media_node_of("mdt-1") is None


async def test_redis_says_which_nodes_hold_a_connection(
    two_redis_nodes: tuple[RedisStore, RedisStore],
) -> None:
    a, b = two_redis_nodes
    await a.heartbeat("node-a", 30)
    await b.heartbeat("node-b", 30)
    assert await a.connected_nodes() == {"node-a", "node-b"}
    await b.close()  # what a process's end does to its sockets
    assert await a.connected_nodes() == {"node-a"}


# two nodes sharing one Redis


async def test_two_nodes_see_the_same_rooms_and_participants(
    two_redis_nodes: tuple[RedisStore, RedisStore],
) -> None:
    a, b = two_redis_nodes
    assert await a.create_room(room())
    assert not await b.create_room(room())
    assert await b.add_participant("mdt-1", person("p1", node="node-b"), max_participants=5)
    assert [p.participant_id for p in await a.list_participants("mdt-1")] == ["p1"]
    assert [r.room_id for r in await b.list_rooms()] == ["mdt-1"]


async def test_capacity_holds_across_nodes(two_redis_nodes: tuple[RedisStore, RedisStore]) -> None:
    a, b = two_redis_nodes
    await a.create_room(room())
    joins = [
        node.add_participant("mdt-1", person(f"{node.node_id}-{i}"), max_participants=5)
        for i in range(10)
        for node in (a, b)
    ]
    assert (await asyncio.gather(*joins)).count(True) == 5


async def test_revoke_on_one_node_is_seen_by_the_other_within_2s(
    two_redis_nodes: tuple[RedisStore, RedisStore],
) -> None:
    a, b = two_redis_nodes
    await a.revoke(revocation("sub", "dr-li"))

    async def seen_by_b() -> bool:
        return await b.is_revoked(jti="", sub="dr-li") is not None

    await eventually(seen_by_b, within=2.0)


async def test_events_reach_every_node(two_redis_nodes: tuple[RedisStore, RedisStore]) -> None:
    a, b = two_redis_nodes
    seen: dict[str, list[dict[str, Any]]] = {"node-a": [], "node-b": []}
    a.subscribe(seen["node-a"].append)
    b.subscribe(seen["node-b"].append)
    await a.publish({"type": "participant.left", "room": "mdt-1"})

    async def both_seen() -> bool:
        return all(len(events) == 1 for events in seen.values())

    await eventually(both_seen)
    assert seen["node-b"] == [{"type": "participant.left", "room": "mdt-1"}]


async def test_node_catches_up_on_revocations_after_losing_its_connection(
    two_redis_nodes: tuple[RedisStore, RedisStore], redis_url: str
) -> None:
    a, b = two_redis_nodes
    admin = aioredis.Redis.from_url(redis_url)
    try:
        await admin.client_kill_filter(_type="pubsub")  # both listeners lose their channel
    finally:
        await admin.aclose()
    await a.revoke(revocation("sub", "dr-li"))  # may be published while b is away

    async def seen_by_b() -> bool:
        return await b.is_revoked(jti="", sub="dr-li") is not None

    await eventually(seen_by_b, within=5.0)
    seen: list[dict[str, Any]] = []
    b.subscribe(seen.append)

    async def listening_again() -> bool:
        await a.publish({"type": "ping"})
        await asyncio.sleep(0.05)
        return {"type": "ping"} in seen

    await eventually(listening_again, within=5.0)


async def test_is_revoked_does_not_ask_redis(
    two_redis_nodes: tuple[RedisStore, RedisStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = two_redis_nodes
    await a.revoke(revocation("sub", "dr-li"))

    async def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("is_revoked sent a command to Redis")

    monkeypatch.setattr(a._redis, "execute_command", refuse)
    for _ in range(100):
        assert await a.is_revoked(jti="t", sub="dr-li") is not None
        assert await a.is_revoked(jti="t", sub="dr-wang") is None


# the memory store's revocation log


async def test_torn_last_line_is_skipped_and_the_rest_loads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / REVOCATIONS_FILE
    lines = [json.dumps(revocation("sub", s).to_dict()) for s in ("dr-li", "dr-wang")]
    path.write_text("\n".join(lines) + "\n" + lines[0][:17])
    store = MemoryStore(revocations_path=path)
    with caplog.at_level(logging.WARNING, logger="signaling.state.revocations"):
        await store.start()
    assert "partially written" in caplog.text
    assert {r.value for r in await store.list_revocations()} == {"dr-li", "dr-wang"}
    await store.revoke(revocation("jti", "token-1"))  # must start on a line of its own
    await store.close()

    restarted = MemoryStore(revocations_path=path)
    await restarted.start()
    assert {r.key for r in await restarted.list_revocations()} == {
        "sub:dr-li",
        "sub:dr-wang",
        "jti:token-1",
    }
    await restarted.close()


async def test_a_bad_line_inside_the_revocation_log_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / REVOCATIONS_FILE
    good = json.dumps(revocation("sub", "dr-li").to_dict())
    path.write_text(f"{good}\n{{not json\n{good}\n")
    with pytest.raises(IntegrityError, match=":2:"):
        await MemoryStore(revocations_path=path).start()


async def test_revocation_log_is_appended_and_compacted_at_start(tmp_path: Path) -> None:
    path = tmp_path / "data" / REVOCATIONS_FILE
    store = MemoryStore(revocations_path=path)
    await store.start()
    await store.revoke(revocation("jti", "old", expires_at=time.time() + 0.2))
    await store.revoke(revocation("sub", "dr-li"))
    await store.revoke(revocation("jti", "gone", expires_at=time.time() - 1))  # not written
    await store.close()
    assert len(path.read_text().splitlines()) == 2
    await asyncio.sleep(0.25)
    assert path.stat().st_mode & 0o077 == 0

    restarted = MemoryStore(revocations_path=path)
    await restarted.start()
    await restarted.close()
    assert [json.loads(line)["value"] for line in path.read_text().splitlines()] == ["dr-li"]


def test_open_store_picks_redis_only_when_given_a_url(tmp_path: Path) -> None:
    assert isinstance(open_store(None, tmp_path), MemoryStore)
    assert isinstance(open_store("redis://127.0.0.1:1/0", tmp_path, "n1"), RedisStore)


def test_records_ignore_fields_from_a_newer_version() -> None:
    p = person("p1", at=1.0)
    assert ParticipantRecord.from_dict({**p.to_dict(), "hand_raised": True}) == p
    with pytest.raises(ValueError):
        Revocation.from_dict({**revocation("sub", "x").to_dict(), "kind": "role"})


# the pure parts, with no event loop: records, the revocation copy, the journal, Redis's values


def revoked(
    kind: Any, value: str, at: float, *, reason: str = "lost badge", **kw: Any
) -> Revocation:
    return Revocation(kind=kind, value=value, reason=reason, by="admin", at=at, **kw)


def test_copies_share_no_list_with_the_record() -> None:
    r = room(grants=["sub:dr-li"])
    c = copy_room(r)
    c.departments.append("oncology")
    c.grants.append("dept:oncology")
    assert (r.departments, r.grants) == (["cardiology"], ["sub:dr-li"])
    p = person("p1")
    copy_participant(p).depts.append("oncology")
    assert p.depts == ["cardiology"]


def test_a_revocation_must_name_what_it_revokes() -> None:
    with pytest.raises(ValueError):
        Revocation.from_dict({**revoked("sub", "x", 1.0).to_dict(), "value": ""})
    assert Revocation.from_dict(revoked("jti", "t1", 1.0).to_dict()).key == "jti:t1"


def test_the_later_revocation_of_a_key_wins_whatever_the_order() -> None:
    early = revoked("sub", "dr-li", 10.0)
    late = revoked("sub", "dr-li", 20.0, reason="left the hospital")
    in_order, reversed_order = RevocationIndex(), RevocationIndex()
    assert in_order.add(early) and in_order.add(late)
    assert reversed_order.add(late) and not reversed_order.add(early)
    assert in_order.live(30.0) == reversed_order.live(30.0) == [late]


def test_a_token_is_revoked_by_its_jti_or_its_subject_until_the_revocation_expires() -> None:
    index = RevocationIndex()
    index.add(revoked("jti", "t1", 10.0, expires_at=100.0))
    index.add(revoked("sub", "dr-wang", 5.0))
    found = index.lookup(jti="t1", sub="dr-li", now=50.0)
    assert found is not None and found.key == "jti:t1"
    found = index.lookup(jti="t2", sub="dr-wang", now=50.0)
    assert found is not None and found.key == "sub:dr-wang"
    assert index.lookup(jti="t2", sub="dr-li", now=50.0) is None
    assert index.lookup(jti="t1", sub="dr-li", now=100.0) is None, "expired at expires_at"
    assert [r.key for r in index.live(150.0)] == ["sub:dr-wang"]


def test_the_journal_keeps_its_line_format_and_is_compacted_at_the_time_given(
    tmp_path: Path,
) -> None:
    path = tmp_path / "data" / REVOCATIONS_FILE
    path.parent.mkdir()
    token = revoked("jti", "t1", 10.0, expires_at=100.0)
    first = revoked("sub", "dr-li", 10.0)
    latest = revoked("sub", "dr-li", 20.0, reason="left")
    append_revocations(path, [token, first, latest])
    assert load_revocation_log(path, 50.0) == [token, latest]
    assert read_revocation_log(path) == ([token, latest], False), "superseded line dropped"
    assert load_revocation_log(path, 100.0) == [latest]
    assert path.read_bytes() == (
        b'{"kind":"sub","value":"dr-li","reason":"left","by":"admin","at":20.0,"expires_at":null}\n'
    )


def test_redis_values_keep_the_format_every_node_version_reads() -> None:
    r = RoomRecord(room_id="mdt-1", departments=["cardiology"], title="MDT", created_at=5.0)
    fields = encode_room(r)
    assert fields["room_id"] == '"mdt-1"'
    assert fields["departments"] == '["cardiology"]'
    assert (fields["lobby"], fields["starts_at"]) == ("false", "null")
    assert decode_room(fields) == r
    assert decode_room({k: v for k, v in fields.items() if k != "admitted"}) == r, "older node"
    assert decode_room({}) is None
    p = person("p1", at=1.0)
    assert encode_participant(p) == (
        '{"participant_id":"p1","sub":"sub-p1","role":"specialist","name":"Dr p1",'
        '"depts":["cardiology"],"org":"hospital","node":"node-a","joined_at":1.0,'
        '"audio_muted":false,"video_muted":false,"resume_digest":"","lost_at":0.0,'
        '"lost_media":false,"lost_reason":""}'
    )
    # What a node of the version before resumes across nodes wrote: read with the defaults.
    older = encode_participant(p).split(',"resume_digest"')[0] + "}"
    assert decode_participants({"p1": older}) == [p]
    later = person("p0", at=2.0)
    entries = {"p0": encode_participant(later), "p1": encode_participant(p)}
    assert decode_participants(entries) == [p, later]


def test_redis_keys_and_channel_are_those_every_node_version_uses() -> None:
    store = RedisStore("redis://127.0.0.1:1/0", node_id="n1")  # connects on first use only
    assert store._room_key("mdt-1") == "consilium:room:{mdt-1}"
    assert store._participants_key("mdt-1") == "consilium:room:{mdt-1}:participants"
    assert store._lobby_key("mdt-1") == "consilium:room:{mdt-1}:lobby"
    assert store._media_node_key("mdt-1") == "consilium:room:{mdt-1}:media-node"
    assert store._rooms_key == "consilium:rooms"
    assert store._revocations_key == "consilium:revocations"
    assert (store._instance_key, store._channel) == ("consilium:instance", "consilium:events")


async def test_one_node_claims_a_rooms_media_until_it_releases_or_expires(
    store: StateStore,
) -> None:
    assert await store.claim_media_node("r", "node-a", 30) == "node-a"
    assert await store.claim_media_node("r", "node-b", 30) == "node-a"
    assert await store.claim_media_node("r", "node-a", 30) == "node-a", "refresh by the holder"
    await store.release_media_node("r", "node-b")
    assert await store.claim_media_node("r", "node-b", 30) == "node-a", "only the holder releases"
    await store.release_media_node("r", "node-a")
    assert await store.claim_media_node("r", "node-b", 0.2) == "node-b"
    await asyncio.sleep(0.4)
    assert await store.claim_media_node("r", "node-c", 30) == "node-c", "an expired claim is free"


# Redis restarted without persistence


async def _journalled_redis_node(url: str, node_id: str, data_dir: Path) -> RedisStore:
    node = RedisStore(url, node_id=node_id, revocations_path=data_dir / REVOCATIONS_FILE)
    await node.start()
    return node


async def test_redis_restarted_empty_gets_revocations_rooms_and_rosters_back(
    restartable_redis: RedisProcess, tmp_path: Path
) -> None:
    url = restartable_redis.url
    a = await _journalled_redis_node(url, "node-a", tmp_path / "a")
    newcomer: RedisStore | None = None
    try:
        await a.revoke(revocation("sub", "dr-li"))
        assert await a.create_room(room("tumour-board", opened=True))
        assert await a.add_participant(
            "tumour-board", person("p1", node="node-a"), max_participants=10
        )
        await a.add_to_lobby("tumour-board", person("p2", node="node-a"))
        restartable_redis.stop()
        restartable_redis.start()  # empty: no AOF, no RDB
        assert await a.is_revoked(jti="", sub="dr-li") is not None  # never forgotten

        # A node started now, with nothing of its own, learns it all from what `a` wrote back.
        async def rebuilt() -> bool:
            probe = aioredis.Redis.from_url(url)
            try:
                return bool(await probe.hlen("consilium:room:{tumour-board}:lobby"))
            finally:
                await probe.aclose()

        await eventually(rebuilt, within=10.0)
        newcomer = await _journalled_redis_node(url, "node-c", tmp_path / "c")
        assert await newcomer.is_revoked(jti="", sub="dr-li") is not None
        assert [r.key for r in await newcomer.list_revocations()] == ["sub:dr-li"]
        restored = await newcomer.get_room("tumour-board")
        assert restored is not None and restored.opened
        assert [p.participant_id for p in await newcomer.list_participants("tumour-board")] == [
            "p1"
        ]
        assert [p.participant_id for p in await newcomer.list_lobby("tumour-board")] == ["p2"]
    finally:
        await a.close()
        if newcomer is not None:
            await newcomer.close()


@pytest.mark.parametrize("disk", ["quick", "slow"])
async def test_a_node_never_forgets_a_revocation_it_heard_of(
    redis_url: str, tmp_path: Path, disk: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`slow`: the journal's file exists before the line is in it (a loaded machine: CI saw
    it); the node stopped meanwhile still has it on disk when it starts again."""
    if disk == "slow":
        from signaling.state import store as store_module

        def slow_append(path: Path, revocations: list[Revocation]) -> None:
            path.touch()
            time.sleep(0.5)
            append_revocations(path, revocations)

        monkeypatch.setattr(store_module, "append_revocations", slow_append)
    a = await _journalled_redis_node(redis_url, "node-a", tmp_path / "a")
    b = await _journalled_redis_node(redis_url, "node-b", tmp_path / "b")
    await a.revoke(revocation("sub", "dr-li"))

    async def heard_by_b() -> bool:
        return (tmp_path / "b" / REVOCATIONS_FILE).exists()

    await eventually(heard_by_b)
    await a.close()
    await b.close()
    flush = aioredis.Redis.from_url(redis_url)
    try:
        await flush.flushdb()  # Redis lost everything; only b is started again
        b = await _journalled_redis_node(redis_url, "node-b", tmp_path / "b")
        try:
            assert await b.is_revoked(jti="", sub="dr-li") is not None
            assert await flush.hexists("consilium:revocations", "sub:dr-li")  # put back
        finally:
            await b.close()
    finally:
        await flush.aclose()


async def test_revocations_during_a_redis_outage_are_unavailable(
    restartable_redis: RedisProcess, tmp_path: Path
) -> None:
    a = await _journalled_redis_node(restartable_redis.url, "node-a", tmp_path / "a")
    try:
        assert await a.ping()
        restartable_redis.stop()
        assert not await a.ping()
        with pytest.raises(Unavailable):
            await a.revoke(revocation("sub", "dr-li"))
        with pytest.raises(Unavailable):
            await a.list_revocations()
        assert await a.is_revoked(jti="", sub="dr-li") is None  # a refused revoke took no effect
    finally:
        await a.close()
