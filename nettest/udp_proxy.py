"""An impaired UDP link on loopback: a relay in front of one UDP server (in the tests, coturn's
TURN port) that passes every datagram through `nettest.impairment` in each direction.

Clients send to the proxy's port instead of the server's. Each client address gets its own
upstream socket, so the server sees one address per client (coturn keeps one allocation per
5-tuple) and answers reach the right client. `up` impairs client to server, `down` server to
client: a specialist's browser behind "800 kbps down" sends to the proxy and receives through
`down`. Datagrams the impairment keeps are sent on at their arrival time with `loop.call_at`;
a send the socket refuses (buffer full) counts as lost, as the kernel would drop it.

All clients of one proxy share its link (one rate limit per direction): give each impaired
person their own proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from nettest.impairment import CLEAN, DirectionCounters, ImpairedDirection, Impairment

Address = tuple[str, int]


@dataclass(slots=True)
class _Client:
    """One client address and its socket towards the server."""

    address: Address
    upstream: socket.socket


class ImpairedUdpProxy(asyncio.DatagramProtocol):
    """A UDP relay to `server` whose two directions are impaired; counters per direction."""

    def __init__(
        self,
        server: Address,
        *,
        up: Impairment = CLEAN,
        down: Impairment = CLEAN,
        seed: int | str = 0,
        host: str = "127.0.0.1",
    ) -> None:
        self.server = server
        self.host = host
        # One random stream per direction: the loss pattern upstream does not shift with the
        # amount of traffic downstream, so a run repeats datagram for datagram.
        self.up = ImpairedDirection(up, random.Random(f"{seed}/up"))
        self.down = ImpairedDirection(down, random.Random(f"{seed}/down"))
        self._clients: dict[Address, _Client] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def port(self) -> int:
        """The port clients send to (after `start`)."""
        assert self._transport is not None, "start() the proxy first"
        return int(self._transport.get_extra_info("sockname")[1])

    @property
    def counters(self) -> dict[str, DirectionCounters]:
        """`{"up": ..., "down": ...}`: what each direction did so far."""
        return {"up": self.up.counters, "down": self.down.counters}

    async def start(self) -> ImpairedUdpProxy:
        """Listen on a free port of `host`."""
        self._loop = asyncio.get_running_loop()
        await self._loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, 0))
        return self

    def close(self) -> None:
        """Stop listening and close every upstream socket (datagrams in flight are dropped)."""
        if self._transport is not None:
            self._transport.close()
        for client in self._clients.values():
            self._forget(client)
        self._clients.clear()

    # -- asyncio.DatagramProtocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the listening transport."""
        # Not an isinstance check: asyncio's selector transport does not subclass the ABC.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        """A client sent `data`: through `up`, then to the server from its upstream socket."""
        client = self._client((str(addr[0]), int(addr[1])))
        self._schedule(self.up, data, functools.partial(self._send_up, client, data))

    # -- the two directions ------------------------------------------------------------------

    def _client(self, address: Address) -> _Client:
        client = self._clients.get(address)
        if client is None:
            upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            upstream.setblocking(False)
            upstream.bind((self.host, 0))
            upstream.connect(self.server)
            client = _Client(address, upstream)
            self._clients[address] = client
            assert self._loop is not None
            self._loop.add_reader(upstream.fileno(), self._server_sent, client)
        return client

    def _server_sent(self, client: _Client) -> None:
        """Read what the server sent to one client; each datagram goes through `down`."""
        while True:
            try:
                data = client.upstream.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ICMP port unreachable from a server that went away
                return
            self._schedule(self.down, data, functools.partial(self._send_down, client, data))

    def _schedule(
        self, direction: ImpairedDirection, data: bytes, send: Callable[[], None]
    ) -> None:
        """Send `data` when `direction` says it arrives, or never."""
        assert self._loop is not None
        arrives = direction.admit(len(data), self._loop.time())
        if arrives is not None:
            self._loop.call_at(arrives, send)

    def _send_up(self, client: _Client, data: bytes) -> None:
        if client.address not in self._clients:
            return  # closed meanwhile
        try:
            client.upstream.send(data)
        except OSError:
            self.up.counters.lost += 1

    def _send_down(self, client: _Client, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self._transport.sendto(data, client.address)

    def _forget(self, client: _Client) -> None:
        assert self._loop is not None
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(client.upstream.fileno())
        client.upstream.close()
