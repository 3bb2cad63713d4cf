"""One test per hook into aiortc/aioice/pylibsrtp internals (sfu/aiortc_hooks.py,
sfu/socket_receive.py, sfu/srtp_send.py): an aiortc upgrade that moves something we rely on fails
here first, by name."""

from __future__ import annotations

import asyncio
import gc
import inspect
import socket
from types import SimpleNamespace

import pylibsrtp
import pytest
from aioice.ice import StunProtocol
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, RTCSessionDescription
from aiortc.rtcdtlstransport import RTCDtlsTransport

from bot.testsource import ReplayVideoTrack
from sfu import aiortc_hooks as hooks
from sfu import socket_receive, srtp_send
from tests.fixtures.servers import eventually

KEY = bytes(range(30))


def _session(direction: int) -> pylibsrtp.Session:
    return pylibsrtp.Session(policy=pylibsrtp.Policy(key=KEY, ssrc_type=direction))


def test_internals_we_rely_on_still_exist() -> None:
    receiver_init = inspect.getsource(RTCRtpReceiver.receive)
    assert "__decoder_thread" in receiver_init and "_register_rtp_receiver" in receiver_init
    sender_send = inspect.getsource(RTCRtpSender.send)
    assert "_run_rtp" in sender_send and "_run_rtcp" in sender_send
    assert "_handle_rtp_data" in inspect.getsource(RTCDtlsTransport._recv_next)
    for name in ("_tx_srtp", "_rx_srtp", "_state"):
        assert name in inspect.getsource(RTCDtlsTransport)
    assert {"_srtp", "_cdata", "_buffer"} <= set(vars(_session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)))
    # remote_sends reads the direction aiortc keeps from the remote offer (reversed: ours).
    assert "_offerDirection = direction" in inspect.getsource(RTCPeerConnection)


def test_srtp_protector_matches_pylibsrtp() -> None:
    packet = bytes([0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 42]) + b"payload" * 20
    protect = srtp_send.srtp_protector(_session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    gc.collect()  # the protector keeps its session alive
    ours = protect(packet)
    theirs = _session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND).protect(packet)
    assert ours == theirs
    assert _session(pylibsrtp.Policy.SSRC_ANY_INBOUND).unprotect(ours) == packet


def test_srtp_unprotector_matches_pylibsrtp() -> None:
    packets = [
        bytes([0x80, 96, 0, seq, 0, 0, 0, 1, 0, 0, 0, 42]) + b"payload" * 20 for seq in (1, 2)
    ]
    outbound = _session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    protected = [outbound.protect(packet) for packet in packets]
    unprotect = socket_receive.srtp_unprotector(_session(pylibsrtp.Policy.SSRC_ANY_INBOUND))
    gc.collect()  # the unprotector keeps its session alive
    first = unprotect(protected[0])
    assert [first, unprotect(protected[1])] == packets
    assert first == packets[0], "each result is its own bytes, not a view of the buffer"
    with pytest.raises(pylibsrtp.Error):
        unprotect(protected[1])  # replayed


async def test_queued_datagrams_are_read_in_one_callback() -> None:
    loop = asyncio.get_running_loop()
    seen: list[tuple[bytes, bool]] = []
    others: list[bytes] = []
    loop_ran: list[bool] = []  # set by a callback scheduled at the first datagram

    def media(data: bytes, component: int) -> None:
        if not seen:
            loop.call_soon(loop_ran.append, True)
        seen.append((data, bool(loop_ran)))

    receiver = SimpleNamespace(
        _consilium_media=media, data_received=lambda data, component: others.append(data)
    )
    socket_receive.install_datagram_shortcut()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: StunProtocol(receiver), local_addr=("127.0.0.1", 0)
    )
    protocol.local_candidate = SimpleNamespace(component=1)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        address = transport.get_extra_info("sockname")
        packets = [bytes([0x80, 96, 0, n]) + bytes(1200) for n in range(5)]
        for data in [*packets[:3], b"\x17dtls record", *packets[3:]]:
            sender.sendto(data, address)
        await eventually(lambda: len(seen) == 5, timeout=5)
        assert [data for data, _ in seen] == packets
        assert not any(ran for _, ran in seen), "all read before the event loop ran anything"
        assert others == [b"\x17dtls record"], "what is not SRTP still takes aioice's path"
    finally:
        sender.close()
        transport.close()


async def test_rtp_sender_follows_the_nominated_pair_and_session() -> None:
    from aiortc.rtcdtlstransport import State

    receivers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    local = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for sock in [*receivers, local]:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(2)
        local.setblocking(False)
        protocol = StunProtocol(receiver=None)  # type: ignore[arg-type]
        protocol.transport = SimpleNamespace(_sock=local, _buffer=[])  # type: ignore[assignment]

        def pair(receiver: socket.socket) -> SimpleNamespace:
            return SimpleNamespace(protocol=protocol, remote_addr=receiver.getsockname())

        nominated: dict[int, SimpleNamespace] = {}
        dtls = SimpleNamespace(
            _state=State.CONNECTED, _tx_srtp=_session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND),
            transport=SimpleNamespace(_connection=SimpleNamespace(_nominated=nominated)),
        )  # fmt: skip
        send = srtp_send.rtp_sender(dtls)  # type: ignore[arg-type]
        packet = bytes([0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 42]) + b"payload"
        assert not send(packet), "no nominated pair yet"
        nominated[1] = pair(receivers[0])
        assert send(packet)
        inbound = _session(pylibsrtp.Policy.SSRC_ANY_INBOUND)
        assert inbound.unprotect(receivers[0].recv(2048)) == packet
        nominated[1] = pair(receivers[1])
        dtls._tx_srtp = _session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)  # a new DTLS session
        assert send(packet)
        assert (
            _session(pylibsrtp.Policy.SSRC_ANY_INBOUND).unprotect(receivers[1].recv(2048)) == packet
        )
        dtls._state = State.CLOSED
        assert not send(packet)
    finally:
        for sock in [*receivers, local]:
            sock.close()


async def _pair() -> tuple[RTCPeerConnection, RTCPeerConnection]:
    sender, receiver = RTCPeerConnection(), RTCPeerConnection()
    sender.addTransceiver(ReplayVideoTrack(), direction="sendonly")
    await sender.setLocalDescription(await sender.createOffer())
    await receiver.setRemoteDescription(sender.localDescription)
    return sender, receiver


async def _answer(sender: RTCPeerConnection, receiver: RTCPeerConnection) -> None:
    await receiver.setLocalDescription(await receiver.createAnswer())
    await sender.setRemoteDescription(
        RTCSessionDescription(sdp=receiver.localDescription.sdp, type="answer")
    )


async def test_hooked_receiver_gets_bytes_and_starts_no_decoder(loopback_ice: None) -> None:
    sender, receiver = await _pair()
    transceiver = receiver.getTransceivers()[0]
    assert hooks.restrict_codecs(transceiver, "video/VP8")
    assert next(c.mimeType for c in transceiver._codecs) == "video/VP8"
    received: list[bytes] = []
    parameters: list[object] = []
    hooks.bypass_receiver(transceiver.receiver, parameters.append)
    hooks.hook_transport(
        hooks.transport_of(transceiver), lambda data, ms, late: received.append(data), None
    )
    await _answer(sender, receiver)
    try:
        await eventually(lambda: len(received) > 20, timeout=15)
        assert parameters, "the negotiated parameters were reported"
        assert transceiver.receiver._RTCRtpReceiver__decoder_thread is None
        assert received[0][0] >> 6 == 2, "plain RTP (already unprotected)"
    finally:
        await sender.close()
        await receiver.close()


async def test_a_watched_receiver_shows_each_packet_without_decoding(loopback_ice: None) -> None:
    sender, receiver = await _pair()
    transceiver = receiver.getTransceivers()[0]
    hooks.bypass_receiver(transceiver.receiver, lambda parameters: None)
    seen: list[tuple[bool, int, float]] = []
    hooks.watch_received_rtp(
        transceiver.receiver,
        lambda packet, now: seen.append((packet.marker, packet.timestamp, now)),
    )
    await _answer(sender, receiver)
    try:
        # The last packet of each frame carries the marker: frames counted without a decoder.
        await eventually(lambda: sum(marker for marker, _, _ in seen) > 10, timeout=15)
        frames = [timestamp for marker, timestamp, _ in seen if marker]
        assert len(set(frames)) == len(frames), "one marked packet per frame"
        assert transceiver.receiver._RTCRtpReceiver__decoder_thread is None
    finally:
        await sender.close()
        await receiver.close()


async def test_bypassed_sender_sends_what_we_give_it_and_never_encodes(
    loopback_ice: None,
) -> None:
    server, client = RTCPeerConnection(), RTCPeerConnection()
    transceiver = server.addTransceiver("video", direction="sendonly")
    parameters: list[object] = []
    hooks.bypass_sender(transceiver.sender, parameters.append)
    await server.setLocalDescription(await server.createOffer())
    await client.setRemoteDescription(server.localDescription)
    await client.setLocalDescription(await client.createAnswer())
    await server.setRemoteDescription(client.localDescription)
    try:
        await eventually(lambda: parameters, timeout=15)
        dtls = hooks.transport_of(transceiver)
        send = srtp_send.rtp_sender(dtls)
        ssrc, _ = hooks.sender_ssrcs(transceiver.sender)
        got: list[bytes] = []
        client_dtls = client.getTransceivers()[0].receiver.transport
        hooks.hook_transport(client_dtls, lambda data, ms, late: got.append(data), None)
        packet = bytes([0x80, 97, 0, 1, 0, 0, 0, 1]) + ssrc.to_bytes(4, "big") + b"\x10" * 50
        for _ in range(5):
            assert send(packet)
            await asyncio.sleep(0.01)
        await eventually(lambda: got, timeout=5)
        assert got[0] == packet
        assert transceiver.sender._RTCRtpSender__encoder is None
        assert srtp_send.send_rtcp(dtls, bytes([0x81, 201, 0, 1]) + ssrc.to_bytes(4, "big"))
    finally:
        await server.close()
        await client.close()


def test_codec_guard_counts_factories() -> None:
    import aiortc.rtcrtpsender as sender_module
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    guard = hooks.CodecGuard()
    original = sender_module.get_encoder
    try:
        guard.install()
        sender_module.get_encoder(
            RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2)
        )
        assert guard.encoders == 1 and guard.decoders == 0
    finally:
        sender_module.get_encoder = original
