"""H.264 simulcast end to end with real Chromium (Debian's: OpenH264 encodes, one encoder per
layer): in a room whose video codec is H.264 the web client publishes its camera in layers, and
an aiortc subscriber joined over the real WebSocket gets the layer its tile needs as one
continuous stream it decodes throughout. H.264 has no picture id to renumber: a switch happens
at the new layer's keyframe (its SPS, PPS and IDR picture; `core.media.keyframes`), with
sequence numbers and timestamps continuing, and each layer's picture size is read from its SPS
(`core.media.h264_sps`), which is how a thumbnail gets the small layer.

What kept these tests failing now and then (sequence numbers missing, no switch seen): the
browser pads its sending rate by resending recent packets over RTX, and the SFU forwarded each
as a second copy of a number the subscriber had (`PublishedTrack.is_duplicate` drops them)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from signaling.devidp import DevelopmentIdP
from tests.fixtures.browser import (
    ICE_ENV,
    ROOM,
    OpenTab,
    join_from_the_prejoin_screen,
    no_page_problems,
    schedule_room,
)
from tests.fixtures.media import Participant
from tests.fixtures.servers import eventually
from tests.test_sfu_simulcast_browser import (
    WATCHED_PEER_CONNECTIONS,
    _camera_mid,
    _frames,
    _show,
    _width,
)
from tests.test_sfu_simulcast_live import ReceivedSequence

# The camera's outbound streams, by RID: each layer's size, frames, codec and encoder.
OUTBOUND_LAYERS = """
(async () => {
  const layers = {};
  for (const pc of window.__watchedPcs ?? []) {
    const report = await pc.getStats();
    report.forEach((s) => {
      if (s.type === "outbound-rtp" && s.kind === "video" && s.rid) {
        layers[s.rid] = {
          width: s.frameWidth ?? 0, frames: s.framesEncoded ?? 0,
          codec: report.get(s.codecId)?.mimeType ?? "", encoder: s.encoderImplementation ?? "",
        };
      }
    });
  }
  return layers;
})()
"""


async def test_a_browser_camera_in_h264_layers_is_forwarded_as_one_stream(
    serve_process: Any, chromium: OpenTab, loopback_ice: None
) -> None:
    await _h264_simulcast(serve_process, chromium, switching=False)


async def test_a_browser_camera_in_h264_layers_reaches_each_tile_in_the_layer_it_needs(
    serve_process: Any, chromium: OpenTab, loopback_ice: None
) -> None:
    await _h264_simulcast(serve_process, chromium, switching=True)


async def _h264_simulcast(serve_process: Any, chromium: OpenTab, *, switching: bool) -> None:
    serve = serve_process(env={**ICE_ENV, "CONSILIUM_VIDEO_CODECS": "H264"})
    idp = DevelopmentIdP.load_or_create(serve.data_dir)

    def token(sub: str, name: str) -> str:
        return idp.mint(sub=sub, role="chair", name=name, depts=["oncology"], rooms=[ROOM])

    chair_token = token("dr-chen", "Dr Chen Wei")
    schedule_room(serve.url, chair_token, ROOM)
    tab = await chromium("about:blank")
    await tab.context.add_init_script(WATCHED_PEER_CONNECTIONS)
    await tab.page.goto(f"{serve.url}/join/{ROOM}#token={chair_token}")
    await join_from_the_prejoin_screen(tab)
    await tab.until("window.consilium.state().connection.publish === 'connected'", 20)

    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(serve.url.replace("http", "ws", 1) + "/ws")
        await ws.send_json({"type": "join", "token": token("dr-osei", "Dr Osei"), "room": ROOM})
        joined = json.loads((await ws.receive(timeout=10)).data)
        assert joined["type"] == "joined", joined
        viewer = Participant(ws, joined, [])  # watches only: the aiortc subscriber
        try:
            await viewer.client.publish()
            await eventually(lambda: _frames(viewer) > 10, timeout=30)

            async def encoding_all() -> dict[str, Any] | None:
                sent = await tab.page.evaluate(OUTBOUND_LAYERS)
                return sent if len(sent) > 1 and all(s["frames"] for s in sent.values()) else None

            sent = await eventually(encoding_all, timeout=30, interval=0.5)
            print("\nH.264 layers the browser sends:", sent)
            assert set(sent) == {"h", "f"}, sent
            assert {layer["codec"] for layer in sent.values()} == {"video/H264"}, sent
            active = {rid: layer["width"] for rid, layer in sent.items()}
            smallest, largest = min(active.values()), max(active.values())
            assert smallest < largest, active

            top = max(sent, key=lambda rid: sent[rid]["width"])

            async def top_layer_sending() -> bool:
                """The browser encodes its top layer now (its estimate may pause it a while:
                then no SFU can forward it)."""
                before = (await tab.page.evaluate(OUTBOUND_LAYERS))[top]["frames"]
                await asyncio.sleep(1.0)
                return bool((await tab.page.evaluate(OUTBOUND_LAYERS))[top]["frames"] > before + 10)

            received = ReceivedSequence(viewer.client, "H264")
            mid = _camera_mid(viewer)
            if not switching:  # the layer chosen at first, decoded as one stream
                frames = _frames(viewer)
                await eventually(lambda: _frames(viewer) > frames + 60, timeout=20)
                assert _width(viewer) in active.values()
                assert len(received.ssrcs) == 1 and received.gaps() == 0
                return
            # Shown large first: the link has room for the top layer ...
            await eventually(top_layer_sending, timeout=30)
            await _show(viewer, mid, (1920, 1080))
            await eventually(lambda: _width(viewer) == largest, timeout=20)
            frames = _frames(viewer)
            await eventually(lambda: _frames(viewer) > frames + 20, timeout=15)

            # ... so only the layers' sizes (from their SPS) can say a thumbnail needs less.
            await _show(viewer, mid, (smallest, smallest * 9 // 16))
            await eventually(lambda: _width(viewer) == smallest, timeout=15)
            frames = _frames(viewer)
            await eventually(lambda: _frames(viewer) > frames + 20, timeout=15)

            await eventually(top_layer_sending, timeout=30)
            await _show(viewer, mid, (1920, 1080))  # and large again
            await eventually(lambda: _width(viewer) == largest, timeout=15)
            frames = _frames(viewer)
            await eventually(lambda: _frames(viewer) > frames + 20, timeout=15)
            assert len(received.ssrcs) == 1, "the layers reach the subscriber as one stream"
            assert received.gaps() == 0, "sequence numbers continue across the switches"
            assert not [m for m in viewer.messages if m["type"] == "error"]
        finally:
            await viewer.close()
            await ws.close()
    no_page_problems(tab)
