"""`GET /ws`: the signalling WebSocket, from the door to the close (see docs/protocol.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time

import msgspec
from aiohttp import WSMsgType, web

from core.errors import (
    AuthenticationError,
    BadMessage,
    ConsiliumError,
    RateLimited,
    ServerError,
    TimedOut,
)
from core.ratelimit import TokenBucket
from signaling import oidc
from signaling import protocol as p
from signaling.connection import CLOSE_HANDSHAKE_S, Connection
from signaling.dpop import InvalidDpopProof
from signaling.errors import close_code_of
from signaling.http import device_binding
from signaling.http.auth import peer_address
from signaling.http.bodies import short
from signaling.http.door import Refuse
from signaling.http.node import NODE, Node
from signaling.http.sessions import current_session
from signaling.identity import Identity
from signaling.logs import scrub

log = logging.getLogger("consilium.server")


SEND_BUFFER_BYTES = 64 * 1024
"""The kernel's send buffer per signalling socket (SO_SNDBUF; Linux doubles it).

Left to autotuning, a client that stops reading lets megabytes pile up in the kernel before
the outbound queue (`max_outbound_queue`) even starts to fill; signalling messages are small,
so a small buffer costs nothing and makes the queue the bound.
"""


class ConsiliumWebSocket(web.WebSocketResponse):
    """aiohttp's WebSocket, with an oversized message closed as 4400 like any bad message.

    aiohttp rejects a frame over `max_msg_size` from its header (before buffering it) and
    closes with 1009; our protocol documents one code for every bad message.
    """

    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = True) -> bool:
        """Close, mapping 1009 (message too big) to 4400."""
        if code == 1009:
            code, message = close_code_of(BadMessage), b"message too large"
        return await super().close(code=code, message=message, drain=drain)


def limit_send_buffer(transport: asyncio.BaseTransport | None) -> None:
    """Give a signalling socket a small kernel send buffer (`SEND_BUFFER_BYTES`)."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)


async def signalling(request: web.Request) -> web.StreamResponse:
    """`GET /ws`: the signalling WebSocket (see docs/protocol.md)."""
    node = request.app[NODE]
    settings = node.settings
    peer = peer_address(request)
    origin = request.headers.get("Origin")
    verdict = node.door.knock(
        origin=origin,
        # Only a browser's origin is checked against it (`Door.origin_allowed`): bots and the CLI
        # send none, and their joins skip formatting it (and aiohttp's cached scheme and host).
        address=f"{request.scheme}://{request.host}" if origin is not None else "",
        peer=peer,
        now=time.monotonic(),
    )
    if isinstance(verdict, Refuse):
        if verdict.audit_reason is not None:
            shown = {} if verdict.origin is None else {"origin": scrub(verdict.origin)[:200]}
            node.audit.append("join_refused", "deny", reason=verdict.audit_reason, **shown, ip=peer)
        raise verdict.error

    ws = ConsiliumWebSocket(
        max_msg_size=settings.max_message_bytes, compress=False, timeout=CLOSE_HANDSHAKE_S
    )
    await ws.prepare(request)
    if node.rooms.draining:
        # Stopping (`signaling.http.drain`): the client tries again, through another node.
        await ws.close(code=1001, message=b"node draining")
        return ws
    limit_send_buffer(request.transport)
    conn = Connection(
        ws,
        peer,
        TokenBucket(settings.messages_per_s, settings.message_burst),
        settings.max_outbound_queue,
        request.transport,
    )
    reason = "left"
    node.door.enter()
    try:
        # A browser signed in at the hospital's provider joins with an empty token: its session
        # (the cookie on this upgrade) stands in for the token, through the same gate.
        session = None
        if oidc.SESSION_COOKIE in request.cookies:
            # The shared state out of reach: no session, so the join is refused (4401) and the
            # client may retry; a token in the join still works.
            with contextlib.suppress(ConsiliumError):
                session = await current_session(request)
        joined = await _first_message(
            node, conn, session, device_binding.socket_urls(node, request)
        )
    finally:
        node.door.leave()
    if not joined:
        return ws
    try:
        reason = await _message_loop(node, conn)
    except asyncio.CancelledError:
        # aiohttp cancels the handler when the node shuts down, and when the TCP connection is
        # lost without a close (a crashed tab, a reset): not a shutdown while the node is ready.
        reason = "connection_lost" if node.ready else "server shutting down"
        raise
    except Exception:
        log.exception("signalling connection failed")
        reason = "server_error"
        conn.finish(close_code_of(ServerError), "server error")
    finally:
        if conn.dropped is not None:
            # Dropped by the server (its queue filled): its socket may be aborted under it.
            reason = conn.dropped.value
            _audit_close(node, conn, "dropped", reason)
        # The room's clean-up first, the close handshake after: a person who leaves (or whose
        # client vanished) is gone from the room, its media and a recording at once, and may
        # join again at once. Shielded: aiohttp cancels the handler once the socket is gone, and
        # a clean-up cut off half-way would leave the participant in the room.
        cleanup = asyncio.ensure_future(node.rooms.disconnect(conn, reason))
        _cleanups.add(cleanup)
        cleanup.add_done_callback(_cleanups.discard)
        await asyncio.shield(cleanup)
    await conn.end()
    return ws


_cleanups: set[asyncio.Future[None]] = set()
"""Disconnect clean-ups running on after their handler was cancelled."""


async def _first_message(
    node: Node, conn: Connection, session: oidc.SignInSession | None, urls: tuple[str, ...]
) -> bool:
    """Wait for `join` (or `resume`); False when the connection was closed instead.
    `session`: the connection's sign-in session, whose identity is used when the token is empty
    (and whose device key, if bound, must have signed the message's `dpop` proof for one of the
    socket's `urls`)."""
    signed_in = session.identity if session is not None else None
    try:
        msg = await conn.ws.receive(timeout=node.settings.join_timeout_s)
    except TimeoutError:
        node.audit.append("join_refused", "deny", reason="join_timeout", ip=conn.peer)
        await conn.close(close_code_of(TimedOut), "no join in time")
        return False
    if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
        return False
    join: p.Message | None = None
    if msg.type is WSMsgType.TEXT:
        try:
            join = p.client_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            join = None
    if isinstance(join, p.Join | p.Resume):
        try:
            device_binding.check_join(node, join.dpop, token=join.token, session=session, urls=urls)
        except InvalidDpopProof as exc:
            reason = str(exc.details.get("reason", "invalid"))
            node.audit.append("join_refused", "deny", reason=f"dpop_{reason}", ip=conn.peer)
            await conn.close(close_code_of(exc), f"{exc.code}: {reason}")
            return False
    if isinstance(join, p.Resume):
        return await _resume(node, conn, join, signed_in)
    if not isinstance(join, p.Join):
        node.audit.append("join_refused", "deny", reason="first_message_not_join", ip=conn.peer)
        await conn.close(close_code_of(AuthenticationError), "first message must be join")
        return False
    try:
        await node.rooms.join(conn, join, signed_in=signed_in)
    except ConsiliumError as exc:
        await node.rooms.disconnect(conn, "refused")
        await conn.close(close_code_of(exc), exc.message)
        return False
    except Exception:
        # E.g. the shared state (Redis) is unreachable: this client may retry; others go on.
        log.exception("join failed")
        with contextlib.suppress(Exception):
            await node.rooms.disconnect(conn, "server_error")
        await conn.close(close_code_of(ServerError), "server error, try again")
        return False
    return True


async def _resume(node: Node, conn: Connection, msg: p.Resume, signed_in: Identity | None) -> bool:
    """Take over a held participant (`signaling.reconnects`); False when refused and closed."""
    try:
        await node.rooms.reconnects.resume(conn, msg, signed_in=signed_in)
    except ConsiliumError as exc:
        await conn.close(close_code_of(exc), exc.message)
        return False
    except Exception:
        log.exception("resume failed")
        await conn.close(close_code_of(ServerError), "server error, try again")
        return False
    return True


async def _message_loop(node: Node, conn: Connection) -> str:
    """Read messages until the connection ends; returns why it ended.

    Ending on the server's side, it notes the close (`Connection.finish`) and returns: the
    handler closes after the room's clean-up, never before.
    """
    settings = node.settings
    ws = conn.ws
    decode = p.client_decoder.decode
    while True:
        try:
            msg = await ws.receive(timeout=settings.keepalive_timeout_s)
        except TimeoutError:
            _audit_close(node, conn, "timed_out", "keepalive_missed")
            conn.finish(close_code_of(TimedOut), "keepalive missed")
            return "timed_out"
        if conn.dropped is not None:
            # E.g. its outbound queue filled: the close is under way (Connection.send).
            return conn.dropped.value
        if msg.type is WSMsgType.TEXT:
            # Hot path, per client message: watched by bench/signaling.py.
            if not conn.bucket.allow(time.monotonic()):
                _audit_close(node, conn, "rate_limited", "messages_per_second")
                conn.finish(close_code_of(RateLimited), "too many messages")
                return "rate_limited"
            try:
                message = decode(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                _audit_close(node, conn, "bad_message", scrub(short(str(exc))))
                conn.finish(close_code_of(BadMessage), short(f"bad message: {exc}"))
                return "bad_message"
            await node.rooms.handle(conn, message)
            if conn.dropped is not None:
                return conn.dropped.value
            if conn.ending is not None or conn.closing:
                return "left"
        elif msg.type is WSMsgType.BINARY:
            _audit_close(node, conn, "bad_message", "binary_frame")
            conn.finish(close_code_of(BadMessage), "binary frames are not part of the protocol")
            return "bad_message"
        elif msg.type is WSMsgType.ERROR:
            # aiohttp refused the frame (over max_message_bytes, or not valid WebSocket).
            too_large = getattr(msg.data, "code", None) == 1009  # RFC 6455: message too big
            _audit_close(
                node, conn, "bad_message", "message_too_large" if too_large else "protocol_error"
            )
            return "bad_message"
        elif msg.type is WSMsgType.CLOSE and msg.data not in (1000, 1001):
            # Closed without `leave` (a page's test hook, a proxy): held for a resume.
            return "closed_without_leave"
        elif msg.type is WSMsgType.CLOSE:
            return "left"
        else:
            # CLOSED: the TCP connection went without a close frame.
            return "connection_lost"


def _audit_close(node: Node, conn: Connection, action: str, reason: str) -> None:
    node.audit.append(
        action, "deny", sub=_sub(conn), room=conn.room_id or None, reason=reason, ip=conn.peer
    )


def _sub(conn: Connection) -> str | None:
    return conn.identity.sub if conn.identity else None
