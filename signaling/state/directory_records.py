"""The directory's records: people and groups as the hospital's IdP provisions them (SCIM).

Pure: plain dataclasses with their JSON-ready dicts, no I/O. Each record keeps the SCIM resource
as the provisioning client last wrote it (`resource`, without `id` and `meta`) next to the few
fields the gate reads, which are derived from it when it is stored (`signaling.scim.resources`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def _known_fields(cls: type, d: Mapping[str, Any]) -> dict[str, Any]:
    # Keys unknown to this version (written by a newer node during a rolling upgrade) are dropped.
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass(slots=True)
class DirectoryUser:
    """One person of the hospital's directory (a SCIM User)."""

    user_id: str
    """The SCIM `id` this server gave the person (random, never reused)."""
    sub: str
    """The Consilium subject (a token's `sub`) the person maps to: their `userName` or
    `externalId` (`scim_subject_attribute`); empty when that attribute is absent."""
    user_name: str
    """The SCIM `userName` (unique, compared without case)."""
    active: bool
    """False: a leaver (or suspended); their tokens are refused and their connections closed."""
    display_name: str = ""
    """The name the directory gives; never written to the audit log."""
    emails: list[str] = field(default_factory=list)
    """Email addresses, primary first."""
    resource: dict[str, Any] = field(default_factory=dict)
    """The SCIM User as last written (JSON, without `id` and `meta`)."""
    created: float = 0.0
    """When it was provisioned, seconds since the epoch."""
    modified: float = 0.0
    """When it last changed, seconds since the epoch."""
    version: int = 1
    """Bumped by every change; the resource's ETag (`W/"<version>"`)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DirectoryUser:
        """The record `to_dict` produced (unknown keys ignored)."""
        kwargs = _known_fields(cls, d)
        kwargs["emails"] = list(kwargs.get("emails", ()))
        kwargs["resource"] = dict(kwargs.get("resource", {}))
        return cls(**kwargs)


@dataclass(slots=True)
class DirectoryGroup:
    """One group of the hospital's directory (a SCIM Group); some are departments."""

    group_id: str
    """The SCIM `id` this server gave the group."""
    display_name: str
    """The SCIM `displayName` (unique, compared without case); names the department."""
    members: list[str] = field(default_factory=list)
    """The `id`s of the users in the group (SCIM `members[].value`)."""
    resource: dict[str, Any] = field(default_factory=dict)
    """The SCIM Group as last written (JSON, without `id` and `meta`)."""
    created: float = 0.0
    """When it was provisioned, seconds since the epoch."""
    modified: float = 0.0
    """When it last changed, seconds since the epoch."""
    version: int = 1
    """Bumped by every change; the resource's ETag (`W/"<version>"`)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DirectoryGroup:
        """The record `to_dict` produced (unknown keys ignored)."""
        kwargs = _known_fields(cls, d)
        kwargs["members"] = list(kwargs.get("members", ()))
        kwargs["resource"] = dict(kwargs.get("resource", {}))
        return cls(**kwargs)


def departments_of(
    user_id: str, groups: list[DirectoryGroup], department_prefix: str
) -> tuple[str, ...]:
    """The departments a user is in: the groups holding them whose name starts with
    `department_prefix` (removed), in name order; every group when the prefix is empty."""
    names = set()
    for group in groups:
        if user_id in group.members and group.display_name.startswith(department_prefix):
            name = group.display_name[len(department_prefix) :]
            if name:
                names.add(name)
    return tuple(sorted(names))
