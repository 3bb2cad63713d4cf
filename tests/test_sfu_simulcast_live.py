"""Simulcast through the real SFU on loopback: a publisher offers a camera in three layers
(rid q, h, f, as Chromium does), sends three real VP8 encodings with the MID and RID header
extensions, and a subscriber decodes the one layer it is forwarded.

aiortc cannot send simulcast, so the publisher here is an aiortc peer connection whose offer
gets the simulcast lines added, and whose layers are encoded with aiortc's VP8 encoder and sent
as raw RTP on its own (SRTP-protected) transport."""

from __future__ import annotations

import asyncio
import random
import re
import struct

import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.codecs.vpx import Vp8Encoder
from av import VideoFrame

from core.media.rtp import MID_URI, REPAIRED_RID_URI, RID_URI
from sfu import aiortc_hooks as hooks
from tests.fixtures.media import MediaHarness
from tests.fixtures.servers import eventually

LAYERS = {"q": (160, 120), "h": (320, 240), "f": (640, 480)}
RID_ID, REPAIRED_RID_ID = 10, 11


def simulcast_offer(sdp: str) -> str:
    """aiortc's offer with a Chromium-style simulcast camera: RID extensions, rid and simulcast
    lines in the video section."""
    lines = sdp.split("\r\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("m=video"))
    end = next((i for i in range(at + 1, len(lines)) if lines[i].startswith("m=")), len(lines))
    while end > at and not lines[end - 1]:
        end -= 1
    added = [f"a=extmap:{RID_ID} {RID_URI}", f"a=extmap:{REPAIRED_RID_ID} {REPAIRED_RID_URI}",
             *(f"a=rid:{rid} send" for rid in LAYERS), "a=simulcast:send q;h;f"]  # fmt: skip
    return "\r\n".join([*lines[:end], *added, *lines[end:]])


def _number(pattern: str, sdp: str) -> int:
    found = re.search(pattern, sdp)
    assert found is not None, pattern
    return int(found.group(1))


def _extensions(mid_id: int, mid: str, rid: str, rid_id: int = RID_ID) -> bytes:
    body = bytes([mid_id << 4 | (len(mid) - 1)]) + mid.encode()
    body += bytes([rid_id << 4 | (len(rid) - 1)]) + rid.encode()
    body += b"\x00" * (-len(body) % 4)
    return struct.pack("!HH", 0xBEDE, len(body) // 4) + body


class LayerSender:
    """One simulcast layer: its VP8 encoder, SSRC and RTP numbering."""

    def __init__(self, rid: str, size: tuple[int, int]) -> None:
        self.rid = rid
        self.size = size
        self.encoder = Vp8Encoder()
        self.ssrc = random.randint(1, 0xFFFFFFFF)
        self.sequence = random.randint(0, 0xFFFF)
        self.timestamp = random.randint(0, 0xFFFFFFFF)
        self.rtx_ssrc = random.randint(1, 0xFFFFFFFF)
        self.rtx_sequence = random.randint(0, 0xFFFF)
        self.sent: dict[int, bytes] = {}
        """Packets sent, by sequence number (to retransmit)."""

    def packets(self, index: int, payload_type: int, mid_id: int, mid: str) -> list[bytes]:
        width, height = self.size
        image = np.full((height, width, 3), (index * 7) % 255, dtype=np.uint8)
        image[: height // 2, : width // 2] = 255 - (index * 7) % 255
        frame = VideoFrame.from_ndarray(image, format="rgb24")
        payloads, _ = self.encoder.encode(frame, force_keyframe=index % 15 == 0)
        timestamp = (self.timestamp + index * 3000) & 0xFFFFFFFF
        extensions = _extensions(mid_id, mid, self.rid)
        packets = []
        for n, payload in enumerate(payloads):
            marker = 0x80 if n == len(payloads) - 1 else 0
            header = struct.pack("!BBHII", 0x90, marker | payload_type, self.sequence, timestamp,
                                 self.ssrc)  # fmt: skip
            packets.append(header + extensions + payload)
            self.sent[self.sequence] = packets[-1]
            self.sequence = (self.sequence + 1) & 0xFFFF
        return packets

    def retransmission(self, sequence: int, payload_type: int, mid_id: int, mid: str) -> bytes:
        """An RTX packet (RFC 4588) of a packet sent, naming its layer by the repaired RID."""
        original = self.sent[sequence]
        payload = original[12 + len(_extensions(mid_id, mid, self.rid)) :]
        extensions = _extensions(mid_id, mid, self.rid, REPAIRED_RID_ID)
        header = struct.pack("!BBHII", 0x90, payload_type, self.rtx_sequence,
                             int.from_bytes(original[4:8], "big"), self.rtx_ssrc)  # fmt: skip
        self.rtx_sequence = (self.rtx_sequence + 1) & 0xFFFF
        return header + extensions + struct.pack("!H", sequence) + payload


async def test_a_three_layer_camera_is_one_track_and_its_lowest_layer_decodes(
    media: MediaHarness,
) -> None:
    subscriber = await media.join("b", [])
    await media.server.join("mdt-1", "a", frozenset({"publish_video"}))
    pc = RTCPeerConnection()
    try:
        transceiver = pc.addTransceiver("video", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        answer = await media.server.offer("a", "publish",
                                          simulcast_offer(pc.localDescription.sdp))  # fmt: skip
        assert "a=simulcast:recv q;h;f" in answer and f"a=extmap:{RID_ID} {RID_URI}" in answer
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await eventually(lambda: pc.connectionState == "connected", timeout=15)

        payload_type = _number(r"a=rtpmap:(\d+) VP8/90000", answer)
        rtx_payload_type = _number(rf"a=fmtp:(\d+) apt={payload_type}", answer)
        mid_id = _number(rf"a=extmap:(\d+) {MID_URI}", answer)
        mid = str(transceiver.mid)
        dtls = hooks.transport_of(transceiver)
        layers = [LayerSender(rid, size) for rid, size in LAYERS.items()]
        for index in range(60):  # two seconds at 30 fps
            for layer in reversed(layers):  # the order does not matter: the RID says
                for packet in layer.packets(index, payload_type, mid_id, mid):
                    hooks.send_rtp(dtls, packet)
            if index == 30:  # the middle layer answers a NACK
                retransmitted = next(iter(layers[1].sent))
                hooks.send_rtp(dtls, layers[1].retransmission(retransmitted, rtx_payload_type,
                                                              mid_id, mid))  # fmt: skip
            await asyncio.sleep(1 / 30)

        track = next(iter(media.server.participants["a"].tracks.values()))
        assert track.info.layers == ("q", "h", "f")
        demux = media.server.participants["a"].publisher.demux
        assert demux.layer_ssrcs(track) == [layer.ssrc for layer in layers]
        rtx = demux.by_ssrc[layers[1].rtx_ssrc]
        assert (rtx.rtx, rtx.layer, rtx.media_ssrc) == (True, 1, layers[1].ssrc)
        assert demux.dropped == 0
        await eventually(lambda: subscriber.stats.frames("video") > 10, timeout=10)
        widths = {t.width for t in subscriber.stats.tracks.values() if t.kind == "video"}
        assert widths == {160}, "the subscriber decodes one layer, the lowest, and only it"
        assert not media.errors
    finally:
        await pc.close()


async def test_a_screen_share_offered_in_layers_is_answered_as_one(media: MediaHarness) -> None:
    await media.server.join("mdt-1", "a", frozenset({"share_screen"}))
    pc = RTCPeerConnection()
    try:
        transceiver = pc.addTransceiver("video", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        offer = simulcast_offer(pc.localDescription.sdp)
        answer = await media.server.offer("a", "publish", offer, screen=[str(transceiver.mid)])
    finally:
        await pc.close()
    # Text on a shared screen must stay sharp: no simulcast, so the browser sends one encoding.
    assert "a=simulcast" not in answer and "a=rid:" not in answer and RID_URI not in answer
    assert "a=recvonly" in answer
