"""When a meeting ends, the rules on their own (`signaling.meeting_end`, `meetings.ended`): no
event loop, no server."""

from __future__ import annotations

import msgspec
import pytest

from core.errors import Conflict
from signaling import meeting_end as me
from signaling import meetings as m
from signaling.errors import close_code_of, http_status_of
from signaling.protocol import CloseCode
from tests.test_meetings import NOW, booked

ENDS = booked().request.ends_at.timestamp()
GRACE = 5 * 60.0


def test_a_room_that_empties_before_the_meeting_ends_stays_open() -> None:
    record = booked()
    before_end = ENDS - 600
    assert not me.is_over(record, empty_since=before_end - 1800, now=before_end, grace_s=GRACE)
    # Still empty a minute after the end: within the grace period, people may come back.
    assert not me.is_over(record, empty_since=before_end - 1800, now=ENDS + 60, grace_s=GRACE)
    assert me.is_over(record, empty_since=before_end - 1800, now=ENDS + GRACE, grace_s=GRACE)


def test_a_meeting_in_use_past_its_end_runs_on_and_ends_a_grace_period_after_it_empties() -> None:
    record = booked()
    overrun = ENDS + 3600
    assert not me.is_over(record, empty_since=None, now=overrun, grace_s=GRACE)
    assert not me.is_over(record, empty_since=overrun, now=overrun + GRACE - 1, grace_s=GRACE)
    assert me.is_over(record, empty_since=overrun, now=overrun + GRACE, grace_s=GRACE)
    # With no grace period, it ends as the last person leaves after the end.
    assert me.is_over(record, empty_since=overrun, now=overrun, grace_s=0)


def test_only_a_scheduled_meeting_can_be_over() -> None:
    over = ENDS + 2 * GRACE
    ended = m.ended(booked(), ENDS, me.ENDED_BY_CHAIR)
    cancelled = m.cancelled(booked(), NOW).record
    assert ended is not None
    for record in (ended, cancelled):
        assert not me.is_over(record, empty_since=ENDS, now=over, grace_s=GRACE)


def test_the_sweep_remembers_since_when_a_room_is_empty() -> None:
    empty = me.EmptyRooms()
    assert empty.observe("mdt-7", occupied=False, now=100.0) == 100.0
    assert empty.observe("mdt-7", occupied=False, now=130.0) == 100.0
    assert empty.observe("mdt-7", occupied=True, now=160.0) is None
    assert empty.observe("mdt-7", occupied=False, now=190.0) == 190.0
    empty.observe("mdt-8", occupied=False, now=190.0)
    empty.forget_others({"mdt-8"})
    assert empty.since == {"mdt-8": 190.0}


def test_ending_a_meeting_records_when_and_why_and_happens_once() -> None:
    record = booked()
    ended = m.ended(record, ENDS + 42, me.ENDED_BY_CHAIR)
    assert ended is not None
    assert ended.status == "ended" and ended.ended_at == ENDS + 42
    assert ended.ended_reason == "ended_by_chair" and ended.version == record.version + 1
    assert ended.links == []  # its links admit no one any more
    assert m.ended(ended, ENDS + 50, me.SCHEDULED_END) is None  # no second ending
    assert m.ended(m.cancelled(record, NOW).record, ENDS, me.SCHEDULED_END) is None
    answer = m.answer(ended, [])
    assert answer.status == "ended" and answer.ended_reason == "ended_by_chair"
    assert answer.ended_at is not None and answer.ended_at.timestamp() == ENDS + 42
    wire = msgspec.json.decode(msgspec.json.encode(answer))
    assert wire["ended_at"].endswith("Z")
    assert m.answer(record, []).ended_at is None


def test_an_ended_meeting_cannot_be_changed_cancelled_or_reissued() -> None:
    ended = m.ended(booked(), ENDS, me.SCHEDULED_END)
    assert ended is not None
    with pytest.raises(Conflict, match="has ended"):
        m.replaced(ended, booked().request, ENDS)
    with pytest.raises(Conflict, match="has ended"):
        m.cancelled(ended, ENDS)
    with pytest.raises(Conflict, match="has ended"):
        m.reissued(ended, ENDS)


def test_a_join_to_an_ended_meeting_is_refused_with_its_own_close_code() -> None:
    assert me.refusal(None) is None
    assert me.refusal(booked()) is None
    ended = m.ended(booked(), ENDS, me.ENDED_BY_CHAIR)
    refusal = me.refusal(ended)
    assert refusal is not None and refusal.code == "meeting_ended"
    assert refusal.details == {"reason": "ended_by_chair"}
    assert close_code_of(refusal) == CloseCode.MEETING_ENDED == 4411
    assert http_status_of(refusal) == 410


def test_an_ended_meeting_is_kept_for_its_retention_from_when_it_ended() -> None:
    late = m.ended(booked(), ENDS + 3 * 3600, me.SCHEDULED_END)
    assert late is not None
    assert not m.expired(late, ENDS + 3 * 3600 + 86_000, 86_400)
    assert m.expired(late, ENDS + 3 * 3600 + 86_400, 86_400)
