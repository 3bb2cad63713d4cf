"""One test per hook into aiortc/pylibsrtp internals (sfu/aiortc_hooks.py): an aiortc upgrade
that moves something we rely on fails here first, by name."""

from __future__ import annotations

import asyncio
import gc
import inspect

import pylibsrtp
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, RTCSessionDescription
from aiortc.rtcdtlstransport import RTCDtlsTransport

from sfu import aiortc_hooks as hooks
from sfu.testsource import ReplayVideoTrack
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
    protect = hooks.srtp_protector(_session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    gc.collect()  # the protector keeps its session alive
    ours = protect(packet)
    theirs = _session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND).protect(packet)
    assert ours == theirs
    assert _session(pylibsrtp.Policy.SSRC_ANY_INBOUND).unprotect(ours) == packet


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
        hooks.transport_of(transceiver), lambda data, ms: received.append(data), None
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
        send = hooks.rtp_sender(dtls)
        ssrc, _ = hooks.sender_ssrcs(transceiver.sender)
        got: list[bytes] = []
        client_dtls = client.getTransceivers()[0].receiver.transport
        hooks.hook_transport(client_dtls, lambda data, ms: got.append(data), None)
        packet = bytes([0x80, 97, 0, 1, 0, 0, 0, 1]) + ssrc.to_bytes(4, "big") + b"\x10" * 50
        for _ in range(5):
            assert send(packet)
            await asyncio.sleep(0.01)
        await eventually(lambda: got, timeout=5)
        assert got[0] == packet
        assert transceiver.sender._RTCRtpSender__encoder is None
        assert hooks.send_rtcp(dtls, bytes([0x81, 201, 0, 1]) + ssrc.to_bytes(4, "big"))
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
