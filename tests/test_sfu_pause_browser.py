"""A link too narrow for every camera, with a real Chromium subscriber: the SFU pauses the
least important cameras for that subscriber alone (`sfu.pausing`), its page says so on their
tiles, the rest keep moving, and everything resumes when the link does.

Four simulcast cameras (`consilium bot --simulcast --count 4`: 160, 320 and 640 wide at 80,
267 and 800 kbps, a 32 kbps tone each) and the chair's Chromium, relay-only through coturn
behind nettest's proxy. Counted as the proxy counts them (TURN's per-packet framing included),
each microphone takes ~60 kbps and each lowest layer ~120 kbps: four of each ~720 kbps, more
than the 480 kbps the link drops to; the four microphones and one camera (~370 kbps) fit, two
cameras (~490 kbps) do not. Before pausing, every picture froze on such a link (a third of the
packets lost, retransmissions and keyframes adding to it). (At 350 kbps even the four
microphones and one camera are over the link now and then: the kept camera froze too.)"""

from __future__ import annotations

import subprocess
from typing import Any

from nettest.impairment import Impairment
from nettest.udp_proxy import ImpairedUdpProxy
from tests.fixtures.browser import (
    OpenTab,
    chair_schedules,
    join_from_the_prejoin_screen,
    open_through,
)
from tests.fixtures.servers import eventually
from tests.fixtures.turnserver import TURN_HOST, TurnServer
from tests.test_sfu_probe_browser import start_camera
from tests.test_turn import relay_env

CAMERAS = 4
NARROW_KBPS = 480
PAUSED_WORDS = "Video paused: your connection cannot carry it now"

# Per camera tile: its participant, whether it is marked paused, the words it shows, whether its
# picture is hidden behind the placeholder, and the frames decoded of that camera so far.
TILES = """
async () => {
  const stats = await window.consilium.stats();
  const frames = new Map(stats.inbound
    .filter((s) => s.kind === "video" && s.source === "camera")
    .map((s) => [s.participantId, s.framesDecoded]));
  const me = window.consilium.state().participantId;
  return [...document.querySelectorAll("figure.tile[data-source='camera']")]
    .filter((f) => f.dataset.participantId !== me)
    .map((f) => ({
      participant: f.dataset.participantId,
      paused: f.dataset.paused === "true",
      words: f.querySelector(".tile-reason").textContent,
      placeholder: !f.querySelector(".tile-placeholder").hidden,
      frames: frames.get(f.dataset.participantId) ?? 0,
    }));
}
"""


async def test_a_link_too_narrow_for_every_camera_pauses_some_and_says_so(
    loopback_ice: None,
    turnserver: TurnServer,
    serve_process: Any,
    chromium: OpenTab,
) -> None:
    proxy = ImpairedUdpProxy((TURN_HOST, turnserver.port), seed=15)
    await proxy.start()
    cameras: subprocess.Popen[bytes] | None = None
    try:
        serve = serve_process(env=relay_env(turnserver.udp_url, turnserver.secret))
        _, chair = chair_schedules(serve)
        cameras = start_camera(serve.url, str(serve.data_dir), CAMERAS)
        impaired = f"turn:{TURN_HOST}:{proxy.port}?transport=udp"
        tab = await open_through(chromium, serve, chair, turnserver.udp_url, impaired)
        await join_from_the_prejoin_screen(tab)

        async def tiles() -> list[dict[str, Any]]:
            return list(await tab.page.evaluate(TILES))

        async def every_camera_moving() -> bool:
            before = {t["participant"]: t["frames"] for t in await tiles()}
            await tab.page.wait_for_timeout(500)
            after = await tiles()
            return len(after) == CAMERAS and all(
                t["frames"] > before.get(t["participant"], 0) > 0 and not t["paused"] for t in after
            )

        await eventually(every_camera_moving, timeout=60, interval=0.5)
        assert not any(t["paused"] for t in await tiles())

        proxy.down.impairment = Impairment(rate_kbps=NARROW_KBPS)

        async def some_paused() -> list[dict[str, Any]] | None:
            now = await tiles()
            return now if any(t["paused"] for t in now) else None

        narrow = await eventually(some_paused, timeout=15, interval=0.3)
        paused = [t for t in narrow if t["paused"]]
        assert len(paused) < CAMERAS, "one camera is always kept"
        for tile in paused:
            assert tile["words"] == PAUSED_WORDS, tile
            assert tile["placeholder"], "the frozen picture is not left on show"
        # Settled: the cameras still sent keep moving on that link.
        await tab.page.wait_for_timeout(4000)
        first = {t["participant"]: t for t in await tiles()}
        await tab.page.wait_for_timeout(2000)
        later = await tiles()
        kept = [t for t in later if not t["paused"]]
        assert kept, later
        moving = [t for t in kept if t["frames"] > first[t["participant"]]["frames"]]
        assert moving, f"the kept cameras decode on the narrow link: {later}"
        print(f"\n{NARROW_KBPS} kbps: {sum(t['paused'] for t in later)} of {CAMERAS} cameras",
              f"paused, {len(moving)} kept moving; link {proxy.counters['down']}")  # fmt: skip

        proxy.down.impairment = Impairment()
        try:
            await eventually(every_camera_moving, timeout=60, interval=0.5)
        except AssertionError:
            decisions = [line for line in serve.output().splitlines() if "paused for" in line]
            raise AssertionError(
                f"not every camera resumed and moving 60 s after the link came back: "
                f"{await tiles()}; the node's decisions: {decisions[-12:]}"
            ) from None
        assert not any(t["paused"] for t in await tiles()), "every camera resumed"
    finally:
        if cameras is not None:
            cameras.kill()
            cameras.wait()
        proxy.close()
