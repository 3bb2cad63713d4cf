"""RTP packets back into codec frames: the inverse of a sender's packetiser, for export.

Plain functions and small state machines over bytes (sans-IO, no files), in the order the
standards define them: the RTP packet (RFC 3550: header, CSRCs, header extension, padding), the
VP8 payload descriptor (RFC 7741), H.264 single NAL units, STAP-A and FU-A (RFC 6184) and Opus
(RFC 7587: one packet, one frame).

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

_FIXED_HEADER = struct.Struct("!BBHII")
ANNEX_B_START_CODE = b"\x00\x00\x00\x01"
"""Precedes every NAL unit of an H.264 access unit in Annex-B form."""
REORDER_WINDOW = 512
"""Packets held back to put a track in sequence order: far more than a forwarder reorders
(about ten video frames), few enough to keep memory flat on an hour-long track."""


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet, parsed."""

    payload_type: int
    """7-bit payload type."""
    marker: bool
    """Marker bit (for video: the last packet of a frame)."""
    sequence: int
    """16-bit sequence number."""
    timestamp: int
    """32-bit media timestamp, in ticks of the codec's clock."""
    ssrc: int
    """Synchronisation source."""
    csrcs: tuple[int, ...]
    """Contributing sources."""
    extension_profile: int | None
    """The header extension's profile (0xBEDE for one-byte elements), None without one."""
    extension: bytes
    """The header extension's body (its elements, not parsed here)."""
    payload: bytes
    """The payload, without padding."""


def parse_rtp(data: bytes) -> RtpPacket:
    """Parse an RTP packet; ValueError if it is not well-formed RTP version 2."""
    size = len(data)
    if size < _FIXED_HEADER.size:
        raise ValueError("RTP packet shorter than its fixed header")
    b0, b1, sequence, timestamp, ssrc = _FIXED_HEADER.unpack_from(data)
    if b0 >> 6 != 2:
        raise ValueError("not RTP version 2")
    count = b0 & 0x0F
    pos = _FIXED_HEADER.size + 4 * count
    if pos > size:
        raise ValueError("truncated CSRC list")
    csrcs = struct.unpack_from(f"!{count}I", data, _FIXED_HEADER.size)
    profile: int | None = None
    extension = b""
    if b0 & 0x10:
        if pos + 4 > size:
            raise ValueError("truncated header extension")
        profile, words = struct.unpack_from("!HH", data, pos)
        end = pos + 4 + 4 * words
        if end > size:
            raise ValueError("truncated header extension")
        extension = data[pos + 4 : end]
        pos = end
    end = size
    if b0 & 0x20:
        padding = data[-1]
        if padding == 0 or pos + padding > size:
            raise ValueError("bad padding")
        end -= padding
    return RtpPacket(
        b1 & 0x7F, bool(b1 & 0x80), sequence, timestamp, ssrc, tuple(csrcs), profile,
        extension, data[pos:end],
    )  # fmt: skip


class Unwrapper:
    """Extends a wrapping counter (16-bit sequence number, 32-bit timestamp) to an unbounded
    integer, taking each value as the nearest to the last one (so reordering is fine)."""

    def __init__(self, bits: int) -> None:
        self._modulus = 1 << bits
        self._last: int | None = None

    def unwrap(self, value: int) -> int:
        """The extended value of `value`."""
        if self._last is None:
            self._last = value
            return value
        delta = (value - self._last) % self._modulus
        if delta >= self._modulus // 2:
            delta -= self._modulus
        extended = self._last + delta
        if delta > 0:
            self._last = extended
        return extended


# --- VP8 (RFC 7741) -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Vp8Descriptor:
    """The VP8 payload descriptor at the start of each VP8 RTP payload (RFC 7741 §4.2)."""

    start_of_partition: bool
    """S bit: this packet starts a VP8 partition."""
    partition_index: int
    """PID: which partition (0 is the first of a frame)."""
    non_reference: bool
    """N bit: the frame can be discarded without affecting others."""
    picture_id: int | None
    """7- or 15-bit PictureID, when present (I bit)."""
    tl0_pic_idx: int | None
    """TL0PICIDX, when present (L bit)."""
    temporal_id: int | None
    """TID, when present (T or K bit)."""
    key_idx: int | None
    """KEYIDX, when present (K bit)."""
    size: int
    """Bytes of descriptor: the VP8 data starts here."""

    @property
    def starts_frame(self) -> bool:
        """Whether this packet holds the first bytes of a frame."""
        return self.start_of_partition and self.partition_index == 0


def parse_vp8_descriptor(payload: bytes) -> Vp8Descriptor:
    """Read the payload descriptor; ValueError if it is truncated."""
    if not payload:
        raise ValueError("empty VP8 payload")
    b0 = payload[0]
    pos = 1
    picture_id = tl0 = tid = keyidx = None
    if b0 & 0x80:  # X: extension byte follows
        if len(payload) < 2:
            raise ValueError("truncated VP8 descriptor")
        ext = payload[1]
        pos = 2
        if ext & 0x80:  # I: PictureID
            if len(payload) < pos + 1:
                raise ValueError("truncated VP8 PictureID")
            if payload[pos] & 0x80:  # M: 15-bit
                if len(payload) < pos + 2:
                    raise ValueError("truncated VP8 PictureID")
                picture_id = ((payload[pos] & 0x7F) << 8) | payload[pos + 1]
                pos += 2
            else:
                picture_id = payload[pos] & 0x7F
                pos += 1
        if ext & 0x40:  # L: TL0PICIDX
            if len(payload) < pos + 1:
                raise ValueError("truncated VP8 TL0PICIDX")
            tl0 = payload[pos]
            pos += 1
        if ext & 0x30:  # T or K: one byte with TID, Y and KEYIDX
            if len(payload) < pos + 1:
                raise ValueError("truncated VP8 TID/KEYIDX")
            if ext & 0x20:
                tid = payload[pos] >> 6
            if ext & 0x10:
                keyidx = payload[pos] & 0x1F
            pos += 1
    if pos >= len(payload):
        raise ValueError("VP8 payload holds no data after its descriptor")
    return Vp8Descriptor(
        bool(b0 & 0x10), b0 & 0x07, bool(b0 & 0x20), picture_id, tl0, tid, keyidx, pos
    )


def vp8_is_keyframe(frame: bytes) -> bool:
    """Whether a VP8 frame is a keyframe: the P bit of its payload header is 0 (RFC 6386 §9.1)."""
    return bool(frame) and not frame[0] & 0x01


def vp8_picture_size(frame: bytes) -> tuple[int, int] | None:
    """Width and height of a VP8 keyframe (from its start code's trailer), None for others."""
    if len(frame) < 10 or not vp8_is_keyframe(frame) or frame[3:6] != b"\x9d\x01\x2a":
        return None
    width, height = struct.unpack_from("<HH", frame, 6)
    return width & 0x3FFF, height & 0x3FFF


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

NAL_IDR = 5
"""NAL unit type of an IDR slice: the access unit is a keyframe."""
NAL_SPS = 7
"""Sequence parameter set."""
NAL_PPS = 8
"""Picture parameter set."""
_STAP_A = 24
_FU_A = 28


def split_annex_b(access_unit: bytes) -> list[bytes]:
    """The NAL units of an Annex-B access unit (3- or 4-byte start codes)."""
    units: list[bytes] = []
    pos = access_unit.find(b"\x00\x00\x01")
    while pos >= 0:
        start = pos + 3
        nxt = access_unit.find(b"\x00\x00\x01", start)
        end = len(access_unit) if nxt < 0 else nxt
        unit = access_unit[start:end]
        if nxt >= 0 and unit.endswith(b"\x00"):
            unit = unit[:-1]  # the leading zero of a 4-byte start code
        if unit:
            units.append(unit)
        pos = nxt
    return units


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
        if payload[0] & 0x1F == _FU_A:
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
            if nal_type == _FU_A:
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
            if nal_type == _STAP_A:
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
    packet: RtpPacket = field(compare=False)


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
            packet = parse_rtp(data)
        except ValueError:
            self.stats.malformed += 1
            return []
        if self.payload_type is not None and packet.payload_type != self.payload_type:
            return []
        sequence = self._sequences.unwrap(packet.sequence)
        if sequence in self._held or (self._next is not None and sequence < self._next):
            self.stats.duplicates += 1
            return []
        heapq.heappush(self._heap, _Pending(sequence, arrival_ms, packet))
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
        packet = item.packet
        if self._current and packet.timestamp != self._current[0].packet.timestamp:
            self._finish(frames)  # contiguous but no marker: the frame ended anyway
        if not self._current:
            try:
                self._current_broken = not self.depacketizer.starts_frame(packet.payload)
            except ValueError:
                self.stats.malformed += 1
                self._current_broken = True
        self._current.append(item)
        if packet.marker or self.depacketizer.frame_per_packet:
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
            data = self.depacketizer.assemble([i.packet.payload for i in items])
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
        timestamp = self._timestamps.unwrap(items[0].packet.timestamp)
        self.stats.frames += 1
        frames.append(Frame(timestamp, items[0].arrival_ms, data, keyframe))
