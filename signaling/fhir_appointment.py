"""An HL7 FHIR R4 `Appointment` as a meeting booking: the HIS may book in FHIR instead of the
scheduling API's own body.

The resource is validated by `fhir.resources` (its R4B models: the Appointment resource is the
same in R4 and R4B), then mapped onto the body of `POST /api/v1/meetings`, which the API then
checks exactly as if the HIS had sent it (`signaling.meetings.MeetingRequest`):

- `identifier[0].value` -> `external_id` (a retried POST of the same appointment books once);
- `description` -> `title` (required: the room shows it);
- `start`, `end` -> `starts_at`, `ends_at` (FHIR instants carry their offset);
- `specialty[]` (its `text`, else its first coding's `code`) -> `departments`;
- `reasonReference[]` -> `cases`: the referenced id (`Condition/EP-2041` -> `EP-2041`) and its
  `display` as the label, so the display must be non-identifying like any case label;
- each `participant` whose actor is a `Practitioner/<id>` (or `PractitionerRole/<id>`) ->
  an invitee with `sub` `<id>` (the directory id), `name` the actor's `display` and the role
  from its `type` (see `ROLE_OF_TYPE`); a participant that `declined` is not invited, and the
  patient (`Patient/...`) is the case, not an invitee.

Only a booking is taken: `status` `proposed`, `pending` or `booked`. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.appointment import Appointment
from pydantic import ValidationError

from core.errors import BadMessage
from signaling.meetings import InviteeRole

BOOKING_STATUSES = frozenset({"proposed", "pending", "booked"})
"""Appointment statuses that book a meeting (a `cancelled` one is cancelled with the API)."""

INVITED_ACTORS = ("Practitioner/", "PractitionerRole/")
"""Actor reference types that name a person in the hospital directory."""

ROLE_OF_TYPE: dict[str, InviteeRole] = {
    # HL7 v3 ParticipationType codes a HIS commonly sends.
    "PPRF": "chair",  # primary performer: leads the board
    "CON": "specialist",  # consultant
    "SPRF": "specialist",  # secondary performer
    "ATND": "specialist",  # attender
    "PART": "specialist",  # participant
    # Consilium's own role names, as a code or a text.
    "chair": "chair",
    "specialist": "specialist",
    "radiologist": "radiologist",
    "nurse": "nurse",
    "trainee": "trainee",
}
"""Participant `type` code or text -> the role of the invitee; anything else: specialist."""

DEFAULT_ROLE: InviteeRole = "specialist"


def parse_appointment(data: dict[str, Any]) -> Appointment:
    """The resource, validated against FHIR; `BadMessage` naming the first problems."""
    if data.get("resourceType") != "Appointment":
        raise BadMessage("the body must be a FHIR Appointment (resourceType 'Appointment')")
    try:
        return Appointment.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
            for error in exc.errors()[:3]
        )
        raise BadMessage(f"invalid FHIR Appointment: {problems}") from None


def _concept_text(concept: Any) -> str | None:
    if concept.text:
        return str(concept.text)
    for coding in concept.coding or ():
        if coding.code:
            return str(coding.code)
    return None


def _role(participant: Any) -> InviteeRole:
    for concept in participant.type or ():
        for key in (concept.text, *(c.code for c in concept.coding or ())):
            if key and (key in ROLE_OF_TYPE or key.lower() in ROLE_OF_TYPE):
                return ROLE_OF_TYPE.get(key) or ROLE_OF_TYPE[key.lower()]
    return DEFAULT_ROLE


def _invitee(participant: Any) -> dict[str, Any] | None:
    actor = participant.actor
    if actor is None or not actor.reference or participant.status == "declined":
        return None
    for prefix in INVITED_ACTORS:
        if actor.reference.startswith(prefix):
            invitee = {"sub": actor.reference.removeprefix(prefix), "role": _role(participant)}
            if actor.display:
                invitee["name"] = actor.display
            return invitee
    return None


def _case(reference: Any) -> dict[str, Any] | None:
    if not reference.reference:
        return None
    case: dict[str, Any] = {"case_id": reference.reference.rsplit("/", 1)[-1]}
    if reference.display:
        case["label"] = reference.display
    return case


def meeting_body(appointment: Appointment) -> dict[str, Any]:
    """The scheduling API's body for the appointment (checked afterwards as any body is);
    `BadMessage` when the appointment cannot be a meeting."""
    if appointment.status not in BOOKING_STATUSES:
        raise BadMessage(
            f"an Appointment with status {appointment.status!r} books nothing; "
            "send proposed, pending or booked (cancel with POST .../cancel)"
        )
    if not appointment.description:
        raise BadMessage("the Appointment needs a description: the meeting's title")
    if appointment.start is None or appointment.end is None:
        raise BadMessage("the Appointment needs its start and end")
    body: dict[str, Any] = {
        "title": appointment.description,
        "starts_at": appointment.start.isoformat(),
        "ends_at": appointment.end.isoformat(),
        "departments": [
            text for text in (_concept_text(c) for c in appointment.specialty or ()) if text
        ],
        "cases": [c for c in (_case(r) for r in appointment.reasonReference or ()) if c],
        "participants": [p for p in (_invitee(x) for x in appointment.participant) if p],
    }
    identifiers = [i.value for i in appointment.identifier or () if i.value]
    if identifiers:
        body["external_id"] = identifiers[0]
    return body
