"""A bot's camera in simulcast: three VP8 layers (rid q, h, f at a quarter, half and full size),
sent as a browser sends them, with a keyframe only when the SFU asks for one.

aiortc sends one encoding per transceiver, so the bot's publish offer gets the simulcast lines a
browser's has (`simulcast_offer`: the RID header extensions, `a=rid:<rid> send`,
`a=simulcast:send q;h;f`), and `SimulcastSender` sends the layers itself as RTP packets with the
MID and RID extensions, SRTP-protected on the publish session's transport.

Each layer is a clip encoded once per process (as the bot's one-layer camera, bot/testsource.py):
a keyframe, then delta frames only, and for every frame the same picture encoded as a keyframe,
sent in its place when a PLI or FIR names the layer's SSRC. The clip loops without a keyframe:
its last frame is its first picture again, encoded as a delta, and the loop goes on from the
second. So a subscriber that switches layers waits for the keyframe the SFU asks for, as with a
browser (which sends keyframes only when asked), not for one that comes anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import functools
import logging
import random
import re
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import av
import numpy as np
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtptransceiver import RTCRtpTransceiver

from bot.testsource import VIDEO_CLOCK_RATE, EncodedFrame, draw_test_pattern, vp8_encoder
from core.media.rtp import MID_URI, REPAIRED_RID_URI, RID_URI
from sfu import aiortc_hooks as hooks
from sfu.srtp_send import send_ready, send_rtp

log = logging.getLogger("consilium.sfu.client")

FPS = 30
"""Frames per second of every layer."""
LAYERS = (("q", 4, 0.1), ("h", 2, 1 / 3), ("f", 1, 1.0))
"""Each layer's RID, how much smaller than the camera it is (per side) and its share of the full
layer's bitrate: what the web client asks of the browser (web/js/media.js: 150k, 500k, 1.5M)."""
RID_EXTENSION_ID = 10
"""Header extension id offered for the RID (`a=extmap:10 ...rtp-stream-id`)."""
REPAIRED_RID_EXTENSION_ID = 11
"""... and for the repaired RID (offered as Chromium does; the bot sends no RTX)."""
_KEYFRAMES_ONLY_FIRST = 1 << 20
"""A keyframe interval no clip reaches: the stream's only keyframe is its first frame."""
_PSFB = 206
_VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
_PLI, _FIR = 1, 4


@dataclass(frozen=True, slots=True)
class LayerClip:
    """One simulcast layer's pre-encoded frames."""

    rid: str
    width: int
    height: int
    frames: tuple[EncodedFrame, ...]
    """The stream: a keyframe, then deltas; the last is picture 0 again, so the loop after it
    goes on at frame 1 with no keyframe."""
    keyframes: tuple[EncodedFrame, ...]
    """Picture i encoded as a keyframe (i < len(frames) - 1), sent instead of frame i when asked."""

    def frame_at(self, position: int, keyframe: bool) -> EncodedFrame:
        """The frame to send at `position` (0, 1, 2...: frames sent so far), as a keyframe when
        `keyframe` or when it is the stream's first."""
        loop = len(self.frames) - 1
        index = position if position <= loop else 1 + (position - 1) % loop
        if keyframe and index != 0:
            return self.keyframes[index % loop]
        return self.frames[index]


def encode_layers(
    width: int = 640, height: int = 360, bitrate: int = 1_500_000, seconds: float = 2.0
) -> tuple[LayerClip, ...]:
    """The test pattern in the three layers of a `width`x`height` camera whose full layer is
    sent at `bitrate`; encoded once per process for each set of arguments."""
    return _encode_layers(width, height, bitrate, seconds)


@functools.cache
def _encode_layers(width: int, height: int, bitrate: int, seconds: float) -> tuple[LayerClip, ...]:
    count = max(2, round(seconds * FPS))
    clips = []
    for rid, scale, share in LAYERS:
        # VP8 in 4:2:0 needs even sides.
        w, h = max(2, width // scale // 2 * 2), max(2, height // scale // 2 * 2)
        layer_bitrate = max(30_000, round(bitrate * share))
        pictures = [draw_test_pattern(i, w, h) for i in range(count)]
        stream = _encode(pictures + pictures[:1], w, h, layer_bitrate, _KEYFRAMES_ONLY_FIRST)
        # A camera's keyframe costs several frames' worth of bits; at the layer's own rate, with
        # every frame a keyframe, libvpx would make each no bigger than a delta frame.
        keyframes = _encode(pictures, w, h, layer_bitrate * 4, 1)
        if not stream[0].keyframe or any(f.keyframe for f in stream[1:]):
            raise RuntimeError(f"layer {rid}: libvpx put keyframes where none were asked for")
        clips.append(LayerClip(rid, w, h, stream, keyframes))
    return tuple(clips)


def _encode(
    pictures: Sequence[np.ndarray], width: int, height: int, bitrate: int, keyframe_interval: int
) -> tuple[EncodedFrame, ...]:
    codec = vp8_encoder(width, height, FPS, bitrate, keyframe_interval, error_resilient=True)
    packets: list[av.Packet] = []
    for index, picture in enumerate(pictures):
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
        frame.pts = index
        frame.time_base = codec.time_base
        if index % keyframe_interval == 0:
            frame.pict_type = av.video.frame.PictureType.I
        packets.extend(codec.encode(frame))
    packets.extend(codec.encode(None))
    if len(packets) != len(pictures):
        raise RuntimeError(f"libvpx returned {len(packets)} packets for {len(pictures)} frames")
    duration = VIDEO_CLOCK_RATE // FPS
    return tuple(EncodedFrame(bytes(p), bool(p.is_keyframe), duration) for p in packets)


def simulcast_offer(sdp: str) -> str:
    """An offer's first video section given a browser's simulcast lines: the RID extensions,
    one `a=rid` per layer and `a=simulcast:send q;h;f`."""
    lines = sdp.split("\r\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("m=video"))
    end = next((i for i in range(at + 1, len(lines)) if lines[i].startswith("m=")), len(lines))
    while end > at and not lines[end - 1]:
        end -= 1
    rids = [rid for rid, _, _ in LAYERS]
    added = [
        f"a=extmap:{RID_EXTENSION_ID} {RID_URI}",
        f"a=extmap:{REPAIRED_RID_EXTENSION_ID} {REPAIRED_RID_URI}",
        *(f"a=rid:{rid} send" for rid in rids),
        "a=simulcast:send " + ";".join(rids),
    ]
    return "\r\n".join([*lines[:end], *added, *lines[end:]])


def keyframe_requests(rtcp: bytes) -> list[int]:
    """The media SSRCs a compound RTCP packet asks keyframes of (PLI, RFC 4585; FIR, RFC 5104)."""
    wanted: list[int] = []
    at = 0
    while at + 12 <= len(rtcp):
        first, packet_type = rtcp[at], rtcp[at + 1]
        (words,) = struct.unpack_from("!H", rtcp, at + 2)
        end = at + (words + 1) * 4
        if end > len(rtcp):
            break
        if packet_type == _PSFB and first & 0x1F == _PLI:
            wanted.append(struct.unpack_from("!I", rtcp, at + 8)[0])
        elif packet_type == _PSFB and first & 0x1F == _FIR:
            wanted.extend(struct.unpack_from("!I", rtcp, fci)[0] for fci in range(at + 12, end, 8))
        at = end
    return wanted


@dataclass(slots=True)
class _Layer:
    """What the sender keeps of one layer: its clip and RTP numbering."""

    clip: LayerClip
    ssrc: int
    sequence: int
    timestamp: int
    packer: Vp8Encoder = field(default_factory=Vp8Encoder)
    """Packetises frames (RFC 7741, with a 15-bit picture id); it encodes nothing."""
    keyframe_wanted: bool = False
    keyframes_sent: int = 0


class SimulcastSender:
    """Sends the layers on a publish session's transport at `FPS`, answering keyframe requests."""

    def __init__(self, clips: Sequence[LayerClip], rng: random.Random | None = None) -> None:
        rng = rng or random.Random()
        self.layers = [
            _Layer(
                clip,
                ssrc=rng.randint(1, 0xFFFFFFFF),
                sequence=rng.randint(0, 0xFFFF),
                timestamp=rng.randint(0, 0xFFFFFFFF),
            )
            for clip in clips
        ]
        self.frames_sent = 0
        """Frames sent per layer so far."""
        self._task: asyncio.Task[None] | None = None

    @property
    def keyframes_sent(self) -> dict[str, int]:
        """Keyframes sent per RID (the first frames included)."""
        return {layer.clip.rid: layer.keyframes_sent for layer in self.layers}

    def start(self, transceiver: RTCRtpTransceiver, answer: str) -> None:
        """Send once the session is connected, with the payload type and extension ids the
        SFU's `answer` settled on."""
        payload_type = _number(r"a=rtpmap:(\d+) VP8/90000", answer)
        mid_id = _number(rf"a=extmap:(\d+) {re.escape(MID_URI)}", answer)
        rid_id = _number(rf"a=extmap:(\d+) {re.escape(RID_URI)}", answer)
        dtls = hooks.transport_of(transceiver)
        hooks.watch_received_rtcp(dtls, self._on_rtcp)
        extensions = _extensions(mid_id, str(transceiver.mid), rid_id)
        self._task = asyncio.get_running_loop().create_task(
            self._send(dtls, payload_type, extensions)
        )

    def _on_rtcp(self, rtcp: bytes) -> None:
        for ssrc in keyframe_requests(rtcp):
            for layer in self.layers:
                if layer.ssrc == ssrc:
                    layer.keyframe_wanted = True

    async def _send(self, dtls: RTCDtlsTransport, payload_type: int, ext: dict[str, bytes]) -> None:
        connected = asyncio.Event()

        def on_state() -> None:
            if send_ready(dtls):
                connected.set()

        dtls.on("statechange", on_state)
        if not send_ready(dtls):
            await connected.wait()
        start = time.monotonic()
        while True:
            for layer in self.layers:
                for packet in self._frame_packets(layer, payload_type, ext[layer.clip.rid]):
                    send_rtp(dtls, packet)
            self.frames_sent += 1
            wait = start + self.frames_sent / FPS - time.monotonic()
            if wait < -0.5:  # an overloaded loop resumes from now, not with a burst
                start, wait = time.monotonic() - self.frames_sent / FPS, 0.0
            await asyncio.sleep(max(0.0, wait))

    def _frame_packets(self, layer: _Layer, payload_type: int, extensions: bytes) -> list[bytes]:
        frame = layer.clip.frame_at(self.frames_sent, layer.keyframe_wanted)
        layer.keyframe_wanted = False
        layer.keyframes_sent += frame.keyframe
        packet = av.Packet(frame.data)
        packet.pts, packet.time_base = 0, _VIDEO_TIME_BASE  # (the RTP timestamp is ours)
        payloads, _ = layer.packer.pack(packet)
        timestamp = (layer.timestamp + self.frames_sent * frame.duration) & 0xFFFFFFFF
        packets = []
        for n, payload in enumerate(payloads):
            marker = 0x80 if n == len(payloads) - 1 else 0
            header = struct.pack("!BBHII", 0x90, marker | payload_type, layer.sequence, timestamp,
                                 layer.ssrc)  # fmt: skip
            packets.append(header + extensions + payload)
            layer.sequence = (layer.sequence + 1) & 0xFFFF
        return packets

    async def close(self) -> None:
        """Stop sending."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _extensions(mid_id: int, mid: str, rid_id: int) -> dict[str, bytes]:
    """Each layer's header-extension block (one-byte form, RFC 8285): MID and RID."""
    blocks = {}
    for rid, _, _ in LAYERS:
        body = bytes([mid_id << 4 | (len(mid) - 1)]) + mid.encode()
        body += bytes([rid_id << 4 | (len(rid) - 1)]) + rid.encode()
        body += b"\x00" * (-len(body) % 4)
        blocks[rid] = struct.pack("!HH", 0xBEDE, len(body) // 4) + body
    return blocks


def _number(pattern: str, sdp: str) -> int:
    found = re.search(pattern, sdp)
    if found is None:
        raise ValueError(f"the SFU's answer has no {pattern!r}: no simulcast")
    return int(found.group(1))
