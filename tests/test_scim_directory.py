"""The gate's look-up of the SCIM directory (`signaling.directory.Directory`): the precedence
of the directory's departments over a token's, and deactivated people refused."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from core.errors import AuthenticationError
from signaling.directory import Directory
from signaling.identity import Identity
from signaling.state.directory import MemoryDirectory, RedisDirectory
from signaling.state.directory_records import DirectoryGroup, DirectoryUser

TOKEN = Identity(sub="dr-heart", jti="t1", role="specialist", depts=("oncology",))


async def _directory(*, enabled: bool = True, active: bool = True) -> Directory:
    store = MemoryDirectory()
    await store.save_user(DirectoryUser("u1", "dr-heart", "dr-heart", active=active))
    await store.save_group(DirectoryGroup("g1", "dept-cardiology", ["u1"]))
    await store.save_group(DirectoryGroup("g2", "all-staff", ["u1"]))
    return Directory(store, enabled=enabled, department_prefix="dept-")


async def test_directory_departments_replace_the_tokens() -> None:
    admitted = await (await _directory()).admit(TOKEN)
    assert admitted.depts == ("cardiology",)
    assert (admitted.sub, admitted.jti, admitted.role) == (TOKEN.sub, TOKEN.jti, TOKEN.role)


async def test_a_subject_the_directory_does_not_hold_keeps_its_token_departments() -> None:
    stranger = Identity(sub="visiting-consultant", jti="t2", role="specialist", depts=("oncology",))
    assert await (await _directory()).admit(stranger) == stranger


async def test_a_person_in_no_department_group_is_in_no_department() -> None:
    directory = await _directory()
    group = await directory.store.get_group("g1")
    assert group is not None
    group.members = []
    await directory.store.save_group(group)
    assert (await directory.admit(TOKEN)).depts == ()


async def test_a_deactivated_person_is_refused() -> None:
    with pytest.raises(AuthenticationError) as refused:
        await (await _directory(active=False)).admit(TOKEN)
    assert refused.value.details["reason"] == "deactivated"


async def test_without_scim_the_directory_is_not_consulted() -> None:
    assert await (await _directory(enabled=False, active=False)).admit(TOKEN) == TOKEN


async def test_the_subject_index_follows_a_rename() -> None:
    store = MemoryDirectory()
    await store.save_user(DirectoryUser("u1", "old-name", "old-name", active=True))
    await store.save_user(DirectoryUser("u1", "new-name", "new-name", active=True))
    assert await store.find_user("old-name") is None
    found = await store.find_user("new-name")
    assert found is not None and found.user_id == "u1"
    await store.delete_user("u1")
    assert await store.find_user("new-name") is None


async def test_the_redis_directory_keeps_the_same_semantics(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        store = RedisDirectory(client, "consilium-test:")
        await store.save_user(DirectoryUser("u1", "old-name", "old-name", True, created=2.0))
        await store.save_user(DirectoryUser("u0", "first", "first", True, created=1.0))
        await store.save_user(DirectoryUser("u1", "new-name", "new-name", False, created=2.0))
        assert await store.find_user("old-name") is None
        found = await store.find_user("new-name")
        assert found is not None and found.user_id == "u1" and not found.active
        assert [u.user_id for u in await store.list_users()] == ["u0", "u1"]
        await store.save_group(DirectoryGroup("g1", "dept-cardiology", ["u1"]))
        assert [g.members for g in await store.list_groups()] == [["u1"]]
        deleted = await store.delete_user("u1")
        assert deleted is not None and await store.find_user("new-name") is None
        assert await store.delete_group("g1") is not None and await store.list_groups() == []
    finally:
        await client.aclose()
