"""Meetings end, against running nodes: a chair ends one for everyone, a scheduled meeting ends
once it is over, and the HIS hears `meeting.ended` once (a real receiver; two nodes on one real
Redis)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from signaling import ending
from signaling import meeting_end as me
from signaling.audit import iter_entries
from signaling.devidp import DEV_AUDIENCE, DEV_ISSUER
from tests.fixtures.servers import (
    RunningNode,
    close_code,
    eventually,
    next_message,
    node_settings,
    running_node,
)
from tests.test_meetings_api import MEETINGS, _call, _join, booking
from tests.test_webhooks import SECRET, docs_recipe, receiver, subscription


def _ending_soon(seconds: float) -> dict[str, Any]:
    """A booking that started ten minutes ago and ends `seconds` from now."""
    now = datetime.now(UTC).replace(microsecond=0)
    return booking(
        starts_at=(now - timedelta(minutes=10)).isoformat(),
        ends_at=(now + timedelta(seconds=seconds)).isoformat(),
        lobby=False,
    )


async def _book(node: RunningNode, body: dict[str, Any]) -> tuple[str, dict[str, str]]:
    created = await (await _call(node, "POST", MEETINGS, json=body)).json()
    return created["meeting_id"], {i["sub"]: i["token"] for i in created["invitations"]}


def _closed_rooms(node: RunningNode) -> list[Any]:
    return list(iter_entries(node.data_dir / "audit", action="room_closed"))


async def test_the_chair_ends_the_meeting_for_everyone_in_the_room_and_the_lobby(
    tmp_path: Path,
) -> None:
    verify_webhook = docs_recipe()
    async with receiver() as his:
        hooks = subscription(tmp_path, his.url, "meeting.ended", "participant.left")
        settings = node_settings(tmp_path / "data", media=False, webhooks=hooks)
        async with running_node(settings) as node:
            chair, joined = await node.join("dr-chair", "chair")
            assert joined["type"] == "joined"
            heart, _ = await node.join("dr-heart", "specialist")
            await chair.send_json({"type": "update_room", "lobby": True})
            await next_message(chair, "room_updated")
            nurse, waiting = await node.join("nurse-li", "nurse")
            assert waiting["type"] == "lobby"
            # Someone without the permission cannot end it for the others.
            await heart.send_json({"type": "end_meeting"})
            refused = await next_message(heart, "error")
            assert refused["code"] == "not_allowed" and refused["request"] == "end_meeting"

            await chair.send_json({"type": "end_meeting"})
            for ws in (heart, nurse, chair):
                assert await close_code(ws) == 4411
            assert heart.close_code in (4411, 1006)
            await eventually(
                lambda: any(e["type"] == "meeting.ended" for e in his.events()), timeout=10
            )
            # Ending it again (a second click that raced the close) does nothing more.
            assert not await ending.end_meeting(
                node.node.store, node.node.audit, "mdt-1", me.ENDED_BY_CHAIR,  # type: ignore[union-attr]
                by="dr-chair", now=time.time(),
            )  # fmt: skip
            await asyncio.sleep(1.0)  # a second meeting.ended would be here by now
            # The room is gone: someone arriving finds it not open, as for any new room.
            assert await node.node.store.get_room("mdt-1") is None  # type: ignore[union-attr]
    ended = [e for e in his.events() if e["type"] == "meeting.ended"]
    assert len(ended) == 1
    assert ended[0]["data"] == {"sub": "dr-chair", "reason": "ended_by_chair"}
    left = {
        e["data"]["sub"]: e["data"]["reason"]
        for e in his.events()
        if e["type"] == "participant.left"
    }
    assert left == {"dr-chair": "ended_by_chair", "dr-heart": "ended_by_chair"}
    assert all(verify_webhook(SECRET, h, b) for h, b in his.deliveries)
    [closed] = _closed_rooms(node)
    assert closed.sub == "dr-chair" and closed.reason == "ended_by_chair"


async def test_a_meeting_the_chair_ended_admits_no_one_and_says_so(dev_node: RunningNode) -> None:
    room, links = await _book(dev_node, booking(lobby=False))
    chair, joined = await _join(dev_node, links["dr-chen"], room)
    assert joined["type"] == "joined"
    wu, _ = await _join(dev_node, links["dr-wu"], room)
    await chair.send_json({"type": "end_meeting"})
    assert await close_code(wu) == 4411
    assert await close_code(chair) == 4411
    read = await _call(dev_node, "GET", f"{MEETINGS}/{room}")
    meeting = await read.json()
    assert meeting["status"] == "ended" and meeting["ended_reason"] == "ended_by_chair"
    assert abs(datetime.fromisoformat(meeting["ended_at"]).timestamp() - time.time()) < 60
    # The links no longer open the room, the chair's included: a clear refusal, not a lobby.
    for sub in ("dr-wu", "dr-chen"):
        _, answer = await _join(dev_node, links[sub], room)
        assert answer == {"type": "closed", "code": 4411}
    http = await dev_node.session()
    async with http.get(
        f"{dev_node.url}/api/rooms/{room}/admission",
        headers={"Authorization": f"Bearer {links['dr-wu']}"},
    ) as response:
        assert response.status == 410
        assert (await response.json())["error"] == "meeting_ended"
    # The HIS can no longer change or cancel it.
    assert (await _call(dev_node, "PUT", f"{MEETINGS}/{room}", json=booking())).status == 409
    assert (await _call(dev_node, "POST", f"{MEETINGS}/{room}/cancel")).status == 409
    listed = await _call(dev_node, "GET", MEETINGS, params={"status": "ended"})
    assert [m["meeting_id"] for m in (await listed.json())["meetings"]] == [room]


async def test_a_scheduled_meeting_stays_open_while_empty_before_its_end_and_ends_after_it(
    tmp_path: Path,
) -> None:
    settings = node_settings(tmp_path / "data", media=False, meeting_end_grace_min=0)
    async with running_node(settings) as node:
        assert node.node is not None
        room, links = await _book(node, _ending_soon(4))
        chair, joined = await _join(node, links["dr-chen"], room)
        assert joined["type"] == "joined"
        await chair.close()  # the chair steps out before the end...
        await asyncio.sleep(0.5)
        meeting = await (await _call(node, "GET", f"{MEETINGS}/{room}")).json()
        assert meeting["status"] == "scheduled"
        chair, joined = await _join(node, links["dr-chen"], room)  # ...and comes back
        assert joined["type"] == "joined"
        await asyncio.sleep(4.5)  # the meeting overruns its end: it goes on
        assert (await (await _call(node, "GET", f"{MEETINGS}/{room}")).json())["status"] == (
            "scheduled"
        )
        await chair.close()  # the last person leaves after the end (no grace period)

        async def ended() -> bool:
            answer = await (await _call(node, "GET", f"{MEETINGS}/{room}")).json()
            return bool(answer["status"] == "ended")

        await eventually(ended, timeout=5)
        meeting = await (await _call(node, "GET", f"{MEETINGS}/{room}")).json()
        assert meeting["status"] == "ended" and meeting["ended_reason"] == "scheduled_end"
        _, answer = await _join(node, links["dr-wu"], room)
        assert answer == {"type": "closed", "code": 4411}
    [closed] = _closed_rooms(node)
    assert closed.reason == "scheduled_end" and closed.sub is None


async def test_the_sweep_ends_a_meeting_empty_for_the_grace_period_after_its_end(
    dev_node: RunningNode,
) -> None:
    node = dev_node.node
    assert node is not None
    room, links = await _book(dev_node, _ending_soon(60))
    busy, busy_links = await _book(dev_node, _ending_soon(60))
    chair, joined = await _join(dev_node, busy_links["dr-chen"], busy)
    assert joined["type"] == "joined"
    ends = time.time() + 60
    empty = me.EmptyRooms()
    grace = node.settings.meeting_end_grace_min * 60
    sweep = dict(grace_s=grace)
    # Before the end nothing is watched; at the end the empty room's grace period starts.
    assert (
        await ending.end_meetings_over(node.store, node.audit, empty, now=ends - 30, **sweep) == []
    )
    assert (
        await ending.end_meetings_over(node.store, node.audit, empty, now=ends + 1, **sweep) == []
    )
    assert await ending.end_meetings_over(
        node.store, node.audit, empty, now=ends + 1 + grace, **sweep
    ) == [room]  # fmt: skip
    # The meeting in use past its end goes on.
    assert (await node.store.meetings.get(busy)).status == "scheduled"  # type: ignore[union-attr]
    assert (await node.store.meetings.get(room)).status == "ended"  # type: ignore[union-attr]
    await chair.send_json({"type": "ping"})
    assert (await next_message(chair))["type"] == "pong"
    assert links  # the ended meeting's links: refused, as the test above shows


async def test_two_nodes_end_a_meeting_once_and_close_everyone_on_both(
    redis_url: str, tmp_path: Path
) -> None:
    async with receiver() as his:
        hooks = subscription(tmp_path, his.url, "meeting.ended")
        a_settings = node_settings(
            tmp_path / "a", media=False, redis=redis_url, webhooks=hooks, meeting_end_grace_min=0
        )
        async with running_node(a_settings) as a:
            trusting_a = {"jwks": str(a.idp.jwks_path), "jwt_issuer": DEV_ISSUER,
                          "jwt_audience": DEV_AUDIENCE}  # fmt: skip
            b_settings = node_settings(
                tmp_path / "b", media=False, redis=redis_url, webhooks=hooks,
                meeting_end_grace_min=0, **trusting_a,
            )  # fmt: skip
            async with running_node(b_settings) as b:
                b.idp = a.idp
                assert a.node is not None and b.node is not None
                # The chair on node A ends the meeting; the radiologist on node B is closed too.
                room, links = await _book(a, booking(lobby=False))
                chair, joined = await _join(a, links["dr-chen"], room)
                assert joined["type"] == "joined"
                wu, joined = await _join(b, links["dr-wu"], room)
                assert joined["type"] == "joined"
                await chair.send_json({"type": "end_meeting"})
                assert await close_code(wu) == 4411
                _, answer = await _join(b, links["nurse-li"], room)
                assert answer == {"type": "closed", "code": 4411}

                # A meeting over while both nodes sweep at the same moment: ended once.
                over, _ = await _book(a, _ending_soon(30))
                now = time.time() + 31
                won = await asyncio.gather(*(
                    ending.end_meetings_over(n.store, n.audit, me.EmptyRooms(), grace_s=0, now=now)
                    for n in (a.node, b.node)
                ))  # fmt: skip
                assert sorted(won, key=len) == [[], [over]]
                await eventually(lambda: len(his.deliveries) >= 2, timeout=10)
                await asyncio.sleep(1.0)  # a duplicate from the other node would be here by now
    ended = [(e["room"], e["data"].get("reason")) for e in his.events()]
    assert sorted(ended) == sorted([(room, "ended_by_chair"), (over, "scheduled_end")])


async def test_each_nodes_sweep_ends_a_meeting_nobody_came_to_once(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node task itself (`http.tasks.sweep_meeting_ends`), on two nodes sweeping often."""
    monkeypatch.setattr(me, "SWEEP_S", 0.2)
    async with receiver() as his:
        hooks = subscription(tmp_path, his.url, "meeting.ended")
        common = {"media": False, "redis": redis_url, "webhooks": hooks,
                  "meeting_end_grace_min": 0}  # fmt: skip
        async with running_node(node_settings(tmp_path / "a", **common)) as a:
            trusting_a = {"jwks": str(a.idp.jwks_path), "jwt_issuer": DEV_ISSUER,
                          "jwt_audience": DEV_AUDIENCE}  # fmt: skip
            async with running_node(node_settings(tmp_path / "b", **common, **trusting_a)):
                room, _ = await _book(a, _ending_soon(2))

                async def ended() -> bool:
                    answer = await (await _call(a, "GET", f"{MEETINGS}/{room}")).json()
                    return bool(answer["status"] == "ended")

                await eventually(ended, timeout=10)
                await eventually(lambda: len(his.deliveries) >= 1, timeout=10)
                await asyncio.sleep(1.0)  # a second meeting.ended would be here by now
    assert [(e["room"], e["data"]) for e in his.events()] == [(room, {"reason": "scheduled_end"})]
