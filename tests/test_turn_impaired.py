"""Media over a bad link: a relay-only specialist whose path to coturn is impaired (nettest's
proxy in front of coturn's port: loss, delay, jitter and a rate limit over UDP; delay, jitter and
the rate over TCP) still receives video. The quality figures (frame rate, freezes, layers) come
with simulcast and bandwidth estimation."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest

from nettest.impairment import link
from nettest.tcp_proxy import ImpairedTcpProxy
from nettest.udp_proxy import ImpairedUdpProxy
from tests.fixtures.browser import (
    OpenTab,
    diagnosis,
    meet_through_the_lobby,
    received_from,
    second_tab_with,
)
from tests.fixtures.turnserver import TURN_HOST, TurnServer
from tests.test_turn import relay_env

UP, DOWN = link(loss=0.05, rtt_ms=100, jitter_ms=30, down_kbps=800)

# The page's peer connections reach coturn through the proxy instead of directly: the node hands
# everyone the same TURN URL, and only this browser's link is bad.
BEHIND_PROXY = """
(([direct, impaired]) => {
  const Original = window.RTCPeerConnection;
  window.RTCPeerConnection = function (config = {}) {
    const iceServers = (config.iceServers ?? []).map((server) => ({
      ...server,
      urls: [server.urls].flat().map((url) => (url === direct ? impaired : url)),
    }));
    return new Original({ ...config, iceServers });
  };
  window.RTCPeerConnection.prototype = Original.prototype;
})(%s);
"""


def second_browser_behind(chromium: OpenTab, direct_url: str, impaired_url: str) -> OpenTab:
    """`chromium`, except that the second browser it opens (the specialist, in
    meet_through_the_lobby) sends its TURN traffic to `impaired_url` instead of `direct_url`."""
    return second_tab_with(chromium, BEHIND_PROXY % json.dumps([direct_url, impaired_url]))


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_relay_only_specialist_on_a_bad_link_still_receives_video(
    transport: str, turnserver: TurnServer, serve_process: Any, chromium: OpenTab
) -> None:
    proxy: ImpairedUdpProxy | ImpairedTcpProxy
    if transport == "udp":
        proxy = ImpairedUdpProxy((TURN_HOST, turnserver.port), up=UP, down=DOWN, seed=15)
        direct_url = turnserver.udp_url
    else:
        # A stream loses no bytes: the same link without the loss (TCP would retransmit it).
        up, down = (dataclasses.replace(i, loss=0.0) for i in (UP, DOWN))
        proxy = ImpairedTcpProxy((TURN_HOST, turnserver.port), up=up, down=down, seed=15)
        direct_url = turnserver.tcp_url
    await proxy.start()
    try:
        serve = serve_process(env=relay_env(direct_url, turnserver.secret))
        impaired_url = f"turn:{TURN_HOST}:{proxy.port}?transport={transport}"
        browsers = second_browser_behind(chromium, direct_url, impaired_url)
        # Both decode each other's media (meet_through_the_lobby waits for it).
        meeting = await meet_through_the_lobby(serve, browsers)
        first = (await received_from(meeting.specialist, meeting.chair_id))["video"]
        await asyncio.sleep(3)
        later = (await received_from(meeting.specialist, meeting.chair_id))["video"]
        assert later["framesDecoded"] > first["framesDecoded"] > 0, await diagnosis(meeting)

        # The specialist's media really crossed the bad link, and the link was bad.
        stats = await meeting.specialist.page.evaluate("window.consilium.stats()")
        relayed = {"candidateType": "relay", "relayProtocol": transport}
        assert stats["paths"] == {"publish": relayed, "subscribe": relayed}
        up, down = proxy.counters["up"], proxy.counters["down"]
        # Both ways, more than signalling and ICE checks alone would be (tens of kB of media).
        assert down.passed_bytes > 30_000 and up.passed_bytes > 30_000, proxy.counters
        if transport == "udp":
            assert down.lost > 0 and up.lost > 0
            assert 0.02 <= down.lost / down.offered <= 0.10
        else:
            assert down.max_queue_ms > 0, f"the rate limit never held anything back: {down}"
    finally:
        if isinstance(proxy, ImpairedTcpProxy):
            await proxy.close()
        else:
            proxy.close()
