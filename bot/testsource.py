"""Synthetic media for bots and tests: a clip encoded once per process and replayed forever.

Encoding live video costs a core per few participants; a load test of fifty bots on one machine
cannot afford it. So the clip (a moving test pattern in VP8, a tone in Opus) is encoded once,
cached per set of parameters, and every `ReplayVideoTrack` / `ReplayAudioTrack` hands the same
encoded bytes to aiortc as `av.Packet`s. aiortc's `RTCRtpSender` recognises a packet (rather than
a frame) and only packetises it (`Vp8Encoder.pack`, `OpusEncoder.pack`): no encoder runs per bot.

What replay cannot do: honour a keyframe request (PLI/FIR). aiortc's sender forwards that
request to its encoder, which `pack` ignores. Keyframes come every `keyframe_interval` frames
instead (one second by default), so a subscriber joining late or losing a packet sees a picture
again within that interval. Each loop of the clip starts on its first frame, a keyframe.
"""

from __future__ import annotations

import asyncio
import fractions
import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av.audio.codeccontext import AudioCodecContext
from av.video.codeccontext import VideoCodecContext

VIDEO_CLOCK_RATE = 90000
"""RTP clock of video (RFC 7741 for VP8): the time base of video packets is 1/90000."""
AUDIO_CLOCK_RATE = 48000
"""RTP clock and sample rate of Opus (RFC 7587): the time base of audio packets is 1/48000."""
OPUS_FRAME_SAMPLES = 960
"""Samples per Opus packet: 20 ms at 48 kHz, as aiortc's own Opus encoder sends."""
MAX_LATENESS_S = 0.5
"""A track this far behind its schedule (an overloaded event loop) resumes from now instead of
sending the backlog in one burst."""

_BAR_COLOURS = np.array(
    [
        (235, 235, 235),  # white
        (235, 235, 16),  # yellow
        (16, 235, 235),  # cyan
        (16, 235, 16),  # green
        (235, 16, 235),  # magenta
        (235, 16, 16),  # red
        (16, 16, 235),  # blue
        (16, 16, 16),  # black
    ],
    dtype=np.uint8,
)
_NOISE_AMPLITUDE = 8
"""Peak sensor-like noise added to every pixel; at 8 the clip uses about the bitrate asked for."""
_COUNTER_BITS = 16
"""Blocks in the frame-counter strip: the frame index in binary, white for a one."""


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One encoded video frame or Opus packet of a clip."""

    data: bytes
    """The codec's bitstream for this frame (what `av.Packet` carries)."""
    keyframe: bool
    """Whether the frame decodes on its own (every Opus packet does)."""
    duration: int
    """How long the frame lasts, in ticks of its RTP clock (90 kHz video, 48 kHz audio)."""


def draw_test_pattern(index: int, width: int, height: int) -> np.ndarray:
    """Frame `index` of the test pattern as an RGB array (height, width, 3).

    Eight colour bars scroll left four pixels per frame; a strip along the bottom shows the frame
    index in binary, so consecutive frames always differ even where the bars repeat. Grey noise
    (seeded by the index, so the clip is the same every run) stands in for a camera sensor's: a
    flat synthetic picture would compress to a tenth of the bitrate a real camera sends.
    """
    bar_width = max(1, math.ceil(width / len(_BAR_COLOURS)))
    row = np.repeat(_BAR_COLOURS, bar_width, axis=0)
    row = np.roll(row, -4 * index, axis=0)[:width]
    if len(row) < width:  # a picture narrower than eight pixels
        row = np.resize(row, (width, 3))
    image = np.broadcast_to(row, (height, width, 3)).astype(np.int16)
    strip = max(1, height // 12)
    block = max(1, width // _COUNTER_BITS)
    for bit in range(_COUNTER_BITS):
        on = (index >> (_COUNTER_BITS - 1 - bit)) & 1
        image[height - strip :, bit * block : (bit + 1) * block] = 235 if on else 16
    noise = np.random.default_rng(index).integers(
        -_NOISE_AMPLITUDE, _NOISE_AMPLITUDE + 1, size=(height, width, 1), dtype=np.int16
    )
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def encode_test_pattern(
    width: int = 640,
    height: int = 480,
    fps: int = 30,
    seconds: float = 2.0,
    bitrate: int = 1_000_000,
    keyframe_interval: int = 30,
) -> list[EncodedFrame]:
    """The test pattern encoded in VP8, a keyframe every `keyframe_interval` frames from the first.

    Encoded once per process for each set of arguments; later calls return the cached frames.
    """
    return list(_encode_test_pattern(width, height, fps, seconds, bitrate, keyframe_interval))


@functools.cache
def _encode_test_pattern(
    width: int, height: int, fps: int, seconds: float, bitrate: int, keyframe_interval: int
) -> tuple[EncodedFrame, ...]:
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ValueError(f"picture size {width}x{height}: use positive even numbers")
    if fps <= 0 or bitrate <= 0 or keyframe_interval <= 0:
        raise ValueError("fps, bitrate and keyframe_interval must be positive")
    count = max(1, round(seconds * fps))
    codec = vp8_encoder(width, height, fps, bitrate, keyframe_interval)
    packets: list[av.Packet] = []
    for index in range(count):
        frame = av.VideoFrame.from_ndarray(draw_test_pattern(index, width, height), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = index
        frame.time_base = codec.time_base
        if index % keyframe_interval == 0:
            frame.pict_type = av.video.frame.PictureType.I
        packets.extend(codec.encode(frame))
    packets.extend(codec.encode(None))
    if len(packets) != count:
        raise RuntimeError(f"libvpx returned {len(packets)} packets for {count} frames")
    if not packets[0].is_keyframe:
        raise RuntimeError("libvpx did not start the clip with a keyframe")
    ticks = [round(i * VIDEO_CLOCK_RATE / fps) for i in range(count + 1)]
    return tuple(
        EncodedFrame(bytes(packet), bool(packet.is_keyframe), ticks[i + 1] - ticks[i])
        for i, packet in enumerate(packets)
    )


def vp8_encoder(
    width: int,
    height: int,
    fps: int,
    bitrate: int,
    keyframe_interval: int,
    *,
    error_resilient: bool = False,
) -> VideoCodecContext:
    """A libvpx VP8 encoder set up as a live camera's: constant bitrate, no look-ahead, a
    keyframe every `keyframe_interval` frames and wherever a frame is marked `I`.

    `error_resilient`: each frame's entropy coding starts from its keyframe's probabilities,
    not from the previous frame's updates (VP8's `refresh_entropy_probs` off, as WebRTC's
    encoders run with temporal layers): a frame still decodes after another keyframe of the same
    picture is put in the stream in place of one (`bot.simulcast`)."""
    codec = av.CodecContext.create("libvpx", "w")
    assert isinstance(codec, VideoCodecContext)
    codec.width = width
    codec.height = height
    codec.pix_fmt = "yuv420p"
    codec.time_base = fractions.Fraction(1, fps)
    codec.framerate = fractions.Fraction(fps, 1)
    codec.bit_rate = bitrate
    codec.gop_size = keyframe_interval
    codec.options = {
        # A fixed keyframe distance (kf_min_dist = kf_max_dist): no extra keyframes at what
        # libvpx might take for a scene cut.
        "keyint_min": str(keyframe_interval),
        # No look-ahead and no alt-ref frames: one displayed frame per packet, as a live encoder.
        "lag-in-frames": "0",
        "auto-alt-ref": "0",
        "deadline": "realtime",
        "cpu-used": "8",
        # Constant bitrate (minrate = maxrate), like aiortc's own VP8 encoder sends.
        "minrate": str(bitrate),
        "maxrate": str(bitrate),
        "bufsize": str(bitrate),
    }
    if error_resilient:
        codec.options = {**codec.options, "error-resilient": "default"}
    return codec


def encode_tone(seconds: float = 2.0, frequency: float = 440.0) -> list[EncodedFrame]:
    """A sine tone encoded as 20 ms Opus packets, 48 kHz stereo (what aiortc negotiates).

    Encoded once per process for each set of arguments; later calls return the cached packets.
    """
    return list(_encode_tone(seconds, frequency))


@functools.cache
def _encode_tone(seconds: float, frequency: float) -> tuple[EncodedFrame, ...]:
    if seconds <= 0:
        raise ValueError("seconds must be positive")
    codec = av.CodecContext.create("libopus", "w")
    assert isinstance(codec, AudioCodecContext)
    codec.sample_rate = AUDIO_CLOCK_RATE
    codec.layout = "stereo"
    codec.format = "s16"
    # What a browser sends for a microphone (WebRTC's Opus default for speech), so that a load
    # test's audio weighs on a link what a person's does. Constrained VBR: libopus's default
    # (unconstrained) VBR spends ~48 kbps on a pure tone, half as much again as a voice.
    codec.bit_rate = 32000
    codec.options = {"vbr": "constrained"}
    codec.time_base = fractions.Fraction(1, AUDIO_CLOCK_RATE)
    # Whole packets only, so the clip loops on a packet boundary.
    count = max(1, round(seconds * AUDIO_CLOCK_RATE / OPUS_FRAME_SAMPLES))
    t = np.arange(count * OPUS_FRAME_SAMPLES) / AUDIO_CLOCK_RATE
    mono = (0.3 * 32767 * np.sin(2 * np.pi * frequency * t)).astype(np.int16)
    stereo = np.repeat(mono, 2)  # interleaved left/right, as packed s16 is laid out
    packets: list[av.Packet] = []
    for index in range(count):
        chunk = stereo[index * 2 * OPUS_FRAME_SAMPLES : (index + 1) * 2 * OPUS_FRAME_SAMPLES]
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = AUDIO_CLOCK_RATE
        frame.pts = index * OPUS_FRAME_SAMPLES
        frame.time_base = codec.time_base
        packets.extend(codec.encode(frame))
    packets.extend(codec.encode(None))
    # The encoder's look-ahead adds a packet at the end; keep exactly `count` so the clip lasts
    # what was asked for.
    return tuple(EncodedFrame(bytes(p), True, OPUS_FRAME_SAMPLES) for p in packets[:count])


class _ReplayTrack(MediaStreamTrack):
    """Replays an encoded clip as `av.Packet`s, looping, in real time."""

    def __init__(self, clip: Sequence[EncodedFrame], clock_rate: int) -> None:
        super().__init__()
        if not clip:
            raise ValueError("an empty clip cannot be replayed")
        if not clip[0].keyframe:
            raise ValueError("a clip must start with a keyframe: every loop starts there")
        self.clip = clip
        """The encoded frames, replayed in order and again from the first."""
        self.time_base = fractions.Fraction(1, clock_rate)
        """Time base of the packets' `pts`."""
        self._clock_rate = clock_rate
        self._index = 0
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> av.Packet:
        """The next encoded frame, once it is due: `pts / clock rate` seconds after the first."""
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            wait = self._start + self._pts / self._clock_rate - now
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -MAX_LATENESS_S:
                self._start = now - self._pts / self._clock_rate
        frame = self.clip[self._index]
        packet = av.Packet(frame.data)
        packet.pts = self._pts
        packet.dts = self._pts
        packet.time_base = self.time_base
        packet.is_keyframe = frame.keyframe
        self._pts += frame.duration
        self._index = (self._index + 1) % len(self.clip)
        return packet


class ReplayVideoTrack(_ReplayTrack):
    """A video track of pre-encoded VP8 (the test pattern unless another clip is given)."""

    kind = "video"

    def __init__(self, clip: Sequence[EncodedFrame] | None = None) -> None:
        super().__init__(encode_test_pattern() if clip is None else clip, VIDEO_CLOCK_RATE)


class ReplayAudioTrack(_ReplayTrack):
    """An audio track of pre-encoded Opus (the 440 Hz tone unless another clip is given)."""

    kind = "audio"

    def __init__(self, clip: Sequence[EncodedFrame] | None = None) -> None:
        super().__init__(encode_tone() if clip is None else clip, AUDIO_CLOCK_RATE)
