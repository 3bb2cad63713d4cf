"""The REST API's own rules: scheduling rooms, reading them, and the node's HTTP surface."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from signaling.audit import iter_entries
from tests.fixtures.servers import RunningNode, node_settings, running_node


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
    assert status == 403 and body["reason"] == "room_not_granted"
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
    assert status == 403 and body["reason"] == "department_not_permitted"
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


async def test_metrics_through_a_proxy_on_the_same_host_need_the_token(tmp_path: Path) -> None:
    settings = node_settings(tmp_path / "d", metrics_token="s3cret-metrics", media=False)
    async with running_node(settings) as node:
        http = await node.session()
        assert (await http.get(node.url + "/metrics")).status == 200  # a direct local client
        proxied = {"X-Forwarded-For": "203.0.113.9"}
        assert (await http.get(node.url + "/metrics", headers=proxied)).status == 403
        r = await http.get(node.url + "/metrics", headers={"Forwarded": "for=203.0.113.9"})
        assert r.status == 403
        with_token = {**proxied, "Authorization": "Bearer s3cret-metrics"}
        assert (await http.get(node.url + "/metrics", headers=with_token)).status == 200


async def test_a_node_is_drained_from_its_own_host_only(tmp_path: Path) -> None:
    settings = node_settings(tmp_path / "d", media=False)
    async with running_node(settings) as node:
        http = await node.session()
        proxied = {"X-Forwarded-For": "203.0.113.9"}
        r = await http.post(node.url + "/api/node/drain", headers=proxied)
        assert r.status == 403
        assert (await r.json())["error"] == "not_allowed"
        assert not node.node.rooms.draining
        assert (await http.get(node.url + "/readyz")).status == 200


async def test_hsts_is_sent_when_the_node_is_reached_over_https(tmp_path: Path) -> None:
    settings = node_settings(tmp_path / "d", public_url="https://mdt.hospital.example", media=False)
    async with running_node(settings) as node:
        http = await node.session()
        for path in ("/", "/api/info", "/api/nothing-here"):
            r = await http.get(node.url + path)
            assert r.headers["Strict-Transport-Security"] == "max-age=31536000", path


async def test_no_hsts_over_plain_http(dev_node: RunningNode) -> None:
    http = await dev_node.session()
    r = await http.get(dev_node.url + "/api/info")
    assert "Strict-Transport-Security" not in r.headers
    assert r.headers["X-Content-Type-Options"] == "nosniff"
