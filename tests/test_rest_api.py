"""The REST API's own rules: scheduling rooms, reading them, and the node's HTTP surface."""

from __future__ import annotations

from typing import Any

from signaling.audit import iter_entries
from tests.fixtures.servers import RunningNode


def _refusals(node: RunningNode, sub: str) -> list[dict[str, Any]]:
    return [
        {"reason": e.reason, "room": e.room, **e.fields}
        for e in iter_entries(node.data_dir / "audit", sub=sub, action="api_refused")
    ]


async def _schedule(node: RunningNode, token: str, body: dict[str, Any]) -> tuple[int, Any]:
    http = await node.session()
    r = await http.post(
        node.url + "/api/rooms", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    return r.status, await r.json()


async def test_chair_cannot_schedule_a_room_their_token_does_not_grant(
    dev_node: RunningNode,
) -> None:
    # The cardiology chair's token names mdt-1 only; the tumour board is not theirs to take.
    cardiology = dev_node.token("dr-heart", "chair", depts=["cardiology"], rooms=["mdt-1"])
    status, body = await _schedule(
        dev_node, cardiology, {"room_id": "tumour-board", "departments": ["cardiology"]}
    )
    assert status == 403 and "room_not_granted" in body["message"]
    refused = _refusals(dev_node, "dr-heart")
    assert refused and refused[-1]["reason"] == "room_not_granted"
    # The oncology chair, whose room it is, schedules it afterwards.
    oncology = dev_node.token("dr-onc", "chair", depts=["oncology"], rooms=["tumour-board"])
    status, _ = await _schedule(
        dev_node, oncology, {"room_id": "tumour-board", "departments": ["oncology"]}
    )
    assert status == 201


async def test_chair_cannot_schedule_another_departments_room(dev_node: RunningNode) -> None:
    cardiology = dev_node.token("dr-heart", "chair", depts=["cardiology"], rooms=["tumour-board"])
    # Granting oneself a way in does not help: the body's grants are for the guests.
    status, body = await _schedule(
        dev_node,
        cardiology,
        {"room_id": "tumour-board", "departments": ["oncology"], "grants": ["sub:dr-heart"]},
    )
    assert status == 403 and "department_not_permitted" in body["message"]
    # Nor with a server-made room id.
    status, _ = await _schedule(dev_node, cardiology, {"departments": ["oncology"]})
    assert status == 403
    status, made = await _schedule(dev_node, cardiology, {"departments": ["cardiology"]})
    assert status == 201 and made["departments"] == ["cardiology"]
    # A joint board that includes the scheduler's department is theirs to schedule.
    status, _ = await _schedule(
        dev_node, cardiology, {"room_id": "tumour-board", "departments": ["oncology", "cardiology"]}
    )
    assert status == 201


async def test_refused_room_read_is_audited(dev_node: RunningNode) -> None:
    oncology = dev_node.token("dr-onc", "chair", depts=["oncology"], rooms=["tumour-board"])
    status, _ = await _schedule(
        dev_node, oncology, {"room_id": "tumour-board", "departments": ["oncology"]}
    )
    assert status == 201
    http = await dev_node.session()
    stranger = dev_node.token("dr-heart", "specialist", rooms=["tumour-board"])
    r = await http.get(
        dev_node.url + "/api/rooms/tumour-board", headers={"Authorization": f"Bearer {stranger}"}
    )
    assert r.status == 403
    refused = _refusals(dev_node, "dr-heart")
    assert [e["reason"] for e in refused] == ["department_not_permitted"]
    assert refused[0]["room"] == "tumour-board"
