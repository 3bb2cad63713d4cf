"""The directory of people and groups the hospital's IdP provisions (SCIM), as every node sees it.

`DirectoryStore` is the interface; `MemoryDirectory` keeps it in this process (one node) and
`RedisDirectory` in the Redis every node shares, next to the rooms. Each `StateStore` carries
the one that matches it as `store.directory`. Records are copied in and out, as the rest of the
state is. A directory is small (people and departments of one hospital): listing reads it all.
"""

from __future__ import annotations

import abc
import json
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.errors import Unavailable
from signaling.state.directory_records import DirectoryGroup, DirectoryUser


class DirectoryStore(abc.ABC):
    """People (`DirectoryUser`) and groups (`DirectoryGroup`) by id, and people by subject."""

    @abc.abstractmethod
    async def save_user(self, user: DirectoryUser) -> None:
        """Store the user, replacing any record with the same id (and its subject's entry)."""

    @abc.abstractmethod
    async def get_user(self, user_id: str) -> DirectoryUser | None:
        """The user with this SCIM id, or None."""

    @abc.abstractmethod
    async def find_user(self, sub: str) -> DirectoryUser | None:
        """The user who maps to this Consilium subject, or None (the gate's look-up)."""

    @abc.abstractmethod
    async def delete_user(self, user_id: str) -> DirectoryUser | None:
        """Remove the user and return it, or None if it was not there."""

    @abc.abstractmethod
    async def list_users(self) -> list[DirectoryUser]:
        """Every user, oldest first."""

    @abc.abstractmethod
    async def save_group(self, group: DirectoryGroup) -> None:
        """Store the group, replacing any record with the same id."""

    @abc.abstractmethod
    async def get_group(self, group_id: str) -> DirectoryGroup | None:
        """The group with this SCIM id, or None."""

    @abc.abstractmethod
    async def delete_group(self, group_id: str) -> DirectoryGroup | None:
        """Remove the group and return it, or None if it was not there."""

    @abc.abstractmethod
    async def list_groups(self) -> list[DirectoryGroup]:
        """Every group, oldest first."""


def _oldest_first_users(users: list[DirectoryUser]) -> list[DirectoryUser]:
    return sorted(users, key=lambda u: (u.created, u.user_id))


def _oldest_first_groups(groups: list[DirectoryGroup]) -> list[DirectoryGroup]:
    return sorted(groups, key=lambda g: (g.created, g.group_id))


class MemoryDirectory(DirectoryStore):
    """The directory in this process (the memory store's): one node, lost at restart (the IdP
    provisions it again at its next cycle)."""

    def __init__(self) -> None:
        self._users: dict[str, DirectoryUser] = {}
        self._by_sub: dict[str, str] = {}
        self._groups: dict[str, DirectoryGroup] = {}

    async def save_user(self, user: DirectoryUser) -> None:
        old = self._users.get(user.user_id)
        if old is not None and old.sub and self._by_sub.get(old.sub) == old.user_id:
            del self._by_sub[old.sub]
        self._users[user.user_id] = DirectoryUser.from_dict(user.to_dict())
        if user.sub:
            self._by_sub[user.sub] = user.user_id

    async def get_user(self, user_id: str) -> DirectoryUser | None:
        user = self._users.get(user_id)
        return None if user is None else DirectoryUser.from_dict(user.to_dict())

    async def find_user(self, sub: str) -> DirectoryUser | None:
        user_id = self._by_sub.get(sub)
        return None if user_id is None else await self.get_user(user_id)

    async def delete_user(self, user_id: str) -> DirectoryUser | None:
        user = self._users.pop(user_id, None)
        if user is not None and user.sub and self._by_sub.get(user.sub) == user_id:
            del self._by_sub[user.sub]
        return user

    async def list_users(self) -> list[DirectoryUser]:
        return _oldest_first_users(
            [DirectoryUser.from_dict(u.to_dict()) for u in self._users.values()]
        )

    async def save_group(self, group: DirectoryGroup) -> None:
        self._groups[group.group_id] = DirectoryGroup.from_dict(group.to_dict())

    async def get_group(self, group_id: str) -> DirectoryGroup | None:
        group = self._groups.get(group_id)
        return None if group is None else DirectoryGroup.from_dict(group.to_dict())

    async def delete_group(self, group_id: str) -> DirectoryGroup | None:
        return self._groups.pop(group_id, None)

    async def list_groups(self) -> list[DirectoryGroup]:
        return _oldest_first_groups(
            [DirectoryGroup.from_dict(g.to_dict()) for g in self._groups.values()]
        )


def _unavailable(exc: Exception) -> Unavailable:
    return Unavailable(f"the shared state (Redis) is out of reach ({type(exc).__name__})")


class RedisDirectory(DirectoryStore):
    """The directory in the Redis every node shares. Keys (after the store's prefix):
    `directory:users` (hash: id -> JSON), `directory:subs` (hash: subject -> id) and
    `directory:groups` (hash: id -> JSON). Unavailable when Redis cannot be reached."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._redis = client
        self._users_key = prefix + "directory:users"
        self._subs_key = prefix + "directory:subs"
        self._groups_key = prefix + "directory:groups"

    async def save_user(self, user: DirectoryUser) -> None:
        try:
            old = await self.get_user(user.user_id)
            async with self._redis.pipeline(transaction=True) as pipe:
                if old is not None and old.sub and old.sub != user.sub:
                    pipe.hdel(self._subs_key, old.sub)
                pipe.hset(self._users_key, user.user_id, json.dumps(user.to_dict()))
                if user.sub:
                    pipe.hset(self._subs_key, user.sub, user.user_id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc

    async def get_user(self, user_id: str) -> DirectoryUser | None:
        try:
            value = await self._redis.hget(self._users_key, user_id)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return None if value is None else DirectoryUser.from_dict(json.loads(value))

    async def find_user(self, sub: str) -> DirectoryUser | None:
        try:
            user_id = await self._redis.hget(self._subs_key, sub)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return None if user_id is None else await self.get_user(cast(str, user_id))

    async def delete_user(self, user_id: str) -> DirectoryUser | None:
        user = await self.get_user(user_id)
        if user is None:
            return None
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hdel(self._users_key, user_id)
                if user.sub:
                    pipe.hdel(self._subs_key, user.sub)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return user

    async def list_users(self) -> list[DirectoryUser]:
        try:
            values = await self._redis.hvals(self._users_key)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return _oldest_first_users([DirectoryUser.from_dict(json.loads(v)) for v in values])

    async def save_group(self, group: DirectoryGroup) -> None:
        try:
            await self._redis.hset(self._groups_key, group.group_id, json.dumps(group.to_dict()))
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc

    async def get_group(self, group_id: str) -> DirectoryGroup | None:
        try:
            value = await self._redis.hget(self._groups_key, group_id)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return None if value is None else DirectoryGroup.from_dict(json.loads(value))

    async def delete_group(self, group_id: str) -> DirectoryGroup | None:
        group = await self.get_group(group_id)
        if group is None:
            return None
        try:
            await self._redis.hdel(self._groups_key, group_id)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return group

    async def list_groups(self) -> list[DirectoryGroup]:
        try:
            values = await self._redis.hvals(self._groups_key)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return _oldest_first_groups([DirectoryGroup.from_dict(json.loads(v)) for v in values])
