"""RTP header work of the forwarder, checked against aiortc's own RTP implementation."""

from __future__ import annotations

import fractions
import struct

import av
import pytest
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from hypothesis import given
from hypothesis import strategies as st

from bot.testsource import encode_test_pattern
from core.media.keyframes import KeyframeRequests, h264_keyframe_start, vp8_keyframe_start
from core.media.rtp import (
    ABS_SEND_TIME_URI,
    AUDIO_LEVEL_URI,
    MID_URI,
    ExtensionIds,
    extension_block,
    extension_template,
    parse_header,
    rewrite,
    seq_newer,
    unwrap_rtx,
    wrap_rtx,
)
from core.media.track import TrackInfo
from sfu.forwarder import OutboundSlot, PublishedTrack, RetransmissionBuffer

IDS = ExtensionIds(mid=1, abs_send_time=3, audio_level=2)


def _extensions_map(ids: ExtensionIds) -> HeaderExtensionsMap:
    params = RTCRtpParameters(
        headerExtensions=[
            RTCRtpHeaderExtensionParameters(id=ids.mid or 0, uri=MID_URI),
            RTCRtpHeaderExtensionParameters(id=ids.abs_send_time or 0, uri=ABS_SEND_TIME_URI),
            RTCRtpHeaderExtensionParameters(id=ids.audio_level or 0, uri=AUDIO_LEVEL_URI),
        ]
    )
    extensions = HeaderExtensionsMap()
    extensions.configure(params)
    return extensions


def _packet(seq: int = 100, ts: int = 5000, ssrc: int = 1234, pt: int = 96, marker: int = 1,
            payload: bytes = b"\x10payload", mid: str = "0") -> bytes:  # fmt: skip
    packet = RtpPacket(payload_type=pt, marker=marker, sequence_number=seq, timestamp=ts, ssrc=ssrc)
    packet.payload = payload
    packet.extensions.mid = mid
    packet.extensions.abs_send_time = 0x123456
    packet.extensions.audio_level = (True, 30)
    return packet.serialize(_extensions_map(IDS))


def test_parse_header_matches_aiortc() -> None:
    data = _packet()
    header = parse_header(data)
    reference = RtpPacket.parse(data, _extensions_map(IDS))
    assert (header.payload_type, header.sequence, header.timestamp, header.ssrc) == (
        reference.payload_type, reference.sequence_number, reference.timestamp, reference.ssrc
    )  # fmt: skip
    assert header.marker == bool(reference.marker)
    assert data[header.payload_start : header.payload_end] == reference.payload
    assert header.extensions[IDS.mid or 0] == b"0"


@given(
    mid_id=st.one_of(st.none(), st.integers(1, 14)),
    ast_id=st.one_of(st.none(), st.integers(1, 14)),
    level_id=st.one_of(st.none(), st.integers(1, 14)),
    mid=st.binary(max_size=16),
    ast=st.binary(min_size=3, max_size=3),
    level=st.one_of(st.none(), st.binary(min_size=1, max_size=1)),
)
def test_extension_template_fills_to_the_same_block(
    mid_id: int | None,
    ast_id: int | None,
    level_id: int | None,
    mid: bytes,
    ast: bytes,
    level: bytes | None,
) -> None:
    ids = ExtensionIds(mid=mid_id, abs_send_time=ast_id, audio_level=level_id)
    template = extension_template(ids, mid, audio_level=level is not None)
    filled = template % {b"ast": ast, b"level": level or b""}
    assert filled == extension_block(ids, mid, ast, level)


def test_rewrite_is_read_by_aiortc_with_the_subscribers_ids() -> None:
    data = _packet()
    header = parse_header(data)
    sub_ids = ExtensionIds(mid=4, abs_send_time=5, audio_level=6)
    ext = extension_block(sub_ids, b"7", b"\x00\x00\x01", header.extensions[2])
    out = rewrite(data, header, payload_type=111, sequence=9, timestamp=77, ssrc=42, extensions=ext)
    parsed = RtpPacket.parse(out, _extensions_map(sub_ids))
    assert (parsed.payload_type, parsed.sequence_number, parsed.timestamp, parsed.ssrc) == (
        111, 9, 77, 42
    )  # fmt: skip
    assert parsed.extensions.mid == "7"
    assert parsed.extensions.abs_send_time == 1
    assert parsed.extensions.audio_level == (True, 30)
    assert parsed.payload == b"\x10payload" and parsed.marker == 1


def test_rtx_round_trip_restores_the_original() -> None:
    original = _packet(seq=4242)
    rtx = wrap_rtx(original, ssrc=999, payload_type=97, sequence=7)
    header = parse_header(rtx)
    assert (header.ssrc, header.payload_type, header.sequence) == (999, 97, 7)
    restored = unwrap_rtx(rtx, header, ssrc=1234, payload_type=96)
    assert restored == original


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80" * 5,
        b"\x00" * 12,
        b"\x90\x60" + b"\x00" * 10,
        b"\xa0\x60" + b"\x00" * 10 + b"\x00",
    ],
)
def test_malformed_packets_raise_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_header(data)


@given(st.binary(max_size=300))
def test_parser_never_fails_other_than_value_error(data: bytes) -> None:
    try:
        header = parse_header(data)
    except ValueError:
        return
    assert 12 <= header.payload_start <= header.payload_end <= len(data)


def test_sequence_comparison_wraps() -> None:
    assert seq_newer(1, 65535) and not seq_newer(65535, 1) and not seq_newer(5, 5)


def test_vp8_keyframes_are_recognised_in_real_packets() -> None:
    clip = encode_test_pattern(seconds=1.0, keyframe_interval=10)
    encoder = Vp8Encoder()
    for frame in clip[:12]:
        packet = av.Packet(frame.data)
        packet.pts, packet.time_base = 0, fractions.Fraction(1, 90000)
        payloads, _ = encoder.pack(packet)
        assert vp8_keyframe_start(payloads[0]) == frame.keyframe
        assert not any(vp8_keyframe_start(p) for p in payloads[1:])


def test_h264_keyframes() -> None:
    assert h264_keyframe_start(bytes([0x65, 0x88]))  # IDR slice
    assert not h264_keyframe_start(bytes([0x41, 0x9A]))  # non-IDR slice
    stap_a = (
        bytes([0x78]) + struct.pack("!H", 2) + bytes([0x67, 0x42]) + struct.pack("!H", 1) + b"\x68"
    )
    assert h264_keyframe_start(stap_a)
    assert h264_keyframe_start(bytes([0x7C, 0x85]))  # FU-A start of IDR
    assert not h264_keyframe_start(bytes([0x7C, 0x05]))  # FU-A continuation


def test_ten_keyframe_requests_at_once_make_one_then_one_deferred() -> None:
    requests = KeyframeRequests(interval_s=0.5)
    sent = [requests.request(10.0 + i * 0.01) for i in range(10)]
    assert sent.count(True) == 1
    assert not requests.due(10.2) and requests.due(10.6) and not requests.due(10.7)


def test_retransmission_buffer_keeps_recent_packets_only() -> None:
    buffer = RetransmissionBuffer()
    for seq in range(0, 3000):
        buffer.put(seq, _packet(seq=seq))
    assert buffer.get(2999) is not None and buffer.get(100) is None


def _track(sent_rtcp: list[bytes], kind: str = "video") -> PublishedTrack:
    info = TrackInfo("r", "pub", "pub:1", kind, "video/VP8" if kind == "video" else "audio/opus",
                     90000 if kind == "video" else 48000, 96)  # fmt: skip
    return PublishedTrack(info, ssrc=1234, rtx_ssrc=None, rtx_payload_type=None, ext_ids=IDS,
                          rtcp_ssrc=55, send_rtcp=lambda b: sent_rtcp.append(b) or True,
                          sinks=[])  # fmt: skip


def _slot(sent: list[bytes]) -> OutboundSlot:
    return OutboundSlot(
        "sub", "video", send_rtp=lambda b: sent.append(b) or True, send_rtcp=lambda b: True,
        mid=b"3", ssrc=777, rtx_ssrc=778, payload_type=100, rtx_payload_type=101, ext_ids=IDS,
        ready=True,
    )  # fmt: skip


VP8_KEY = b"\x10\x00"  # S=1, PID=0, frame header P bit 0: keyframe
VP8_DELTA = b"\x10\x01"


def test_a_new_video_subscriber_starts_on_a_keyframe_and_numbers_continue() -> None:
    rtcp: list[bytes] = []
    sent: list[bytes] = []
    track = _track(rtcp)
    slot = _slot(sent)
    slot.assign(track)
    assert rtcp, "attaching a subscriber asks the publisher for a keyframe"
    for seq, payload in [(10, VP8_DELTA), (11, VP8_KEY), (12, VP8_DELTA)]:
        data = _packet(seq=seq, payload=payload)
        track.forward(data, parse_header(data), 0)
    assert len(sent) == 2
    first, second = parse_header(sent[0]), parse_header(sent[1])
    assert (first.ssrc, first.payload_type) == (777, 100)
    assert second.sequence == (first.sequence + 1) & 0xFFFF
    assert first.extensions[IDS.mid or 0] == b"3"


def test_muted_track_is_not_forwarded() -> None:
    sent: list[bytes] = []
    track = _track([], kind="audio")
    slot = _slot(sent)
    slot.kind = "audio"
    slot.assign(track)
    track.set_muted(True)
    data = _packet()
    track.forward(data, parse_header(data), 0)
    assert sent == []
    track.set_muted(False)
    data = _packet(seq=2)
    track.forward(data, parse_header(data), 0)
    assert len(sent) == 1


def test_nack_is_answered_on_rtx_from_history_and_misses_go_upstream() -> None:
    rtcp: list[bytes] = []
    sent: list[bytes] = []
    track = _track(rtcp)
    slot = _slot(sent)
    slot.assign(track)
    for seq in (20, 21, 22):
        data = _packet(seq=seq, payload=VP8_KEY)
        track.forward(data, parse_header(data), 0)
    lost_out = parse_header(sent[1]).sequence
    sent.clear()
    missed = slot.retransmit([lost_out, (lost_out + 50) & 0xFFFF])
    assert len(sent) == 1
    rtx = parse_header(sent[0])
    assert (rtx.ssrc, rtx.payload_type) == (778, 101)
    assert unwrap_rtx(sent[0], rtx, ssrc=777, payload_type=100)[12:] != b""
    assert missed == [(21 + 50) & 0xFFFF]


def test_switching_publishers_on_a_slot_keeps_sequence_continuity() -> None:
    sent: list[bytes] = []
    a, b = _track([]), _track([])
    slot = _slot(sent)
    slot.assign(a)
    data = _packet(seq=100, ts=1000, payload=VP8_KEY)
    a.forward(data, parse_header(data), 0)
    slot.assign(b)
    data = _packet(seq=60000, ts=999999, payload=VP8_KEY, ssrc=4321)
    b.forward(data, parse_header(data), 0)
    first, second = parse_header(sent[0]), parse_header(sent[1])
    assert second.sequence == (first.sequence + 1) & 0xFFFF
    assert second.ssrc == first.ssrc
    assert 0 < (second.timestamp - first.timestamp) & 0xFFFFFFFF < 90000


def test_bitrate_hint_is_the_median_not_the_slowest() -> None:
    track = _track([])
    for i, bps in enumerate([100_000, 1_500_000, 1_200_000]):
        slot = _slot([])
        slot.subscriber_id = f"s{i}"
        slot.remb_bps = bps
        track.slots.append(slot)
    assert track.bitrate_hint() == 1_200_000
