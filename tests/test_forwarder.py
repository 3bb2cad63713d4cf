"""The forwarder with time and randomness handed in: the same packets, `now`s and seed give the
same bytes out, so numbering, pauses, rate limits and loss figures are checked exactly. No event
loop, no clock."""

from __future__ import annotations

import struct
from random import Random

from aiortc.rtp import RTCP_PSFB_PLI, RTCP_RTPFB_NACK, RtcpPacket, RtcpPsfbPacket, RtcpRtpfbPacket

from core.media.rtp import ExtensionIds, abs_send_time, parse_header
from core.media.track import TrackInfo
from sfu.forwarder import OutboundSlot, PublishedTrack

PUBLISHER_IDS = ExtensionIds(mid=1, abs_send_time=3)
SUBSCRIBER_IDS = ExtensionIds(mid=4, abs_send_time=5)
VP8_KEY, VP8_DELTA = b"\x10\x00", b"\x10\x01"


def _track(to_publisher: list[bytes], kind: str = "video") -> PublishedTrack:
    video = kind == "video"
    info = TrackInfo("room", "pub", "pub:0", kind, "video/VP8" if video else "audio/opus",
                     90000 if video else 48000, 96 if video else 111)  # fmt: skip
    return PublishedTrack(info, ssrc=1234, rtx_ssrc=None, rtx_payload_type=None,
                          ext_ids=PUBLISHER_IDS, rtcp_ssrc=55,
                          send_rtcp=lambda b: to_publisher.append(b) or True, sinks=[])  # fmt: skip


def _slot(sent: list[bytes], seed: int = 7) -> OutboundSlot:
    return OutboundSlot(
        "sub", "video", send_rtp=lambda b: sent.append(b) or True, send_rtcp=lambda b: True,
        mid=b"2", ssrc=777, rtx_ssrc=778, payload_type=100, rtx_payload_type=101,
        ext_ids=SUBSCRIBER_IDS, ready=True, rng=Random(seed),
    )  # fmt: skip


def _rtp(seq: int, ts: int = 5000, payload: bytes = VP8_KEY, pt: int = 96) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, ts, 1234) + payload + b"frame"


def _forward(track: PublishedTrack, seq: int, at_s: float, ts: int = 5000, pt: int = 96) -> None:
    data = _rtp(seq, ts=ts, pt=pt)
    track.forward(data, parse_header(data), int(at_s * 1000))


def _plis(rtcp: list[bytes]) -> int:
    return sum(
        1 for b in rtcp for p in RtcpPacket.parse(b)
        if isinstance(p, RtcpPsfbPacket) and p.fmt == RTCP_PSFB_PLI
    )  # fmt: skip


def _run(seed: int) -> list[bytes]:
    sent: list[bytes] = []
    track = _track([])
    _slot(sent, seed).assign(track, now=10.0)
    for i, seq in enumerate((500, 501, 502)):
        _forward(track, seq, 10.0 + i * 0.033, ts=5000 + i * 3000)
    return sent


def test_the_same_seed_and_times_give_the_same_bytes() -> None:
    assert _run(seed=7) == _run(seed=7)
    assert _run(seed=7) != _run(seed=8), "the starting numbers come from the slot's rng"
    first = parse_header(_run(seed=7)[0])
    expected = Random(7)
    expected.randint(0, 0x7FFF)  # the RTX stream's first sequence number
    assert first.sequence == expected.randint(0, 0x7FFF)
    assert first.timestamp == expected.randint(0, 0xFFFFFFFF)


def test_abs_send_time_is_stamped_from_the_packets_now() -> None:
    sent = _run(seed=1)
    ast = [parse_header(p).extensions[SUBSCRIBER_IDS.abs_send_time or 0] for p in sent]
    assert ast == [abs_send_time(10.0), abs_send_time(10.033), abs_send_time(10.066)]
    assert abs_send_time(64.0) == abs_send_time(0.0), "24 bits of 6.18 seconds wrap every 64 s"


def test_a_slot_switched_after_a_pause_leaves_a_gap_as_long_as_the_pause() -> None:
    sent: list[bytes] = []
    a, b = _track([]), _track([])
    slot = _slot(sent)
    slot.assign(a, now=1.0)
    _forward(a, 100, at_s=1.0, ts=1000)
    slot.assign(b, now=2.0)
    _forward(b, 60000, at_s=3.5, ts=999_999)
    first, second = parse_header(sent[0]), parse_header(sent[1])
    assert second.sequence == (first.sequence + 1) & 0xFFFF
    assert (second.timestamp - first.timestamp) & 0xFFFFFFFF == int(2.5 * 90000)


def test_keyframe_requests_are_rate_limited_by_the_now_given() -> None:
    rtcp: list[bytes] = []
    track = _track(rtcp)
    _slot([]).assign(track, now=10.0)
    assert _plis(rtcp) == 1, "a new subscriber asks for a keyframe"
    _slot([], seed=2).assign(track, now=10.2)
    track.tick(10.4)
    assert _plis(rtcp) == 1, "within the interval the request waits"
    track.tick(10.5)
    assert _plis(rtcp) == 2, "then it goes out"
    track.tick(11.5)
    assert _plis(rtcp) == 2, "and only once"


def test_upstream_nacks_are_sent_once_per_100_ms() -> None:
    rtcp: list[bytes] = []
    track = _track(rtcp)
    track.nack_upstream([7, 8], now=5.0)
    track.nack_upstream([8, 9], now=5.05)
    track.nack_upstream([8], now=5.2)
    lost = [
        list(p.lost) for b in rtcp for p in RtcpPacket.parse(b)
        if isinstance(p, RtcpRtpfbPacket) and p.fmt == RTCP_RTPFB_NACK
    ]  # fmt: skip
    assert lost == [[7, 8], [9], [8]]


def test_receiver_report_loss_and_delay_since_the_senders_report() -> None:
    track = _track([], kind="audio")
    for seq in (0, 1, 2, 5, 6, 7, 8, 9):  # 3 and 4 lost
        _forward(track, seq, at_s=4.0, pt=111)
    ntp = 0x1122_3344_5566_7788
    track.on_sender_report(ntp, 48000, now=5.0)
    [report] = track.receiver_reports(now=5.5)
    assert (report.packets_lost, report.fraction_lost) == (2, (2 << 8) // 10)
    assert report.highest_sequence == 9
    assert report.lsr == 0x3344_5566 and report.dlsr == 65536 // 2
    _forward(track, 10, at_s=6.0, pt=111)
    [again] = track.receiver_reports(now=6.5)
    assert again.fraction_lost == 0, "loss is per interval"


def test_a_packet_received_twice_is_forwarded_once() -> None:
    """A browser pads its sending rate by resending recent packets over RTX: unwrapped, each is
    a second copy of a number the subscriber has (its SRTP would drop it unseen, and its
    transport feedback call it lost). Forwarded once, counted; a packet that was missing (the
    repair of a real loss) still goes out."""
    sent: list[bytes] = []
    track = _track([])
    _slot(sent).assign(track, now=10.0)
    for seq in (500, 501, 503):
        _forward(track, seq, 10.0 + (seq - 500) * 0.033)
    _forward(track, 501, 10.2)  # padding: the same packet again
    _forward(track, 502, 10.25)  # the repair of 502, lost on the way
    sequences = [parse_header(packet).sequence for packet in sent]
    assert len(sequences) == len(set(sequences)) == 4, sequences
    assert track.duplicates == 1
