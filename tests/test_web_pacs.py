"""Images from the PACS in a real browser: Debian's Chromium, a real `consilium serve` pointed at a
real Orthanc (tests/fixtures/orthanc.py). The chair searches by patient id in the images area,
opens the study's series and shares it with a click; the series appears as ONE entry in the
chair's list and viewer, its slices arriving, and the chair scrolls through them (buttons, the
keyboard, the slider) while a colleague on a signalling WebSocket hears of the one growing image,
de-identified, and the room's progress line ends in "shared".
Screenshot: test-output/web/pacs-shared.png."""

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


def order_id(state: dict[str, Any]) -> str:
    (image,) = state["images"]
    return str(image["image_id"])


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

        await chair.until("window.consilium.state().images[0]?.frames === 5", timeout_s=60)
        await chair.until("window.consilium.state().viewer?.scale > 0")  # a slice is shown
        progress = chair.page.locator("#pacs-progress")
        await chair.until("document.getElementById('pacs-progress').textContent.includes('5 of 5')")
        assert "Shared from the PACS" in await progress.inner_text()
        # One entry in the list: the series, with its slices.
        assert await chair.page.locator("#image-list li").count() == 1
        assert "5 slices" in await chair.page.locator("#image-list li").inner_text()
        await chair.until("!window.consilium.state().images[0].frames_pending")

        # Scroll through it: the label counts slices in anatomical order; the frame shown is
        # the one slice_order names at that place.
        await chair.until("document.getElementById('image-frame').textContent === 'Slice 1 of 5'")
        order = await chair.page.evaluate("window.consilium.state().images[0].slice_order")
        assert sorted(order) == [0, 1, 2, 3, 4]
        assert await chair.page.evaluate("window.consilium.state().viewer.frame") == order[0]
        await chair.page.click("#image-next")
        await chair.until("document.getElementById('image-frame').textContent === 'Slice 2 of 5'")
        assert await chair.page.evaluate("window.consilium.state().viewer.frame") == order[1]
        await chair.page.focus("#image-canvas")
        await chair.page.keyboard.press("PageDown")
        await chair.until("document.getElementById('image-frame').textContent === 'Slice 3 of 5'")
        await chair.page.locator("#image-slice").fill("4")  # the slider: straight to the last
        await chair.until("document.getElementById('image-frame').textContent === 'Slice 5 of 5'")
        assert await chair.page.evaluate("window.consilium.state().viewer.frame") == order[4]
        await chair.page.click("#image-previous")
        await chair.until("document.getElementById('image-frame').textContent === 'Slice 4 of 5'")
        assert await chair.page.evaluate("window.consilium.state().viewer.frame") == order[3]
        await chair.until("window.consilium.state().viewer.scale > 0")

        shared = []
        while not shared or shared[-1]["frames"] < 5 or shared[-1].get("frames_pending"):
            message = json.loads((await ws.receive(timeout=30)).data)
            if message["type"] == "image_shared":
                shared.append(message)
        assert {m["image_id"] for m in shared} == {order_id(await page_state(chair))}
        assert all("Doe" not in json.dumps(m) and "PAT-0001" not in json.dumps(m) for m in shared)
        await ws.close()

    state = await page_state(chair)
    assert all("Doe" not in image["title"] for image in state["images"])
    await screenshot(chair, "pacs-shared")
    await no_axe_violations(chair, "PACS panel with results and progress")
    no_page_problems(chair)
