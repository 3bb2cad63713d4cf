"""Codec payloads inside RTP: the VP8 payload descriptor (RFC 7741), H.264's NAL unit and packet
types (RFC 6184) and Annex-B access units, and what a whole frame's header says.

Read by the SFU (which packet starts a keyframe: `core.media.keyframes`) and by the recorder
(frames back out of stored packets: `recorder.depacketize`). Plain functions over bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

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
    """Read the payload descriptor; ValueError if it is truncated.

    `core.media.keyframes.vp8_keyframe_start` walks the same fields without building this
    object, because it runs per forwarded video packet while recording (bench/forwarding.py).
    """
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


# --- H.264 (RFC 6184) -----------------------------------------------------------------------

NAL_IDR = 5
"""NAL unit type of an IDR slice: the access unit is a keyframe."""
NAL_SPS = 7
"""Sequence parameter set."""
NAL_PPS = 8
"""Picture parameter set."""
STAP_A = 24
"""RTP packet type: several NAL units, each after its 16-bit size."""
FU_A = 28
"""RTP packet type: a fragment of one NAL unit (its second byte: start, end, NAL type)."""
ANNEX_B_START_CODE = b"\x00\x00\x00\x01"
"""Precedes every NAL unit of an H.264 access unit in Annex-B form."""


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
