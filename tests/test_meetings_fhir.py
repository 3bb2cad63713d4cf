"""Booking a meeting with an HL7 FHIR R4 Appointment: the mapping on its own, then the HIS
posting one to a running node."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest

from core.errors import BadMessage
from signaling import meetings as m
from signaling.fhir_appointment import meeting_body, parse_appointment
from tests.fixtures.servers import RunningNode

V3 = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"


def appointment(**overrides: Any) -> dict[str, Any]:
    """A tumour board as an HIS sends it in FHIR, an hour from now in China Standard Time."""
    cst = timezone(timedelta(hours=8))
    starts = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0).astimezone(cst)
    resource: dict[str, Any] = {
        "resourceType": "Appointment",
        "identifier": [{"system": "urn:oid:1.2.156.112604.1.2", "value": "APPT-2030-0042"}],
        "status": "booked",
        "description": "Thoracic tumour board",
        "specialty": [
            {"text": "oncology"},
            {"coding": [{"system": "urn:hospital:depts", "code": "radiology"}]},
        ],
        "start": starts.isoformat(),
        "end": (starts + timedelta(minutes=90)).isoformat(),
        "reasonReference": [{"reference": "Condition/EP-2041", "display": "Case 1: lung nodule"}],
        "participant": [
            {
                "actor": {"reference": "Practitioner/dr-chen", "display": "Dr Chen"},
                "type": [{"coding": [{"system": V3, "code": "PPRF"}]}],
                "status": "accepted",
            },
            {
                "actor": {"reference": "Practitioner/dr-wu", "display": "Dr Wu"},
                "type": [{"text": "radiologist"}],
                "status": "accepted",
            },
            {"actor": {"reference": "Practitioner/dr-sun"}, "status": "declined"},
            {"actor": {"reference": "Patient/MRN-889", "display": "x"}, "status": "accepted"},
        ],
    }
    resource.update(overrides)
    return resource


def test_an_appointment_maps_onto_a_booking_the_api_accepts() -> None:
    body = meeting_body(parse_appointment(appointment()))
    booking = msgspec.convert(body, m.MeetingRequest)
    assert booking.title == "Thoracic tumour board"
    assert booking.external_id == "APPT-2030-0042"
    assert booking.departments == ["oncology", "radiology"]
    assert booking.cases == [m.Case("EP-2041", "Case 1: lung nodule")]
    # The declined practitioner is not invited; the patient is the case, never an invitee.
    assert booking.participants == [
        m.Invitee("dr-chen", "chair", "Dr Chen"),
        m.Invitee("dr-wu", "radiologist", "Dr Wu"),
    ]
    assert (booking.ends_at - booking.starts_at) == timedelta(minutes=90)


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"status": "cancelled"}, "books nothing"),
        ({"description": None}, "description"),
        ({"participant": None}, "participant"),
        ({"resourceType": "Encounter"}, "FHIR Appointment"),
        ({"start": "not a time"}, "invalid FHIR Appointment"),
    ],
)
def test_an_appointment_that_cannot_be_a_meeting_is_refused_with_the_reason(
    overrides: dict[str, Any], says: str
) -> None:
    resource = {k: v for k, v in appointment(**overrides).items() if v is not None}
    with pytest.raises(BadMessage, match=says):
        meeting_body(parse_appointment(resource))


async def test_the_his_books_in_fhir_once_however_often_it_retries(dev_node: RunningNode) -> None:
    token = dev_node.token("his-scheduler", "scheduler", amr=[])
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    http = await dev_node.session()
    url = dev_node.url + "/api/v1/fhir/Appointment"
    body = msgspec.json.encode(appointment())
    async with http.post(url, data=body, headers=headers) as first:
        assert first.status == 201
        meeting = await first.json()
    async with http.post(url, data=body, headers=headers) as again:
        assert again.status == 200 and (await again.json())["meeting_id"] == meeting["meeting_id"]
    chair = next(i for i in meeting["invitations"] if i["sub"] == "dr-chen")
    assert chair["role"] == "chair" and chair["token"]
    ws = await dev_node.connect()
    await ws.send_json({"type": "join", "token": chair["token"], "room": meeting["meeting_id"]})
    joined = await ws.receive_json(timeout=5)
    assert joined["type"] == "joined" and joined["room"]["title"] == "Thoracic tumour board"
    async with http.post(url, data=b'{"resourceType": "Appointment"}', headers=headers) as bad:
        assert bad.status == 400 and (await bad.json())["error"] == "bad_message"
