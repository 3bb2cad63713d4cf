"""The retransmission budget (sfu.retransmit): pure, no event loop, `now` passed in."""

from __future__ import annotations

from aiortc.rtp import RtpPacket

from core.media.rtp import ExtensionIds, parse_header
from core.media.track import TrackInfo
from sfu.forwarder import OutboundSlot, PublishedTrack
from sfu.retransmit import MIN_BURST_BYTES, Refusal, RetransmitBudget

PACKET = 1200
"""Bytes of one video packet in these tests."""


def _fed(budget: RetransmitBudget, bytes_per_s: int, until: float, start: float = 0.0) -> int:
    """Sample a forwarded counter growing at `bytes_per_s` every 100 ms; returns its value."""
    t = start
    counter = 0
    while t <= until + 1e-9:
        counter = int((t - start) * bytes_per_s)
        budget.observe(counter, t)
        t += 0.1
    return counter


def test_a_fresh_packet_is_resent_once_then_not_again_within_the_repeat_interval() -> None:
    budget = RetransmitBudget(repeat_interval_s=0.1)
    forwarded = _fed(budget, 1_000_000, until=2.0)
    assert budget.allow(7, arrived_at=1.95, size=PACKET, forwarded_bytes=forwarded, now=2.0) is None
    again = budget.allow(7, arrived_at=1.95, size=PACKET, forwarded_bytes=forwarded, now=2.05)
    assert again is Refusal.REPEATED
    later = budget.allow(7, arrived_at=1.95, size=PACKET, forwarded_bytes=forwarded, now=2.16)
    assert later is None
    assert budget.resent == 2 and budget.refused[Refusal.REPEATED] == 1


def test_a_packet_too_old_to_be_played_is_not_resent() -> None:
    budget = RetransmitBudget(max_age_s=0.4)
    forwarded = _fed(budget, 1_000_000, until=2.0)
    refused = budget.allow(1, arrived_at=1.5, size=PACKET, forwarded_bytes=forwarded, now=2.0)
    assert refused is Refusal.TOO_LATE
    assert budget.allow(2, arrived_at=1.7, size=PACKET, forwarded_bytes=forwarded, now=2.0) is None


def test_a_known_round_trip_shortens_the_age_and_sets_the_repeat_interval() -> None:
    budget = RetransmitBudget(max_age_s=0.6, repeat_interval_s=0.1, rtt_s=0.3)
    forwarded = _fed(budget, 1_000_000, until=2.0)
    # 0.5 s old plus half of a 0.3 s round trip to travel: past the 0.6 s playout budget.
    late = budget.allow(1, arrived_at=1.5, size=PACKET, forwarded_bytes=forwarded, now=2.0)
    assert late is Refusal.TOO_LATE
    assert budget.allow(2, arrived_at=1.9, size=PACKET, forwarded_bytes=forwarded, now=2.0) is None
    # Not again before a round trip has passed (0.2 s > the 0.1 s used without one).
    again = budget.allow(2, arrived_at=1.9, size=PACKET, forwarded_bytes=forwarded, now=2.2)
    assert again is Refusal.REPEATED
    assert budget.allow(2, arrived_at=1.9, size=PACKET, forwarded_bytes=forwarded, now=2.31) is None


def test_a_round_trip_of_a_millisecond_still_spaces_repeats() -> None:
    budget = RetransmitBudget(max_age_s=0.6, repeat_interval_s=0.1, rtt_s=0.001)
    forwarded = _fed(budget, 1_000_000, until=2.0)
    assert budget.allow(2, arrived_at=1.99, size=PACKET, forwarded_bytes=forwarded, now=2.0) is None
    again = budget.allow(2, arrived_at=1.99, size=PACKET, forwarded_bytes=forwarded, now=2.005)
    assert again is Refusal.REPEATED, "a LAN receiver's NACK repeated within 20 ms"
    later = budget.allow(2, arrived_at=1.99, size=PACKET, forwarded_bytes=forwarded, now=2.03)
    assert later is None


def test_resent_bytes_stay_within_the_share_of_forwarded_bytes_over_a_second() -> None:
    budget = RetransmitBudget(share=0.25, max_age_s=10.0)
    rate = 400_000  # bytes per second forwarded to the subscriber
    forwarded = _fed(budget, rate, until=3.0)
    resent = 0
    for key in range(1000):  # a NACK storm: everything reported lost at once
        if budget.allow(key, 2.9, PACKET, forwarded, 3.0) is None:
            resent += PACKET
    assert resent <= 0.25 * rate
    assert resent > 0.25 * rate - PACKET  # the share is used, not just a trickle
    assert budget.refused[Refusal.BUDGET] == 1000 - resent // PACKET
    # A second later the window has slid: the share is available again.
    forwarded = _fed(budget, rate, until=4.1, start=3.1) + forwarded
    assert budget.allow(5000, 4.05, PACKET, forwarded, 4.1) is None


def test_with_nothing_forwarded_only_a_few_packets_are_resent() -> None:
    budget = RetransmitBudget(share=0.25)
    allowed = sum(budget.allow(k, 0.0, PACKET, 0, 0.01) is None for k in range(50))
    assert allowed == MIN_BURST_BYTES // PACKET


def test_packets_gone_from_history_are_counted() -> None:
    budget = RetransmitBudget()
    budget.gone()
    assert budget.refused[Refusal.GONE] == 1


# -- through the forwarder --------------------------------------------------------------------

IDS = ExtensionIds(mid=1, abs_send_time=2, audio_level=3)
VP8_KEY = b"\x10\x00"


def _packet(seq: int) -> bytes:
    packet = RtpPacket(payload_type=96, marker=1, sequence_number=seq, timestamp=9000, ssrc=1234)
    packet.payload = VP8_KEY + bytes(PACKET)
    return packet.serialize()


def test_the_slot_resends_only_what_the_budget_allows() -> None:
    info = TrackInfo("r", "pub", "pub:1", "video", "video/VP8", 90000, 96)
    track = PublishedTrack(info, ssrc=1234, rtx_ssrc=None, rtx_payload_type=None, ext_ids=IDS,
                           rtcp_ssrc=55, send_rtcp=lambda b: True, sinks=[])  # fmt: skip
    sent: list[bytes] = []
    slot = OutboundSlot(
        "sub", "video", send_rtp=lambda b: sent.append(b) or True, send_rtcp=lambda b: True,
        ssrc=777, rtx_ssrc=778, payload_type=100, rtx_payload_type=101, ready=True,
    )  # fmt: skip
    slot.assign(track, 0.0)
    for seq in range(100, 110):  # packet 100 arrives at 1.0 s, each next 50 ms later
        data = _packet(seq)
        track.forward(data, parse_header(data), 1000 + (seq - 100) * 50)
    out = [parse_header(p).sequence for p in sent]
    sent.clear()
    budget = RetransmitBudget(max_age_s=0.3, share=1.0)
    budget.observe(0, 0.0)
    # At 1.49 s packets 100-103 are 0.34-0.49 s old: too late; 104-109 can still be played.
    missed = slot.retransmit(out, 1.49, budget, forwarded_bytes=slot.octets)
    assert missed == []
    assert len(sent) == 6 == budget.resent
    assert budget.refused[Refusal.TOO_LATE] == 4
    assert track.retransmitted == 6
