"""The picture size an H.264 sequence parameter set declares (ITU-T H.264 7.3.2.1.1).

A VP8 keyframe states its size in its first bytes; an H.264 keyframe does not: its SPS does, in
exp-Golomb codes after the profile's optional fields, less the frame cropping. The SFU reads it
from the SPS the browser sends in front of each IDR picture (a single NAL unit packet, or inside
a STAP-A: RFC 6184), to know each simulcast layer's size (`sfu.layer_choice.LayerMeter`).

Plain functions over bytes; a malformed SPS gives None, never an exception.
"""

from __future__ import annotations

from core.media.payloads import NAL_SPS, STAP_A

_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})
"""profile_idc values whose SPS carries chroma format, bit depths and scaling matrices."""


class _Bits:
    """An RBSP read bit by bit (emulation prevention bytes already removed)."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def bit(self) -> int:
        byte = self.pos >> 3
        if byte >= len(self.data):
            raise ValueError("SPS ends early")
        value = (self.data[byte] >> (7 - (self.pos & 7))) & 1
        self.pos += 1
        return value

    def bits(self, count: int) -> int:
        value = 0
        for _ in range(count):
            value = value << 1 | self.bit()
        return value

    def ue(self) -> int:
        """An unsigned exp-Golomb code."""
        zeros = 0
        while not self.bit():
            zeros += 1
            if zeros > 31:
                raise ValueError("exp-Golomb code too long")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        """A signed exp-Golomb code."""
        code = self.ue()
        return (code + 1) // 2 if code & 1 else -(code // 2)


def _rbsp(nal: bytes) -> bytes:
    """A NAL unit's payload without its header byte and emulation prevention bytes."""
    out = bytearray()
    zeros = 0
    for byte in nal[1:]:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def _skip_scaling_list(bits: _Bits, size: int) -> None:
    last = next_scale = 8
    for _ in range(size):
        if next_scale:
            next_scale = (last + bits.se() + 256) % 256
        last = next_scale or last


def sps_picture_size(nal: bytes) -> tuple[int, int] | None:
    """Width and height (after cropping) that an SPS NAL unit declares; None if `nal` is not
    an SPS or does not parse."""
    if not nal or nal[0] & 0x1F != NAL_SPS:
        return None
    try:
        bits = _Bits(_rbsp(nal))
        profile = bits.bits(8)
        bits.bits(16)  # constraint flags, level_idc
        bits.ue()  # seq_parameter_set_id
        chroma_format = 1
        if profile in _HIGH_PROFILES:
            chroma_format = bits.ue()
            if chroma_format == 3:
                bits.bit()  # separate_colour_plane_flag
            bits.ue()  # bit_depth_luma_minus8
            bits.ue()  # bit_depth_chroma_minus8
            bits.bit()  # qpprime_y_zero_transform_bypass_flag
            if bits.bit():  # seq_scaling_matrix_present_flag
                for index in range(8 if chroma_format != 3 else 12):
                    if bits.bit():
                        _skip_scaling_list(bits, 16 if index < 6 else 64)
        bits.ue()  # log2_max_frame_num_minus4
        order_type = bits.ue()
        if order_type == 0:
            bits.ue()  # log2_max_pic_order_cnt_lsb_minus4
        elif order_type == 1:
            bits.bit()  # delta_pic_order_always_zero_flag
            bits.se()  # offset_for_non_ref_pic
            bits.se()  # offset_for_top_to_bottom_field
            for _ in range(bits.ue()):
                bits.se()
        bits.ue()  # max_num_ref_frames
        bits.bit()  # gaps_in_frame_num_value_allowed_flag
        width_mbs = bits.ue() + 1
        height_units = bits.ue() + 1
        frame_mbs_only = bits.bit()
        if not frame_mbs_only:
            bits.bit()  # mb_adaptive_frame_field_flag
        bits.bit()  # direct_8x8_inference_flag
        crop = (0, 0, 0, 0)
        if bits.bit():  # frame_cropping_flag
            crop = (bits.ue(), bits.ue(), bits.ue(), bits.ue())
    except ValueError:
        return None
    # Cropping is counted in chroma samples (4:2:0: two luma columns and rows).
    crop_x = 2 if chroma_format in (1, 2) else 1
    crop_y = (2 if chroma_format == 1 else 1) * (2 - frame_mbs_only)
    width = width_mbs * 16 - crop_x * (crop[0] + crop[1])
    height = (2 - frame_mbs_only) * height_units * 16 - crop_y * (crop[2] + crop[3])
    return (width, height) if width > 0 and height > 0 else None


def rtp_sps(payload: bytes) -> bytes | None:
    """The SPS NAL unit an H.264 RTP payload carries whole (a single NAL unit packet, or one of
    a STAP-A's units), if any."""
    if not payload:
        return None
    nal_type = payload[0] & 0x1F
    if nal_type == NAL_SPS:
        return payload
    if nal_type == STAP_A:
        pos = 1
        while pos + 2 < len(payload):
            size = int.from_bytes(payload[pos : pos + 2], "big")
            unit = payload[pos + 2 : pos + 2 + size]
            if size == 0 or len(unit) < size:
                return None
            if unit[0] & 0x1F == NAL_SPS:
                return unit
            pos += 2 + size
    return None
