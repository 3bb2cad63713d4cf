"""The scheduling API for the HIS: `/api/v1/meetings` and its OpenAPI document.

Every operation needs a token whose role may `schedule_meetings` (the policy's `scheduler`, a
service client); a refusal is audited as `api_refused`, each change as `meeting_scheduled`,
`meeting_updated`, `meeting_cancelled` or `meeting_invitations_issued` (ids and counts only:
no title, no case label, no token). The rules are `signaling.meetings`; the table `OPERATIONS`
routes the handlers and is what `GET /api/openapi.json` describes.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from core.errors import BadMessage, Conflict, NotFound, RateLimited
from core.rooms import new_room_id
from signaling import meetings as m
from signaling import protocol as p
from signaling.fhir_appointment import meeting_body, parse_appointment
from signaling.http.auth import authenticate
from signaling.http.bodies import json_body
from signaling.http.node import NODE, Node
from signaling.http.openapi import Header, Operation, add_operations, openapi_document
from signaling.identity import Identity
from signaling.membership import room_state
from signaling.state.records import Revocation, RoomRecord

T = TypeVar("T")

ACTION = "schedule_meetings"
"""The policy action every operation of this API needs."""

API_VERSION = "1.0.0"
"""The document's `info.version`: changes when the API does (the path keeps `/v1`)."""


IDEMPOTENCY_KEY = Header(
    "Idempotency-Key",
    "A key the HIS chooses per booking: a create retried with the same key (and body) answers "
    "the first meeting (200, `Idempotent-Replayed: true`) instead of making a second.",
    {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[!-~]+$"},
)
IF_MATCH = Header(
    "If-Match",
    "The ETag the HIS read: the change is refused (412) if the meeting changed since.",
    {"type": "string", "minLength": 1, "maxLength": 512},
)


def _decode(data: Any, cls: type[T], what: str) -> T:
    """`data` as `cls`, strictly (a number never passes for a time); `BadMessage` saying why."""
    try:
        return msgspec.convert(data, cls)
    except msgspec.ValidationError as exc:
        raise BadMessage(f"invalid {what}: {exc}") from None


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_KEY.name)
    if key is not None and not (0 < len(key) <= 128 and all("!" <= c <= "~" for c in key)):
        raise BadMessage("Idempotency-Key is 1-128 printable ASCII characters without spaces")
    return key


def _if_match(request: web.Request) -> str | None:
    value = request.headers.get(IF_MATCH.name)
    if value is not None and not 0 < len(value) <= 512:
        raise BadMessage("If-Match is 1-512 characters: the ETag the meeting was read with")
    return value


async def _meeting(node: Node, request: web.Request) -> m.MeetingRecord:
    record = await node.store.meetings.get(request.match_info["meeting_id"])
    if record is None:
        raise NotFound("no such meeting")
    return record


def _plan_links(record: m.MeetingRecord, subs: list[str], now: float) -> list[m.IssuedLink]:
    """The links to mint for `subs` (their ids and expiry, decided before the record is
    stored; the tokens are signed once it is)."""
    expires = now + m.link_ttl_s(record, now)
    return [m.IssuedLink(sub=sub, jti=str(uuid.uuid4()), expires_at=expires) for sub in subs]


def _invitations(
    node: Node, record: m.MeetingRecord, minted: list[m.IssuedLink], now: float
) -> list[m.Invitation]:
    """One invitation per participant; those in `minted` carry their token (development IdP
    only: elsewhere the person signs in at the hospital's IdP on the join page)."""
    page = f"{node.settings.own_origin}/join/{record.meeting_id}"
    by_sub = {link.sub: link for link in minted}
    invitations = []
    for invitee in record.request.participants:
        link = by_sub.get(invitee.sub)
        if link is None or node.dev_idp is None:
            invitations.append(m.Invitation(sub=invitee.sub, role=invitee.role, join_url=page))
            continue
        token = node.dev_idp.mint(
            sub=invitee.sub,
            role=invitee.role,
            rooms=[record.meeting_id],
            name=invitee.name or invitee.sub,
            ttl_s=max(1, int(link.expires_at - now)),
            extra={"jti": link.jti, "exp": int(link.expires_at)},
        )
        invitations.append(
            m.Invitation(
                sub=invitee.sub,
                role=invitee.role,
                join_url=f"{page}#token={token}",
                token=token,
                expires_at=m.stamp(int(link.expires_at)),
            )
        )
    return invitations


def _respond(
    node: Node,
    record: m.MeetingRecord,
    minted: list[m.IssuedLink],
    now: float,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = m.answer(record, _invitations(node, record, minted, now))
    return web.Response(
        body=msgspec.json.encode(body),
        status=status,
        content_type="application/json",
        headers={"ETag": m.etag(record), **(headers or {})},
    )


async def _revoke(node: Node, links: list[m.IssuedLink], reason: str, by: Identity) -> None:
    """Revoke each link's token on every node (the existing revocation path)."""
    now = time.time()
    for link in links:
        if link.expires_at > now:
            await node.store.revoke(
                Revocation(
                    kind="jti", value=link.jti, reason=reason, by=by.sub, at=now,
                    expires_at=link.expires_at,
                )
            )  # fmt: skip


async def _store(node: Node, record: m.MeetingRecord, read_version: int) -> None:
    if not await node.store.meetings.replace(record, read_version):
        raise Conflict("the meeting changed at the same moment; read it again and retry")


def room_of(record: m.MeetingRecord, room: RoomRecord | None) -> RoomRecord:
    """The room the meeting maps onto: `room` made to match it, or a new one."""
    if room is None:
        room = RoomRecord(
            room_id=record.meeting_id,
            departments=[],
            scheduled_by=record.scheduled_by,
            created_at=record.created_at,
        )
    return dataclasses.replace(room, **m.room_fields(record))


async def _sync_room(node: Node, record: m.MeetingRecord) -> None:
    """The meeting's room made to match it (created if it is gone), and the people in it told
    (`room_updated`, on every node)."""
    room = room_of(record, await node.store.get_room(record.meeting_id))
    await node.store.save_room(room)
    await node.rooms.messenger.announce(room.room_id, p.RoomUpdated(room_state(room)))


async def _book(request: web.Request, identity: Identity, data: Any) -> web.Response:
    """Book the meeting `data` (the API's body) asks for: its room, and a link per invitee;
    or answer the meeting a retried booking already made."""
    node = request.app[NODE]
    key = _idempotency_key(request)
    body = _decode(data, m.MeetingRequest, "meeting")
    now = time.time()
    booking = m.checked(body, now)
    keys = m.idempotency_keys(identity.sub, booking, key)
    bound = node.settings.max_scheduled_rooms
    if await node.store.meetings.count() >= bound or await node.store.count_rooms() >= bound:
        raise RateLimited("too many meetings are scheduled")
    record = m.new_record(new_room_id(), booking, scheduled_by=identity.sub, now=now, keys=keys)
    existing = await node.store.meetings.create(record, keys)
    if existing is not None:
        m.replay_of(existing, booking)
        return _respond(node, existing, [], now, headers={"Idempotent-Replayed": "true"})
    links = _plan_links(record, [invitee.sub for invitee in booking.participants], now)
    await _store(node, m.with_links(record, links), record.version)
    await node.store.save_room(room_of(record, None))
    node.audit.append(
        "meeting_scheduled",
        "allow",
        sub=identity.sub,
        room=record.meeting_id,
        departments=booking.departments,
        participants=[invitee.sub for invitee in booking.participants],
        cases=len(booking.cases),
        external_id=booking.external_id,
    )
    return _respond(node, record, links, now, status=201)


async def create_meeting(request: web.Request) -> web.Response:
    """Book a meeting: its room, and a link per invitee."""
    identity = await authenticate(request, ACTION)
    return await _book(request, identity, await json_body(request))


async def book_fhir_appointment(request: web.Request) -> web.Response:
    """Book a meeting from an HL7 FHIR R4 `Appointment` (`signaling.fhir_appointment`)."""
    identity = await authenticate(request, ACTION)
    appointment = parse_appointment(await json_body(request))
    return await _book(request, identity, meeting_body(appointment))


async def get_meeting(request: web.Request) -> web.Response:
    """One meeting, with its join pages (no tokens: `POST .../invitations` issues them)."""
    node = request.app[NODE]
    await authenticate(request, ACTION)
    return _respond(node, await _meeting(node, request), [], time.time())


async def list_meetings(request: web.Request) -> web.Response:
    """Meetings by start time, filtered."""
    node = request.app[NODE]
    await authenticate(request, ACTION)
    if len(set(request.query)) != len(request.query):
        raise BadMessage("each query parameter may be given once")
    params: dict[str, Any] = dict(request.query)
    # Strict, so that a number never passes for a time; only the limit is a number.
    if "limit" in params:
        if not (params["limit"].isascii() and params["limit"].isdigit()):
            raise BadMessage("invalid query: limit is a whole number")
        params["limit"] = int(params["limit"])
    query = _decode(params, m.MeetingQuery, "query")
    records, truncated = m.matching(await node.store.meetings.list(), query)
    now = time.time()
    answer = m.MeetingList(
        meetings=[m.answer(r, _invitations(node, r, [], now)) for r in records],
        truncated=truncated,
    )
    return web.Response(body=msgspec.json.encode(answer), content_type="application/json")


async def replace_meeting(request: web.Request) -> web.Response:
    """Change a meeting (the whole request replaced): its room follows; removed or changed
    invitees' links are revoked, added or changed ones get new links."""
    node = request.app[NODE]
    identity = await authenticate(request, ACTION)
    body = _decode(await json_body(request), m.MeetingRequest, "meeting")
    record = await _meeting(node, request)
    m.check_if_match(_if_match(request), record)
    now = time.time()
    booking = m.checked(body, now)
    if booking.external_id is None:
        booking = msgspec.structs.replace(booking, external_id=record.request.external_id)
    elif booking.external_id != record.request.external_id:
        raise BadMessage("external_id cannot change (it names the HIS's booking)")
    change = m.replaced(record, booking, now)
    links = _plan_links(change.record, change.to_invite, now)
    await _store(node, m.with_links(change.record, links), record.version)
    await _revoke(node, change.revoked, "invitation_changed", identity)
    await _sync_room(node, change.record)
    node.audit.append(
        "meeting_updated",
        "allow",
        sub=identity.sub,
        room=record.meeting_id,
        version=change.record.version,
        invited=change.to_invite,
        revoked_links=len(change.revoked),
    )
    return _respond(node, change.record, links, now)


async def cancel_meeting(request: web.Request) -> web.Response:
    """Cancel a meeting: every link revoked (whoever joined with one is disconnected), the room
    removed if nobody is in it, else locked. Cancelling again changes nothing."""
    node = request.app[NODE]
    identity = await authenticate(request, ACTION)
    record = await _meeting(node, request)
    m.check_if_match(_if_match(request), record)
    now = time.time()
    change = m.cancelled(record, now)
    if change.record.version != record.version:
        await _store(node, change.record, record.version)
        await _revoke(node, change.revoked, "meeting_cancelled", identity)
        room = await node.store.get_room(record.meeting_id)
        if room is not None:
            occupied = await node.store.list_participants(room.room_id) or (
                await node.store.list_lobby(room.room_id)
            )
            if occupied:
                room.locked = True
                await node.store.save_room(room)
            else:
                await node.store.delete_room(room.room_id)
        node.audit.append(
            "meeting_cancelled",
            "allow",
            sub=identity.sub,
            room=record.meeting_id,
            revoked_links=len(change.revoked),
        )
    return _respond(node, change.record, [], now)


async def issue_invitations(request: web.Request) -> web.Response:
    """A new link for every invitee; the previous ones are revoked."""
    node = request.app[NODE]
    identity = await authenticate(request, ACTION)
    record = await _meeting(node, request)
    m.check_if_match(_if_match(request), record)
    now = time.time()
    change = m.reissued(record, now)
    links = _plan_links(change.record, change.to_invite, now)
    await _store(node, m.with_links(change.record, links), record.version)
    await _revoke(node, change.revoked, "invitation_reissued", identity)
    node.audit.append(
        "meeting_invitations_issued",
        "allow",
        sub=identity.sub,
        room=record.meeting_id,
        invited=change.to_invite,
        revoked_links=len(change.revoked),
    )
    return _respond(node, change.record, links, now)


async def delete_expired_meetings(node: Node, now: float | None = None) -> list[str]:
    """Delete the meetings past `meeting_retention_days`, with their rooms (a room still in
    session is left for the next sweep); audited as `meetings_deleted`. The ids deleted."""
    now = time.time() if now is None else now
    retention_s = node.settings.meeting_retention_days * 86_400
    deleted = []
    for record in await node.store.meetings.list():
        if not m.expired(record, now, retention_s):
            continue
        room_id = record.meeting_id
        if await node.store.list_participants(room_id) or await node.store.list_lobby(room_id):
            continue
        await node.store.delete_room(room_id)
        await node.store.meetings.delete(record)
        deleted.append(room_id)
    if deleted:
        node.audit.append("meetings_deleted", "info", reason="retention", meetings=deleted)
    return deleted


MEETINGS = "/api/v1/meetings"
MEETING = MEETINGS + "/{meeting_id}"

EXAMPLE_BOOKING: dict[str, Any] = {
    "title": "Thoracic tumour board",
    "starts_at": "2099-03-05T14:00:00+08:00",
    "ends_at": "2099-03-05T15:30:00+08:00",
    "departments": ["oncology", "radiology"],
    "cases": [{"case_id": "EP-2041", "label": "Case 1: lung nodule"}],
    "participants": [
        {"sub": "u1024", "role": "chair", "name": "Dr Chen"},
        {"sub": "u2048", "role": "radiologist", "name": "Dr Wu"},
    ],
    "external_id": "HIS-APPT-9001",
}
"""A booking as docs/operations.md shows it (and the document's request example)."""

FHIR_APPOINTMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "An HL7 FHIR R4 Appointment resource "
    "(https://hl7.org/fhir/R4/appointment.html), validated against FHIR by the server.",
    "properties": {"resourceType": {"const": "Appointment"}},
    "required": ["resourceType", "status", "participant"],
}
"""The FHIR body as the document gives it: the resource's own definition is FHIR's."""

_FROM_ANSWER = "$response.body#/meeting_id"
_LINKS = {
    "getMeeting": {"operationId": "getMeeting", "meeting_id": _FROM_ANSWER},
    "replaceMeeting": {"operationId": "replaceMeeting", "meeting_id": _FROM_ANSWER},
    "cancelMeeting": {"operationId": "cancelMeeting", "meeting_id": _FROM_ANSWER},
    "issueInvitations": {"operationId": "issueInvitations", "meeting_id": _FROM_ANSWER},
}

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "POST", MEETINGS, create_meeting, "createMeeting", "Book a meeting",
        m.Meeting, statuses=(201, 200), body=m.MeetingRequest, headers=(IDEMPOTENCY_KEY,),
        errors=(400, 409, 413, 429), etag=True, example=EXAMPLE_BOOKING, links=_LINKS,
        description="201 with the new meeting and a minted link per invitee; 200 (and "
        "`Idempotent-Replayed: true`) when the `Idempotency-Key` or `external_id` names a "
        "meeting already booked with the same request, 409 if with another.",
    ),
    Operation(
        "POST", "/api/v1/fhir/Appointment", book_fhir_appointment, "bookFhirAppointment",
        "Book a meeting from a FHIR R4 Appointment", m.Meeting, statuses=(201, 200),
        foreign_body=("application/fhir+json", FHIR_APPOINTMENT_SCHEMA),
        headers=(IDEMPOTENCY_KEY,), errors=(400, 409, 413, 429), etag=True, links=_LINKS,
        description="The Appointment is validated as FHIR R4 and mapped onto a booking "
        "(docs/operations.md, \"Booking in FHIR\"); then as `createMeeting`.",
    ),
    Operation(
        "GET", MEETINGS, list_meetings, "listMeetings", "List meetings by start time",
        m.MeetingList, query=m.MeetingQuery, errors=(400,),
    ),
    Operation(
        "GET", MEETING, get_meeting, "getMeeting", "Read a meeting", m.Meeting,
        errors=(404,), etag=True,
    ),
    Operation(
        "PUT", MEETING, replace_meeting, "replaceMeeting", "Change a meeting", m.Meeting,
        body=m.MeetingRequest, headers=(IF_MATCH,), errors=(400, 404, 409, 412, 413),
        etag=True, example=EXAMPLE_BOOKING, links=_LINKS,
        description="The whole request is replaced; the room follows. Invitees removed or "
        "changed lose their link; added or changed ones get a new link in this answer.",
    ),
    Operation(
        "POST", MEETING + "/cancel", cancel_meeting, "cancelMeeting", "Cancel a meeting",
        m.Meeting, headers=(IF_MATCH,), errors=(400, 404, 409, 412), etag=True,
        description="Every link is revoked; the room is removed, or locked if people are in "
        "it. Cancelling a cancelled meeting answers it unchanged.",
    ),
    Operation(
        "POST", MEETING + "/invitations", issue_invitations, "issueInvitations",
        "Issue new links to every invitee", m.Meeting, headers=(IF_MATCH,),
        errors=(400, 404, 409, 412), etag=True,
        description="The previous links are revoked. Tokens are minted only by a node whose "
        "development IdP signs them; elsewhere `join_url` is the room's page, where the "
        "person signs in at the hospital's IdP.",
    ),
)  # fmt: skip
"""The scheduling API: routed by `add_meeting_routes`, documented by `api_document`."""


def api_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the versioned API."""
    return openapi_document(
        OPERATIONS,
        title="Consilium scheduling API",
        version=API_VERSION,
        description="Meetings booked by the hospital's HIS: each maps onto a Consilium room "
        'with its invitations (docs/operations.md, "Scheduling from the HIS").',
        path_schemas={"meeting_id": msgspec.json.schema(m.MeetingId)},
        error_body=m.ErrorBody,
    )


async def openapi_json(request: web.Request) -> web.Response:
    """`GET /api/openapi.json`: the document (public: it holds no data)."""
    return web.json_response(api_document())


def add_meeting_routes(app: web.Application) -> None:
    """Register the scheduling API and its document (before the `/api/{tail}` catch-all)."""
    app.router.add_get("/api/openapi.json", openapi_json)
    add_operations(app, OPERATIONS)
