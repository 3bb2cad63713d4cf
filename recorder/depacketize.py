"""RTP packets back into codec frames: the inverse of a sender's packetiser, for export.

Small state machines over bytes (sans-IO, no files), one per codec: VP8 (RFC 7741), H.264 single
NAL units, STAP-A and FU-A (RFC 6184) and Opus (RFC 7587: one packet, one frame). The RTP header
and the codecs' payload descriptors are read by `core.media` (the same code the SFU forwards
with); this module only puts payloads back together.

`FrameAssembler` takes a track's packets as stored (arrival order) and returns whole frames in
sequence order: it sorts within a window (16-bit sequence numbers, unwrapped), drops duplicates,
unwraps the 32-bit RTP timestamp, and drops what loss made undecodable: a frame with a missing
packet, and for video every frame after a loss until the next keyframe, so the output always
decodes.
"""

from __future__ import annotations

import heapq
import struct
from dataclasses import dataclass, field
from typing import Any, Protocol

import av

from core.media.payloads import (
    ANNEX_B_START_CODE,
    FU_A,
    NAL_IDR,
    NAL_PPS,
    NAL_SPS,
    STAP_A,
    parse_vp8_descriptor,
    split_annex_b,
    vp8_is_keyframe,
)
from core.media.rtp import RtpHeader, Unwrapper, parse_header

REORDER_WINDOW = 512
"""Packets held back to put a track in sequence order: far more than a forwarder reorders
(about ten video frames), few enough to keep memory flat on an hour-long track."""


def decoded_size(codec: str, frame: bytes) -> tuple[int, int] | None:
    """Width and height of a video keyframe (`codec` a MIME type) by decoding it with FFmpeg;
    None when it does not decode on its own. Only one frame is decoded: a check, not a render."""
    name = {"video/vp8": "vp8", "video/h264": "h264"}.get(codec.lower())
    if name is None:
        return None
    decoder: Any = av.CodecContext.create(name, "r")
    try:
        for decoded in (*decoder.decode(av.Packet(frame)), *decoder.decode(None)):
            return decoded.width, decoded.height
    except (av.error.FFmpegError, ValueError):
        return None
    return None


# --- VP8 (RFC 7741) -------------------------------------------------------------------------


class Vp8Depacketizer:
    """VP8 frames from RTP payloads."""

    kind = "video"
    frame_per_packet = False

    def starts_frame(self, payload: bytes) -> bool:
        """Whether the payload is the first of a frame (S=1, PID=0)."""
        return parse_vp8_descriptor(payload).starts_frame

    def assemble(self, payloads: list[bytes]) -> bytes:
        """A frame from its packets' payloads, in order: the descriptors stripped."""
        return b"".join(p[parse_vp8_descriptor(p).size :] for p in payloads)

    def is_keyframe(self, frame: bytes) -> bool:
        """See `vp8_is_keyframe`."""
        return vp8_is_keyframe(frame)


# --- H.264 (RFC 6184) -----------------------------------------------------------------------


class H264Depacketizer:
    """H.264 access units (Annex-B) from RTP payloads: single NAL units, STAP-A and FU-A
    (packetization modes 0 and 1). The latest SPS and PPS are remembered and put in front of an
    IDR that lacks them, so an export starting at any keyframe decodes."""

    kind = "video"
    frame_per_packet = False

    def __init__(self) -> None:
        self.sps: bytes | None = None
        """The last sequence parameter set seen."""
        self.pps: bytes | None = None
        """The last picture parameter set seen."""

    def starts_frame(self, payload: bytes) -> bool:
        """Whether the payload can be an access unit's first: anything but an FU-A
        continuation."""
        if not payload:
            raise ValueError("empty H.264 payload")
        if payload[0] & 0x1F == FU_A:
            if len(payload) < 2:
                raise ValueError("truncated FU-A")
            return bool(payload[1] & 0x80)
        return True

    def nal_units(self, payloads: list[bytes]) -> list[bytes]:
        """The NAL units carried by an access unit's payloads, in order; ValueError if an
        FU-A is broken (a continuation without its start, or unfinished)."""
        units: list[bytes] = []
        fragment: bytearray | None = None
        for payload in payloads:
            if not payload:
                raise ValueError("empty H.264 payload")
            nal_type = payload[0] & 0x1F
            if nal_type == FU_A:
                if len(payload) < 2:
                    raise ValueError("truncated FU-A")
                header = payload[1]
                if header & 0x80:  # S
                    if fragment is not None:
                        raise ValueError("FU-A started inside another")
                    fragment = bytearray([(payload[0] & 0xE0) | (header & 0x1F)])
                elif fragment is None:
                    raise ValueError("FU-A continuation without its start")
                fragment += payload[2:]
                if header & 0x40:  # E
                    units.append(bytes(fragment))
                    fragment = None
                continue
            if fragment is not None:
                raise ValueError("FU-A interrupted before its end")
            if nal_type == STAP_A:
                pos = 1
                while pos + 2 <= len(payload):
                    (length,) = struct.unpack_from("!H", payload, pos)
                    pos += 2
                    if length == 0 or pos + length > len(payload):
                        raise ValueError("truncated STAP-A unit")
                    units.append(payload[pos : pos + length])
                    pos += length
            elif 1 <= nal_type <= 23:
                units.append(payload)
            else:
                raise ValueError(f"unsupported H.264 packet type {nal_type}")
        if fragment is not None:
            raise ValueError("FU-A without its end")
        return units

    def assemble(self, payloads: list[bytes]) -> bytes:
        """An Annex-B access unit from its packets' payloads."""
        units = self.nal_units(payloads)
        types = {u[0] & 0x1F for u in units}
        for unit in units:
            if unit[0] & 0x1F == NAL_SPS:
                self.sps = unit
            elif unit[0] & 0x1F == NAL_PPS:
                self.pps = unit
        if NAL_IDR in types:
            prefix = [
                ps
                for ps, kind in ((self.sps, NAL_SPS), (self.pps, NAL_PPS))
                if ps is not None and kind not in types
            ]
            units = prefix + units
        return b"".join(ANNEX_B_START_CODE + u for u in units)

    def is_keyframe(self, frame: bytes) -> bool:
        """Whether the access unit holds an IDR slice."""
        return any(u[0] & 0x1F == NAL_IDR for u in split_annex_b(frame))


# --- Opus (RFC 7587) ------------------------------------------------------------------------


class OpusDepacketizer:
    """Opus: each RTP payload is one Opus packet, a frame on its own."""

    kind = "audio"
    frame_per_packet = True

    def starts_frame(self, payload: bytes) -> bool:
        """Every packet starts (and is) a frame."""
        return True

    def assemble(self, payloads: list[bytes]) -> bytes:
        """The one packet's payload."""
        return payloads[0]

    def is_keyframe(self, frame: bytes) -> bool:
        """Every Opus packet decodes on its own."""
        return True


class Depacketizer(Protocol):
    """A codec's rules for `FrameAssembler`."""

    kind: str
    """`audio` or `video` (video waits for a keyframe after a loss)."""
    frame_per_packet: bool
    """Whether every packet is a whole frame (audio)."""

    def starts_frame(self, payload: bytes) -> bool:
        """Whether the payload can be a frame's first; ValueError if it is malformed."""

    def assemble(self, payloads: list[bytes]) -> bytes:
        """A frame's bytes from its payloads in order; ValueError if they do not form one."""

    def is_keyframe(self, frame: bytes) -> bool:
        """Whether the frame decodes on its own."""


def depacketizer_for(codec: str) -> Depacketizer:
    """The depacketizer of a MIME type (`video/VP8`, `video/H264`, `audio/opus`)."""
    name = codec.lower()
    if name == "video/vp8":
        return Vp8Depacketizer()
    if name == "video/h264":
        return H264Depacketizer()
    if name == "audio/opus":
        return OpusDepacketizer()
    raise ValueError(f"no depacketizer for codec {codec!r}")


# --- Frames ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One whole codec frame, ready for a muxer."""

    timestamp: int
    """RTP timestamp, unwrapped (ticks of the codec's clock, from the track's first packet)."""
    arrival_ms: int
    """Arrival time of its first packet (the recording's timeline)."""
    data: bytes
    """The frame (VP8 frame, H.264 Annex-B access unit, Opus packet)."""
    keyframe: bool
    """Whether it decodes on its own."""


@dataclass
class AssemblerStats:
    """What `FrameAssembler` saw and dropped."""

    packets: int = 0
    """Packets pushed."""
    duplicates: int = 0
    """Packets dropped as duplicates (or arriving after their place was passed)."""
    malformed: int = 0
    """Packets that were not valid RTP or a valid payload of the codec."""
    lost: int = 0
    """Sequence numbers never seen."""
    frames: int = 0
    """Frames returned."""
    dropped_frames: int = 0
    """Frames dropped: incomplete, or video waiting for a keyframe after a loss."""


@dataclass(order=True)
class _Pending:
    sequence: int
    arrival_ms: int = field(compare=False)
    header: RtpHeader = field(compare=False)
    payload: bytes = field(compare=False)
    """The payload, without padding."""


class FrameAssembler:
    """One track's packets in, whole decodable frames out (sans-IO: `push`, then `flush`)."""

    def __init__(
        self,
        depacketizer: Depacketizer,
        *,
        payload_type: int | None = None,
        window: int = REORDER_WINDOW,
    ) -> None:
        self.depacketizer = depacketizer
        """The codec's rules."""
        self.payload_type = payload_type
        """Packets of any other payload type are ignored (None: take all)."""
        self.stats = AssemblerStats()
        """Counts of what was seen and dropped."""
        self._window = window
        self._sequences = Unwrapper(16)
        self._timestamps = Unwrapper(32)
        self._heap: list[_Pending] = []
        self._held: set[int] = set()
        self._next: int | None = None
        """Extended sequence number expected next in order (None: nothing released yet)."""
        self._need_keyframe = depacketizer.kind == "video"
        self._current: list[_Pending] = []
        self._current_broken = False

    def push(self, data: bytes, arrival_ms: int) -> list[Frame]:
        """Take one stored packet; return the frames it completes (possibly none)."""
        self.stats.packets += 1
        try:
            header = parse_header(data)
        except ValueError:
            self.stats.malformed += 1
            return []
        if self.payload_type is not None and header.payload_type != self.payload_type:
            return []
        sequence = self._sequences.unwrap(header.sequence)
        if sequence in self._held or (self._next is not None and sequence < self._next):
            self.stats.duplicates += 1
            return []
        payload = data[header.payload_start : header.payload_end]
        heapq.heappush(self._heap, _Pending(sequence, arrival_ms, header, payload))
        self._held.add(sequence)
        frames: list[Frame] = []
        while len(self._heap) > self._window:
            self._release(heapq.heappop(self._heap), frames)
        return frames

    def flush(self) -> list[Frame]:
        """The end of the track: release everything held; an unfinished frame is dropped
        unless it is a whole frame already (no marker needed for the last one)."""
        frames: list[Frame] = []
        while self._heap:
            self._release(heapq.heappop(self._heap), frames)
        if self._current:
            self._finish(frames)
        return frames

    def _release(self, item: _Pending, frames: list[Frame]) -> None:
        self._held.discard(item.sequence)
        gap = self._next is not None and item.sequence != self._next
        if gap:
            assert self._next is not None
            self.stats.lost += item.sequence - self._next
            if self._current:
                self._current_broken = True  # dropped once it ends (counted once)
            if self.depacketizer.kind == "video":
                self._need_keyframe = True  # some frame is gone: references are broken
        self._next = item.sequence + 1
        header = item.header
        if self._current and header.timestamp != self._current[0].header.timestamp:
            self._finish(frames)  # contiguous but no marker: the frame ended anyway
        if not self._current:
            try:
                self._current_broken = not self.depacketizer.starts_frame(item.payload)
            except ValueError:
                self.stats.malformed += 1
                self._current_broken = True
        self._current.append(item)
        if header.marker or self.depacketizer.frame_per_packet:
            self._finish(frames)

    def _drop_current(self) -> None:
        self.stats.dropped_frames += 1
        self._current = []
        self._current_broken = False

    def _finish(self, frames: list[Frame]) -> None:
        items = self._current
        if self._current_broken:
            self._drop_current()
            if self.depacketizer.kind == "video":
                self._need_keyframe = True
            return
        self._current = []
        try:
            data = self.depacketizer.assemble([i.payload for i in items])
        except ValueError:
            self.stats.malformed += 1
            self.stats.dropped_frames += 1
            if self.depacketizer.kind == "video":
                self._need_keyframe = True
            return
        keyframe = self.depacketizer.is_keyframe(data)
        if self._need_keyframe and not keyframe:
            self.stats.dropped_frames += 1
            return
        self._need_keyframe = False
        timestamp = self._timestamps.unwrap(items[0].header.timestamp)
        self.stats.frames += 1
        frames.append(Frame(timestamp, items[0].arrival_ms, data, keyframe))
