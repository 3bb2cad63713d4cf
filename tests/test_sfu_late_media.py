"""The real-time bound applies to live subscribers only: a packet that waited in the node past
`media_max_delay_s` (marked late by the socket hook) still reaches the sinks, so a recording
keeps every packet, while no subscriber is sent it (nor a resend of it) and the publisher is
asked for a keyframe at the usual rate. Pure: `PublishedTrack` with `now`s handed in, no event
loop."""

from __future__ import annotations

import struct
from random import Random

from aiortc.rtp import RTCP_PSFB_PLI, RTCP_RTPFB_NACK, RtcpPacket, RtcpPsfbPacket, RtcpRtpfbPacket

from core.media.rtp import ExtensionIds, parse_header
from core.media.track import TrackInfo
from sfu.forwarder import OutboundSlot, PublishedTrack
from sfu.retransmit import Refusal, RetransmitBudget
from sfu.sinks import MediaSink

VP8_KEY, VP8_DELTA = b"\x10\x00", b"\x10\x01"


class StoringSink:
    """A sink that keeps the sequence number of every packet it is handed (a recording)."""

    def __init__(self) -> None:
        self.sequences: list[int] = []

    def on_track(self, track: TrackInfo) -> None:
        pass

    def on_rtp(self, track: TrackInfo, packet: bytes, arrival_ms: int, keyframe: bool) -> bool:
        self.sequences.append(parse_header(packet).sequence)
        return False

    def on_track_ended(self, track: TrackInfo) -> None:
        pass

    def on_data(self, room_id: str, participant_id: str, label: str, message: str) -> None:
        pass


def _track(
    to_publisher: list[bytes], sinks: list[MediaSink], kind: str = "video"
) -> PublishedTrack:
    video = kind == "video"
    info = TrackInfo("room", "pub", "pub:0", kind, "video/VP8" if video else "audio/opus",
                     90000 if video else 48000, 96 if video else 111)  # fmt: skip
    return PublishedTrack(info, ssrc=1234, rtx_ssrc=None, rtx_payload_type=None,
                          ext_ids=ExtensionIds(mid=1, abs_send_time=3), rtcp_ssrc=55,
                          send_rtcp=lambda b: to_publisher.append(b) or True,
                          sinks=sinks)  # fmt: skip


def _slot(sent: list[bytes]) -> OutboundSlot:
    return OutboundSlot(
        "sub", "video", send_rtp=lambda b: sent.append(b) or True, send_rtcp=lambda b: True,
        mid=b"2", ssrc=777, payload_type=100, ext_ids=ExtensionIds(mid=4, abs_send_time=5),
        ready=True, rng=Random(7),
    )  # fmt: skip


def _forward(track: PublishedTrack, seq: int, at_s: float, *, late: bool = False) -> None:
    data = (
        struct.pack("!BBHII", 0x80, 96, seq, 3000 * seq, 1234)
        + (VP8_KEY if seq == 100 else VP8_DELTA)
        + b"frame"
    )
    track.forward(data, parse_header(data), int(at_s * 1000), late)


def _sent_sequences(slot: OutboundSlot, sent: list[bytes]) -> list[int]:
    """The source sequence numbers of what the slot was sent."""
    return [(parse_header(b).sequence - slot.seq_offset) & 0xFFFF for b in sent]


def _plis(rtcp: list[bytes]) -> int:
    return sum(
        1 for b in rtcp for p in RtcpPacket.parse(b)
        if isinstance(p, RtcpPsfbPacket) and p.fmt == RTCP_PSFB_PLI
    )  # fmt: skip


def test_a_late_packet_is_recorded_but_not_sent_to_subscribers() -> None:
    sink, sent = StoringSink(), []
    track = _track([], [sink])
    slot = _slot(sent)
    slot.assign(track, now=10.0)
    _forward(track, 100, 10.0)
    _forward(track, 101, 10.4, late=True)
    _forward(track, 102, 10.41, late=True)
    _forward(track, 103, 10.5)
    assert sink.sequences == [100, 101, 102, 103], "the recording keeps every packet"
    assert _sent_sequences(slot, sent) == [100, 103], "the subscriber gets only fresh ones"
    assert track.late == 2 and track.forwarded == 2 and track.received == 4


def test_late_video_asks_for_a_keyframe_at_the_usual_rate() -> None:
    rtcp: list[bytes] = []
    track = _track(rtcp, [])
    _slot([]).assign(track, now=10.0)
    _forward(track, 100, 10.0)
    assert _plis(rtcp) == 1, "the new subscriber's request"
    for i in range(20):  # a late burst: one request now, not twenty
        _forward(track, 101 + i, 10.6 + i * 0.001, late=True)
    assert _plis(rtcp) == 2
    _forward(track, 121, 10.7, late=True)  # within the interval: deferred...
    assert _plis(rtcp) == 2
    track.tick(11.1)  # ...to its end
    assert _plis(rtcp) == 3


def test_late_audio_asks_for_no_keyframe_and_is_still_recorded() -> None:
    rtcp: list[bytes] = []
    sink, sent = StoringSink(), []
    track = _track(rtcp, [sink], kind="audio")
    slot = _slot(sent)
    slot.assign(track, now=10.0)
    _forward(track, 100, 10.0)
    _forward(track, 101, 10.5, late=True)
    assert sink.sequences == [100, 101]
    assert _sent_sequences(slot, sent) == [100]
    assert _plis(rtcp) == 0


def test_a_late_packet_is_neither_resent_nor_asked_of_the_publisher() -> None:
    # Resent, it would reach the subscriber later still; asked upstream, the publisher's repair
    # would reach the recording a second time.
    rtcp: list[bytes] = []
    sink, sent = StoringSink(), []
    track = _track(rtcp, [sink])
    slot = _slot(sent)
    slot.assign(track, now=10.0)
    _forward(track, 100, 10.0)
    _forward(track, 101, 10.01, late=True)
    _forward(track, 102, 10.02)
    budget = RetransmitBudget()
    lost = (101 + slot.seq_offset) & 0xFFFF
    missed = slot.retransmit([lost], 10.05, budget, forwarded_bytes=10_000)
    assert missed == [] and budget.refused[Refusal.TOO_LATE] == 1
    assert _sent_sequences(slot, sent) == [100, 102]
    nacks = [
        p for b in rtcp for p in RtcpPacket.parse(b)
        if isinstance(p, RtcpRtpfbPacket) and p.fmt == RTCP_RTPFB_NACK
    ]  # fmt: skip
    assert nacks == [] and sink.sequences == [100, 101, 102]


def test_a_fresh_packet_is_resent_as_before() -> None:
    sent: list[bytes] = []
    track = _track([], [])
    slot = _slot(sent)
    slot.assign(track, now=10.0)
    _forward(track, 100, 10.0)
    _forward(track, 101, 10.01)
    budget = RetransmitBudget()
    assert slot.retransmit([(101 + slot.seq_offset) & 0xFFFF], 10.05, budget, 10_000) == []
    assert budget.resent == 1 and _sent_sequences(slot, sent) == [100, 101, 101]
