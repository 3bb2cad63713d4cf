"""The web client in real browsers (Debian's Chromium) against a real `consilium serve`.

A chair and a specialist meet through the lobby of a scheduled room, see each other's video,
and the chair mutes and removes the specialist; the language switch changes the page's words.
Screenshots of the main screens go to test-output/web/.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from signaling.devidp import DevelopmentIdP
from tests.fixtures.servers import REPO

if TYPE_CHECKING:
    # Types only: importing the module here would register it before pytest can rewrite it.
    from tests.fixtures.browser import BrowserTab, OpenTab

ROOM = "tumour-board"
SCREENSHOTS = REPO / "test-output" / "web"
MEDIA_TIMEOUT_S = 30.0
ICE_ENV = {"CONSILIUM_ICE_HOST_ADDRESSES": "127.0.0.1"}


@dataclass
class Meeting:
    """A chair and a specialist in one room, each in their own browser."""

    chair: BrowserTab
    specialist: BrowserTab
    chair_id: str
    specialist_id: str
    log: Any


async def _state(tab: BrowserTab) -> dict[str, Any]:
    return dict(await tab.page.evaluate("window.consilium.state()"))


async def _received_from(tab: BrowserTab, sender: str) -> dict[str, dict[str, Any]]:
    """The tab's inbound-rtp stats for the camera and microphone `sender` publishes, by kind."""
    stats = await tab.page.evaluate("window.consilium.stats()")
    return {
        s["kind"]: s
        for s in stats["inbound"]
        if s["participantId"] == sender and s["source"] in ("camera", "microphone")
    }


async def _screenshot(tab: BrowserTab, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await tab.page.screenshot(path=Path(SCREENSHOTS, f"{name}.png"), full_page=True)


def _schedule_room(url: str, token: str, room: str) -> None:
    """POST /api/rooms as the chair: a room with its lobby on."""
    body = json.dumps(
        {
            "room_id": room,
            "lobby": True,
            "title": "Tumour board",
            "departments": ["oncology", "cardiology"],
        }
    ).encode()
    request = urllib.request.Request(
        f"{url}/api/rooms",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 201


async def _diagnosis(meeting: Meeting) -> str:
    lines = []
    for name, tab in (("chair", meeting.chair), ("specialist", meeting.specialist)):
        lines.append(f"--- {name}: state {json.dumps(await _state(tab))}")
        lines.extend(f"    console {m}" for m in tab.console)
        lines.extend(f"    page error {e}" for e in tab.page_errors)
    lines.append("--- server log (tail)")
    lines.append(meeting.log()[-4000:])
    return "\n".join(lines)


async def _until_decoding(meeting: Meeting) -> None:
    """Each page decodes the other's video and receives their audio."""
    pairs = ((meeting.chair, meeting.specialist_id), (meeting.specialist, meeting.chair_id))
    deadline = time.monotonic() + MEDIA_TIMEOUT_S
    while time.monotonic() < deadline:
        received = [await _received_from(tab, sender) for tab, sender in pairs]
        if all(
            r.get("video", {}).get("framesDecoded", 0) > 0
            and r.get("video", {}).get("frameWidth", 0) > 0
            and r.get("audio", {}).get("totalSamplesReceived", 0) > 0
            for r in received
        ):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"no media both ways in time\n{await _diagnosis(meeting)}")


async def _meet_through_the_lobby(
    serve_process: Any, chromium: OpenTab, *, screenshots: bool = False
) -> Meeting:
    serve = serve_process(env=ICE_ENV)
    idp = DevelopmentIdP.load_or_create(serve.data_dir)
    chair_token = idp.mint(
        sub="dr-chen", role="chair", name="Dr Chen Wei", depts=["oncology"], rooms=[ROOM]
    )
    specialist_token = idp.mint(
        sub="dr-ana", role="specialist", name="Dr Ana Silva", depts=["cardiology"], rooms=[ROOM]
    )
    _schedule_room(serve.url, chair_token, ROOM)

    chair = await chromium(f"{serve.url}/join/{ROOM}#token={chair_token}")
    # The token left the address bar as soon as the page read it.
    await chair.until("window.consilium.state().screen === 'join'")
    assert "token" not in chair.page.url
    await chair.until("document.getElementById('preview-video').videoWidth > 0")
    assert await chair.page.locator("#claim-name").inner_text() == "Dr Chen Wei"
    assert await chair.page.locator("#claim-dept").inner_text() == "oncology"
    if screenshots:
        await _screenshot(chair, "prejoin")
    await chair.page.click("#join-button")
    await chair.until("window.consilium.state().screen === 'room'")
    await chair.until("window.consilium.state().connection.publish === 'connected'")

    specialist = await chromium(f"{serve.url}/join/{ROOM}#token={specialist_token}")
    await specialist.until("window.consilium.state().screen === 'join'")
    await specialist.page.click("#join-button")
    try:
        await specialist.until("window.consilium.state().lobbyReason === 'lobby_enabled'")
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\n{await _state(specialist)}\n{serve.output()[-3000:]}"
        ) from None
    await specialist.until("!document.getElementById('screen-lobby').hidden")
    assert not await specialist.page.locator("#screen-room").is_visible()
    if screenshots:
        await _screenshot(specialist, "lobby")

    # The chair sees the knock and admits with a click.
    admit = chair.page.locator("#lobby-list .chair-admit")
    await admit.wait_for(state="visible", timeout=10_000)
    assert "Dr Ana Silva" in await chair.page.locator("#lobby-list").inner_text()
    if screenshots:
        await _screenshot(chair, "chair-knock")
    await admit.click()
    await specialist.until("window.consilium.state().screen === 'room'")

    chair_id = (await _state(chair))["participantId"]
    specialist_id = (await _state(specialist))["participantId"]
    meeting = Meeting(chair, specialist, chair_id, specialist_id, serve.output)
    await _until_decoding(meeting)
    return meeting


def _no_page_problems(tab: BrowserTab) -> None:
    assert tab.page_errors == []
    assert [m for m in tab.console if "Content Security Policy" in m] == []


async def test_chair_admits_a_specialist_from_the_lobby_and_both_see_each_other(
    serve_process: Any, chromium: OpenTab
) -> None:
    meeting = await _meet_through_the_lobby(serve_process, chromium, screenshots=True)
    # Each grid shows both people, with name, role and department on the other's tile.
    for tab, other, words in (
        (meeting.chair, meeting.specialist_id, ("Dr Ana Silva", "Specialist", "cardiology")),
        (meeting.specialist, meeting.chair_id, ("Dr Chen Wei", "Chair", "oncology")),
    ):
        await tab.until("document.querySelectorAll('#grid figure').length === 2")
        tile = tab.page.locator(f"#grid figure[data-participant-id='{other}']")
        caption = await tile.locator("figcaption").inner_text()
        assert all(word in caption for word in words), caption
        await tab.until(
            f"document.querySelector(\"#grid figure[data-participant-id='{other}'] video\")"
            ".videoWidth > 0"
        )
    # Only the chair sees the chair's controls.
    assert await meeting.chair.page.locator("#chair-panel").is_visible()
    assert not await meeting.specialist.page.locator("#chair-panel").is_visible()
    assert await meeting.specialist.page.locator(".chair-mute, .chair-remove").count() == 0
    await asyncio.sleep(1.5)  # let the speaking indicator and video settle for the pictures
    await _screenshot(meeting.chair, "room-chair")
    await _screenshot(meeting.specialist, "room-specialist")
    for tab in (meeting.chair, meeting.specialist):
        _no_page_problems(tab)
        assert (await _state(tab))["errors"] == []


async def test_chair_mutes_the_specialist_and_their_audio_stops(
    serve_process: Any, chromium: OpenTab
) -> None:
    meeting = await _meet_through_the_lobby(serve_process, chromium)
    chair, pid = meeting.chair, meeting.specialist_id
    packets_before = (await _received_from(chair, pid))["audio"]["packetsReceived"]
    await asyncio.sleep(1.0)
    assert (await _received_from(chair, pid))["audio"]["packetsReceived"] > packets_before

    await chair.page.click(f"#participant-list li[data-participant-id='{pid}'] .chair-mute")
    tile = f"#grid figure[data-participant-id='{pid}'][data-source='camera']"
    await chair.until(f"document.querySelector(\"{tile}\")?.dataset.audioMuted === 'true'")
    assert "Microphone off" in await chair.page.locator(f"{tile} figcaption").inner_text()
    # The specialist's own page follows: microphone button says unmute, and a notice says why.
    specialist = meeting.specialist
    await specialist.until("window.consilium.state().media.audioMuted === true")
    await specialist.until(
        "document.getElementById('mic-button').textContent === 'Unmute microphone'"
    )

    # The SFU stops forwarding: no more audio packets reach the chair. (Not totalSamplesReceived:
    # Chromium's jitter buffer goes on counting concealment samples when packets stop.)
    await asyncio.sleep(1.5)
    settled = (await _received_from(chair, pid))["audio"]["packetsReceived"]
    await asyncio.sleep(1.5)
    later = await _received_from(chair, pid)
    assert later["audio"]["packetsReceived"] == settled
    # ...while the specialist's video keeps arriving.
    assert later["video"]["framesDecoded"] > 0
    await _screenshot(chair, "room-chair-muted")
    await _screenshot(specialist, "room-specialist-muted")
    _no_page_problems(chair)


async def test_chair_removes_the_specialist_who_sees_the_removed_screen(
    serve_process: Any, chromium: OpenTab
) -> None:
    meeting = await _meet_through_the_lobby(serve_process, chromium)
    chair, specialist, pid = meeting.chair, meeting.specialist, meeting.specialist_id
    await chair.page.click(f"#participant-list li[data-participant-id='{pid}'] .chair-remove")
    await specialist.until("window.consilium.ending() === 'removed'")
    await specialist.until("!document.getElementById('screen-ended').hidden")
    heading = await specialist.page.locator("#ended-heading").inner_text()
    assert heading == "You were removed from the meeting"
    assert not await specialist.page.locator("#rejoin-button").is_visible()
    # The chair's grid is back to one tile.
    await chair.until("document.querySelectorAll('#grid figure').length === 1")
    await _screenshot(specialist, "removed")
    _no_page_problems(specialist)


async def test_language_switch_changes_the_page_to_chinese_and_back(
    serve_process: Any, chromium: OpenTab
) -> None:
    serve = serve_process(env=ICE_ENV)
    idp = DevelopmentIdP.load_or_create(serve.data_dir)
    token = idp.mint(
        sub="dr-li", role="specialist", name="Dr Li", depts=["radiology"], rooms=[ROOM]
    )
    tab = await chromium(f"{serve.url}/join/{ROOM}#token={token}")
    await tab.until("window.consilium.state().screen === 'join'")
    button = tab.page.locator("#join-button")
    await tab.until("document.getElementById('join-button').textContent.length > 0")
    assert await button.inner_text() == "Join the consultation"

    await tab.page.select_option("#language-select", "zh-CN")
    await tab.until("document.documentElement.lang === 'zh-CN'")
    assert await button.inner_text() == "加入会诊"
    assert await tab.page.locator("#join-heading").inner_text() == "检查摄像头和麦克风"
    await tab.until("document.getElementById('claim-role').textContent === '专科医生'")
    await _screenshot(tab, "prejoin-zh-CN")

    # The choice is remembered: a reload stays in Chinese.
    await tab.page.goto(f"{serve.url}/join/{ROOM}#token={token}")
    await tab.until("document.documentElement.lang === 'zh-CN'")
    await tab.until("document.getElementById('join-button').textContent === '加入会诊'")

    await tab.page.select_option("#language-select", "en")
    await tab.until("document.documentElement.lang === 'en'")
    assert await button.inner_text() == "Join the consultation"
    _no_page_problems(tab)


async def test_refusals_are_shown_in_words_not_codes(serve_process: Any, chromium: OpenTab) -> None:
    serve = serve_process(env=ICE_ENV)
    idp = DevelopmentIdP.load_or_create(serve.data_dir)
    expired = idp.mint(sub="dr-old", role="specialist", rooms=[ROOM], ttl_s=-120)
    tab = await chromium(f"{serve.url}/join/{ROOM}#token={expired}")
    await tab.until("window.consilium.state().screen === 'join'")
    await tab.page.click("#join-button")
    await tab.until("window.consilium.ending() === 'expired'")
    await tab.until("!document.getElementById('screen-ended').hidden")
    assert await tab.page.locator("#ended-heading").inner_text() == "This link no longer works"
    await _screenshot(tab, "refused-expired")

    other = idp.mint(sub="dr-x", role="specialist", rooms=["another-room"])
    tab = await chromium(f"{serve.url}/join/{ROOM}#token={other}")
    await tab.until("window.consilium.state().screen === 'join'")
    await tab.page.click("#join-button")
    await tab.until("window.consilium.ending() === 'not_allowed'")
    await tab.until("!document.getElementById('screen-ended').hidden")
    assert await tab.page.locator("#ended-heading").inner_text() == "You cannot join this meeting"


async def test_a_dropped_connection_rejoins_without_a_second_lobby_wait(
    serve_process: Any, chromium: OpenTab
) -> None:
    meeting = await _meet_through_the_lobby(serve_process, chromium)
    specialist = meeting.specialist
    await specialist.page.evaluate("window.consilium.dropConnection()")
    await specialist.until("window.consilium.state().reconnects === 0", timeout_s=15)
    await specialist.until("window.consilium.state().screen === 'room'", timeout_s=15)
    state = await _state(specialist)
    assert state["received"].get("lobby", 0) == 1, "waited in the lobby a second time"
    # A new participant id after the rejoin; media flows both ways again.
    meeting.specialist_id = state["participantId"]
    await _until_decoding(meeting)
    _no_page_problems(specialist)
