"""SCIM writes carried out: the directory changed, and a leaver's access with it.

The HTTP edge (`signaling.http.routes.scim`) parses and answers; the rules are pure
(`signaling.scim`); this executor reads and writes the directory, revokes or lifts through the
node's ordinary revocation path (`Rooms.revoke`: audited, stored, announced to every node,
whose connections of that person close at once) and audits every change. Writes are serialised
on this node; two nodes writing the same person at the same instant: the later write wins (an
IdP provisions through one connector, one change at a time).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from scim2_models import Context, Error, Group, SCIMException, User

from signaling.audit import AuditLog
from signaling.rooms import Rooms
from signaling.scim import resources as res
from signaling.scim.leavers import access_changes
from signaling.scim.patching import apply_patch
from signaling.scim.query import Lookup
from signaling.state.directory_records import DirectoryGroup, DirectoryUser
from signaling.state.store import StateStore


def _not_found(kind: str, resource_id: str) -> SCIMException:
    return SCIMException.from_error(
        Error(status=404, detail=f"no {kind} with id {resource_id[:64]!r}")
    )


def _conflict(detail: str) -> SCIMException:
    return SCIMException.from_error(Error(status=409, scim_type="uniqueness", detail=detail))


def check_version(current: int, if_match: str | None) -> None:
    """Refuse a write whose `If-Match` names another version (412, RFC 7644 §3.14)."""
    if if_match is None or if_match.strip() == "*":
        return
    wanted = {tag.strip() for tag in if_match.split(",")}
    if res.etag(current) not in wanted:
        raise SCIMException.from_error(
            Error(status=412, detail="the resource changed since that version (If-Match)")
        )


class Provisioning:
    """Creates, replaces, patches and deletes the directory's users and groups."""

    def __init__(
        self, store: StateStore, rooms: Rooms, audit: AuditLog, *, subject_attribute: str
    ) -> None:
        self.store = store
        """The node's shared state; the directory is `store.directory`."""
        self.rooms = rooms
        """Revokes through the ordinary path (every node closes the leaver's connections)."""
        self.audit = audit
        """Every change is audited (ids and subjects only: names stay out of the log)."""
        self.subject_attribute = subject_attribute
        """`userName` or `externalId`: what a person's token `sub` is."""
        self._writes = asyncio.Lock()

    # users

    async def user(self, user_id: str, base_url: str) -> tuple[User, DirectoryUser]:
        """The User with this id, or 404."""
        record = await self.store.directory.get_user(user_id)
        if record is None:
            raise _not_found("User", user_id)
        groups = await self.store.directory.list_groups()
        return res.user_resource(record, groups, base_url), record

    async def users(self, base_url: str, narrow: Lookup | None = None) -> list[User]:
        """Every User, oldest first; only those `narrow` may select, when given."""
        groups = await self.store.directory.list_groups()
        users = await self.store.directory.list_users()
        if narrow is not None:
            users = [
                u for u in users
                if narrow.keeps(u.user_id, u.user_name, str(u.resource.get("externalId") or ""),
                                u.display_name)
            ]  # fmt: skip
        return [res.user_resource(u, groups, base_url) for u in users]

    async def create_user(self, body: object, base_url: str) -> User:
        """Provision a person (a joiner); a re-created leaver's directory revocation is lifted."""
        user = res.read_resource(User, body, Context.RESOURCE_CREATION_REQUEST)
        async with self._writes:
            record = res.user_record(
                user,
                user_id=secrets.token_hex(16),
                subject_attribute=self.subject_attribute,
                now=time.time(),
            )
            await self._check_unique_user(record)
            await self.store.directory.save_user(record)
            self._audit_user("scim_user_created", record)
            await self._apply_access(None, record)
        return (await self.user(record.user_id, base_url))[0]

    async def replace_user(
        self, user_id: str, body: object, base_url: str, if_match: str | None
    ) -> User:
        """PUT: the User as given (RFC 7644 §3.5.1)."""
        user = res.read_resource(User, body, Context.RESOURCE_REPLACEMENT_REQUEST)
        async with self._writes:
            before = await self._existing_user(user_id, if_match)
            await self._write_user(before, user)
        return (await self.user(user_id, base_url))[0]

    async def patch_user(
        self, user_id: str, body: object, base_url: str, if_match: str | None
    ) -> User:
        """PATCH: the operations applied to the User (RFC 7644 §3.5.2)."""
        async with self._writes:
            before = await self._existing_user(user_id, if_match)
            groups = await self.store.directory.list_groups()
            current = res.user_resource(before, groups, base_url)
            await self._write_user(before, apply_patch(User, current, body))
        return (await self.user(user_id, base_url))[0]

    async def delete_user(self, user_id: str, if_match: str | None) -> None:
        """DELETE: a leaver; revoked on every node and taken out of every group."""
        async with self._writes:
            before = await self._existing_user(user_id, if_match)
            for group in await self.store.directory.list_groups():
                if user_id in group.members:
                    group.members.remove(user_id)
                    group.resource["members"] = [
                        m for m in group.resource.get("members") or () if m.get("value") != user_id
                    ]
                    group.version += 1
                    group.modified = time.time()
                    await self.store.directory.save_group(group)
            await self.store.directory.delete_user(user_id)
            self._audit_user("scim_user_deleted", before)
            await self._apply_access(before, None)

    async def _existing_user(self, user_id: str, if_match: str | None) -> DirectoryUser:
        record = await self.store.directory.get_user(user_id)
        if record is None:
            raise _not_found("User", user_id)
        check_version(record.version, if_match)
        return record

    async def _write_user(self, before: DirectoryUser, user: User) -> None:
        after = res.user_record(
            user,
            user_id=before.user_id,
            subject_attribute=self.subject_attribute,
            now=time.time(),
            previous=before,
        )
        await self._check_unique_user(after)
        await self.store.directory.save_user(after)
        self._audit_user("scim_user_changed", after)
        await self._apply_access(before, after)

    async def _check_unique_user(self, record: DirectoryUser) -> None:
        for other in await self.store.directory.list_users():
            if other.user_id == record.user_id:
                continue
            if other.user_name.casefold() == record.user_name.casefold():
                raise _conflict("another User has this userName")
            if record.sub and other.sub == record.sub:
                raise _conflict(f"another User has this {self.subject_attribute}")

    async def _apply_access(
        self, before: DirectoryUser | None, after: DirectoryUser | None
    ) -> None:
        person = after if after is not None else before
        assert person is not None
        in_force = await self.store.is_revoked(jti="", sub=person.sub) if person.sub else None
        for revocation in access_changes(before, after, in_force, time.time()):
            if revocation.lifted:
                await self.store.revoke(revocation)
                self.audit.append("revocation_lifted", "allow", sub=revocation.value,
                                  by=revocation.by, reason=revocation.reason)  # fmt: skip
            else:
                await self.rooms.revoke(revocation)

    def _audit_user(self, action: str, record: DirectoryUser) -> None:
        self.audit.append(
            action, "info", sub=record.sub or None, user_id=record.user_id, active=record.active
        )

    # groups

    async def group(self, group_id: str, base_url: str) -> tuple[Group, DirectoryGroup]:
        """The Group with this id, or 404."""
        record = await self.store.directory.get_group(group_id)
        if record is None:
            raise _not_found("Group", group_id)
        return res.group_resource(record, base_url), record

    async def groups(self, base_url: str, narrow: Lookup | None = None) -> list[Group]:
        """Every Group, oldest first; only those `narrow` may select, when given."""
        groups = await self.store.directory.list_groups()
        if narrow is not None:
            groups = [
                g for g in groups
                if narrow.keeps(g.group_id, "", str(g.resource.get("externalId") or ""),
                                g.display_name)
            ]  # fmt: skip
        return [res.group_resource(g, base_url) for g in groups]

    async def create_group(self, body: object, base_url: str) -> Group:
        """Provision a group (a department, if `scim_department_prefix` says so)."""
        group = res.read_resource(Group, body, Context.RESOURCE_CREATION_REQUEST)
        async with self._writes:
            record = res.group_record(group, group_id=secrets.token_hex(16), now=time.time())
            await self._check_unique_group(record)
            await self.store.directory.save_group(record)
            self._audit_group("scim_group_created", record)
        return res.group_resource(record, base_url)

    async def replace_group(
        self, group_id: str, body: object, base_url: str, if_match: str | None
    ) -> Group:
        """PUT: the Group as given."""
        group = res.read_resource(Group, body, Context.RESOURCE_REPLACEMENT_REQUEST)
        async with self._writes:
            before = await self._existing_group(group_id, if_match)
            after = await self._write_group(before, group)
        return res.group_resource(after, base_url)

    async def patch_group(
        self, group_id: str, body: object, base_url: str, if_match: str | None
    ) -> Group:
        """PATCH: membership changes (`members[value eq "..."]`), renames."""
        async with self._writes:
            before = await self._existing_group(group_id, if_match)
            current = res.group_resource(before, base_url)
            after = await self._write_group(before, apply_patch(Group, current, body))
        return res.group_resource(after, base_url)

    async def delete_group(self, group_id: str, if_match: str | None) -> None:
        """DELETE: the group (its members leave the department)."""
        async with self._writes:
            before = await self._existing_group(group_id, if_match)
            await self.store.directory.delete_group(group_id)
            self._audit_group("scim_group_deleted", before)

    async def _existing_group(self, group_id: str, if_match: str | None) -> DirectoryGroup:
        record = await self.store.directory.get_group(group_id)
        if record is None:
            raise _not_found("Group", group_id)
        check_version(record.version, if_match)
        return record

    async def _write_group(self, before: DirectoryGroup, group: Group) -> DirectoryGroup:
        after = res.group_record(group, group_id=before.group_id, now=time.time(), previous=before)
        await self._check_unique_group(after)
        await self.store.directory.save_group(after)
        self._audit_group("scim_group_changed", after)
        return after

    async def _check_unique_group(self, record: DirectoryGroup) -> None:
        for other in await self.store.directory.list_groups():
            if other.group_id != record.group_id and (
                other.display_name.casefold() == record.display_name.casefold()
            ):
                raise _conflict("another Group has this displayName")

    def _audit_group(self, action: str, record: DirectoryGroup) -> None:
        fields: dict[str, Any] = {"group_id": record.group_id, "members": len(record.members)}
        self.audit.append(action, "info", **fields)
