"""The meeting's annotations saved to the PACS from a real browser: Debian's Chromium, a real
`consilium serve` pointed at a real Orthanc (tests/fixtures/orthanc.py). The chair shares a
series from the PACS, draws an arrow on the slice in the viewer and clicks "Save annotations to
PACS"; the page says it is saved, and Orthanc holds a presentation state in the chair's name on
the original slice. Screenshot: test-output/web/pacs-annotations-saved.png."""

from __future__ import annotations

import asyncio
from io import BytesIO
from typing import Any

import aiohttp
from pydicom import dcmread

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
from tests.test_pacs_write_live import presentation_states
from tests.test_web_images import _drag


async def test_the_chair_saves_the_drawings_on_a_pacs_series_back_to_the_pacs(
    serve_process: Any, chromium: OpenTab, orthanc: OrthancServer
) -> None:
    pacs = {
        "CONSILIUM_PACS_URL": orthanc.dicomweb_url,
        "CONSILIUM_PACS_USERNAME": USER,
        "CONSILIUM_PACS_PASSWORD_FILE": str(orthanc.password_file),
    }
    serve = serve_process(env={**ICE_ENV, **pacs})
    idp = DevelopmentIdP.load_or_create(serve.data_dir)
    token = idp.mint(sub="dr-chen", role="chair", name="Dr Chen Wei", depts=["oncology"],
                     rooms=[ROOM], extra={"family_name": "Chen", "given_name": "Wei"})  # fmt: skip
    chair = await chromium(f"{serve.url}/join/{ROOM}#token={token}")
    await join_from_the_prejoin_screen(chair)
    await chair.until("window.consilium.state().screen === 'room'")

    series = next(s for s in orthanc.loaded if s.patient_id == "PAT-0001")
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{serve.url}/api/rooms/{ROOM}/pacs/shares",
            json={"study_uid": series.study_uid, "series_uid": series.series_uid},
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        assert response.status == 202, await response.text()
    await chair.until("window.consilium.state().images.length >= 1", timeout_s=60)
    await chair.until("window.consilium.state().viewer?.scale > 0")

    save = chair.page.locator("#image-pacs-save")
    await save.wait_for(state="visible", timeout=10_000)
    assert await save.is_disabled()  # nothing drawn yet
    await chair.page.click("#annotation-tools [data-tool='arrow']")
    await _drag(chair, (40, 40), (150, 120))
    await chair.until("window.consilium.state().annotations.shapes.length === 1")
    await chair.until("!document.getElementById('image-pacs-save').disabled")
    await save.click()
    await chair.until(
        "document.getElementById('pacs-save-status').textContent.includes('Saved to the PACS')",
        timeout_s=30,
    )
    image_id = (await page_state(chair))["viewer"]["imageId"]
    assert image_id

    states = await asyncio.to_thread(presentation_states, orthanc, series.study_uid)
    (state,) = [s for s in states if str(s.ContentCreatorName) == "Chen^Wei"]
    (annotation,) = state.GraphicAnnotationSequence
    assert annotation.GraphicObjectSequence[0].GraphicType == "POLYLINE"
    referenced = annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID
    instances = await asyncio.to_thread(
        orthanc.retrieve_series, series.study_uid, series.series_uid
    )
    assert referenced in {dcmread(BytesIO(instance)).SOPInstanceUID for instance in instances}
    await screenshot(chair, "pacs-annotations-saved")
    await no_axe_violations(chair, "image viewer with the PACS save button and its result")
    no_page_problems(chair)
