"""A network change under a real browser (Chromium), relay-only through real coturn: the
specialist's path to coturn goes through one UDP proxy (their first network), then that network
goes away and another proxy is the only way (their second network). The page restarts ICE on its
existing peer connections (the SFU answers the publish re-offer and re-offers the subscribe
session with new credentials) and media comes back: no rejoin, no lobby, no new consent. When the
restart cannot work, the page rejoins as the same person, straight into the room."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

from nettest.udp_proxy import ImpairedUdpProxy
from tests.fixtures.browser import (
    BrowserTab,
    Meeting,
    OpenTab,
    diagnosis,
    meet_through_the_lobby,
    page_state,
    received_from,
    second_tab_with,
)
from tests.fixtures.turnserver import TURN_HOST, TurnServer
from tests.test_turn import relay_env

# The page's peer connections reach coturn by a route the test can change: `direct` (the URL the
# node hands out) is replaced by the current network's proxy. `__changeNetwork(existing, fresh)`
# points the existing peer connections at `existing` (setConfiguration: their next gathering, the
# ICE restart's, uses it) and peer connections made from now on at `fresh`.
NETWORK = """
(([direct, first]) => {
  const route = { existing: first, fresh: first };
  const sessions = [];
  const through = (servers, via) => (servers ?? []).map((server) => ({
    ...server,
    urls: [server.urls].flat().map((url) => (url === direct ? via : url)),
  }));
  const Original = window.RTCPeerConnection;
  window.RTCPeerConnection = function (config = {}) {
    const pc = new Original({ ...config, iceServers: through(config.iceServers, route.fresh) });
    sessions.push({ pc, servers: config.iceServers });
    return pc;
  };
  window.RTCPeerConnection.prototype = Original.prototype;
  window.__changeNetwork = (existing, fresh) => {
    route.existing = existing;
    route.fresh = fresh;
    for (const { pc, servers } of sessions) {
      if (pc.signalingState === "closed") continue;
      pc.setConfiguration({ ...pc.getConfiguration(), iceServers: through(servers, existing) });
    }
  };
})(%s);
"""


# On the chair's page: each change of whether the specialist's camera tile is shown reconnecting
# (its `data-reconnecting`, with the "Reconnecting…" label visible), in order.
TILE_MARKS = """
((pid) => {
  const shown = (figure) =>
    figure.dataset.reconnecting === "true" &&
    figure.querySelector(".tile-reconnecting")?.hidden === false;
  const tile = `figure[data-participant-id="${pid}"][data-source="camera"]`;
  window.__tileMarks = [shown(document.querySelector(tile))];
  new MutationObserver((records) => {
    for (const { target } of records) {
      if (target.dataset.participantId !== pid || target.dataset.source !== "camera") continue;
      const mark = shown(target);
      if (window.__tileMarks.at(-1) !== mark) window.__tileMarks.push(mark);
    }
  }).observe(document.body, {
    subtree: true, attributes: true, attributeFilter: ["data-reconnecting"],
  });
})(%s);
"""


def specialist_on_a_network(chromium: OpenTab, direct_url: str, first_url: str) -> OpenTab:
    """`chromium`, except that the second browser it opens (the specialist) reaches coturn
    through `first_url` until the test changes its network."""
    return second_tab_with(chromium, NETWORK % json.dumps([direct_url, first_url]))


def turn_url(port: int) -> str:
    return f"turn:{TURN_HOST}:{port}?transport=udp"


def unused_udp_port() -> int:
    """A port nothing listens on (a network that reaches no TURN server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((TURN_HOST, 0))
        return int(sock.getsockname()[1])


async def frames_both_ways(meeting: Meeting, specialist_id: str) -> tuple[int, int]:
    """Video frames decoded (the chair's of the specialist, the specialist's of the chair)."""
    at_chair = (await received_from(meeting.chair, specialist_id)).get("video", {})
    at_specialist = (await received_from(meeting.specialist, meeting.chair_id)).get("video", {})
    return at_chair.get("framesDecoded", 0), at_specialist.get("framesDecoded", 0)


async def until_frames_grow(
    meeting: Meeting, specialist_id: str, since: tuple[int, int], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = await frames_both_ways(meeting, specialist_id)
        if now[0] > since[0] + 10 and now[1] > since[1] + 10:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"media did not come back both ways\n{await diagnosis(meeting)}")


async def change_network(tab: BrowserTab, existing: str, fresh: str) -> None:
    """The specialist's laptop moves to another network: the browser says so (`online`)."""
    await tab.page.evaluate(
        "([existing, fresh]) => { window.__changeNetwork(existing, fresh);"
        " window.dispatchEvent(new Event('online')); }",
        [existing, fresh],
    )


async def test_a_network_change_restarts_ice_and_media_comes_back_without_rejoining(
    turnserver: TurnServer, serve_process: Any, chromium: OpenTab
) -> None:
    first, second = ImpairedUdpProxy((TURN_HOST, turnserver.port)), None
    await first.start()
    try:
        serve = serve_process(env=relay_env(turnserver.udp_url, turnserver.secret))
        browsers = specialist_on_a_network(chromium, turnserver.udp_url, turn_url(first.port))
        meeting = await meet_through_the_lobby(serve, browsers)
        specialist, chair = meeting.specialist, meeting.chair
        before = await page_state(specialist)

        second = ImpairedUdpProxy((TURN_HOST, turnserver.port), seed=2)
        await second.start()
        first.close()  # the first network is gone: nothing more crosses it
        frames = await frames_both_ways(meeting, meeting.specialist_id)
        await chair.page.evaluate(TILE_MARKS % json.dumps(meeting.specialist_id))
        changed_at = time.monotonic()
        await change_network(specialist, turn_url(second.port), turn_url(second.port))
        await until_frames_grow(meeting, meeting.specialist_id, frames, timeout_s=20)
        back_s = time.monotonic() - changed_at
        await specialist.until("window.consilium.state().iceRestartMs !== undefined", 10)
        after = await page_state(specialist)
        print(
            f"\nICE restart after a network change: media back both ways in {back_s:.2f} s "
            f"(the page saw both sessions on a new pair after {after['iceRestartMs']} ms)"
        )

        # The same participant in the same room: no rejoin, no lobby, no new consent.
        assert after["participantId"] == before["participantId"] == meeting.specialist_id
        assert after["received"].get("joined") == 1 and after["received"].get("lobby") == 1
        assert after["received"].get("consent_requested", 0) == 0
        assert after["iceRestarts"] == 1 and "iceRestartFallbacks" not in after
        assert after["notice"] != "room.reconnecting"
        # The chair saw the specialist's tile as reconnecting during the restart (their
        # WebSocket never dropped: the SFU said so), and not after it.
        await chair.until("window.consilium.state().mediaReconnecting.length === 0", 10)
        await chair.until("window.__tileMarks.at(-1) === false", 5)
        marks = await chair.page.evaluate("window.__tileMarks")
        assert marks == [False, True, False], marks
        chair_state = await page_state(chair)
        assert chair_state["received"].get("participant_reconnecting", 0) >= 2
        assert chair_state["reconnecting"] == []  # signalling held nobody
        assert chair_state["received"].get("participant_left", 0) == 0
        # Media really crossed the second network, relayed both ways (a few seconds of it).
        await asyncio.sleep(3)
        up, down = second.counters["up"], second.counters["down"]
        assert up.passed_bytes > 30_000 and down.passed_bytes > 30_000, second.counters
        stats = await specialist.page.evaluate("window.consilium.stats()")
        assert {p["candidateType"] for p in stats["paths"].values()} == {"relay"}
    finally:
        first.close()
        if second is not None:
            second.close()


async def test_a_restart_that_cannot_work_falls_back_to_rejoining_without_the_lobby(
    turnserver: TurnServer, serve_process: Any, chromium: OpenTab
) -> None:
    network = ImpairedUdpProxy((TURN_HOST, turnserver.port))
    await network.start()
    try:
        serve = serve_process(env=relay_env(turnserver.udp_url, turnserver.secret))
        browsers = specialist_on_a_network(chromium, turnserver.udp_url, turn_url(network.port))
        meeting = await meet_through_the_lobby(serve, browsers)
        specialist = meeting.specialist
        # The existing sessions are pointed at a TURN address nothing answers on: their restart
        # cannot connect. A new session (the rejoin's) still gets through.
        changed_at = time.monotonic()
        await change_network(specialist, turn_url(unused_udp_port()), turn_url(network.port))
        await specialist.until("window.consilium.state().iceRestartFallbacks === 1", 20)
        await specialist.until("window.consilium.state().received.joined === 2", 15)
        await specialist.until("window.consilium.state().screen === 'room'", 15)
        state = await page_state(specialist)
        assert state["received"].get("lobby") == 1, "waited in the lobby a second time"
        rejoined_id = state["participantId"]
        await until_frames_grow(meeting, rejoined_id, (0, 0), timeout_s=30)
        # The chair saw the specialist's media reconnecting; after the rejoin nobody is left
        # shown so (the old participant's restart ended when they were replaced).
        chair = meeting.chair
        await chair.until("window.consilium.state().mediaReconnecting.length === 0", 10)
        chair_state = await page_state(chair)
        assert chair_state["received"].get("participant_reconnecting", 0) >= 1
        assert chair_state["reconnecting"] == []
        print(
            f"\nfailed ICE restart: rejoined with media after {time.monotonic() - changed_at:.1f} s"
        )
    finally:
        network.close()
