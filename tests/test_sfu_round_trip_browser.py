"""A real Chromium subscriber's round trip, as the SFU measures it from the echo of the sender
reports it forwards (sfu/round_trip.py, RFC 3550 6.4.1): the browser, relay-only, reaches coturn
through nettest's proxy, which delays every datagram by half the configured round trip each
way; an aiortc publisher on a clean loopback path sends the video (and aiortc's sender reports).
The node's `round_trip_ms` metric (one subscriber: its sum is the round trip) comes out about the
configured delay, and the same browser's own view of its publish session (from the SFU's receiver
reports to it) agrees.

Levels, not speed: the metric is read for a generous window and the test asserts where it ended
up; the series is printed for a human."""

from __future__ import annotations

import asyncio
import urllib.request
from typing import Any

import aiohttp

from bot.client import MediaClient
from nettest.impairment import link
from nettest.udp_proxy import ImpairedUdpProxy
from tests.fixtures.browser import (
    ROOM,
    OpenTab,
    chair_schedules,
    join_from_the_prejoin_screen,
    open_through,
)
from tests.fixtures.servers import ServeProcess, eventually
from tests.fixtures.turnserver import TURN_HOST, TurnServer
from tests.test_sfu_downlink_browser import publish_without_subscribing
from tests.test_turn import relay_env

RTT_MS = 200
SUM = "consilium_sfu_round_trip_ms_sum"
COUNT = "consilium_sfu_round_trip_ms_count"

# The publish session's round trip as the browser measures it from the SFU's receiver reports
# (the remote-inbound-rtp of its camera), in ms; null before the first.
PUBLISH_ROUND_TRIP = """
(async () => {
  for (const pc of window.__watchedPcs ?? []) {
    if (!pc.getSenders().some((sender) => sender.track?.kind === "video")) continue;
    const report = await pc.getStats();
    let rtt = null;
    report.forEach((s) => {
      if (s.type === "remote-inbound-rtp" && s.kind === "video" && s.roundTripTime != null)
        rtt = Math.max(rtt ?? 0, s.roundTripTime * 1000);
    });
    return rtt;
  }
  return null;
})()
"""


def round_trip_metrics(serve: ServeProcess) -> dict[str, float]:
    """The node's `consilium_sfu_round_trip_ms*` values."""
    with urllib.request.urlopen(serve.url + "/metrics") as response:
        lines = response.read().decode().splitlines()
    pairs = (line.rsplit(" ", 1) for line in lines if line and not line.startswith("#"))
    return {name: float(value) for name, value in pairs if "round_trip_ms" in name}


async def test_the_sfu_measures_a_chromium_subscribers_round_trip_through_a_delayed_link(
    loopback_ice: None, turnserver: TurnServer, serve_process: Any, chromium: OpenTab
) -> None:
    up, down = link(rtt_ms=RTT_MS)
    proxy = ImpairedUdpProxy((TURN_HOST, turnserver.port), up=up, down=down, seed=15)
    await proxy.start()
    client: MediaClient | None = None
    try:
        serve = serve_process(env=relay_env(turnserver.udp_url, turnserver.secret))
        idp, chair = chair_schedules(serve)
        impaired = f"turn:{TURN_HOST}:{proxy.port}?transport=udp"
        tab = await open_through(chromium, serve, chair, turnserver.udp_url, impaired)
        await join_from_the_prejoin_screen(tab)
        await tab.until("window.consilium.state().connection.publish === 'connected'", 20)

        publisher = idp.mint(sub="dr-silva", role="chair", name="Dr Ana Silva",
                             depts=["oncology"], rooms=[ROOM])  # fmt: skip
        async with aiohttp.ClientSession() as http:
            client, ws = await publish_without_subscribing(http, serve, publisher)
            await tab.until("window.consilium.state().connection.subscribe === 'connected'", 20)
            await eventually(lambda: round_trip_metrics(serve).get(COUNT) == 1, timeout=20)
            series = []
            for _ in range(16):  # 8 s: several receiver reports
                metrics = round_trip_metrics(serve)
                series.append(int(metrics[SUM]) if metrics.get(COUNT) == 1 else None)
                await asyncio.sleep(0.5)
            browser_view = await tab.page.evaluate(PUBLISH_ROUND_TRIP)
            await ws.close()
        print(f"link {RTT_MS} ms round trip: the SFU's measure of the browser's (ms):", series,
              "the browser's own, publishing (ms):", browser_view)  # fmt: skip
        known = [ms for ms in series if ms is not None]
        assert len(known) > 10, series
        assert proxy.counters["down"].passed_bytes > 100_000, "the media crossed the proxy"
        # The proxy's delay, plus what the loaded machine adds (TURN, the event loops).
        assert 0.8 * RTT_MS <= known[-1] <= 2 * RTT_MS, series
        # The SFU's receiver reports to the browser echo its sender reports too.
        assert browser_view is not None and 0.8 * RTT_MS <= browser_view <= 2 * RTT_MS
    finally:
        if client is not None:
            await client.close()
        proxy.close()
