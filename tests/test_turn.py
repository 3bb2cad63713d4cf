"""TURN through a real coturn: the credentials the node hands out in `joined` open a relay for a
browser that may use nothing else (`ice_transport_policy = "relay"`, what a hospital whose
firewall blocks UDP sets), over UDP, TCP and TLS; expired or tampered credentials are refused by
coturn itself, checked with coturn's own `turnutils_uclient` and with Chromium."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from core.errors import ConfigError
from sfu.ice import turn_credentials
from signaling.settings import load_settings
from tests.fixtures.browser import ICE_ENV, OpenTab, diagnosis, meet_through_the_lobby
from tests.fixtures.servers import node_settings, running_node
from tests.fixtures.turnserver import TURN_HOST, TurnServer

# How Chromium names the way its relay candidate reaches the TURN server, by the URL's transport.
TRANSPORTS = {"udp": "udp", "tcp": "tcp", "tls": "tls"}


def relay_env(turn_url: str, secret: str) -> dict[str, str]:
    """`consilium serve` environment: loopback media, one TURN server, clients relay-only."""
    return {
        **ICE_ENV,
        "CONSILIUM_TURN_URLS": turn_url,
        "CONSILIUM_TURN_SECRET": secret,
        "CONSILIUM_ICE_TRANSPORT_POLICY": "relay",
    }


def turn_url(server: TurnServer, transport: str) -> str:
    """The coturn URL for one transport."""
    return {"udp": server.udp_url, "tcp": server.tcp_url, "tls": server.tls_url}[transport]


HOSPITAL_TURN = {
    "turn_urls": ["turns:turn.hospital.test:443?transport=tcp"],
    "turn_secret": "coturn-secret",
}


async def test_joined_tells_clients_to_relay_only_when_the_node_says_so(tmp_path: Path) -> None:
    relay = node_settings(tmp_path / "relay", ice_transport_policy="relay", **HOSPITAL_TURN)
    async with running_node(relay) as node:
        _, joined = await node.join("dr-chair", "chair")
    assert joined["ice_transport_policy"] == "relay"
    assert joined["ice_servers"][0]["urls"] == HOSPITAL_TURN["turn_urls"]
    # By default the field is left out (clients fill in "all": direct paths too).
    async with running_node(node_settings(tmp_path / "all", **HOSPITAL_TURN)) as node:
        _, joined = await node.join("dr-chair", "chair")
    assert "ice_transport_policy" not in joined and joined["ice_servers"]


def test_relay_only_needs_a_turn_server_and_a_known_policy() -> None:
    with pytest.raises(ConfigError, match="relay needs turn_urls"):
        load_settings({"ice_transport_policy": "relay"}, env={})
    with pytest.raises(ConfigError, match="must be all or relay"):
        load_settings({"ice_transport_policy": "tcp", **HOSPITAL_TURN}, env={})
    env = {"CONSILIUM_ICE_TRANSPORT_POLICY": "relay", "CONSILIUM_TURN_URLS": "turn:t.test:3478"}
    assert load_settings({}, env=env).ice_transport_policy == "relay"


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
async def test_chair_and_specialist_meet_through_turn_only(
    transport: str, turnserver: TurnServer, serve_process: Any, chromium: OpenTab
) -> None:
    serve = serve_process(env=relay_env(turn_url(turnserver, transport), turnserver.secret))
    # Both decode each other's video and hear each other (meet_through_the_lobby waits for it).
    meeting = await meet_through_the_lobby(
        serve, chromium, extra_args=turnserver.chromium_trusts_it
    )
    relayed = {"candidateType": "relay", "relayProtocol": TRANSPORTS[transport]}
    for name, tab in (("chair", meeting.chair), ("specialist", meeting.specialist)):
        paths = (await tab.page.evaluate("window.consilium.stats()"))["paths"]
        assert paths == {"publish": relayed, "subscribe": relayed}, (
            f"{name}: {paths}\n{await diagnosis(meeting)}"
        )
    # coturn did the relaying: allocations under the node's REST credentials, for both people.
    log = turnserver.output()
    assert ":dr-chen>" in log and ":dr-ana>" in log
    assert "ALLOCATE processed, success" in log


def uclient(server: TurnServer, username: str, password: str, transport: str) -> int:
    """Allocate with coturn's own test client; its exit status (0: allocated and sent)."""
    flags = {"udp": [], "tcp": ["-t"], "tls": ["-t", "-S"]}[transport]
    port = server.tls_port if transport == "tls" else server.port
    command = ["turnutils_uclient", *flags, "-n", "1", "-u", username, "-w", password]
    # Peer: a loopback port nobody answers on; only the allocation's outcome matters here.
    command += ["-p", str(port), "-e", TURN_HOST, "-r", "9", TURN_HOST]
    return subprocess.run(command, capture_output=True, timeout=30).returncode


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
def test_coturn_allocates_for_fresh_credentials_and_refuses_expired_or_tampered_ones(
    transport: str, turnserver: TurnServer
) -> None:
    fresh = turn_credentials(turnserver.secret, "dr-ana", 600)
    assert uclient(turnserver, *fresh, transport) == 0, turnserver.output()[-3000:]
    # Valid a day ago for an hour: coturn compares the expiry in the username with its clock.
    expired = turn_credentials(turnserver.secret, "dr-ana", 3600, now=time.time() - 86400)
    assert uclient(turnserver, *expired, transport) != 0
    # A username whose expiry was pushed forward by hand no longer matches its HMAC.
    username, password = fresh
    expiry, user = username.split(":", 1)
    assert uclient(turnserver, f"{int(expiry) + 86400}:{user}", password, transport) != 0
    # Credentials from another secret (a node configured with the wrong one).
    assert uclient(turnserver, *turn_credentials("not-the-secret", "dr-ana", 600), transport) != 0


GATHER_RELAY = """async ([servers]) => {
  const pc = new RTCPeerConnection({ iceServers: servers, iceTransportPolicy: "relay" });
  pc.createDataChannel("probe");
  const found = [];
  const done = new Promise((resolve) => {
    pc.addEventListener("icecandidate", ({ candidate }) => {
      if (candidate === null) resolve();
      else if (candidate.candidate) found.push(candidate.type);
    });
  });
  await pc.setLocalDescription(await pc.createOffer());
  await Promise.race([done, new Promise((resolve) => setTimeout(resolve, 8000))]);
  pc.close();
  return found;
}"""
"""Gather relay candidates only with the given iceServers; the candidate types found."""


async def test_chromium_gets_no_relay_candidate_with_expired_credentials(
    turnserver: TurnServer, chromium: OpenTab
) -> None:
    tab = await chromium("about:blank")
    urls = [turnserver.udp_url, turnserver.tcp_url]
    fresh = turn_credentials(turnserver.secret, "dr-ana", 600)
    expired = turn_credentials(turnserver.secret, "dr-ana", 3600, now=time.time() - 86400)
    servers = [{"urls": urls, "username": fresh[0], "credential": fresh[1]}]
    assert "relay" in await tab.page.evaluate(GATHER_RELAY, [servers])
    servers = [{"urls": urls, "username": expired[0], "credential": expired[1]}]
    assert await tab.page.evaluate(GATHER_RELAY, [servers]) == []
    assert "401" in turnserver.output()
