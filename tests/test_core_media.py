"""core.media: the VP8 descriptor read two ways agrees, H.264 types are RFC 6184's, the sequence
unwrapper survives wrap-around, and a manifest's track entry is the forwarded track's info.
Fast, no event loop."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from core.media.keyframes import h264_keyframe_start, keyframe_start, vp8_keyframe_start
from core.media.payloads import (
    NAL_IDR,
    parse_vp8_descriptor,
    split_annex_b,
    vp8_is_keyframe,
)
from core.media.rtp import Unwrapper, seq_newer
from core.media.track import TrackInfo
from recorder.manifest import TrackEntry


def vp8_keyframe_start_by_descriptor(payload: bytes) -> bool:
    """The slow reading: parse the whole descriptor, then look at the frame's P bit."""
    try:
        descriptor = parse_vp8_descriptor(payload)
    except ValueError:
        return False
    return descriptor.starts_frame and vp8_is_keyframe(payload[descriptor.size :])


@given(st.binary(max_size=12))
def test_the_fast_vp8_keyframe_check_agrees_with_the_descriptor(payload: bytes) -> None:
    assert vp8_keyframe_start(payload) == vp8_keyframe_start_by_descriptor(payload)


def test_a_vp8_keyframe_start_with_every_optional_field() -> None:
    # X, then I (15-bit picture id), L, T/K; S=1, PID=0; frame header P bit 0.
    payload = bytes([0x90, 0xF0, 0x81, 0x23, 0x07, 0x45, 0x10])
    assert vp8_keyframe_start(payload)
    assert not vp8_keyframe_start(payload[:-1] + b"\x11")  # P bit set: an interframe
    assert keyframe_start("vp8", payload) and not keyframe_start("opus", payload)


def test_h264_keyframes_are_idr_or_sps_however_packed() -> None:
    assert h264_keyframe_start(bytes([0x60 | NAL_IDR, 0x88]))
    assert h264_keyframe_start(bytes([0x7C, 0x80 | NAL_IDR]))  # FU-A start of an IDR
    assert not h264_keyframe_start(bytes([0x7C, NAL_IDR]))  # FU-A continuation
    assert split_annex_b(b"\x00\x00\x00\x01\x67\x01\x00\x00\x01\x65\x02") == [
        b"\x67\x01",
        b"\x65\x02",
    ]


def test_sequence_numbers_unwrap_across_zero_and_tolerate_reordering() -> None:
    unwrap = Unwrapper(16)
    assert [unwrap.unwrap(s) for s in (65534, 65535, 1, 0, 2)] == [
        65534,
        65535,
        65537,
        65536,
        65538,
    ]
    assert seq_newer(1, 65535) and not seq_newer(65535, 1)


def test_a_manifest_track_entry_is_the_forwarded_track() -> None:
    info = TrackInfo("mdt-1", "alice", "alice:0", "video", "video/VP8", 90000, 96, "screen")
    entry = TrackEntry.from_track("track-0", info)
    assert (entry.stream, entry.track_id, entry.participant_id, entry.source) == (
        "track-0",
        "alice:0",
        "alice",
        "screen",
    )
    assert (entry.kind, entry.codec, entry.clock_rate, entry.payload_type) == (
        "video",
        "video/VP8",
        90000,
        96,
    )
    assert entry.before_keyframe == 0
