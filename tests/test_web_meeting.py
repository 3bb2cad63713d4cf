"""A meeting the HIS scheduled, in a real browser: the chair opens the join link from their
invitation and the room shows the meeting's title and case list, in English and in Chinese."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from signaling.devidp import DevelopmentIdP
from tests.fixtures.browser import (
    ICE_ENV,
    OpenTab,
    api,
    join_from_the_prejoin_screen,
    no_page_problems,
    screenshot,
)


async def test_the_chair_opens_the_invitation_and_sees_the_title_and_the_cases(
    serve_process: Any, chromium: OpenTab
) -> None:
    serve = serve_process(env=ICE_ENV)
    idp = DevelopmentIdP.load_or_create(serve.data_dir)
    his = idp.mint(sub="his-scheduler", role="scheduler", amr=[])
    starts = datetime.now(UTC) + timedelta(minutes=5)
    booking = {
        "title": "Thoracic tumour board",
        "starts_at": starts.isoformat(),
        "ends_at": (starts + timedelta(hours=1)).isoformat(),
        "departments": ["oncology"],
        "cases": [
            {"case_id": "EP-2041", "label": "Case 1: lung nodule"},
            {"case_id": "EP-2042"},
        ],
        "participants": [{"sub": "dr-chen", "role": "chair", "name": "Dr Chen"}],
    }
    meeting = api(serve.url, his, "POST", "/api/v1/meetings", booking)
    (invitation,) = meeting["invitations"]
    tab = await chromium(invitation["join_url"])
    await join_from_the_prejoin_screen(tab)
    await tab.until("window.consilium.state().screen === 'room'")
    await tab.until("!document.getElementById('room-cases').hidden")
    assert await tab.page.locator("#room-title").inner_text() == "Thoracic tumour board"
    items = await tab.page.locator("#room-cases-list li").all_inner_texts()
    assert items == ["EP-2041: Case 1: lung nodule", "EP-2042"]
    assert await tab.page.locator("#room-cases-heading").inner_text() == "Cases on the agenda"
    await screenshot(tab, "room-meeting-cases")
    await tab.page.select_option("#language-select", "zh-CN")
    await tab.until("document.documentElement.lang === 'zh-CN'")
    assert await tab.page.locator("#room-cases-heading").inner_text() == "本次讨论病例"
    assert await tab.page.locator("#room-cases-list li").count() == 2
    no_page_problems(tab)
