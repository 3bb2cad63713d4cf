"""Meetings the hospital's HIS schedules: the scheduling API's types and its rules.

A meeting is an MDT session booked ahead (a tumour board on Thursday at 14:00): a title, a start
and an end, the departments it belongs to, the cases it will discuss and the people invited by
their directory id. Each meeting maps onto one Consilium room (same id): the room carries the
title, the departments, the lobby and one `sub:<directory id>` grant per invitee, so the join's
own policy decides who gets in (`room_fields`).

The request and response bodies are the msgspec Structs below; the handlers decode and encode
with them and `signaling.http.openapi` documents them from the same classes. The rules (checking
a request against the clock, building and changing the stored record, the room it maps onto,
ETags, listing filters) are plain functions with `now` passed in: no I/O, no clock.

A case carries no patient data: an opaque `case_id` (the HIS's case or episode reference,
letters, digits and `._:-`) and a short `label` the HIS chooses ("Case 3: lung nodule"), never
a name, a date of birth or a record number. Consilium shows them to the room; it cannot check
them, so the HIS integrator is told so in docs/operations.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

from core.errors import BadMessage, Conflict, PreconditionFailed

_TEXT = r"^[^\x00-\x1f\x7f]*$"
"""Printable text only: these strings reach the room, the audit log and signed tokens."""

MAX_MEETING_S = 24 * 3600
"""The longest a meeting may last."""

LINK_GRACE_S = 2 * 3600
"""How long after its end a meeting's join link still works (overruns, a late debrief)."""

MIN_LINK_TTL_S = 300
"""The shortest lifetime a minted link gets, however close the meeting's end."""

MAX_LIST_LIMIT = 500
"""The most meetings one list response holds."""

DirectoryId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=128,
        pattern=r"^[^\x00-\x20\x7f]+$",
        description="The person's id in the hospital directory: the `sub` of their tokens.",
    ),
]
Department = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=_TEXT)]
Title = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=_TEXT)]
DisplayName = Annotated[str, msgspec.Meta(max_length=200, pattern=_TEXT)]
CaseId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
]
CaseLabel = Annotated[str, msgspec.Meta(max_length=80, pattern=_TEXT)]
ExternalId = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[!-~]+$")]
MeetingId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
]
Stamp = Annotated[datetime, msgspec.Meta(tz=True)]
"""A point in time with its UTC offset (RFC 3339); answers give it in UTC."""

InviteeRole = Literal["chair", "specialist", "radiologist", "nurse", "trainee", "patient"]
"""The live roles a meeting may invite (the policy's privileged roles never join a room)."""

MeetingStatus = Literal["scheduled", "cancelled", "ended"]
"""`scheduled` until it is cancelled, or it ended (the chair ended it for everyone, or its room
stayed empty past its end: `signaling.meeting_end`); an ended meeting admits no one."""

EndReason = Literal["ended_by_chair", "scheduled_end"]
"""Why a meeting ended: a chair ended it for everyone, or it was over (empty past its end)."""


class Case(msgspec.Struct, forbid_unknown_fields=True):
    """One case on the meeting's list: a reference and a label, never patient data."""

    case_id: CaseId
    """The HIS's case or episode reference, opaque to Consilium."""
    label: CaseLabel = ""
    """A short non-identifying label shown in the room ("Case 3: lung nodule")."""


class Invitee(msgspec.Struct, forbid_unknown_fields=True):
    """A person invited to the meeting, by directory id, with the role they take in it."""

    sub: DirectoryId
    role: InviteeRole
    """The role their invitation link carries."""
    name: DisplayName = ""
    """Display name shown in the room (staff names; a patient's may stay empty)."""


class MeetingRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Body of `POST /api/v1/meetings` (create) and `PUT /api/v1/meetings/{meeting_id}` (the
    whole meeting, replaced)."""

    title: Title
    """What the room shows; never patient-identifying."""
    starts_at: Stamp
    ends_at: Stamp
    """After `starts_at`, at most 24 hours later, and not in the past."""
    departments: Annotated[list[Department], msgspec.Meta(max_length=32)] = msgspec.field(
        default_factory=list
    )
    """Departments the meeting belongs to (the room's department scoping)."""
    cases: Annotated[list[Case], msgspec.Meta(max_length=50)] = msgspec.field(default_factory=list)
    """The case list, in the order the meeting takes them; case ids unique."""
    participants: Annotated[list[Invitee], msgspec.Meta(max_length=256)] = msgspec.field(
        default_factory=list
    )
    """Who is invited; directory ids unique."""
    lobby: bool = True
    """Invitees but the chairs wait in the lobby until admitted."""
    external_id: ExternalId | None = None
    """The HIS's own id of this booking (its appointment id): a second create with the same
    one returns the first meeting instead of making another."""


class Invitation(msgspec.Struct, forbid_unknown_fields=True):
    """One invitee's way into the meeting's room."""

    sub: DirectoryId
    role: InviteeRole
    join_url: str
    """The room's join page; with a minted token in its fragment when `token` is set."""
    token: str | None = None
    """A join token, minted only in the answer that issued it (create, a participant added or
    changed, `POST .../invitations`), and only on a node whose development IdP signs tokens;
    elsewhere the person signs in at the hospital's IdP."""
    expires_at: Stamp | None = None
    """When the minted token stops working (the meeting's end plus two hours)."""


class Meeting(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A meeting as the API answers it."""

    meeting_id: MeetingId
    """The meeting's id; also its room's id."""
    status: MeetingStatus
    title: Title
    starts_at: Stamp
    ends_at: Stamp
    departments: list[Department]
    cases: list[Case]
    participants: list[Invitee]
    lobby: bool
    external_id: ExternalId | None
    version: int
    """Increases with every change; the `ETag` is `"<meeting_id>.<version>"`."""
    created_at: Stamp
    updated_at: Stamp
    invitations: list[Invitation]
    """One per participant, in the same order."""
    ended_at: Stamp | None = None
    """When the meeting ended (status `ended`); null before."""
    ended_reason: EndReason | None = None
    """Why it ended: `ended_by_chair` or `scheduled_end`; null before."""


class MeetingList(msgspec.Struct, forbid_unknown_fields=True):
    """Answer of `GET /api/v1/meetings`: meetings by start time, earliest first."""

    meetings: list[Meeting]
    truncated: bool
    """More meetings matched than `limit`: narrow the window."""


class MeetingQuery(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Query parameters of `GET /api/v1/meetings` (each optional; UNSET when absent, so that
    no text such as `null` ever stands for "absent")."""

    starts_after: Stamp | msgspec.UnsetType = msgspec.UNSET
    """Meetings starting at or after this point."""
    starts_before: Stamp | msgspec.UnsetType = msgspec.UNSET
    """Meetings starting before this point."""
    status: MeetingStatus | msgspec.UnsetType = msgspec.UNSET
    external_id: ExternalId | msgspec.UnsetType = msgspec.UNSET
    """The meeting booked with this HIS id."""
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_LIST_LIMIT)] = 100


class ErrorBody(msgspec.Struct):
    """Every error answer: a stable code and a sentence (extra members may follow, such as
    a policy refusal's `reason`)."""

    error: str
    """Stable machine-readable code (docs/protocol.md, "Errors")."""
    message: str


class IssuedLink(msgspec.Struct, forbid_unknown_fields=True):
    """A join token minted for an invitee: kept so that it can be revoked (no secret: the id)."""

    sub: str
    jti: str
    expires_at: float
    """Seconds since the epoch."""


class MeetingRecord(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    """A meeting as the state store keeps it (msgspec JSON; unknown fields of a newer node
    are dropped on read)."""

    meeting_id: str
    status: MeetingStatus
    request: MeetingRequest
    """What the HIS asked for, as last created or replaced (times in UTC)."""
    scheduled_by: str
    """`sub` of the service client that created it."""
    created_at: float
    updated_at: float
    version: int = 1
    request_sha256: str = ""
    """Hash of the creating request's body: a retry with another body is a conflict."""
    links: list[IssuedLink] = msgspec.field(default_factory=list)
    """The join tokens in force, at most one per invitee."""
    keys: list[str] = msgspec.field(default_factory=list)
    """The idempotency keys it was created under (deleted with it)."""
    ended_at: float | None = None
    """When it ended (seconds since the epoch), once `status` is `ended`."""
    ended_reason: EndReason | None = None
    """Why it ended, once `status` is `ended`."""


# --- Rules -------------------------------------------------------------------------------------


def _utc(stamp: datetime) -> datetime:
    return stamp.astimezone(UTC)


def checked(request: MeetingRequest, now: float) -> MeetingRequest:
    """The request, once it makes sense as a booking at `now`, with times in UTC and departments
    without repeats; `BadMessage` saying what is wrong otherwise."""
    starts, ends = _utc(request.starts_at), _utc(request.ends_at)
    if ends <= starts:
        raise BadMessage("ends_at must be after starts_at")
    if (ends - starts).total_seconds() > MAX_MEETING_S:
        raise BadMessage("a meeting lasts at most 24 hours")
    if ends.timestamp() <= now:
        raise BadMessage("ends_at is in the past")
    subs = [p.sub for p in request.participants]
    if len(set(subs)) != len(subs):
        raise BadMessage("each participant (directory id) may be listed once")
    case_ids = [c.case_id for c in request.cases]
    if len(set(case_ids)) != len(case_ids):
        raise BadMessage("each case_id may be listed once")
    return msgspec.structs.replace(
        request,
        starts_at=starts,
        ends_at=ends,
        departments=list(dict.fromkeys(request.departments)),
    )


def request_digest(request: MeetingRequest) -> str:
    """SHA-256 of the request as decoded (so key order and spacing do not matter)."""
    return hashlib.sha256(msgspec.json.encode(request)).hexdigest()


def new_record(
    meeting_id: str,
    request: MeetingRequest,
    *,
    scheduled_by: str,
    now: float,
    keys: list[str] | None = None,
) -> MeetingRecord:
    """The record of a meeting just booked with a `checked` request under idempotency `keys`."""
    return MeetingRecord(
        meeting_id=meeting_id,
        status="scheduled",
        request=request,
        scheduled_by=scheduled_by,
        created_at=now,
        updated_at=now,
        request_sha256=request_digest(request),
        keys=list(keys or ()),
    )


def expired(record: MeetingRecord, now: float, retention_s: float) -> bool:
    """Whether the meeting is past its retention at `now`: `retention_s` after its end (its
    scheduled end, or when it ended if later), or after its cancellation for a cancelled one."""
    over = record.updated_at if record.status == "cancelled" else record.request.ends_at.timestamp()
    if record.ended_at is not None:
        over = max(over, record.ended_at)
    return over + retention_s <= now


def _still_open(record: MeetingRecord) -> None:
    """`Conflict` unless the meeting may still change (neither cancelled nor ended)."""
    if record.status == "cancelled":
        raise Conflict("the meeting is cancelled")
    if record.status == "ended":
        raise Conflict("the meeting has ended")


def ended(record: MeetingRecord, now: float, reason: EndReason) -> MeetingRecord | None:
    """The meeting ended at `now` for `reason`: its links dropped (they admit no one now, and
    joins are refused as `meeting_ended`); None if it is not `scheduled` (already ended, or
    cancelled: nothing to do, and no second `meeting.ended`)."""
    if record.status != "scheduled":
        return None
    return msgspec.structs.replace(
        record, status="ended", updated_at=now, version=record.version + 1, links=[],
        ended_at=now, ended_reason=reason,
    )  # fmt: skip


def idempotency_keys(sub: str, request: MeetingRequest, header_key: str | None) -> list[str]:
    """The keys under which a create is remembered, scoped to the calling client: its
    `Idempotency-Key` header and the booking's `external_id`, whichever are given."""
    keys = []
    if header_key is not None:
        keys.append(f"key:{sub}:{header_key}")
    if request.external_id is not None:
        keys.append(f"ext:{sub}:{request.external_id}")
    return keys


def replay_of(existing: MeetingRecord, request: MeetingRequest) -> MeetingRecord:
    """The meeting a retried create answers with; `Conflict` if the retry's body differs (the
    key or external id was reused for another booking: change a meeting with PUT)."""
    if existing.request_sha256 != request_digest(request):
        raise Conflict(
            "this Idempotency-Key or external_id was used for another meeting request; "
            "change a meeting with PUT"
        )
    return existing


class Change(msgspec.Struct, frozen=True):
    """What replacing a meeting's request does to its invitations."""

    record: MeetingRecord
    """The new record (version increased, links of the changed invitees dropped)."""
    revoked: list[IssuedLink]
    """Links to revoke: their invitee was removed, or their role or name changed."""
    to_invite: list[str]
    """Directory ids that need a new link (added, or changed)."""


def replaced(record: MeetingRecord, request: MeetingRequest, now: float) -> Change:
    """The meeting with its request replaced by a `checked` one (a cancelled or ended meeting
    stays so: `Conflict`)."""
    _still_open(record)
    before = {p.sub: p for p in record.request.participants}
    after = {p.sub: p for p in request.participants}
    changed = {sub for sub, p in after.items() if before.get(sub) != p}
    gone = set(before) - set(after)
    revoked = [link for link in record.links if link.sub in changed | gone]
    kept = [link for link in record.links if link.sub not in changed | gone]
    new = msgspec.structs.replace(
        record, request=request, updated_at=now, version=record.version + 1, links=kept
    )
    return Change(new, revoked, [p.sub for p in request.participants if p.sub in changed])


def cancelled(record: MeetingRecord, now: float) -> Change:
    """The meeting cancelled: every link revoked. Cancelling twice changes nothing; an ended
    meeting cannot be cancelled (`Conflict`)."""
    if record.status == "cancelled":
        return Change(record, [], [])
    if record.status == "ended":
        raise Conflict("the meeting has ended")
    new = msgspec.structs.replace(
        record, status="cancelled", updated_at=now, version=record.version + 1, links=[]
    )
    return Change(new, list(record.links), [])


def reissued(record: MeetingRecord, now: float) -> Change:
    """Every invitee gets a new link and the old ones are revoked (the HIS lost them, or a
    retried create answered without them)."""
    _still_open(record)
    new = msgspec.structs.replace(record, updated_at=now, version=record.version + 1, links=[])
    return Change(new, list(record.links), [p.sub for p in record.request.participants])


def with_links(record: MeetingRecord, links: Iterable[IssuedLink]) -> MeetingRecord:
    """The record with newly minted links added (one per invitee: a new one replaces)."""
    minted = list(links)
    subs = {link.sub for link in minted}
    kept = [link for link in record.links if link.sub not in subs]
    return msgspec.structs.replace(record, links=[*kept, *minted])


def link_ttl_s(record: MeetingRecord, now: float) -> int:
    """Lifetime of a link minted at `now`: until two hours after the meeting's end."""
    ends = record.request.ends_at.timestamp()
    return max(MIN_LINK_TTL_S, int(ends + LINK_GRACE_S - now))


def room_grants(request: MeetingRequest) -> list[str]:
    """The room's grants: each invitee by directory id, whatever their departments."""
    return [f"sub:{p.sub}" for p in request.participants]


def room_fields(record: MeetingRecord) -> dict[str, Any]:
    """What the meeting sets on the room it maps onto (the room's id is the meeting's): its
    title, departments, lobby, grants, start and case list (shown in the room). The room's
    lock, admissions and opening are the room's own."""
    request = record.request
    return {
        "departments": list(request.departments),
        "lobby": request.lobby,
        "title": request.title,
        "grants": room_grants(request),
        "starts_at": request.starts_at.timestamp(),
        "cases": [{"case_id": c.case_id, "label": c.label} for c in request.cases],
    }


def etag(record: MeetingRecord) -> str:
    """The meeting's entity tag: changes with every version."""
    return f'"{record.meeting_id}.{record.version}"'


def check_if_match(header: str | None, record: MeetingRecord) -> None:
    """`PreconditionFailed` unless an `If-Match` header (if any) names this version or `*`."""
    if header is None:
        return
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    if "*" not in tags and etag(record) not in tags:
        raise PreconditionFailed(
            "the meeting changed since you read it (If-Match does not name its ETag); read it again"
        )


def matching(
    records: Iterable[MeetingRecord], query: MeetingQuery
) -> tuple[list[MeetingRecord], bool]:
    """The records the query selects, by start time then id, at most `limit`, and whether
    more matched."""
    selected = []
    for r in records:
        starts = r.request.starts_at
        if query.starts_after is not msgspec.UNSET and starts < query.starts_after:
            continue
        if query.starts_before is not msgspec.UNSET and starts >= query.starts_before:
            continue
        if query.status is not msgspec.UNSET and r.status != query.status:
            continue
        if query.external_id is not msgspec.UNSET and r.request.external_id != query.external_id:
            continue
        selected.append(r)
    selected.sort(key=lambda r: (r.request.starts_at, r.meeting_id))
    return selected[: query.limit], len(selected) > query.limit


def stamp(seconds: float) -> datetime:
    """Seconds since the epoch as a UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)


def answer(record: MeetingRecord, invitations: list[Invitation]) -> Meeting:
    """The API's view of a record, with its invitations."""
    request = record.request
    return Meeting(
        meeting_id=record.meeting_id,
        status=record.status,
        title=request.title,
        starts_at=request.starts_at,
        ends_at=request.ends_at,
        departments=request.departments,
        cases=request.cases,
        participants=request.participants,
        lobby=request.lobby,
        external_id=request.external_id,
        version=record.version,
        created_at=stamp(record.created_at),
        updated_at=stamp(record.updated_at),
        invitations=invitations,
        ended_at=None if record.ended_at is None else stamp(record.ended_at),
        ended_reason=record.ended_reason,
    )
