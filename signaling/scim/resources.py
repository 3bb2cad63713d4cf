"""SCIM resources and the directory's records, both ways, and the discovery documents.

Pure: the `scim2-models` pydantic models validate what the provisioning client sends and shape
what it gets back; nothing here reads a clock or a file (`now` and the base URL are passed in).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import ValidationError
from scim2_models import (
    AuthenticationScheme,
    Bulk,
    ChangePassword,
    Context,
    Error,
    ETag,
    Filter,
    Group,
    GroupMember,
    GroupMembership,
    Meta,
    Patch,
    Resource,
    ResourceType,
    Schema,
    SCIMException,
    ScimPolicy,
    ServiceProviderConfig,
    Sort,
    User,
)

from signaling.state.directory_records import DirectoryGroup, DirectoryUser

SCIM_MEDIA_TYPE = "application/scim+json"
"""The media type of every SCIM body (RFC 7644 §3.1); plain `application/json` is accepted."""

MAX_RESULTS = 200
"""Most resources one list response holds (`count` is lowered to it; ServiceProviderConfig
announces it as `filter.maxResults`)."""

TOLERANCE = ScimPolicy(
    unknown=ScimPolicy.Unknown.ignore,
    remove_value_as_filter=ScimPolicy.RemoveValue.apply,
    unmatched_path_filter=ScimPolicy.UnmatchedPathFilter.create,
)
"""What the provisioning clients hospitals use send beyond the strict RFC, accepted: attributes
and extensions no model here declares are dropped (Entra ID sends the EnterpriseUser extension,
`department`, `manager`...: departments come from Groups here), a PATCH `remove` whose `value`
selects the members to remove, and a path filter matching nothing creating the entry (both as
Microsoft Entra ID sends them)."""

RESOURCE_MODELS: dict[str, type[Resource[Any]]] = {"Users": User, "Groups": Group}
"""The resource endpoints this server serves, by their path under `/scim/v2`."""

ResourceT = TypeVar("ResourceT", bound=Resource[Any])


def refusal(exc: ValidationError) -> SCIMException:
    """The SCIM error for a body the models refuse (its first fault: invalidValue or
    invalidSyntax, as RFC 7644 §3.12 names them)."""
    return SCIMException.from_error(Error.from_validation_errors(exc)[0])


def read_resource(model: type[ResourceT], body: object, context: Context) -> ResourceT:
    """Validate a request body as `model` in `context` (creation or replacement)."""
    if not isinstance(body, Mapping):
        raise SCIMException.from_error(
            Error(status=400, scim_type="invalidSyntax", detail="the body must be a JSON object")
        )
    try:
        return model.model_validate(dict(body), scim_ctx=context, scim_policy=TOLERANCE)
    except ValidationError as exc:
        raise refusal(exc) from None


def etag(version: int) -> str:
    """The weak entity tag of a resource's version (`meta.version`, the `ETag` header)."""
    return f'W/"{version}"'


def _stamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _stored(resource: Resource[Any]) -> dict[str, Any]:
    """What the directory keeps of a resource: what its client may write (no id, no meta)."""
    kept = resource.model_dump(scim_ctx=Context.RESOURCE_REPLACEMENT_REQUEST)
    for name in ("id", "meta", "groups"):
        kept.pop(name, None)
    # Only the core schema: the extensions a client sent were dropped (`TOLERANCE`).
    kept["schemas"] = [str(type(resource).__schema__)]
    return kept


def user_record(
    user: User,
    *,
    user_id: str,
    subject_attribute: str,
    now: float,
    previous: DirectoryUser | None = None,
) -> DirectoryUser:
    """The directory's record of a SCIM User (created, replaced or patched at `now`)."""
    sub = user.user_name if subject_attribute == "userName" else user.external_id
    emails = sorted(user.emails or [], key=lambda e: not e.primary)
    return DirectoryUser(
        user_id=user_id,
        sub=sub or "",
        user_name=user.user_name or "",
        # An absent `active` is a person who has not been deactivated (Entra always sends it).
        active=user.active is not False,
        display_name=user.display_name or "",
        emails=[str(e.value) for e in emails if e.value],
        resource=_stored(user),
        created=previous.created if previous is not None else now,
        modified=now,
        version=previous.version + 1 if previous is not None else 1,
    )


def user_resource(record: DirectoryUser, groups: list[DirectoryGroup], base_url: str) -> User:
    """The SCIM User of a record, with its `groups` (read-only: what the Groups say)."""
    user: User[Any] = User.model_validate(record.resource)
    user.id = record.user_id
    memberships = [
        GroupMembership.model_validate(
            {
                "value": g.group_id,
                "display": g.display_name,
                "type": "direct",
                "$ref": f"{base_url}/Groups/{g.group_id}",
            }
        )
        for g in groups
        if record.user_id in g.members
    ]
    user.groups = memberships or None
    user.meta = Meta(
        resource_type="User",
        created=_stamp(record.created),
        last_modified=_stamp(record.modified),
        version=etag(record.version),
        location=f"{base_url}/Users/{record.user_id}",
    )
    return user


def group_record(
    group: Group, *, group_id: str, now: float, previous: DirectoryGroup | None = None
) -> DirectoryGroup:
    """The directory's record of a SCIM Group (created, replaced or patched at `now`)."""
    members = list(dict.fromkeys(m.value for m in group.members or [] if m.value))
    return DirectoryGroup(
        group_id=group_id,
        display_name=group.display_name or "",
        members=members,
        resource=_stored(group),
        created=previous.created if previous is not None else now,
        modified=now,
        version=previous.version + 1 if previous is not None else 1,
    )


def group_resource(record: DirectoryGroup, base_url: str) -> Group:
    """The SCIM Group of a record; its members name users by their SCIM id."""
    group = Group.model_validate({**record.resource, "members": None})
    group.id = record.group_id
    group.display_name = record.display_name
    # `members` (the ids) is what counts; the stored resource keeps what the client said of each.
    said = {m.get("value"): m for m in record.resource.get("members") or () if isinstance(m, dict)}
    group.members = [
        GroupMember.model_validate(
            {
                "value": member,
                "type": said.get(member, {}).get("type") or "User",
                "display": said.get(member, {}).get("display"),
                "$ref": f"{base_url}/Users/{member}",
            }
        )
        for member in record.members
    ] or None
    group.meta = Meta(
        resource_type="Group",
        created=_stamp(record.created),
        last_modified=_stamp(record.modified),
        version=etag(record.version),
        location=f"{base_url}/Groups/{record.group_id}",
    )
    return group


# The discovery documents (RFC 7644 §4).


def service_provider_config(base_url: str) -> ServiceProviderConfig:
    """What this server supports: PATCH, filters, ETags; no bulk, sort or password change."""
    return ServiceProviderConfig(
        documentation_uri=None,
        patch=Patch(supported=True),
        bulk=Bulk(supported=False, max_operations=0, max_payload_size=0),
        filter=Filter(supported=True, max_results=MAX_RESULTS),
        change_password=ChangePassword(supported=False),
        sort=Sort(supported=False),
        etag=ETag(supported=True),
        authentication_schemes=[
            AuthenticationScheme(
                type=AuthenticationScheme.Type.oauthbearertoken,
                name="OAuth Bearer Token",
                description="The provisioning client's bearer token (scim_token_file)",
                primary=True,
            )
        ],
        meta=Meta(
            resource_type="ServiceProviderConfig", location=f"{base_url}/ServiceProviderConfig"
        ),
    )


def resource_types(base_url: str) -> list[ResourceType]:
    """The User and Group resource types."""
    found = []
    for model in RESOURCE_MODELS.values():
        rt = ResourceType.from_resource(model)
        rt.meta = Meta(resource_type="ResourceType", location=f"{base_url}/ResourceTypes/{rt.id}")
        found.append(rt)
    return found


def schemas(base_url: str) -> list[Schema]:
    """The User and Group schemas (RFC 7643 §7)."""
    found = []
    for model in RESOURCE_MODELS.values():
        schema = model.to_schema()
        schema.meta = Meta(resource_type="Schema", location=f"{base_url}/Schemas/{schema.id}")
        found.append(schema)
    return found
