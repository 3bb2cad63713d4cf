"""The picture size an H.264 SPS declares (core/media/h264_sps.py), read from what a real
encoder (libx264, through aiortc's H.264 encoder) packetizes: sizes that are and are not
multiples of 16 (cropped), and the SPS found whole in an RTP payload. No event loop."""

from __future__ import annotations

import fractions

import numpy as np
import pytest
from aiortc.codecs.h264 import H264Encoder
from av import VideoFrame

from core.media.h264_sps import rtp_sps, sps_picture_size
from core.media.keyframes import h264_keyframe_start
from sfu.layer_choice import LayerMeter


def _first_payloads(width: int, height: int) -> list[bytes]:
    encoder = H264Encoder()
    frame = VideoFrame.from_ndarray(np.zeros((height, width, 3), dtype=np.uint8), format="rgb24")
    frame.pts, frame.time_base = 0, fractions.Fraction(1, 90000)
    payloads, _ = encoder.encode(frame, force_keyframe=True)
    return payloads


@pytest.mark.parametrize("size", [(640, 360), (320, 180), (160, 90), (1280, 720), (176, 144)])
def test_the_sps_in_front_of_a_keyframe_gives_its_picture_size(size: tuple[int, int]) -> None:
    payloads = _first_payloads(*size)
    assert h264_keyframe_start(payloads[0]), "the keyframe starts at its first packet"
    found = [sps for sps in map(rtp_sps, payloads) if sps is not None]
    assert found, "the encoder sends an SPS with its keyframe"
    assert sps_picture_size(found[0]) == size


def test_what_is_not_an_sps_gives_no_size() -> None:
    assert sps_picture_size(b"") is None
    assert sps_picture_size(bytes([0x68, 0xCE, 0x3C, 0x80])) is None  # a PPS
    assert sps_picture_size(bytes([0x67, 0x42])) is None, "truncated"
    assert rtp_sps(bytes([0x65, 0x88])) is None  # an IDR slice
    assert rtp_sps(bytes([24, 0, 9, 0x67])) is None, "a STAP-A whose unit is cut short"


def test_a_simulcast_layer_of_h264_is_measured_from_its_keyframes_sps() -> None:
    meter = LayerMeter(2)
    for layer, size in enumerate([(320, 180), (640, 360)]):
        for payload in _first_payloads(*size):
            if h264_keyframe_start(payload):
                meter.on_keyframe(layer, payload, "H264")
    assert [(s.width, s.height) for s in meter.layers] == [(320, 180), (640, 360)]
