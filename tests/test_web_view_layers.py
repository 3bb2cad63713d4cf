"""The layout picks the layer, end to end with two real Chromiums: the specialist's browser
publishes its camera in simulcast layers, the chair's page tells the SFU the size of each tile
(web/js/view.js, `render_sizes`), and the SFU forwards the layer that tile needs: the large tile of
the speaker view the full picture, a thumbnail of the strip the low layer, a hidden page nothing
(and the picture again when it shows).

Needs the SFU's simulcast forwarding (sfu/layered.py); skipped where the SFU has none."""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

import pytest

from tests.fixtures.browser import (
    ICE_ENV,
    BrowserTab,
    diagnosis,
    meet_through_the_lobby,
    no_page_problems,
    page_state,
    received_from,
    tile,
)
from tests.test_web_view_live import PAGE_HIDDEN

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("sfu.layered") is None,
    reason="the SFU forwards no simulcast layers here (sfu/layered.py)",
)

FULL, LOW = 360, 180
"""The picture heights of the camera's layers (devices.js asks for 640x360; web/js/media.js
sends two layers of it, the full picture and half of it)."""


async def picture_height(tab: BrowserTab, participant_id: str) -> int:
    return int(await tab.page.evaluate(f'document.querySelector("{tile(participant_id)} video")'
                                       ".videoHeight"))  # fmt: skip


async def until_picture(tab: BrowserTab, participant_id: str, height: int, what: str) -> None:
    """The tile shows a picture `height` lines high (the SFU switched layer at a keyframe)."""
    try:
        await tab.until(
            f'document.querySelector("{tile(participant_id)} video").videoHeight === {height}', 20
        )
    except AssertionError:
        seen = await picture_height(tab, participant_id)
        raise AssertionError(f"{what}: a picture {seen} lines high, not {height}") from None


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_the_large_tile_gets_the_full_picture_a_thumbnail_the_low_layer(
    codec: str, serve_process: Any, chromium: Any
) -> None:
    """In a VP8 room and in an H.264 room (Debian's Chromium encodes each H.264 layer with
    OpenH264; a switch happens at the new layer's SPS, PPS and IDR picture)."""
    env = {**ICE_ENV, "CONSILIUM_VIDEO_CODECS": codec}
    meeting = await meet_through_the_lobby(serve_process(env=env), chromium)
    chair, pid = meeting.chair, meeting.specialist_id
    try:
        # The speaker view: the specialist large, the full picture.
        await chair.page.click("#layout-button")
        await chair.until("document.getElementById('grid').dataset.layout === 'speaker'")
        await until_picture(chair, pid, FULL, "large in the speaker view")
        video = (await received_from(chair, pid))["video"]
        assert video["codec"] == f"video/{codec}", video

        # My own tile pinned: the specialist is a thumbnail of the strip, the low layer.
        await chair.page.click(f"{tile(meeting.chair_id)} .tile-pin")
        await chair.until("document.getElementById('grid').dataset.layout === 'pinned'")
        await until_picture(chair, pid, LOW, "a thumbnail")

        # Large again: the full picture again.
        await chair.page.click(f"{tile(meeting.chair_id)} .tile-pin")
        await until_picture(chair, pid, FULL, "large again")

        # The page hidden: the specialist's video stops coming; shown again, it comes back.
        await chair.page.evaluate(PAGE_HIDDEN, True)
        await asyncio.sleep(1.5)  # the report settles, the SFU stops forwarding
        before = (await received_from(chair, pid))["video"]["packetsReceived"]
        await asyncio.sleep(2)
        after = (await received_from(chair, pid))["video"]["packetsReceived"]
        assert after - before < 10, (before, after)  # a few in flight at most, not ~100 a second
        await chair.page.evaluate(PAGE_HIDDEN, False)
        decoded = (await received_from(chair, pid))["video"]["framesDecoded"]
        await chair.until(
            "window.consilium.stats().then((s) => s.inbound.find((i) => i.kind === 'video'"
            f" && i.participantId === '{pid}').framesDecoded > {decoded + 10})",
            20,
        )
        no_page_problems(chair)
        assert (await page_state(chair))["errors"] == []
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{await diagnosis(meeting)}") from None
