"""The scheduling API against a running node: the HIS books, changes and cancels meetings, and
the links it hands out open (and stop opening) the meeting's room."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp

from signaling.audit import iter_entries
from signaling.devidp import DEV_ISSUER
from signaling.http.routes.meetings import delete_expired_meetings
from tests.fixtures.servers import (
    RunningNode,
    close_code,
    next_message,
    node_settings,
    running_node,
)

MEETINGS = "/api/v1/meetings"


def _his(node: RunningNode) -> dict[str, str]:
    """The HIS's service-client token: the `scheduler` role, no second factor, no room."""
    return {"Authorization": f"Bearer {node.token('his-scheduler', 'scheduler', amr=[])}"}


def booking(**overrides: Any) -> dict[str, Any]:
    """Thursday's tumour board, given in China Standard Time as the HIS sends it."""
    starts = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    body: dict[str, Any] = {
        "title": "Thoracic tumour board",
        "starts_at": starts.astimezone(_CST).isoformat(),
        "ends_at": (starts + timedelta(hours=1)).astimezone(_CST).isoformat(),
        "departments": ["oncology", "radiology"],
        "cases": [
            {"case_id": "EP-2041", "label": "Case 1: lung nodule"},
            {"case_id": "EP-2042", "label": "Case 2: follow-up"},
        ],
        "participants": [
            {"sub": "dr-chen", "role": "chair", "name": "Dr Chen"},
            {"sub": "dr-wu", "role": "radiologist", "name": "Dr Wu"},
            {"sub": "nurse-li", "role": "nurse"},
        ],
    }
    body.update(overrides)
    return body


_CST = timezone(timedelta(hours=8))


async def _join(
    node: RunningNode, token: str, room: str
) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    """Open the room with a link's token: the socket and the first answer (or its close)."""
    ws = await node.connect()
    await ws.send_json({"type": "join", "token": token, "room": room})
    msg = await ws.receive(timeout=5.0)
    if msg.type is not aiohttp.WSMsgType.TEXT:
        return ws, {"type": "closed", "code": ws.close_code}
    return ws, dict(json.loads(msg.data))


async def _call(
    node: RunningNode, method: str, path: str, headers: dict[str, str] | None = None, **kw: Any
) -> aiohttp.ClientResponse:
    http = await node.session()
    response = await http.request(
        method, node.url + path, headers=_his(node) if headers is None else headers, **kw
    )
    await response.read()
    return response


async def test_his_books_a_meeting_and_each_invitee_joins_its_room_with_their_link(
    dev_node: RunningNode,
) -> None:
    r = await _call(dev_node, "POST", MEETINGS, json=booking())
    assert r.status == 201
    meeting = await r.json()
    room = meeting["meeting_id"]
    assert meeting["status"] == "scheduled" and meeting["version"] == 1
    assert r.headers["ETag"] == f'"{room}.1"'
    # Times answer in UTC whatever offset the HIS sent.
    assert meeting["starts_at"].endswith("Z")
    assert [c["case_id"] for c in meeting["cases"]] == ["EP-2041", "EP-2042"]
    links = {i["sub"]: i for i in meeting["invitations"]}
    assert set(links) == {"dr-chen", "dr-wu", "nurse-li"}
    assert (
        links["dr-wu"]["join_url"] == f"{dev_node.url}/join/{room}#token={links['dr-wu']['token']}"
    )
    # The room the meeting maps onto carries its title, departments and one grant per invitee.
    stored = await dev_node.node.store.get_room(room)
    assert stored is not None and stored.title == "Thoracic tumour board"
    assert stored.departments == ["oncology", "radiology"]
    assert sorted(stored.grants) == ["sub:dr-chen", "sub:dr-wu", "sub:nurse-li"]
    assert [c["case_id"] for c in stored.cases] == ["EP-2041", "EP-2042"]
    # The chair's link opens the room; the radiologist's joins it (lobby on: waits to be let in).
    _, joined = await _join(dev_node, links["dr-chen"]["token"], room)
    assert joined["type"] == "joined" and joined["room"]["title"] == "Thoracic tumour board"
    assert joined["room"]["cases"][0] == {"case_id": "EP-2041", "label": "Case 1: lung nodule"}
    _, waiting = await _join(dev_node, links["dr-wu"]["token"], room)
    assert waiting["type"] == "lobby"
    entries = list(iter_entries(dev_node.data_dir / "audit", action="meeting_scheduled"))
    assert entries and entries[-1].room == room and entries[-1].sub == "his-scheduler"
    assert entries[-1].fields["participants"] == ["dr-chen", "dr-wu", "nurse-li"]


async def test_a_retried_create_answers_the_first_meeting_instead_of_booking_two(
    dev_node: RunningNode,
) -> None:
    headers = {**_his(dev_node), "Idempotency-Key": "his-appt-77"}
    body = booking()
    first = await _call(dev_node, "POST", MEETINGS, headers, json=body)
    again = await _call(dev_node, "POST", MEETINGS, headers, json=body)
    assert (first.status, again.status) == (201, 200)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await again.json())["meeting_id"] == (await first.json())["meeting_id"]
    # The replay hands out no new token; the first ones stay valid.
    assert all(i["token"] is None for i in (await again.json())["invitations"])
    # The same key with another booking is a conflict, not a silent overwrite.
    other = await _call(dev_node, "POST", MEETINGS, headers, json=booking(title="Other board"))
    assert other.status == 409 and (await other.json())["error"] == "conflict"
    # The HIS's own appointment id works the same way, without the header.
    by_id = booking(external_id="HIS-APPT-9001")
    one = await _call(dev_node, "POST", MEETINGS, json=by_id)
    two = await _call(dev_node, "POST", MEETINGS, json=by_id)
    assert (one.status, two.status) == (201, 200)
    listed = await _call(dev_node, "GET", MEETINGS + "?external_id=HIS-APPT-9001")
    assert [x["meeting_id"] for x in (await listed.json())["meetings"]] == [
        (await one.json())["meeting_id"]
    ]
    assert await dev_node.node.store.meetings.count() == 2


async def test_a_change_based_on_an_old_version_is_refused(dev_node: RunningNode) -> None:
    created = await _call(dev_node, "POST", MEETINGS, json=booking())
    path = f"{MEETINGS}/{(await created.json())['meeting_id']}"
    old = created.headers["ETag"]
    moved = booking(title="Thoracic tumour board (moved)")
    first = await _call(dev_node, "PUT", path, {**_his(dev_node), "If-Match": old}, json=moved)
    assert first.status == 200 and first.headers["ETag"] != old
    stale = await _call(dev_node, "PUT", path, {**_his(dev_node), "If-Match": old}, json=booking())
    assert stale.status == 412 and (await stale.json())["error"] == "precondition_failed"
    read = await _call(dev_node, "GET", path)
    assert (await read.json())["title"] == "Thoracic tumour board (moved)"
    assert read.headers["ETag"] == first.headers["ETag"]


async def test_a_removed_invitee_loses_their_link_and_a_cancelled_meeting_closes_the_room(
    dev_node: RunningNode,
) -> None:
    created = await (await _call(dev_node, "POST", MEETINGS, json=booking())).json()
    room = created["meeting_id"]
    links = {i["sub"]: i["token"] for i in created["invitations"]}
    path = f"{MEETINGS}/{room}"
    # Nurse Li is taken off the list: her link stops working on every node.
    without_nurse = booking(participants=booking()["participants"][:2])
    changed = await _call(dev_node, "PUT", path, json=without_nurse)
    assert changed.status == 200
    assert all(i["token"] is None for i in (await changed.json())["invitations"])
    _, refused = await _join(dev_node, links["nurse-li"], room)
    assert refused == {"type": "closed", "code": 4401}
    # The chair is in the room when the HIS cancels: their link is revoked, the room locked.
    chair, joined = await _join(dev_node, links["dr-chen"], room)
    assert joined["type"] == "joined"
    cancelled = await _call(dev_node, "POST", path + "/cancel")
    assert cancelled.status == 200 and (await cancelled.json())["status"] == "cancelled"
    assert await close_code(chair, timeout=10) == 4401
    stored = await dev_node.node.store.get_room(room)
    assert stored is None or stored.locked
    # Cancelling again is harmless; changing a cancelled meeting is a conflict.
    again = await _call(dev_node, "POST", path + "/cancel")
    assert again.status == 200 and again.headers["ETag"] == cancelled.headers["ETag"]
    assert (await _call(dev_node, "PUT", path, json=booking())).status == 409


async def test_people_in_the_room_see_the_meeting_change(dev_node: RunningNode) -> None:
    created = await (await _call(dev_node, "POST", MEETINGS, json=booking())).json()
    room = created["meeting_id"]
    chair_token = next(i["token"] for i in created["invitations"] if i["sub"] == "dr-chen")
    chair, joined = await _join(dev_node, chair_token, room)
    assert joined["type"] == "joined"
    moved = booking(title="Thoracic board (case 2 added)", cases=[{"case_id": "EP-2050"}])
    assert (await _call(dev_node, "PUT", f"{MEETINGS}/{room}", json=moved)).status == 200
    update = await next_message(chair, "room_updated")
    assert update["room"]["title"] == "Thoracic board (case 2 added)"
    assert update["room"]["cases"] == [{"case_id": "EP-2050", "label": ""}]


async def test_reissued_links_replace_the_old_ones(dev_node: RunningNode) -> None:
    created = await (await _call(dev_node, "POST", MEETINGS, json=booking())).json()
    room = created["meeting_id"]
    old = {i["sub"]: i["token"] for i in created["invitations"]}
    issued = await _call(dev_node, "POST", f"{MEETINGS}/{room}/invitations")
    new = {i["sub"]: i["token"] for i in (await issued.json())["invitations"]}
    assert issued.status == 200 and set(new) == set(old) and new["dr-chen"] != old["dr-chen"]
    _, refused = await _join(dev_node, old["dr-chen"], room)
    assert refused == {"type": "closed", "code": 4401}
    _, joined = await _join(dev_node, new["dr-chen"], room)
    assert joined["type"] == "joined"


async def test_only_the_scheduler_role_may_use_the_api_and_refusals_are_audited(
    dev_node: RunningNode,
) -> None:
    chair = {"Authorization": f"Bearer {dev_node.token('dr-chen', 'chair', rooms=['x'])}"}
    r = await _call(dev_node, "POST", MEETINGS, chair, json=booking())
    assert r.status == 403 and (await r.json())["error"] == "not_allowed"
    r = await _call(dev_node, "GET", MEETINGS, {})
    assert r.status == 401
    refused = list(iter_entries(dev_node.data_dir / "audit", action="api_refused"))
    assert any(e.sub == "dr-chen" for e in refused)


async def test_bad_bookings_get_a_structured_400(dev_node: RunningNode) -> None:
    past = datetime.now(UTC) - timedelta(hours=3)
    cases = {
        "end before start": booking(ends_at=booking()["starts_at"]),
        "in the past": booking(
            starts_at=past.isoformat(), ends_at=(past + timedelta(hours=1)).isoformat()
        ),
        "no time zone": booking(starts_at="2030-01-01T09:00:00", ends_at="2030-01-01T10:00:00"),
        "unknown field": booking(patient_name="Zhang San"),
        "privileged role": booking(participants=[{"sub": "a", "role": "auditor"}]),
        "twice the same person": booking(
            participants=[{"sub": "a", "role": "chair"}, {"sub": "a", "role": "nurse"}]
        ),
        "a case label over 80 characters": booking(cases=[{"case_id": "c1", "label": "x" * 81}]),
    }
    for what, body in cases.items():
        r = await _call(dev_node, "POST", MEETINGS, json=body)
        answer = await r.json()
        assert r.status == 400, what
        assert answer["error"] == "bad_message" and answer["message"], what
    r = await _call(dev_node, "POST", MEETINGS, data=b"{not json", headers=_his(dev_node))
    assert r.status == 400
    assert await dev_node.node.store.meetings.count() == 0
    # The node still serves: a good booking goes through.
    assert (await _call(dev_node, "POST", MEETINGS, json=booking())).status == 201


async def test_list_filters_by_window_and_status(dev_node: RunningNode) -> None:
    soon = await (await _call(dev_node, "POST", MEETINGS, json=booking())).json()
    later_start = datetime.now(UTC) + timedelta(days=2)
    later = booking(
        starts_at=later_start.isoformat(), ends_at=(later_start + timedelta(hours=1)).isoformat()
    )
    await _call(dev_node, "POST", MEETINGS, json=later)
    window = (datetime.now(UTC) + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    r = await _call(dev_node, "GET", MEETINGS, params={"starts_before": window})
    assert [x["meeting_id"] for x in (await r.json())["meetings"]] == [soon["meeting_id"]]
    await _call(dev_node, "POST", f"{MEETINGS}/{soon['meeting_id']}/cancel")
    r = await _call(dev_node, "GET", MEETINGS, params={"status": "scheduled"})
    assert [x["title"] for x in (await r.json())["meetings"]] == ["Thoracic tumour board"]
    assert len((await r.json())["meetings"]) == 1
    r = await _call(dev_node, "GET", MEETINGS, params={"limit": "0"})
    assert r.status == 400


async def test_a_retry_that_lands_on_another_node_finds_the_meeting(
    redis_url: str, tmp_path: Path
) -> None:
    async with running_node(node_settings(tmp_path / "a", redis=redis_url)) as a:
        # Node B trusts node A's development IdP, as every node trusts the hospital's one IdP.
        settings_b = node_settings(
            tmp_path / "b", redis=redis_url, jwks=str(a.idp.jwks_path), jwt_issuer=DEV_ISSUER
        )
        async with running_node(settings_b) as b:
            headers = {**_his(a), "Idempotency-Key": "his-appt-88"}
            # The same request twice (two `booking()`s a second apart would differ in time).
            body = booking()
            first = await _call(a, "POST", MEETINGS, headers, json=body)
            again = await _call(b, "POST", MEETINGS, headers, json=body)
            assert (first.status, again.status) == (201, 200)
            meeting_id = (await first.json())["meeting_id"]
            read = await _call(b, "GET", f"{MEETINGS}/{meeting_id}", headers)
            assert read.status == 200 and read.headers["ETag"] == first.headers["ETag"]
            # Node B mints no token (no development IdP there): its links are the join page.
            assert (await read.json())["invitations"][0]["join_url"].endswith(f"/join/{meeting_id}")


async def test_meetings_past_their_retention_are_deleted_with_their_rooms(
    dev_node: RunningNode,
) -> None:
    node = dev_node.node
    assert node is not None
    created = await (await _call(dev_node, "POST", MEETINGS, json=booking())).json()
    room = created["meeting_id"]
    in_session = await (await _call(dev_node, "POST", MEETINGS, json=booking())).json()
    chair_token = next(i["token"] for i in in_session["invitations"] if i["sub"] == "dr-chen")
    _, joined = await _join(dev_node, chair_token, in_session["meeting_id"])
    assert joined["type"] == "joined"
    later = time.time() + (node.settings.meeting_retention_days + 1) * 86_400
    assert await delete_expired_meetings(node, later) == [room]
    assert await node.store.get_room(room) is None
    assert (await _call(dev_node, "GET", f"{MEETINGS}/{room}")).status == 404
    # The room in session stays until it empties.
    assert await node.store.meetings.get(in_session["meeting_id"]) is not None
    entries = list(iter_entries(dev_node.data_dir / "audit", action="meetings_deleted"))
    assert entries and entries[-1].fields["meetings"] == [room]
