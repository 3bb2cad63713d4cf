"""Someone who joins while another participant's media is reconnecting (an ICE restart under
way) sees that tile as reconnecting, in a real browser (Chromium), and back to normal when the
restart is over: the SFU tells the newcomer after its first publish offer, so after its
`joined` roster. The participant restarting is an aiortc peer over the WebSocket whose new ICE
generation never answers (a network that went away): the SFU gives it up after its timeout and
keeps the old path."""

from __future__ import annotations

from typing import Any

import aiohttp

from sfu.ice_restart import IceRestart
from signaling.devidp import DevelopmentIdP
from tests.fixtures.browser import ROOM, OpenTab, join_from_the_prejoin_screen, schedule_room
from tests.fixtures.media import join_over_ws
from tests.fixtures.servers import eventually
from tests.test_sfu_ice_restart import _ice

TILE_RECONNECTING = """
((pid) => {
  const figure = document.querySelector(
    `figure[data-participant-id="${pid}"][data-source="camera"]`);
  if (!figure) return null;
  return figure.dataset.reconnecting === "true" &&
    figure.querySelector(".tile-reconnecting")?.hidden === false;
})(%s)
"""


async def test_a_late_joiner_sees_a_tile_reconnecting_until_its_restart_is_over(
    loopback_ice: None, serve_process: Any, chromium: OpenTab
) -> None:
    serve = serve_process()
    idp = DevelopmentIdP.load_or_create(serve.data_dir)
    chair = idp.mint(sub="dr-chen", role="chair", name="Dr Chen Wei", depts=["oncology"],
                     rooms=[ROOM])  # fmt: skip
    schedule_room(serve.url, chair, ROOM, lobby=False)
    restart: IceRestart | None = None
    async with aiohttp.ClientSession() as http:
        moving = await join_over_ws(http, serve.url, chair, ROOM)
        try:
            await eventually(lambda: moving.client.publish_pc.connectionState == "connected", 20)
            pid = moving.joined["participant_id"]
            # Its network changes: a publish re-offer with new ICE credentials, whose checks
            # never succeed (the client never checks its side).
            pc = moving.client.publish_pc
            restart = IceRestart.begin(_ice(pc))
            await restart.gather()
            await pc.setLocalDescription(await pc.createOffer())
            answers = sum(m["type"] == "answer" for m in moving.messages)
            await moving.ws.send_json(
                {"type": "offer", "pc": "publish", "sdp": pc.localDescription.sdp}
            )
            await eventually(
                lambda: sum(m["type"] == "answer" for m in moving.messages) > answers, 10
            )

            specialist = idp.mint(sub="dr-silva", role="specialist", name="Dr Ana Silva",
                                  depts=["oncology"], rooms=[ROOM])  # fmt: skip
            tab = await chromium(f"{serve.url}/join/{ROOM}#token={specialist}")
            await join_from_the_prejoin_screen(tab)
            expression = TILE_RECONNECTING % f'"{pid}"'
            # Told after joining: the tile is shown reconnecting while the restart lasts ...
            await tab.until(expression, timeout_s=12)
            # ... and normal again once the SFU gives the new path up (the old one kept).
            await tab.until(f"({expression}) === false", timeout_s=25)
        finally:
            if restart is not None:
                restart.abandon()
            await moving.close()
