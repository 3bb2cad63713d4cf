"""Transport-cc through the real SFU on loopback: a publisher that offers the transport-wide
sequence number extension and `transport-cc` feedback is answered with both, and gets transport
feedback reporting exactly the packets it sent (losses as lost, across the 16-bit wrap).

aiortc offers neither, so the publisher is an aiortc peer connection whose offer gets the two
lines Chromium puts there, sending raw RTP with the extension on its own SRTP transport, and
reading the SFU's RTCP on it."""

from __future__ import annotations

import asyncio
import re
import struct

from aiortc import RTCPeerConnection, RTCSessionDescription

from core.media.rtp import MID_URI, TRANSPORT_CC_URI
from sfu import aiortc_hooks as hooks
from sfu import srtp_send
from sfu.ice import IceSettings
from sfu.server import MediaSettings
from tests.fixtures.media import MediaHarness
from tests.fixtures.servers import eventually
from tests.test_sfu_twcc import parse_feedback

TWCC_ID = 5


def transport_cc_offer(sdp: str) -> str:
    """aiortc's offer with Chromium's transport-cc lines in the video section."""
    lines = sdp.split("\r\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("m=video"))
    end = next((i for i in range(at + 1, len(lines)) if lines[i].startswith("m=")), len(lines))
    while end > at and not lines[end - 1]:
        end -= 1
    payload_type = lines[at].split()[3]
    added = [f"a=extmap:{TWCC_ID} {TRANSPORT_CC_URI}", f"a=rtcp-fb:{payload_type} transport-cc"]
    return "\r\n".join([*lines[:end], *added, *lines[end:]])


def _extensions(mid_id: int, mid: str, sequence: int) -> bytes:
    body = bytes([mid_id << 4 | (len(mid) - 1)]) + mid.encode() if mid else b""
    body += bytes([TWCC_ID << 4 | 1]) + struct.pack("!H", sequence)
    body += b"\x00" * (-len(body) % 4)
    return struct.pack("!HH", 0xBEDE, len(body) // 4) + body


def transport_feedback(compound: bytes) -> list[bytes]:
    """The transport feedback packets (RTPFB, FMT=15) in an RTCP compound packet."""
    found, position = [], 0
    while position + 4 <= len(compound):
        length = (int.from_bytes(compound[position + 2 : position + 4], "big") + 1) * 4
        packet = compound[position : position + length]
        if packet[1] == 205 and packet[0] & 0x1F == 15:
            found.append(packet)
        position += length
    return found


async def publish_with_transport_cc(
    media: MediaHarness, sequences: list[int]
) -> tuple[str, list[bytes]]:
    """Publish a camera offering transport-cc, send one packet per transport-wide sequence number
    in `sequences`, 5 ms apart (the 21st on a stream the SFU cannot route: no MID, an SSRC
    never announced); the SFU's answer and the transport feedback it sent back."""
    await media.server.join("mdt-1", "a", frozenset({"publish_video"}))
    pc = RTCPeerConnection()
    feedback: list[bytes] = []
    try:
        transceiver = pc.addTransceiver("video", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        offer = transport_cc_offer(pc.localDescription.sdp)
        answer = await media.server.offer("a", "publish", offer)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await eventually(lambda: pc.connectionState == "connected", timeout=15)
        dtls = hooks.transport_of(transceiver)
        hooks.hook_transport(dtls, None, lambda data: feedback.extend(transport_feedback(data)))
        found = re.search(r"a=rtpmap:(\d+) VP8/90000", answer)
        mid_id = re.search(rf"a=extmap:(\d+) {MID_URI}", answer)
        assert found is not None and mid_id is not None
        payload_type, mid = int(found.group(1)), str(transceiver.mid)
        for index, sequence in enumerate(sequences):
            ssrc, named = (0x9999, "") if index == 20 else (0x1234, mid)
            header = struct.pack("!BBHII", 0x90, payload_type, index, index * 3000, ssrc)
            payload = bytes([0x10, 0x00]) + bytes(100)  # a VP8 descriptor and some bytes
            srtp_send.send_rtp(dtls, header + _extensions(int(mid_id.group(1)), named, sequence)
                           + payload)  # fmt: skip
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.5)  # the tick sends what is left
    finally:
        await pc.close()
    return answer, feedback


async def test_a_publisher_offering_transport_cc_gets_feedback_on_every_packet(
    media: MediaHarness,
) -> None:
    sent = [(65_500 + n) & 0xFFFF for n in range(80) if n not in (10, 11, 50)]  # wraps at 36
    answer, feedback = await publish_with_transport_cc(media, sent)
    assert f"a=extmap:{TWCC_ID} {TRANSPORT_CC_URI}" in answer
    assert re.search(r"a=rtcp-fb:\d+ transport-cc", answer)
    assert len(feedback) >= 3, "every 100 ms or 100 packets, not once at the end"
    received: set[int] = set()
    lost: set[int] = set()
    for packet in feedback:
        parsed = parse_feedback(packet)
        for offset, status in enumerate(parsed.statuses):
            (received if status else lost).add((parsed.base + offset) & 0xFFFF)
    assert received == set(sent), "the unroutable packet (the 21st) is reported received too"
    assert lost == {65_510, 65_511, (65_550) & 0xFFFF}
    # Counted whether the publisher is still there or left when its peer connection closed.
    assert media.server.stats()["twcc_feedback_packets"] == len(feedback)


async def test_without_the_setting_the_answer_has_no_transport_cc() -> None:
    media = MediaHarness(MediaSettings(ice=IceSettings(host_addresses=("127.0.0.1",)), twcc=False))
    await media.server.start()
    try:
        answer, feedback = await publish_with_transport_cc(media, list(range(30)))
    finally:
        await media.close()
    assert TRANSPORT_CC_URI not in answer and "transport-cc" not in answer
    assert "goog-remb" in answer, "REMB stays the only hint"
    assert feedback == []
    assert media.server.stats()["twcc_feedback_packets"] == 0


def with_transport_cc(sdp: str) -> str:
    """An offer with Chromium's transport-cc lines in every audio and video section (feedback on
    the media codecs: the first payload type of aiortc's sections; never on RTX)."""
    sections = sdp.split("\r\nm=")
    for index, section in enumerate(sections[1:], 1):
        if not section.startswith(("audio", "video")):
            continue
        lines = section.rstrip("\r\n").split("\r\n")
        lines += [f"a=extmap:{TWCC_ID} {TRANSPORT_CC_URI}"]
        lines += [f"a=rtcp-fb:{lines[0].split()[3]} transport-cc"]
        sections[index] = "\r\n".join(lines) + ("\r\n" if index == len(sections) - 1 else "")
    return "\r\nm=".join(sections)


async def test_audio_and_video_are_answered_with_transport_cc_but_not_rtx(
    media: MediaHarness,
) -> None:
    await media.server.join("mdt-1", "a", frozenset({"publish_audio", "publish_video"}))
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio", direction="sendonly")
        pc.addTransceiver("video", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        offer = with_transport_cc(pc.localDescription.sdp)
        answer = await media.server.offer("a", "publish", offer)
    finally:
        await pc.close()
    feedback = set(re.findall(r"a=rtcp-fb:(\d+) transport-cc", answer))
    opus = re.search(r"a=rtpmap:(\d+) opus/48000", answer)
    vp8 = re.search(r"a=rtpmap:(\d+) VP8/90000", answer)
    rtx = set(re.findall(r"a=rtpmap:(\d+) rtx/90000", answer))
    assert opus is not None and vp8 is not None and rtx
    assert feedback == {opus.group(1), vp8.group(1)}, "the media codecs, not their RTX"
    assert answer.count(f"a=extmap:{TWCC_ID} {TRANSPORT_CC_URI}") == 2
