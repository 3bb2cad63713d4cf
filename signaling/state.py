"""Shared state: rooms, participants, lobby, revocations, and events between nodes.

One small interface, `StateStore`, with two implementations that keep the same semantics:
`MemoryStore` for a single process (the default) and `RedisStore` for several signalling nodes
sharing one Redis (`--redis URL`). Records are copied in and out (a caller mutating a returned
record changes nothing until it saves it), room creation and the participant bound are atomic,
and every node's subscribers receive every published event, the publisher's own included.

Revocations are the kill switch, so they survive restarts whatever Redis does: every node keeps
each revocation it has seen in its own JSON Lines journal (in its data dir), answers `is_revoked`
from a local copy that revocation events keep current, and puts back into Redis what a Redis
restarted empty lost. Rooms and rosters live in Redis only; a Redis that comes back empty is
refilled by the live nodes, each re-writing the rooms and participants it holds.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import inspect
import json
import logging
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.durable import append_durably, write_atomically
from core.errors import IntegrityError, NotFound, Unavailable
from signaling.cluster import REVOKED_EVENT, Revoked, to_wire

log = logging.getLogger(__name__)

EventHandler = Callable[[dict[str, Any]], Awaitable[None] | None]
"""Receives every event published by any node, as its JSON object (`signaling.cluster` types it);
may be a plain function or a coroutine function. After `revoke` every node's subscribers receive
the `cluster.Revoked` event (drop the identity's connections)."""

REVOCATIONS_FILE = "revocations.jsonl"
"""Name of the node's revocation journal inside the data dir (both stores keep one)."""

EVENT_QUEUE_BOUND = 10_000
"""Events waiting for the local handlers; beyond this they are dropped (and logged)."""

_RECONNECT_MIN_S = 0.1
_RECONNECT_MAX_S = 5.0
_LISTEN_POLL_S = 1.0
_START_TIMEOUT_S = 10.0
_PING_TIMEOUT_S = 2.0
_KNOWN_ROOMS_BOUND = 10_000


def default_node_id() -> str:
    """A node id unique to this process: host name plus a random suffix.

    Pass a stable id (e.g. the pod name) instead to let a restarted node purge what its crashed
    predecessor left behind.
    """
    return f"{socket.gethostname()}-{secrets.token_hex(3)}"


def _known_fields(cls: type, d: Mapping[str, Any]) -> dict[str, Any]:
    # Keys unknown to this version (written by a newer node during a rolling upgrade) are dropped.
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass(slots=True)
class RoomRecord:
    """A scheduled or open consultation room, as every node sees it."""

    room_id: str
    """Stable room identifier (from the scheduler or the token's room grant)."""
    departments: list[str]
    """Departments the consultation belongs to (policy scoping)."""
    lobby: bool = False
    """Lobby on: everyone but the chair waits to be admitted."""
    locked: bool = False
    """Locked: nobody new may join or wait in the lobby."""
    title: str = ""
    """Free text from the scheduler; never patient-identifying."""
    grants: list[str] = field(default_factory=list)
    """Who may join besides token room grants: `sub:x`, `dept:y` or `org:z`."""
    scheduled_by: str = ""
    """`sub` of whoever scheduled the room."""
    opened: bool = False
    """A chair is or was in the room, or it was opened explicitly."""
    created_at: float = 0.0
    """Creation time, seconds since the epoch."""
    starts_at: float | None = None
    """Scheduled start, seconds since the epoch, if any."""
    admitted: list[str] = field(default_factory=list)
    """`sub`s a chair admitted from the lobby: they rejoin (after a network blip, or from a
    second device) without waiting again, until removed or the room closes."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RoomRecord:
        """The record `to_dict` produced (unknown keys ignored)."""
        kwargs = _known_fields(cls, d)
        for name in ("departments", "grants"):
            if name in kwargs:
                kwargs[name] = list(kwargs[name])
        return cls(**kwargs)


@dataclass(slots=True)
class ParticipantRecord:
    """One connection in a room or its lobby."""

    participant_id: str
    """Random, one per connection."""
    sub: str
    """The identity's subject."""
    role: str
    """The identity's role (chair, specialist, ...)."""
    name: str
    """Display name."""
    depts: list[str]
    """The identity's departments."""
    org: str
    """The identity's institution."""
    node: str
    """Id of the node holding the connection."""
    joined_at: float
    """When the connection joined (or entered the lobby), seconds since the epoch."""
    audio_muted: bool = False
    """Microphone muted (by the participant or the chair)."""
    video_muted: bool = False
    """Camera off (by the participant or the chair)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ParticipantRecord:
        """The record `to_dict` produced (unknown keys ignored)."""
        kwargs = _known_fields(cls, d)
        if "depts" in kwargs:
            kwargs["depts"] = list(kwargs["depts"])
        return cls(**kwargs)


@dataclass(slots=True)
class Revocation:
    """A revoked token (`jti`) or a whole revoked identity (`sub`)."""

    kind: Literal["jti", "sub"]
    """What `value` names: one token or every token of a subject."""
    value: str
    """The revoked `jti` or `sub`."""
    reason: str
    """Why, for the audit trail and the operator."""
    by: str
    """`sub` of whoever revoked it."""
    at: float
    """When, seconds since the epoch."""
    expires_at: float | None = None
    """When it stops mattering (a jti: when the token expires); None for never."""

    @property
    def key(self) -> str:
        """`kind:value`, the revocation's identity in every index."""
        return f"{self.kind}:{self.value}"

    def expired(self, now: float) -> bool:
        """Whether it no longer applies at `now`."""
        return self.expires_at is not None and self.expires_at <= now

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Revocation:
        """The record `to_dict` produced; ValueError if it names no valid kind and value."""
        kwargs = _known_fields(cls, d)
        if kwargs.get("kind") not in ("jti", "sub"):
            raise ValueError(f"revocation kind must be 'jti' or 'sub', not {kwargs.get('kind')!r}")
        if not isinstance(kwargs.get("value"), str) or not kwargs["value"]:
            raise ValueError("revocation value must be a non-empty string")
        return cls(**kwargs)


def _copy_room(room: RoomRecord) -> RoomRecord:
    return dataclasses.replace(room, departments=list(room.departments), grants=list(room.grants))


def _copy_participant(p: ParticipantRecord) -> ParticipantRecord:
    return dataclasses.replace(p, depts=list(p.depts))


class RevocationIndex:
    """The live revocations by `kind:value`: the local copy every `is_revoked` reads.

    Revocations are never withdrawn, only expire, so merging any two copies is a union; for the
    same key the later revocation (by `at`) wins, whatever order copies arrive in.
    """

    def __init__(self) -> None:
        self._by_key: dict[str, Revocation] = {}

    def add(self, r: Revocation) -> bool:
        """Merge one revocation in; whether it was new to this copy (or newer than its own)."""
        current = self._by_key.get(r.key)
        if current is None or r.at > current.at:
            self._by_key[r.key] = r
            return True
        if r.at == current.at:
            self._by_key[r.key] = r
        return False

    def lookup(self, *, jti: str, sub: str, now: float) -> Revocation | None:
        """The revocation that applies to a token with this `jti` and `sub`, if any."""
        # Hot path (every join, every revocation sweep): two dict lookups, no I/O.
        # tests/test_state.py::test_is_revoked_does_not_ask_redis keeps it local.
        if jti:
            r = self._live("jti:" + jti, now)
            if r is not None:
                return r
        if sub:
            return self._live("sub:" + sub, now)
        return None

    def _live(self, key: str, now: float) -> Revocation | None:
        r = self._by_key.get(key)
        if r is not None and r.expired(now):
            del self._by_key[key]
            return None
        return r

    def prune(self, now: float) -> list[Revocation]:
        """Drop and return the expired revocations."""
        expired = [r for r in self._by_key.values() if r.expired(now)]
        for r in expired:
            del self._by_key[r.key]
        return expired

    def live(self, now: float) -> list[Revocation]:
        """The revocations that apply at `now`, oldest first."""
        self.prune(now)
        return sorted(self._by_key.values(), key=lambda r: (r.at, r.key))


class StateStore(abc.ABC):
    """Rooms, participants, lobby, revocations and node-to-node events behind one interface."""

    node_id: str
    """Id of this node; participants it holds carry it in `ParticipantRecord.node`."""

    def __init__(self, node_id: str | None, revocations_path: Path | None = None) -> None:
        """`revocations_path`: this node's revocation journal; None keeps them in memory only."""
        self.node_id = node_id or default_node_id()
        self._revocations = RevocationIndex()
        self._revocations_path = revocations_path
        self._journal_lock = asyncio.Lock()
        self._handlers: list[EventHandler] = []
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=EVENT_QUEUE_BOUND)
        self._dispatcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load persisted state and start delivering events to subscribers."""
        await self._load_journal()
        if self._dispatcher is None:
            self._dispatcher = asyncio.create_task(
                self._dispatch_events(), name=f"state-events-{self.node_id}"
            )

    async def close(self) -> None:
        """Stop delivering events and release connections. Does not purge this node's entries."""
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
            self._dispatcher = None

    # rooms

    @abc.abstractmethod
    async def create_room(self, room: RoomRecord) -> bool:
        """Store a new room; False (and nothing changes) if the id exists already."""

    @abc.abstractmethod
    async def get_room(self, room_id: str) -> RoomRecord | None:
        """The room, or None."""

    @abc.abstractmethod
    async def save_room(self, room: RoomRecord) -> None:
        """Store the room, replacing any record with the same id."""

    @abc.abstractmethod
    async def delete_room(self, room_id: str) -> None:
        """Remove the room with its participants and lobby."""

    @abc.abstractmethod
    async def list_rooms(self) -> list[RoomRecord]:
        """Every room, oldest first."""

    @abc.abstractmethod
    async def count_rooms(self) -> int:
        """How many rooms exist."""

    # participants (joined)

    @abc.abstractmethod
    async def add_participant(
        self, room_id: str, p: ParticipantRecord, *, max_participants: int
    ) -> bool:
        """Add (or replace, by id) a joined participant; False if the room is full.

        The capacity check and the insert are one atomic step. NotFound if the room does not
        exist (it may have been deleted a moment ago).
        """

    @abc.abstractmethod
    async def remove_participant(
        self, room_id: str, participant_id: str
    ) -> ParticipantRecord | None:
        """Remove a joined participant and return it, or None if it was not there."""

    @abc.abstractmethod
    async def update_participant(self, room_id: str, p: ParticipantRecord) -> None:
        """Replace a joined participant's record; does nothing if it has left."""

    @abc.abstractmethod
    async def get_participant(self, room_id: str, participant_id: str) -> ParticipantRecord | None:
        """A joined participant, or None."""

    @abc.abstractmethod
    async def list_participants(self, room_id: str) -> list[ParticipantRecord]:
        """The joined participants, in order of joining."""

    async def find_participant_by_sub(self, room_id: str, sub: str) -> ParticipantRecord | None:
        """The earliest-joined participant with this subject, or None."""
        for p in await self.list_participants(room_id):
            if p.sub == sub:
                return p
        return None

    # lobby (waiting, not yet admitted)

    @abc.abstractmethod
    async def add_to_lobby(self, room_id: str, p: ParticipantRecord) -> None:
        """Put a connection in the room's lobby. NotFound if the room does not exist."""

    @abc.abstractmethod
    async def remove_from_lobby(
        self, room_id: str, participant_id: str
    ) -> ParticipantRecord | None:
        """Take a connection out of the lobby and return it, or None if it was not there."""

    @abc.abstractmethod
    async def list_lobby(self, room_id: str) -> list[ParticipantRecord]:
        """The waiting connections, in order of arrival."""

    # revocations

    @abc.abstractmethod
    async def revoke(self, r: Revocation) -> None:
        """Persist a revocation and tell every node (a `REVOKED_EVENT` event).

        Unavailable (and nothing takes effect) when the shared state cannot be reached.
        """

    async def _load_journal(self) -> None:
        """Take in (and compact) this node's revocation journal."""
        if self._revocations_path is None:
            return
        async with self._journal_lock:
            loaded = await asyncio.to_thread(_load_revocation_log, self._revocations_path)
        for r in loaded:
            self._revocations.add(r)

    async def _remember(self, revocations: Iterable[Revocation]) -> None:
        """Merge revocations into the local copy; journal those this node had not seen, so
        that it never forgets one, whatever happens to the shared state."""
        now = time.time()
        new = [r for r in revocations if not r.expired(now) and self._revocations.add(r)]
        if new and self._revocations_path is not None:
            async with self._journal_lock:
                await asyncio.to_thread(_append_revocations, self._revocations_path, new)

    async def is_revoked(self, *, jti: str, sub: str) -> Revocation | None:
        """The revocation that applies to this token, if any. Answers from the local copy."""
        return self._revocations.lookup(jti=jti, sub=sub, now=time.time())

    @abc.abstractmethod
    async def list_revocations(self) -> list[Revocation]:
        """Every revocation still in force, oldest first.

        Unavailable when the shared state cannot be reached.
        """

    async def ping(self) -> bool:
        """Whether the shared state answers now (readiness); the memory store always does."""
        return True

    # node cleanup

    @abc.abstractmethod
    async def purge_node(self, node_id: str) -> int:
        """Remove the participants and lobby entries held by a node; returns how many.

        The server calls it for its own node id after `start` (what a crashed run left) and
        before `close`.
        """

    # which node hosts a room's media

    @abc.abstractmethod
    async def claim_media_node(self, room_id: str, node_id: str, ttl_s: float) -> str:
        """The node that hosts the room's media: `node_id` if nobody holds the room (or the
        holder's claim expired) — the claim is then `node_id`'s for `ttl_s` — else the holder.
        The holder calls it again to keep its claim."""

    @abc.abstractmethod
    async def release_media_node(self, room_id: str, node_id: str) -> None:
        """Give up the claim on a room's media (only if `node_id` holds it)."""

    # events between nodes

    @abc.abstractmethod
    async def publish(self, event: dict[str, Any]) -> None:
        """Send a JSON-serialisable event to every node's subscribers, this node's included."""

    def subscribe(self, handler: EventHandler) -> None:
        """Call `handler` with every event, in publication order, one event at a time.

        Handlers run on one task per node: a slow handler delays the next events (not the
        revocation copy, which is updated before handlers run). Exceptions are logged.
        """
        self._handlers.append(handler)

    def _receive(self, event: dict[str, Any]) -> None:
        """Take in an event from any node: update the revocation copy, queue it for handlers."""
        if event.get("type") == REVOKED_EVENT:
            try:
                self._revocations.add(Revocation.from_dict(event["revocation"]))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("ignoring a malformed revocation event: %s", exc)
        try:
            self._events.put_nowait(event)
        except asyncio.QueueFull:
            log.error("event queue full; dropped a %r event", event.get("type"))

    async def _dispatch_events(self) -> None:
        while True:
            event = await self._events.get()
            for handler in tuple(self._handlers):
                try:
                    result = handler(event)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("handler %r failed on a %r event", handler, event.get("type"))


# The memory store's revocation log: one JSON object per line, appended and fsynced per revoke.


def _encode_revocation_line(r: Revocation) -> bytes:
    return json.dumps(r.to_dict(), separators=(",", ":")).encode() + b"\n"


def _decode_revocation_line(line: bytes) -> Revocation:
    d = json.loads(line)
    if not isinstance(d, dict):
        raise ValueError("not a JSON object")
    return Revocation.from_dict(d)


def read_revocation_log(path: Path) -> tuple[list[Revocation], bool]:
    """The revocations in the log, and whether its last line was torn.

    A torn last line (a write cut short by a crash: its revoke never returned) is skipped with a
    warning. A bad line anywhere else is not a crash artefact: IntegrityError, so that a
    revocation is never silently lost.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], False
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    revocations: list[Revocation] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            revocations.append(_decode_revocation_line(line))
        except (ValueError, TypeError) as exc:
            raise IntegrityError(f"{path}:{lineno}: unreadable revocation ({exc})") from exc
    torn = False
    if tail.strip():
        try:
            revocations.append(_decode_revocation_line(tail))
        except (ValueError, TypeError):
            log.warning(
                "%s:%d: skipped a partially written last line (%d bytes)",
                path,
                len(lines) + 1,
                len(tail),
            )
        torn = True  # complete or not, the next append must not continue this line
    return revocations, torn


def _append_revocations(path: Path, revocations: list[Revocation]) -> None:
    append_durably(path, b"".join(_encode_revocation_line(r) for r in revocations))


def _rewrite_revocation_log(path: Path, revocations: list[Revocation]) -> None:
    write_atomically(path, b"".join(_encode_revocation_line(r) for r in revocations))


def _load_revocation_log(path: Path) -> list[Revocation]:
    """Read the log; compact it (drop expired, superseded and torn lines) if it has any."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    records, torn = read_revocation_log(path)
    index = RevocationIndex()
    for r in records:
        index.add(r)
    live = index.live(time.time())
    if torn or len(live) != len(records):
        _rewrite_revocation_log(path, live)
    return live


class MemoryStore(StateStore):
    """State in this process: one node, no Redis. Revocations persist in a JSON Lines file."""

    def __init__(self, *, revocations_path: Path | None, node_id: str | None = None) -> None:
        """`revocations_path`: the append-only revocation log; None keeps them in memory only."""
        super().__init__(node_id, revocations_path)
        self._rooms: dict[str, RoomRecord] = {}
        self._participants: dict[str, dict[str, ParticipantRecord]] = {}
        self._lobby: dict[str, dict[str, ParticipantRecord]] = {}
        self._media_nodes: dict[str, tuple[str, float]] = {}

    # Every method below runs without awaiting between its check and its change, so each is
    # atomic on the event loop.

    async def create_room(self, room: RoomRecord) -> bool:
        if room.room_id in self._rooms:
            return False
        self._rooms[room.room_id] = _copy_room(room)
        self._participants[room.room_id] = {}
        self._lobby[room.room_id] = {}
        return True

    async def get_room(self, room_id: str) -> RoomRecord | None:
        room = self._rooms.get(room_id)
        return None if room is None else _copy_room(room)

    async def save_room(self, room: RoomRecord) -> None:
        self._rooms[room.room_id] = _copy_room(room)
        self._participants.setdefault(room.room_id, {})
        self._lobby.setdefault(room.room_id, {})

    async def delete_room(self, room_id: str) -> None:
        self._rooms.pop(room_id, None)
        self._participants.pop(room_id, None)
        self._lobby.pop(room_id, None)

    async def list_rooms(self) -> list[RoomRecord]:
        rooms = sorted(self._rooms.values(), key=lambda r: (r.created_at, r.room_id))
        return [_copy_room(r) for r in rooms]

    async def count_rooms(self) -> int:
        return len(self._rooms)

    def _room_entries(
        self, table: dict[str, dict[str, ParticipantRecord]], room_id: str
    ) -> dict[str, ParticipantRecord]:
        entries = table.get(room_id)
        if entries is None:
            raise NotFound(f"room {room_id!r} does not exist")
        return entries

    async def add_participant(
        self, room_id: str, p: ParticipantRecord, *, max_participants: int
    ) -> bool:
        joined = self._room_entries(self._participants, room_id)
        if p.participant_id not in joined and len(joined) >= max_participants:
            return False
        joined[p.participant_id] = _copy_participant(p)
        return True

    async def remove_participant(
        self, room_id: str, participant_id: str
    ) -> ParticipantRecord | None:
        return self._participants.get(room_id, {}).pop(participant_id, None)

    async def update_participant(self, room_id: str, p: ParticipantRecord) -> None:
        joined = self._participants.get(room_id, {})
        if p.participant_id in joined:
            joined[p.participant_id] = _copy_participant(p)

    async def get_participant(self, room_id: str, participant_id: str) -> ParticipantRecord | None:
        p = self._participants.get(room_id, {}).get(participant_id)
        return None if p is None else _copy_participant(p)

    async def list_participants(self, room_id: str) -> list[ParticipantRecord]:
        return _in_order(self._participants.get(room_id, {}).values())

    async def add_to_lobby(self, room_id: str, p: ParticipantRecord) -> None:
        self._room_entries(self._lobby, room_id)[p.participant_id] = _copy_participant(p)

    async def remove_from_lobby(
        self, room_id: str, participant_id: str
    ) -> ParticipantRecord | None:
        return self._lobby.get(room_id, {}).pop(participant_id, None)

    async def list_lobby(self, room_id: str) -> list[ParticipantRecord]:
        return _in_order(self._lobby.get(room_id, {}).values())

    async def revoke(self, r: Revocation) -> None:
        r = dataclasses.replace(r)
        # Durable before it is announced: a revoke that returned survives a crash.
        await self._remember([r])
        await self.publish(to_wire(Revoked(revocation=r.to_dict())))

    async def list_revocations(self) -> list[Revocation]:
        return [dataclasses.replace(r) for r in self._revocations.live(time.time())]

    async def purge_node(self, node_id: str) -> int:
        removed = 0
        for table in (self._participants, self._lobby):
            for entries in table.values():
                held = [pid for pid, p in entries.items() if p.node == node_id]
                for pid in held:
                    del entries[pid]
                removed += len(held)
        return removed

    async def claim_media_node(self, room_id: str, node_id: str, ttl_s: float) -> str:
        now = time.monotonic()
        holder = self._media_nodes.get(room_id)
        if holder is None or holder[1] < now or holder[0] == node_id:
            self._media_nodes[room_id] = (node_id, now + ttl_s)
            return node_id
        return holder[0]

    async def release_media_node(self, room_id: str, node_id: str) -> None:
        holder = self._media_nodes.get(room_id)
        if holder is not None and holder[0] == node_id:
            del self._media_nodes[room_id]

    async def publish(self, event: dict[str, Any]) -> None:
        # The JSON round trip gives handlers their own copy and refuses what Redis would refuse.
        self._receive(json.loads(json.dumps(event)))


def _in_order(entries: Iterable[ParticipantRecord]) -> list[ParticipantRecord]:
    ordered = sorted(entries, key=lambda p: (p.joined_at, p.participant_id))
    return [_copy_participant(p) for p in ordered]


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


def _encode_room(room: RoomRecord) -> dict[str, str]:
    return {name: json.dumps(value) for name, value in room.to_dict().items()}


def _decode_room(fields: Mapping[str, str]) -> RoomRecord | None:
    if not fields:
        return None
    return RoomRecord.from_dict({name: json.loads(value) for name, value in fields.items()})


def _encode_participant(p: ParticipantRecord) -> str:
    return json.dumps(p.to_dict(), separators=(",", ":"))


def _decode_participants(entries: Mapping[str, str]) -> list[ParticipantRecord]:
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
    `rooms` (set of room ids), `revocations` (hash: `kind:value` -> JSON), `instance` (a random
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
        self._instance: str | None = None
        """The `instance` value this node last saw; None before its first look."""
        self._known_rooms: dict[str, RoomRecord] = {}
        """The last record this node read or wrote of each room (rebuilds what Redis lost)."""
        self._held: dict[tuple[str, str], dict[str, ParticipantRecord]] = {}
        """This node's entries by (room id, "participants" or "lobby"): participant id -> record."""
        # Connections are made on first use, so building the client here does no I/O.
        self._redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=5,
            socket_timeout=10,
            socket_keepalive=True,
            health_check_interval=15,
            # A pooled connection Redis closed (restart, failover) is retried on a fresh one
            # instead of failing the request that happened to pick it.
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self._create_room = self._redis.register_script(_CREATE_ROOM)
        self._add_bounded = self._redis.register_script(_ADD_BOUNDED)
        self._pop_field = self._redis.register_script(_POP_FIELD)
        self._replace_field = self._redis.register_script(_REPLACE_FIELD)
        self._delete_if_unchanged = self._redis.register_script(_DELETE_IF_UNCHANGED)
        self._claim_media = self._redis.register_script(_CLAIM)
        self._delete_if_holder = self._redis.register_script(_RELEASE)
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

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

    # The client decodes every reply to str (decode_responses=True); its stubs cannot know that.

    async def _hgetall(self, key: str) -> dict[str, str]:
        return cast(dict[str, str], await self._redis.hgetall(key))

    async def _room_ids(self) -> list[str]:
        return sorted(cast(set[str], await self._redis.smembers(self._rooms_key)))

    # rooms

    async def create_room(self, room: RoomRecord) -> bool:
        pairs = [item for pair in _encode_room(room).items() for item in pair]
        created = await self._create_room(
            keys=[self._room_key(room.room_id), self._rooms_key], args=[room.room_id, *pairs]
        )
        if created:
            self._remember_room(room)
        return bool(created)

    async def get_room(self, room_id: str) -> RoomRecord | None:
        room = _decode_room(await self._hgetall(self._room_key(room_id)))
        if room is not None:
            self._remember_room(room)
        return room

    def _remember_room(self, room: RoomRecord) -> None:
        """Keep the room's latest record for a rebuild; beyond `_KNOWN_ROOMS_BOUND`, forget
        those this node holds nobody in (read, or deleted by another node)."""
        self._known_rooms[room.room_id] = _copy_room(room)
        if len(self._known_rooms) > _KNOWN_ROOMS_BOUND:
            held = {room_id for (room_id, _), entries in self._held.items() if entries}
            for room_id in [r for r in self._known_rooms if r not in held]:
                del self._known_rooms[room_id]

    async def save_room(self, room: RoomRecord) -> None:
        key = self._room_key(room.room_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            fields: dict[Any, Any] = _encode_room(room)
            pipe.hset(key, mapping=fields)
            pipe.sadd(self._rooms_key, room.room_id)
            await pipe.execute()
        self._remember_room(room)

    async def delete_room(self, room_id: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(
                self._room_key(room_id), self._participants_key(room_id), self._lobby_key(room_id)
            )
            pipe.srem(self._rooms_key, room_id)
            await pipe.execute()
        self._known_rooms.pop(room_id, None)
        self._held.pop((room_id, "participants"), None)
        self._held.pop((room_id, "lobby"), None)

    async def list_rooms(self) -> list[RoomRecord]:
        room_ids = await self._room_ids()
        async with self._redis.pipeline(transaction=False) as pipe:
            for room_id in room_ids:
                pipe.hgetall(self._room_key(room_id))
            found = await pipe.execute()
        rooms = [room for room in map(_decode_room, found) if room is not None]
        return sorted(rooms, key=lambda r: (r.created_at, r.room_id))

    async def count_rooms(self) -> int:
        return int(await self._redis.scard(self._rooms_key))

    # participants and lobby

    async def _add_entry(self, room_id: str, table: str, p: ParticipantRecord, bound: int) -> bool:
        added = await self._add_bounded(
            keys=[self._room_key(room_id), self._entries_key(room_id, table)],
            args=[p.participant_id, _encode_participant(p), bound],
        )
        if added == -1:
            raise NotFound(f"room {room_id!r} does not exist")
        if added and p.node == self.node_id:
            self._held.setdefault((room_id, table), {})[p.participant_id] = _copy_participant(p)
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
            args=[p.participant_id, _encode_participant(p)],
        )
        held = self._held.get((room_id, "participants"), {})
        if p.participant_id in held:
            held[p.participant_id] = _copy_participant(p)

    async def get_participant(self, room_id: str, participant_id: str) -> ParticipantRecord | None:
        value = await self._redis.hget(self._participants_key(room_id), participant_id)
        return None if value is None else ParticipantRecord.from_dict(json.loads(value))

    async def list_participants(self, room_id: str) -> list[ParticipantRecord]:
        return _decode_participants(await self._hgetall(self._participants_key(room_id)))

    async def add_to_lobby(self, room_id: str, p: ParticipantRecord) -> None:
        await self._add_entry(room_id, "lobby", p, -1)

    async def remove_from_lobby(
        self, room_id: str, participant_id: str
    ) -> ParticipantRecord | None:
        return await self._pop_entry(room_id, "lobby", participant_id)

    async def list_lobby(self, room_id: str) -> list[ParticipantRecord]:
        return _decode_participants(await self._hgetall(self._lobby_key(room_id)))

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
        since this node last looked, write back the rooms and entries this node holds."""
        await self._sync_revocations()
        instance = cast(str | None, await self._redis.get(self._instance_key))
        if instance is None:
            await self._redis.set(self._instance_key, secrets.token_hex(8), nx=True)
            instance = cast(str | None, await self._redis.get(self._instance_key))
        if self._instance is not None and instance != self._instance:
            rebuilt = await self._rebuild_held()
            log.warning(
                "node %s found Redis emptied; wrote back %d participants and lobby entries",
                self.node_id,
                rebuilt,
            )
        self._instance = instance

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
                    pipe.hsetnx(self._entries_key(room_id, table), pid, _encode_participant(p))
                rebuilt += sum(await pipe.execute())
        return rebuilt

    async def list_revocations(self) -> list[Revocation]:
        try:
            return await self._sync_revocations()
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
                held = [pid for pid, v in entries.items() if json.loads(v).get("node") == node_id]
                if held:
                    pipe.hdel(key, *held)
                    removed += len(held)
            await pipe.execute()
        return removed

    def _entry_keys(self, room_id: str) -> tuple[str, str]:
        return self._participants_key(room_id), self._lobby_key(room_id)

    # media nodes

    async def claim_media_node(self, room_id: str, node_id: str, ttl_s: float) -> str:
        holder = await self._claim_media(
            keys=[self._media_node_key(room_id)], args=[node_id, int(ttl_s * 1000)]
        )
        return str(holder)

    async def release_media_node(self, room_id: str, node_id: str) -> None:
        await self._delete_if_holder(keys=[self._media_node_key(room_id)], args=[node_id])

    def _media_node_key(self, room_id: str) -> str:
        return f"{self._room_key(room_id)}:media-node"

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


def open_store(redis_url: str | None, data_dir: Path, node_id: str | None = None) -> StateStore:
    """The Redis store if a URL is given, else the memory store with its log in `data_dir`."""
    if redis_url:
        return RedisStore(redis_url, node_id=node_id, revocations_path=data_dir / REVOCATIONS_FILE)
    return MemoryStore(revocations_path=data_dir / REVOCATIONS_FILE, node_id=node_id)
