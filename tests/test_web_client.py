"""The web client in real browsers (Debian's Chromium) against a real `consilium serve`.

A chair and a specialist meet through the lobby of a scheduled room, see each other's video,
and the chair mutes and removes the specialist; the language switch changes the page's words;
a dropped connection rejoins by itself. Screenshots of the main screens go to test-output/web/.
The other screens and controls have their own files: test_web_refusals.py, test_web_room.py,
test_web_grid.py, test_web_accessibility.py, test_web_protocol.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from signaling.devidp import DevelopmentIdP
from tests.fixtures.browser import (
    ICE_ENV,
    ROOM,
    OpenTab,
    meet_through_the_lobby,
    no_page_problems,
    page_state,
    received_from,
    screenshot,
    tile,
    until_decoding,
)


async def test_chair_admits_a_specialist_from_the_lobby_and_both_see_each_other(
    serve_process: Any, chromium: OpenTab
) -> None:
    meeting = await meet_through_the_lobby(serve_process(env=ICE_ENV), chromium, screenshots="")
    # Each grid shows both people, with name, role and department on the other's tile.
    for tab, other, words in (
        (meeting.chair, meeting.specialist_id, ("Dr Ana Silva", "Specialist", "cardiology")),
        (meeting.specialist, meeting.chair_id, ("Dr Chen Wei", "Chair", "oncology")),
    ):
        await tab.until("document.querySelectorAll('#grid figure').length === 2")
        figure = tab.page.locator(f"#grid figure[data-participant-id='{other}']")
        caption = await figure.locator("figcaption").inner_text()
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
    await screenshot(meeting.chair, "room-chair")
    await screenshot(meeting.specialist, "room-specialist")
    for tab in (meeting.chair, meeting.specialist):
        no_page_problems(tab)
        assert (await page_state(tab))["errors"] == []


async def test_the_main_screens_in_chinese(serve_process: Any, chromium: OpenTab) -> None:
    """Two people whose browsers ask for Chinese meet: every screen on the way is in Chinese."""
    meeting = await meet_through_the_lobby(
        serve_process(env=ICE_ENV), chromium, screenshots="-zh-CN", locale="zh-CN"
    )
    for tab in (meeting.chair, meeting.specialist):
        assert await tab.page.evaluate("document.documentElement.lang") == "zh-CN"
        await tab.until("document.getElementById('leave-button').textContent === '离开'")
    other = tile(meeting.specialist_id)
    await meeting.chair.until(
        f"document.querySelector(\"{other} .tile-details\").textContent === '专科医生 · cardiology'"
    )
    assert await meeting.chair.page.locator("#chair-heading").inner_text() == "主持人控制"
    await asyncio.sleep(1.0)  # let the video and indicators settle for the pictures
    await screenshot(meeting.chair, "room-chair-zh-CN")
    await screenshot(meeting.specialist, "room-specialist-zh-CN")
    for tab in (meeting.chair, meeting.specialist):
        no_page_problems(tab)


async def test_chair_mutes_the_specialist_and_their_audio_stops(
    serve_process: Any, chromium: OpenTab
) -> None:
    meeting = await meet_through_the_lobby(serve_process(env=ICE_ENV), chromium)
    chair, pid = meeting.chair, meeting.specialist_id
    packets_before = (await received_from(chair, pid))["audio"]["packetsReceived"]
    await asyncio.sleep(1.0)
    assert (await received_from(chair, pid))["audio"]["packetsReceived"] > packets_before

    await chair.page.click(f"#participant-list li[data-participant-id='{pid}'] .chair-mute")
    await chair.until(f"document.querySelector(\"{tile(pid)}\")?.dataset.audioMuted === 'true'")
    assert "Microphone off" in await chair.page.locator(f"{tile(pid)} figcaption").inner_text()
    # The specialist's own page follows: microphone button says unmute, and a notice says why.
    specialist = meeting.specialist
    await specialist.until("window.consilium.state().media.audioMuted === true")
    await specialist.until(
        "document.getElementById('mic-button').textContent === 'Unmute microphone'"
    )
    assert (
        await specialist.page.locator("#room-notice").inner_text()
        == "The chair muted your microphone."
    )

    # The SFU stops forwarding: no more audio packets reach the chair. (Not totalSamplesReceived:
    # Chromium's jitter buffer goes on counting concealment samples when packets stop.)
    await asyncio.sleep(1.5)
    settled = (await received_from(chair, pid))["audio"]["packetsReceived"]
    await asyncio.sleep(1.5)
    later = await received_from(chair, pid)
    assert later["audio"]["packetsReceived"] == settled
    # ...while the specialist's video keeps arriving.
    assert later["video"]["framesDecoded"] > 0
    await screenshot(chair, "room-chair-muted")
    await screenshot(specialist, "room-specialist-muted")
    no_page_problems(chair)


async def test_chair_removes_the_specialist_who_sees_the_removed_screen(
    serve_process: Any, chromium: OpenTab
) -> None:
    meeting = await meet_through_the_lobby(serve_process(env=ICE_ENV), chromium)
    chair, specialist, pid = meeting.chair, meeting.specialist, meeting.specialist_id
    await chair.page.click(f"#participant-list li[data-participant-id='{pid}'] .chair-remove")
    # Asked first: a removal cannot be taken back.
    dialog = chair.page.locator("#remove-dialog")
    await dialog.wait_for(state="visible")
    heading = "Remove Dr Ana Silva from the consultation?"
    assert await chair.page.locator("#remove-dialog-heading").inner_text() == heading
    await chair.page.click("#remove-cancel")
    await dialog.wait_for(state="hidden")
    await asyncio.sleep(0.5)
    assert (await page_state(specialist))["screen"] == "room"
    await chair.page.click(f"#participant-list li[data-participant-id='{pid}'] .chair-remove")
    await chair.page.click("#remove-confirm")
    await specialist.until("window.consilium.ending() === 'removed'")
    await specialist.until("!document.getElementById('screen-ended').hidden")
    heading = await specialist.page.locator("#ended-heading").inner_text()
    assert heading == "You were removed from the meeting"
    assert not await specialist.page.locator("#rejoin-button").is_visible()
    # The chair's grid is back to one tile.
    await chair.until("document.querySelectorAll('#grid figure').length === 1")
    await screenshot(specialist, "refused-removed")
    no_page_problems(specialist)


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
    await tab.until("document.getElementById('preview-video').videoWidth > 0")
    await screenshot(tab, "prejoin-zh-CN")

    # The choice is remembered: a reload stays in Chinese.
    await tab.page.goto(f"{serve.url}/join/{ROOM}#token={token}")
    await tab.until("document.documentElement.lang === 'zh-CN'")
    await tab.until("document.getElementById('join-button').textContent === '加入会诊'")

    await tab.page.select_option("#language-select", "en")
    await tab.until("document.documentElement.lang === 'en'")
    assert await button.inner_text() == "Join the consultation"
    no_page_problems(tab)


async def test_a_browser_asking_for_chinese_gets_chinese(
    serve_process: Any, chromium: OpenTab
) -> None:
    serve = serve_process(env=ICE_ENV)
    token = DevelopmentIdP.load_or_create(serve.data_dir).mint(
        sub="dr-wang", role="nurse", name="王芳", depts=["oncology"], rooms=[ROOM]
    )
    tab = await chromium(f"{serve.url}/join/{ROOM}#token={token}", locale="zh-CN")
    await tab.until("document.documentElement.lang === 'zh-CN'")
    await tab.until("document.getElementById('claim-role').textContent === '护士'")
    assert await tab.page.locator("#language-select").input_value() == "zh-CN"


async def test_a_dropped_connection_rejoins_without_a_second_lobby_wait(
    serve_process: Any, chromium: OpenTab
) -> None:
    meeting = await meet_through_the_lobby(serve_process(env=ICE_ENV), chromium)
    specialist = meeting.specialist
    await specialist.page.evaluate("window.consilium.dropConnection()")
    await specialist.until("window.consilium.state().reconnects === 0", timeout_s=15)
    await specialist.until("window.consilium.state().screen === 'room'", timeout_s=15)
    state = await page_state(specialist)
    assert state["received"].get("lobby", 0) == 1, "waited in the lobby a second time"
    # A new participant id after the rejoin; media flows both ways again.
    meeting.specialist_id = state["participantId"]
    await until_decoding(meeting)
    no_page_problems(specialist)
