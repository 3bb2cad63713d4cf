"""`RedisStore`: the shared state in Redis, for several signalling nodes, and its encoding.

What is written to Redis (keys, field values, the event channel's bytes) is read by every node
on the same server, old and new versions alike during a rolling upgrade: change none of it.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import random
import secrets
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.errors import NotFound, Unavailable
from signaling.cluster import REVOKED_EVENT, Revoked, to_wire
from signaling.state.directory import RedisDirectory
from signaling.state.meetings_redis import RedisMeetingBook
from signaling.state.records import (
    ParticipantRecord,
    Revocation,
    RoomRecord,
    copy_participant,
    copy_room,
)
from signaling.state.sentinel import is_sentinel_url, parse_sentinel_url
from signaling.state.store import StateStore

log = logging.getLogger(__name__)

_RECONNECT_MIN_S = 0.1
_RECONNECT_MAX_S = 5.0
_LISTEN_POLL_S = 1.0
_START_TIMEOUT_S = 10.0
_PING_TIMEOUT_S = 2.0
_KNOWN_ROOMS_BOUND = 10_000

# Redis scripts: each check-then-change is one script, so it is atomic across nodes.

_CREATE_ROOM = """
-- KEYS: room hash, set of room ids. ARGV: room id, then field/value pairs.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

_ADD_BOUNDED = """
-- KEYS: room hash, entries hash. ARGV: entry id, entry JSON, bound (-1: none).
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local bound = tonumber(ARGV[3])
if bound >= 0 and redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0
    and redis.call('HLEN', KEYS[2]) >= bound then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

_POP_FIELD = """
-- KEYS: hash. ARGV: field. Returns the removed value, or nil.
local value = redis.call('HGET', KEYS[1], ARGV[1])
if value then redis.call('HDEL', KEYS[1], ARGV[1]) end
return value
"""

_REPLACE_FIELD = """
-- KEYS: hash. ARGV: field, value. Sets it only if it is there already.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

_DELETE_IF_UNCHANGED = """
-- KEYS: hash. ARGV: field, value, field, value, ... Deletes each field still holding its value.
local removed = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    removed = removed + 1
  end
end
return removed
"""


# The values every node version reads (a rolling upgrade shares one Redis): a room is a hash of
# one JSON value per field, a participant or lobby entry one compact JSON object.


def encode_room(room: RoomRecord) -> dict[str, str]:
    """The room's hash fields: each field's value as JSON."""
    return {name: json.dumps(value) for name, value in room.to_dict().items()}


def decode_room(fields: Mapping[str, str]) -> RoomRecord | None:
    """The room `encode_room` wrote, or None for an empty (missing) hash."""
    if not fields:
        return None
    return RoomRecord.from_dict({name: json.loads(value) for name, value in fields.items()})


def encode_participant(p: ParticipantRecord) -> str:
    """A participant or lobby entry's value: compact JSON."""
    return json.dumps(p.to_dict(), separators=(",", ":"))


def _held_by(entry: Mapping[str, Any], node_id: str) -> bool:
    """Whether a stored participant is held by `node_id`: not one held for a resume elsewhere
    since their node was lost (`ParticipantRecord.lost_at`), which a restart must not drop."""
    return entry.get("node") == node_id and not entry.get("lost_at")


def decode_participants(entries: Mapping[str, str]) -> list[ParticipantRecord]:
    """The entries of a participants or lobby hash, in order of joining."""
    records = (ParticipantRecord.from_dict(json.loads(v)) for v in entries.values())
    return sorted(records, key=lambda p: (p.joined_at, p.participant_id))


# A claim: take the key if free or already ours (refreshing its expiry); else name the holder.
_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return holder
"""

# Release a claim only if we hold it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisStore(StateStore):
    """State in Redis, shared by every node pointed at the same server and prefix.

        Keys (after `prefix`): `room:{<id>}` (hash, one JSON value per field),
        `room:{<id>}:participants` and `room:{<id>}:lobby` (hashes: participant id -> JSON),
        `rooms` (set of room ids), `revocations` (hash: `kind:value` -> JSON), `nodes` (set of
        node ids seen) and `node:<id>` (expiring while that node is alive), `directory:*` (the
    SCIM directory, `signaling.state.directory`), `instance` (a random
        value set by the first node to see this Redis: a different value later means the data was
        lost); events go on the channel `events`. The braces keep one room's keys apart from any
        other room's whatever its id holds, and in one hash slot should the deployment move to
        Redis Cluster.

        Each node keeps a copy of what it put in: every revocation it has seen (its journal), the
        participants and lobby entries it holds, and the records of their rooms. When it finds
        Redis emptied (a restart without persistence), it writes them back.
    """

    def __init__(
        self,
        url: str,
        *,
        node_id: str | None = None,
        prefix: str = "consilium:",
        revocations_path: Path | None = None,
    ) -> None:
        super().__init__(node_id, revocations_path)
        self._prefix = prefix
        self._rooms_key = prefix + "rooms"
        self._revocations_key = prefix + "revocations"
        self._instance_key = prefix + "instance"
        self._channel = prefix + "events"
        self._nodes_key = prefix + "nodes"
        self._instance: str | None = None
        """The `instance` value this node last saw; None before its first look."""
        self._known_rooms: dict[str, RoomRecord] = {}
        """The last record this node read or wrote of each room (rebuilds what Redis lost)."""
        self._held: dict[tuple[str, str], dict[str, ParticipantRecord]] = {}
        """This node's entries by (room id, "participants" or "lobby"): participant id -> record."""
        self._sentinel: Sentinel | None = None
        """The Sentinels' client when `url` names Sentinels (`signaling.state.sentinel`)."""
        self._server: str | None = None
        """The run id of the Redis server at the last (re)connection (`_resync`)."""
        self._server_asked: tuple[float, str | None] = (-1e9, None)
        """When the server's run id was last asked (monotonic), and the answer."""
        # Connections are made on first use, so building the client here does no I/O.
        self._redis = self._client(url)
        self._create_room = self._redis.register_script(_CREATE_ROOM)
        self._add_bounded = self._redis.register_script(_ADD_BOUNDED)
        self._pop_field = self._redis.register_script(_POP_FIELD)
        self._replace_field = self._redis.register_script(_REPLACE_FIELD)
        self._delete_if_unchanged = self._redis.register_script(_DELETE_IF_UNCHANGED)
        self._claim_media = self._redis.register_script(_CLAIM)
        self._delete_if_holder = self._redis.register_script(_RELEASE)
        self.directory = RedisDirectory(self._redis, prefix)
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self.meetings = RedisMeetingBook(self._redis, prefix)

    def _client(self, url: str) -> aioredis.Redis:
        """The client of one Redis server, or of the primary its Sentinels name (asked again
        on each new connection: after a failover, the promoted replica)."""
        options: dict[str, Any] = {
            "decode_responses": True,
            # Every connection of this node carries its name: a node whose process ended has
            # none left (`connected_nodes`), seconds before its heartbeat runs out.
            "client_name": self._client_name(self.node_id),
            "socket_connect_timeout": 5,
            "socket_timeout": 10,
            "socket_keepalive": True,
            "health_check_interval": 15,
            # A pooled connection Redis closed (restart, failover) is retried on a fresh one
            # instead of failing the request that happened to pick it.
            "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
            "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        }
        if not is_sentinel_url(url):
            return aioredis.Redis.from_url(url, **options)
        where = parse_sentinel_url(url)
        asking: dict[str, Any] = {
            "socket_connect_timeout": 2,
            "socket_timeout": 2,
            "username": where.sentinel_username,
            "password": where.sentinel_password,
            "decode_responses": True,
        }
        if where.tls:
            asking["ssl"] = True
        self._sentinel = Sentinel(where.sentinels, sentinel_kwargs=asking)
        return cast(
            aioredis.Redis,
            self._sentinel.master_for(
                where.service,
                redis_class=aioredis.Redis,
                db=where.db,
                username=where.username,
                password=where.password,
                ssl=where.tls,
                **options,
            ),
        )

    def _room_key(self, room_id: str) -> str:
        return f"{self._prefix}room:{{{room_id}}}"

    def _participants_key(self, room_id: str) -> str:
        return self._room_key(room_id) + ":participants"

    def _lobby_key(self, room_id: str) -> str:
        return self._room_key(room_id) + ":lobby"

    async def start(self) -> None:
        """Load the journal and Redis's revocations, and subscribe to the event channel.

        Raises the Redis error if the server cannot be reached now; later losses are survived.
        """
        await super().start()
        try:
            await self._resync()
        except BaseException:
            await self.close()
            raise
        self._listener = asyncio.create_task(self._listen(), name=f"state-redis-{self.node_id}")
        try:
            await asyncio.wait_for(self._subscribed.wait(), _START_TIMEOUT_S)
        except TimeoutError:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop listening and disconnect."""
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        await super().close()
        await self._redis.aclose()
        if self._sentinel is not None:
            await self._sentinel.aclose()

    # The client decodes every reply to str (decode_responses=True); its stubs cannot know that.

    async def _hgetall(self, key: str) -> dict[str, str]:
        return cast(dict[str, str], await self._redis.hgetall(key))

    async def _room_ids(self) -> list[str]:
        return sorted(cast(set[str], await self._redis.smembers(self._rooms_key)))

    # rooms

    async def create_room(self, room: RoomRecord) -> bool:
        pairs = [item for pair in encode_room(room).items() for item in pair]
        created = await self._create_room(
            keys=[self._room_key(room.room_id), self._rooms_key], args=[room.room_id, *pairs]
        )
        if created:
            self._remember_room(room)
        return bool(created)

    async def get_room(self, room_id: str) -> RoomRecord | None:
        room = decode_room(await self._hgetall(self._room_key(room_id)))
        if room is not None:
            self._remember_room(room)
        return room

    def _remember_room(self, room: RoomRecord) -> None:
        """Keep the room's latest record for a rebuild; beyond `_KNOWN_ROOMS_BOUND`, forget
        those this node holds nobody in (read, or deleted by another node)."""
        self._known_rooms[room.room_id] = copy_room(room)
        if len(self._known_rooms) > _KNOWN_ROOMS_BOUND:
            held = {room_id for (room_id, _), entries in self._held.items() if entries}
            for room_id in [r for r in self._known_rooms if r not in held]:
                del self._known_rooms[room_id]

    async def save_room(self, room: RoomRecord) -> None:
        key = self._room_key(room.room_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            fields: dict[Any, Any] = encode_room(room)
            pipe.hset(key, mapping=fields)
            pipe.sadd(self._rooms_key, room.room_id)
            await pipe.execute()
        self._remember_room(room)

    async def delete_room(self, room_id: str) -> bool:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(
                self._room_key(room_id), self._participants_key(room_id), self._lobby_key(room_id)
            )
            pipe.srem(self._rooms_key, room_id)
            _, removed = await pipe.execute()
        self._known_rooms.pop(room_id, None)
        self._held.pop((room_id, "participants"), None)
        self._held.pop((room_id, "lobby"), None)
        return bool(removed)

    async def list_rooms(self) -> list[RoomRecord]:
        room_ids = await self._room_ids()
        async with self._redis.pipeline(transaction=False) as pipe:
            for room_id in room_ids:
                pipe.hgetall(self._room_key(room_id))
            found = await pipe.execute()
        rooms = [room for room in map(decode_room, found) if room is not None]
        return sorted(rooms, key=lambda r: (r.created_at, r.room_id))

    async def count_rooms(self) -> int:
        return int(await self._redis.scard(self._rooms_key))

    # participants and lobby

    async def _add_entry(self, room_id: str, table: str, p: ParticipantRecord, bound: int) -> bool:
        added = await self._add_bounded(
            keys=[self._room_key(room_id), self._entries_key(room_id, table)],
            args=[p.participant_id, encode_participant(p), bound],
        )
        if added == -1:
            raise NotFound(f"room {room_id!r} does not exist")
        if added and p.node == self.node_id:
            self._held.setdefault((room_id, table), {})[p.participant_id] = copy_participant(p)
        return bool(added)

    async def _pop_entry(
        self, room_id: str, table: str, participant_id: str
    ) -> ParticipantRecord | None:
        value = await self._pop_field(
            keys=[self._entries_key(room_id, table)], args=[participant_id]
        )
        self._held.get((room_id, table), {}).pop(participant_id, None)
        return None if value is None else ParticipantRecord.from_dict(json.loads(value))

    def _entries_key(self, room_id: str, table: str) -> str:
        return self._room_key(room_id) + ":" + table

    async def add_participant(
        self, room_id: str, p: ParticipantRecord, *, max_participants: int
    ) -> bool:
        bound = max(max_participants, 0)
        return await self._add_entry(room_id, "participants", p, bound)

    async def remove_participant(
        self, room_id: str, participant_id: str
    ) -> ParticipantRecord | None:
        return await self._pop_entry(room_id, "participants", participant_id)

    async def update_participant(self, room_id: str, p: ParticipantRecord) -> None:
        await self._replace_field(
            keys=[self._participants_key(room_id)],
            args=[p.participant_id, encode_participant(p)],
        )
        held = self._held.get((room_id, "participants"), {})
        if p.node == self.node_id and not p.lost_at:
            # Kept for a rebuild; one taken over from a lost node is this node's from now on.
            self._held.setdefault((room_id, "participants"), {})[p.participant_id] = (
                copy_participant(p)
            )
        else:
            held.pop(p.participant_id, None)

    async def get_participant(self, room_id: str, participant_id: str) -> ParticipantRecord | None:
        value = await self._redis.hget(self._participants_key(room_id), participant_id)
        return None if value is None else ParticipantRecord.from_dict(json.loads(value))

    async def list_participants(self, room_id: str) -> list[ParticipantRecord]:
        return decode_participants(await self._hgetall(self._participants_key(room_id)))

    async def add_to_lobby(self, room_id: str, p: ParticipantRecord) -> None:
        await self._add_entry(room_id, "lobby", p, -1)

    async def remove_from_lobby(
        self, room_id: str, participant_id: str
    ) -> ParticipantRecord | None:
        return await self._pop_entry(room_id, "lobby", participant_id)

    async def list_lobby(self, room_id: str) -> list[ParticipantRecord]:
        return decode_participants(await self._hgetall(self._lobby_key(room_id)))

    # revocations

    async def revoke(self, r: Revocation) -> None:
        r = dataclasses.replace(r)
        event = to_wire(Revoked(revocation=r.to_dict()))
        # One transaction: no node can see the revocation stored but never announced. Redis
        # first: when it is out of reach the request is refused and nothing took effect.
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._revocations_key, r.key, json.dumps(r.to_dict()))
                pipe.publish(self._channel, json.dumps(event))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise Unavailable("the shared state (Redis) is out of reach; try again") from exc
        await self._remember([r])

    async def _sync_revocations(self) -> list[Revocation]:
        """Merge Redis's revocations and this node's both ways: journal what is new here, put
        back (and announce) what Redis lacks; prune the expired from Redis. The live ones."""
        stored = await self._hgetall(self._revocations_key)
        now = time.time()
        expired: list[str] = []
        found: list[Revocation] = []
        for key, value in stored.items():
            try:
                r = Revocation.from_dict(json.loads(value))
            except (ValueError, TypeError) as exc:
                log.error("unreadable revocation %r in Redis: %s", key, exc)
                continue
            if r.expired(now):
                expired += [key, value]
            else:
                found.append(r)
        await self._remember(found)
        if expired:
            await self._delete_if_unchanged(keys=[self._revocations_key], args=expired)
        live = self._revocations.live(now)
        missing = [r for r in live if r.key not in stored]
        if missing:
            # HSETNX: a newer revocation another node wrote meanwhile is kept.
            async with self._redis.pipeline(transaction=False) as pipe:
                for r in missing:
                    pipe.hsetnx(self._revocations_key, r.key, json.dumps(r.to_dict()))
                    event = to_wire(Revoked(revocation=r.to_dict()))
                    pipe.publish(self._channel, json.dumps(event))
                await pipe.execute()
            log.warning(
                "node %s put %d revocations back into Redis, which had lost them",
                self.node_id,
                len(missing),
            )
        return live

    async def _resync(self) -> None:
        """After (re)connecting: merge the revocations both ways, and if Redis lost its data
        since this node last looked, write back the rooms and entries this node holds. So too
        when another server answers (a replica promoted by Sentinel, a restart with AOF): it
        may lack the last writes before the change (replication is asynchronous)."""
        await self._sync_revocations()
        instance = cast(str | None, await self._redis.get(self._instance_key))
        if instance is None:
            await self._redis.set(self._instance_key, secrets.token_hex(8), nx=True)
            instance = cast(str | None, await self._redis.get(self._instance_key))
        server = await self._run_id()
        if self._instance is not None and instance != self._instance:
            rebuilt = await self._rebuild_held()
            log.warning(
                "node %s found Redis emptied; wrote back %d participants and lobby entries",
                self.node_id,
                rebuilt,
            )
        elif None not in (self._server, server) and server != self._server:
            rebuilt = await self._rebuild_held()
            if rebuilt:
                log.warning(
                    "node %s wrote back %d participants and lobby entries the new Redis "
                    "server lacked (lost in a failover)",
                    self.node_id,
                    rebuilt,
                )
        self._instance, self._server = instance, server

    async def _rebuild_held(self) -> int:
        """Write back the rooms this node holds entries in, and those entries (each only if
        missing: another node may have rebuilt the room, or someone joined since)."""
        rebuilt = 0
        for (room_id, table), entries in list(self._held.items()):
            room = self._known_rooms.get(room_id)
            if not entries or room is None:
                continue
            await self.create_room(room)
            async with self._redis.pipeline(transaction=False) as pipe:
                for pid, p in entries.items():
                    pipe.hsetnx(self._entries_key(room_id, table), pid, encode_participant(p))
                rebuilt += sum(await pipe.execute())
        return rebuilt

    async def list_revocations(self) -> list[Revocation]:
        try:
            return [r for r in await self._sync_revocations() if not r.lifted]
        except (RedisError, OSError) as exc:
            raise Unavailable("the shared state (Redis) is out of reach; try again") from exc

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self._redis.ping(), _PING_TIMEOUT_S))
        except (RedisError, OSError, TimeoutError):
            return False

    # node cleanup

    async def purge_node(self, node_id: str) -> int:
        if node_id == self.node_id:
            self._held.clear()
        room_ids = await self._room_ids()
        keys = [k for room_id in room_ids for k in self._entry_keys(room_id)]
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            tables = await pipe.execute()
        removed = 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, entries in zip(keys, tables, strict=True):
                held = [pid for pid, v in entries.items() if _held_by(json.loads(v), node_id)]
                if held:
                    pipe.hdel(key, *held)
                    removed += len(held)
            await pipe.execute()
        return removed

    def _entry_keys(self, room_id: str) -> tuple[str, str]:
        return self._participants_key(room_id), self._lobby_key(room_id)

    # node liveness: `node:<id>` (expiring) while a node is alive, `nodes` (set) of those seen

    async def heartbeat(self, node_id: str, ttl_s: float, load: int | None = None) -> None:
        # The key's value is the load ("-": no SFU); the version before this one wrote "1".
        value = "-" if load is None else str(load)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._node_key(node_id), value, px=max(1, int(ttl_s * 1000)))
                pipe.sadd(self._nodes_key, node_id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise Unavailable("the shared state (Redis) is out of reach") from exc

    # `room:{<id>}:annotations` (list of base64 sealed events, signaling.annotation_mirror)

    async def append_annotations(
        self, room_id: str, records: list[bytes], max_records: int, keep_s: float
    ) -> None:
        key = self._room_key(room_id) + ":annotations"
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.rpush(key, *(base64.b64encode(r).decode() for r in records))
                pipe.ltrim(key, -max_records, -1)
                pipe.pexpire(key, max(1, int(keep_s * 1000)))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise Unavailable("the shared state (Redis) is out of reach") from exc

    async def annotation_records(self, room_id: str) -> list[bytes]:
        key = self._room_key(room_id) + ":annotations"
        try:
            raw = cast(list[str], await self._redis.lrange(key, 0, -1))
        except (RedisError, OSError) as exc:
            raise Unavailable("the shared state (Redis) is out of reach") from exc
        return [base64.b64decode(r) for r in raw]

    # `node-urls` (hash: node id -> URL), `recording-holders` (hash: recording id -> node id)

    async def set_node_url(self, node_id: str, url: str | None) -> None:
        try:
            if url is None:
                await self._redis.hdel(self._prefix + "node-urls", node_id)
            else:
                await self._redis.hset(self._prefix + "node-urls", node_id, url)
        except (RedisError, OSError) as exc:
            raise Unavailable("the shared state (Redis) is out of reach") from exc

    async def node_urls(self) -> dict[str, str]:
        try:
            return cast(dict[str, str], await self._redis.hgetall(self._prefix + "node-urls"))
        except (RedisError, OSError) as exc:
            raise Unavailable("the shared state (Redis) is out of reach") from exc

    async def set_recording_holders(self, node_id: str, recording_ids: Iterable[str]) -> None:
        mapping: dict[Any, Any] = dict.fromkeys(recording_ids, node_id)
        if not mapping:
            return
        try:
            await self._redis.hset(self._prefix + "recording-holders", mapping=mapping)
        except (RedisError, OSError) as exc:
            raise Unavailable("the shared state (Redis) is out of reach") from exc

    async def recording_holder(self, recording_id: str) -> str | None:
        try:
            holder = await self._redis.hget(self._prefix + "recording-holders", recording_id)
        except (RedisError, OSError) as exc:
            raise Unavailable("the shared state (Redis) is out of reach") from exc
        return None if holder is None else str(holder)

    async def dead_nodes(self) -> list[str]:
        try:
            known = sorted(cast(set[str], await self._redis.smembers(self._nodes_key)))
            if not known:
                return []
            async with self._redis.pipeline(transaction=False) as pipe:
                for node_id in known:
                    pipe.exists(self._node_key(node_id))
                alive = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise Unavailable("the shared state (Redis) is out of reach") from exc
        return [node_id for node_id, up in zip(known, alive, strict=True) if not up]

    async def live_nodes(self) -> dict[str, int | None]:
        try:
            known = sorted(cast(set[str], await self._redis.smembers(self._nodes_key)))
            if not known:
                return {}
            values = await self._redis.mget([self._node_key(node_id) for node_id in known])
        except (RedisError, OSError) as exc:
            raise Unavailable("the shared state (Redis) is out of reach") from exc
        return {
            node_id: _load(value)
            for node_id, value in zip(known, values, strict=True)
            if value is not None
        }

    async def connected_nodes(self) -> set[str] | None:
        try:
            listing = await self._redis.client_list()
        except ResponseError:
            return None  # CLIENT LIST refused (an ACL without it) or not served (a proxy)
        except (RedisError, OSError) as exc:
            raise Unavailable("the shared state (Redis) is out of reach") from exc
        marker = self._client_name("")
        return {
            name[len(marker) :]
            for name in (client.get("name", "") for client in listing)
            if name.startswith(marker)
        }

    async def server_identity(self, max_age_s: float = 0.0) -> str | None:
        asked_at, server = self._server_asked
        if max_age_s > 0 and time.monotonic() - asked_at <= max_age_s:
            return server
        try:
            return await self._run_id()
        except (RedisError, OSError) as exc:
            raise Unavailable("the shared state (Redis) is out of reach") from exc

    async def _run_id(self) -> str | None:
        """The answering server's run id (new at each start), None if it does not say."""
        asked_at = time.monotonic()
        try:
            info = await self._redis.info("server")
        except ResponseError:
            server = None  # INFO refused (an ACL without it) or not served (a proxy)
        else:
            server = str(info.get("run_id") or "") or None
        self._server_asked = (asked_at, server)
        return server

    def _client_name(self, node_id: str) -> str:
        """The connection name of a node (Redis names hold no spaces)."""
        return "".join("_" if c.isspace() else c for c in f"{self._prefix}node:{node_id}")

    async def forget_node(self, node_id: str) -> None:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.srem(self._nodes_key, node_id)
                pipe.delete(self._node_key(node_id))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise Unavailable("the shared state (Redis) is out of reach") from exc

    def _node_key(self, node_id: str) -> str:
        return f"{self._prefix}node:{node_id}"

    # media nodes

    async def claim_media_node(self, room_id: str, node_id: str, ttl_s: float) -> str:
        holder = await self._claim_media(
            keys=[self._media_node_key(room_id)], args=[node_id, int(ttl_s * 1000)]
        )
        return str(holder)

    async def release_media_node(self, room_id: str, node_id: str) -> None:
        await self._delete_if_holder(keys=[self._media_node_key(room_id)], args=[node_id])

    async def media_node_of(self, room_id: str) -> str | None:
        try:
            holder = await self._redis.get(self._media_node_key(room_id))
        except (RedisError, OSError) as exc:
            raise Unavailable("the shared state (Redis) is out of reach") from exc
        return cast(str | None, holder)

    def _media_node_key(self, room_id: str) -> str:
        return f"{self._room_key(room_id)}:media-node"

    async def keep_consent(self, room_id: str, kept: str | None, ttl_s: float) -> None:
        key = f"{self._room_key(room_id)}:consent"
        if kept is None:
            await self._redis.delete(key)
        else:
            await self._redis.set(key, kept, px=max(1, int(ttl_s * 1000)))

    async def kept_consent(self, room_id: str) -> str | None:
        value = await self._redis.get(f"{self._room_key(room_id)}:consent")
        return None if value is None else str(value)

    # short-lived records (sign-in sessions): plain keys with a Redis expiry

    def _expiring_key(self, key: str) -> str:
        return self._prefix + "expiring:" + key

    async def put_expiring(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        try:
            await self._redis.set(
                self._expiring_key(key), json.dumps(value), px=max(1, int(ttl_s * 1000))
            )
        except (RedisError, OSError) as exc:
            raise Unavailable("the shared state (Redis) is out of reach; try again") from exc

    async def get_expiring(self, key: str) -> dict[str, Any] | None:
        return await self._read_expiring(key, take=False)

    async def take_expiring(self, key: str) -> dict[str, Any] | None:
        return await self._read_expiring(key, take=True)

    async def _read_expiring(self, key: str, *, take: bool) -> dict[str, Any] | None:
        name = self._expiring_key(key)
        try:
            raw = await (self._redis.getdel(name) if take else self._redis.get(name))
        except (RedisError, OSError) as exc:
            raise Unavailable("the shared state (Redis) is out of reach; try again") from exc
        return None if raw is None else dict(json.loads(raw))

    async def delete_expiring(self, key: str) -> None:
        try:
            await self._redis.delete(self._expiring_key(key))
        except (RedisError, OSError) as exc:
            raise Unavailable("the shared state (Redis) is out of reach; try again") from exc

    # events

    async def publish(self, event: dict[str, Any]) -> None:
        await self._redis.publish(self._channel, json.dumps(event))

    async def _listen(self) -> None:
        """Receive events until cancelled, reconnecting with backoff when Redis goes away.

        Every (re)subscription, including redis-py's own silent reconnects, is followed by a
        reload of the revocations, since pub/sub drops what is published while disconnected.
        """
        backoff = _RECONNECT_MIN_S
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                while True:
                    message = await pubsub.get_message(timeout=_LISTEN_POLL_S)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        await self._resync()
                        self._subscribed.set()
                        backoff = _RECONNECT_MIN_S
                    elif message["type"] == "message":
                        await self._receive_raw(message["data"])
            except (RedisError, OSError) as exc:
                log.warning(
                    "node %s lost the Redis event channel (%s); retrying in %.1f s",
                    self.node_id,
                    exc,
                    backoff,
                )
            except Exception:
                log.exception("node %s: Redis event listener failed; restarting", self.node_id)
            finally:
                try:
                    await pubsub.aclose()
                except (RedisError, OSError):
                    pass
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, _RECONNECT_MAX_S)

    async def _receive_raw(self, data: str) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            log.warning("ignoring a non-JSON message on %s", self._channel)
            return
        if not isinstance(event, dict):
            log.warning("ignoring a non-object message on %s", self._channel)
            return
        if event.get("type") == REVOKED_EVENT:
            try:
                await self._remember([Revocation.from_dict(event["revocation"])])
            except (KeyError, TypeError, ValueError):
                pass  # _receive logs it
        self._receive(event)


def _load(value: str | bytes) -> int | None:
    """A heartbeat's load ("-": no SFU; anything unreadable counts as no SFU)."""
    text = value.decode() if isinstance(value, bytes) else value
    return int(text) if text.isdigit() else None
