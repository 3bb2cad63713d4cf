"""Meetings ending, carried out: the decisions of `signaling.meeting_end` against the store, the
audit log and the other nodes.

`end_meeting` is the one way a meeting ends while people may be in it (a chair's `end_meeting`
through `end_for_everyone`, or the sweep of scheduled meetings that are over); `close_empty_room`
the way an ad-hoc room goes when its last person leaves. Each decides the winner with one atomic
step of the shared state, so of several nodes (or chairs) ending the same meeting at once exactly
one audits `room_closed`, the entry the `meeting.ended` webhook is made from.
"""

from __future__ import annotations

import logging

from core.actions import Action
from signaling import cluster, membership
from signaling import meeting_end as me
from signaling import meetings as m
from signaling.audit import AuditLog
from signaling.connection import Connection
from signaling.media_relay import MediaRelay
from signaling.state.store import StateStore

log = logging.getLogger("consilium.rooms")

_REPLACE_TRIES = 5
"""Attempts at turning a meeting `ended` while the HIS changes it at the same moment."""


async def _mark_ended(store: StateStore, meeting_id: str, reason: m.EndReason, now: float) -> bool:
    """Turn the scheduled meeting `ended`; True if this call did (False: it was not scheduled,
    or another node or chair ended it first)."""
    for _ in range(_REPLACE_TRIES):
        record = await store.meetings.get(meeting_id)
        new = None if record is None else m.ended(record, now, reason)
        if record is None or new is None:
            return False
        if await store.meetings.replace(new, record.version):
            return True
    log.warning("a meeting changed at every attempt to end it", extra={"room": meeting_id})
    return False


async def end_meeting(
    store: StateStore,
    audit: AuditLog,
    room_id: str,
    reason: m.EndReason,
    *,
    by: str | None,
    now: float,
) -> bool:
    """End the meeting in `room_id` for everyone, on every node: a scheduled meeting turns
    `ended`, the room goes, `room_closed` is audited (with a `leave` for each person still in
    it) and every node closes its connections in the room (4411). True if this call ended it;
    False if it had ended already (nothing is done twice).

    The caller stops a running recording first (the chair's `stop_recording`)."""
    scheduled = await store.meetings.get(room_id) is not None
    if scheduled and not await _mark_ended(store, room_id, reason, now):
        return False
    participants = await store.list_participants(room_id)
    removed = await store.delete_room(room_id)
    if not scheduled and not removed:
        return False  # an ad-hoc room another node or chair closed first
    for person in participants:
        audit.append("leave", "info", sub=person.sub, room=room_id, reason=reason,
                     participant=person.participant_id)  # fmt: skip
    audit.append("room_closed", "info", sub=by, room=room_id, reason=reason)
    await store.publish(
        cluster.to_wire(cluster.MeetingEnded(room=room_id, reason=me.CLOSE_REASONS[reason]))
    )
    return True


async def end_for_everyone(
    store: StateStore, audit: AuditLog, relay: MediaRelay, chair: Connection, *, now: float
) -> bool:
    """A chair's `end_meeting`: a running recording stopped first (the chair's own
    `stop_recording`, carried out on the room's media node), then `end_meeting`."""
    identity = chair.identity
    assert identity is not None
    recorder = relay.recorder
    local = recorder is not None and chair.media_node == store.node_id
    idle_here = local and recorder is not None and not recorder.is_recording(chair.room_id)
    may_stop = relay.media is not None and chair.media_node and not idle_here
    if may_stop and Action.STOP_RECORDING in chair.permissions:
        # On another node, the stop is an event published before the ending's: that node
        # carries it out (the recording sealed) before it closes anyone.
        await relay.call(chair, "rec", action="stop_recording", fields={})
    return await end_meeting(
        store, audit, chair.room_id, me.ENDED_BY_CHAIR, by=identity.sub, now=now
    )


async def close_empty_room(store: StateStore, audit: AuditLog, room_id: str) -> None:
    """An ad-hoc room is empty: it goes, audited `room_closed` once (by the node whose delete
    removed it)."""
    if await store.delete_room(room_id):
        audit.append("room_closed", "info", room=room_id, reason="room_empty")


async def close_if_done(
    store: StateStore, audit: AuditLog, room_id: str, *, grace_s: float, now: float
) -> None:
    """Someone left `room_id`: if nobody is left (joined or waiting), an ad-hoc room goes
    (`membership.room_done`) and a scheduled meeting past its end and `grace_s` ends (with a
    grace period, the sweep ends it later: `end_meetings_over`)."""
    room = await store.get_room(room_id)
    if room is None:
        return
    participants = await store.list_participants(room_id)
    waiting = await store.list_lobby(room_id) if not participants else []
    if participants or waiting:
        return
    if not room.scheduled_by:
        if membership.room_done(room, participants, waiting):
            await close_empty_room(store, audit, room_id)
        return
    meeting = await store.meetings.get(room_id)
    if meeting is not None and me.is_over(meeting, empty_since=now, now=now, grace_s=grace_s):
        await end_meeting(store, audit, room_id, me.SCHEDULED_END, by=None, now=now)


async def end_meetings_over(
    store: StateStore, audit: AuditLog, empty: me.EmptyRooms, *, grace_s: float, now: float
) -> list[str]:
    """End the scheduled meetings that are over at `now` (`meeting_end.is_over`): the sweep's
    work. The ids this node ended."""
    ended = []
    watched = set()
    for record in await store.meetings.list():
        if record.status != "scheduled" or record.request.ends_at.timestamp() > now:
            continue
        watched.add(record.meeting_id)
        occupied = bool(
            await store.list_participants(record.meeting_id)
            or await store.list_lobby(record.meeting_id)
        )
        since = empty.observe(record.meeting_id, occupied, now)
        if me.is_over(record, empty_since=since, now=now, grace_s=grace_s) and await end_meeting(
            store, audit, record.meeting_id, me.SCHEDULED_END, by=None, now=now
        ):
            ended.append(record.meeting_id)
    empty.forget_others(watched)
    return ended
