"""Images from the PACS in a real browser: Debian's Chromium, a real `consilium serve` pointed at a
real Orthanc (tests/fixtures/orthanc.py). The chair searches by patient id in the images area,
opens the study's series and shares it with a click; the slices appear in the chair's list and
viewer while a colleague on a signalling WebSocket receives every one, de-identified, and the
room's progress line ends in "shared". Screenshot: test-output/web/pacs-shared.png."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from signaling.devidp import DevelopmentIdP
from tests.fixtures.browser import (
    ICE_ENV,
    ROOM,
    OpenTab,
    join_from_the_prejoin_screen,
    no_axe_violations,
    no_page_problems,
    page_state,
    screenshot,
)
from tests.fixtures.orthanc import USER, OrthancServer


async def test_the_chair_finds_a_series_in_the_pacs_and_shares_it_with_the_room(
    serve_process: Any, chromium: OpenTab, orthanc: OrthancServer
) -> None:
    pacs = {
        "CONSILIUM_PACS_URL": orthanc.dicomweb_url,
        "CONSILIUM_PACS_USERNAME": USER,
        "CONSILIUM_PACS_PASSWORD_FILE": str(orthanc.password_file),
    }
    serve = serve_process(env={**ICE_ENV, **pacs})
    idp = DevelopmentIdP.load_or_create(serve.data_dir)
    chair_token = idp.mint(sub="dr-chen", role="chair", name="Dr Chen Wei",
                           depts=["oncology"], rooms=[ROOM])  # fmt: skip
    chair = await chromium(f"{serve.url}/join/{ROOM}#token={chair_token}")
    await join_from_the_prejoin_screen(chair)
    await chair.until("window.consilium.state().screen === 'room'")

    colleague_token = idp.mint(sub="dr-ana", role="specialist", name="Dr Ana Silva",
                               depts=["oncology"], rooms=[ROOM])  # fmt: skip
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(serve.url.replace("http", "ws", 1) + "/ws")
        await ws.send_json({"type": "join", "token": colleague_token, "room": ROOM})
        first = json.loads((await ws.receive(timeout=10)).data)
        if first["type"] == "lobby":  # the chair admits from the lobby list
            admit = chair.page.locator("#lobby-list .chair-admit")
            await admit.wait_for(state="visible", timeout=10_000)
            await admit.click()

        # The panel is there for the chair (a role that may search), folded.
        await chair.until("!document.getElementById('pacs-panel').hidden")
        await chair.page.click("#pacs-panel summary")
        await chair.page.fill("#pacs-search input[name=patient_id]", "PAT-0001")
        await chair.page.click("#pacs-search button[type=submit]")
        study = chair.page.locator("#pacs-results .pacs-study")
        await study.wait_for(state="visible", timeout=15_000)
        assert "Doe^Jane" in await study.inner_text()  # the searcher sees whom they picked
        await study.locator("button").first.click()
        share = chair.page.locator("#pacs-results .pacs-series button")
        await share.wait_for(state="visible", timeout=15_000)
        await share.click()

        await chair.until("window.consilium.state().images.length === 5", timeout_s=60)
        await chair.until("window.consilium.state().viewer?.scale > 0")  # a slice is shown
        progress = chair.page.locator("#pacs-progress")
        await chair.until("document.getElementById('pacs-progress').textContent.includes('5 of 5')")
        assert "Shared from the PACS" in await progress.inner_text()

        shared = []
        while len(shared) < 5:
            message = json.loads((await ws.receive(timeout=30)).data)
            if message["type"] == "image_shared":
                shared.append(message)
        assert all("Doe" not in json.dumps(m) and "PAT-0001" not in json.dumps(m) for m in shared)
        await ws.close()

    state = await page_state(chair)
    assert all("Doe" not in image["title"] for image in state["images"])
    await screenshot(chair, "pacs-shared")
    await no_axe_violations(chair, "PACS panel with results and progress")
    no_page_problems(chair)
