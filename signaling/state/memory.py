"""`MemoryStore`: the shared state in this process, for a single node (the default)."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from core.errors import NotFound
from signaling.cluster import Revoked, to_wire
from signaling.state.directory import MemoryDirectory
from signaling.state.meetings import MemoryMeetingBook
from signaling.state.records import (
    ParticipantRecord,
    Revocation,
    RoomRecord,
    copy_participant,
    copy_room,
)
from signaling.state.store import StateStore


class MemoryStore(StateStore):
    """State in this process: one node, no Redis. Revocations persist in a JSON Lines file."""

    def __init__(self, *, revocations_path: Path | None, node_id: str | None = None) -> None:
        """`revocations_path`: the append-only revocation log; None keeps them in memory only."""
        super().__init__(node_id, revocations_path)
        self._rooms: dict[str, RoomRecord] = {}
        self._participants: dict[str, dict[str, ParticipantRecord]] = {}
        self._lobby: dict[str, dict[str, ParticipantRecord]] = {}
        self._media_nodes: dict[str, tuple[str, float]] = {}
        self._consent: dict[str, tuple[str, float]] = {}
        """Each room's kept consent state and when it runs out (monotonic)."""
        self._heartbeats: dict[str, float] = {}
        """Node id -> when its last heartbeat runs out (monotonic)."""
        self._loads: dict[str, int | None] = {}
        """Node id -> the load its last heartbeat reported."""
        self._node_urls: dict[str, str] = {}
        """Node id -> the URL other nodes reach it at."""
        self._recording_holders: dict[str, str] = {}
        """Recording id -> the node holding it."""
        self._annotations: dict[str, list[bytes]] = {}
        """Room id -> its sealed annotation events."""
        self.directory = MemoryDirectory()
        self.meetings = MemoryMeetingBook()
        self._expiring: dict[str, tuple[str, float]] = {}
        """Short-lived records: key -> (JSON, monotonic expiry)."""

    # Every method below runs without awaiting between its check and its change, so each is
    # atomic on the event loop.

    async def create_room(self, room: RoomRecord) -> bool:
        if room.room_id in self._rooms:
            return False
        self._rooms[room.room_id] = copy_room(room)
        self._participants[room.room_id] = {}
        self._lobby[room.room_id] = {}
        return True

    async def get_room(self, room_id: str) -> RoomRecord | None:
        room = self._rooms.get(room_id)
        return None if room is None else copy_room(room)

    async def save_room(self, room: RoomRecord) -> None:
        self._rooms[room.room_id] = copy_room(room)
        self._participants.setdefault(room.room_id, {})
        self._lobby.setdefault(room.room_id, {})

    async def delete_room(self, room_id: str) -> bool:
        self._participants.pop(room_id, None)
        self._lobby.pop(room_id, None)
        return self._rooms.pop(room_id, None) is not None

    async def list_rooms(self) -> list[RoomRecord]:
        rooms = sorted(self._rooms.values(), key=lambda r: (r.created_at, r.room_id))
        return [copy_room(r) for r in rooms]

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
        joined[p.participant_id] = copy_participant(p)
        return True

    async def remove_participant(
        self, room_id: str, participant_id: str
    ) -> ParticipantRecord | None:
        return self._participants.get(room_id, {}).pop(participant_id, None)

    async def update_participant(self, room_id: str, p: ParticipantRecord) -> None:
        joined = self._participants.get(room_id, {})
        if p.participant_id in joined:
            joined[p.participant_id] = copy_participant(p)

    async def get_participant(self, room_id: str, participant_id: str) -> ParticipantRecord | None:
        p = self._participants.get(room_id, {}).get(participant_id)
        return None if p is None else copy_participant(p)

    async def list_participants(self, room_id: str) -> list[ParticipantRecord]:
        return _in_order(self._participants.get(room_id, {}).values())

    async def add_to_lobby(self, room_id: str, p: ParticipantRecord) -> None:
        self._room_entries(self._lobby, room_id)[p.participant_id] = copy_participant(p)

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
        live = self._revocations.live(time.time())
        return [dataclasses.replace(r) for r in live if not r.lifted]

    async def purge_node(self, node_id: str) -> int:
        removed = 0
        for table in (self._participants, self._lobby):
            for entries in table.values():
                held = [pid for pid, p in entries.items() if p.node == node_id and not p.lost_at]
                for pid in held:
                    del entries[pid]
                removed += len(held)
        return removed

    async def heartbeat(self, node_id: str, ttl_s: float, load: int | None = None) -> None:
        self._heartbeats[node_id] = time.monotonic() + ttl_s
        self._loads[node_id] = load

    async def live_nodes(self) -> dict[str, int | None]:
        now = time.monotonic()
        return {
            node: self._loads.get(node) for node, until in self._heartbeats.items() if until > now
        }

    async def dead_nodes(self) -> list[str]:
        now = time.monotonic()
        return sorted(node for node, until in self._heartbeats.items() if until <= now)

    async def forget_node(self, node_id: str) -> None:
        self._heartbeats.pop(node_id, None)
        self._loads.pop(node_id, None)

    async def append_annotations(
        self, room_id: str, records: list[bytes], max_records: int, keep_s: float
    ) -> None:
        kept = self._annotations.setdefault(room_id, [])
        kept.extend(records)
        del kept[:-max_records]

    async def annotation_records(self, room_id: str) -> list[bytes]:
        return list(self._annotations.get(room_id, ()))

    async def set_node_url(self, node_id: str, url: str | None) -> None:
        if url is None:
            self._node_urls.pop(node_id, None)
        else:
            self._node_urls[node_id] = url

    async def node_urls(self) -> dict[str, str]:
        return dict(self._node_urls)

    async def set_recording_holders(self, node_id: str, recording_ids: Iterable[str]) -> None:
        for recording_id in recording_ids:
            self._recording_holders[recording_id] = node_id

    async def recording_holder(self, recording_id: str) -> str | None:
        return self._recording_holders.get(recording_id)

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

    async def media_node_of(self, room_id: str) -> str | None:
        holder = self._media_nodes.get(room_id)
        return holder[0] if holder is not None and holder[1] >= time.monotonic() else None

    async def keep_consent(self, room_id: str, kept: str | None, ttl_s: float) -> None:
        if kept is None:
            self._consent.pop(room_id, None)
        else:
            self._consent[room_id] = (kept, time.monotonic() + ttl_s)

    async def kept_consent(self, room_id: str) -> str | None:
        kept = self._consent.get(room_id)
        return kept[0] if kept is not None and kept[1] > time.monotonic() else None

    async def put_expiring(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        now = time.monotonic()
        # Expired entries go as new ones come: the table stays as small as the live sessions.
        for stale in [k for k, (_, until) in self._expiring.items() if until <= now]:
            del self._expiring[stale]
        self._expiring[key] = (json.dumps(value), now + ttl_s)

    async def get_expiring(self, key: str) -> dict[str, Any] | None:
        entry = self._expiring.get(key)
        if entry is None or entry[1] <= time.monotonic():
            return None
        return dict(json.loads(entry[0]))

    async def take_expiring(self, key: str) -> dict[str, Any] | None:
        value = await self.get_expiring(key)
        self._expiring.pop(key, None)
        return value

    async def delete_expiring(self, key: str) -> None:
        self._expiring.pop(key, None)

    async def publish(self, event: dict[str, Any]) -> None:
        # The JSON round trip gives handlers their own copy and refuses what Redis would refuse.
        self._receive(json.loads(json.dumps(event)))


def _in_order(entries: Iterable[ParticipantRecord]) -> list[ParticipantRecord]:
    ordered = sorted(entries, key=lambda p: (p.joined_at, p.participant_id))
    return [copy_participant(p) for p in ordered]
