"""Room failover in real Firefox ESR (issue 13, part 2): Dr Silva's Firefox is connected to
node B, the room's media lives on node A (someone joined there first), and node A is killed
(SIGKILL). Firefox is told `media_moved`, closes its media sessions and opens new ones on B's
SFU, on the same signalling connection: it decodes Dr B's video again, and Dr B decodes its
camera again. Firefox, like Chromium, sends a keyframe only when asked, and answers a new
offer its own way (its SDP, its simulcast and RTX choices): the path Chromium takes in
tests/test_web_failover.py, taken by the other browser a hospital's desktops run."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.fixtures.browser import ROOM, schedule_room
from tests.fixtures.firefox import FirefoxTab, OpenFirefox
from tests.fixtures.media import join_over_ws, pid, video_frames_from
from tests.fixtures.servers import LOOPBACK_ICE, eventually, two_nodes

DEAD_AFTER_S = 4.0
"""`node_dead_after_s`, its default."""


async def _frames_decoded(tab: FirefoxTab, sender: str) -> int:
    stats = await tab.evaluate("window.consilium.stats()")
    return sum(
        int(s.get("framesDecoded", 0))
        for s in stats["inbound"]
        if s["participantId"] == sender and s["kind"] == "video" and s["source"] == "camera"
    )


async def _decodes(tab: FirefoxTab, sender: str) -> bool:
    """Whether the page's video from `sender` is decoding now (frames rise over 0.5 s)."""
    before = await _frames_decoded(tab, sender)
    await asyncio.sleep(0.5)
    return await _frames_decoded(tab, sender) > before


async def test_firefox_whose_rooms_media_node_dies_gets_its_media_back_on_another(
    serve_process: Any, redis_url: str, tmp_path: Path, loopback_ice: None, firefox: OpenFirefox
) -> None:
    a, b, idp = two_nodes(serve_process, redis_url, tmp_path, LOOPBACK_ICE)
    started = time.monotonic()

    def token(sub: str, role: str) -> str:
        return idp.mint(sub=sub, role=role, depts=["oncology"], rooms=[ROOM])

    silva = token("dr-silva", "chair")
    schedule_room(a.url, silva, ROOM, lobby=False)
    async with aiohttp.ClientSession() as http:
        on_a = await join_over_ws(http, a.url, token("dr-a", "chair"), ROOM)  # media on A
        on_b = await join_over_ws(http, b.url, token("dr-b", "specialist"), ROOM)
        try:
            tab = await firefox(f"{b.url}/join/{ROOM}#token={silva}")
            await tab.until("window.consilium.state().screen === 'join'")
            # The camera is on before the click, as people arrive.
            await tab.until("document.getElementById('preview-video').videoWidth > 0")
            await tab.click("#join-button")
            await tab.until("window.consilium.state().screen === 'room'")
            me = str(await tab.evaluate("window.consilium.state().participantId"))
            await eventually(lambda: _decodes(tab, pid(on_b)), timeout=30, interval=0.2)
            await eventually(lambda: video_frames_from(on_b, me, current=True) > 5, timeout=30)

            await asyncio.sleep(max(0.0, started + DEAD_AFTER_S + 1.5 - time.monotonic()))
            a.stop(signal.SIGKILL)
            killed_at = time.monotonic()
            await tab.until("window.consilium.state().mediaMoves === 1", timeout_s=15)
            frames_before = video_frames_from(on_b, me, current=True)
            await eventually(lambda: _decodes(tab, pid(on_b)), timeout=20, interval=0.1)
            # Firefox's camera reaches Dr B through B's SFU: it sent a keyframe when asked.
            await eventually(
                lambda: video_frames_from(on_b, me, current=True) > frames_before + 5, timeout=20
            )
            print(f"\nFirefox's media back both ways {time.monotonic() - killed_at:.2f} s after"
                  " the kill")  # fmt: skip

            seen = await tab.evaluate("window.consilium.state()")
            assert seen["screen"] == "room"
            assert seen["reconnects"] == 0 and seen["resumes"] == 0, "no rejoin, no resume"
            present = {person["participant_id"] for person in seen["participants"]}
            assert present == {me, pid(on_a), pid(on_b)}, "nobody else"
            assert seen["reconnecting"] == [pid(on_a)], "the lost node's participant, held"
            assert not tab.page_errors, tab.page_errors
        finally:
            await on_a.close()
            await on_b.close()
