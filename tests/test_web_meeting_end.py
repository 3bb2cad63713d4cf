"""The chair ends the meeting for everyone, in real browsers against `consilium serve`: the
recording is stopped and sealed first, the specialist's page says "The chair ended the meeting"
(in both languages) instead of reconnecting, and a reload of that page does not get back in."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from signaling.audit import iter_entries
from signaling.devidp import DevelopmentIdP
from tests.fixtures.browser import (
    ICE_ENV,
    BrowserTab,
    OpenTab,
    api,
    meet_through_the_lobby,
    no_page_problems,
    page_state,
    screenshot,
    start_recording_with_consent,
)
from tests.fixtures.servers import REPO, close_code
from tests.test_meetings_api import booking

CATALOGUES = {
    lang: json.loads((REPO / "web" / "i18n" / f"{lang}.json").read_text(encoding="utf-8"))
    for lang in ("en", "zh-CN")
}


async def _says(tab: BrowserTab, key: str, lang: str = "en") -> None:
    catalogue = CATALOGUES[lang]
    heading = json.dumps(catalogue[f"{key}_heading"])
    await tab.until("!document.getElementById('screen-ended').hidden", timeout_s=15)
    await tab.until(f"document.getElementById('ended-heading').textContent === {heading}")
    assert await tab.page.locator("#ended-body").inner_text() == catalogue[key]
    assert not await tab.page.locator("#rejoin-button").is_visible()


async def test_the_chair_ends_the_meeting_and_a_reload_does_not_get_back_in(
    serve_process: Any, chromium: OpenTab
) -> None:
    serve = serve_process(env=ICE_ENV)
    meeting = await meet_through_the_lobby(serve, chromium)
    chair, specialist = meeting.chair, meeting.specialist
    recording_id = await start_recording_with_consent(meeting)

    end = chair.page.locator("#end-meeting-button")
    assert await end.inner_text() == "End meeting for everyone"
    assert not await specialist.page.locator("#end-meeting-button").is_visible()
    # Asked first; Cancel (the focused, safe choice) ends nothing.
    await end.click()
    await chair.until("document.getElementById('end-dialog').open")
    assert await chair.page.evaluate("document.activeElement.id") == "end-cancel"
    await screenshot(chair, "end-meeting-confirm")
    await chair.page.keyboard.press("Enter")
    await chair.until("!document.getElementById('end-dialog').open")
    assert (await page_state(specialist))["screen"] == "room"

    await end.click()
    await chair.until("document.getElementById('end-dialog').open")
    await chair.page.click("#end-confirm")

    await _says(specialist, "ended.meeting_ended_by_chair")
    await _says(chair, "ended.meeting_ended_by_you")
    assert (await page_state(specialist))["ended"]["code"] == 4411
    await screenshot(specialist, "ended-by-chair")
    await specialist.page.select_option("#language-select", "zh-CN")
    await _says(specialist, "ended.meeting_ended_by_chair", "zh-CN")
    await screenshot(specialist, "ended-by-chair-zh-CN")
    await specialist.page.select_option("#language-select", "en")
    # No reconnection: still ended a while later (a retry would have left this screen).
    await asyncio.sleep(3.0)
    assert (await page_state(specialist))["screen"] == "ended"

    # The person reloads the page: they see the meeting's end again, not the camera check.
    await specialist.page.reload()
    await _says(specialist, "ended.meeting_ended_by_chair")
    await asyncio.sleep(2.0)
    state = await page_state(specialist)
    assert state["screen"] == "ended" and state["participantId"] in (None, "")
    no_page_problems(specialist)
    # The chair reloads too: their own words again.
    await chair.page.reload()
    await _says(chair, "ended.meeting_ended_by_you")
    no_page_problems(chair)

    # The recording was stopped and sealed before the room closed; the meeting ended once.
    audit = list(iter_entries(serve.data_dir / "audit"))
    stopped = [e for e in audit if e.action == "recording_stopped"]
    closed = [e for e in audit if e.action == "room_closed"]
    assert [e.fields.get("recording") for e in stopped] == [recording_id]
    assert len(closed) == 1 and closed[0].sub == "dr-chen"
    assert closed[0].reason == "ended_by_chair" and stopped[0].seq < closed[0].seq


async def test_a_link_to_a_meeting_that_ended_says_so_in_a_new_browser(
    serve_process: Any, chromium: OpenTab
) -> None:
    """No memory of the ending in this browser: the server's answer (the admission check's 410)
    is what the page shows, before the camera check."""
    serve = serve_process(env=ICE_ENV)
    idp = DevelopmentIdP.load_or_create(serve.data_dir)
    his = idp.mint(sub="his-scheduler", role="scheduler", amr=[], depts=[], rooms=[], name="HIS")
    meeting = api(serve.url, his, "POST", "/api/v1/meetings", booking(lobby=False))
    links = {i["sub"]: i["join_url"] for i in meeting["invitations"]}
    chair_token = links["dr-chen"].split("#token=")[1]
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(serve.url.replace("http", "ws", 1) + "/ws")
        await ws.send_json({"type": "join", "token": chair_token, "room": meeting["meeting_id"]})
        assert (await ws.receive_json(timeout=10))["type"] == "joined"
        await ws.send_json({"type": "end_meeting"})
        assert await close_code(ws, timeout=10) == 4411
    for lang in ("en", "zh-CN"):
        tab = await chromium(links["dr-wu"], locale=lang)
        await _says(tab, "ended.meeting_ended_by_chair", lang)
        assert (await page_state(tab))["ended"]["code"] == 4411
        assert await tab.page.locator("#screen-join").is_hidden()
        no_page_problems(tab)
    ended = api(serve.url, his, "GET", f"/api/v1/meetings/{meeting['meeting_id']}")
    assert ended["status"] == "ended" and ended["ended_reason"] == "ended_by_chair"
