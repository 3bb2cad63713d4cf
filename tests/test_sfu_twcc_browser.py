"""Transport-cc with real Chromium: a publishing browser gets the SFU's transport feedback, and its
own estimator (GCC) runs off it: `availableOutgoingBitrate` on the publish session's candidate
pair is sensible on loopback, and through TURN it stays near the link rate on a 400 kbps uplink
where a clean one lets it climb well above (nettest's proxy in front of coturn, the browser
relay-only)."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from typing import Any

import pytest

from nettest.impairment import link
from nettest.udp_proxy import ImpairedUdpProxy
from tests.fixtures.browser import (
    ICE_ENV,
    BrowserTab,
    OpenTab,
    chair_schedules,
    join_from_the_prejoin_screen,
    open_through,
)
from tests.fixtures.servers import ServeProcess
from tests.fixtures.turnserver import TURN_HOST, TurnServer
from tests.test_turn import relay_env

# Every peer connection the page makes is kept for the test to read its stats; the TURN URL
# `direct` (when given) is replaced by `impaired`, the proxy's.
# The publish session's selected candidate pair: what the browser's estimator says it may send.
OUTGOING_ESTIMATE = """
(async () => {
  for (const pc of window.__watchedPcs ?? []) {
    if (!pc.getSenders().some((sender) => sender.track)) continue;
    const report = await pc.getStats();
    let pair = null;
    report.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) {
        pair = report.get(s.selectedCandidatePairId);
      }
    });
    let sent = 0;
    report.forEach((s) => {
      if (s.type === "outbound-rtp" && s.kind === "video") sent += s.bytesSent;
    });
    return { available: pair?.availableOutgoingBitrate ?? null, videoBytesSent: sent };
  }
  return null;
})()
"""


async def publish_alone(
    serve: ServeProcess, chromium: OpenTab, turn: tuple[str, str] = ("", "")
) -> BrowserTab:
    """Dr Chen opens the room alone and publishes camera and microphone."""
    _, token = chair_schedules(serve, lobby=True)
    tab = await open_through(chromium, serve, token, *turn)
    await join_from_the_prejoin_screen(tab)
    await tab.until("window.consilium.state().connection.publish === 'connected'", 20)
    return tab


def feedback_sent(serve: ServeProcess) -> float:
    """The node's `consilium_sfu_twcc_feedback_packets`."""
    with urllib.request.urlopen(serve.url + "/metrics") as response:
        lines = response.read().decode().splitlines()
    metrics = dict(line.split(" ") for line in lines if line and not line.startswith("#"))
    return float(metrics["consilium_sfu_twcc_feedback_packets"])


async def estimates(tab: BrowserTab, seconds: float) -> list[Any]:
    """The browser's outgoing estimate each half second for `seconds`."""
    found = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found.append(await tab.page.evaluate(OUTGOING_ESTIMATE))
        await asyncio.sleep(0.5)
    return found


async def test_a_publishing_browser_estimates_its_uplink_from_our_feedback(
    serve_process: Any, chromium: OpenTab
) -> None:
    serve = serve_process(env=ICE_ENV)
    tab = await publish_alone(serve, chromium)
    seen = await estimates(tab, 8)
    assert feedback_sent(serve) > 20, "about ten feedback packets a second"
    available = [s["available"] for s in seen if s and s["available"] is not None]
    assert available and max(available) > 300_000, seen
    print("with transport-cc, the browser's outgoing estimate:", seen[-1])


async def test_with_transport_cc_off_no_feedback_is_sent(
    serve_process: Any, chromium: OpenTab
) -> None:
    serve = serve_process(env={**ICE_ENV, "CONSILIUM_TWCC": "false"})
    tab = await publish_alone(serve, chromium)
    seen = await estimates(tab, 8)
    assert feedback_sent(serve) == 0
    print("without transport-cc, the browser's outgoing estimate:", seen[-1])


# Between what a 400 kbps uplink lets the estimate reach and what a clean link's first probe
# measures (Chromium probes at 3x and 6x its 300 kbps start).
BETWEEN_BPS = 650_000


@pytest.mark.parametrize("up_kbps", [None, 400])
async def test_a_narrow_uplink_holds_the_estimate_down(
    up_kbps: float | None, turnserver: TurnServer, serve_process: Any, chromium: OpenTab
) -> None:
    """Through TURN on a clean link the estimate climbs to the first probe's measure or above
    (seen: 0.84-3.7 Mbps; 0.84 when a loaded machine spoilt the second probe, and the estimate
    then stays put: the fake camera's ~200 kbps leaves the sender application-limited); with the
    uplink at 400 kbps from the start, the probes meet the queue and it stays near the link rate
    (at 800 kbps it was seen at 0.77-0.85 Mbps, too close to a spoilt clean run to tell apart).

    Not a cut in mid-call: Chromium's fake camera encodes ~200 kbps, so once the estimate is up,
    a cut congests little and no estimator (ours to feed or any) has cause to drop.
    """
    up, down = link(rtt_ms=20, up_kbps=up_kbps)
    proxy = ImpairedUdpProxy((TURN_HOST, turnserver.port), up=up, down=down, seed=15)
    await proxy.start()
    try:
        serve = serve_process(env=relay_env(turnserver.udp_url, turnserver.secret))
        impaired = f"turn:{TURN_HOST}:{proxy.port}?transport=udp"
        tab = await publish_alone(serve, chromium, (turnserver.udp_url, impaired))
        seen = [s["available"] if s else None for s in await estimates(tab, 12)]
        print(f"up {up_kbps} kbps: the browser's outgoing estimates (bps):", seen)
        assert feedback_sent(serve) > 20
        assert proxy.counters["up"].passed_bytes > 100_000, proxy.counters
        known = [bps for bps in seen if bps is not None]
        assert len(known) > 10, seen
        if up_kbps is None:
            assert max(known) > BETWEEN_BPS, seen
        else:
            assert max(known[-6:]) < BETWEEN_BPS, seen
    finally:
        proxy.close()
