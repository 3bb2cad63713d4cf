"""The scheduling rules on their own (`signaling.meetings`): no event loop, no server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest

from core.errors import BadMessage, Conflict, PreconditionFailed
from signaling import meetings as m

NOW = datetime(2030, 3, 5, 6, 0, tzinfo=UTC).timestamp()
CST = timezone(timedelta(hours=8))


def request(**overrides: object) -> m.MeetingRequest:
    """A tumour board at 14:00 China Standard Time on the day of NOW, as the HIS sends it."""
    fields: dict[str, object] = {
        "title": "Thoracic tumour board",
        "starts_at": datetime(2030, 3, 5, 14, 0, tzinfo=CST),
        "ends_at": datetime(2030, 3, 5, 15, 30, tzinfo=CST),
        "departments": ["oncology", "radiology", "oncology"],
        "cases": [m.Case("EP-2041", "Case 1: lung nodule")],
        "participants": [
            m.Invitee("dr-chen", "chair", "Dr Chen"),
            m.Invitee("dr-wu", "radiologist"),
            m.Invitee("nurse-li", "nurse"),
        ],
    }
    fields.update(overrides)
    return m.MeetingRequest(**fields)  # type: ignore[arg-type]


def booked(**overrides: object) -> m.MeetingRecord:
    record = m.new_record(
        "mdt-7", m.checked(request(**overrides), NOW), scheduled_by="his", now=NOW
    )
    links = [m.IssuedLink(p.sub, f"jti-{p.sub}", NOW + 3600) for p in record.request.participants]
    return m.with_links(record, links)


def test_a_booking_is_kept_in_utc_with_each_department_once() -> None:
    checked = m.checked(request(), NOW)
    assert checked.starts_at == datetime(2030, 3, 5, 6, 0, tzinfo=UTC)
    assert checked.departments == ["oncology", "radiology"]


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"ends_at": datetime(2030, 3, 5, 13, 0, tzinfo=CST)}, "after starts_at"),
        ({"ends_at": datetime(2030, 3, 6, 15, 0, tzinfo=CST)}, "24 hours"),
        (
            {
                "starts_at": datetime(2030, 3, 5, 5, 0, tzinfo=UTC),
                "ends_at": datetime(2030, 3, 5, 5, 30, tzinfo=UTC),
            },
            "in the past",
        ),
        ({"participants": [m.Invitee("a", "chair"), m.Invitee("a", "nurse")]}, "listed once"),
        ({"cases": [m.Case("c1"), m.Case("c1", "again")]}, "case_id"),
    ],
)
def test_a_booking_that_makes_no_sense_is_refused_with_the_reason(
    overrides: dict[str, object], says: str
) -> None:
    with pytest.raises(BadMessage, match=says):
        m.checked(request(**overrides), NOW)


def test_a_meeting_that_is_running_may_still_be_changed() -> None:
    during = datetime(2030, 3, 5, 6, 30, tzinfo=UTC).timestamp()
    assert m.checked(request(), during).title == "Thoracic tumour board"


def test_the_wire_refuses_patient_data_and_zoneless_times() -> None:
    body = msgspec.json.encode(msgspec.to_builtins(request()))
    as_dict = msgspec.json.decode(body)
    with pytest.raises(msgspec.ValidationError, match="Object contains unknown field"):
        msgspec.convert({**as_dict, "patient_name": "Zhang San"}, m.MeetingRequest)
    with pytest.raises(msgspec.ValidationError, match="timezone"):
        msgspec.convert({**as_dict, "starts_at": "2030-03-05T14:00:00"}, m.MeetingRequest)
    case = {"case_id": "EP 2041 Zhang San", "label": ""}
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({**as_dict, "cases": [case]}, m.MeetingRequest)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(
            {**as_dict, "participants": [{"sub": "x", "role": "admin"}]}, m.MeetingRequest
        )


def test_idempotency_keys_are_scoped_to_the_calling_client() -> None:
    req = request(external_id="HIS-APPT-9001")
    assert m.idempotency_keys("his-a", req, "k1") == ["key:his-a:k1", "ext:his-a:HIS-APPT-9001"]
    assert m.idempotency_keys("his-b", request(), None) == []


def test_a_retry_with_the_same_body_replays_and_another_body_conflicts() -> None:
    record = booked()
    assert m.replay_of(record, m.checked(request(), NOW)) is record
    # The same instant in another offset is the same booking.
    same = request(
        starts_at=datetime(2030, 3, 5, 6, 0, tzinfo=UTC),
        ends_at=datetime(2030, 3, 5, 7, 30, tzinfo=UTC),
    )
    assert m.replay_of(record, m.checked(same, NOW)) is record
    with pytest.raises(Conflict):
        m.replay_of(record, m.checked(request(title="Another board"), NOW))


def test_replacing_revokes_the_links_of_removed_and_changed_invitees_only() -> None:
    record = booked()
    new = request(
        participants=[
            m.Invitee("dr-chen", "chair", "Dr Chen"),  # unchanged: keeps the link
            m.Invitee("dr-wu", "specialist"),  # another role: a new link
            m.Invitee("dr-zhao", "trainee"),  # added
        ]
    )
    change = m.replaced(record, m.checked(new, NOW), NOW + 60)
    assert sorted(link.sub for link in change.revoked) == ["dr-wu", "nurse-li"]
    assert change.to_invite == ["dr-wu", "dr-zhao"]
    assert [link.sub for link in change.record.links] == ["dr-chen"]
    assert change.record.version == record.version + 1
    assert change.record.updated_at == NOW + 60 and change.record.created_at == NOW


def test_a_cancelled_meeting_revokes_every_link_once_and_then_cannot_change() -> None:
    change = m.cancelled(booked(), NOW)
    assert change.record.status == "cancelled" and len(change.revoked) == 3
    again = m.cancelled(change.record, NOW + 5)
    assert again.record is change.record and again.revoked == []
    with pytest.raises(Conflict):
        m.replaced(change.record, m.checked(request(), NOW), NOW)
    with pytest.raises(Conflict):
        m.reissued(change.record, NOW)


def test_reissuing_replaces_every_link() -> None:
    record = booked()
    change = m.reissued(record, NOW)
    assert len(change.revoked) == 3 and change.record.links == []
    assert change.to_invite == ["dr-chen", "dr-wu", "nurse-li"]
    fresh = m.with_links(change.record, [m.IssuedLink("dr-chen", "new", NOW + 10)])
    assert [(link.sub, link.jti) for link in fresh.links] == [("dr-chen", "new")]


def test_if_match_names_the_current_version() -> None:
    record = booked()
    assert m.etag(record) == '"mdt-7.1"'
    for header in (None, '"mdt-7.1"', 'W/"mdt-7.1"', '"other", "mdt-7.1"', "*"):
        m.check_if_match(header, record)
    with pytest.raises(PreconditionFailed):
        m.check_if_match('"mdt-7.0"', record)


def test_a_link_lives_until_two_hours_after_the_end_and_at_least_five_minutes() -> None:
    record = booked()
    ends = datetime(2030, 3, 5, 7, 30, tzinfo=UTC).timestamp()
    assert m.link_ttl_s(record, NOW) == int(ends + 2 * 3600 - NOW)
    assert m.link_ttl_s(record, ends + 3 * 3600) == m.MIN_LINK_TTL_S


def test_the_room_carries_the_title_departments_and_a_grant_per_invitee() -> None:
    fields = m.room_fields(booked(lobby=False))
    assert fields["title"] == "Thoracic tumour board"
    assert fields["departments"] == ["oncology", "radiology"]
    assert fields["grants"] == ["sub:dr-chen", "sub:dr-wu", "sub:nurse-li"]
    assert fields["lobby"] is False
    assert fields["cases"] == [{"case_id": "EP-2041", "label": "Case 1: lung nodule"}]
    assert fields["starts_at"] == datetime(2030, 3, 5, 6, 0, tzinfo=UTC).timestamp()


def test_listing_filters_sorts_by_start_and_says_when_it_cut() -> None:
    def at(hour: int, meeting_id: str) -> m.MeetingRecord:
        start = datetime(2030, 3, 5, hour, tzinfo=UTC)
        req = request(starts_at=start, ends_at=start + timedelta(hours=1))
        return m.new_record(meeting_id, m.checked(req, NOW), scheduled_by="his", now=NOW)

    records = [at(12, "c"), at(8, "a"), at(10, "b")]
    records[2] = m.cancelled(records[2], NOW).record
    everything, cut = m.matching(records, m.MeetingQuery())
    assert [r.meeting_id for r in everything] == ["a", "b", "c"] and not cut
    window = m.MeetingQuery(
        starts_after=datetime(2030, 3, 5, 9, tzinfo=UTC),
        starts_before=datetime(2030, 3, 5, 12, tzinfo=UTC),
    )
    assert [r.meeting_id for r in m.matching(records, window)[0]] == ["b"]
    scheduled = m.matching(records, m.MeetingQuery(status="scheduled"))[0]
    assert [r.meeting_id for r in scheduled] == ["a", "c"]
    first, cut = m.matching(records, m.MeetingQuery(limit=1))
    assert [r.meeting_id for r in first] == ["a"] and cut


def test_the_stored_record_survives_a_round_trip_and_ignores_newer_fields() -> None:
    record = booked()
    data = msgspec.json.encode(record)
    assert msgspec.json.decode(data, type=m.MeetingRecord) == record
    newer = msgspec.json.encode({**msgspec.to_builtins(record), "reminder_sent": True})
    assert msgspec.json.decode(newer, type=m.MeetingRecord) == record


def test_a_meeting_expires_its_retention_after_its_end_or_its_cancellation() -> None:
    record = booked()
    ends = datetime(2030, 3, 5, 7, 30, tzinfo=UTC).timestamp()
    day = 86_400.0
    assert not m.expired(record, ends + day - 1, day)
    assert m.expired(record, ends + day, day)
    # Cancelled long before it was due: counted from the cancellation.
    cancelled = m.cancelled(record, NOW - 10 * day).record
    assert m.expired(cancelled, NOW - 9 * day, day)
