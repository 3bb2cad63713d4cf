"""ICE restart on an existing peer connection, which aiortc does not do (RFC 8445 section 9).

A network change (Wi-Fi to 4G, a laptop lid, a VPN coming up) leaves a session's nominated
candidate pair dead. The browser then offers again with new ICE credentials (`iceRestart`) on
the publish session, or asks the SFU to (`restart_ice`) on the subscribe session, where the SFU
is the offerer. aiortc keeps one aioice `Connection` per ICE transport for its whole life: a
description with new credentials is accepted, but nothing checks the new candidates, and its
answer still carries the old credentials.

How a restart runs here, keeping the DTLS association, its SRTP keys, the SCTP association
(annotations, chat) and the hooks on the media path (`sfu.aiortc_hooks`), which all hold the
transport's own connection object:

1. `IceRestart.begin` (before the new remote description is applied): a *fresh* aioice
   connection with new local credentials, of the same class and settings as the transport's
   (so it gathers on the configured interfaces and port range: `sfu.ice`). Remote candidates
   for the transport go to the fresh connection from now on, and media arriving on its sockets
   goes through the transport's own hooks (the browser sends on the new pair as soon as it has
   nominated it). The old path's consent checks stop: the old path is usually dead, and its
   expiry would close the connection, the DTLS transport and the session.
2. `gather`: the fresh connection gathers; its credentials and candidates become the ones
   aiortc writes into the next description (the answer, or the SFU's re-offer).
3. `connect` (with the remote credentials of the new description): the fresh connection runs
   its checks. Once a pair is nominated, its path is *swapped into* the transport's connection
   (`_swap_path`): sockets, check list, remote credentials and candidates, the nominated pair
   (in the same dict object: `srtp_send.rtp_sender` holds it), a new consent task. The old
   sockets close. If the checks fail, the transport's connection is left with its old path and
   its consent checks run again, so a dead path still ends the session as before; the client
   falls back to rejoining.

Everything here reaches into aioice's and aiortc's private attributes (named in `_ATTRIBUTES`);
`tests/test_sfu_ice_restart.py` checks they exist, and restarts real aiortc peer connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from typing import Any

import aioice.ice
from aiortc import RTCPeerConnection
from aiortc.rtcicetransport import RTCIceTransport

log = logging.getLogger("consilium.sfu.ice")

_ATTRIBUTES = (
    "_local_username", "_local_password", "_local_candidates", "_protocols", "_check_list",
    "_nominated", "_nominating", "_components", "_remote_candidates", "_remote_candidates_end",
    "_query_consent_task", "_use_ipv4", "_use_ipv6", "_transport_policy",
)  # fmt: skip
"""The aioice `Connection` attributes a restart reads or replaces."""

_UFRAG = re.compile(r"^a=ice-ufrag:(\S+)\s*$", re.MULTILINE)
_PWD = re.compile(r"^a=ice-pwd:(\S+)\s*$", re.MULTILINE)

RESTART_TIMEOUT_S = 15.0
"""How long the new generation's checks may take before the restart is given up. aioice's
controlled side never gives up by itself while a pair answers but the browser nominates none;
the web client rejoins after 10 s without media, so this only bounds what is left behind."""

_RESTART = "_consilium_restart"
"""The attribute of an aioice connection naming its restart under way."""


def remote_credentials(sdp: str) -> tuple[str, str] | None:
    """The ICE username fragment and password of a description (its first, which BUNDLE makes
    the only one that counts), or None when it has none."""
    ufrag, pwd = _UFRAG.search(sdp), _PWD.search(sdp)
    if ufrag is None or pwd is None:
        return None
    return ufrag[1], pwd[1]


def restarts(transport: RTCIceTransport, sdp: str) -> bool:
    """Whether a remote description restarts ICE on `transport`: the transport has connected
    once with other remote credentials than the description's (and than those of the restart
    under way: a renegotiation during a restart carries the new ones again)."""
    current = transport._connection.remote_username
    credentials = remote_credentials(sdp)
    if current is None or credentials is None or credentials[0] == current:
        return False
    restart = pending(transport)
    return restart is None or restart.fresh.remote_username != credentials[0]


def restart_for(transport: RTCIceTransport | None, sdp: str) -> IceRestart | None:
    """Begin a restart on `transport` if the remote description `sdp` (not yet applied)
    restarts ICE; None otherwise (the first description, a renegotiation)."""
    if transport is None or not restarts(transport, sdp):
        return None
    return IceRestart.begin(transport)


def pending(transport: RTCIceTransport) -> IceRestart | None:
    """The restart under way on `transport`, if any."""
    restart = getattr(transport._connection, _RESTART, None)
    return restart if isinstance(restart, IceRestart) else None


def abandon_pending(pc: RTCPeerConnection) -> None:
    """Drop any restart under way on a peer connection's transports (it is closing: a fresh
    connection would otherwise hold its sockets until `RESTART_TIMEOUT_S`)."""
    transports = [t.receiver.transport.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport.transport)
    for transport in transports:
        restart = pending(transport)
        if restart is not None:
            restart.abandon()


class IceRestart:
    """One ICE restart of an aiortc ICE transport (see the module's docstring)."""

    def __init__(self, transport: RTCIceTransport) -> None:
        self.transport = transport
        self.connection: aioice.ice.Connection = transport._connection
        """The transport's own connection: DTLS, SCTP and the media hooks hold it."""
        old = self.connection
        self.fresh: aioice.ice.Connection = type(old)(
            ice_controlling=old.ice_controlling,
            stun_server=old.stun_server,
            turn_server=old.turn_server,
            turn_username=old.turn_username,
            turn_password=old.turn_password,
            turn_ssl=old.turn_ssl,
            turn_transport=old.turn_transport,
            use_ipv4=old._use_ipv4,
            use_ipv6=old._use_ipv6,
            transport_policy=old._transport_policy,
        )
        """The connection that looks for the new path."""
        self.kept = (old._local_username, old._local_password, old._local_candidates)
        """The old generation's local credentials and candidates, put back if the restart is
        dropped (a peer that answers without restarting keeps talking to those)."""
        self.done = False
        self.ended: Callable[[], None] | None = None
        """Called once when the restart is over: swapped to the new path, given up, or dropped
        (not when a newer restart of the same transport replaces it: that one carries on). Its
        session sets it (`SessionOwner.ice_restart_began`)."""

    @classmethod
    def begin(cls, transport: RTCIceTransport) -> IceRestart:
        """Start a restart on `transport` (replacing one still under way): call it before the
        description with the new remote credentials is applied, so its candidates go to the
        fresh connection."""
        previous = pending(transport)
        if previous is not None:
            previous.ended = None  # the media is still reconnecting: the new one says when not
            previous.abandon()
        restart = cls(transport)
        old, fresh = restart.connection, restart.fresh
        setattr(old, _RESTART, restart)
        # Trickled and in-description candidates of the new generation: aiortc hands them to
        # the transport's connection, by attribute lookup at each call.
        old.add_remote_candidate = fresh.add_remote_candidate  # type: ignore[method-assign]
        transport.iceGatherer._remote_candidates_end = False
        # What arrives on the new sockets before the swap is the transport's (DTLS, SRTP).
        fresh.data_received = old.data_received  # type: ignore[method-assign]
        for name in ("_consilium_media", "_consilium_late"):
            if hasattr(old, name):
                setattr(fresh, name, getattr(old, name))
        _cancel_consent(old)
        return restart

    async def gather(self) -> None:
        """Gather the fresh connection's candidates and make its credentials and candidates
        the ones aiortc writes into the next description."""
        fresh, old = self.fresh, self.connection
        await fresh.gather_candidates()
        old._local_username = fresh.local_username
        old._local_password = fresh.local_password
        old._local_candidates = fresh.local_candidates

    def offered_in(self, sdp: str) -> bool:
        """Whether a local description carries this restart's new credentials (so the answer
        to it is the one that decides the restart)."""
        credentials = remote_credentials(sdp)
        return credentials is not None and credentials[0] == self.fresh.local_username

    def start(self, sdp: str, restored: Callable[[], None] | None = None) -> None:
        """Connect (in a task) with the remote credentials of the applied description `sdp`;
        `restored` is called once media has its new path (to ask for keyframes: what was lost
        on the dead path left the receivers' decoders waiting for one)."""
        credentials = remote_credentials(sdp)
        if credentials is None:
            _spawn(self._give_up())
            return

        async def run() -> None:
            if await self.connect(*credentials) and restored is not None:
                restored()

        _spawn(run())

    async def connect(
        self, remote_username: str, remote_password: str, timeout_s: float | None = None
    ) -> bool:
        """Check the new candidates with the remote side's new credentials; on success swap the
        nominated path into the transport's connection. False when ICE failed (the old path is
        kept, and its consent checks run again). `timeout_s`: `RESTART_TIMEOUT_S` unless given
        (read at each call)."""
        fresh = self.fresh
        fresh.remote_username = remote_username
        fresh.remote_password = remote_password
        fresh.remote_is_lite = False
        try:
            await asyncio.wait_for(
                fresh.connect(), RESTART_TIMEOUT_S if timeout_s is None else timeout_s
            )
        except (ConnectionError, TimeoutError):
            if not self.done:
                log.info("ICE restart failed: no candidate pair of the new generation works")
                await self._give_up()
            return False
        if self.done:  # abandoned meanwhile for a newer restart
            return False
        await self._swap_path()
        return True

    def abandon(self) -> None:
        """Drop this restart (for a newer one, or a description that could not be applied):
        the transport's connection keeps its old path, and its fresh connection closes."""
        if self.done:
            return
        self._keep_old_path()
        _spawn(self.fresh.close())

    async def _give_up(self) -> None:
        self._keep_old_path()
        await self.fresh.close()

    def _end(self) -> None:
        """The restart is decided (either way): say so, once."""
        self.done = True
        ended, self.ended = self.ended, None
        if ended is not None:
            ended()

    def _keep_old_path(self) -> None:
        old = self.connection
        _restore(old)
        old._local_username, old._local_password, old._local_candidates = self.kept
        # The old path's consent checks again: a dead path still ends the session.
        if not old._closing and old._query_consent_task is None and old._nominated:
            old._query_consent_task = asyncio.create_task(old.query_consent())
        self._end()

    async def _swap_path(self) -> None:
        """Move the fresh connection's nominated path into the transport's connection."""
        self._end()
        old, fresh = self.connection, self.fresh
        _cancel_consent(fresh)
        retired = old._protocols
        for protocol in fresh._protocols:
            protocol.receiver = old
        old._protocols = fresh._protocols
        old._check_list = fresh._check_list
        old._components = fresh._components
        old._remote_candidates = fresh._remote_candidates
        old._remote_candidates_end = fresh._remote_candidates_end
        old._nominating = fresh._nominating
        old.remote_username = fresh.remote_username
        old.remote_password = fresh.remote_password
        old.ice_controlling = fresh.ice_controlling  # a role conflict may have switched it
        old._local_candidates = fresh.local_candidates
        # The same dict object, refilled: the media path's senders hold it.
        old._nominated.clear()
        old._nominated.update(fresh._nominated)
        _restore(old)
        fresh._protocols = []
        with contextlib.suppress(Exception):
            await aioice.ice.unref_mdns_protocol(fresh)
        if not old._closing:
            old._query_consent_task = asyncio.create_task(old.query_consent())
        for protocol in retired:
            with contextlib.suppress(Exception):
                await protocol.close()
        pair = old._nominated.get(1)
        log.info("ICE restarted: media now on %s", pair.remote_addr if pair else "no pair")


def _restore(connection: aioice.ice.Connection) -> None:
    """Give the connection back its own `add_remote_candidate`, and forget the restart."""
    with contextlib.suppress(AttributeError):
        del connection.add_remote_candidate
    with contextlib.suppress(AttributeError):
        delattr(connection, _RESTART)


def _cancel_consent(connection: aioice.ice.Connection) -> None:
    task = connection._query_consent_task
    if task is not None and not task.done():
        task.cancel()
    connection._query_consent_task = None


_tasks: set[asyncio.Future[Any]] = set()


def _spawn(coro: Any) -> None:
    task = asyncio.ensure_future(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
