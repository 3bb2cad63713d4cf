"""Simulcast with Firefox ESR in the room, end to end: Firefox publishes its (fake) camera in the
client's simulcast layers and the SFU forwards Chromium's tiles the layer each needs; and
Firefox, as a subscriber, reports its tiles' sizes (`render_sizes`) and gets the layer its tile
needs of Chromium's camera. The picture height each page decodes (and the frameWidth of its
inbound-rtp stats) tells which layer arrived. And Firefox restarts ICE on its existing sessions
when its network changes (relay-only, through coturn), as tests/test_web_ice_restart.py does
with Chromium."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
from typing import Any

import pytest

from nettest.udp_proxy import ImpairedUdpProxy
from tests.fixtures.browser import ICE_ENV, BrowserTab, OpenTab, tile
from tests.fixtures.firefox import FirefoxTab, OpenFirefox
from tests.fixtures.turnserver import TURN_HOST, TurnServer
from tests.test_firefox import (
    MixedMeeting,
    diagnosis,
    evaluate,
    meet_chromium_and_firefox,
    received_from,
)
from tests.test_sfu_simulcast_browser import WATCHED_PEER_CONNECTIONS
from tests.test_turn import relay_env
from tests.test_web_ice_restart import NETWORK, turn_url

needs_layers = pytest.mark.skipif(
    importlib.util.find_spec("sfu.layered") is None,
    reason="the SFU forwards no simulcast layers here (sfu/layered.py)",
)

# The RIDs and heights of what a page's camera sender is set up to send (its parameters, not
# its stats: what the client asked for and the browser accepted).
CAMERA_ENCODINGS = """
(() => {
  for (const pc of window.__watchedPcs ?? []) {
    for (const sender of pc.getSenders()) {
      if (sender.track?.kind !== "video") continue;
      const height = sender.track.getSettings().height;
      return {
        height,
        encodings: sender.getParameters().encodings.map((e) => ({
          rid: e.rid ?? null,
          height: Math.round(height / (e.scaleResolutionDownBy ?? 1)),
        })),
      };
    }
  }
  return null;
})()
"""


async def picture_height(tab: BrowserTab | FirefoxTab, participant_id: str) -> int:
    """The height of the picture the page decodes in that person's camera tile."""
    video = json.dumps(f"{tile(participant_id)} video")
    return int(await evaluate(tab, f"document.querySelector({video})?.videoHeight ?? 0"))


async def until_picture(
    meeting: MixedMeeting, tab: BrowserTab | FirefoxTab, pid: str, height: int, what: str
) -> None:
    """The tile shows a picture `height` lines high (the SFU switched layer at a keyframe)."""
    video = json.dumps(f"{tile(pid)} video")
    try:
        await tab.until(f"document.querySelector({video})?.videoHeight === {height}", 20)
    except AssertionError:
        seen = await picture_height(tab, pid)
        raise AssertionError(
            f"{what}: a picture {seen} lines high, not {height}\n{await diagnosis(meeting)}"
        ) from None


async def inbound_frame_width(tab: BrowserTab | FirefoxTab, sender: str) -> int:
    """frameWidth of the page's inbound-rtp video from `sender` (the browser's decoder stats,
    not the element; `window.consilium.stats()` reports the width only)."""
    stats = await evaluate(tab, "window.consilium.stats()")
    video = [s for s in stats["inbound"] if s["participantId"] == sender and s["kind"] == "video"]
    return int(video[0]["frameWidth"]) if video else 0


def width_of(height: int) -> int:
    """The width of a layer `height` lines high of the tests' 16:9 cameras (640x360)."""
    return height * 16 // 9


@needs_layers
async def test_firefox_publishes_its_camera_in_layers_and_chromium_tiles_get_the_one_they_need(
    serve_process: Any, chromium: OpenTab, firefox: OpenFirefox
) -> None:
    meeting = await meet_chromium_and_firefox(
        serve_process(env=ICE_ENV),
        chromium,
        firefox,
        firefox_preload=f"if (window.RTCPeerConnection) {WATCHED_PEER_CONNECTIONS}",
    )
    chair, specialist, pid = meeting.chair, meeting.specialist, meeting.specialist_id
    # Firefox accepted the client's layers: its camera sender carries RIDs.
    sending = await specialist.evaluate(CAMERA_ENCODINGS)
    assert sending is not None, await diagnosis(meeting)
    rids = [e["rid"] for e in sending["encodings"]]
    print("\nFirefox's camera encodings:", sending)
    assert len(rids) >= 2 and None not in rids, sending
    heights = [e["height"] for e in sending["encodings"]]
    full, low = max(heights), min(heights)
    assert full > low

    # Chromium's speaker view: Firefox's person large, the full picture.
    await chair.page.click("#layout-button")
    await chair.until("document.getElementById('grid').dataset.layout === 'speaker'")
    await until_picture(meeting, chair, pid, full, "Firefox large in Chromium's speaker view")
    # The chair pins their own tile: Firefox's person is a thumbnail, the low layer.
    await chair.page.click(f"{tile(meeting.chair_id)} .tile-pin")
    await chair.until("document.getElementById('grid').dataset.layout === 'pinned'")
    await until_picture(meeting, chair, pid, low, "Firefox as a thumbnail in Chromium")
    assert await inbound_frame_width(chair, pid) == width_of(low)
    # Large again: the full picture again.
    await chair.page.click(f"{tile(meeting.chair_id)} .tile-pin")
    await until_picture(meeting, chair, pid, full, "Firefox large again in Chromium")
    assert specialist.page_errors == []


@needs_layers
async def test_firefox_reports_its_tile_sizes_and_gets_the_layer_of_chromiums_camera_they_need(
    serve_process: Any, chromium: OpenTab, firefox: OpenFirefox
) -> None:
    meeting = await meet_chromium_and_firefox(serve_process(env=ICE_ENV), chromium, firefox)
    chair, specialist, cid = meeting.chair, meeting.specialist, meeting.chair_id
    # Chromium's camera: 640x360 in two layers (web/js/media.js), 360 and 180 lines.
    full, low = 360, 180

    await specialist.click("#layout-button")
    await specialist.until("document.getElementById('grid').dataset.layout === 'speaker'")
    # In Firefox's speaker view the speaker is whoever spoke last: pin the chair to be sure.
    await specialist.click(f"{tile(cid)} .tile-pin")
    await specialist.until("document.getElementById('grid').dataset.layout === 'pinned'")
    await until_picture(meeting, specialist, cid, full, "Chromium pinned large in Firefox")
    # Firefox pins its own tile: Chromium's person is a thumbnail of the strip.
    await specialist.click(f"{tile(meeting.specialist_id)} .tile-pin")
    await until_picture(meeting, specialist, cid, low, "Chromium as a thumbnail in Firefox")
    assert await inbound_frame_width(specialist, cid) == width_of(low)
    # Chromium large again.
    await specialist.click(f"{tile(cid)} .tile-pin")
    await until_picture(meeting, specialist, cid, full, "Chromium large again in Firefox")
    assert await inbound_frame_width(specialist, cid) == width_of(full)
    assert specialist.page_errors == []
    assert (await evaluate(chair, "window.consilium.state()"))["errors"] == []


async def firefox_frames_both_ways(meeting: MixedMeeting) -> tuple[int, int]:
    """Video frames decoded (Chromium's of Firefox's camera, Firefox's of Chromium's)."""
    at_chair = (await received_from(meeting.chair, meeting.specialist_id)).get("video", {})
    at_specialist = (await received_from(meeting.specialist, meeting.chair_id)).get("video", {})
    return at_chair.get("framesDecoded", 0), at_specialist.get("framesDecoded", 0)


async def test_firefox_restarts_ice_on_a_new_network_and_media_comes_back_without_rejoining(
    turnserver: TurnServer, serve_process: Any, chromium: OpenTab, firefox: OpenFirefox
) -> None:
    """As tests/test_web_ice_restart.py with Firefox as the person whose network changes:
    relay-only through coturn, the first network (a UDP proxy) goes away, the page restarts ICE
    on its existing sessions through the second, and media comes back both ways."""
    first, second = ImpairedUdpProxy((TURN_HOST, turnserver.port)), None
    await first.start()
    try:
        serve = serve_process(env=relay_env(turnserver.udp_url, turnserver.secret))
        network = NETWORK % json.dumps([turnserver.udp_url, turn_url(first.port)])
        meeting = await meet_chromium_and_firefox(
            serve, chromium, firefox, firefox_preload=f"if (window.RTCPeerConnection) {network}"
        )
        specialist = meeting.specialist
        before = await specialist.evaluate("window.consilium.state()")

        second = ImpairedUdpProxy((TURN_HOST, turnserver.port), seed=2)
        await second.start()
        first.close()  # the first network is gone: nothing more crosses it
        frames = await firefox_frames_both_ways(meeting)
        route = json.dumps(turn_url(second.port))
        await specialist.evaluate(
            f"(() => {{ window.__changeNetwork({route}, {route});"
            " window.dispatchEvent(new Event('online')); })()"
        )
        deadline = time.monotonic() + 20
        while (now := await firefox_frames_both_ways(meeting)) and not (
            now[0] > frames[0] + 10 and now[1] > frames[1] + 10
        ):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"media did not come back both ways\n{await diagnosis(meeting)}"
                )
            await asyncio.sleep(0.2)
        await specialist.until("window.consilium.state().iceRestartMs !== undefined", 10)
        after = await specialist.evaluate("window.consilium.state()")
        print(
            f"\nFirefox's ICE restart: both sessions on a new pair after {after['iceRestartMs']} ms"
        )
        # The same participant: no rejoin, no lobby; the restart, not its fallback.
        assert after["participantId"] == before["participantId"] == meeting.specialist_id
        assert after["received"].get("joined") == 1 and after["received"].get("lobby") == 1
        assert after["iceRestarts"] == 1 and "iceRestartFallbacks" not in after
        # Media really crossed the second network, relayed both ways.
        await asyncio.sleep(3)
        up, down = second.counters["up"], second.counters["down"]
        assert up.passed_bytes > 30_000 and down.passed_bytes > 30_000, second.counters
        stats = await specialist.evaluate("window.consilium.stats()")
        assert {p["candidateType"] for p in stats["paths"].values()} == {"relay"}
        assert specialist.page_errors == []
    finally:
        first.close()
        if second is not None:
            second.close()
