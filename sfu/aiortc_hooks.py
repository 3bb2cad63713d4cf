"""Every place the SFU reaches into aiortc's internals, in one module (checked at each upgrade).

aiortc gives us ICE, DTLS, SRTP, SCTP and SDP. Its media pipeline (receiver → jitter buffer →
decoder thread → track → encoder → sender) is what forwarding bypasses:

- a publisher's DTLS transport hands each decrypted RTP/RTCP datagram to `_handle_rtp_data` /
  `_handle_rtcp_data`; `hook_transport` replaces both on that transport instance, so packets go
  to the forwarder as bytes, unparsed, and no jitter buffer or decoder ever sees them;
- `RTCRtpReceiver.receive` would start a decoder thread; `bypass_receiver` starts the receiver
  without it (registration with the transport and the RTCP task stay aiortc's);
- `RTCRtpSender.send` would start an RTP loop that pulls frames from a track and encodes them,
  and an RTCP loop that reports its own (empty) counters; `bypass_sender` parks both loops, keeps
  what `stop()` waits for, and reports the negotiated send parameters to the forwarder;
- `send_rtp` SRTP-protects and sends one datagram on the nominated ICE pair synchronously,
  skipping aiortc's coroutine chain (measured: a quarter of a forwarder's CPU);
- `restrict_codecs` narrows a transceiver's negotiated codecs to the room's codec;
- `negotiate_extensions` adds header extensions aiortc does not know (simulcast's RID ones) to
  what a transceiver negotiated;
- the socket callback (`_datagram_received`, installed on aioice's `StunProtocol`) takes SRTP
  past the STUN parser, reads what is queued behind it, and reads the kernel's receive
  timestamp once per wakeup: RTP that waited past `queue_delay`'s bound is handed on marked
  late (`RtpHandler`'s third argument), so that a recording still stores it while the forwarder
  keeps it from live subscribers and asks its publisher for a keyframe (`sfu.queue_delay`).
- `watch_received_rtp` shows a client (`consilium bot`) each RTP packet its receiver handles,
  so it counts frames without decoding them.
- `negotiate_transport_cc` accepts transport-cc (its header extension and RTCP feedback type,
  both unknown to aiortc) where the offer proposes it (`sfu.twcc`);
- `rtp_sender` numbers every packet it sends a subscriber in the transport-wide sequence
  (`sfu.downlink.SentPackets`) as it leaves, so the subscriber's transport-cc feedback tells
  the downlink estimator what arrived when.

aiortc versions tested: 1.16.x (pinned in pyproject.toml). `tests/test_sfu_hooks.py` has a test
per hook.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pylibsrtp
from aioice.ice import StunProtocol
from aiortc import RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc.rtcdtlstransport import RTCDtlsTransport, State
from aiortc.rtcrtpparameters import (
    RTCRtcpFeedback,
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpReceiveParameters,
    RTCRtpSendParameters,
)
from pylibsrtp._binding import ffi as _ffi
from pylibsrtp._binding import lib as _lib

from core.media.rtp import TRANSPORT_CC_OFFSET, TRANSPORT_CC_URI
from sfu.downlink import SentPackets
from sfu.queue_delay import QueueDelay

log = logging.getLogger("consilium.sfu.hooks")

RtpHandler = Callable[[bytes, int, bool], None]
"""Called with each decrypted RTP packet, its arrival time (ms of the monotonic clock: the
forwarder's `now`) and whether it waited in the node past the real-time bound (`queue_delay`:
a recording keeps it, live subscribers do not get it)."""
RtcpHandler = Callable[[bytes], None]
"""Called with each decrypted RTCP compound packet."""


def hook_transport(
    dtls: RTCDtlsTransport, on_rtp: RtpHandler | None, on_rtcp: RtcpHandler | None
) -> None:
    """Route a DTLS transport's decrypted RTP and RTCP to the forwarder, as bytes.

    Two hooks: the ICE connection's `data_received` handles SRTP/SRTCP synchronously, in the
    socket's callback, once DTLS is up (no asyncio.Queue hand-off, no coroutine per packet);
    aiortc's own `_handle_rtp_data` / `_handle_rtcp_data` are replaced too, for whatever still
    takes aiortc's path. The handlers must not raise: an exception inside aiortc's receive loop
    would end it silently, so both hooks log and drop instead.
    """
    connection = dtls.transport._connection
    original_data_received = connection.data_received
    # The session's unprotect without pylibsrtp's per-call allocation, rebuilt if DTLS gives
    # the transport another session.
    unprotector: list[Any] = [None, None]  # session, its unprotect

    def data_received(data: bytes, component: int, late: bool = False) -> None:
        # Hot path, per received packet: watched by bench/forwarding.py.
        if data and 127 < data[0] < 192 and dtls._state is State.CONNECTED:
            session = dtls._rx_srtp
            try:
                if 191 < data[1] < 224:
                    if on_rtcp is not None:
                        on_rtcp(session.unprotect_rtcp(data))
                elif on_rtp is not None:
                    if unprotector[0] is not session:
                        unprotector[:] = [session, srtp_unprotector(session)]
                    on_rtp(unprotector[1](data), time.monotonic_ns() // 1_000_000, late)
            except pylibsrtp.Error:
                pass  # not ours, replayed or tampered: SRTP refuses it
            except Exception:
                log.exception("media handler failed; packet dropped")
            return
        original_data_received(data, component)

    connection.data_received = data_received  # type: ignore[method-assign]
    # The socket callback hands SRTP straight here, before aioice tries to parse it as STUN.
    connection._consilium_media = data_received  # type: ignore[attr-defined]
    _install_datagram_shortcut()

    async def handle_rtp_data(data: bytes, arrival_time_ms: int) -> None:
        # aiortc's arrival time is on its NTP wall clock; the forwarder's is monotonic.
        if on_rtp is not None:
            try:
                on_rtp(data, time.monotonic_ns() // 1_000_000, False)
            except Exception:
                log.exception("RTP handler failed; packet dropped")

    async def handle_rtcp_data(data: bytes) -> None:
        if on_rtcp is not None:
            try:
                on_rtcp(data)
            except Exception:
                log.exception("RTCP handler failed; packet dropped")

    dtls._handle_rtp_data = handle_rtp_data  # type: ignore[method-assign]
    dtls._handle_rtcp_data = handle_rtcp_data  # type: ignore[method-assign]


_stun_datagram_received = StunProtocol.datagram_received

DATAGRAM_BUFFER = 65536
"""Bytes asked of each `recvfrom` that `_read_queued` makes: every UDP datagram fits (IPv4 and
IPv6 payloads end below 65,536 bytes). Not asyncio's 256 KiB: in a small process that size
costs ~9 us per call to allocate and trim (measured: 8.8 us against 0.65 us for 64 KiB; the
server's larger heap did not show it, so asyncio's own first read is left as it is)."""
DATAGRAMS_PER_WAKEUP = 32
"""Most datagrams one socket's reader callback takes before other sockets and timers run."""

RECHECK_LATE_EVERY = 8
"""While a wakeup's media is late, its wait is measured again every this many datagrams (a
syscall each time), so the tail of a drained backlog is forwarded."""
queue_delay = QueueDelay(max_ms=0)
"""The process's media waiting times and late drops. No bound until the MediaServer sets one
from its settings: a client of these hooks (the benchmark's receivers) measures what arrives,
late or not."""
_SIOCGSTAMPNS = 0x8907
"""Linux ioctl: the receive timestamp (struct timespec) of the last datagram read."""
_TIMESPEC = struct.Struct("@qq")
_TIMESPEC_BUF = bytes(_TIMESPEC.size)
_ioctl = fcntl.ioctl


def _datagram_received(self: StunProtocol, data: bytes | str, addr: tuple[Any, ...]) -> None:
    # Hot path, per received datagram: watched by bench/forwarding.py. SRTP/SRTCP (first byte
    # 128-191) can never be STUN (first two bits zero), so skip aioice's failed STUN parse.
    if data and 127 < data[0] < 192:  # type: ignore[operator]
        receiver = self.receiver
        media = getattr(receiver, "_consilium_media", None)
        if media is not None:
            transport: Any = self.transport
            sock = getattr(transport, "_sock", None)
            waited = _waited_ms(sock) if sock is not None else 0
            late = not queue_delay.fresh(waited)
            if late and not 191 < data[1] < 224:  # type: ignore[operator]
                queue_delay.drop()  # RTP only: RTCP feedback is never held back
                media(data, 1, True)
            else:
                media(data, 1)
            taken = 1 + _read_queued(self, media, late) if sock is not None else 1
            queue_delay.record(waited, taken)
            return
    _stun_datagram_received(self, data, addr)


def _waited_ms(sock: Any) -> int:
    """How long the datagram just read from `sock` waited in the node, in ms: from the
    kernel's receive timestamp (SIOCGSTAMPNS, one syscall per wakeup, ~1 us) to now. 0 when
    unknown: the first datagram of a socket (the call turns its timestamps on), or a step of
    the wall clock the kernel stamps with."""
    try:
        seconds, nanoseconds = _TIMESPEC.unpack(_ioctl(sock.fileno(), _SIOCGSTAMPNS, _TIMESPEC_BUF))
    except OSError:
        return 0
    waited = (time.time_ns() - seconds * 1_000_000_000 - nanoseconds) // 1_000_000
    return waited if 0 <= waited < 60_000 else 0


def _read_queued(protocol: StunProtocol, media: Callable[..., None], late: bool) -> int:
    """Take the datagrams already queued on this socket now, in this callback: a video frame's
    packets arrive back to back, and each event-loop wakeup (epoll, handle, callback) costs
    about as much as unprotecting a packet. Stops at the first EAGAIN; returns how many media
    datagrams it took. `late`: the first datagram of this wakeup waited too long, so the RTP
    queued behind it (which waited about as long) is handed on marked late too; the wait is
    measured again every `RECHECK_LATE_EVERY` datagrams."""
    # Hot path, per event-loop wakeup on a media socket: watched by bench/forwarding.py.
    transport: Any = protocol.transport
    sock = getattr(transport, "_sock", None)
    if sock is None:
        return 0
    recvfrom = sock.recvfrom
    taken = 0
    for _ in range(DATAGRAMS_PER_WAKEUP - 1):
        if transport.is_closing():
            return taken
        try:
            data, addr = recvfrom(DATAGRAM_BUFFER)
        except (BlockingIOError, InterruptedError):
            return taken
        except OSError as exc:
            protocol.error_received(exc)
            return taken
        if data and 127 < data[0] < 192:
            taken += 1
            if late and not taken % RECHECK_LATE_EVERY:
                # The backlog may have drained: forward again as soon as media is fresh.
                late = not queue_delay.fresh(_waited_ms(sock))
            if late and not 191 < data[1] < 224:
                queue_delay.drop()
                media(data, 1, True)
            else:
                media(data, 1)
        else:
            _stun_datagram_received(protocol, data, addr)
    return taken


def _install_datagram_shortcut() -> None:
    """Route SRTP datagrams of hooked connections past the STUN parser, reading what is queued
    in the same callback (process-wide, once; connections that are not hooked take aioice's
    path unchanged)."""
    if StunProtocol.datagram_received is not _datagram_received:
        StunProtocol.datagram_received = _datagram_received  # type: ignore[method-assign]


def watch_received_rtp(receiver: RTCRtpReceiver, on_packet: Callable[[Any, float], None]) -> None:
    """Call `on_packet(packet, now)` with each RTP packet (aiortc's `RtpPacket`, RTX still
    wrapped) a receiver handles, and the monotonic time it did, before aiortc handles it: how a
    client counts frames without decoding them (`bot.frames`)."""
    handle = receiver._handle_rtp_packet

    async def handle_rtp_packet(packet: Any, arrival_time_ms: int) -> None:
        try:
            on_packet(packet, time.monotonic())
        except Exception:  # raised here it would end aiortc's receive loop: say it, go on
            log.exception("RTP watcher failed")
        await handle(packet, arrival_time_ms)

    receiver._handle_rtp_packet = handle_rtp_packet  # type: ignore[method-assign]


def watch_received_rtcp(dtls: RTCDtlsTransport, on_rtcp: Callable[[bytes], None]) -> None:
    """Call `on_rtcp(compound)` with each RTCP compound packet a transport receives (decrypted),
    before aiortc routes it: how a client that sends RTP itself (`bot.simulcast`) hears the
    keyframe requests for SSRCs aiortc does not know."""
    handle = dtls._handle_rtcp_data

    async def handle_rtcp_data(data: bytes) -> None:
        try:
            on_rtcp(data)
        except Exception:  # raised here it would end aiortc's receive loop: say it, go on
            log.exception("RTCP watcher failed")
        await handle(data)

    dtls._handle_rtcp_data = handle_rtcp_data  # type: ignore[method-assign]


def bypass_receiver(
    receiver: RTCRtpReceiver, on_parameters: Callable[[RTCRtpReceiveParameters], None]
) -> None:
    """Start this receiver without its decoder thread; tell `on_parameters` what was negotiated."""

    async def receive(parameters: RTCRtpReceiveParameters) -> None:
        if receiver._RTCRtpReceiver__started:  # type: ignore[attr-defined]
            return
        codecs = receiver._RTCRtpReceiver__codecs  # type: ignore[attr-defined]
        for codec in parameters.codecs:
            codecs[codec.payloadType] = codec
        transport: RTCDtlsTransport = receiver._RTCRtpReceiver__transport  # type: ignore[attr-defined]
        transport._register_rtp_receiver(receiver, parameters)
        receiver._RTCRtpReceiver__rtcp_task = asyncio.ensure_future(  # type: ignore[attr-defined]
            receiver._run_rtcp()
        )
        receiver._RTCRtpReceiver__started = True  # type: ignore[attr-defined]
        try:
            on_parameters(parameters)
        except Exception:
            # Raised inside aiortc's connect task it would vanish: say it.
            log.exception("configuring a received track failed")

    receiver.receive = receive  # type: ignore[method-assign]


async def _parked(started: asyncio.Event, exited: asyncio.Event) -> None:
    started.set()
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        pass
    finally:
        exited.set()


def bypass_sender(
    sender: RTCRtpSender, on_parameters: Callable[[RTCRtpSendParameters], None]
) -> None:
    """Make this sender a shell for forwarded packets: no track, no encoder, no own reports."""
    names = {
        "rtp_started": "_RTCRtpSender__rtp_started",
        "rtp_exited": "_RTCRtpSender__rtp_exited",
        "rtcp_started": "_RTCRtpSender__rtcp_started",
        "rtcp_exited": "_RTCRtpSender__rtcp_exited",
    }
    events = {key: getattr(sender, name) for key, name in names.items()}

    async def run_rtp(codec: RTCRtpCodecParameters) -> None:
        await _parked(events["rtp_started"], events["rtp_exited"])

    async def run_rtcp() -> None:
        await _parked(events["rtcp_started"], events["rtcp_exited"])

    original_send = sender.send

    async def send(parameters: RTCRtpSendParameters) -> None:
        first = not sender._RTCRtpSender__started  # type: ignore[attr-defined]
        await original_send(parameters)
        if first:
            try:
                on_parameters(parameters)
            except Exception:
                log.exception("configuring a sent track failed")

    sender._run_rtp = run_rtp  # type: ignore[method-assign]
    sender._run_rtcp = run_rtcp  # type: ignore[method-assign]
    sender.send = send  # type: ignore[method-assign]


def remote_sends(transceiver: RTCRtpTransceiver) -> bool:
    """Whether the remote side's latest offer sends media on this transceiver (its direction was
    sendonly or sendrecv, not inactive or recvonly)."""
    return transceiver._offerDirection in ("recvonly", "sendrecv")


def restrict_codecs(transceiver: RTCRtpTransceiver, mime_type: str) -> bool:
    """Keep only `mime_type` (and its RTX) among the transceiver's negotiated codecs.

    Called between setRemoteDescription and createAnswer (aiortc negotiates codecs in
    setRemoteDescription, before preferences could apply). False if the codec was not offered.
    """
    codecs: list[RTCRtpCodecParameters] = transceiver._codecs
    kept = [c for c in codecs if c.mimeType.lower() == mime_type.lower()]
    if not kept:
        return False
    primary = kept[0]
    kept = [primary] + [
        c
        for c in codecs
        if c.mimeType.lower().endswith("/rtx") and c.parameters.get("apt") == primary.payloadType
    ]
    transceiver._codecs = kept
    return True


def negotiate_extensions(transceiver: RTCRtpTransceiver, offered: dict[str, int]) -> None:
    """Accept these offered header extensions (`uri -> id`, the offer's ids) on a transceiver
    besides those aiortc negotiated itself (it knows only MID, abs-send-time and audio level):
    the answer then lists them, and the receive parameters carry them to the demux.

    Called between setRemoteDescription and createAnswer, like `restrict_codecs`.
    """
    extensions: list[RTCRtpHeaderExtensionParameters] = transceiver._headerExtensions
    known = {extension.uri for extension in extensions}
    for uri, ext_id in offered.items():
        if uri not in known:
            extensions.append(RTCRtpHeaderExtensionParameters(id=ext_id, uri=uri))


def negotiate_transport_cc(
    transceiver: RTCRtpTransceiver, extension_id: int, payload_types: Callable[[int], bool]
) -> None:
    """Accept transport-wide congestion control on a transceiver: the transport-wide sequence
    number extension with the offer's id (`negotiate_extensions`), and `a=rtcp-fb:<pt>
    transport-cc` on each negotiated media codec for which `payload_types(pt)` is true (aiortc
    keeps only the feedback types it knows, and transport-cc is not one).

    Called between setRemoteDescription and createAnswer, like `restrict_codecs`.
    """
    negotiate_extensions(transceiver, {TRANSPORT_CC_URI: extension_id})
    feedback = RTCRtcpFeedback(type="transport-cc")
    codecs: list[RTCRtpCodecParameters] = transceiver._codecs
    for codec in codecs:
        if (
            not codec.mimeType.lower().endswith("/rtx")
            and payload_types(codec.payloadType or 0)
            and feedback not in codec.rtcpFeedback
        ):
            codec.rtcpFeedback.append(feedback)  # aiortc's own copy for this transceiver


def negotiated_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    """The codecs aiortc negotiated for this transceiver."""
    return list(transceiver._codecs)


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


def srtp_unprotector(session: pylibsrtp.Session) -> Callable[[bytes], bytes]:
    """`session.unprotect` without pylibsrtp's per-call allocation (same libsrtp call, same
    buffer); raises `pylibsrtp.Error` as it does."""
    srtp = session._srtp
    cdata = session._cdata  # kept alive by the closure: it frees libsrtp's context
    buffer = session._buffer
    view = memoryview(buffer)
    limit = len(cdata)
    length = _ffi.new("int *")
    unprotect = _lib.srtp_unprotect

    def unprotect_packet(data: bytes) -> bytes:
        # Hot path, per received packet: watched by bench/forwarding.py.
        size = len(data)
        if size > limit:
            raise ValueError("packet is too long")
        length[0] = size
        view[:size] = data
        status = unprotect(srtp[0], cdata, length)
        if status:
            raise pylibsrtp.Error(f"srtp_unprotect failed: {status}")
        return buffer[0 : length[0]]

    return unprotect_packet


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


def transport_of(transceiver: RTCRtpTransceiver) -> RTCDtlsTransport:
    """The DTLS transport a transceiver uses (one per peer connection with BUNDLE)."""
    return transceiver.receiver.transport


def sender_ssrcs(sender: RTCRtpSender) -> tuple[int, int]:
    """The SSRCs aiortc chose for a sender: media and RTX."""
    return sender._ssrc, sender._rtx_ssrc


def set_stream_id(sender: RTCRtpSender, stream_id: str, track_id: str) -> None:
    """Set the `msid` a sender announces (browsers sync audio and video of one stream)."""
    sender._stream_id = stream_id
    sender._track_id = track_id


class CodecGuard:
    """Counts every encoder and decoder aiortc creates in this process.

    An SFU node must never create one on the live path (it forwards encoded media): the count is
    exported as a metric that stays at 0, and tests assert it while a room runs.
    """

    def __init__(self) -> None:
        self.encoders = 0
        self.decoders = 0
        self._installed = False

    def install(self) -> None:
        """Wrap the factories aiortc's sender and receiver modules call (idempotent)."""
        if self._installed:
            return
        import aiortc.rtcrtpreceiver as receiver_module
        import aiortc.rtcrtpsender as sender_module

        original_encoder = sender_module.get_encoder
        original_decoder = receiver_module.get_decoder

        def get_encoder(codec: Any) -> Any:
            self.encoders += 1
            return original_encoder(codec)

        def get_decoder(codec: Any) -> Any:
            self.decoders += 1
            return original_decoder(codec)

        sender_module.get_encoder = get_encoder
        receiver_module.get_decoder = get_decoder
        self._installed = True


codec_guard = CodecGuard()
"""The process's codec counter (installed by the MediaServer)."""
