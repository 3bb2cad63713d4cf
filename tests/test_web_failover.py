"""Room failover with a real browser (issue 13, part 2): Dr Chen's Chromium is connected to node
B, the room's media lives on node A (someone joined there first), and node A is killed
(SIGKILL). The page is told `media_moved`, closes its media sessions and opens new ones on B's
SFU, on the same signalling connection and without the lobby: it decodes the other
participant's video again, and that participant decodes Dr Chen's camera again (Chromium sends
a keyframe only when asked: the new SFU must ask). The recording that ran on A goes on at B as
a continuation, consent standing (no dialog again), and the page shows it running."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from signaling.devidp import DevelopmentIdP
from tests.fixtures.browser import (
    ROOM,
    BrowserTab,
    OpenTab,
    join_from_the_prejoin_screen,
    no_page_problems,
    page_state,
    received_from,
    schedule_room,
)
from tests.fixtures.haproxy import start_load_balancer
from tests.fixtures.media import Participant, join_over_ws, last, pid, send, video_frames_from
from tests.fixtures.media import state as recording_of
from tests.fixtures.servers import LOOPBACK_ICE, ServeProcess, eventually, two_nodes

DEAD_AFTER_S = 4.0
"""`node_dead_after_s`, its default."""


async def _page_decodes(tab: BrowserTab, sender: str) -> bool:
    """Whether the page's video from `sender` is decoding now (frames rise over 0.5 s)."""
    before = (await received_from(tab, sender)).get("video", {}).get("framesDecoded", 0)
    await asyncio.sleep(0.5)
    after = (await received_from(tab, sender)).get("video", {}).get("framesDecoded", 0)
    return bool(after > before)


async def _both_ways_again(tab: BrowserTab, on_b: Participant, me: str) -> None:
    """After the kill: the page decodes Dr B's video again, and Dr B decodes the page's camera
    again (on their current media sessions)."""
    frames_before = video_frames_from(on_b, me, current=True)
    await eventually(lambda: _page_decodes(tab, pid(on_b)), timeout=20, interval=0.1)
    await eventually(
        lambda: video_frames_from(on_b, me, current=True) > frames_before + 5, timeout=20
    )


@contextlib.asynccontextmanager
async def _meeting(
    http: aiohttp.ClientSession,
    a: ServeProcess,
    b: ServeProcess,
    idp: DevelopmentIdP,
    chromium: OpenTab,
    page_origin: str,
) -> AsyncIterator[tuple[Participant, Participant, BrowserTab, str]]:
    """Dr A on node A (who opens the room: its media lives on A) and Dr B on node B, both
    aiortc, and Dr Chen, the chair, in Chromium reaching the nodes at `page_origin`, each
    decoding the others' video. (Dr A, Dr B, Dr Chen's tab, Dr Chen's participant id.)"""

    def token(sub: str, role: str) -> str:
        return idp.mint(sub=sub, role=role, depts=["oncology"], rooms=[ROOM])

    chair = token("dr-chen", "chair")
    schedule_room(a.url, chair, ROOM, lobby=False)
    on_a = await join_over_ws(http, a.url, token("dr-a", "chair"), ROOM)  # opens it
    on_b = await join_over_ws(http, b.url, token("dr-b", "specialist"), ROOM)
    try:
        tab = await chromium(f"{page_origin}/join/{ROOM}#token={chair}")
        await join_from_the_prejoin_screen(tab)
        me = await tab.until("window.consilium.state().participantId")
        await eventually(lambda: _page_decodes(tab, pid(on_b)), timeout=30, interval=0.2)
        await eventually(lambda: video_frames_from(on_b, me, current=True) > 5, timeout=30)
        yield on_a, on_b, tab, me
    finally:
        await on_a.close()
        await on_b.close()


async def test_a_browser_whose_rooms_media_node_dies_gets_its_media_back_on_another(
    serve_process: Any, redis_url: str, tmp_path: Path, loopback_ice: None, chromium: OpenTab
) -> None:
    a, b, idp = two_nodes(serve_process, redis_url, tmp_path, LOOPBACK_ICE)
    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as http,
        _meeting(http, a, b, idp, chromium, b.url) as (on_a, on_b, tab, me),
    ):
        # The chair on A records, with everyone's consent (the recording runs on A).
        await send(on_a, "request_consent")
        await tab.until("document.getElementById('consent-dialog').open")
        await tab.page.click("#consent-agree")
        for person in (on_a, on_b):
            await eventually(lambda p=person: last(p, "consent_requested"), timeout=5)
            await send(person, "consent", decision="granted")
        everyone = (pid(on_a), pid(on_b), me)
        await eventually(
            lambda: all(
                recording_of(on_a).get("consent", {}).get(x) == "granted" for x in everyone
            ),
            timeout=10,
        )
        await send(on_a, "start_recording")
        await tab.until("!document.getElementById('recording-indicator').hidden")
        recording_id = (await page_state(tab))["recording"]["recording_id"]

        await asyncio.sleep(max(0.0, started + DEAD_AFTER_S + 1.5 - time.monotonic()))
        a.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        await tab.until("window.consilium.state().mediaMoves === 1", timeout_s=15)
        await _both_ways_again(tab, on_b, me)
        print(f"\nthe page's media back both ways {time.monotonic() - killed_at:.2f} s after"
              " the kill")  # fmt: skip

        # The recording goes on at B, as a continuation of the one A was making (consent
        # stood: no dialog again); the page shows it running under its new id.
        await tab.until(
            f"!['', '{recording_id}'].includes(window.consilium.state().recording"
            ".recording_id) && window.consilium.state().recording.recording"
        )
        await tab.until("!document.getElementById('recording-indicator').hidden")
        seen = await page_state(tab)
        assert seen["recording"]["failure"] == ""
        assert not await tab.page.evaluate("document.getElementById('consent-dialog').open")
        assert seen["screen"] == "room"
        assert seen["reconnects"] == 0 and seen["resumes"] == 0, "no rejoin, no resume"
        present = {person["participant_id"] for person in seen["participants"]}
        assert present == {me, pid(on_a), pid(on_b)}, "nobody else"
        # The lost node's participant is held for a resume elsewhere: shown reconnecting.
        assert seen["reconnecting"] == [pid(on_a)]
        no_page_problems(tab)


async def test_a_browser_whose_own_node_dies_resumes_through_the_load_balancer(
    serve_process: Any, redis_url: str, tmp_path: Path, loopback_ice: None, chromium: OpenTab
) -> None:
    """Dr Chen's Chromium reaches the nodes through a load balancer (HAProxy, as
    deploy/compose has it) and is on node A, which also hosts the room's media, when A is
    killed. The page's socket drops; it resumes through the same address 300 ms later, which
    now leads to B: B takes Dr Chen over as the same participant once it finds A dead (no
    lobby, no rejoin), and the page opens new media sessions there, both ways."""
    a, b, idp = two_nodes(serve_process, redis_url, tmp_path, LOOPBACK_ICE)
    balancer = start_load_balancer(tmp_path / "balancer", a.url, b.url)
    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as http,
        _meeting(http, a, b, idp, chromium, balancer.url) as (on_a, on_b, tab, me),
    ):
        try:
            await asyncio.sleep(max(0.0, started + DEAD_AFTER_S + 1.5 - time.monotonic()))
            a.stop(signal.SIGKILL)
            killed_at = time.monotonic()
            await on_a.close()
            await tab.until("window.consilium.state().resumes === 1", timeout_s=20)
            await _both_ways_again(tab, on_b, me)
            print(f"\nthe page resumed on B, its media back both ways"
                  f" {time.monotonic() - killed_at:.2f} s after the kill")  # fmt: skip

            seen = await page_state(tab)
            assert seen["participantId"] == me, "the same participant"
            assert seen["screen"] == "room"
            assert seen["reconnects"] == 0, "resumed, not joined again"
            present = {person["participant_id"] for person in seen["participants"]}
            assert present == {me, pid(on_a), pid(on_b)}
            assert seen["reconnecting"] == [pid(on_a)], "A's other participant, still held"
            # Dr B saw Dr Chen reconnecting, then back; never leaving.
            kinds = ("participant_reconnecting", "participant_left")
            about_me = [m for m in on_b.messages
                        if m.get("participant_id") == me and m["type"] in kinds]  # fmt: skip
            assert [(m["type"], m.get("reconnecting")) for m in about_me] == [
                ("participant_reconnecting", True), ("participant_reconnecting", False)
            ]  # fmt: skip
            no_page_problems(tab)
        finally:
            balancer.stop()
