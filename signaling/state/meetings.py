"""`MeetingBook`: the meetings the HIS scheduled, in the shared state so every node sees them.

Each state store carries one (`StateStore.meetings`): `MemoryMeetingBook` in the memory store,
`signaling.state.meetings_redis.RedisMeetingBook` in the Redis store. Records travel as msgspec
JSON, so a caller never holds the stored copy. Two steps are atomic across nodes: a create
with its idempotency keys (a retried create finds the first meeting, never makes a second), and
a replace that names the version it read (optimistic concurrency: a lost race is told, not
overwritten).
"""

from __future__ import annotations

import abc

import msgspec

from signaling.meetings import MeetingRecord

_DECODER = msgspec.json.Decoder(MeetingRecord)


def encode_meeting(record: MeetingRecord) -> bytes:
    """The stored form of a meeting: msgspec JSON."""
    return msgspec.json.encode(record)


def decode_meeting(data: bytes | str) -> MeetingRecord:
    """The meeting `encode_meeting` wrote."""
    return _DECODER.decode(data)


class MeetingBook(abc.ABC):
    """Scheduled meetings, shared by every node."""

    @abc.abstractmethod
    async def create(self, record: MeetingRecord, keys: list[str]) -> MeetingRecord | None:
        """Store a new meeting under its idempotency `keys`; None once stored. If one of the
        keys already names a meeting, nothing changes and that meeting is returned."""

    @abc.abstractmethod
    async def get(self, meeting_id: str) -> MeetingRecord | None:
        """The meeting, or None."""

    @abc.abstractmethod
    async def replace(self, record: MeetingRecord, read_version: int) -> bool:
        """Store `record` if the stored meeting still has `read_version`; False (and nothing
        changes) if another change came first or the meeting is gone."""

    @abc.abstractmethod
    async def delete(self, record: MeetingRecord) -> None:
        """Remove the meeting and its idempotency keys (`record.keys`)."""

    @abc.abstractmethod
    async def list(self) -> list[MeetingRecord]:
        """Every meeting, in no particular order."""

    @abc.abstractmethod
    async def count(self) -> int:
        """How many meetings are stored."""


class MemoryMeetingBook(MeetingBook):
    """Meetings in this process (the memory store's). Each method runs without awaiting between
    its check and its change, so each is atomic on the event loop."""

    def __init__(self) -> None:
        self._meetings: dict[str, bytes] = {}
        self._versions: dict[str, int] = {}
        self._keys: dict[str, str] = {}

    async def create(self, record: MeetingRecord, keys: list[str]) -> MeetingRecord | None:
        for key in keys:
            existing = self._keys.get(key)
            if existing is not None and existing in self._meetings:
                return decode_meeting(self._meetings[existing])
        if record.meeting_id in self._meetings:
            raise ValueError(f"meeting {record.meeting_id!r} exists")
        self._meetings[record.meeting_id] = encode_meeting(record)
        self._versions[record.meeting_id] = record.version
        for key in keys:
            self._keys[key] = record.meeting_id
        return None

    async def get(self, meeting_id: str) -> MeetingRecord | None:
        data = self._meetings.get(meeting_id)
        return None if data is None else decode_meeting(data)

    async def replace(self, record: MeetingRecord, read_version: int) -> bool:
        if self._versions.get(record.meeting_id) != read_version:
            return False
        self._meetings[record.meeting_id] = encode_meeting(record)
        self._versions[record.meeting_id] = record.version
        return True

    async def delete(self, record: MeetingRecord) -> None:
        self._meetings.pop(record.meeting_id, None)
        self._versions.pop(record.meeting_id, None)
        for key in record.keys:
            if self._keys.get(key) == record.meeting_id:
                del self._keys[key]

    async def list(self) -> list[MeetingRecord]:
        return [decode_meeting(data) for data in self._meetings.values()]

    async def count(self) -> int:
        return len(self._meetings)
