"""Scheduled rooms: `POST /api/rooms`, `GET /api/rooms/{room}` and `.../admission`."""

from __future__ import annotations

import dataclasses
import time

import msgspec
from aiohttp import web

from core.errors import BadMessage, Conflict, NotFound, PolicyDenied, RateLimited
from core.rooms import new_room_id, valid_room_id
from signaling import meeting_end
from signaling.http.auth import audit_refusal, authenticate, decide_in_room
from signaling.http.bodies import json_body
from signaling.http.node import NODE
from signaling.membership import room_scope, room_state
from signaling.policy import RoomScope
from signaling.state.records import RoomRecord


class ScheduleRoom(msgspec.Struct, forbid_unknown_fields=True):
    """Body of `POST /api/rooms`."""

    room_id: str | None = None
    departments: list[str] = msgspec.field(default_factory=list)
    lobby: bool = True
    title: str = ""
    grants: list[str] = msgspec.field(default_factory=list)
    starts_at: float | None = None


async def create_room(request: web.Request) -> web.Response:
    """Schedule a room (a chair, or anyone the policy lets open rooms)."""
    node = request.app[NODE]
    identity = await authenticate(request, None)
    if not node.policy.may_open_room(identity):
        audit_refusal(request, "may_not_schedule_rooms", sub=identity.sub)
        raise PolicyDenied("your role may not schedule rooms")
    try:
        body = msgspec.convert(await json_body(request), ScheduleRoom)
    except msgspec.ValidationError as exc:
        raise BadMessage(f"invalid room: {exc}") from None
    room_id = body.room_id or new_room_id()
    if not valid_room_id(room_id):
        raise BadMessage("room_id must be 1-64 letters, digits, '.', '_' or '-'")
    try:
        RoomScope(room_id=room_id, departments=tuple(body.departments), grants=tuple(body.grants))
    except ValueError as exc:
        raise BadMessage(f"grants are 'sub:<id>', 'dept:<name>' or 'org:<name>': {exc}") from None
    if len(body.title) > 200 or len(body.departments) > 32 or len(body.grants) > 256:
        raise BadMessage("room title, departments or grants over their bounds")
    departments = body.departments or list(identity.depts)
    # The scheduler must be allowed into the room it schedules, by the join's own rule: the
    # token grants this room id (a server-made id is new, so nobody else's), and the room
    # shares one of the scheduler's departments. The body's cross-department grants are for
    # the guests, not the scheduler: a chair cannot grant themselves another department.
    scheduler = identity
    if body.room_id is None:
        scheduler = dataclasses.replace(identity, rooms=(*identity.rooms, room_id))
    scope = RoomScope(room_id=room_id, departments=tuple(departments))
    decide_in_room(
        request, scheduler, room_id, scope, ("join_room",), "you may not schedule this room"
    )
    if await node.store.count_rooms() >= node.settings.max_scheduled_rooms:
        raise RateLimited("too many rooms are scheduled")
    room = RoomRecord(
        room_id=room_id,
        departments=departments,
        lobby=body.lobby,
        title=body.title,
        grants=body.grants,
        scheduled_by=identity.sub,
        created_at=time.time(),
        starts_at=body.starts_at,
    )
    if not await node.store.create_room(room):
        raise Conflict("a room with that id exists")
    node.audit.append(
        "room_scheduled",
        "allow",
        sub=identity.sub,
        room=room_id,
        departments=room.departments,
        lobby=room.lobby,
    )
    return web.json_response(msgspec.to_builtins(room_state(room)), status=201)


async def _may_join(request: web.Request) -> tuple[str, RoomRecord | None]:
    """The room id and record of a `/api/rooms/{room}` route, once the caller's token may join
    it, decided as the join is; a refusal is audited and raised with its `reason` code (the
    policy's detail stays in the audit log)."""
    node = request.app[NODE]
    identity = await authenticate(request, None)
    room_id = request.match_info["room"]
    room = await node.store.get_room(room_id)
    decide_in_room(request, identity, room_id, room_scope(room, room_id))
    return room_id, room


async def room_admission(request: web.Request) -> web.Response:
    """Whether the caller's token may join the room now, asked by the web client before it opens
    any camera or microphone: `{"allowed": true}`, or the refusal the join would give (410
    `meeting_ended` once the meeting has ended)."""
    room_id, _ = await _may_join(request)
    over = meeting_end.refusal(await request.app[NODE].store.meetings.get(room_id))
    if over is not None:
        raise over
    return web.json_response({"allowed": True})


async def get_room(request: web.Request) -> web.Response:
    """A room's settings and who is in it, for someone whose token grants the room."""
    node = request.app[NODE]
    room_id, room = await _may_join(request)
    if room is None:
        raise NotFound("no such room")
    participants = await node.store.list_participants(room_id)
    return web.json_response(
        {
            "room": msgspec.to_builtins(room_state(room)),
            "opened": room.opened,
            "participants": len(participants),
            "lobby": len(await node.store.list_lobby(room_id)),
        }
    )
