"""Sending media to a peer: SRTP-protect and send on the nominated ICE pair, synchronously.

aiortc's sender path is a coroutine chain per packet (measured: a quarter of a forwarder's CPU);
the SFU skips it and reaches into aiortc's DTLS transport (its SRTP session, its nominated ICE
pair) and pylibsrtp's buffers instead (checked at each aiortc upgrade, with `sfu.aiortc_hooks`):

- `rtp_sender` protects and sends one forwarded RTP packet per call, the route (pair, session,
  socket) looked up again only when it changes, and numbers every packet it sends a subscriber
  in the transport-wide sequence (`sfu.downlink.SentPackets`) as it leaves, so the subscriber's
  transport-cc feedback tells the downlink estimator what arrived when;
- `send_rtp` / `send_rtcp` protect and send one packet on the general route (retransmissions,
  RTCP);
- `srtp_protector` is `session.protect` without pylibsrtp's per-call allocation.

`tests/test_sfu_hooks.py` has a test per function.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pylibsrtp
from aioice.ice import StunProtocol
from aiortc.rtcdtlstransport import RTCDtlsTransport, State
from pylibsrtp._binding import ffi as _ffi
from pylibsrtp._binding import lib as _lib

from core.media.rtp import TRANSPORT_CC_OFFSET
from sfu.downlink import SentPackets


def rtp_sender(dtls: RTCDtlsTransport, sent: SentPackets | None = None) -> Callable[[bytes], bool]:
    """A function that SRTP-protects and sends one RTP packet on `dtls` now (False when it
    cannot send).

    One Python frame per forwarded packet: the route (nominated pair, SRTP session, socket) is
    looked up again only when the pair or the session changes, and the packet is protected in
    the session's own buffer and handed to the socket from there (no copy out of the buffer).

    `sent`: the transport's transport-wide numbering (one for all the senders of a transport).
    A packet whose header extensions begin with the transport-wide sequence number placeholder
    (`core.media.rtp.TRANSPORT_CC_OFFSET`) gets the next number written there as it is
    protected, and its send time and size are recorded.
    """
    nominated = dtls.transport._connection._nominated
    # The placeholder's element header, where a one-byte-form block without CSRCs puts it.
    stamp_at = TRANSPORT_CC_OFFSET
    element = -1 if sent is None else sent.extension_id << 4 | 1
    stamp = sent.stamp if sent is not None else None
    clock = time.monotonic_ns
    connected = State.CONNECTED
    length = _ffi.new("int *")
    protect_c = _lib.srtp_protect
    # The route, rebound by `reroute`. `session` also keeps its cdata alive: pylibsrtp frees
    # libsrtp's context when the session is collected.
    pair: Any = None
    session: Any = None
    srtp: Any = None
    cdata: Any = None
    view: memoryview = memoryview(b"")
    limit = 0
    transport: Any = None
    address: Any = None
    sock_sendto: Callable[[Any, Any], int] | None = None
    other_route: Callable[[bytes], None] | None = None

    def reroute(current: Any) -> bool:
        nonlocal pair, session, srtp, cdata, view, limit, transport, address, sock_sendto
        nonlocal other_route
        pair, session = current, dtls._tx_srtp
        if current is None or session is None:
            pair = session = sock_sendto = other_route = None
            return False
        address = current.remote_addr
        protocol = current.protocol
        transport = getattr(protocol, "transport", None)
        sock = getattr(transport, "_sock", None) if isinstance(protocol, StunProtocol) else None
        if sock is None:  # TURN, or no socket: the slower, general route
            protect = srtp_protector(session)
            sendto, to = _route(current)
            other_route = lambda data: sendto(protect(numbered(data)), to)  # noqa: E731
            sock_sendto = None
            return True
        other_route = None
        srtp, cdata = session._srtp, session._cdata
        view = memoryview(session._buffer)
        limit = len(cdata) - pylibsrtp.SRTP_MAX_TRAILER_LEN
        sock_sendto = sock.sendto
        return True

    def send(data: bytes) -> bool:
        # Hot path, per forwarded packet and subscriber: watched by bench/forwarding.py.
        if dtls._state is not connected:
            return False
        if (nominated.get(1) is not pair or dtls._tx_srtp is not session) and not reroute(
            nominated.get(1)
        ):
            return False
        if sock_sendto is None:
            if other_route is None:
                return False
            other_route(data)
            return True
        size = len(data)
        if size > limit:
            raise ValueError("packet is too long")
        length[0] = size
        view[:size] = data
        if size > stamp_at + 1 and data[stamp_at - 1] == element and data[0] & 0x1F == 0x10:
            number = stamp(size, clock() // 1000)  # type: ignore[misc]
            view[stamp_at] = number >> 8
            view[stamp_at + 1] = number & 0xFF
        status = protect_c(srtp[0], cdata, length)
        if status:
            raise pylibsrtp.Error(f"srtp_protect failed: {status}")
        packet = view[: length[0]]
        # The socket itself while the kernel takes the datagram (skipping asyncio's checks);
        # asyncio's transport, which buffers (a copy), when it would block or has a backlog.
        if transport._buffer:
            transport.sendto(bytes(packet), address)
            return True
        try:
            sock_sendto(packet, address)
        except (BlockingIOError, InterruptedError):
            transport.sendto(bytes(packet), address)
        except OSError:
            pass  # e.g. ICMP unreachable: like asyncio's transport, drop this datagram
        return True

    def numbered(data: bytes) -> bytes:
        """`data` with its transport-wide sequence number written (the general route's copy)."""
        size = len(data)
        if size > stamp_at + 1 and data[stamp_at - 1] == element and data[0] & 0x1F == 0x10:
            number = stamp(size, clock() // 1000)  # type: ignore[misc]
            return data[:stamp_at] + bytes((number >> 8, number & 0xFF)) + data[stamp_at + 2 :]
        return data

    return send


def srtp_protector(session: pylibsrtp.Session) -> Callable[[bytes], bytes]:
    """`session.protect` without pylibsrtp's per-call allocation (same libsrtp call, same
    buffer; measured at about a third of the wrapper's cost per packet)."""
    # Hold the session's own cdata (not just the raw pointer): it frees libsrtp's context when
    # garbage-collected, so the closure must keep it alive.
    srtp = session._srtp
    cdata = session._cdata
    buffer = session._buffer
    limit = len(cdata) - pylibsrtp.SRTP_MAX_TRAILER_LEN
    length = _ffi.new("int *")
    protect = _lib.srtp_protect

    def protect_packet(data: bytes) -> bytes:
        size = len(data)
        if size > limit:
            raise ValueError("packet is too long")
        length[0] = size
        buffer[0:size] = data
        status = protect(srtp[0], cdata, length)
        if status:
            raise pylibsrtp.Error(f"srtp_protect failed: {status}")
        return buffer[0 : length[0]]

    return protect_packet


def send_ready(dtls: RTCDtlsTransport) -> bool:
    """Whether the transport has its SRTP keys and can send (DTLS connected)."""
    return dtls._state is State.CONNECTED


def send_rtp(dtls: RTCDtlsTransport, data: bytes) -> bool:
    """SRTP-protect and send one RTP packet now; False when the transport cannot send."""
    if dtls._state is not State.CONNECTED:
        return False
    return _sendto(dtls, dtls._tx_srtp.protect(data))


def send_rtcp(dtls: RTCDtlsTransport, data: bytes) -> bool:
    """SRTCP-protect and send one RTCP compound packet now."""
    if dtls._state is not State.CONNECTED:
        return False
    return _sendto(dtls, dtls._tx_srtp.protect_rtcp(data))


def _route(pair: Any) -> tuple[Callable[[bytes, Any], Any], Any]:
    """How to send on a nominated pair: the datagram transport's sendto, or (TURN) a task."""
    protocol = pair.protocol
    address = pair.remote_addr
    if isinstance(protocol, StunProtocol):
        transport = protocol.transport
        sock = getattr(transport, "_sock", None)
        if sock is None:
            return transport.sendto, address

        def sendto(data: bytes, addr: Any) -> None:
            # The socket itself while the kernel takes the datagram (skipping asyncio's checks);
            # asyncio's transport, which buffers, when it would block or has a backlog.
            if transport._buffer:  # type: ignore[attr-defined]
                transport.sendto(data, addr)
                return
            try:
                sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                transport.sendto(data, addr)
            except OSError:
                pass  # e.g. ICMP unreachable: like asyncio's transport, drop this datagram

        return sendto, address
    return (lambda data, addr: _spawn(protocol.send_data(data, addr))), address


def _sendto(dtls: RTCDtlsTransport, data: bytes) -> bool:
    pair = dtls.transport._connection._nominated.get(1)
    if pair is None:
        return False
    sendto, address = _route(pair)
    sendto(data, address)
    return True


_tasks: set[asyncio.Future[Any]] = set()


def _spawn(coro: Awaitable[Any]) -> None:
    task = asyncio.ensure_future(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
