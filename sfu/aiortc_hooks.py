"""Where the SFU reaches into aiortc's objects (transports, receivers, senders, transceivers).

aiortc gives us ICE, DTLS, SRTP, SCTP and SDP. Its media pipeline (receiver → jitter buffer →
decoder thread → track → encoder → sender) is what forwarding bypasses. The touches of aiortc's,
aioice's and pylibsrtp's internals are in three modules, each checked at an upgrade: this one
(aiortc's objects), `sfu.socket_receive` (the socket callback: SRTP past the STUN parser, the
kernel's receive timestamps, the time bound) and `sfu.srtp_send` (protect and send on the
nominated pair, transport-wide numbering).

- a publisher's DTLS transport hands each decrypted RTP/RTCP datagram to `_handle_rtp_data` /
  `_handle_rtcp_data`; `hook_transport` replaces both on that transport instance, so packets go
  to the forwarder as bytes, unparsed, and no jitter buffer or decoder ever sees them (and
  installs `sfu.socket_receive`'s socket callback, which hands SRTP straight to it);
- `RTCRtpReceiver.receive` would start a decoder thread; `bypass_receiver` starts the receiver
  without it (registration with the transport and the RTCP task stay aiortc's);
- `RTCRtpSender.send` would start an RTP loop that pulls frames from a track and encodes them,
  and an RTCP loop that reports its own (empty) counters; `bypass_sender` parks both loops, keeps
  what `stop()` waits for, and reports the negotiated send parameters to the forwarder;
- `restrict_codecs` narrows a transceiver's negotiated codecs to the room's codec;
- `negotiate_extensions` adds header extensions aiortc does not know (simulcast's RID ones) to
  what a transceiver negotiated;
- `watch_received_rtp` shows a client (`consilium bot`) each RTP packet its receiver handles,
  so it counts frames without decoding them.
- `negotiate_transport_cc` accepts transport-cc (its header extension and RTCP feedback type,
  both unknown to aiortc) where the offer proposes it (`sfu.twcc`).

aiortc versions tested: 1.16.x (pinned in pyproject.toml). `tests/test_sfu_hooks.py` has a test
per hook.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pylibsrtp
from aiortc import RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc.rtcdtlstransport import RTCDtlsTransport, State
from aiortc.rtcrtpparameters import (
    RTCRtcpFeedback,
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpReceiveParameters,
    RTCRtpSendParameters,
)

from core.media.rtp import TRANSPORT_CC_URI
from sfu.socket_receive import install_datagram_shortcut, srtp_unprotector

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
    install_datagram_shortcut()

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
