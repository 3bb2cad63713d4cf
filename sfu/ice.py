"""ICE settings of the SFU: where it gathers candidates, and which STUN/TURN servers peers use.

Every touch of aioice/aiortc internals for ICE lives in this module, and each hook has a test in
`tests/test_sfu_ice.py` (including one that fails when a hooked signature changes), so an
aioice/aiortc upgrade is checked in one place. The hooks, all installed by `install()` and
undone by `uninstall()`, are the names in `_PATCHES`:

1. `aioice.ice.get_host_addresses`, which `Connection.gather_candidates` looks up as a module
   global at each call, is replaced by one that returns the configured addresses. aioice's own
   function asks ifaddr for every interface and skips 127.0.0.1, which loopback tests and
   single-host setups need; with addresses configured, ifaddr is never called. With none
   configured, aioice's list is used, with 127.0.0.1 added when the node listens on loopback
   only or the host has no other interface (`IceSettings.loopback`).

2. The UDP port range. aioice binds each host candidate in `Connection.get_component_candidates`
   with `loop.create_datagram_endpoint(..., local_addr=(address, 0))` and has no setting for the
   port. Choices considered:
   - copying `get_component_candidates` into a subclass: about 80 lines of aioice (STUN and TURN
     gathering, its private `StunProtocol` and `_protocols`) to re-read on every upgrade;
   - patching `create_datagram_endpoint` on the event loop class: changes every UDP bind of the
     process, ours and the libraries';
   - chosen: `RangeBoundConnection`, a subclass whose `get_component_candidates` only *scopes* a
     call to aioice's own body. During that call the running loop's `create_datagram_endpoint` is
     wrapped (on that loop instance, removed when the last gathering on it ends), and a bind to
     port 0 with no remote address (the host-candidate bind) is sent to a free port of the range.
     A context variable marks the scope, so other coroutines binding UDP on the same loop at the
     same moment pass through untouched. We rely only on the method's name and signature and on
     the shape of that one call, and the tests check both.

3. `aiortc.rtcicetransport.Connection` (the name `RTCIceGatherer.__init__` constructs),
   `aioice.Connection` and `aioice.ice.Connection` are set to `RangeBoundConnection`, so every ICE
   connection of the process follows the settings: the SFU's through aiortc, and any direct
   aioice user. Without a port range the subclass behaves exactly as aioice's class.

Not a patch, but an aiortc internal all the same: `server_ice_servers` asks aiortc's
`rtcicetransport.parse_stun_turn_uri` which configured URLs aiortc can use. The hooks on the
media path (DTLS, RTP, RTCP) live in `sfu/aiortc_hooks.py`; this module holds the ICE ones.

When the range is exhausted on an address, that address gets no host candidate: the bind raises
`PortRangeExhausted` (an `OSError`, which aioice catches per address, as it does for any bind
failure) and an ERROR record is logged on `sfu.ice`. Gathering itself does not raise, because a
relay candidate from TURN may still connect the peer; with nothing gathered at all, the peer
connection fails ICE. Relay (TURN client) sockets are not bound in the range: they are outbound
connections to the TURN server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import errno
import functools
import hashlib
import hmac
import ipaddress
import logging
import random
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import aioice
import aioice.ice
import aiortc.rtcicetransport
from aioice import Candidate
from aiortc import RTCIceServer

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
"""The loopback address host candidates are gathered on when `IceSettings.loopback` asks, or when
the host has no other interface."""

STUN_SCHEMES = ("stun", "stuns")
TURN_SCHEMES = ("turn", "turns")

# RFC 7064 (stun/stuns) and RFC 7065 (turn/turns) URIs, as browsers accept them: a host name, an
# IPv4 address or a bracketed IPv6 address, an optional port and, for TURN, a transport.
_SERVER_URL = re.compile(
    r"(?P<scheme>stuns?|turns?):(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)"
    r"(?::(?P<port>[0-9]{1,5}))?(?:\?transport=(?P<transport>udp|tcp))?"
)


@dataclass(frozen=True, slots=True)
class IceSettings:
    """Where the SFU gathers ICE candidates and which STUN/TURN servers peers are told about."""

    host_addresses: tuple[str, ...] = ()
    """IP addresses to gather host candidates on; empty: every non-loopback interface (aioice's
    choice), plus loopback as `loopback` says. Loopback ("127.0.0.1", "::1") is allowed here, for
    tests and single-host setups."""
    loopback: bool = False
    """With `host_addresses` empty, gather on 127.0.0.1 too: for a node that listens on loopback
    only, whose browsers are on the same host. Loopback is gathered anyway when the host has no
    other interface, since it is then the only way media can connect."""
    port_min: int = 0
    """Lowest UDP port for host candidates; 0 with `port_max` 0: any ephemeral port."""
    port_max: int = 0
    """Highest UDP port for host candidates (inclusive)."""
    stun_urls: tuple[str, ...] = ()
    """STUN servers, e.g. `stun:stun.hospital.local:3478`."""
    turn_urls: tuple[str, ...] = ()
    """TURN servers, e.g. `turn:turn.hospital.local:3478?transport=udp`, `turns:...`."""
    turn_secret: str | None = None
    """coturn `use-auth-secret` shared secret; TURN credentials are derived from it per user."""
    turn_ttl_s: int = 86400
    """How long handed-out TURN credentials stay valid, in seconds."""
    socket_buffer_bytes: int = 4 * 1024 * 1024
    """SO_RCVBUF and SO_SNDBUF asked for each host-candidate UDP socket (0: the kernel's
    default); the kernel grants at most `net.core.rmem_max` / `wmem_max`."""

    def __post_init__(self) -> None:
        for address in self.host_addresses:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"ICE host address {address!r} is not an IP address") from None
            if ip.is_unspecified:
                raise ValueError(f"ICE host address {address!r} is not a usable candidate address")
        if (self.port_min, self.port_max) != (0, 0) and not (
            1024 <= self.port_min <= self.port_max <= 65535
        ):
            raise ValueError(
                f"ICE port range {self.port_min}-{self.port_max}: use 0-0 (ephemeral ports) or "
                "1024 <= port_min <= port_max <= 65535"
            )
        for url in self.stun_urls:
            _check_server_url(url, STUN_SCHEMES)
        for url in self.turn_urls:
            _check_server_url(url, TURN_SCHEMES)
        # Without the secret the TURN servers would silently never be offered: refuse it here,
        # since TURN is what gets a specialist behind another hospital's firewall through.
        if self.turn_urls and not self.turn_secret:
            raise ValueError("ICE turn_urls are set but turn_secret is not")
        if self.turn_ttl_s <= 0:
            raise ValueError(f"ICE turn_ttl_s must be positive, not {self.turn_ttl_s}")

    @property
    def port_range(self) -> tuple[int, int] | None:
        """The (lowest, highest) UDP port for host candidates, or None for ephemeral ports."""
        if self.port_min == 0:
            return None
        return (self.port_min, self.port_max)


class PortRangeExhausted(OSError):
    """Every UDP port of the configured range is in use on an address."""

    def __init__(self, host: str, port_min: int, port_max: int) -> None:
        super().__init__(errno.EADDRINUSE, f"no free UDP port in {port_min}-{port_max} on {host}")


def _check_server_url(url: str, schemes: tuple[str, ...]) -> None:
    """Refuse a malformed STUN/TURN URL at configuration time rather than at the first join."""
    match = _SERVER_URL.fullmatch(url)
    if match is None or match["scheme"] not in schemes:
        raise ValueError(f"ICE server URL {url!r}: expected a {' or '.join(schemes)} URL")
    if match["transport"] is not None and match["scheme"] in STUN_SCHEMES:
        raise ValueError(f"ICE server URL {url!r}: a STUN URL takes no transport")
    if match["port"] is not None and not 1 <= int(match["port"]) <= 65535:
        raise ValueError(f"ICE server URL {url!r}: port out of range")


def turn_credentials(
    secret: str, user: str, ttl_s: int, now: float | None = None
) -> tuple[str, str]:
    """TURN REST API credentials, as coturn checks them with `use-auth-secret`.

    The username is `<expiry unix time>:<user>`; the credential is base64(HMAC-SHA1(secret,
    username)). coturn recomputes the HMAC and refuses an expired username, so no per-user state
    is shared between Consilium and the TURN server.
    """
    expires = int(time.time() if now is None else now) + ttl_s
    username = f"{expires}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def client_ice_servers(
    settings: IceSettings, user: str, *, now: float | None = None
) -> list[dict[str, Any]]:
    """The `iceServers` of a browser's RTCPeerConnection configuration, for one user.

    `[{"urls": [stun...]}, {"urls": [turn...], "username": u, "credential": c}]`, each entry only
    when configured; `[]` when neither is.
    """
    servers: list[dict[str, Any]] = []
    if settings.stun_urls:
        servers.append({"urls": list(settings.stun_urls)})
    if settings.turn_urls and settings.turn_secret:
        username, credential = turn_credentials(
            settings.turn_secret, user, settings.turn_ttl_s, now
        )
        servers.append(
            {"urls": list(settings.turn_urls), "username": username, "credential": credential}
        )
    return servers


def server_ice_servers(
    settings: IceSettings, user: str, *, now: float | None = None
) -> list[RTCIceServer]:
    """The `iceServers` for the SFU's own aiortc peer connections (`RTCConfiguration`).

    aiortc uses a single STUN and a single TURN server, and only some URL forms: `stun:` (not
    `stuns:`), `turn:` over UDP or TCP, `turns:` over TCP. So this takes the first configured URL
    of each kind that aiortc can use. Always pass the result, even `[]`: with `iceServers=None`
    aiortc falls back to Google's public STUN server, which a hospital network should not be
    asked to reach.
    """
    servers: list[RTCIceServer] = []
    stun = next((url for url in settings.stun_urls if _aiortc_can_use(url)), None)
    if stun is not None:
        servers.append(RTCIceServer(urls=stun))
    turn = next((url for url in settings.turn_urls if _aiortc_can_use(url)), None)
    if turn is not None and settings.turn_secret:
        username, credential = turn_credentials(
            settings.turn_secret, user, settings.turn_ttl_s, now
        )
        servers.append(RTCIceServer(urls=turn, username=username, credential=credential))
    return servers


def _aiortc_can_use(url: str) -> bool:
    """Whether aiortc's `connection_kwargs` would use this (already validated) URL."""
    try:
        parsed = aiortc.rtcicetransport.parse_stun_turn_uri(url)
    except ValueError:  # e.g. a bracketed IPv6 address, which aiortc's parser does not take
        return False
    if parsed["scheme"] == "stun":
        return True
    if parsed["scheme"] == "turn":
        return parsed["transport"] in ("udp", "tcp")
    if parsed["scheme"] == "turns":
        return parsed["transport"] == "tcp"
    return False


# --- Hooks into aioice/aiortc -------------------------------------------------------------------

# aioice's own objects, captured before any install(); uninstall() puts them back.
_ORIGINAL_GET_HOST_ADDRESSES: Callable[..., list[str]] = aioice.ice.get_host_addresses
_ORIGINAL_CONNECTION: type[aioice.ice.Connection] = aioice.ice.Connection

_settings: IceSettings | None = None

# Set for the duration of a RangeBoundConnection.get_component_candidates call (and inherited by
# the STUN/TURN tasks it starts, whose binds do not match the host-candidate shape).
_host_port_range: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "consilium_ice_host_port_range", default=None
)

# Loops whose create_datagram_endpoint is wrapped, with the number of gatherings using it.
_wrapped_loops: dict[asyncio.AbstractEventLoop, int] = {}


def _configured_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """Stand-in for `aioice.ice.get_host_addresses`: the configured addresses, without ifaddr.

    With none configured: aioice's choice (every interface but loopback), then 127.0.0.1 when
    the settings ask for loopback or aioice found nothing. Without that, a node on a host with
    only loopback (the quickstart's `consilium serve` in a container or a lab VM) offers no
    candidate at all and media never connects, with nothing said anywhere.
    """
    if _settings is None:
        return _ORIGINAL_GET_HOST_ADDRESSES(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    if not _settings.host_addresses:
        addresses = _ORIGINAL_GET_HOST_ADDRESSES(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
        if use_ipv4 and (_settings.loopback or not addresses) and LOOPBACK not in addresses:
            addresses.append(LOOPBACK)
        return addresses
    return [
        address
        for address in _settings.host_addresses
        if (use_ipv4 if ipaddress.ip_address(address).version == 4 else use_ipv6)
    ]


@dataclass(slots=True)
class SocketBuffers:
    """The buffer sizes the kernel granted the latest media UDP socket (for /metrics).

    Linux doubles the size asked for (the other half is its bookkeeping) and reports the
    doubled figure; these are halved back, so they compare with the setting: smaller means
    `net.core.rmem_max` / `wmem_max` capped them.
    """

    receive: int = 0
    """SO_RCVBUF granted, in bytes (0: no media socket sized yet)."""
    send: int = 0
    """SO_SNDBUF granted, in bytes."""
    warned: bool = False
    """A smaller buffer than asked was logged (once per process: every socket gets the same)."""

    def size(self, sock: Any, wanted: int) -> None:
        """Ask for `wanted` bytes each way on `sock` (a socket, or asyncio's wrapper of one)
        and note what the kernel granted."""
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, wanted)
        self.receive = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
        self.send = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2
        if self.receive < wanted and not self.warned:
            self.warned = True
            logger.warning(
                "Media UDP socket buffer: %d bytes asked, %d granted; raise net.core.rmem_max "
                "and net.core.wmem_max to at least %d (docs/operations.md)",
                wanted,
                self.receive,
                wanted,
            )


socket_buffers = SocketBuffers()
"""The process's media socket buffer sizes, as granted (`RangeBoundConnection` sets them)."""


class RangeBoundConnection(aioice.ice.Connection):
    """aioice's ICE connection, binding its host candidates within the installed port range and
    sizing their socket buffers for a full room."""

    async def get_component_candidates(
        self, component: int, addresses: list[str], timeout: int = 5
    ) -> list[Candidate]:
        """Gather one component's candidates with aioice's own code, inside the port range."""
        port_range = _settings.port_range if _settings is not None else None
        if port_range is None:
            candidates = await super().get_component_candidates(component, addresses, timeout)
        else:
            token = _host_port_range.set(port_range)
            try:
                with _datagram_endpoints_in_range(asyncio.get_running_loop()):
                    candidates = await super().get_component_candidates(
                        component, addresses, timeout
                    )
            finally:
                _host_port_range.reset(token)
        self._size_buffers()
        return candidates

    def _size_buffers(self) -> None:
        """Give the host-candidate sockets buffers for bursts of a full room: aioice asks for
        256 KiB to receive, which a 10-person room overflowed (packets dropped before the SFU
        ever saw them, while the node had CPU to spare)."""
        wanted = _settings.socket_buffer_bytes if _settings is not None else 0
        if wanted <= 0:
            return
        for protocol in self._protocols:
            candidate = getattr(protocol, "local_candidate", None)
            transport = getattr(protocol, "transport", None)
            if candidate is None or candidate.type != "host" or transport is None:
                continue
            sock = transport.get_extra_info("socket")
            if sock is not None:
                socket_buffers.size(sock, wanted)


@contextlib.contextmanager
def _datagram_endpoints_in_range(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """Wrap `loop.create_datagram_endpoint` while at least one gathering on `loop` runs.

    Reference-counted so that overlapping gatherings (aiortc gathers every transport at once)
    neither wrap twice nor unwrap under each other; the loop is left as it was at the end.
    """
    if loop not in _wrapped_loops:
        loop.create_datagram_endpoint = functools.partial(  # type: ignore[method-assign, assignment]
            _create_host_endpoint, loop.create_datagram_endpoint
        )
        _wrapped_loops[loop] = 0
    _wrapped_loops[loop] += 1
    try:
        yield
    finally:
        _wrapped_loops[loop] -= 1
        if _wrapped_loops[loop] == 0:
            del _wrapped_loops[loop]
            # Removing the instance attribute uncovers the loop class's own method again.
            del loop.create_datagram_endpoint


async def _create_host_endpoint(
    create_datagram_endpoint: Callable[..., Any],
    protocol_factory: Callable[[], asyncio.DatagramProtocol],
    local_addr: tuple[str, int] | None = None,
    remote_addr: tuple[str, int] | None = None,
    **kwargs: Any,
) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
    """`loop.create_datagram_endpoint`, with aioice's host-candidate bind moved into the range.

    The host-candidate bind is the one with `local_addr=(address, 0)`, no remote address and no
    ready socket; any other call, or any call outside a gathering, passes through unchanged.
    """
    port_range = _host_port_range.get()
    if (
        port_range is None
        or local_addr is None
        or local_addr[1] != 0
        or remote_addr is not None
        or kwargs.get("sock") is not None
    ):
        return await create_datagram_endpoint(protocol_factory, local_addr, remote_addr, **kwargs)
    host = local_addr[0]
    port_min, port_max = port_range
    # Random order: concurrent gatherings rarely race for the same port, and a busy low end of
    # the range does not cost a failed bind per candidate.
    for port in random.sample(range(port_min, port_max + 1), port_max - port_min + 1):
        try:
            return await create_datagram_endpoint(
                protocol_factory, local_addr=(host, port), **kwargs
            )
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    logger.error(
        "No free UDP port in %d-%d on %s for an ICE host candidate: widen the SFU's port range "
        "(port_min/port_max) or open fewer peer connections per node",
        port_min,
        port_max,
        host,
    )
    raise PortRangeExhausted(host, port_min, port_max)


# Every name this module replaces: (module, name, aioice's/aiortc's own object, replacement).
_PATCHES: tuple[tuple[ModuleType, str, object, object], ...] = (
    (aioice.ice, "get_host_addresses", _ORIGINAL_GET_HOST_ADDRESSES, _configured_host_addresses),
    (aioice.ice, "Connection", _ORIGINAL_CONNECTION, RangeBoundConnection),
    (aioice, "Connection", _ORIGINAL_CONNECTION, RangeBoundConnection),
    (aiortc.rtcicetransport, "Connection", _ORIGINAL_CONNECTION, RangeBoundConnection),
)


def install(settings: IceSettings) -> None:
    """Make every ICE connection of this process gather as `settings` says.

    Host candidates come only from `settings.host_addresses` (when set) and bind within
    `port_min`-`port_max` (when set). Process-wide and idempotent: installing again replaces the
    settings, for gatherings that start afterwards.
    """
    global _settings
    _settings = settings
    for module, name, _original, replacement in _PATCHES:
        setattr(module, name, replacement)


def uninstall() -> None:
    """Give aioice and aiortc back their own functions and classes."""
    global _settings
    _settings = None
    for module, name, original, _replacement in _PATCHES:
        setattr(module, name, original)
