"""ICE settings of the SFU: each hook into aioice/aiortc, over real loopback sockets.

The suite runs in a network namespace where only `lo` is up, so every socket here is on
127.0.0.1 and nothing assumes another interface.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import inspect
import logging
import pathlib
import random
import socket
from collections.abc import Iterator

import aioice
import aioice.ice
import aiortc.rtcicetransport
import ifaddr
import pytest
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

from consilium.node import ice_settings
from sfu import ice
from sfu.ice import (
    IceSettings,
    client_ice_servers,
    install,
    server_ice_servers,
    turn_credentials,
    uninstall,
)
from signaling.settings import Settings

# Taken at import, before any test installs anything.
AIOICE_GET_HOST_ADDRESSES = aioice.ice.get_host_addresses
AIOICE_CONNECTION = aioice.Connection

LOOPBACK = ("127.0.0.1",)


@pytest.fixture(autouse=True)
def restore_aioice() -> Iterator[None]:
    """install() is process-wide: never let it leak into another test."""
    yield
    uninstall()


@pytest.fixture
def free_ports() -> tuple[int, int]:
    """Four consecutive UDP ports free on 127.0.0.1, near a random base."""
    return find_free_udp_ports(4)


def find_free_udp_ports(count: int) -> tuple[int, int]:
    """The first and last port of `count` consecutive UDP ports now free on 127.0.0.1."""
    for _ in range(100):
        base = random.randint(20000, 60000 - count)
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return base, base + count - 1
    raise RuntimeError("no free UDP port range on 127.0.0.1")


async def gathered(**kwargs: object) -> aioice.Connection:
    """An aioice connection, as the process now builds it, with its candidates gathered."""
    connection = aioice.Connection(**kwargs)  # type: ignore[arg-type]
    await connection.gather_candidates()
    return connection


def host_ports(connection: aioice.Connection) -> list[int]:
    return [c.port for c in connection.local_candidates if c.type == "host"]


def sdp_candidates(sdp: str) -> list[tuple[str, int, str]]:
    """(address, port, type) of every `a=candidate:` line."""
    found = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            found.append((fields[4], int(fields[5]), fields[7]))
    return found


# --- The hooked functions are the ones this module was written against -------------------------


def test_hooked_aioice_and_aiortc_functions_keep_their_signatures() -> None:
    """Fails on an aioice/aiortc upgrade that changes anything sfu/ice.py hooks: re-read it then."""
    assert str(inspect.signature(AIOICE_GET_HOST_ADDRESSES)) == (
        "(use_ipv4: bool, use_ipv6: bool) -> list[str]"
    )
    # gather_candidates looks get_host_addresses up as a module global at each call.
    assert "get_host_addresses" in AIOICE_CONNECTION.gather_candidates.__code__.co_names
    assert list(inspect.signature(AIOICE_CONNECTION.get_component_candidates).parameters) == [
        "self",
        "component",
        "addresses",
        "timeout",
    ]
    # The host-candidate bind goes through loop.create_datagram_endpoint(..., local_addr=...).
    component_code = AIOICE_CONNECTION.get_component_candidates.__code__
    assert "create_datagram_endpoint" in component_code.co_names
    assert "local_addr" in inspect.getsource(AIOICE_CONNECTION.get_component_candidates)
    loop_parameters = inspect.signature(
        asyncio.base_events.BaseEventLoop.create_datagram_endpoint
    ).parameters
    assert list(loop_parameters)[:4] == ["self", "protocol_factory", "local_addr", "remote_addr"]
    assert "sock" in loop_parameters
    # aiortc's gatherer builds its aioice connection through the module name `Connection`.
    assert aiortc.rtcicetransport.Connection is AIOICE_CONNECTION
    assert "Connection" in aiortc.rtcicetransport.RTCIceGatherer.__init__.__code__.co_names
    assert str(inspect.signature(aiortc.rtcicetransport.parse_stun_turn_uri)) == (
        "(uri: str) -> dict[str, typing.Any]"
    )
    assert list(inspect.signature(RTCIceServer).parameters) == [
        "urls",
        "username",
        "credential",
        "credentialType",
    ]


def test_uninstall_restores_aioice_and_aiortc() -> None:
    install(IceSettings(host_addresses=LOOPBACK, port_min=40000, port_max=40010))
    assert aioice.ice.get_host_addresses is not AIOICE_GET_HOST_ADDRESSES
    assert aiortc.rtcicetransport.Connection is ice.RangeBoundConnection
    assert aioice.Connection is aioice.ice.Connection is ice.RangeBoundConnection
    uninstall()
    assert aioice.ice.get_host_addresses is AIOICE_GET_HOST_ADDRESSES
    assert aioice.Connection is aioice.ice.Connection is AIOICE_CONNECTION
    assert aiortc.rtcicetransport.Connection is AIOICE_CONNECTION


def test_installing_again_replaces_the_settings() -> None:
    install(IceSettings(host_addresses=("127.0.0.1",)))
    install(IceSettings(host_addresses=("127.0.0.2",)))
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.2"]
    uninstall()
    assert aioice.ice.get_host_addresses is AIOICE_GET_HOST_ADDRESSES


# --- Host addresses -----------------------------------------------------------------------------


def test_configured_host_addresses_follow_aioice_ip_version_flags() -> None:
    install(IceSettings(host_addresses=("127.0.0.1", "::1")))
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]
    assert aioice.ice.get_host_addresses(use_ipv4=False, use_ipv6=True) == ["::1"]


def adapters(monkeypatch: pytest.MonkeyPatch, *addresses: str) -> None:
    """The host's interfaces as ifaddr reports them: `lo` (127.0.0.1) and one per address."""
    found = [ifaddr.Adapter("lo", "lo", [ifaddr.IP("127.0.0.1", 8, "lo")])]
    for i, address in enumerate(addresses):
        found.append(ifaddr.Adapter(f"eth{i}", f"eth{i}", [ifaddr.IP(address, 24, f"eth{i}")]))
    monkeypatch.setattr(aioice.ice.ifaddr, "get_adapters", lambda: found)


def test_without_configured_addresses_aioice_chooses_the_interfaces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapters(monkeypatch, "10.20.30.40")
    install(IceSettings())
    assert aioice.ice.get_host_addresses(True, True) == ["10.20.30.40"]
    assert AIOICE_GET_HOST_ADDRESSES(True, True) == ["10.20.30.40"]


def test_a_node_listening_on_loopback_also_gathers_on_loopback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapters(monkeypatch, "10.20.30.40")
    install(IceSettings(loopback=True))
    assert aioice.ice.get_host_addresses(True, True) == ["10.20.30.40", "127.0.0.1"]


async def test_a_host_with_only_loopback_gathers_on_loopback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # aioice alone offers nothing here, and media could never connect.
    adapters(monkeypatch)
    assert AIOICE_GET_HOST_ADDRESSES(True, True) == []
    install(IceSettings())
    connection = await gathered(ice_controlling=True)
    try:
        assert [(c.host, c.type) for c in connection.local_candidates] == [("127.0.0.1", "host")]
    finally:
        await connection.close()


def test_the_node_asks_for_loopback_candidates_when_it_listens_on_loopback(
    tmp_path: pathlib.Path,
) -> None:
    local = Settings(host="127.0.0.1", data_dir=tmp_path)
    assert ice_settings(local).loopback
    everywhere = Settings(
        host="0.0.0.0", data_dir=tmp_path, tls_cert=tmp_path / "c", tls_key=tmp_path / "k"
    )
    assert not ice_settings(everywhere).loopback


async def test_configured_addresses_never_ask_ifaddr(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_ifaddr() -> None:
        raise AssertionError("ifaddr called although host addresses are configured")

    monkeypatch.setattr(aioice.ice.ifaddr, "get_adapters", no_ifaddr)
    install(IceSettings(host_addresses=LOOPBACK))
    connection = await gathered(ice_controlling=True)
    try:
        assert [(c.host, c.type) for c in connection.local_candidates] == [("127.0.0.1", "host")]
    finally:
        await connection.close()


async def test_two_aioice_connections_connect_over_loopback() -> None:
    install(IceSettings(host_addresses=LOOPBACK))
    controlling = await gathered(ice_controlling=True)
    controlled = await gathered(ice_controlling=False)
    try:
        for local, remote in ((controlling, controlled), (controlled, controlling)):
            for candidate in remote.local_candidates:
                await local.add_remote_candidate(candidate)
            await local.add_remote_candidate(None)
            local.remote_username = remote.local_username
            local.remote_password = remote.local_password
        await asyncio.wait_for(asyncio.gather(controlling.connect(), controlled.connect()), 10)

        await controlling.send(b"case 17: CT slice 42")
        assert await asyncio.wait_for(controlled.recv(), 5) == b"case 17: CT slice 42"
    finally:
        await controlling.close()
        await controlled.close()


# --- Port range ---------------------------------------------------------------------------------


async def test_every_host_candidate_binds_within_the_port_range(
    free_ports: tuple[int, int],
) -> None:
    port_min, port_max = free_ports
    install(IceSettings(host_addresses=LOOPBACK, port_min=port_min, port_max=port_max))
    connection = await gathered(ice_controlling=True, components=2)
    try:
        ports = host_ports(connection)
        assert len(ports) == 2
        assert all(port_min <= port <= port_max for port in ports)
        assert len(set(ports)) == 2
    finally:
        await connection.close()


async def test_a_port_in_use_is_skipped(free_ports: tuple[int, int]) -> None:
    port_min = free_ports[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", port_min))
        install(IceSettings(host_addresses=LOOPBACK, port_min=port_min, port_max=port_min + 1))
        connection = await gathered(ice_controlling=True)
        try:
            assert host_ports(connection) == [port_min + 1]
        finally:
            await connection.close()


async def test_exhausted_port_range_gathers_nothing_and_logs_an_error(
    free_ports: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    """Documented behaviour: no candidate on that address, an ERROR on sfu.ice, no exception."""
    port = free_ports[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", port))
        install(IceSettings(host_addresses=LOOPBACK, port_min=port, port_max=port))
        with caplog.at_level(logging.ERROR, logger="sfu.ice"):
            connection = await gathered(ice_controlling=True)
        try:
            assert connection.local_candidates == []
        finally:
            await connection.close()
    errors = [r for r in caplog.records if r.name == "sfu.ice" and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert f"{port}-{port} on 127.0.0.1" in errors[0].getMessage()


async def test_other_udp_binds_during_a_gathering_keep_ephemeral_ports(
    free_ports: tuple[int, int],
) -> None:
    port_min, port_max = free_ports
    install(IceSettings(host_addresses=LOOPBACK, port_min=port_min, port_max=port_max))
    loop = asyncio.get_running_loop()
    gathering = asyncio.create_task(gathered(ice_controlling=True))
    while "create_datagram_endpoint" not in vars(loop):  # until the gathering wraps the loop
        assert not gathering.done()
        await asyncio.sleep(0)
    # This bind goes through the wrapper, outside the gathering's context.
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    connection = await gathering
    try:
        assert not port_min <= transport.get_extra_info("sockname")[1] <= port_max
        assert all(port_min <= port <= port_max for port in host_ports(connection))
        # Once gathering ends, the loop's own method is back.
        assert "create_datagram_endpoint" not in vars(loop)
    finally:
        transport.close()
        await connection.close()


async def test_aiortc_peer_connections_connect_over_loopback_within_the_port_range(
    free_ports: tuple[int, int],
) -> None:
    port_min, port_max = free_ports
    settings = IceSettings(host_addresses=LOOPBACK, port_min=port_min, port_max=port_max)
    install(settings)
    configuration = RTCConfiguration(iceServers=server_ice_servers(settings, "sfu"))
    offerer = RTCPeerConnection(configuration)
    answerer = RTCPeerConnection(configuration)
    loop = asyncio.get_running_loop()
    opened: asyncio.Future[None] = loop.create_future()
    received: asyncio.Future[str] = loop.create_future()
    try:
        channel = offerer.createDataChannel("annotations")
        channel.on("open", lambda: opened.set_result(None))

        @answerer.on("datachannel")
        def on_datachannel(remote_channel: object) -> None:
            remote_channel.on("message", received.set_result)  # type: ignore[attr-defined]

        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        await answerer.setLocalDescription(await answerer.createAnswer())
        await offerer.setRemoteDescription(answerer.localDescription)
        await asyncio.wait_for(opened, 15)
        channel.send("arrow at (120, 80)")
        assert await asyncio.wait_for(received, 5) == "arrow at (120, 80)"

        for description in (offerer.localDescription, answerer.localDescription):
            candidates = sdp_candidates(description.sdp)
            assert candidates
            for address, port, kind in candidates:
                assert (address, kind) == ("127.0.0.1", "host")
                assert port_min <= port <= port_max
    finally:
        await offerer.close()
        await answerer.close()


# --- Settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"host_addresses": ("eth0",)},
        {"host_addresses": ("0.0.0.0",)},
        {"port_min": 40000},
        {"port_min": 80, "port_max": 90},
        {"port_min": 50000, "port_max": 40000},
        {"port_min": 40000, "port_max": 70000},
        {"stun_urls": ("turn:turn.hospital.local",)},
        {"stun_urls": ("http://stun.hospital.local",)},
        {"stun_urls": ("stun:stun.hospital.local?transport=udp",)},
        {"stun_urls": ("stun:stun.hospital.local:99999",)},
        {"turn_urls": ("stun:stun.hospital.local",), "turn_secret": "s"},
        {"turn_urls": ("turn:turn.hospital.local",)},
        {"turn_urls": ("turn:turn.hospital.local",), "turn_secret": "s", "turn_ttl_s": 0},
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="ICE"):
        IceSettings(**kwargs)  # type: ignore[arg-type]


def test_loopback_a_port_range_and_ipv6_server_urls_are_valid_settings() -> None:
    settings = IceSettings(
        host_addresses=("127.0.0.1", "::1"),
        port_min=1024,
        port_max=65535,
        stun_urls=("stun:[2001:db8::1]:3478",),
        turn_urls=("turn:10.0.0.7?transport=tcp", "turns:turn.hospital.local:5349"),
        turn_secret="s",
    )
    assert settings.port_range == (1024, 65535)
    assert IceSettings().port_range is None


# --- STUN and TURN servers ----------------------------------------------------------------------

NOW = 1_700_000_000.75
HOSPITAL = IceSettings(
    stun_urls=("stun:stun.hospital.local:3478", "stun:stun2.hospital.local"),
    turn_urls=(
        "turn:turn.hospital.local:3478?transport=udp",
        "turns:turn.hospital.local:5349?transport=tcp",
    ),
    turn_secret="coturn-shared-secret",
    turn_ttl_s=3600,
)


def test_turn_credentials_match_coturn_rest_api() -> None:
    username, credential = turn_credentials("coturn-shared-secret", "sfu-node-1", 3600, now=NOW)
    assert username == "1700003600:sfu-node-1"
    by_hand = hmac.new(b"coturn-shared-secret", b"1700003600:sfu-node-1", hashlib.sha1).digest()
    assert credential == base64.b64encode(by_hand).decode()
    # Computed with: printf '1700003600:sfu-node-1' | openssl dgst -sha1 -hmac ... | base64
    assert credential == "umqSvH4eMxs5RjN6azvW7t3+8wA="


def test_browsers_get_every_stun_and_turn_url_with_credentials() -> None:
    username, credential = turn_credentials("coturn-shared-secret", "dr-li", 3600, now=NOW)
    assert client_ice_servers(HOSPITAL, "dr-li", now=NOW) == [
        {"urls": ["stun:stun.hospital.local:3478", "stun:stun2.hospital.local"]},
        {
            "urls": [
                "turn:turn.hospital.local:3478?transport=udp",
                "turns:turn.hospital.local:5349?transport=tcp",
            ],
            "username": username,
            "credential": credential,
        },
    ]


def test_browsers_get_only_what_is_configured() -> None:
    assert client_ice_servers(IceSettings(), "dr-li") == []
    stun_only = IceSettings(stun_urls=("stun:stun.hospital.local",))
    assert client_ice_servers(stun_only, "dr-li") == [{"urls": ["stun:stun.hospital.local"]}]


def test_the_sfu_uses_the_first_stun_and_turn_server_aiortc_supports() -> None:
    servers = server_ice_servers(HOSPITAL, "sfu-node-1", now=NOW)
    username, credential = turn_credentials("coturn-shared-secret", "sfu-node-1", 3600, now=NOW)
    assert servers == [
        RTCIceServer(urls="stun:stun.hospital.local:3478"),
        RTCIceServer(
            urls="turn:turn.hospital.local:3478?transport=udp",
            username=username,
            credential=credential,
        ),
    ]
    # What aiortc makes of it for its aioice connection.
    assert aiortc.rtcicetransport.connection_kwargs(servers) == {
        "stun_server": ("stun.hospital.local", 3478),
        "turn_server": ("turn.hospital.local", 3478),
        "turn_ssl": False,
        "turn_transport": "udp",
        "turn_username": username,
        "turn_password": credential,
    }


def test_the_sfu_skips_urls_aiortc_cannot_use() -> None:
    settings = IceSettings(
        stun_urls=("stuns:stun.hospital.local", "stun:stun.hospital.local"),
        turn_urls=("turns:turn.hospital.local?transport=udp", "turns:turn.hospital.local"),
        turn_secret="s",
    )
    assert [s.urls for s in server_ice_servers(settings, "sfu")] == [
        "stun:stun.hospital.local",
        "turns:turn.hospital.local",
    ]


def test_no_configured_servers_means_no_public_stun_for_the_sfu() -> None:
    servers = server_ice_servers(IceSettings(), "sfu")
    assert servers == []
    # An empty list, unlike None, keeps aiortc from falling back to Google's STUN server.
    assert aiortc.rtcicetransport.connection_kwargs(servers) == {}
