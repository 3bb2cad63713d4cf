"""When a meeting ends, the rules without the I/O.

A meeting ends in one of two ways. A chair ends it for everyone (`end_meeting`): whoever is in
the room or waiting in its lobby is told and closed with `CloseCode.MEETING_ENDED`, a running
recording stopped first. Or a meeting the HIS scheduled is over: its room has been empty for
`meeting_end_grace_min` after its scheduled end. A scheduled meeting whose room empties before
its end stays open (people step out and come back), and so does one whose room is in use past
its end (an overrun). An ad-hoc room (opened by a chair arriving, never scheduled) ends as
before, as soon as it is empty (`membership.room_done`).

Whichever node decides first wins: the scheduled meeting's record turns `ended` in one atomic
step of the meeting book (a replace naming the version read), an ad-hoc room's record is deleted
in one step, and only the node whose step changed something audits `room_closed` (the
`meeting.ended` webhook) and tells every node. So a meeting ends once however many nodes notice.

Pure: `now` is passed in; `signaling.ending` carries the decisions out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.errors import ConsiliumError
from signaling.meetings import EndReason, MeetingRecord

ENDED_BY_CHAIR: EndReason = "ended_by_chair"
SCHEDULED_END: EndReason = "scheduled_end"

CLOSE_REASONS: dict[EndReason, str] = {
    ENDED_BY_CHAIR: "ended by the chair",
    SCHEDULED_END: "meeting ended",
}
"""The close reason sent with `CloseCode.MEETING_ENDED`, by why the meeting ended (the web
client words its ended screen from it)."""

SWEEP_S = 15.0
"""How often each node looks for scheduled meetings that are over (`signaling.http.tasks`)."""


class MeetingEnded(ConsiliumError):
    """A join to a meeting that has ended: refused, closed with `CloseCode.MEETING_ENDED`
    (HTTP 410 on the admission check)."""

    code = "meeting_ended"


def refusal(record: MeetingRecord | None) -> MeetingEnded | None:
    """The error a join to this meeting's room meets, or None if the meeting admits joins."""
    if record is None or record.status != "ended":
        return None
    return MeetingEnded("this meeting has ended", reason=record.ended_reason or SCHEDULED_END)


def is_over(
    record: MeetingRecord, *, empty_since: float | None, now: float, grace_s: float
) -> bool:
    """Whether a scheduled meeting is over at `now`: still `scheduled`, its room empty (nobody
    joined or waiting) since `empty_since` (None: someone is there), and both its scheduled end
    and the moment it emptied at least `grace_s` ago."""
    if record.status != "scheduled" or empty_since is None:
        return False
    ends = record.request.ends_at.timestamp()
    return now >= max(ends, empty_since) + grace_s


@dataclass
class EmptyRooms:
    """Since when each scheduled meeting's room has been seen empty by this node's sweep.

    A node that has not watched a room long treats it as empty since it first saw it so (a
    restart starts the grace period again: a meeting ends late, never early)."""

    since: dict[str, float] = field(default_factory=dict)
    """Meeting id -> when the sweep first saw its room empty, for rooms still empty."""

    def observe(self, meeting_id: str, occupied: bool, now: float) -> float | None:
        """Record what the sweep saw at `now`; when the room has been empty since (None while
        someone is in it or waiting)."""
        if occupied:
            self.since.pop(meeting_id, None)
            return None
        return self.since.setdefault(meeting_id, now)

    def forget_others(self, meeting_ids: set[str]) -> None:
        """Forget the rooms of meetings no longer being watched (ended, cancelled, deleted)."""
        for gone in set(self.since) - meeting_ids:
            del self.since[gone]
