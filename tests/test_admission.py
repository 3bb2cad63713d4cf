"""Refusals that say what to fix: the join and its preflight give the same reason code.

A page asks `GET /api/rooms/{room}/admission` before it opens any device; the WebSocket join
closes with `not allowed to join this room: <code>`. Both carry only the `Refusal` code (the
client words it), never the policy's detail, which stays in the audit log.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from signaling.audit import iter_entries
from signaling.policy import Refusal
from signaling.protocol import JOIN_REFUSED
from tests.fixtures.servers import RunningNode

# (who, their token's claims, the refusal), in a room scheduled for cardiology.
REFUSED: dict[str, tuple[str, dict[str, Any], Refusal]] = {
    "no second factor": ("chair", {"amr": ["pwd"]}, Refusal.MFA_REQUIRED),
    "a link for another room": ("specialist", {"rooms": ["other-room"]}, Refusal.ROOM_NOT_GRANTED),
    "another department": (
        "specialist",
        {"depts": ["oncology"]},
        Refusal.DEPARTMENT_NOT_PERMITTED,
    ),
    "an archivist": ("archivist", {}, Refusal.SEPARATION_OF_DUTIES),
}


async def _admission(node: RunningNode, token: str, room: str = "mdt-1") -> tuple[int, Any]:
    session = await node.session()
    async with session.get(
        f"{node.url}/api/rooms/{room}/admission", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        return response.status, await response.json()


async def _join_close(node: RunningNode, token: str) -> tuple[int, str]:
    ws = await node.connect()
    await ws.send_json({"type": "join", "token": token, "room": "mdt-1"})
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE, msg
    return int(msg.data), str(msg.extra)


@pytest.mark.parametrize("case", list(REFUSED))
async def test_each_refusal_names_its_cause_before_and_at_the_join(
    dev_node: RunningNode, case: str
) -> None:
    await dev_node.join("dr-chair", "chair")  # opens mdt-1 for cardiology
    role, claims, refusal = REFUSED[case]
    token = dev_node.token(f"u-{role}", role, **claims)

    status, body = await _admission(dev_node, token)
    assert status == 403
    assert body == {"error": "not_allowed", "message": JOIN_REFUSED, "reason": refusal.value}

    assert await _join_close(dev_node, token) == (4403, f"{JOIN_REFUSED}: {refusal.value}")


async def test_the_policy_detail_stays_in_the_audit_log(dev_node: RunningNode) -> None:
    token = dev_node.token("u-arch", "archivist")
    status, body = await _admission(dev_node, token)
    assert status == 403 and "never joins" not in str(body)
    assert node_audit_reasons(dev_node, "u-arch") == [
        "separation_of_duties: archivist never joins a live room"
    ]


def node_audit_reasons(node: RunningNode, sub: str) -> list[str | None]:
    """The reasons of the audited API refusals of `sub`."""
    return [e.reason for e in iter_entries(node.data_dir / "audit", sub=sub, action="api_refused")]


async def test_a_token_that_may_join_is_admitted_whether_or_not_the_room_exists(
    dev_node: RunningNode,
) -> None:
    chair = dev_node.token("dr-chair", "chair")
    assert await _admission(dev_node, chair) == (200, {"allowed": True})  # not scheduled yet
    await dev_node.join("dr-chair", "chair")
    specialist = dev_node.token("dr-ana", "specialist")
    assert await _admission(dev_node, specialist) == (200, {"allowed": True})


async def test_an_expired_or_revoked_token_is_refused_with_its_reason(
    dev_node: RunningNode,
) -> None:
    expired = dev_node.token("dr-late", "chair", ttl_s=-120)
    status, body = await _admission(dev_node, expired)
    assert status == 401 and body["error"] == "not_authenticated" and body["reason"] == "expired"
