"""Bandwidth probing with a real Chromium subscriber: the browser, relay-only, reaches coturn
through nettest's proxy (its downlink rate-limited or not) and watches one simulcast camera
(`consilium bot --simulcast`: 160, 320 and 640 wide at 80, 267 and 800 kbps, keyframes only
when asked) in a large tile. The SFU starts it at 300 kbps (the 160-wide layer) and probes
its link with padding on the video's RTX stream, which Chromium counts into its transport
feedback and drops:

- a clean link: the top layer within seconds of joining, and it stays;
- a 500 kbps link: no burst of losses at join (the proxy's drops in the first 3 s of the
  subscribe session; before the start estimate, the SFU sent the 800 kbps layer at once);
- 3 Mbps, then 500 kbps, then 3 Mbps again: the top layer before the drop, a fitting layer
  soon after it (the time is printed: the aim is 2 s), the top layer again once the link
  returns.

Levels, not speed: generous windows, the figures printed for a human."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from nettest.impairment import Impairment
from nettest.udp_proxy import ImpairedUdpProxy
from tests.fixtures.browser import (
    ROOM,
    OpenTab,
    chair_schedules,
    join_from_the_prejoin_screen,
    open_through,
)
from tests.fixtures.servers import REPO, eventually
from tests.fixtures.turnserver import TURN_HOST, TurnServer
from tests.test_turn import relay_env

LAYER_BPS = {160: 80_000, 320: 267_000, 640: 800_000}
"""The bot's layers by width (bot.simulcast: 1/10, 1/3 and all of the camera's 800 kbps)."""

# Every 100 ms: [wall ms, frames decoded, width] of the camera the page receives.
SAMPLER = """
(() => {
  window.__samples = [];
  setInterval(async () => {
    if (!window.consilium?.stats) return;
    const stats = await window.consilium.stats();
    const video = stats.inbound.find((s) => s.kind === "video" && s.source === "camera"
                                          && s.framesDecoded > 0);
    if (video) window.__samples.push([Date.now(), video.framesDecoded, video.frameWidth]);
  }, 100);
})();
"""


def start_camera(url: str, data_dir: str, count: int = 1) -> subprocess.Popen[bytes]:
    """Simulcast bot cameras (one unless told) publishing into the room, in one process (they
    receive nothing)."""
    argv = [
        sys.executable, "-m", "consilium.cli", "bot", "--server", url, "--room", ROOM,
        "--count", str(count), "--prefix", "cam", "--data-dir", data_dir, "--no-subscribe",
        "--video-size", "640x360", "--video-bitrate", "800000", "--ice-address", "127.0.0.1",
        "--simulcast",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSILIUM_")}
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip


class Watcher:
    """What the page decoded: (wall ms, width) of each sample whose frame count moved."""

    def __init__(self, tab: OpenTab) -> None:
        self.tab = tab

    async def decoded(self, after_ms: float = 0) -> list[tuple[float, int]]:
        samples = await self.tab.page.evaluate("window.__samples")
        found, previous = [], None
        for at, frames, width in samples:
            if previous is not None and frames > previous and at > after_ms:
                found.append((at, width))
            previous = frames
        return found

    async def first(self, after_ms: float, fits: Any, timeout: float) -> float:
        """Seconds from `after_ms` until a decoded width satisfies `fits`."""

        async def check() -> float | None:
            hits = [at for at, width in await self.decoded(after_ms) if fits(width)]
            return (hits[0] - after_ms) / 1000 if hits else None

        return float(await eventually(check, timeout=timeout, interval=0.2))


@pytest.mark.parametrize("scenario", ["clean", "narrow", "dropping"])
async def test_probing_finds_a_chromium_subscribers_link(
    scenario: str,
    loopback_ice: None,
    turnserver: TurnServer,
    serve_process: Any,
    chromium: OpenTab,
) -> None:
    start_kbps = {"clean": None, "narrow": 500, "dropping": 3000}[scenario]
    proxy = ImpairedUdpProxy(
        (TURN_HOST, turnserver.port), up=Impairment(), down=Impairment(rate_kbps=start_kbps),
        seed=15,
    )  # fmt: skip
    await proxy.start()
    camera: subprocess.Popen[bytes] | None = None
    try:
        serve = serve_process(env=relay_env(turnserver.udp_url, turnserver.secret))
        _, chair = chair_schedules(serve)
        camera = start_camera(serve.url, str(serve.data_dir))
        impaired = f"turn:{TURN_HOST}:{proxy.port}?transport=udp"
        tab = await open_through(chromium, serve, chair, turnserver.udp_url, impaired, SAMPLER)
        joined_ms = time.time() * 1000
        await join_from_the_prejoin_screen(tab)
        await tab.until("window.consilium.state().connection.subscribe === 'connected'", 30)
        # The media starts as the subscribe session connects: its first 3 s through the link.
        dropped_at_join = asyncio.get_running_loop().create_task(_drops_after(proxy, 3.0))
        watcher = Watcher(tab)
        await watcher.first(joined_ms, lambda width: width > 0, timeout=30)

        if scenario == "clean":
            top_s = await watcher.first(joined_ms, lambda width: width >= 640, timeout=20)
            await asyncio.sleep(4)
            late = [width for _, width in await watcher.decoded(time.time() * 1000 - 3000)]
            print(f"\nclean: the top layer {top_s:.1f} s after joining; then {late[-10:]}")
            assert late and sum(w >= 640 for w in late) >= 0.8 * len(late), late
        elif scenario == "narrow":
            dropped = await dropped_at_join
            await asyncio.sleep(3)
            widths = [width for _, width in await watcher.decoded(time.time() * 1000 - 3000)]
            print(f"\n500 kbps: {dropped} datagrams dropped in the first 3 s connected;",
                  f"link {proxy.counters['down']}; decoded widths {widths[-10:]}")  # fmt: skip
            assert dropped < 50, "the start estimate: no flood at join"
            assert widths and max(widths) <= 320, "it stays on layers its link carries"
        else:
            # The top layer (800 kbps): it does not fit 500 kbps, so the drop must move it.
            high_s = await watcher.first(joined_ms, lambda width: width >= 640, timeout=25)
            await asyncio.sleep(2)
            dropped_ms = time.time() * 1000
            proxy.down.impairment = Impairment(rate_kbps=500)
            switch_s = await watcher.first(
                dropped_ms, lambda width: LAYER_BPS.get(width, 800_000) + 40_000 <= 500_000,
                timeout=10,
            )  # fmt: skip
            await asyncio.sleep(3)
            returned_ms = time.time() * 1000
            proxy.down.impairment = Impairment(rate_kbps=3000)
            back_s = await watcher.first(returned_ms, lambda width: width >= 640, timeout=25)
            print(f"\n3 Mbps: the top layer {high_s:.1f} s after joining; at 500 kbps a fitting",
                  f"layer after {switch_s:.2f} s; at 3 Mbps again the top one after",
                  f"{back_s:.1f} s")  # fmt: skip
    finally:
        if camera is not None:
            camera.kill()
            camera.wait()
        proxy.close()


async def _drops_after(proxy: ImpairedUdpProxy, seconds: float) -> int:
    await asyncio.sleep(seconds)
    return proxy.counters["down"].dropped
