"""The hospital's systems together on one node, each the real counterpart or the real protocol:
the HIS books a tumour board through the scheduling API naming people by directory id, the IdP
provisions them and their departments over SCIM, they sign in at the OpenID provider (panva's
oidc-provider, Keycloak-shaped claims) with no link, and a leaver deactivated over SCIM is cut off
from the meeting at once and cannot sign back in to it."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from tests.fixtures.oidc_provider import OidcProvider, browser_session, sign_in_at_provider
from tests.fixtures.scim import scim_token_file
from tests.fixtures.servers import (
    RunningNode,
    free_port,
    next_message,
    node_settings,
    running_node,
)
from tests.test_scim_live import GROUP, provision, scim, set_active

StartProvider = Any


def tumour_board() -> dict[str, Any]:
    """The HIS's booking: Dr Osei (`bob` in the directory) and the chair (`alice`), no lobby."""
    starts = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5)
    return {
        "title": "Thoracic tumour board",
        "starts_at": starts.isoformat(),
        "ends_at": (starts + timedelta(hours=1)).isoformat(),
        "departments": ["oncology"],
        "lobby": False,
        "cases": [{"case_id": "EP-2041", "label": "Case 1"}],
        "participants": [{"sub": "alice", "role": "chair"}, {"sub": "bob", "role": "specialist"}],
    }


async def join_signed_in(
    node: RunningNode, s: aiohttp.ClientSession, room: str
) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    """Join with no token: the session cookie on the upgrade stands in for it."""
    ws = await s.ws_connect(node.ws_url)
    node.sockets.append(ws)
    await ws.send_json({"type": "join", "token": "", "room": room})
    msg = await ws.receive(timeout=5.0)
    if msg.type is not aiohttp.WSMsgType.TEXT:
        return ws, {"type": "closed", "code": ws.close_code}
    return ws, dict(json.loads(msg.data))


async def closed_within(ws: aiohttp.ClientWebSocketResponse, timeout_s: float) -> int | None:
    """The close code the node sends within `timeout_s` (other messages skipped)."""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = await ws.receive(timeout=left)
        except TimeoutError:
            return None
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            return ws.close_code
    return None


async def test_a_booked_meeting_signed_in_to_without_a_link_and_a_leaver_cut_off(
    tmp_path: Path, oidc_provider: StartProvider
) -> None:
    port = free_port()
    provider: OidcProvider = oidc_provider("keycloak", [f"http://127.0.0.1:{port}/auth/callback"])
    settings = node_settings(
        tmp_path / "data",
        port=port,
        media=False,
        scim_token_file=str(scim_token_file(tmp_path / "secrets")),
        **provider.node_settings(),
    )
    async with running_node(settings) as node:
        # The IdP provisions both people and the oncology department.
        bob = await provision(node, "bob", displayName="Dr Bob Osei")
        alice = await provision(node, "alice", displayName="Dr Alice Chen")
        members = [{"value": bob}, {"value": alice}]
        status, _, _ = await scim(node, "POST", "/Groups",
                                  {"schemas": [GROUP], "displayName": "oncology",
                                   "members": members})  # fmt: skip
        assert status == 201

        # The HIS books the tumour board for them by directory id.
        his = {"Authorization": f"Bearer {node.token('his-scheduler', 'scheduler', amr=[])}"}
        http = await node.session()
        async with http.post(node.url + "/api/v1/meetings", json=tumour_board(), headers=his) as r:
            assert r.status == 201, await r.text()
            room = (await r.json())["meeting_id"]

        # Both sign in at the hospital's provider with no link and are in the room.
        async with browser_session() as chair, browser_session() as specialist:
            await sign_in_at_provider(chair, f"{node.url}/auth/signin?return=/join/{room}", "alice")
            chair_ws, opened = await join_signed_in(node, chair, room)
            assert opened["type"] == "joined", opened
            assert opened["room"]["title"] == "Thoracic tumour board"
            await sign_in_at_provider(
                specialist, f"{node.url}/auth/signin?return=/join/{room}", "bob"
            )
            ws, joined = await join_signed_in(node, specialist, room)
            assert joined["type"] == "joined", joined

            # Dr Osei leaves the hospital: deactivated over SCIM, cut off at once.
            left_at = time.monotonic()
            await set_active(node, bob, False)
            code = await closed_within(ws, 2.0)
            cut_off_s = time.monotonic() - left_at
            print(
                f"\nSCIM deactivation to the leaver's connection closed: {cut_off_s * 1000:.0f} ms"
            )
            assert code == 4401, code
            # His browser's session no longer opens the meeting, nor does signing in again.
            _, again = await join_signed_in(node, specialist, room)
            assert again == {"type": "closed", "code": 4401}, again
            await sign_in_at_provider(
                specialist, f"{node.url}/auth/signin?return=/join/{room}", "bob"
            )
            _, again = await join_signed_in(node, specialist, room)
            assert again == {"type": "closed", "code": 4401}, again
            # The chair's meeting goes on: told the specialist left, still connected.
            told = await next_message(chair_ws, "participant_left")
            assert told is not None and not chair_ws.closed
