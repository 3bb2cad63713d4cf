"""Simulcast through the real SFU on loopback: a publisher offers a camera in three layers
(rid q, h, f, as Chromium does), sends three real VP8 encodings with the MID and RID header
extensions, and a subscriber decodes the one layer it is forwarded.

aiortc cannot send simulcast, so the publisher here is an aiortc peer connection whose offer
gets the simulcast lines added, and whose layers are encoded with aiortc's VP8 encoder and sent
as raw RTP on its own (SRTP-protected) transport."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import struct
from collections.abc import AsyncIterator

import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtp import RtcpPacket, RtcpReceiverInfo, RtcpRrPacket, RtcpSenderInfo, RtcpSrPacket
from av import VideoFrame

from bot.client import MediaClient
from core.media.rtp import MID_URI, REPAIRED_RID_URI, RID_URI, parse_header
from sfu import aiortc_hooks as hooks
from sfu import srtp_send
from sfu.forwarder import OutboundSlot
from sfu.ice import IceSettings
from sfu.server import MediaSettings
from tests.fixtures.media import MediaHarness
from tests.fixtures.servers import eventually

LAYERS = {"q": (160, 120), "h": (320, 240), "f": (640, 480)}
RID_ID, REPAIRED_RID_ID = 10, 11


@pytest.fixture
async def media() -> AsyncIterator[MediaHarness]:
    """The media harness with the SFU's real-time bound off (`max_delay_s = 0`). With it on, a
    loaded machine whose event loop stalls past 0.25 s has the SFU keep a packet from the
    subscriber and refuse its NACK as too late (by design: tests/test_sfu_late_media.py), and
    this aiortc subscriber, unlike a browser, does not resume at the next keyframe: its jitter
    buffer waits in sequence order for the hole until 512 packets later (~20 s here), so its
    frame count stops. These tests are about layers and numbering, not about that bound."""
    harness = MediaHarness(
        MediaSettings(ice=IceSettings(host_addresses=("127.0.0.1",)), max_delay_s=0)
    )
    await harness.server.start()
    try:
        yield harness
    finally:
        await harness.close()


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


class SimulcastPublisher:
    """An aiortc publish session whose camera is sent as three real VP8 layers (30 fps, a
    keyframe every half second on each, as the test sender decides)."""

    def __init__(self, media: MediaHarness, participant_id: str = "a") -> None:
        self.media = media
        self.participant_id = participant_id
        self.pc = RTCPeerConnection()
        self.layers = [LayerSender(rid, size) for rid, size in LAYERS.items()]
        self.frames = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Offer the simulcast camera, connect, and send the layers until `close`."""
        await self.media.server.join("mdt-1", self.participant_id, frozenset({"publish_video"}))
        transceiver = self.pc.addTransceiver("video", direction="sendonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        answer = await self.media.server.offer(
            self.participant_id, "publish", simulcast_offer(self.pc.localDescription.sdp)
        )
        assert "a=simulcast:recv q;h;f" in answer and f"a=extmap:{RID_ID} {RID_URI}" in answer
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await eventually(lambda: self.pc.connectionState == "connected", timeout=15)
        self.payload_type = _number(r"a=rtpmap:(\d+) VP8/90000", answer)
        self.rtx_payload_type = _number(rf"a=fmtp:(\d+) apt={self.payload_type}", answer)
        self.mid_id = _number(rf"a=extmap:(\d+) {MID_URI}", answer)
        self.mid = str(transceiver.mid)
        self.dtls = hooks.transport_of(transceiver)
        self._task = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        while True:
            for layer in reversed(self.layers):  # the order does not matter: the RID says
                for packet in layer.packets(self.frames, self.payload_type, self.mid_id, self.mid):
                    srtp_send.send_rtp(self.dtls, packet)
            self.frames += 1
            await asyncio.sleep(1 / 30)

    def retransmit(self, layer: int) -> None:
        """Send one packet of `layer` again, on its RTX stream."""
        sequence = next(iter(self.layers[layer].sent))
        srtp_send.send_rtp(self.dtls, self.layers[layer].retransmission(
            sequence, self.rtx_payload_type, self.mid_id, self.mid))  # fmt: skip

    def watch_receiver_reports(self) -> list[RtcpReceiverInfo]:
        """The report blocks of the RRs the SFU sends this publisher, as they arrive (read where
        aiortc hands decrypted RTCP to its transport)."""
        blocks: list[RtcpReceiverInfo] = []
        original = self.dtls._handle_rtcp_data

        async def spy(data: bytes) -> None:
            blocks.extend(
                block
                for packet in RtcpPacket.parse(data)
                if isinstance(packet, RtcpRrPacket)
                for block in packet.reports
            )
            await original(data)

        self.dtls._handle_rtcp_data = spy
        return blocks

    def send_sender_report(self, layer: int, ntp: int) -> None:
        """Send an SR for `layer`'s stream, stamped `ntp` (64-bit NTP time)."""
        sender = self.layers[layer]
        info = RtcpSenderInfo(ntp_timestamp=ntp, rtp_timestamp=sender.timestamp,
                              packet_count=len(sender.sent), octet_count=0)  # fmt: skip
        srtp_send.send_rtcp(self.dtls, bytes(RtcpSrPacket(ssrc=sender.ssrc, sender_info=info)))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.pc.close()


class ReceivedSequence:
    """The sequence numbers of the video a subscriber's transport receives (RTX unwrapped),
    read where aiortc hands decrypted RTP to its receivers."""

    def __init__(self, client: MediaClient, codec: str = "VP8") -> None:
        self.numbers: list[int] = []
        self.ssrcs: set[int] = set()
        offer = client.subscribe_pc.remoteDescription.sdp
        self.payload_type = _number(rf"a=rtpmap:(\d+) {codec}/90000", offer)
        self.rtx_payload_type = _number(rf"a=fmtp:(\d+) apt={self.payload_type}", offer)
        transceiver = next(t for t in client.subscribe_pc.getTransceivers() if t.kind == "video")
        self.dtls = transceiver.receiver.transport
        self.original = self.dtls._handle_rtp_data
        self.dtls._handle_rtp_data = self._spy

    async def _spy(self, data: bytes, arrival_time_ms: int) -> None:
        header = parse_header(data)
        payload = data[header.payload_start : header.payload_end]
        if header.payload_type == self.payload_type:
            self.numbers.append(header.sequence)
            self.ssrcs.add(header.ssrc)
        elif header.payload_type == self.rtx_payload_type and len(payload) > 2:
            self.numbers.append(int.from_bytes(payload[:2], "big"))
        await self.original(data, arrival_time_ms)

    def gaps(self) -> int:
        """Sequence numbers never received between the first and the last."""
        return sequence_gaps(self.numbers)


def sequence_gaps(numbers: list[int]) -> int:
    """Sequence numbers missing between the first and the last of these (wraps unwrapped)."""
    unwrapped, base, previous = set(), 0, None
    for number in numbers:
        if previous is not None and number < previous and previous - number > 0x8000:
            base += 0x10000
        elif previous is not None and number > previous and number - previous > 0x8000:
            number -= 0x10000  # a late one from before a wrap
        unwrapped.add(base + number)
        previous = number % 0x10000
    return max(unwrapped) - min(unwrapped) + 1 - len(unwrapped)


class SentSequence:
    """The sequence numbers the SFU sends on a subscriber's video slot (media, not RTX),
    read where the slot hands its packets to SRTP: what the SFU numbered, whatever the
    transport then lost."""

    def __init__(self, slot: OutboundSlot) -> None:
        self.numbers: list[int] = []
        self.slot = slot
        original = slot.send_rtp

        def spy(packet: bytes) -> bool:
            header = parse_header(packet)
            if header.payload_type == slot.payload_type:
                self.numbers.append(header.sequence)
            return bool(original(packet))

        slot.send_rtp = spy


def _video_mid(client: MediaClient) -> str:
    return next(str(t.mid) for t in client.subscribe_pc.getTransceivers() if t.kind == "video")


def _width(client: MediaClient) -> int:
    return next((t.width for t in client.stats.tracks.values() if t.kind == "video"), 0)


async def test_a_three_layer_camera_is_one_track_and_every_layer_is_known(
    media: MediaHarness,
) -> None:
    subscriber = await media.join("b", [])
    publisher = SimulcastPublisher(media)
    try:
        await publisher.start()
        await asyncio.sleep(1.0)
        publisher.retransmit(1)  # the middle layer answers a NACK
        await eventually(lambda: subscriber.stats.frames("video") > 10, timeout=10)
        track = next(iter(media.server.participants["a"].tracks.values()))
        assert track.info.layers == ("q", "h", "f")
        demux = media.server.participants["a"].publisher.demux
        assert demux.layer_ssrcs(track) == [layer.ssrc for layer in publisher.layers]
        # (the frames counted may all precede the resent packet on a loaded machine)
        await eventually(lambda: publisher.layers[1].rtx_ssrc in demux.by_ssrc, timeout=5)
        rtx = demux.by_ssrc[publisher.layers[1].rtx_ssrc]
        assert (rtx.rtx, rtx.layer, rtx.media_ssrc) == (True, 1, publisher.layers[1].ssrc)
        assert demux.dropped == 0
        # Its page never said how large it shows the camera: the budget alone decides, and
        # loopback has room for the top layer.
        await eventually(lambda: _width(subscriber) == 640, timeout=10)
        assert not media.errors
    finally:
        await publisher.close()


async def test_the_publisher_gets_a_receiver_report_block_for_every_layer(
    media: MediaHarness,
) -> None:
    """The browser's own view of its upper layers (their loss, and the round trip from the echo
    of each layer's sender report) needs a block for each layer's SSRC, not the lowest's only."""
    await media.join("b", [])
    publisher = SimulcastPublisher(media)
    try:
        await publisher.start()
        blocks = publisher.watch_receiver_reports()
        ssrcs = [layer.ssrc for layer in publisher.layers]
        await asyncio.sleep(0.5)  # every layer's first packets have reached the SFU
        ntp = 0x0000_ABCD_1234_0000
        publisher.send_sender_report(2, ntp)
        await eventually(lambda: {block.ssrc for block in blocks} >= set(ssrcs), timeout=5)
        await eventually(
            lambda: any(b.ssrc == ssrcs[2] and b.lsr == (ntp >> 16) for b in blocks), timeout=5
        )
        latest = {block.ssrc: block for block in blocks}
        assert latest[ssrcs[2]].dlsr < 65536 * 2, "the top layer's SR echoed, with its delay"
        assert latest[ssrcs[0]].lsr == 0, "no SR was sent for the lowest layer"
        assert all(latest[ssrc].highest_sequence for ssrc in ssrcs)
        assert all(latest[ssrc].packets_lost == 0 for ssrc in ssrcs), "loopback loses nothing"
    finally:
        await publisher.close()


async def test_a_subscriber_gets_the_layer_its_tile_needs_as_one_continuous_stream(
    media: MediaHarness,
) -> None:
    subscriber = await media.join("b", [])
    publisher = SimulcastPublisher(media)
    try:
        await publisher.start()
        await eventually(lambda: subscriber.stats.frames("video") > 5, timeout=10)
        received = ReceivedSequence(subscriber)
        server_side = media.server.participants["b"].subscriber
        sent = SentSequence(next(slot for slot in server_side.slots if slot.kind == "video"))
        mid = _video_mid(subscriber)
        media.server.show("b", {mid: (160, 120)})  # a thumbnail
        await eventually(lambda: _width(subscriber) == 160, timeout=10)
        frames = subscriber.stats.frames("video")
        await eventually(lambda: subscriber.stats.frames("video") > frames + 15, timeout=10)
        media.server.show("b", {mid: (1280, 720)})  # the speaker, large
        # The top layer needs the subscriber's estimate to grow first: this aiortc subscriber
        # sends REMB only, which the SFU's climbs raise ~8 %/s, slower on a loaded machine
        # (loaded CI took over 10 s once).
        try:
            await eventually(lambda: _width(subscriber) == 640, timeout=30)
        except AssertionError:
            estimate = media.server.participants["b"].subscriber.downlink_bps
            raise AssertionError(
                f"still {_width(subscriber)} wide after 30 s; downlink estimate {estimate}"
            ) from None
        frames = subscriber.stats.frames("video")
        await eventually(lambda: subscriber.stats.frames("video") > frames + 15, timeout=10)

        assert len(received.ssrcs) == 1, "three layers, one stream to the subscriber"
        assert sequence_gaps(sent.numbers) == 0, "sequence numbers continue across the switches"
        # What the subscriber missed is what was lost and could no longer be resent in time
        # (on a loaded machine a stalled loop overflows a socket buffer now and then).
        refused = sum(server_side.retransmits.refused.values())
        assert received.gaps() <= refused, (received.gaps(), server_side.retransmits.refused)
        assert not media.errors
    finally:
        await publisher.close()


async def test_a_hidden_tile_gets_nothing_and_resumes_at_a_keyframe(media: MediaHarness) -> None:
    subscriber = await media.join("b", [])
    publisher = SimulcastPublisher(media)
    try:
        await publisher.start()
        await eventually(lambda: subscriber.stats.frames("video") > 5, timeout=10)
        received = ReceivedSequence(subscriber)
        mid = _video_mid(subscriber)
        media.server.show("b", {mid: (0, 0)})
        await asyncio.sleep(0.3)  # what was in flight
        count = len(received.numbers)
        await asyncio.sleep(1.0)
        assert len(received.numbers) == count, "nothing is forwarded to a hidden tile"

        frames = subscriber.stats.frames("video")
        media.server.show("b", {mid: (320, 240)})
        await eventually(lambda: subscriber.stats.frames("video") > frames + 10, timeout=10)
        assert _width(subscriber) == 320
        assert received.gaps() == 0
    finally:
        await publisher.close()


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
