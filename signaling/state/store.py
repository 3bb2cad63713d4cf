"""The shared state's interface: `StateStore`, the one door to rooms, participants, lobby,
revocations and events between nodes.

Two implementations keep the same semantics: `memory.MemoryStore` for a single process (the
default) and `redis.RedisStore` for several signalling nodes sharing one Redis (`--redis URL`);
`opening.open_store` picks one. Records are copied in and out (a caller mutating a returned
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
import inspect
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from signaling.cluster import REVOKED_EVENT
from signaling.state.directory import DirectoryStore
from signaling.state.meetings import MeetingBook
from signaling.state.records import ParticipantRecord, Revocation, RoomRecord
from signaling.state.revocations import RevocationIndex, append_revocations, load_revocation_log

log = logging.getLogger(__name__)

EventHandler = Callable[[dict[str, Any]], Awaitable[None] | None]
"""Receives every event published by any node, as its JSON object (`signaling.cluster` types it);
may be a plain function or a coroutine function. After `revoke` every node's subscribers receive
the `cluster.Revoked` event (drop the identity's connections)."""

EVENT_QUEUE_BOUND = 10_000
"""Events waiting for the local handlers; beyond this they are dropped (and logged)."""


def default_node_id() -> str:
    """A node id unique to this process: host name plus a random suffix.

    Pass a stable id (e.g. the pod name) instead to let a restarted node purge what its crashed
    predecessor left behind.
    """
    return f"{socket.gethostname()}-{secrets.token_hex(3)}"


class StateStore(abc.ABC):
    """Rooms, participants, lobby, revocations and node-to-node events behind one interface."""

    node_id: str
    """Id of this node; participants it holds carry it in `ParticipantRecord.node`."""
    directory: DirectoryStore
    """The people and groups the hospital's IdP provisions (SCIM), shared as the rooms are."""
    meetings: MeetingBook
    """The meetings the HIS scheduled (`signaling.state.meetings`); each backend sets its own."""

    def __init__(self, node_id: str | None, revocations_path: Path | None = None) -> None:
        """`revocations_path`: this node's revocation journal; None keeps them in memory only."""
        self.node_id = node_id or default_node_id()
        self._revocations = RevocationIndex()
        self._revocations_path = revocations_path
        self._journal_lock = asyncio.Lock()
        self._journal_writes: set[asyncio.Future[None]] = set()
        """Journal appends under way (in a thread): `close` waits for them, so a revocation
        heard just before a stop is on disk when the next start reads the journal."""
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
        if self._journal_writes:
            await asyncio.gather(*self._journal_writes, return_exceptions=True)

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
    async def delete_room(self, room_id: str) -> bool:
        """Remove the room with its participants and lobby; True if this call removed it (of
        two nodes deleting it at once, one gets True: the one that audits its closing)."""

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
            loaded = await asyncio.to_thread(
                load_revocation_log, self._revocations_path, time.time()
            )
        for r in loaded:
            self._revocations.add(r)

    async def _remember(self, revocations: Iterable[Revocation]) -> None:
        """Merge revocations into the local copy; journal those this node had not seen, so
        that it never forgets one, whatever happens to the shared state."""
        now = time.time()
        new = [r for r in revocations if not r.expired(now) and self._revocations.add(r)]
        if new and self._revocations_path is not None:
            async with self._journal_lock:
                # Shielded: a listener cancelled at shutdown does not leave the write behind
                # unwaited for (`close` waits for it); the thread would finish it anyway.
                write = asyncio.ensure_future(
                    asyncio.to_thread(append_revocations, self._revocations_path, new)
                )
                self._journal_writes.add(write)
                write.add_done_callback(self._journal_writes.discard)
                await asyncio.shield(write)

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
        """Remove the participants and lobby entries held by a node; returns how many. Those
        held for a resume since the node was found lost (`ParticipantRecord.lost_at`) stay:
        they are another node's to hand over or let go.

        The server calls it for its own node id after `start` (what a crashed run left) and
        before `close`.
        """

    # which nodes are alive (signaling.liveness)

    @abc.abstractmethod
    async def heartbeat(self, node_id: str, ttl_s: float, load: int | None = None) -> None:
        """`node_id` is alive for the next `ttl_s` seconds (and is known: `dead_nodes` lists it
        once it stops saying so). `load`: the media participants its SFU hosts now (None: it
        has no SFU), what `live_nodes` tells the node choosing where a room's media moves."""

    @abc.abstractmethod
    async def live_nodes(self) -> dict[str, int | None]:
        """The nodes whose heartbeat has not run out, each with the load it last reported
        (None: no SFU)."""

    @abc.abstractmethod
    async def dead_nodes(self) -> list[str]:
        """Nodes that have heartbeated and whose last heartbeat ran out, until `forget_node`."""

    # each room's annotation and chat events, sealed (signaling.annotation_mirror)

    @abc.abstractmethod
    async def append_annotations(
        self, room_id: str, records: list[bytes], max_records: int, keep_s: float
    ) -> None:
        """Append sealed event records to the room's list, keeping its newest `max_records`,
        for `keep_s` after this append."""

    @abc.abstractmethod
    async def annotation_records(self, room_id: str) -> list[bytes]:
        """The room's sealed event records, oldest first."""

    # where a node is reached and which recordings it holds (signaling.http.forwarding)

    @abc.abstractmethod
    async def set_node_url(self, node_id: str, url: str | None) -> None:
        """The URL other nodes reach `node_id` at (its `node_url` setting); None: none."""

    @abc.abstractmethod
    async def node_urls(self) -> dict[str, str]:
        """Every node's URL as it last set it (live or not: `live_nodes` says which are)."""

    @abc.abstractmethod
    async def set_recording_holders(self, node_id: str, recording_ids: Iterable[str]) -> None:
        """`node_id` holds these recordings (their directory is on its disk)."""

    @abc.abstractmethod
    async def recording_holder(self, recording_id: str) -> str | None:
        """The node that last said it holds `recording_id`; None: no node did."""

    async def connected_nodes(self) -> set[str] | None:
        """The nodes that hold a connection to the shared state now (a node whose process
        ended holds none, while its heartbeat has seconds to run); None: not known here (no
        shared state, or it does not say)."""
        return None

    async def server_identity(self, max_age_s: float = 0.0) -> str | None:
        """Which server holds the shared state now (Redis: the run id of the one answering,
        new after a restart or a failover to a replica; an answer got at most `max_age_s`
        ago will do); None: not known here. Right after it
        changes, what the shared state says of the other nodes (heartbeats last written to
        the previous server, connections not remade yet) is not to be believed
        (`signaling.liveness.LivenessWatch.server_seen`)."""
        return None

    @abc.abstractmethod
    async def forget_node(self, node_id: str) -> None:
        """`node_id` is no longer known (cleaned up after it died, or it stopped cleanly)."""

    # which node hosts a room's media

    @abc.abstractmethod
    async def claim_media_node(self, room_id: str, node_id: str, ttl_s: float) -> str:
        """The node that hosts the room's media: `node_id` if nobody holds the room (or the
        holder's claim expired) — the claim is then `node_id`'s for `ttl_s` — else the holder.
        The holder calls it again to keep its claim."""

    @abc.abstractmethod
    async def release_media_node(self, room_id: str, node_id: str) -> None:
        """Give up the claim on a room's media (only if `node_id` holds it)."""

    @abc.abstractmethod
    async def media_node_of(self, room_id: str) -> str | None:
        """The node whose claim on the room's media holds now (None: nobody's)."""

    # a room's consent and recording state, kept by its media node for the next one

    @abc.abstractmethod
    async def keep_consent(self, room_id: str, kept: str | None, ttl_s: float) -> None:
        """Keep a room's consent and recording state (JSON, `signaling.consent.Kept`) for
        `ttl_s`, or (None) forget it."""

    @abc.abstractmethod
    async def kept_consent(self, room_id: str) -> str | None:
        """The room's consent and recording state last kept, unless it ran out."""

    # short-lived records: sign-in sessions and started sign-ins (signaling.oidc)

    @abc.abstractmethod
    async def put_expiring(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        """Keep a JSON object under `key` for `ttl_s` seconds (every node reads it)."""

    @abc.abstractmethod
    async def get_expiring(self, key: str) -> dict[str, Any] | None:
        """The object under `key`, None once it expired or was deleted."""

    @abc.abstractmethod
    async def take_expiring(self, key: str) -> dict[str, Any] | None:
        """The object under `key`, deleted in the same step: of two nodes taking it at once,
        one gets it (a sign-in's state is used once)."""

    @abc.abstractmethod
    async def delete_expiring(self, key: str) -> None:
        """Forget the object under `key` (a sign-out)."""

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
