"""Simulcast end to end with real Chromium: the web client publishes its camera in layers (rid q,
h, f), and an aiortc subscriber joined over the real WebSocket gets the layer its tile needs,
as one continuous stream it decodes throughout: a thumbnail gets the lowest layer the browser
sends, a large tile the highest, a hidden tile nothing."""

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
from tests.test_sfu_simulcast_live import ReceivedSequence

# The camera's outbound streams, by RID: what the browser is sending of each layer.
OUTBOUND_LAYERS = """
(async () => {
  const layers = {};
  for (const pc of window.__watchedPcs ?? []) {
    (await pc.getStats()).forEach((s) => {
      if (s.type === "outbound-rtp" && s.kind === "video" && s.rid) {
        layers[s.rid] = { width: s.frameWidth ?? 0, frames: s.framesEncoded ?? 0 };
      }
    });
  }
  return layers;
})()
"""

WATCHED_PEER_CONNECTIONS = """
(() => {
  const Original = window.RTCPeerConnection;
  window.__watchedPcs = [];
  window.RTCPeerConnection = function (config = {}) {
    const pc = new Original(config);
    window.__watchedPcs.push(pc);
    return pc;
  };
  window.RTCPeerConnection.prototype = Original.prototype;
})();
"""


def _width(viewer: Participant) -> int:
    return next((t.width for t in viewer.client.stats.tracks.values() if t.kind == "video"), 0)


def _frames(viewer: Participant) -> int:
    return viewer.client.stats.frames("video")


def _camera_mid(viewer: Participant) -> str:
    return next(
        str(t.mid) for t in viewer.client.subscribe_pc.getTransceivers()
        if t.kind == "video" and t.mid is not None
    )  # fmt: skip


async def _show(viewer: Participant, mid: str, size: tuple[int, int]) -> None:
    await viewer.ws.send_json({"type": "render_sizes", "sizes": {mid: list(size)}})


async def test_a_browser_camera_in_layers_reaches_each_tile_in_the_layer_it_needs(
    serve_process: Any, chromium: OpenTab, loopback_ice: None
) -> None:
    serve = serve_process(env=ICE_ENV)
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

            # The top layer starts once the browser's estimate (transport-cc) allows it.
            async def encoding_all() -> dict[str, Any] | None:
                sent = await tab.page.evaluate(OUTBOUND_LAYERS)
                return sent if len(sent) > 1 and all(s["frames"] for s in sent.values()) else None

            sent = await eventually(encoding_all, timeout=30, interval=0.5)
            # A 640x360 camera (what the client asks for) in two layers: three would cost it
            # its full picture (web/js/media.js, cameraEncodings).
            assert set(sent) == {"h", "f"}, sent
            active = {rid: layer["width"] for rid, layer in sent.items()}
            smallest, largest = min(active.values()), max(active.values())
            print("\nlayers the browser sends (rid: width):", active)

            received = ReceivedSequence(viewer.client)
            mid = _camera_mid(viewer)
            await _show(viewer, mid, (smallest, smallest * 9 // 16))  # a thumbnail
            await eventually(lambda: _width(viewer) == smallest, timeout=15)
            frames = _frames(viewer)
            await eventually(lambda: _frames(viewer) > frames + 20, timeout=15)

            await _show(viewer, mid, (1920, 1080))  # shown large
            await eventually(lambda: _width(viewer) == largest, timeout=15)
            frames = _frames(viewer)
            await eventually(lambda: _frames(viewer) > frames + 20, timeout=15)
            assert len(received.ssrcs) == 1, "the layers reach the subscriber as one stream"
            assert received.gaps() == 0, "sequence numbers continue across the switches"

            await _show(viewer, mid, (0, 0))  # hidden
            await asyncio.sleep(0.5)  # what was already on its way
            count = len(received.numbers)
            await asyncio.sleep(1.5)
            assert len(received.numbers) == count, "nothing is forwarded to a hidden tile"

            await _show(viewer, mid, (smallest, smallest * 9 // 16))
            frames = _frames(viewer)
            await eventually(lambda: _frames(viewer) > frames + 10, timeout=15)
            assert _width(viewer) == smallest
            assert not [m for m in viewer.messages if m["type"] == "error"]
        finally:
            await viewer.close()
            await ws.close()
    no_page_problems(tab)
