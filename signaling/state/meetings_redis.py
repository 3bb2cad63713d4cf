"""`RedisMeetingBook`: the scheduled meetings in the Redis every node shares.

Keys (after the store's prefix): `meeting:{<id>}` (hash: `record` the msgspec JSON, `version`
the record's version as a decimal), `meetings` (set of meeting ids), `meeting-keys` (hash:
idempotency key -> meeting id). Like the rooms, meetings live in Redis only: run it with
persistence (docs/operations.md). Each check-then-change is one script, atomic across nodes.
"""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis

from signaling.meetings import MeetingRecord
from signaling.state.meetings import MeetingBook, decode_meeting, encode_meeting

_CREATE = """
-- KEYS: meeting hash, set of ids, keys hash.
-- ARGV: id, record, version, meeting key prefix, idempotency keys...
for i = 5, #ARGV do
  local existing = redis.call('HGET', KEYS[3], ARGV[i])
  if existing then
    local record = redis.call('HGET', ARGV[4] .. '{' .. existing .. '}', 'record')
    if record then return record end
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.error_reply('meeting exists') end
redis.call('HSET', KEYS[1], 'record', ARGV[2], 'version', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
for i = 5, #ARGV do redis.call('HSET', KEYS[3], ARGV[i], ARGV[1]) end
return false
"""

_REPLACE = """
-- KEYS: meeting hash. ARGV: expected version, record, new version.
if redis.call('HGET', KEYS[1], 'version') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'record', ARGV[2], 'version', ARGV[3])
return 1
"""

_DELETE = """
-- KEYS: meeting hash, set of ids, keys hash. ARGV: id, idempotency keys...
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
for i = 2, #ARGV do
  if redis.call('HGET', KEYS[3], ARGV[i]) == ARGV[1] then redis.call('HDEL', KEYS[3], ARGV[i]) end
end
return 1
"""


class RedisMeetingBook(MeetingBook):
    """Meetings in Redis, on the Redis store's client and under its prefix."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix
        self._ids_key = prefix + "meetings"
        self._keys_key = prefix + "meeting-keys"
        self._create = client.register_script(_CREATE)
        self._replace = client.register_script(_REPLACE)
        self._delete = client.register_script(_DELETE)

    def _meeting_key(self, meeting_id: str) -> str:
        return f"{self._prefix}meeting:{{{meeting_id}}}"

    async def create(self, record: MeetingRecord, keys: list[str]) -> MeetingRecord | None:
        found = await self._create(
            keys=[self._meeting_key(record.meeting_id), self._ids_key, self._keys_key],
            args=[
                record.meeting_id,
                encode_meeting(record),
                str(record.version),
                f"{self._prefix}meeting:",
                *keys,
            ],
        )
        return None if found is None else decode_meeting(found)

    async def get(self, meeting_id: str) -> MeetingRecord | None:
        data = await self._redis.hget(self._meeting_key(meeting_id), "record")
        return None if data is None else decode_meeting(data)

    async def replace(self, record: MeetingRecord, read_version: int) -> bool:
        stored = await self._replace(
            keys=[self._meeting_key(record.meeting_id)],
            args=[str(read_version), encode_meeting(record), str(record.version)],
        )
        return bool(stored)

    async def delete(self, record: MeetingRecord) -> None:
        await self._delete(
            keys=[self._meeting_key(record.meeting_id), self._ids_key, self._keys_key],
            args=[record.meeting_id, *record.keys],
        )

    async def list(self) -> list[MeetingRecord]:
        ids = sorted(cast(set[str], await self._redis.smembers(self._ids_key)))
        # One round trip for all of them, not one per meeting.
        async with self._redis.pipeline(transaction=False) as pipe:
            for meeting_id in ids:
                pipe.hget(self._meeting_key(meeting_id), "record")
            found = await pipe.execute()
        return [decode_meeting(data) for data in found if data is not None]

    async def count(self) -> int:
        return int(await self._redis.scard(self._ids_key))
